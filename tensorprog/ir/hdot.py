"""A dot per head of one token: ``hdot(u, v, dh)``, one number per head and token.

u and v are vectors per token of one dim D = H·dh; per token and head h,

    hdot_h = Σ_{i < dh} u_{h,i} v_{h,i},

the dot of u's head h with v's, a vector of H entries (H a declared dim of D/dh's size: the
first such, the width first, as ``spread``'s result dim is found). It is the per-token twin of
attention's ``dot(q, k, dh)``, which pairs two tokens: here both sides are one token's.
``spread(hdot(u, v, dh), dh)`` lays the numbers back over their heads: NeoMME's exclusive
self-attention removes from each head of the attention output o its component along the
token's own unit value, ``o - spread(tanh(a), dh) * spread(hdot(o, vn, dh), dh) * vn`` with
vn = F.normalize(v) per head.

Scaling (``tensorprog.engine.rules_hdot``): over a fixed dh a finite sum of products, so sizes
add as a product's; over a dh that grows (finitely many heads) a CLT sum (+1/2) of independent,
centred sides at init and an LLN sum (+1) of correlated ones, and after training, as ``dot``'s.
"""

from __future__ import annotations

HDOT = "hdot"

USAGE = (
    "write hdot(u, v, dh): u and v vectors per token of one dim H·dh, dh a declared dim, and H "
    "(`dim H = ...`) declared with the size of the heads; spread(hdot(u, v, dh), dh) lays the "
    "H numbers back over their heads"
)


def hdot_dim(dims: dict, arg: str | None, over: str | None) -> str | None:
    """The dim of ``hdot(u, v, over)`` for u of dim ``arg``: the first of ``dims`` (name ->
    ``ir.program.Dim``, the width first) of arg/over's size, the heads' count; None if there
    is none or arg is no whole number of heads of over at every width."""
    if arg not in dims or over not in dims:
        return None
    d, h = dims[arg], dims[over]
    if h.infinite and not d.infinite:
        return None
    if d.infinite and h.infinite:  # a fixed number of heads that grow together
        count = d.mult / h.mult
        want = ("fin", int(count)) if count.denominator == 1 else None
    elif d.infinite:  # heads of a fixed dh, as many as the width grows
        want = ("n", d.mult / h.size)
    else:
        want = ("fin", d.size // h.size) if d.size % h.size == 0 else None
    return next((name for name, x in dims.items() if want and x.key() == want), None)


def verify_hdot(program, ins, ops: list, key, errors) -> str | None:
    """u and v of one dim, dh a declared dim that divides it, and a declared dim of the heads'
    count. Returns that dim (the IR's value_dims)."""
    if len(ins.args) != 2 or any(o is None for o in ops) or key(ops[0]) != key(ops[1]):
        errors.error(f"hdot needs two vectors of one dim; {USAGE}", ins.span)
        return None
    out = program.value_dims.get(ins.out)  # hdot_dim over the declared dims
    if out is None:
        errors.error(
            f"hdot over {ins.over}: {ops[0]} must be a whole number of heads of "
            f"{ins.over}, and a dim of that many declared; {USAGE}",
            ins.span,
        )
        return None
    return out
