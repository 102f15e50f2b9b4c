"""The forced-vanishing note of an SSD (tensorprog/engine/ssd_init.py) never hides a vanishing
that something else causes, on a one-block Mamba-2 (examples/ssd.tp's block, hand-checked):

* forced: p = ssd(...) at n^-1 (cb = C·B, C and B at a readout's n^-1/2) and m = mix(p, x, P)
  at n^-1; with m the only term (no skip, no norm) the branch's sums are forced too;
* not forced (violations): a sum whose other term vanishes more slowly than m (a bias or the
  skip D x initialised too small: with p = 0 it would be as large); p smaller than cb because
  the steps dt vanish; m smaller than p because x does;
* refused: a norm that divides by a forced vector (its gradient at init is n times its
  trained size), and SGD (C and B at a saddle its steps never leave in the width limit)."""

import pytest

import tensorprog as tp
from tensorprog.engine.classify import classify
from tensorprog.engine.exponents import ABC, HALF, INF
from tensorprog.engine.optimizers import ADAM
from tensorprog.engine.parametrization import zero_init
from tensorprog.errors import EngineError, UsageError

BASE = """\
width n = 64
dim V = 64
dim T = 6
dim di = 2 * n
dim P = 16
dim H = n / 8
dim N = 8
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
param Wx : [di, n]
param Wz : [di, n]
param WB : [N, n]
param WC : [N, n]
param Wdt : [H, n]
param bdt : [H] = -2
param Alog : [H] = 0
param D : [H] = 1
param gn : [di] = 1
param Wo : [n, di]
h = E @ tok
a = rmsnorm(h)
x = Wx @ a
dt = softplus(Wdt @ a + bdt)
cb = dot(WC @ a, WB @ a, N)
p = ssd(cb, dt, -1 * exp(Alog), P)
m = mix(p, x, P)
y = m + spread(D, P) * x
o = h + Wo @ (gn * rmsnorm(y * silu(Wz @ a)))
output logits = U @ rmsnorm(o)
"""


def _judged(text: str, **changes) -> tuple[list[str], list[str]]:
    """(the vectors noted as forced, the vanishing_init violations) under the derived
    exponents with ``changes`` made to them."""
    program = tp.parse(text)
    abc = {**tp.derive(program, "adam").abc, **changes}
    c = classify(program, ADAM, abc)
    return ([n.split()[0] for n in c.notes],
            [v.tensor for v in c.violations if v.condition == "vanishing_init"])


def test_the_block_derives_with_p_and_the_mixing_forced():
    assert _judged(BASE) == (["p", "m"], [])


def test_a_sum_with_a_bias_initialised_too_small_is_a_violation():
    text = BASE.replace("y = m + spread(D, P) * x", "param c : [di]\ny = m + c").replace(
        "param D : [H] = 1\n", "")
    assert _judged(text) == (["p", "m"], [])
    # c at n^-1/2: y = m + c vanishes as c does, which a Θ(1) c would lift
    assert _judged(text, c=ABC(0, "1/2", 0)) == (["p", "m"], ["y", "o_3"])


def test_a_skip_initialised_too_small_is_a_violation_at_the_sum_too():
    assert _judged(BASE, D=ABC(0, "1/2", 0)) == (["p", "m"], ["y_1", "y_2", "y", "o_3"])


def test_a_mixing_of_values_initialised_too_small_is_a_violation():
    assert _judged(BASE, Wx=ABC(0, 1, 1)) == (["p"], ["x", "m", "y_2", "y", "o_3"])


def test_weights_made_smaller_than_cb_by_vanishing_steps_are_a_violation():
    # one group of B and C per head (C, B of di: hidden layers, cb Θ(1)), dt = Wdt @ a with
    # Wdt below a hidden layer's init: p vanishes because dt does, not because cb does
    text = BASE.replace("[N, n]", "[di, n]").replace("dim N = 8", "dim N = 16").replace(
        "softplus(Wdt @ a + bdt)", "Wdt @ a").replace("param bdt : [H] = -2\n", "")
    assert _judged(text) == ([], [])
    assert _judged(text, Wdt=ABC(0, 1, 1)) == ([], ["dt", "p", "m"])


def test_without_skip_or_norm_the_branch_is_forced():
    text = BASE.replace("y = m + spread(D, P) * x", "y = m").replace(
        "(gn * rmsnorm(y * silu(Wz @ a)))", "(y * silu(Wz @ a))")
    text = text.replace("param D : [H] = 1\n", "").replace("param gn : [di] = 1\n", "")
    assert _judged(text) == (["p", "m", "y", "o_3", "o_4"], [])


@pytest.mark.parametrize(("old", "new", "divided"), [
    ("y = m + spread(D, P) * x", "y = m", "o_3"),  # Mamba-2's gated norm without the skip
    ("y = m + spread(D, P) * x", "y = rmsnorm(m) + spread(D, P) * x", "m"),
])
def test_a_norm_of_a_forced_vector_is_refused(old, new, divided):
    text = BASE.replace(old, new).replace("param D : [H] = 1\n", "" if "D" not in new else
                                          "param D : [H] = 1\n")
    with pytest.raises(EngineError, match=f"{divided} vanishes at init as 1/n \\(forced by an "
                       "SSD's weights\\) and \\S+ divides by its size") as e:
        tp.derive(tp.parse(text), "adam")
    assert "State-space mixing" in str(e.value)


def test_sgd_is_refused():
    with pytest.raises(EngineError, match="under sgd it stays so"):
        tp.derive(tp.parse(BASE), "sgd")


def test_a_state_size_that_grows_forces_only_n_to_the_minus_half():
    # N ∝ n: C and B are hidden layers' outputs, Θ(1); cb needs the scale 1/N (LLN after
    # training), which leaves P₀ at the CLT sum's n^-1/2: forced. A scale below 1/N makes P₀
    # smaller than that, n^-1, which the finite state size's n^-1 would have let pass
    text = BASE.replace("dim N = 8", "dim N = n").replace(
        "cb = dot(", "scale s = 1\ncb = s * dot(")
    program = tp.parse(text)
    d = tp.derive(program, "adam")
    assert d.abc["s"].a == 1 and d.analysis.init_["p"] == -HALF
    assert [n.split()[0] for n in d.check.notes] == ["p", "m"]
    assert _judged(text, s=ABC("3/2", 0, "oo")) == ([], ["p", "m"])
    # C₀ and B₀ are Θ(1): no saddle, so SGD derives too
    assert [n.split()[0] for n in tp.derive(program, "sgd").check.notes] == ["p", "m"]


def test_zeroing_both_c_and_b_is_refused():
    # --readout-zero-init zeroes every output weight, WB and WC among them: C = B = 0 exactly,
    # each one's gradient ∝ the other, so the mixing would never train (derive said "still
    # feature learning" before); zeroing one of them leaves the other's gradient
    program = tp.parse(BASE)
    abc = tp.derive(program, "adam").abc
    with pytest.raises(UsageError, match="makes C and B of the SSD p exactly 0"):
        zero_init(program, abc, readout=True)
    assert zero_init(program, abc, ("U", "WB"))["WB"].b is INF
