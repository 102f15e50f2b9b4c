"""Scaling rules of attention's two halves: ``Dot`` (a sum over a dim: per head, the logits) and
``Mix`` (a finite sum over tokens of weights times values). Split from :mod:`.rules`, whose tables
(``INIT``, ``CHANGE``, ``GRAD``) they join; docs/theory.md derives each term."""

from __future__ import annotations

from ..ir.program import Dot, Mix
from .exponents import HALF, ONE, ZERO, Exp
from .terms import Mono, Sizes, Term, terms

# --- Dot ------------------------------------------------------------------------------------------

def _summed(ins: Dot, sz: Sizes) -> str:
    """The dim a dot sums over: the vectors' dim, or the head dim of a per-head dot."""
    return ins.over if ins.over is not None else sz.program.value_dims[ins.left]


def init_dot(ins: Dot, sz: Sizes) -> list[Term]:
    dim = _summed(ins, sz)
    if not sz.infinite(dim):
        k, why = ZERO, f"a finite sum over {dim} (+0)"
    elif sz.centred_apart(ins.left, ins.right):
        k, why = HALF, (f"{ins.left}₀ and {ins.right}₀ are independent and centred, so the sum "
                        f"over {dim} is a CLT sum (+1/2)")
    else:
        k, why = ONE, (f"{ins.left}₀ and {ins.right}₀ are correlated (shared inputs or nonzero "
                       f"means), so the sum over {dim} is an LLN sum (+1)")
    return terms(f"{ins.left}₀·{ins.right}₀", why, "auto", sz.init(ins.left), sz.init(ins.right),
                 const=k)


def change_dot(ins: Dot, sz: Sizes) -> list[Term]:
    dim = _summed(ins, sz)
    u, v = ins.left, ins.right
    if sz.infinite(dim):
        k, why = ONE, (f"after training each side has moved along the other (its gradient is the "
                       f"other side), so the sum over {dim} is correlated (LLN: +1)")
    else:
        k, why = ZERO, f"a finite sum over {dim} (+0)"
    return (terms(f"Δ{u}·{v}", why, "auto", sz.change(u), sz.train(v), const=k)
            + terms(f"{u}·Δ{v}", why, "auto", sz.train(u), sz.change(v), const=k))


def _group(sz: Sizes, query: str | None, kv: str | None) -> tuple[Exp, str]:
    """What a key/value head's gradient gains by summing over the g query heads it serves
    (grouped-query attention, g = dim(query) / dim(kv)).

    A finite g is a finite sum (+0). A g that grows with the width (dim(query) infinite,
    dim(kv) finite: one key/value head, or a fixed number of heads of a fixed dim) sums g ∝ n
    terms, one per query head. At init they are independent across heads (each head's gradient
    comes through its own columns of the output weight: CLT, +1/2); after training every head
    has moved along the same output gradient (ΔWo = -η·dh·oᵀ, Δq built from these very
    terms), so the terms share a sign and add up coherently: LLN, +1. A changed key or value
    moves the logits or outputs of all g heads at once, so the loss sees Θ(g) times what one
    head gives, as for a readout's input. The engine's gradient is the one after training, +1:
    the limit's size, reached at second order in the step (measured at widths up to 2048, the
    CLT part still dominates; docs/theory.md). Only programs derive refuses have such a g.
    """
    if sz.infinite(query) and not sz.infinite(kv):
        return ONE, (f"and sums the {query}/{kv} query heads sharing it, which grow with the "
                     "width and move together after training (LLN: +1)")
    return ZERO, ""


def grad_dot(ins: Dot, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    u, v = ins.left, ins.right
    dims = sz.program.value_dims
    k, why = _group(sz, dims[u], dims[v]) if ins.over is not None else (ZERO, "")
    return ([(u, t) for t in terms(f"d{ins.out}·{v}", f"d{u} = d{ins.out}·{v}", "auto", g,
                                   sz.first_order_train(v))]
            + [(v, t) for t in terms(f"d{ins.out}·{u}", f"d{v} = d{ins.out}·{u} {why}".rstrip(),
                                     "auto", g, sz.first_order_train(u), const=k)])


# --- Mix ------------------------------------------------------------------------------------------
# o_t = sum_s p_ts v_s over finitely many tokens, with p a softmax (Θ(1) weights): sizes multiply
# as in a product, and a change comes from either side.

def init_mix(ins: Mix, sz: Sizes) -> list[Term]:
    p, v = ins.weights, ins.values
    return terms(f"{p}₀·{v}₀", "a finite sum over tokens of weights times values", "auto",
                 sz.init(p), sz.init(v))


def change_mix(ins: Mix, sz: Sizes) -> list[Term]:
    p, v = ins.weights, ins.values
    why = "a finite sum over tokens changes with the weights or the values"
    return (terms(f"Δ{p}·{v}", why, "auto", sz.change(p), sz.train(v))
            + terms(f"{p}·Δ{v}", why, "auto", sz.train(p), sz.change(v)))


def grad_mix(ins: Mix, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    p, v = ins.weights, ins.values
    # dp_ts = sum over the head dim (mix(p, v, dv): dv) of do_t · v_s, CLT against v₀, LLN
    # against Δv (built from it) where it is width-sized: dv infinite, or the heads axis finite
    # (no width dim is infinite in the depth pass)
    finite = not sz.width_limit or (not sz.infinite(ins.head) if ins.head is not None
                                    else sz.infinite(sz.program.value_dims[p]))
    half, one = (ZERO, ZERO) if finite else (HALF, ONE)
    where = "over a finite head dim (+0)" if finite else "over the head dim"
    k_v, why_v = _group(sz, sz.program.value_dims[ins.out], sz.program.value_dims[v])
    return ([(p, t) for t in terms(f"d{ins.out}·{v}₀", f"the sum {where} meets {v}₀, "
                                   "independent of the gradient (CLT: +1/2)" if half else
                                   f"the sum runs {where}", "auto", g, sz.init(v), const=half)]
            + [(p, t) for t in terms(f"d{ins.out}·Δ{v}", f"the sum {where} meets Δ{v}, built "
                                     "from this gradient (LLN: +1)" if one else
                                     f"the sum runs {where}", "auto", g,
                                     sz.first_order_change(v),
                                     const=one)]
            + [(v, t) for t in terms(f"{p}ᵀ·d{ins.out}", f"a finite sum over tokens, weights "
                                     f"Θ(1) {why_v}".rstrip(), "auto", g,
                                     sz.first_order_train(p), const=k_v)])
