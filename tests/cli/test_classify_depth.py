"""`classify --abc` with depth exponents: the depth pass's verdict from the command line, beside
the width verdict, and its input errors."""

from __future__ import annotations

import json

import pytest
from conftest import RESMLP

from tensorprog.cli.main import main, run
from tensorprog.errors import UsageError

# µP's width exponents under Adam, so that the width verdict is the same in every test
WIDTH = {"W_in": (0, 0, 0), "W_out": (1, 0, 1), "res.W1": (0, "1/2", 1), "res.W2": (0, "1/2", 1)}


# the same network at a fixed depth of 4: no depth to scale
FIXED = "\n".join(line for line in RESMLP.replace("repeat L", "repeat 4").splitlines()
                  if not line.startswith("depth")) + "\n"


def _files(tmp_path, depth: dict, source: str = RESMLP) -> list[str]:
    program, abc = tmp_path / "net.tp", tmp_path / "abc.json"
    program.write_text(source)
    entries = {p: dict(zip("abc", map(str, x), strict=True)) for p, x in WIDTH.items()}
    for p, d in depth.items():
        is_abc = isinstance(d, tuple)
        entries[p]["depth"] = dict(zip("abc", map(str, d), strict=True)) if is_abc else d
    abc.write_text(json.dumps(entries))
    return [str(program), "--abc", str(abc)]


def _classify(capsys, tmp_path, depth: dict, *flags: str) -> str:
    assert run(["classify", *_files(tmp_path, depth), "--optimizer", "adam", *flags]) == 0
    return capsys.readouterr().out


def test_completep_learns_features_in_depth(capsys, tmp_path):
    out = _classify(capsys, tmp_path, {"res.W2": (1, 0, 0)})
    width, depth = out.split("Depth (L → ∞)")
    assert "regime: feature_learning" in width
    assert "res.W2 (1, 0, 0); 0, 0, 0 for the others" in depth
    assert ("stable: yes   feature learning in L: yes   every param updated maximally: yes   "
            "regime: feature_learning") in depth
    assert "Violations" not in depth


def test_no_depth_scaling_is_unstable_in_depth(capsys, tmp_path):
    data = json.loads(_classify(capsys, tmp_path, {}, "--json"))
    assert data["regime"] == "feature_learning"  # the width verdict is unchanged
    d = data["depth"]
    assert (d["stable"], d["feature_learning"], d["regime"]) == (False, False, "unstable")
    assert d["notes"] == []
    assert {(v["condition"], v["tensor"], v["exponent"]) for v in d["violations"]} == {
        ("stability_init", "res.h", "1/2"), ("stability_training", "res.h", "1")}
    assert d["exponents"]["res.W2"] == {"a": "0", "b": "0", "c": "0"}


def test_depth_mup_is_stable_but_freezes_the_first_layer(capsys, tmp_path):
    out = _classify(capsys, tmp_path, {"res.W2": ("1/2", 0, "1/2"), "res.W1": (0, 0, "1/2")})
    depth = out.split("Depth (L → ∞)")[1]
    assert "stable: yes   feature learning in L: yes   every param updated maximally: no" in depth
    assert "[maximal_update] res.W1 is not updated maximally" in depth
    assert "freeze as L grows" in depth and "res.W2 is not" not in depth


def test_sgd_refusal_is_a_note_after_the_width_verdict(capsys, tmp_path):
    assert run(["classify", *_files(tmp_path, {"res.W2": (1, 0, 0)}), "--optimizer", "sgd"]) == 0
    out = capsys.readouterr().out
    assert out.index("regime:") < out.index("Depth (L → ∞)")
    assert "note: depth exponents under sgd are not derived yet" in out
    assert "feature learning in L" not in out


def test_a_preset_says_it_applies_no_depth_scaling(capsys, tmp_path):
    program = _files(tmp_path, {})[0]
    assert run(["classify", program, "--preset", "mup", "--optimizer", "adam", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["depth"]
    assert d["notes"] == ["the preset mup has no depth form: it applies no depth scaling"]
    assert d["regime"] == "unstable"


@pytest.mark.parametrize("depth, message", [
    ({"res.W2": {"a": 1, "b": 0}}, r"param 'res.W2', key 'depth' needs exactly the keys a, b, c "
                                   r"\(missing c\)"),
    ({"res.W2": [1, 0, 0]}, r"param 'res.W2', key 'depth' needs .* \(got a JSON list\)"),
    ({"res.W2": {"a": "x", "b": 0, "c": 0}}, r"param 'res.W2', key 'depth', key 'a': not an "
                                             r"exact exponent"),
    ({"res.W2": {"a": "oo", "b": 0, "c": 0}}, r"param 'res.W2', key 'depth': a must be finite"),
])
def test_bad_depth_exponents_are_usage_errors(tmp_path, depth, message):
    with pytest.raises(UsageError, match=message):
        run(["classify", *_files(tmp_path, depth), "--optimizer", "adam"])


def test_an_unknown_key_beside_a_b_c_names_depth_as_allowed(tmp_path):
    args = _files(tmp_path, {})
    path = tmp_path / "abc.json"
    abc = json.loads(path.read_text())
    abc["res.W1"]["deep"] = {}
    path.write_text(json.dumps(abc))
    with pytest.raises(UsageError, match=r"keys a, b, c \(unknown 'deep'\)") as err:
        run(["classify", *args])
    assert 'also takes "depth"' in str(err.value)


def test_depth_keys_for_a_program_without_depth_exit_2(capsys, tmp_path):
    args = _files(tmp_path, {"res.W2": (1, 0, 0)}, source=FIXED)
    with pytest.raises(SystemExit) as exit_:
        main(["classify", *args, "--optimizer", "adam"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "depth exponents given (for res.W2), but" in err and "repeats no block over a " in err
