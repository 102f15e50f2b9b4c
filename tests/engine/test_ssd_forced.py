"""The forced-vanishing note of an SSD (tensorprog/engine/ssd_init.py) never hides a vanishing
that something else causes, on a one-block Mamba-2 (examples/ssd.tp's block, hand-checked):

* forced: p = ssd(...) at n^-1 (cb = C·B, C and B at a readout's n^-1/2) and m = mix(p, x, P)
  at n^-1; with m the only term (no skip, no norm) the branch's sums are forced too;
* not forced (violations): a sum whose other term vanishes more slowly than m (a bias or the
  skip D x initialised too small: with p = 0 it would be as large); p smaller than cb because
  the steps dt vanish; m smaller than p because x does;
* refused: a norm that divides by a forced vector (its gradient at init is n times its
  trained size), and SGD (C and B at a saddle its steps never leave in the width limit).

derive refuses every such program (no µP has the mixing Θ(1) at init); classify judges the
µP-like parametrization below (C's and B's layers initialised and trained as readouts)."""

import pytest

import tensorprog as tp
from tensorprog.engine.classify import classify
from tensorprog.engine.exponents import ABC, HALF, INF
from tensorprog.engine.optimizers import ADAM, SGD
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


#: µP's exponents but for the forced mixing (Adam): C's and B's layers are readouts
MUP_LIKE = {"E": ABC(0, 0, 0), **{w: ABC(0, 1, 1) for w in ("U", "WB", "WC")},
            **{w: ABC(0, "1/2", 1) for w in ("Wx", "Wz", "Wdt", "Wo")}}


def given(program, **changes) -> dict[str, ABC]:
    """MUP_LIKE for ``program``'s params (vectors as biases, Θ(1)), with ``changes``."""
    return {**{p.name: MUP_LIKE.get(p.name, ABC(0, 0, 0)) for p in program.params}, **changes}


def _judged(text: str, **changes) -> tuple[list[str], list[str]]:
    """(the vectors noted as forced, the vanishing_init violations) under MUP_LIKE with
    ``changes`` made to it."""
    program = tp.parse(text)
    c = classify(program, ADAM, given(program, **changes))
    return c.forced, [v.tensor for v in c.violations if v.condition == "vanishing_init"]


def test_the_block_classifies_with_p_and_the_mixing_forced():
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
    hidden = {w: ABC(0, "1/2", 1) for w in ("WB", "WC")}
    assert _judged(text, **hidden) == ([], [])
    assert _judged(text, Wdt=ABC(0, 1, 1), **hidden) == ([], ["dt", "p", "m"])


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


def test_derive_refuses_the_forced_mixing_at_the_ssd():
    with pytest.raises(EngineError, match="no µP has the state-space mixing Θ\\(1\\) at init"
                       ) as e:
        tp.derive(tp.parse(BASE), "adam")
    lines = BASE.splitlines()
    at = [lines.index(line) + 1 for line in ("p = ssd(cb, dt, -1 * exp(Alog), P)",
                                             "m = mix(p, x, P)")]
    assert [d.span.line for d in e.value.diagnostics[1:]] == at  # p, then m


def test_sgd_is_refused():
    with pytest.raises(EngineError, match="under sgd it stays so"):
        tp.derive(tp.parse(BASE), "sgd")


def test_a_state_size_that_grows_forces_only_n_to_the_minus_half():
    # N ∝ n: C and B are hidden layers' outputs, Θ(1); cb needs the scale 1/N (LLN after
    # training), which leaves P₀ at the CLT sum's n^-1/2: forced, and refused by derive. A
    # scale below 1/N makes P₀ smaller than that, n^-1, which the finite state size's n^-1
    # would have let pass
    text = BASE.replace("dim N = 8", "dim N = n").replace(
        "cb = dot(", "scale s = 1\ncb = s * dot(")
    program = tp.parse(text)
    with pytest.raises(EngineError, match="cb sums over a state size that grows with the width, "
                       "so training needs a 1/N scale on it"):
        tp.derive(program, "adam")
    hidden = {w: ABC(0, "1/2", 1) for w in ("WB", "WC")}
    assert _judged(text, s=ABC(1, 0, "oo"), **hidden) == (["p", "m"], [])
    assert classify(program, ADAM, given(program, s=ABC(1, 0, "oo"), **hidden)).analysis.init_[
        "p"] == -HALF
    assert _judged(text, s=ABC("3/2", 0, "oo"), **hidden) == ([], ["p", "m"])
    # C₀ and B₀ are Θ(1): no saddle, so SGD's exponents leave them noted, not refused
    sgd = given(program, s=ABC(1, 0, "oo"), **{w: ABC(0, "1/2", 0) for w in (
        "WB", "WC", "Wx", "Wz", "Wdt", "Wo")}, U=ABC(0, 1, 1),
        **{b: ABC(0, 0, -1) for b in ("E", "bdt", "Alog", "D", "gn")})
    c = classify(program, SGD, sgd)
    assert c.forced == ["p", "m"] and not c.violations


def test_zeroing_both_c_and_b_is_refused():
    # C = B = 0 exactly: each one's gradient ∝ the other, so the mixing would never train;
    # zeroing one of them leaves the other's gradient (groups growing with the heads: C and B
    # of di, their layers hidden, so --readout-zero-init leaves them)
    text = BASE.replace("[N, n]", "[di, n]").replace("dim N = 8", "dim N = 16")
    program = tp.parse(text)
    abc = tp.derive(program, "adam").abc
    with pytest.raises(UsageError, match="makes C and B of the SSD p exactly 0"):
        zero_init(program, abc, ("WB", "WC"))
    assert zero_init(program, abc, ("U", "WB"))["WB"].b is INF
    assert zero_init(program, abc, readout=True)["WB"] == abc["WB"]
