"""Every bad input to the command line ends in a clear message and exit status 2, a verdict, or a
correct result; never a traceback. Tables of (arguments, expected message), run in-process through
``main``; a subprocess only where the test needs a real closed or full stdout."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

import tensorprog
from tensorprog.cli.main import NUMBER_OPTIONS, build_parser, join_negative_values, main
from tensorprog.numerics.transfer import MIN_FINITE, Sweep

MLP = str(ROOT / "examples" / "mlp.tp")
HEADS = str(ROOT / "examples" / "transformer_heads.tp")
# an autoencoder-like program: its input and output share the dim d
SHARED = ("width n = 16\ndim d = 4\ninput x : [d]\nparam W1 : [n, d]\nparam W2 : [d, n]\n"
          "h = W1 @ x\nz = relu(h)\noutput y = W2 @ z\n")


def _main(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return exit_.value.code, out.out, out.err


# --- negative numbers as option values ----------------------------------------------------------


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
    code, out, _ = _main(capsys, "classify", MLP, "--preset", "sp", "--c", "-1/2", "--json")
    assert code == 0 and json.loads(out)["params"]["W2"]


# --- the --abc file -----------------------------------------------------------------------------

ABC_OK = {"W1": {"a": "0", "b": "0", "c": "0"}, "b1": {"a": "0", "b": "0", "c": "0"},
          "W2": {"a": "0", "b": "1/2", "c": "1"}, "b2": {"a": "0", "b": "0", "c": "0"},
          "W3": {"a": "0", "b": "oo", "c": "1"}}


def _abc(**changes) -> str:
    return json.dumps({**ABC_OK, **changes})


@pytest.mark.parametrize(("content", "message"), [
    (_abc(W1={"a": "1/0", "b": "0", "c": "0"}), r"param 'W1', key 'a': not an exact exponent: "
                                                r'"1/0"'),
    (_abc(W2={"a": "0", "b": "abc", "c": "0"}), r"param 'W2', key 'b': not an exact exponent"),
    (_abc(W2={"a": "0", "b": "0", "c": "nan"}), r"param 'W2', key 'c': not an exact exponent"),
    (_abc(W2={"a": "0", "b": None, "c": "0"}), r"param 'W2', key 'b': not an exponent: null"),
    (_abc(W2={"a": True, "b": "0", "c": "0"}), r"param 'W2', key 'a': not an exponent: true"),
    (_abc(W2={"a": "0", "b": "0"}), r"param 'W2' needs exactly the keys a, b, c \(missing c\)"),
    (_abc(W2={"a": 0, "b": 0, "c": 0, "d": 0}), r"\(unknown 'd'\)"),
    (_abc(W2=[0, 0, 0]), r"param 'W2' needs exactly .* \(got a JSON list\)"),
    (_abc(W9={"a": 0, "b": 0, "c": 0}), r"no param named W9 in the program(.|\n)*W1, b1, W2"),
    (_abc(W2={"a": "oo", "b": "0", "c": "0"}), r"param 'W2': a must be finite"),
    ('{"W1": {"a": 1e999, "b": 0, "c": 0}}', r"key 'a': not an exponent: Infinity"),
    ('{"W1": {"a": 0, "b": 0, "c": 0}, "W1": {"a": 0, "b": 0, "c": 1}}', r"'W1' given twice"),
    ("[1, 2]", r"expected an object .* not a JSON list"),
    ('"W1"', r"expected an object .* not a JSON str"),
    ('{"W1": ', r"invalid JSON"),
    (b"\xff\xfe{}", r"not UTF-8 text \(byte 0\)"),
])
def test_bad_abc_files(capsys, tmp_path, content, message):
    path = tmp_path / "abc.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = _main(capsys, "classify", MLP, "--abc", str(path))
    assert code == 2 and re.search(message, err), err


def test_abc_file_that_is_missing_or_a_directory(capsys, tmp_path):
    for path, why in ((tmp_path / "nope.json", "No such file"), (tmp_path, "Is a directory")):
        code, _, err = _main(capsys, "classify", MLP, "--abc", str(path))
        assert code == 2 and "cannot read it" in err and why in err


@pytest.mark.parametrize(("c", "message"), [
    ("1/0", 'not an exact exponent: "1/0"'), ("nan", "not an exact exponent"),
    ("-oo", "a learning rate cannot scale as n\\^oo"),
])
def test_bad_global_c(capsys, c, message):
    code, _, err = _main(capsys, "classify", MLP, "--preset", "mup", "--c", c)
    assert code == 2 and re.search(message, err), err


# --- numeric options: ranges, with why ----------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "1e38"], r"--lr 1e\+38: the learning rate must be a positive number, at most"),
    (["--lr", "0"], "must be a positive number"),
    (["--lr", "nan"], "must be a positive number"),
    (["--lr", "-1e-3"], "must be a positive number"),
    (["--tolerance", "nan"], "tolerance must be positive and below 1/2"),
    (["--tolerance", "inf"], "tolerance must be positive and below 1/2"),
    (["--tolerance", "-1"], "tolerance must be positive"),
    (["--steps", "0"], r"--steps 0: must be from 2 to 1000(.|\n)*judges changes from step 2"),
    (["--steps", "10000000"], "must be from 2 to 1000"),
    (["--seeds", "-1"], "--seeds -1: must be from 1 to 100"),
    (["--batch-size", "0"], "--batch-size 0: must be from 1 to 65536"),
    (["--widths", "64,64,128"], "64 given twice"),
    (["--widths", "64,0"], "at least two different positive widths"),
    (["--widths", "-64,128"], "at least two different positive widths"),
    (["--widths", "64.5,128"], "comma-separated integers"),
    (["--widths", "1e9,64"], "comma-separated integers"),
    (["--widths", ",".join(map(str, range(1, 101)))], "100 widths, at most 32"),
    (["--widths", "64,1000000000"], r"width 1000000000 has 1,000,00.* weights(.|\n)*at most "
                                    r"about \d+"),
    (["--base-width", "0"], "expected a positive integer"),
    (["--base-width", "-2"], "expected a positive integer"),
    (["--plot", "."], "is a directory|unknown figure format"),
])
def test_check_refuses_out_of_range_numbers(capsys, args, message):
    code, _, err = _main(capsys, "check", MLP, *args)
    assert code == 2 and re.search(message, err), err


def test_dump_and_a_module_output_are_not_taken_together(capsys, tmp_path):
    code, _, err = _main(capsys, "derive", MLP, "--dump", "ir", "-o", str(tmp_path / "m.py"))
    assert code == 2 and "do not go together" in err and not (tmp_path / "m.py").exists()


def test_a_base_width_at_which_the_program_has_no_network(capsys):
    code, _, err = _main(capsys, "check", HEADS, "--base-width", "7")
    assert code == 2 and "--base-width 7: dim" in err and "not a whole number" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "inf", "--hp", "init_std"], "must be a positive number"),
    (["--values", "1e-3,1e-2,1e38"], r"--values 1e\+38: the learning rate"),
    (["--values", "-1e-3,1e-2,1"], "-0.001 is not a positive number"),
    (["--values", "nan,1,2"], "nan is not a positive number"),
    (["--steps", "0"], "--steps 0: must be from 1 to 100000"),
    (["--seeds", "0"], "--seeds 0: must be from 1 to 100"),
    (["--jobs", "100000"], "--jobs 100000: must be from 1 to 256"),
    (["--batch-size", "-3"], "--batch-size -3: must be from 1 to 65536"),
    (["--widths", "8,8"], "at least two different"),
    (["--param", ","], "no parametrization given"),
])
def test_transfer_refuses_out_of_range_numbers(capsys, args, message):
    code, _, err = _main(capsys, "transfer", MLP, "--data", "digits", "--cache", "none", *args)
    assert code == 2 and re.search(message, err), err


# --- transfer: data files, the program's dims, the cache -----------------------------------------

torch = pytest.importorskip("torch")


def _data_files(tmp_path: Path) -> dict[str, Path]:
    def y():
        return torch.arange(16) % 2

    nan = torch.randn(16, 4)
    nan[3, 2] = math.nan
    blobs = {
        "nan": {"x": nan, "y": y()},
        "inf64": {"x": torch.full((16, 4), 1e300, dtype=torch.float64), "y": y()},
        "sparse": {"x": torch.randn(16, 4).to_sparse(), "y": y()},
        "meta": {"x": torch.empty(16, 4, device="meta"), "y": y()},
        "complex": {"x": torch.randn(16, 4, dtype=torch.complex64), "y": y()},
        "float_y": {"x": torch.randn(16, 4), "y": y().float()},
        "bool_y": {"x": torch.randn(16, 4), "y": y() == 0},
        "huge_y": {"x": torch.randn(16, 4), "y": torch.tensor([0] * 15 + [10 ** 12])},
        "neg_y": {"x": torch.randn(16, 4), "y": torch.tensor([0] * 15 + [-3])},
        "one_class": {"x": torch.randn(16, 4), "y": torch.zeros(16, dtype=torch.long)},
        "empty": {"x": torch.zeros(0, 4), "y": torch.zeros(0, dtype=torch.long)},
        "no_features": {"x": torch.zeros(16, 0), "y": y()},
        "shape": {"x": torch.randn(16, 4), "y": torch.arange(15) % 2},
        "huge_tokens": {"tokens": torch.tensor([1, 2, 10 ** 12])},
        "one_token": {"tokens": torch.zeros(50, dtype=torch.long)},
        "both": {"x": torch.randn(16, 4), "y": y(), "tokens": torch.arange(9)},
        "list": [torch.randn(3)],
        "tensor": torch.randn(3),
        "keys": {"w": torch.randn(3)},
        "x_not_tensor": {"x": [[1.0]], "y": y()},
    }
    out = {}
    for name, blob in blobs.items():
        torch.save(blob, tmp_path / f"{name}.pt")
        out[name] = tmp_path / f"{name}.pt"
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a torch file")
    out["junk"] = tmp_path / "junk.pt"
    return out


DATA_ERRORS = {
    "nan": r"x\[3, 2\] is nan: the data must be finite",
    "inf64": r"x\[0, 0\] is inf once converted to float32",
    "sparse": r"x is a torch.sparse_coo tensor, not a dense one",
    "meta": r"x is a meta tensor",
    "complex": r"x holds complex numbers",
    "float_y": r"y must hold non-negative integer labels, not torch.float32",
    "bool_y": r"y must hold non-negative integer labels, not torch.bool",
    "huge_y": r"y\[15\] is 1000000000000: the output layer would need",
    "neg_y": r"y\[15\] is -3: labels must be non-negative",
    "one_class": r"y holds one class only",
    "empty": r"N > 0",
    "no_features": r"d_in > 0",
    "shape": r"got \(16, 4\) and \(15,\)",
    "huge_tokens": r"tokens\[2\] is 1000000000000",
    "one_token": r"every token is 0",
    "both": r"holds both x, y and tokens",
    "list": r"not a dict of tensors but a list",
    "tensor": r"not a dict of tensors but a Tensor",
    "keys": r"got the keys 'w'",
    "x_not_tensor": r"x is a list, not a tensor",
    "junk": r"cannot read it as a torch file",
}


def test_bad_data_files_are_refused_naming_the_array(capsys, tmp_path):
    files = _data_files(tmp_path)
    assert set(files) == set(DATA_ERRORS)
    for name, message in DATA_ERRORS.items():
        code, _, err = _main(capsys, "transfer", MLP, "--data", str(files[name]), "--cache",
                             "none")
        assert code == 2 and re.search(message, err), (name, err)
        assert f"--data {files[name]}" in err


def test_data_path_that_is_missing_or_a_directory(capsys, tmp_path):
    (tmp_path / "dir.pt").mkdir()
    for path, why in ((tmp_path / "none.pt", "no such file"), (tmp_path / "dir.pt",
                                                                "is a directory")):
        code, _, err = _main(capsys, "transfer", MLP, "--data", str(path), "--cache", "none")
        assert code == 2 and why in err


def test_a_program_whose_input_and_output_share_a_dim(capsys, tmp_path):
    (tmp_path / "shared.tp").write_text(SHARED)
    torch.save({"x": torch.randn(8, 4), "y": torch.arange(8) % 3}, tmp_path / "set.pt")
    code, _, err = _main(capsys, "transfer", str(tmp_path / "shared.tp"), "--data",
                         str(tmp_path / "set.pt"), "--cache", "none")
    assert code == 2
    assert "input and output share the dim d, but the data has 4 input features and 3" in err
    torch.save({"x": torch.randn(8, 4), "y": torch.arange(8) % 4}, tmp_path / "square.pt")
    code, out, _ = _main(capsys, "transfer", str(tmp_path / "shared.tp"), "--data",
                         str(tmp_path / "square.pt"), "--cache", "none", "--param", "mup",
                         "--widths", "8,16", "--values", "1e-2,1e-1,1", "--steps", "2",
                         "--seeds", "1", "--jobs", "1", "--json")
    assert code == 0 and json.loads(out)["trials"] == 6  # as many features as classes: it runs


def test_a_cache_path_that_cannot_hold_the_cache(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = _main(capsys, "transfer", MLP, "--data", "digits", "--cache",
                         str(tmp_path / "file"))
    assert code == 2 and "is a file, not a directory" in err
    code, _, err = _main(capsys, "transfer", MLP, "--data", "digits", "--cache",
                         str(tmp_path / "file" / "below"))
    assert code == 2 and "cannot write the trial cache there" in err


def test_wrong_cache_entries_are_trained_again_with_a_warning(capsys, tmp_path):
    torch.save({"x": torch.randn(32, 4, generator=torch.Generator().manual_seed(0)),
                "y": torch.arange(32) % 3}, tmp_path / "set.pt")
    cache = tmp_path / "cache"
    argv = ["transfer", MLP, "--data", str(tmp_path / "set.pt"), "--param", "mup", "--widths",
            "8,16", "--values", "1e-3,1e-2,1e-1", "--steps", "2", "--seeds", "1", "--jobs", "1",
            "--cache", str(cache), "--json"]
    code, out, err = _main(capsys, *argv)
    first = json.loads(out)["parametrizations"]["mup"]["losses"]
    assert code == 0 and "warning" not in err
    entries = sorted((cache / "transfer").glob("*.json"))
    assert len(entries) == 6
    good = json.loads(entries[1].read_text())
    entries[0].write_text('{"loss": 0.1')  # truncated
    entries[1].write_text(entries[2].read_text())  # another trial's result, filed under this one
    entries[2].write_text(json.dumps({**good, "key": entries[2].stem, "loss": "low"}))
    entries[3].write_text("[1, 2]")  # not an object
    code, out, err = _main(capsys, *argv)
    data = json.loads(out)
    assert code == 0 and data["cached"] == 2
    assert "4 cached trial(s)" in err and "trained again" in err
    assert data["parametrizations"]["mup"]["losses"] == first  # the same numbers, recomputed
    code, out, err = _main(capsys, *argv)
    assert json.loads(out)["cached"] == 6 and "warning" not in err  # rewritten, now good


def _sweep(losses: dict[int, list[float]]) -> Sweep:
    values = [2.0 ** k for k in range(-4, 1)]
    return Sweep("lr", sorted(losses), values, 1,
                 {"mup": {w: dict(zip(values, row, strict=True)) for w, row in losses.items()}},
                 {"program": "p", "data": "d", "data_about": "", "optimizer": "adam",
                  "steps": 1, "batch_size": 1, "device": "cpu", "trials": 10, "cached": 0})


def test_a_sweep_that_all_diverged_claims_nothing():
    from tensorprog.numerics.transfer import render

    s = _sweep({8: [math.inf] * 5, 16: [math.inf] * 5})
    assert s.wider_is_better("mup") is None and s.drift("mup") is None
    assert s.optimum("mup", 8) == (None, True)
    text = render(s)
    assert "at every value: undetermined" in text and "every trial diverged" in text
    assert "yes" not in text
    entry = s.as_dict()["parametrizations"]["mup"]
    assert entry["wider_is_better"] is None and entry["undetermined"]


def test_too_few_finite_points_give_no_optimum_and_no_verdict():
    inf = math.inf
    s = _sweep({8: [1.0, 0.5, inf, inf, inf], 16: [0.9, 0.4, inf, inf, inf]})
    assert MIN_FINITE == 3
    assert s.optimum("mup", 8)[0] is None and s.wider_is_better("mup") is None
    assert "fewer than 3 HP values" in " ".join(s.undetermined("mup"))
    # one wider run that diverged where the narrower trained is a counterexample, a clear "no"
    s = _sweep({8: [1.0, 0.5, 0.7, 0.9, 2.0], 16: [0.9, 0.4, 0.6, 0.8, inf]})
    assert s.wider_is_better("mup") is False and s.optimum("mup", 16)[0] is not None
    s = _sweep({8: [1.0, 0.5, 0.7, 0.9, inf], 16: [0.9, 0.4, 0.6, 0.8, inf]})
    assert s.wider_is_better("mup") is True and s.undetermined("mup") == []


# --- stdout closed or full ----------------------------------------------------------------------

COMMANDS = [["derive", MLP], ["derive", MLP, "--json"], ["derive", MLP, "--explain"],
            ["derive", MLP, "--dump", "ir"], ["classify", MLP, "--preset", "sp"],
            ["--help"], ["--version"]]


def _cli(argv, stdout) -> subprocess.CompletedProcess:
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
        code, _, err = _main(capsys, *argv)
        monkeypatch.undo()
    assert code == 1 and err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv", COMMANDS)
def test_a_full_stdout_is_a_clear_error(capsys, monkeypatch, argv):
    with open("/dev/full", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        code, _, err = _main(capsys, *argv)
        monkeypatch.undo()
    assert code == 2 and err.startswith("error: cannot write the output: No space left")


def test_closed_and_full_stdout_of_a_real_process():
    """The interpreter's own final flush must not fail again after the message."""
    with _closed_pipe() as stdout:
        out = _cli(["derive", MLP], stdout)
    assert (out.returncode, out.stderr) == (1, "")
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            out = _cli(["derive", MLP, "--json"], full)
        assert out.returncode == 2 and out.stderr == (
            "error: cannot write the output: No space left on device\n"
            "help: free some disk space, or send the output elsewhere\n")


