"""The gated delta rule's exponents (``delta(sq, sk, b, g)``, engine/rules_delta.py): the example
derived against what the rules give by hand, the rule's terms against its formula, and the
growing head dim refused."""

import math
from fractions import Fraction

import pytest
import torch
from conftest import GATED_DELTA_GROUPED, ROOT, PlainSizes, import_file

import tensorprog as tp
from tensorprog.engine.exponents import HALF, ONE, ZERO, emax
from tensorprog.engine.rules_delta import change_delta, grad_delta, init_delta
from tensorprog.errors import EngineError
from tensorprog.ir.delta import Delta

EXAMPLE = ROOT / "examples" / "gated_delta.tp"
HIDDEN = ("Wq", "Wk", "Wv", "Wz", "Wo", "Wb", "Wa", "Wg", "Wu", "Wd")


def test_example_derives_mup_as_the_rules_say_by_hand():
    """Oracle, by hand. dk = 16 is fixed, so dot(q, k, dk) and dot(k, k, dk) are finite sums
    (+0): Θ(1) at init and in training with q, k rmsnorm'd, and the scales tau, kap keep
    exponent 0. b = sigmoid(·) and g = -exp(A)·softplus(·) are Θ(1), so P = Θ(1) (e(sq) + e(b))
    and its change is its inputs' (Θ(1)). Wb, Wa map n -> H = n/16, both infinite: hidden
    weights as Wq (TP5 Table 3, Adam: init 1/fan_in, LR η/fan_in); A and dtb are biases of
    the heads (init Θ(1), Adam LR Θ(1), SGD LR ∝ fan_out = n/16); U the readout."""
    program = tp.parse_file(EXAMPLE)
    adam = tp.derive(program, "adam")
    want = {f"layer.{w}": (ZERO, HALF, ONE) for w in HIDDEN}
    want.update({"layer.A": (ZERO, ZERO, ZERO), "layer.dtb": (ZERO, ZERO, ZERO),
                 "tau": (ZERO, ZERO, None), "kap": (ZERO, ZERO, None),
                 "E": (ZERO, ZERO, ZERO), "U": (ZERO, ONE, ONE)})
    for p, (a, b, c) in want.items():
        got = adam.abc[p]
        assert (got.a, got.b) == (a, b), p
        if c is not None:
            assert got.c == c, p
    an = adam.analysis
    for v in ("layer.p", "layer.p_2", "layer.p_4", "layer.b", "layer.g", "layer.o_2"):
        assert (an.init_[v], an.change_[v]) == (ZERO, ZERO), v
    assert adam.check.r == ZERO and not adam.check.violations
    sgd = tp.derive(program, "sgd")
    assert sgd.abc["layer.A"].c == -ONE and sgd.abc["layer.Wb"].c == ZERO


def test_grouped_value_heads_derive_as_ungrouped_ones():
    """Oracle: r = 4 value heads per key head is a finite number, so the sq and sk gradients'
    sum over a key head's value heads adds +0: every param keeps its ungrouped role (Wb, n ->
    n/8 value heads, a hidden weight; A a bias of the value heads), P and the mix Θ(1)."""
    program = tp.parse(GATED_DELTA_GROUPED)
    assert tp.parse(tp.to_text(program)) == program  # delta(..., dv, D) prints and parses back
    d = tp.derive(program, "adam")
    for w in ("Wq", "Wk", "Wv", "Wo", "Wb"):
        assert (d.abc[w].a, d.abc[w].b, d.abc[w].c) == (ZERO, HALF, ONE), w
    assert (d.abc["A"].b, d.abc["A"].c) == (ZERO, ZERO)
    assert d.program.value_dims["p"] == "D/dv"
    assert (d.analysis.init_["p"], d.analysis.change_["p"]) == (ZERO, ZERO)



def test_rule_terms_follow_the_unrolled_formula():
    """P = tril(D ⊙ sq)·N, N = diag(b)(1 + O(b·sk)), a finite series of T - 1 powers: a
    shrinking sq shrinks P by as much; a growing b·sk shows as (T - 1) of its exponent."""
    program = tp.parse_file(EXAMPLE)  # T = 8 tokens
    ins = Delta("p", "sq", "sk", "b", "g")

    def size(terms):
        return emax(t.const for t in terms)

    assert size(init_delta(ins, PlainSizes(program, {"sq": -HALF, "sk": ZERO, "b": ZERO}))) == -HALF
    assert size(init_delta(ins, PlainSizes(program, {"sq": ZERO, "sk": ZERO, "b": -ONE}))) == -ONE
    grown = init_delta(ins, PlainSizes(program, {"sq": -HALF, "sk": Fraction(1, 4), "b": ZERO}))
    assert size(grown) == -HALF + 7 * Fraction(1, 4)
    moved = PlainSizes(program, {"sq": ZERO, "sk": ZERO, "b": ZERO, "g": ZERO},
                   {"sq": -ONE, "sk": -HALF, "b": -ONE, "g": -ONE})
    assert size(change_delta(ins, moved)) == -HALF  # the largest input change, sk's


