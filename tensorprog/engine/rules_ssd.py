"""The engine's rules for ``ssd(cb, dt, A, P)``: Mamba-2's state-space mixing weights
(``tensorprog.ir.ssd``), ``P_ts = exp(G_t - G_s)·cb_ts·dt_s`` for s <= t, G_t = Σ_{r<=t} dt_r·A.

P is a smooth function of finitely many scalars per head and token pair, so its sizes follow
from the product it is (docs/theory.md, "State-space mixing"):

* at init, e(P₀) = e(cb₀) + e(dt₀) + e(decay₀): the decay exp(G_t - G_s) is exp of a finite
  sum of dt·A, Θ(1) while dt·A is O(1) (the term 0), and counted as at least dt·A's size where
  that grows (as ``exp`` is: unstable either way, a growing step or rate is refused through it);
* a change comes from any input, times the derivative of P in it: ∂P/∂cb = decay·dt,
  ∂P/∂dt_r = decay·cb·(1 for r = s, or dt·A for s < r <= t), ∂P/∂A = decay·cb·dt·Σdt; each a
  finite sum over tokens (+0);
* back to each input comes dP times the same derivatives, a finite sum over token pairs (+0);
  cb's group sums its H/G heads, +1 where they grow with the width and the groups do not
  (correlated after training, as a grouped key's query heads: rules_attention._group).

``tensorprog.engine.rules`` dispatches the Nonlin ``ssd`` here.
"""

from __future__ import annotations

from ..ir.program import Nonlin
from ..ir.ssd import SSD
from .exponents import ONE, ZERO, Exp, add
from .terms import Mono, Sizes, Term, terms


def _decay(dt: list[Mono], a: list[Mono]) -> list[Mono]:
    """exp(Σ dt·A) (and the factor 1 + dt·A of ∂P/∂dt): Θ(1) while dt·A is O(1), else as dt·A."""
    return [Mono(ZERO)] + [Mono(add(m.const, k.const), m.slots + k.slots) for m in dt for k in a]


def init_ssd(ins: Nonlin, sz: Sizes) -> list[Term]:
    cb, dt, a = ins.args
    return terms(f"{cb}₀·{dt}₀·exp(Σ{dt}₀{a}₀)", "a product of finitely many scalars per "
                 "head and token pair: exponents add, the decay Θ(1) while dt·A is O(1)",
                 "auto", sz.init(cb), sz.init(dt), _decay(sz.init(dt), sz.init(a)))


def change_ssd(ins: Nonlin, sz: Sizes) -> list[Term]:
    cb, dt, a = ins.args
    decay = _decay(sz.train(dt), sz.train(a))
    why = "P changes with each of its inputs times its Θ(1)-or-smaller derivative in it"
    return (terms(f"Δ{cb}·{dt}·decay", why, "auto", sz.change(cb), sz.train(dt), decay)
            + terms(f"{cb}·Δ{dt}·decay·(1 + {dt}{a})", why, "auto", sz.change(dt),
                    sz.train(cb), decay, decay)
            + terms(f"{cb}·{dt}·Σ{dt}·Δ{a}·decay", why, "auto", sz.change(a), sz.train(cb),
                    sz.train(dt), sz.train(dt), decay))


def _group_sum(ins: Nonlin, sz: Sizes) -> tuple[Exp, str]:
    """cb's gradient sums the H/G heads its group serves: +1 where they grow, the groups not."""
    dims = sz.program.value_dims
    groups, heads = dims[ins.args[0]], dims[ins.args[1]]
    if sz.infinite(heads) and not sz.infinite(groups):
        return ONE, (f"and sums the {heads}/{groups} heads sharing its group, which grow with "
                     "the width and move together after training (LLN: +1)")
    return ZERO, "a finite sum over token pairs and the group's heads (+0)"


def grad_ssd(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    cb, dt, a = ins.args
    g = [Mono(sz.grad(ins.out))]
    decay = _decay(sz.first_order_train(dt), sz.first_order_train(a))
    k, why = _group_sum(ins, sz)
    return ([(cb, t) for t in terms(f"d{ins.out}·{dt}·decay", f"d{cb} = dP·decay·dt {why}",
                                    "auto", g, sz.first_order_train(dt), decay, const=k)]
            + [(dt, t) for t in terms(f"d{ins.out}·{cb}·decay·(1 + {dt}{a})", "a finite sum "
                                      "over the token pairs of the step's own head (+0)", "auto",
                                      g, sz.first_order_train(cb), decay, decay)]
            + [(a, t) for t in terms(f"d{ins.out}·{cb}·{dt}·Σ{dt}·decay", "a finite sum over "
                                     "the token pairs of the rate's own head (+0)", "auto", g,
                                     sz.first_order_train(cb), sz.first_order_train(dt),
                                     sz.first_order_train(dt), decay)])


#: the Nonlin ``ssd``'s rules (init, change, gradient), which ``rules.MOVES`` dispatches
SSD_RULES = {SSD: (init_ssd, change_ssd, grad_ssd)}
