"""The engine's rules for ``ddot(q, k, g, dk)``: a per-head dot decayed per key channel
(``tensorprog.ir.ddot``), ``A_ts = Σ_c q_t[c] k_s[c] exp(G_t[c] - G_s[c])`` for s <= t, G the
cumulative sum of g over the tokens.

Over a fixed head dim dk, each entry is a finite sum (+0) of products of three factors per
channel: q's coordinate, k's and the decay exp(G_t[c] - G_s[c]), the exp of a finite sum of g
(Θ(1) while g is O(1); counted as at least g's size where that grows, as ``exp`` is: a growing
decay is unstable either way). So its sizes are a product's (docs/theory.md, "The gated delta
rule"):

* init: e(A₀) = e(q₀) + e(k₀) + e(decay₀);
* change: Δq·k·decay, q·Δk·decay and q·k·Δg·decay (ΔG a finite sum of Δg, the derivative of
  exp the decay itself);
* gradient: dq_t[c] = Σ_s dA_ts k_s[c] decay, dk likewise with q, dg_r[c] = Σ over the token
  pairs s < r <= t of dA_ts q_t[c] k_s[c] decay: finite sums over token pairs (+0), each
  channel's gradient reading its own channel only (no sum over dk).

Over a dk that grows (a fixed number of heads), the sum over the channels is a CLT or LLN sum as
``dot``'s is (rules_attention.py); derive refuses such a ddot before these rules run
(rules_delta.refuse_growing_head_dim), and the sums are counted here so that no size is
understated should they be read. ``tensorprog.engine.rules`` dispatches the Nonlin ``ddot`` here.
"""

from __future__ import annotations

from ..ir.ddot import DDOT
from ..ir.program import Nonlin
from .exponents import HALF, ONE, ZERO, Exp
from .terms import Mono, Sizes, Term, terms


def _decay(g: list[Mono]) -> list[Mono]:
    """exp(G_t - G_s): Θ(1) while g is O(1), else as large as g."""
    return [Mono(ZERO)] + list(g)


def _sum(ins: Nonlin, sz: Sizes, init: bool) -> tuple[Exp, str]:
    """What the sum over the head dim adds: +0 over a fixed dk, else as ``dot``'s sum."""
    if not sz.infinite(ins.over):
        return ZERO, f"a finite sum over {ins.over} (+0)"
    if init and sz.centred_apart(ins.args[0], ins.args[1]):
        return HALF, f"independent and centred: a CLT sum over {ins.over} (+1/2)"
    return ONE, f"correlated (shared inputs, or moved along each other): an LLN sum over {ins.over}"


def init_ddot(ins: Nonlin, sz: Sizes) -> list[Term]:
    q, k, g = ins.args
    c, why = _sum(ins, sz, True)
    return terms(
        f"{q}₀·{k}₀·exp(ΔG{g}₀)",
        f"per channel a product, the decay Θ(1) while {g} is O(1); {why}",
        "auto",
        sz.init(q),
        sz.init(k),
        _decay(sz.init(g)),
        const=c,
    )


def change_ddot(ins: Nonlin, sz: Sizes) -> list[Term]:
    q, k, g = ins.args
    c, why = _sum(ins, sz, False)
    decay = _decay(sz.train(g))
    return (
        terms(f"Δ{q}·{k}·decay", why, "auto", sz.change(q), sz.train(k), decay, const=c)
        + terms(f"{q}·Δ{k}·decay", why, "auto", sz.train(q), sz.change(k), decay, const=c)
        + terms(
            f"{q}·{k}·ΔG{g}·decay",
            f"ΔG a finite sum of Δ{g}; {why}",
            "auto",
            sz.train(q),
            sz.train(k),
            sz.change(g),
            decay,
            const=c,
        )
    )


def grad_ddot(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    q, k, g = ins.args
    d = [Mono(sz.grad(ins.out))]
    decay = _decay(sz.first_order_train(g))
    fin = "a finite sum over token pairs (+0), each channel its own"
    return (
        [
            (q, t)
            for t in terms(
                f"d{ins.out}·{k}·decay",
                f"d{q} = dA·{k}·decay, {fin}",
                "auto",
                d,
                sz.first_order_train(k),
                decay,
            )
        ]
        + [
            (k, t)
            for t in terms(
                f"d{ins.out}·{q}·decay",
                f"d{k} = dAᵀ·{q}·decay, {fin}",
                "auto",
                d,
                sz.first_order_train(q),
                decay,
            )
        ]
        + [
            (g, t)
            for t in terms(
                f"d{ins.out}·{q}·{k}·decay",
                f"d{g} sums dA·{q}·{k}·decay over the pairs the channel's decay spans, {fin}",
                "auto",
                d,
                sz.first_order_train(q),
                sz.first_order_train(k),
                decay,
            )
        ]
    )


#: the Nonlin ``ddot``'s rules (init, change, gradient), which ``rules.MOVES`` dispatches
DDOT_RULES = {DDOT: (init_ddot, change_ddot, grad_ddot)}
