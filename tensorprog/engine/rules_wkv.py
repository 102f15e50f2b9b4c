"""The engine's rules for ``wkv(g, u, k, v)``: RWKV's time mixing per channel
(``tensorprog.ir.wkv``), ``wkv_t = Σ_s a_ts v_s`` with a_ts the softmax over the tokens s <= t
of the logits ``k_s + (t-1-s) g`` (s < t) and ``u + k_t`` (s = t), each channel its own.

The weights a_ts lie in (0, 1) and sum to 1 over finitely many tokens, whatever their logits'
sizes: the value is an average of finitely many values, so its sizes follow from v's, with no
sum over the width (docs/theory.md, "RWKV's time mixing"):

* init: e(wkv₀) = e(v₀) (positive weights, Θ(1) while the logits are O(1), never above 1);
* change: a_ts Δv_s, and Δa_ts v_s with Δa = a (ΔL_ts - Σ_r a_tr ΔL_tr), ΔL a finite
  combination of Δk, Δu and Δg (the factor t-1-s a finite count): each as its Δ times v;
* gradient: dv_s = Σ_t a_ts dwkv_t; dk_s, du and dg sum dwkv_t a_ts (v_s - wkv_t) times a
  finite count over the finitely many tokens (+0), each channel reading its own only.

A logit that grows with the width saturates the softmax (its slope, which passes Δk on,
vanishes); k is a vector of the width and held Θ(1) as every pre-activation is, and g, u are
params of the width held as a gain is, where their own rules put them.
``tensorprog.engine.rules`` dispatches the Nonlin ``wkv`` here.
"""

from __future__ import annotations

from ..ir.program import Nonlin
from ..ir.wkv import WKV
from .exponents import ZERO, emax, emin
from .terms import Mono, Sizes, Term, terms

_AVERAGE = "an average over finitely many tokens, weights in (0, 1) summing to 1 (+0)"
_FIN = "a finite sum over tokens (+0), each channel its own"


def init_wkv(ins: Nonlin, sz: Sizes) -> list[Term]:
    v = ins.args[3]
    # a logit that is a param itself (the bonus u) is a pre-activation too: at most Θ(1), or
    # the softmax saturates and its slope, which passes u's change on, vanishes (as for
    # sigmoid(w)); a computed logit has that condition at its own instruction already. The
    # term bounds u's init; its value is capped at v's size, which it must not raise: the
    # average is v's size whatever its weights (v over a finite dim is n^-1/2 at init)
    average = emax([m.const for m in sz.init(v) if not m.slots] or [ZERO])
    own = [
        t
        for x in ins.args[:3]
        if x in sz.program.param_table
        for t in terms(
            f"{x}₀",
            "the softmax's slope is Θ(1) while its logits are O(1)",
            "auto",
            sz.init(x),
            clamp=emin(ZERO, average),
        )
    ]
    return terms(f"avg({v}₀)", _AVERAGE, "auto", sz.init(v)) + own


def change_wkv(ins: Nonlin, sz: Sizes) -> list[Term]:
    g, u, k, v = ins.args
    out = terms(f"a·Δ{v}", _AVERAGE, "auto", sz.change(v))
    for x in (k, u, g):
        out += terms(
            f"Δa({x})·{v}",
            f"the weights move by Θ(Δ{x}) (a softmax's slope, ≤ 1); {_FIN}",
            "auto",
            sz.change(x),
            sz.train(v),
        )
    return out


def grad_wkv(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    g, u, k, v = ins.args
    d = [Mono(sz.grad(ins.out))]
    out = [(v, t) for t in terms(f"aᵀ·d{ins.out}", f"d{v} = aᵀ d{ins.out}, {_FIN}", "flow", d)]
    for x in (k, u, g):
        out += [
            (x, t)
            for t in terms(
                f"d{ins.out}·a·({v} - {ins.out})",
                f"d{x} sums d{ins.out}·a·({v} - {ins.out}), {_FIN}",
                "auto",
                d,
                sz.first_order_train(v),
            )
        ]
    return out


#: the Nonlin ``wkv``'s rules (init, change, gradient), which ``rules.MOVES`` dispatches
WKV_RULES = {WKV: (init_wkv, change_wkv, grad_wkv)}
