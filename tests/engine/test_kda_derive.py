"""Kimi Delta Attention's exponents (``ddot(q, k, g, dk)`` read by ``delta(sq, sk, b)``,
engine/rules_ddot.py; examples/kda.tp): the example derived against what the rules give by hand,
the ddot rule's terms against its formula, the emitted helpers against the recurrence, and the
growing head dim refused with its reason."""

import pytest
import torch
from conftest import ROOT, PlainSizes

import tensorprog as tp
from tensorprog.engine.exponents import HALF, NEG_INF, ONE, ZERO, emax
from tensorprog.engine.rules_ddot import change_ddot, grad_ddot, init_ddot
from tensorprog.errors import EngineError
from tensorprog.fromtorch.delta_kernel import kda_reference
from tensorprog.ir.ddot import DDOT
from tensorprog.ir.program import Nonlin

EXAMPLE = ROOT / "examples" / "kda.tp"
HIDDEN = ("Wq", "Wk", "Wv", "Wz", "Wo", "Wb", "Wa", "Wg", "Wu", "Wd")


@pytest.fixture(scope="module")
def program():
    return tp.parse_file(EXAMPLE)


def test_example_derives_mup_as_the_rules_say_by_hand(program):
    """Oracle, by hand. dk = 16 is fixed, so each ddot is a finite sum (+0) of q·k·decay, the
    decay Θ(1) (g = -exp(A)·softplus(·) Θ(1)): Θ(1) at init and in training, tau and kap keep
    exponent 0, and P = Θ(1) as in gated_delta.tp. Wa (n -> n, the decay per channel) and Wb
    (n -> n/16) are hidden weights as Wq (TP5 Table 3, Adam: init 1/fan_in, LR η/fan_in); A
    (per head) and dtb (per channel) are biases; E and U the embedding and the readout."""
    assert tp.parse(tp.to_text(program)) == program  # ddot and delta(sq, sk, b) print back
    adam = tp.derive(program, "adam")
    want = {f"layer.{w}": (ZERO, HALF, ONE) for w in HIDDEN}
    want.update(
        {
            "layer.A": (ZERO, ZERO, ZERO),
            "layer.dtb": (ZERO, ZERO, ZERO),
            "tau": (ZERO, ZERO, None),
            "kap": (ZERO, ZERO, None),
            "E": (ZERO, ZERO, ZERO),
            "U": (ZERO, ONE, ONE),
        }
    )
    for p, (a, b, c) in want.items():
        got = adam.abc[p]
        assert (got.a, got.b) == (a, b), p
        assert c is None or got.c == c, p
    an = adam.analysis
    ddots = [i.out for i in program.body if isinstance(i, Nonlin) and i.fn == DDOT]
    assert len(ddots) == 2
    for v in (*ddots, "layer.p", "layer.g", "layer.b"):
        assert (an.init_[v], an.change_[v]) == (ZERO, ZERO), v
    assert adam.check.r == ZERO and not adam.check.violations
    assert tp.derive(program, "sgd").abc["layer.dtb"].c == -ONE  # a bias of n: SGD LR ∝ n


def test_rule_terms_follow_the_formula(program):
    """A_ts = Σ_c q_t[c] k_s[c] exp(G_t[c] - G_s[c]) over a fixed dk: a product's exponents,
    the decay Θ(1) while g is O(1) and as large as g where it grows; a change is the largest of
    the three inputs' (times the others); each input's gradient dA times the other two."""
    ins = Nonlin(
        "A", DDOT, ("q", "k", "g"), None, "layer.dk" if "layer.dk" in program.dim_table else "dk"
    )

    def size(terms):
        return emax(t.const for t in terms)

    assert size(init_ddot(ins, PlainSizes(program, {"q": -HALF, "k": ZERO, "g": ZERO}))) == -HALF
    assert size(init_ddot(ins, PlainSizes(program, {"q": ZERO, "k": ZERO, "g": HALF}))) == HALF
    sizes = {"q": ZERO, "k": ZERO, "g": ZERO}
    moved = PlainSizes(program, sizes, {"q": -ONE, "k": -ONE, "g": -HALF})
    assert size(change_ddot(ins, moved)) == -HALF  # g's change, through the decay
    grads = {}
    for x, t in grad_ddot(ins, PlainSizes(program, {"q": -ONE, "k": ZERO, "g": ZERO})):
        grads[x] = emax((grads.get(x, NEG_INF), t.const))
    assert grads == {"q": ZERO, "k": -ONE, "g": -ONE}  # dq ~ k, dk ~ q, dg ~ q·k


