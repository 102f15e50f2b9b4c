"""Lowering ``delta(sq, sk, b, g)``: the weights of the gated delta rule's token mixing (linear
attention as Gated DeltaNet computes it; ir/delta.py has the meaning).

sq and sk are per-head dots, ``tau * dot(q, k, dk)`` and ``kap * dot(k, k, dk)`` (the keys with
themselves); b and g are vectors with one entry per head, per token: the write strength
``b = sigmoid(Wb @ h)`` and the log of the decay, ``g <= 0``. The result is read by
``mix(p, v, dv)``. The checks on which dots these are run in the verifier (ir/verify_delta.py),
positioned at this call.
"""

from __future__ import annotations

from ..ir.program import Delta
from .ast import Call

DELTA = "delta"
_USAGE = ("write delta(tau * dot(q, k, dk), kap * dot(k, k, dk), b, g): the scores, the keys "
          "with themselves, then b and g, one number per head (b = sigmoid(Wb @ h), g <= 0)")


def lower_delta(low, node: Call, args: list, vec: type):
    """The Delta of a ``delta`` call, or None (errors reported); ``vec`` is the lowering's
    pending vector type."""
    if any(a is None for a in args):
        return None
    if not all(isinstance(a, vec) for a in args):
        low.errors.error("delta needs the two dots and the vectors b and g, got a constant",
                         node.span, _USAGE)
        return None
    sq, sk, b, g = args
    if sq.dim not in low.heads_dims or sk.dim != sq.dim:
        low.errors.error(f"delta's first two arguments are per-head dots over one head dim, got "
                         f"{low.dim_text(sq.dim)} and {low.dim_text(sk.dim)}", node.span, _USAGE)
        return None
    heads = low.heads_dims[sq.dim]
    for what, v in (("b", b), ("g", g)):
        if v.dim is None or v.dim in low.heads_dims or low.dims[v.dim].key() != heads.key():
            count = heads.expr(low.width.name if low.width else "n")
            low.errors.error(f"delta's {what} must have one entry per head ({count} heads), got "
                             f"{low.dim_text(v.dim)}", node.span,
                             f"declare the heads, `dim H = {count}`, and compute {what} of it, "
                             "e.g. sigmoid(Wb @ h) with `param Wb : [H, n]`")
            return None
    names = [low.name_of(a, node.span) for a in args]
    out = low.emit(Delta(low.fresh(low.target), *names, node.span), sq.dim)
    return low.vec(out, sq.dim)
