"""`derive` in the depth L: the depth exponents follow from the depth desiderata (stable, every
update maximal in L, init not below its update), checked against TP6 (arXiv 2310.02244) and
CompleteP (arXiv 2505.01618), never tabulated in the engine."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import RESMLP, ROOT
from test_depth_exponents import ONE_LAYER

import tensorprog as tp
from tensorprog.cli.main import run
from tensorprog.engine.exponents import ABC, canon

GPT = (ROOT / "examples" / "gpt.tp").read_text()


def _depth(source: str, optimizer="adam", **kw) -> tp.Derivation:
    return tp.derive(tp.parse(source), optimizer, **kw)


def _abc(*x) -> ABC:
    return ABC(*map(canon, x))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_two_layer_blocks_derive_completep_with_nothing_free(optimizer):
    d = _depth(RESMLP, optimizer).depth
    assert d.abc == {"W_in": _abc(0, 0, 0), "W_out": _abc(0, 0, 0), "res.W1": _abc(0, 0, 0),
                     "res.W2": _abc(1, 0, 0)}
    assert d.free == {}
    assert d.check.regime == "feature_learning" and d.check.all_maximal
    # the convention only resolves free exponents: with none, it changes nothing
    assert _depth(RESMLP, optimizer, depth_convention="depth-mup").depth.abc == d.abc


def test_one_layer_blocks_leave_the_branch_free_and_the_convention_resolves_it():
    complete = _depth(ONE_LAYER).depth
    assert complete.free == {"res.W": (canon("1/2"), canon(1))}
    assert complete.abc["res.W"] == _abc(1, 0, 0)
    mup = _depth(ONE_LAYER, depth_convention="depth-mup").depth
    assert mup.free == complete.free
    assert mup.abc["res.W"] == _abc("1/2", 0, "1/2")
    for d in (complete, mup):
        assert d.abc["W_in"] == d.abc["W_out"] == _abc(0, 0, 0)
        assert d.check.regime == "feature_learning" and d.check.all_maximal


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "lion", "muon"])
def test_a_linear_branch_derives_as_a_one_layer_block(optimizer):
    # h + W @ h reads the stream itself inside the Stream that computes it (before: KeyError
    # in the depth pass): it holds the previous round's size, as a back edge does, and the
    # branch is the one-layer block's with the identity for tanh
    linear = ONE_LAYER.replace("W @ tanh(h)", "W @ h")
    assert linear != ONE_LAYER
    d, one = _depth(linear, optimizer).depth, _depth(ONE_LAYER, optimizer).depth
    assert d.free == one.free == {"res.W": (canon("1/2"), canon(1))}
    assert d.abc == one.abc
    assert d.check.regime == "feature_learning" and d.check.all_maximal


def test_gpt_blocks_scale_their_last_weights_only():
    d = _depth(GPT).depth
    assert d.free == {}
    last = {p for p, x in d.abc.items() if x != _abc(0, 0, 0)
            and not tp.parse(GPT).param_table[p].is_scale}
    assert last == {"layer.Wo", "layer.Wp"}
    assert d.abc["layer.Wo"] == d.abc["layer.Wp"] == _abc(1, 0, 0)


def test_sgd_keeps_the_width_exponents_and_says_why_depth_has_none():
    d = _depth(RESMLP, "sgd")
    assert d.depth is None and "under sgd are not derived yet" in d.depth_refused
    assert d.abc["res.W2"] == _abc(0, "1/2", 0)  # the width derivation still stands (SGD µP)


def test_a_fixed_repeat_has_no_depth_exponents():
    fixed = RESMLP.replace("repeat L", "repeat 3")
    d = _depth(fixed)
    assert d.depth is None and d.depth_refused is None


def test_unknown_depth_convention_is_an_engine_error():
    with pytest.raises(tp.EngineError, match="unknown depth convention"):
        _depth(RESMLP, depth_convention="sqrt")


def _cli(tmp_path, capsys, source: str, *flags: str) -> str:
    path = tmp_path / "net.tp"
    path.write_text(source)
    assert run(["derive", str(path), *flags]) == 0
    return capsys.readouterr().out


def test_derive_table_and_json_carry_the_depth_exponents(tmp_path, capsys):
    out = _cli(tmp_path, capsys, ONE_LAYER, "--depth-convention", "depth-mup")
    assert "exponents in L derived in the depth convention depth-mup" in out
    assert "free in L: aL + bL of res.W anywhere in [1/2, 1]" in out
    assert "emits a module that applies them" in out and "not derived yet" not in out
    explained = _cli(tmp_path, capsys, ONE_LAYER, "--explain")
    assert "exponents in L derived in the depth convention completep" in explained
    assert "no exponents in L" not in explained
    row = next(line.split() for line in out.splitlines() if line.startswith("res.W "))
    assert row[-4:] == ["1/2", "0", "1/2", "1/2"]  # aL bL cL, and Adam's epsL
    data = json.loads(_cli(tmp_path, capsys, ONE_LAYER, "--json"))
    assert data["parameters"]["res.W"]["depth"] == {"a": "1", "b": "0", "c": "0", "eps": "1"}
    assert data["depth"]["exponents"] == {"convention": "completep",
                                          "free": {"res.W": {"a+b": ["1/2", "1"]}}}


def test_derive_without_a_depth_has_no_depth_columns(tmp_path, capsys):
    out = _cli(tmp_path, capsys, RESMLP.replace("repeat L", "repeat 3"))
    assert " aL " not in out.splitlines()[4]
    data = json.loads(_cli(tmp_path, capsys, RESMLP.replace("repeat L", "repeat 3"), "--json"))
    assert "depth" not in data["parameters"]["res.W1"]


def test_the_emitted_module_carries_the_depth_exponents(tmp_path):
    from tensorprog.emit.module import emit
    from tensorprog.engine.optimizers import OPTIMIZERS
    from tensorprog.engine.parametrization import choose

    program = tp.parse(RESMLP)
    abc, depth_abc, label, _ = choose(program, OPTIMIZERS["adam"])
    assert label.endswith("completep in depth L")
    source = emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="test",
                  depth_abc=depth_abc).source
    assert '"res.W2": {"shape": ("n", "n",), "a": 0.0, "b": 0.5, "c": 1.0, "aL": 1.0, "bL": 0.0, ' \
           '"cL": 0.0,' in source
    assert "no depth scaling" not in source


_BLOCK = RESMLP.replace("    u = W1 @ h               # names inside are local to each repetition\n"
                        "    return h + W2 @ relu(u)\n", "{body}")


@pytest.mark.parametrize(("body", "why"), [
    ("    r = h + W2 @ relu(W1 @ h)\n    return r - h\n", "not computed inside the block"),
    ("    v = 0.5 * h + W2 @ relu(W1 @ h)\n    return h + v\n", "adds the block's argument again"),
    ("    return h + relu(h)\n", "uses none of the block's own params"),
    ("    return h + relu(W2 @ relu(W1 @ h))\n", "not feature learning"),
    # a function of the residual sum: the stream goes through it at every repetition, which
    # the depth rules (a sum of L branches on a stream passed on unchanged) do not model
    ("    return layernorm(h + W2 @ relu(W1 @ h))\n", "a post-norm block"),
    ("    return relu(h + W2 @ relu(W1 @ h))\n", "returns relu(...) of a residual sum"),
])
def test_block_forms_outside_the_depth_rules_keep_their_width_exponents(body, why):
    # each once crashed (KeyError, RecursionError) or called itself a bug: now the depth part is
    # refused with the reason and the width exponents, which hold at any fixed depth, stand
    source = _BLOCK.replace("{body}", body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)  # W1, W2 unused in one case
        d = _depth(source)
    assert d.depth is None and why in d.depth_refused
    if "W2" in body:
        assert d.abc["res.W2"] == _abc(0, "1/2", 1)
