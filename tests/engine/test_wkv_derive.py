"""RWKV's time mixing (``wkv(g, u, k, v)``, engine/rules_wkv.py; examples/rwkv.tp): the example
derived against what the rules give by hand, the wkv rule's terms against its formula, and the
emitted helper against transformers' loop over a long sequence."""

import pytest
import torch
from conftest import ROOT, PlainSizes

import tensorprog as tp
from tensorprog.engine.exponents import HALF, NEG_INF, ONE, ZERO, emax
from tensorprog.engine.rules_wkv import change_wkv, grad_wkv, init_wkv
from tensorprog.fromtorch.wkv_kernel import reference
from tensorprog.ir.program import Nonlin
from tensorprog.ir.wkv import WKV

EXAMPLE = ROOT / "examples" / "rwkv.tp"
HIDDEN = ("Wk", "Wv", "Wr", "Wo", "Wck", "Wcr", "Wcv")
GAINS = ("mk", "mv", "mr", "w", "u", "ck", "cr")


@pytest.fixture(scope="module")
def program():
    return tp.parse_file(EXAMPLE)


def test_example_derives_mup_as_the_rules_say_by_hand(program):
    """Oracle, by hand. wkv averages the values over finitely many tokens with weights in
    (0, 1): Θ(1) at init and in training, its gradient to v dwkv and to k, u, g dwkv·v, each
    channel its own (no sum over n). So the projections are hidden weights (TP5 Table 3, Adam:
    init 1/fan_in, LR η/fan_in), the mixes, the decay's w and the bonus u gains (Θ(1), LR η),
    E and U the embedding and the readout."""
    assert tp.parse(tp.to_text(program)) == program  # wkv prints back
    adam = tp.derive(program, "adam")
    want = {f"layer.{w}": (ZERO, HALF, ONE) for w in HIDDEN}
    want.update({f"layer.{g}": (ZERO, ZERO, ZERO) for g in GAINS})
    want.update({"E": (ZERO, ZERO, ZERO), "U": (ZERO, ONE, ONE)})
    for p, (a, b, c) in want.items():
        got = adam.abc[p]
        assert (got.a, got.b, got.c) == (a, b, c), p
    an = adam.analysis
    (mixed,) = {i.out for i in program.body if isinstance(i, Nonlin) and i.fn == WKV}
    for v in (mixed, "layer.k", "layer.v"):
        assert (an.init_[v], an.change_[v], an.grad_[v]) == (ZERO, ZERO, -ONE), v
    assert adam.check.r == ZERO and not adam.check.violations
    assert tp.derive(program, "sgd").abc["layer.u"].c == -ONE  # a gain of n: SGD LR ∝ n


def test_rule_terms_follow_the_formula(program):
    """wkv_t = Σ_s a_ts v_s, the weights a softmax over finitely many tokens: v's size at init
    whatever the logits' (weights never above 1); a change the largest of Δv and Δk, Δu, Δg
    times v; the gradient to v dwkv, to k, u and g dwkv times v (no sum over the width)."""
    ins = Nonlin("o", WKV, ("g", "u", "k", "v"), None, None)

    def size(terms):
        return emax(t.const for t in terms)

    sizes = {"g": ZERO, "u": ZERO, "k": ZERO, "v": -HALF}
    assert size(init_wkv(ins, PlainSizes(program, sizes))) == -HALF
    assert size(init_wkv(ins, PlainSizes(program, {**sizes, "k": HALF}))) == -HALF
    moved = PlainSizes(program, sizes, {"v": -ONE, "k": -HALF, "u": -ONE, "g": -ONE})
    assert size(change_wkv(ins, moved)) == -ONE  # Δk times v
    grads: dict = {}
    for x, t in grad_wkv(ins, PlainSizes(program, sizes, grad=-ONE)):
        grads[x] = emax((grads.get(x, NEG_INF), t.const))
    assert grads == {"v": -ONE, "k": -ONE - HALF, "u": -ONE - HALF, "g": -ONE - HALF}


def test_the_emitted_helper_is_transformers_loop_over_a_long_sequence():
    """Oracle: _wkv, a softmax over the tokens, is the max-stabilised loop over 300 tokens in
    float64 (the reference), with logits far outside exp's range (k up to ±200: the plain
    sums overflow), and transformers' own loop (which runs its keys and states in float32)."""
    modeling = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")
    scope: dict = {"torch": torch}
    exec("\n".join(tp.emit.templates.HELPERS["_wkv"]), scope)
    gen = torch.Generator().manual_seed(0)
    t_len, d = 300, 6
    k = 50 * torch.randn(2, t_len, d, generator=gen, dtype=torch.float64)
    v = torch.randn(2, t_len, d, generator=gen, dtype=torch.float64)
    w = torch.linspace(-5, 3, d, dtype=torch.float64)  # decays from e^-0.007 to e^-20 a token
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    got = scope["_wkv"](-w.exp(), u, k, v)
    assert torch.allclose(got, reference(-w.exp(), u, k, v), atol=1e-12, rtol=0)
    want, _ = modeling.rwkv_linear_attention_cpu(w, u, k, v)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # the current token's bonus on the previous token instead is another mixing: seen here
    shifted = torch.cat([v[:, :1], v[:, :-1]], 1)
    assert (scope["_wkv"](-w.exp(), u, k, shifted) - want).abs().max() > 1e-2


FINITE = """
width n = 64
dim V = 13
dim T = 8
dim D = 16
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
param w : [D] = 0
param u : [D] = 0.5
param Wk : [D, n]
param Wv : [D, n]
param Wo : [n, D]
h = E @ tok
o = wkv(-1 * exp(w), u, Wk @ h, Wv @ h)
output logits = U @ (h + Wo @ o)
"""


def test_a_bonus_param_bounds_its_own_init_but_not_the_average():
    """Oracle: wkv averages v, so its init is v's whatever the bonus u's size. Over a finite dim
    D, v = Wv @ h is n^-1/2 at init (as logits are), and so is wkv, and Wo @ wkv after it: the
    derivation refuses the program as any narrowing to a finite dim inside the network (it
    had taken wkv for Θ(1), from u's init, and derived a µP). u, a param logit, is still held
    at O(1) by a term of its init, capped at v's size."""
    from tensorprog.errors import EngineError

    program = tp.parse(FINITE)
    with pytest.raises(EngineError, match=r"vanishes at init as 1/√n and so does every vector"):
        tp.derive(program, "adam")
    ins = Nonlin("o", WKV, ("g", "u", "k", "v"), None, None)
    sizes = {"g": ZERO, "u": ZERO, "k": ZERO, "v": -HALF}
    terms = init_wkv(ins, PlainSizes(program, sizes))
    assert (
        emax(t.const if t.clamp is None else min(t.const, t.clamp, key=float) for t in terms)
        == -HALF
    )
    assert [t.what for t in terms if t.clamp is not None] == ["u₀"]  # u's init bounded
