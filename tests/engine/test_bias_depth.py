"""A residual branch that ends in the block's own bias (`return h + (W2 @ relu(u) + b2)`, the
form of every GPT-2 and nanoGPT block): the depth pass sums the bias over the L
repetitions as a branch of its own (docs/theory.md, "Depth"), so it gets depth exponents of its
own, derived from its init (a CLT sum if random, an LLN sum if a constant) and its updates (an
LLN sum), and the depth check measures them."""

from __future__ import annotations

import pytest
from conftest import RESMLP

import tensorprog as tp
from tensorprog.engine.exponents import ABC, canon

_RET = "    return h + W2 @ relu(u)\n"


def _biased(init: str = " = 0", ret: str = "    return h + (W2 @ relu(u) + b2)\n") -> str:
    assert _RET in RESMLP
    return RESMLP.replace("    param W2 : [n, n]\n",
                          f"    param W2 : [n, n]\n    param b2 : [n]{init}\n").replace(_RET, ret)


def _abc(*x) -> ABC:
    return ABC(*map(canon, x))


@pytest.mark.parametrize("ret", ["    return h + (W2 @ relu(u) + b2)\n",
                                 "    v = W2 @ relu(u) + b2\n    return h + v\n"])
def test_a_bias_ending_the_branch_gets_completep_like_the_branchs_last_weight(ret):
    # oracle (CompleteP): the bias's L updates add coherently, so each is Θ(1/L) (aL + cL = 1);
    # its init, a constant, adds as L too, and completep sets its init to its update (aL + bL = 1)
    d = tp.derive(tp.parse(_biased(ret=ret)), "adam")
    assert d.depth is not None, d.depth_refused
    assert d.depth.abc == {"W_in": _abc(0, 0, 0), "W_out": _abc(0, 0, 0), "res.W1": _abc(0, 0, 0),
                           "res.W2": _abc(1, 0, 0), "res.b2": _abc(1, 0, 0)}
    assert d.depth.free == {}
    assert d.eps_depth["res.b2"] == canon(1)  # its gradient is a sum over L, as W2's
    assert d.depth.check.regime == "feature_learning" and d.depth.check.all_maximal
    # the width exponents are those of any bias: input-like, Θ(1) init and Adam LR
    assert d.abc["res.b2"] == _abc(0, 0, 0)


@pytest.mark.parametrize(("init", "top"), [("", "1/2"), (" = 0", "1"), (" = 1", "1")])
def test_the_bias_init_sums_as_clt_when_random_and_as_lln_when_constant(init, top):
    # a random bias, centred and fresh in each repetition, adds as √L at init: its init may be
    # L^-1/2 (depth-mup takes it) up to its update's L^-1 (completep); a constant one, the same
    # in every repetition, adds as L: nothing is free
    source = _biased(init)
    completep = tp.derive(tp.parse(source), "adam").depth
    deep_mup = tp.derive(tp.parse(source), "adam", depth_convention="depth-mup").depth
    assert completep.abc["res.b2"] == _abc(1, 0, 0)
    assert deep_mup.abc["res.b2"] == _abc(top, 0, 1 - canon(top))
    assert ("res.b2" in completep.free) == (init == "")


def test_an_outer_vector_added_by_every_repetition_is_still_refused():
    # an outer param is the same in every repetition and no param of the block scales it
    source = _biased("", "    return h + (W2 @ relu(u) + c)\n").replace(
        "param W_out : [d_out, n]\n", "param W_out : [d_out, n]\nparam c : [n]\n").replace(
        "    param b2 : [n]\n", "")
    d = tp.derive(tp.parse(source), "adam")
    assert d.depth is None
    assert "the branch c is not computed inside the block (the argument itself, an outer " \
           "param or an outer value)" in d.depth_refused


@pytest.mark.slow  # trains 4 depths up to 16 blocks; the traced model's 2-vs-16 check stays in
def test_completep_keeps_the_biased_stream_and_features_moving_at_every_depth():
    # the engine's depth check on the emitted module (width 32, Adam lr 1e-3, 2 steps, depths
    # 2..16, one seed): change slopes in L near 0 with the derived exponents, as for the
    # unbiased block (tests/emit/test_depth_emit.py), with the same +-0.25 tolerance. Measured:
    # hL -0.08, res.*.h +0.11, res.*.u +0.01; without depth scaling +2.57, +2.48, +2.29
    def slopes(param):
        result = tp.check(tp.parse(_biased()), "adam", param=param, depths=(2, 4, 8, 16),
                          width=32, steps=2, seeds=1, lr=1e-3, batch_size=8, device="cpu")
        assert result.settings["axis"] == "depth"
        return {name: result.slope(name, 2) for name in ("hL", "res.*.h", "res.*.u")}

    for name, slope in slopes("mup").items():
        assert abs(slope) < 0.25, (name, slope)
    assert all(slope > 1.0 for slope in slopes("mup-width").values())