def test_the_emitted_helpers_are_kimi_delta_attention():
    """Oracle: _mix(_delta(_ddot(q·dk^-1/2, k, g), _ddot(k, k, g), b), v) is the recurrence
    (state decayed row by row, then updated) run token by token in float64."""
    scope: dict = {"torch": torch}
    helpers = tp.emit.templates.HELPERS
    exec("\n".join(helpers["_ddot"] + [""] + helpers["_delta"] + [""] + helpers["_mix"]), scope)
    gen = torch.Generator().manual_seed(0)
    heads, dk, t_len = 3, 4, 7
    q, k, v = (torch.randn(2, t_len, heads, dk, generator=gen, dtype=torch.float64) for _ in "qkv")
    k = k / k.norm(dim=-1, keepdim=True)
    g = -2 * torch.rand(2, t_len, heads, dk, generator=gen, dtype=torch.float64)
    beta = torch.rand(2, t_len, heads, generator=gen, dtype=torch.float64)
    flat = [x.flatten(-2) for x in (q * dk**-0.5, k, g, v)]
    p = scope["_delta"](
        scope["_ddot"](flat[0], flat[1], flat[2], dk),
        scope["_ddot"](flat[1], flat[1], flat[2], dk),
        beta,
    )
    got = scope["_mix"](p, flat[3])
    want = kda_reference(q, k, v, g, beta, False).flatten(-2)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    # the other order, the state decayed after each update, is another layer: this test sees it
    qs, ks, vs, gs = (x.transpose(1, 2) for x in (q * dk**-0.5, k, v, g))
    state, out = torch.zeros(2, heads, dk, dk, dtype=torch.float64), []
    for t in range(t_len):
        kt = ks[:, :, t]
        step = (vs[:, :, t] - (state * kt[..., None]).sum(-2)) * beta[:, t, :, None]
        state = (state + kt[..., None] * step[..., None, :]) * gs[:, :, t].exp()[..., None]
        out.append((state * qs[:, :, t, :, None]).sum(-2))
    after = torch.stack(out, 1).flatten(-2)
    assert (after - want).abs().max() > 1e-2


def test_growing_head_dim_is_refused_with_the_reason(program):
    """4 heads of n/4: each ddot sums dk ∝ n channels (CLT at init, LLN after training), so no
    scale keeps the scores Θ(1) in both: refused by derive and classify, the delta's reason
    first, and a ddot read by no delta with its own."""
    source = (
        EXAMPLE.read_text()
        .replace("dim dk = 16 ", "dim dk = n / 4 #")
        .replace("dim H = n / 16", "dim H = 4 #")
    )
    grown = tp.parse(source)
    for run in (lambda: tp.derive(grown, "adam"), lambda: tp.classify(grown, "adam", preset="sp")):
        with pytest.raises(
            EngineError,
            match=r"delta over heads of dk, a dim that grows.*"
            r"vanishing at init as n\^-1/2",
        ):
            run()
    alone = source.replace(
        "p = delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, g, dk), b)",
        "p = causal_softmax(tau * ddot(q, k, g, dk) + kap * ddot(k, k, g, dk))",
    )
    with pytest.raises(EngineError, match=r"ddot over heads of dk, a dim that grows"):
        tp.derive(tp.parse(alone), "adam")
