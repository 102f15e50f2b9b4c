"""Normalised vectors that turn in one step (numerics/turns.py): which vectors are normalised,
which turns mark a run past the small-update regime (from step 2 on, past TURNED of the
vector's size, averaged over seeds), and the warning that names them."""

from tensorprog import parse
from tensorprog.numerics.judge import CheckResult
from tensorprog.numerics.turns import TURNED, normalised, turned

PROGRAM = """
width n = 64
depth L = 2
dim V = 16
dim T = 4
input tok : tokens[T, V]
param E : [n, V]
param g : [n] = 1
param b : [n] = 0
param U : [V, n]
block layer(h) {
    param W : [n, n]
    param gb : [n] = 1
    return h + W @ (gb * rmsnorm(h))
}
hL = repeat L layer(E @ tok)
f = g * layernorm(hL) + b
output y = U @ f
"""


def test_normalised_vectors_are_a_norms_output_with_its_gain_and_bias_in_every_repetition():
    # f_1 = layernorm(hL), f_2 = g * f_1, f = f_2 + b; in the block out_1 = rmsnorm(h) and
    # out_2 = gb * out_1, under the generic name and each repetition's (as the check records
    # them); W @ out_2 and the residual sums are not normalised
    assert sorted(normalised(parse(PROGRAM))) == [
        "f", "f_1", "f_2", "layer.0.out_1", "layer.0.out_2", "layer.1.out_1", "layer.1.out_2",
        "layer.out_1", "layer.out_2"]


def test_a_turn_past_its_size_from_step_2_on_is_flagged_and_named_in_the_warning():
    widths, seeds = (256, 512), (0, 1)
    turns = {}
    for w in widths:
        for s in seeds:
            turns[("f", 1, w, s)] = 1.3  # step 1: a first step may turn far, not flagged
            turns[("f", 2, w, s)] = 0.6
            turns[("h", 2, w, s)] = 0.9
    turns[("h", 2, 512, 1)] = 1.5  # the mean over seeds at 512: 1.2
    assert turned(turns, widths, seeds) == [("h", 512, 2, (0.9 + 1.5) / 2)]
    turns[("h", 2, 512, 1)] = 2 * TURNED - 0.9  # the mean exactly TURNED: not past it
    assert turned(turns, widths, seeds) == []
    result = CheckResult([], 0.15, "mup", list(widths), list(seeds), 3, settings={"lr": 3e-3},
                         turned=[("h", 512, 2, 1.2)], names={"h": "lm_head.layer_norm"})
    assert not result.small_updates
    assert result.regime_warning() == (
        "not in the small-update regime: the normalised lm_head.layer_norm (h) changed by 1.20 "
        "times its own size in step 2 alone at width 512: its features turn (cosine about 0.28 "
        "with the step before) rather than move a little; the slopes then mix the learning rate "
        "with the width: lower the learning rate (e.g. lr 0.001)")
