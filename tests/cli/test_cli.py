"""The command line: outputs, JSON keys, exit codes, and no torch import for derive."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sympy
from conftest import ROOT

from tensorprog.cli.main import main

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


@pytest.mark.parametrize(("content", "message"), [
    ("{", "invalid JSON"),
    ('{"W1": {"a": 0}}', "needs exactly the keys a, b, c"),
    ('{"W1": {"a": "x", "b": 0, "c": 0}}', "not an exact exponent"),
    ('{"W9": {"a": 0, "b": 0, "c": 0}}', "no param named W9"),
    ('{"W1": {"a": "oo", "b": 0, "c": 0}}', "a must be finite"),
    ('{"W1": {"a": 0, "b": 0, "c": 0}}', "no \\(a, b, c\\) given for param"),
])
def test_classify_bad_abc_file(capsys, tmp_path, content, message):
    path = tmp_path / "abc.json"
    path.write_text(content)
    code, _, err = _run(capsys, "classify", MLP, "--abc", str(path))
    assert code == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err)


def test_derive_and_classify_do_not_import_torch_matplotlib_or_tqdm():
    code = (f"import sys; from tensorprog.cli.main import run; run(['derive', {MLP!r}]); "
            f"run(['classify', {MLP!r}, '--preset', 'sp']); "
            "print(sorted(m for m in ('torch', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_console_script_runs():
    out = subprocess.run(["tensorprog", "derive", MLP, "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["program"] == "mlp"
