"""Emitted modules from hostile names, clashing identifiers, dead branches, odd constants and bad
widths: every one is valid Python that imports without side effects, or a positioned refusal."""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import warnings
from fractions import Fraction
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, import_file  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.cli.main import main  # noqa: E402
from tensorprog.emit.module import (  # noqa: E402
    NN_MODULE_ATTRS,
    Emitted,
    emit,
    module_name,
    parametrization,
)
from tensorprog.engine.optimizers import OPTIMIZERS  # noqa: E402
from tensorprog.engine.propagate import ABC  # noqa: E402
from tensorprog.errors import CodegenError, UsageError  # noqa: E402
from tensorprog.ir.program import LinComb  # noqa: E402
from tensorprog.numerics.coordcheck import coord_check, load_module  # noqa: E402

MLP = ("width n = 16\ndim d = 3\ndim o = 2\ninput x : [d]\nparam W : [n, d]\nparam R : [o, n]\n"
       "output f = R @ relu(W @ x)\n")
# each would end the docstring, break a line, or be read as an escape or a format field
HOSTILE = ['x""";__import__("os").system("touch PWNED");"""y', "back\\slash", "trail\\",
           "new\nline", "tab\tbell\x07esc\x1b\x7f", "café µ \u2028 名", "{}{0}%s%%", "it's",
           '"', '\\"""', "-rf *"]


def _build(program, param="mup", convention="table3", command="t", optimizer="adam"):
    abc, label = parametrization(program, OPTIMIZERS[optimizer], param, convention)
    return emit(program, abc, optimizer=optimizer, label=label, command=command)


