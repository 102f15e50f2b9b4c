"""The command line: outputs, JSON keys, exit codes, no torch import for derive; errors printed
with exit status 2, negative numbers as option values, a closed or full stdout, help and version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
from conftest import ROOT, run_cli

import tensorprog
from tensorprog.cli.main import NUMBER_OPTIONS, build_parser, join_negative_values, main

MLP = str(ROOT / "examples" / "mlp.tp")


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_derive_table(capsys):
    code, out, _ = _run(capsys, "derive", MLP)
    assert code == 0
    assert "W2     [n, n]      hidden  σ/√n" in out
    assert "Symmetry" in out


def test_derive_json_keys_and_exponents_parse(capsys):
    code, out, _ = _run(capsys, "derive", MLP, "--json", "--optimizer", "sgd")
    data = json.loads(out)
    assert {"program", "width", "optimizer", "convention", "parameters", "vectors"} <= set(data)
    w3 = data["parameters"]["W3"]
    assert w3["shape"] == ["d_out", "n"] and w3["role"] == "output"
    assert (w3["a"], w3["b"], w3["c"]) == ("0", "1", "1")
    for v in data["vectors"].values():
        for key in ("init", "update", "grad"):
            assert sympy.sympify(v[key]).is_comparable  # exact exponents sympy parses
    assert data["vectors"]["y"] == {"dim": "d_out", "init": "-1/2", "update": "0", "grad": "0"}


def test_explain_walks_the_derivation(capsys):
    code, out, _ = _run(capsys, "derive", MLP, "--explain")
    assert code == 0
    assert "h2_1 = W2 @ x1" in out
    assert "the sum runs over n iid terms (CLT: +1/2)" in out
    assert "LLN: +1" in out
    assert "a_W2 + b_W2 = 1/2" in out


def test_dump_ir_parses_back(capsys, tmp_path):
    code, out, _ = _run(capsys, "derive", MLP, "--dump", "ir")
    assert code == 0 and "h1_1 = W1 @ x" in out
    path = tmp_path / "ir.tp"
    path.write_text(out)
    code2, out2, _ = _run(capsys, "derive", str(path), "--dump", "ir")
    assert out2 == out


def test_classify_json(capsys):
    code, out, _ = _run(capsys, "classify", MLP, "--preset", "sp", "--c", "1", "--json")
    data = json.loads(out)
    assert {"stable", "nontrivial", "regime", "r", "params", "violations"} <= set(data)
    assert (data["regime"], data["r"]) == ("kernel", "1/2")
    assert data["params"]["W2"]["r"] == "1/2"


def test_classify_abc_file(capsys, tmp_path):
    abc = {"W1": {"a": "0", "b": "0", "c": "-1"}, "b1": {"a": 0, "b": 0, "c": -1},
           "W2": {"a": "0", "b": "1/2", "c": "0"}, "b2": {"a": "0", "b": "0", "c": "-1"},
           "W3": {"a": "0", "b": "oo", "c": "1"}}
    path = tmp_path / "abc.json"
    path.write_text(json.dumps(abc))
    code, out, _ = _run(capsys, "classify", MLP, "--abc", str(path), "--json")
    data = json.loads(out)
    assert data["regime"] == "feature_learning"  # a zero-initialised readout is still µP
    assert data["vectors"]["y"]["init"] == "-oo"


def test_derive_and_classify_do_not_import_torch_matplotlib_or_tqdm():
    code = (f"import sys; from tensorprog.cli.main import run; run(['derive', {MLP!r}]); "
            f"run(['classify', {MLP!r}, '--preset', 'sp']); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_the_command_line_loads_the_pipeline_inside_its_ctrl_c_handling():
    # importing the entry point (and the package) loads nothing heavy: sympy, lark and the
    # commands load inside main(), where Ctrl-C is caught
    code = ("import sys, tensorprog.cli.main; "
            "print(sorted(m for m in ('sympy', 'lark', 'torch', 'tensorprog.engine') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ctrl_c_while_check_loads_exits_130_with_one_line():
    # Ctrl-C 0.3 s into main(), while sympy, the pipeline and torch load (over a second)
    code = ("import os, signal, threading; from tensorprog.cli.main import main; "
            "threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start(); "
            f"main(['check', {MLP!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    # -2: CPython marks a KeyboardInterrupt that arrives while an extension runs Python code
    # (torch's import does) as unhandled even once it is caught, and ends by SIGINT at exit:
    # a shell reports that as 130 too
    assert out.returncode in (130, -2), out.stderr
    assert out.stderr.startswith("interrupted") and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize(("argv", "told"), [
    (["derive", MLP], "interrupted\n"),
    (["check", MLP], "interrupted: a check keeps nothing between runs: run it again"),
    (["transfer", MLP, "--data", "digits", "--cache", "{tmp}/c"],
     "interrupted: the finished trials are cached in .*c: the same command resumes the sweep"),
    (["transfer", MLP, "--data", "digits", "--cache", "none"],
     "interrupted: --cache none kept no trial: the same command runs the whole sweep again"),
    (["limit", MLP, "--kernel", "--inputs", "X.pt"], "interrupted: a limit is computed afresh"),
])
def test_ctrl_c_says_what_is_true_for_the_command(capsys, monkeypatch, tmp_path, argv, told):
    from tensorprog.cli.main import command

    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command(argv[0]), "run", stop)
    code, _, err = _run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 130 and re.match(told, err) and err.count("\n") == 1, err
    assert "resumes" not in err or argv[0] == "transfer"


def test_console_script_runs():
    out = subprocess.run(["tensorprog", "derive", MLP, "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["program"] == "mlp"


# --- errors: printed, exit status 2 ---------------------------------------------------------------


HEAD = ("width n = 8\ndim d = 3\ndim k = 2\ninput x : [d]\nparam W : [n, d]\nparam V : [k, n]\n"
        "param b : [n]\n")  # 7 lines; the bad line below is line 8


def _cli(capsys, *argv):
    code, _, err = run_cli(capsys, *argv)
    return code, err


def test_cli_prints_the_error_and_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.tp"
    path.write_text(HEAD + "h = W @ b\noutput y = V @ h\n")
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2
    assert f"{path}:8:5: error: shape mismatch" in err and "Traceback" not in err


def test_cli_missing_file(capsys, tmp_path):
    code, err = _cli(capsys, "derive", str(tmp_path / "nope.tp"))
    assert code == 2 and "cannot read" in err and "Traceback" not in err


def test_cli_engine_error_exits_2(capsys, tmp_path):
    path = tmp_path / "dot.tp"
    path.write_text("width n = 8\ndim d = 3\ninput x : [d]\nparam W : [n, d]\n"
                    "h = relu(W @ x)\noutput s = dot(h, h)\n")
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2 and "s blows up at init" in err and "Traceback" not in err


# --- options, stdout, help and version ------------------------------------------------------------


HEADS = str(ROOT / "examples" / "transformer_heads.tp")


@pytest.mark.parametrize(("argv", "joined"), [
    (["--c", "-1/2"], ["--c=-1/2"]),
    (["--lr", "-1e-3", "--json"], ["--lr=-1e-3", "--json"]),
    (["--values", "-.5,1"], ["--values=-.5,1"]),
    (["--c", "-oo"], ["--c=-oo"]),
    (["--c", "--json"], ["--c", "--json"]),  # an option is not a value: argparse says so
    (["--plot", "-1.png"], ["--plot", "-1.png"]),  # not a number option
    (["--", "--c", "-1"], ["--", "--c", "-1"]),
    (["--tol", "-1", "--lr=-2"], ["--tol=-1", "--lr=-2"]),  # an abbreviation argparse expands
])
def test_negative_values_are_joined_to_their_option(argv, joined):
    assert join_negative_values(argv) == joined


def test_every_number_option_exists():
    options = {o for sub in _subparsers() for a in sub._actions for o in a.option_strings}
    assert set(NUMBER_OPTIONS) <= options


def test_a_negative_rational_c_is_a_value(capsys):
    code, out, _ = run_cli(capsys, "classify", MLP, "--preset", "sp", "--c", "-1/2", "--json")
    assert code == 0 and json.loads(out)["params"]["W2"]


def test_dump_and_a_module_output_are_not_taken_together(capsys, tmp_path):
    code, _, err = run_cli(capsys, "derive", MLP, "--dump", "ir", "-o", str(tmp_path / "m.py"))
    assert code == 2 and "do not go together" in err and not (tmp_path / "m.py").exists()


def test_derive_o_replaces_a_module_it_wrote(capsys, tmp_path):
    out = tmp_path / "m.py"
    assert run_cli(capsys, "derive", MLP, "-o", str(out))[0] == 0
    assert run_cli(capsys, "derive", MLP, "-o", str(out), "--optimizer", "sgd")[0] == 0
    assert "for sgd, generated by tensorprog." in out.read_text().splitlines()[0]


def test_a_base_width_at_which_the_program_has_no_network(capsys):
    code, _, err = run_cli(capsys, "check", HEADS, "--base-width", "7")
    assert code == 2 and "--base-width 7: dim" in err and "not a whole number" in err


COMMANDS = [["derive", MLP], ["derive", MLP, "--json"], ["derive", MLP, "--explain"],
            ["derive", MLP, "--dump", "ir"], ["classify", MLP, "--preset", "sp"],
            ["--help"], ["--version"]]


def _process(argv, stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tensorprog.cli", *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def _closed_pipe():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte, as `| head -c 0` leaves it
    return os.fdopen(write, "w")


@pytest.mark.parametrize("argv", COMMANDS)
def test_a_closed_stdout_ends_quietly(capsys, monkeypatch, argv):
    with _closed_pipe() as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code, _, err = run_cli(capsys, *argv)
        monkeypatch.undo()
    assert code == 1 and err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv", COMMANDS)
def test_a_full_stdout_is_a_clear_error(capsys, monkeypatch, argv):
    with open("/dev/full", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code, _, err = run_cli(capsys, *argv)
        monkeypatch.undo()
    assert code == 2 and err.startswith("error: cannot write the output: No space left")


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_closed_and_full_stdout_of_a_real_process():
    """The interpreter's own final flush must not fail again after the message."""
    with _closed_pipe() as stdout:
        out = _process(["derive", MLP], stdout)
    assert (out.returncode, out.stderr) == (1, "")
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            out = _process(["derive", MLP, "--json"], full)
        assert out.returncode == 2 and out.stderr == (
            "error: cannot write the output: No space left on device\n"
            "help: free some disk space, or send the output elsewhere\n")


def _subparsers() -> list[argparse.ArgumentParser]:
    top = build_parser()
    subs = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [top, *subs[0].choices.values()]


def test_every_option_of_every_subcommand_says_what_it_does():
    for parser in _subparsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (parser.prog, action.dest)


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out == f"tensorprog {tensorprog.__version__}\n"
