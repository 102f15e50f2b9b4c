"""The engine's rules for ``hdot(u, v, dh)``: per token, the dot of each head of u with the same
head of v, s_h = Σ_{i < dh} u_{h,i} v_{h,i} (``tensorprog.ir.hdot``; NeoMME's projection of each
head of the attention output on the token's own unit value).

The sum over a head's coordinates is ``dot``'s sum (rules_attention.py) over dh instead of the
vectors' dim, so its exponents are derived as ``dot``'s are:

* over a fixed dh (heads of 16, n/16 of them) a finite sum of Θ(1) many products (+0):
  e(s) = e(u) + e(v), a change Δu·v + u·Δv;
* over a dh that grows (finitely many heads of dh ∝ n) at init a CLT sum of independent,
  centred sides (+1/2: a fresh matmul or param in neither's ancestry), else an LLN sum (+1:
  correlated sides, e.g. the attention output and its own token's value, which the output
  holds with a Θ(1) weight); after training each side has moved along the other, so a change
  is an LLN sum (+1).

Back to u_{h,i} comes ds_h · v_{h,i}: one term per coordinate, no sum over the head (+0 whatever
dh), and to v likewise with u. A unit vector per head (F.normalize, ``dh^-1/2 · rmsnorm(v, dh)``)
is a factor of coordinates dh^-1/2 whose constant the program writes at its base width; where dh
grows the tracer counts it, and these rules read only the program's vectors.
"""

from __future__ import annotations

from ..ir.hdot import HDOT
from ..ir.program import Nonlin
from .exponents import HALF, ONE, ZERO, Exp
from .terms import Mono, Sizes, Term, terms


def _sum(ins: Nonlin, sz: Sizes, init: bool) -> tuple[Exp, str]:
    """What the sum over a head's dh coordinates adds (``init``: of the initial vectors)."""
    u, v = ins.args
    if not sz.infinite(ins.over):
        return ZERO, f"a finite sum over each head's {ins.over} coordinates (+0)"
    if not init:
        return ONE, (
            f"after training each side has moved along the other, so the sum over "
            f"{ins.over} is correlated (LLN: +1)"
        )
    if sz.centred_apart(u, v):
        return HALF, (
            f"{u}₀ and {v}₀ are independent and centred, so the sum over {ins.over} "
            "is a CLT sum (+1/2)"
        )
    return ONE, (
        f"{u}₀ and {v}₀ are correlated (shared inputs or nonzero means), so the sum "
        f"over {ins.over} is an LLN sum (+1)"
    )


def init_hdot(ins: Nonlin, sz: Sizes) -> list[Term]:
    u, v = ins.args
    k, why = _sum(ins, sz, True)
    return terms(f"{u}₀·{v}₀ per head", why, "auto", sz.init(u), sz.init(v), const=k)


def change_hdot(ins: Nonlin, sz: Sizes) -> list[Term]:
    u, v = ins.args
    k, why = _sum(ins, sz, False)
    return terms(f"Δ{u}·{v} per head", why, "auto", sz.change(u), sz.train(v), const=k) + terms(
        f"{u}·Δ{v} per head", why, "auto", sz.train(u), sz.change(v), const=k
    )


def grad_hdot(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    u, v = ins.args
    why = "one term per coordinate: its head's number's gradient times the other side's (+0)"
    return [
        (u, t)
        for t in terms(
            f"d{ins.out}·{v}", f"d{u} = d{ins.out}·{v}, {why}", "auto", g, sz.first_order_train(v)
        )
    ] + [
        (v, t)
        for t in terms(
            f"d{ins.out}·{u}", f"d{v} = d{ins.out}·{u}, {why}", "auto", g, sz.first_order_train(u)
        )
    ]


#: the Nonlin ``hdot``'s rules (init, change, gradient), which ``rules.MOVES`` dispatches
HDOT_RULES = {HDOT: (init_hdot, change_hdot, grad_hdot)}