def _train_once(module, width=32):
    """Construct, run forward and backward, and take one optimizer step."""
    model = module.Model(width, dtype=torch.float64)
    inputs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    out = model(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    opt = module.make_optimizer(model, 0.01)
    sum(o.sum() for o in outs if o.is_floating_point()).backward()
    opt.step()
    return model, inputs


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_program_and_path_names_stay_text(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = tp.parse(MLP, f"{name}.tp")
    emitted = _build(program, command=[["tensorprog", "derive", f"{name}.tp", "-o", name]])
    code = compile(emitted.source, "emitted", "exec")  # valid Python
    module = load_module(emitted, f"{program.name}_mup")
    assert module.__name__.isidentifier()
    assert not list(tmp_path.iterdir())  # nothing ran on import
    assert module.__doc__.startswith(f"{name}: ")
    assert f"tensorprog derive {shlex.quote(name + '.tp')}" in module.__doc__
    assert module.Model.__doc__.startswith(name) and code.co_filename == "emitted"
    _train_once(module)


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
        _train_once(module)
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
    emitted = _build(program, convention="mup")
    compile(emitted.source, "clash", "exec")
    module = load_module(emitted, "clash")
    model, inputs = _train_once(module)
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


# --- branches and outputs -----------------------------------------------------------------------

EDGE = {
    "dead_branch": "input x : [d]\nparam W : [n, d]\nparam U : [n, n]\nparam R : [o, n]\n"
                   "h = relu(W @ x)\ndead = U @ h\nalso = relu(h)\noutput f = R @ h\n",
    "output_is_input": "input x : [d]\ninput z : [n]\nparam W : [n, d]\nparam R : [o, n]\n"
                       "output f = R @ relu(W @ x + z)\noutput z\n",
    "output_is_param": "input x : [d]\nparam W : [n, d]\nparam b : [n]\nparam R : [o, n]\n"
                       "output f = R @ relu(W @ x + b)\noutput b\n",
    "output_used_again": "input x : [d]\nparam W : [n, d]\nparam V : [n, n]\nparam R : [o, n]\n"
                         "output h = relu(W @ x)\noutput f = R @ (V @ h)\n",
    "same_vector_twice": "input x : [d]\nparam W : [n, d]\nparam R : [o, n]\n"
                         "output f = R @ relu(W @ x)\noutput g = f\n",
    "transposed_only": "input x : [d]\nparam W : [d, n]\nparam R : [o, n]\n"
                       "output f = R @ relu(W.T @ x)\n",
    "constants": "input x : [d]\nparam W : [n, d]\nparam R : [o, n]\nh = 0.1 * (W @ x)\n"
                 "g = -h\nk = h / 3 - 2.5 * g\noutput f = -(R @ relu(k))\n",
}


@pytest.mark.parametrize("case", sorted(EDGE))
def test_valid_programs_give_working_modules(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        program = tp.parse("width n = 16\ndim d = 3\ndim o = 2\n" + EDGE[case], f"{case}.tp")
        for param in ("mup", "sp"):
            module = load_module(_build(program, param), case)
            model, inputs = _train_once(module)
    vectors = model.vectors(*inputs)
    if case == "dead_branch":  # U is left out, and the value it computes with it
        assert set(vectors) == {"h", "h_1", "also", "f"} and not hasattr(model, "U")
    if case == "constants":
        h = vectors["h"]
        assert torch.allclose(vectors["k"], h / 3 + 2.5 * h)
    out = model(*inputs)
    if case == "output_is_input":
        assert out[1] is inputs[1]
    if case == "same_vector_twice":
        assert torch.equal(out[0], out[1])


def test_dead_branch_through_the_cli(tmp_path):
    path = tmp_path / "dead.tp"
    path.write_text("width n = 16\ndim d = 3\ndim o = 2\n" + EDGE["dead_branch"])
    with pytest.raises(SystemExit) as exit_:
        main(["derive", str(path), "-o", str(tmp_path / "dead_mup.py")])
    assert exit_.value.code == 0
    _train_once(import_file(tmp_path / "dead_mup.py", "dead_mup"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        result = coord_check(tp.parse_file(path), OPTIMIZERS["sgd"], widths=(16, 32), steps=2,
                             seeds=1, device="cpu")
    assert {r.name for r in result.results} >= {"f", "h", "also"}


def test_a_parameter_free_module_still_builds_its_inputs():
    program = tp.parse("width n = 16\ninput x : [n]\nscale s = 0.5\noutput f = s * x\n")
    module = load_module(_build(program, "sp", optimizer="sgd"), "scaled")
    model = module.Model(32)
    (x,) = model.example_inputs(2)
    assert torch.equal(model(x), 0.5 * x)


# --- numbers ------------------------------------------------------------------------------------


def _with_coefficient(c: Fraction):
    program = tp.parse(MLP.replace("relu(W @ x)", "relu(2 * (W @ x))"), "c.tp")
    body = tuple(dataclasses.replace(i, terms=((c, i.terms[0][1]),)) if isinstance(i, LinComb)
                 else i for i in program.body)
    return program, dataclasses.replace(program, body=body)


@pytest.mark.parametrize("c, message", [(Fraction(10**400), "too large"),
                                        (Fraction(1, 10**400), "too small")])
def test_constants_no_float_holds_are_refused_with_a_position(c, message):
    base, program = _with_coefficient(c)
    abc, label = parametrization(base, OPTIMIZERS["adam"])
    with pytest.raises(CodegenError, match=message) as err:
        emit(program, abc, optimizer="adam", label=label, command="t")
    assert err.value.span is not None and err.value.span.line == 7


def test_exact_fractions_render_exactly():
    base, program = _with_coefficient(Fraction(1, 3))
    abc = {p: ABC(Fraction(1, 3), x.b, x.c) for p, x in
           parametrization(base, OPTIMIZERS["adam"])[0].items()}
    source = emit(program, abc, optimizer="adam", label="l", command="t").source
    assert '"a": 1 / 3' in source and "1 / 3 * (" in source
    model = load_module(Emitted(source), "thirds").Model(32)
    assert model.mult_W == pytest.approx(2 ** (-1 / 3))


def test_a_scale_past_float_range_is_refused():
    program = tp.parse("width n = 16\ninput x : [n]\nscale s = 0.5\noutput f = s * x\n", "s.tp")
    abc, label = parametrization(program, OPTIMIZERS["sgd"], "sp")
    huge = dataclasses.replace(program, params=(dataclasses.replace(program.params[0],
                                                                    base=Fraction(10**400)),))
    with pytest.raises(CodegenError, match="the scale s") as err:
        emit(huge, abc, optimizer="sgd", label=label, command="t")
    assert err.value.span.line == 3


# --- widths -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformer():
    program = tp.parse_file(ROOT / "examples" / "transformer.tp")
    return load_module(_build(program), "transformer_mup")


def test_a_width_the_dims_do_not_divide_is_refused_at_construction(transformer):
    with pytest.raises(ValueError, match=r"width 130: dim dh = n / 4 .* 128 or 132"):
        transformer.Model(130)
    with pytest.raises(ValueError, match=r"width 2: .* multiple of 4: 4$"):
        transformer.Model(2)


@pytest.mark.parametrize("width", [0, -4, True, 12.0, "64", None])
def test_widths_must_be_positive_integers(transformer, width):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        transformer.Model(width)
    with pytest.raises(ValueError, match="base_width must be a positive integer"):
        transformer.Model(64, base_width=width)


def test_integer_like_widths_and_unknown_kwargs(transformer):
    np = pytest.importorskip("numpy")
    assert type(transformer.Model(np.int64(8)).width) is int
    with pytest.raises(TypeError, match="depth"):
        transformer.Model(64, depth=3)


def test_transformer_heads_names_its_head_count():
    program = tp.parse_file(ROOT / "examples" / "transformer_heads.tp")
    module = load_module(_build(program), "heads")
    with pytest.raises(ValueError, match="head count"):
        module.Model(100)


@pytest.mark.parametrize("base", [0, True, 130])
def test_emit_refuses_a_bad_base_width(base):
    program = tp.parse_file(ROOT / "examples" / "transformer.tp")
    abc, label = parametrization(program, OPTIMIZERS["adam"])
    with pytest.raises(UsageError, match="base width"):
        emit(program, abc, optimizer="adam", label=label, command="t", base_width=base)


def test_frozen_params_get_no_learning_rate_at_any_width():
    program = tp.parse(MLP, "m.tp")
    abc, label = parametrization(program, OPTIMIZERS["sgd"], "sp")
    abc["W"] = ABC(abc["W"].a, abc["W"].b, "oo")
    module = load_module(emit(program, abc, optimizer="sgd", label=label, command="t"), "frozen")
    for width in (8, 16, 32):
        groups = module.param_groups(module.Model(width), 0.1)
        lr = {n: g["lr"] for g in groups for n in g["entries"]}
        assert lr["W"] == 0.0 and lr["R"] == pytest.approx(0.1)


def test_make_optimizer_names_the_optimizers_it_knows(tmp_path):
    path = tmp_path / "opt_mup.py"
    path.write_text(_build(tp.parse(MLP)).source)
    module = import_file(path, "opt_mup")
    model = module.Model(32)
    with pytest.raises(ValueError, match="derived for adam, not .rmsprop. .use adam or adamw"):
        module.make_optimizer(model, 0.01, optimizer="rmsprop")
    assert isinstance(module.make_optimizer(model, 0.01, optimizer="adamw"), torch.optim.AdamW)


@pytest.mark.parametrize("derived, other, same", [
    ("adam", "sgd", "adam or adamw"), ("sgd", "adam", "sgd or momentum"),
    ("muon", "adam", "muon"), ("lion", "adamw", "lion")])
def test_make_optimizer_refuses_an_optimizer_of_other_exponents(tmp_path, derived, other, same):
    # the lr (and eps) exponents hold for the optimizer they were derived for and its exact
    # equivalents only: a Muon module under Adam would scale its hidden lr wrongly, silently
    path = tmp_path / f"opt_{derived}_mup.py"
    source = _build(tp.parse(MLP), optimizer=derived).source
    # the coupled-decay refusal is emitted where it can fire only
    assert ("decays decoupled only" in source) == (derived in ("lion", "muon"))
    path.write_text(source)
    module = import_file(path, f"opt_{derived}_mup")
    model = module.Model(32)
    with pytest.raises(ValueError, match=f"derived for {derived}, not .{other}. .use {same}.*"
                                         f"tensorprog derive --optimizer {other}"):
        module.make_optimizer(model, 0.01, optimizer=other)
    for name in same.split(" or "):
        module.make_optimizer(model, 0.01, optimizer=name)
