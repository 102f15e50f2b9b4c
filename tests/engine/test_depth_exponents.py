"""The depth pass: exponents in the depth L of a `repeat L` block, checked against TP6 (arXiv
2310.02244) and CompleteP (arXiv 2505.01618) verdicts, never tabulated in the engine."""

from __future__ import annotations

import pytest
from conftest import RESMLP

import tensorprog as tp
from tensorprog.engine.classify import classify_depth
from tensorprog.engine.exponents import ABC, canon
from tensorprog.engine.optimizers import ADAM, SGD

ONE_LAYER = RESMLP.replace("""    param W1 : [n, n]
    param W2 : [n, n]
    u = W1 @ h               # names inside are local to each repetition
    return h + W2 @ relu(u)""", """    param W : [n, n]
    return h + W @ tanh(h)""")


def _classify(source: str, depth: dict[str, tuple]) -> tp.Classification:
    program = tp.parse(source)
    abc = {p.name: ABC(*depth.get(p.name, (0, 0, 0))) for p in program.params}
    return classify_depth(program, ADAM, abc)


def test_two_layer_blocks_without_depth_scaling_are_unstable():
    c = _classify(RESMLP, {})
    assert c.regime == "unstable"
    blow = {(v.condition, v.tensor): v.exponent for v in c.violations}
    # at init the L independent branches add as √L; their own updates add coherently, as L
    assert blow == {("stability_init", "res.h"): canon("1/2"),
                    ("stability_training", "res.h"): 1}


def test_two_layer_blocks_under_completep_learn_features_in_every_block():
    c = _classify(RESMLP, {"res.W2": (1, 0, 0)})  # a_L + b_L = 1, a_L + c_L = 1
    assert c.regime == "feature_learning" and not c.violations and c.all_maximal
    assert (c.params["res.W2"].init, c.params["res.W2"].update) == (-1, -1)
    assert (c.params["res.W1"].init, c.params["res.W1"].update) == (0, 0)


def test_two_layer_blocks_under_depth_mup_freeze_their_features():
    c = _classify(RESMLP, {"res.W2": ("1/2", 0, "1/2"), "res.W1": (0, 0, "1/2")})
    assert c.stable
    (v,) = c.violations
    assert (v.condition, v.tensor, v.exponent) == ("maximal_update", "res.W1", canon("-1/2"))
    assert "freeze as L grows" in v.message


@pytest.mark.parametrize("alpha", ["1/2", "3/4", "1"])
def test_one_layer_blocks_are_stable_and_maximal_for_alpha_in_half_to_one(alpha):
    a = canon(alpha)
    c = _classify(ONE_LAYER, {"res.W": (a, 0, 1 - a)})  # Adam update entries ∝ 1/L
    assert c.regime == "feature_learning" and not c.violations


def test_one_layer_blocks_below_alpha_half_blow_up():
    # at init (CLT over L of the branches) and in training (what they pass on of the stream's
    # change, through independent weights: CLT over L again), both as L^(1/2 - 1/4)
    c = _classify(ONE_LAYER, {"res.W": ("1/4", 0, "3/4")})
    assert [(v.condition, v.tensor, v.exponent) for v in c.violations] == [
        ("stability_init", "res.h", canon("1/4")), ("stability_training", "res.h", canon("1/4"))]


def test_sgd_with_depth_is_refused_not_guessed():
    program = tp.parse(RESMLP)
    abc = {p.name: ABC(0, 0, 0) for p in program.params}
    with pytest.raises(tp.EngineError, match="under sgd are not derived yet"):
        classify_depth(program, SGD, abc)


def test_a_block_that_is_not_residual_has_no_depth_exponents():
    program = tp.parse(RESMLP.replace("return h + W2 @ relu(u)", "return 2 * h + W2 @ relu(u)"))
    abc = {p.name: ABC(0, 0, 0) for p in program.params}
    with pytest.raises(tp.EngineError, match="does not return its argument plus a branch"):
        classify_depth(program, ADAM, abc)
