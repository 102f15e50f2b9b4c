"""Names in emitted modules: hostile program and file names and identifiers that clash with
Python, torch or the module's own attributes; every one is valid Python that imports without side
effects and trains."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, emit_program, import_file, train_once  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.cli.main import main  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
from tensorprog.emit.names import NN_MODULE_ATTRS, module_name  # noqa: E402
from tensorprog.engine.optimizers import OPTIMIZERS  # noqa: E402
from tensorprog.numerics.coordcheck import coord_check  # noqa: E402

MLP = ("width n = 16\ndim d = 3\ndim o = 2\ninput x : [d]\nparam W : [n, d]\nparam R : [o, n]\n"
       "output f = R @ relu(W @ x)\n")
# each would end the docstring, break a line, or be read as an escape or a format field
HOSTILE = ['x""";__import__("os").system("touch PWNED");"""y', "back\\slash", "trail\\",
           "new\nline", "tab\tbell\x07esc\x1b\x7f", "café µ \u2028 名", "{}{0}%s%%", "it's",
           '"', '\\"""', "-rf *"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_program_and_path_names_stay_text(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = tp.parse(MLP, f"{name}.tp")
    emitted = emit_program(program, command=[["tensorprog", "derive", f"{name}.tp", "-o", name]])
    code = compile(emitted.source, "emitted", "exec")  # valid Python
    module = load_module(emitted, f"{program.name}_mup")
    assert module.__name__.isidentifier()
    assert not list(tmp_path.iterdir())  # nothing ran on import
    assert module.__doc__.startswith(f"{name}: ")
    assert f"tensorprog derive {shlex.quote(name + '.tp')}" in module.__doc__
    assert module.Model.__doc__.startswith(name) and code.co_filename == "emitted"
    train_once(module)


def test_hostile_file_names_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(HOSTILE):
        Path(f"{name}.tp").write_text(MLP)
        out = f"{name}_OUT.py"
        with pytest.raises(SystemExit) as exit_:
            main(["derive", f"{name}.tp", "-o", out])
        assert exit_.value.code == 0
        text = Path(out).read_text()
        compile(text, out, "exec")
        module = import_file(Path(out), f"hostile_{k}")
        assert module.__doc__.startswith(f"{name}: ")
        train_once(module)
    assert not Path("PWNED").exists()


def test_check_runs_a_hostile_program_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = tp.parse(MLP, f"{HOSTILE[0]}.tp")
    coord_check(program, OPTIMIZERS["sgd"], widths=(16, 32), steps=2, seeds=1, device="cpu")
    assert not Path("PWNED").exists()
    assert module_name('x"";y', "mup").isidentifier()
    assert module_name("3d\n", "sp") == "_3d__sp"


# --- identifiers --------------------------------------------------------------------------------

CLASHING = ["class", "def", "lambda", "None", "forward", "width", "next", "self", "torch", "nn",
            "F", "math", "Model", "super", "print", "training", "parameters", "to", "state_dict",
            "buffers", "_modules", "type", "id", "x", "_causal_softmax", "_heads_dot", "values",
            "SCALING", "operator", "_check_widths", "base_width", "vectors", "mult_W", "class_"]


def _clashing_program(where: str) -> str:
    """A residual MLP whose params (where='params') or vectors (where='vectors') carry every
    clashing name; the readout W has a multiplier in the mup convention (a name mult_W exists)."""
    names = [n for n in CLASHING if not (where == "vectors" and n == "width")]
    lines = ["width n = 16", "dim d = 3", "dim o = 2", "input input : [d]", "param W0 : [n, d]",
             "param W : [o, n]"]
    if where == "params":
        lines += [f"param {n} : [n]" for n in names]
        lines.append("h = W0 @ input")
        for k, n in enumerate(names):
            lines.append(f"h{k} = relu({'h' if k == 0 else f'h{k - 1}'}) + {n}")
        lines.append(f"output f = W @ h{len(names) - 1}")
    else:
        lines.append(f"{names[0]} = W0 @ input")
        lines += [f"{b} = relu({a})" for a, b in zip(names, names[1:], strict=False)]
        lines.append(f"output f = W @ {names[-1]}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["params", "vectors"])
def test_clashing_names_emit_import_and_train(where, tmp_path):
    program = tp.parse(_clashing_program(where), "clash.tp")
    emitted = emit_program(program, convention="mup")
    compile(emitted.source, "clash", "exec")
    module = load_module(emitted, "clash")
    model, inputs = train_once(module)
    assert set(model.vectors(*inputs)) == {ins.out for ins in program.body}
    assert set(module.SCALING) == {p.name for p in program.params}
    groups = module.param_groups(model, 0.1)
    assert sorted(n for g in groups for n in g["entries"]) == sorted(p.name for p in program.params)
    attrs = {n for n, _ in model.named_parameters()}
    assert not attrs & NN_MODULE_ATTRS
    if where == "params":  # safe names are kept, clashing ones get a trailing underscore
        assert {"nn", "F", "math", "print", "x", "mult_W", "W"} <= attrs
        assert {"class_", "training_", "to_", "class__"} <= attrs
        assert module.SCALING["class"]["attr"] == "class_"
        assert all(getattr(model, module.SCALING[n].get("attr", n)) is g["params"][k]
                   for g in groups for k, n in enumerate(g["entries"]))
    if shutil.which("ruff"):
        path = tmp_path / "clash_mup.py"
        path.write_text(emitted.source)
        lint = subprocess.run(["ruff", "check", "--config", str(ROOT / "pyproject.toml"),
                               str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_module_attrs_cover_the_installed_torch():
    # "__" names are never emitted (the namespace rewrites them), and torch.compile adds
    # "___" attributes to the class at run time
    live = {n for n in set(dir(torch.nn.Module)) | set(vars(torch.nn.Module()))
            if not n.startswith("__")}
    assert live <= NN_MODULE_ATTRS, sorted(live - NN_MODULE_ATTRS)