def test_growing_head_dim_is_refused_with_the_reason():
    source = EXAMPLE.read_text().replace("dim dk = 16 ", "dim dk = n / 4 #").replace(
        "dim H = n / 16", "dim H = 4 #")
    program = tp.parse(source)
    for run in (lambda: tp.derive(program, "adam"),
                lambda: tp.classify(program, "adam", preset="sp")):
        with pytest.raises(EngineError, match=r"delta over heads of dk, a dim that grows.*"
                                              r"vanishing at init as n\^-1/2"):
            run()


@pytest.mark.parametrize("grown", [{"sq": -ONE}, {"b": -ONE}, {"sk": ONE}, {"b": HALF, "sk": HALF}],
                         ids=["sq-shrinks", "b-shrinks", "sk-grows", "b-and-sk-grow"])
def test_rule_exponents_are_the_emitted_helpers_derivatives(grown):
    """Oracle: autograd through the emitted _delta (T = 8 tokens, the example's). Each input
    scaled by n^e (e as given, else 0) at n = 10^4 and 10^5: the slopes of |P|, of |dP/dx|
    for dP fixed (the gradient rule) and of |J_x δ| for δ of size n^-1 in one input x (the
    change rule, that input's term) are the rules' exponents. Where b·sk grows, the inverse's
    series (b·sk)^(T-1) multiplies all of them (^(T-2) in sk's own terms)."""
    golden = ROOT / "tests" / "golden" / "gated_delta_mup.py"
    delta = import_file(golden, "gated_delta_golden")._delta
    program = tp.parse_file(EXAMPLE)
    ins = Delta("p", "sq", "sk", "b", "g")
    names = ("sq", "sk", "b", "g")
    sizes = {x: grown.get(x, ZERO) for x in names}
    gen = torch.Generator().manual_seed(0)
    base = {"sq": torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64),
            "sk": torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64),
            "b": torch.rand(1, 8, 2, generator=gen, dtype=torch.float64) + 0.5,
            "g": -torch.rand(1, 8, 2, generator=gen, dtype=torch.float64)}
    dp = torch.randn(1, 2, 8, 8, generator=gen, dtype=torch.float64).tril()

    def measure(n):
        x = {k: (v * n ** float(sizes[k])).requires_grad_() for k, v in base.items()}
        p = delta(*(x[k] for k in names))
        (p * dp).sum().backward()
        out = {"P": p.norm().item(), **{f"d{k}": x[k].grad.norm().item() for k in names}}
        for k in names:  # J_x δ along one input, δ of size 1/n: the vjp's own vjp
            w = torch.zeros_like(p, requires_grad=True)
            (vjp,) = torch.autograd.grad(delta(*(x[j] for j in names)), x[k], w,
                                         create_graph=True)
            (jvp,) = torch.autograd.grad((vjp * base[k] / n).sum(), w)
            out[f"Δ{k}"] = jvp.norm().item()
        return out

    small, large = measure(1e4), measure(1e5)
    slopes = {k: math.log10(large[k] / small[k]) for k in small}
    rule = PlainSizes(program, sizes, {})

    def size(ts):
        return float(emax(t.const for t in ts))

    want = {"P": size(init_delta(ins, rule))}
    for k, t in grad_delta(ins, rule):
        want[f"d{k}"] = max(want.get(f"d{k}", -math.inf), float(t.const))
    for k in names:
        moved = PlainSizes(program, sizes, {k: -ONE})
        want[f"Δ{k}"] = size(change_delta(ins, moved))
    for k, w in want.items():
        assert abs(slopes[k] - w) < 0.05, (k, slopes[k], w)


@pytest.mark.slow
def test_example_passes_its_coordinate_check_under_mup_and_fails_under_sp():
    """The engine's own check (Adam, widths 128..1024, 3 seeds, 3 steps): µP's slopes all
    within tolerance; SP's delta weights and mixed values move with the width (slopes
    measured about +0.2 and +0.8, docs/theory.md)."""
    from tensorprog.engine.optimizers import ADAM
    from tensorprog.numerics.coordcheck import coord_check

    program = tp.parse_file(EXAMPLE)
    mup = coord_check(program, ADAM, widths=(128, 256, 512, 1024), device="cpu")
    assert mup.passed, str(mup)
    sp = coord_check(program, ADAM, param="sp", widths=(128, 256, 512, 1024), device="cpu")
    assert not sp.passed and {"layer.0.p", "layer.0.o_2"} <= set(sp.failures), str(sp)