# --- help and version ---------------------------------------------------------------------------


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
    code, out, _ = _main(capsys, "--version")
    assert code == 0 and out == f"tensorprog {tensorprog.__version__}\n"


# --- odd paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["derive", "{tmp}/missing.tp"], "cannot read .*missing.tp: No such file"),
    (["derive", "{tmp}"], "Is a directory"),
    (["derive", "{tmp}/empty.tp"], "the program declares no width"),
    (["derive", MLP, "-o", "{tmp}/no/dir/out.py"], "cannot write .*out.py"),
    (["derive", MLP, "-o", "{tmp}"], "cannot write .*: Is a directory"),
    (["check", MLP, "--plot", "{tmp}/no/dir/c.png"], "no directory"),
    (["check", MLP, "--plot", "{tmp}/dir.png"], "--plot .*dir.png: is a directory"),
    (["transfer", MLP, "--data", "digits", "--plot", "{tmp}/dir.png"], "is a directory"),
    (["derive", ""], "program: the path is empty"),
    (["derive", MLP, "-o", ""], "-o: the path is empty"),
    (["check", MLP, "--plot", " "], "--plot: the path is empty"),
])
def test_odd_paths(capsys, tmp_path, argv, message):
    (tmp_path / "empty.tp").write_text("")
    (tmp_path / "dir.png").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = _main(capsys, *argv)
    assert code == 2 and re.search(message, err), err
