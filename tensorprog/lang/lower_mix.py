"""Lowering ``mix(p, v)`` and ``mix(p, v, dv)``: attention's token mixing.

p is attention weights over the heads of a ``dot(q, k, dh)``; v the values. ``mix(p, v)`` splits
v into heads of the queries' head dim: as many as p's heads, or fewer, each serving a whole group
of consecutive query heads (grouped-query attention). ``mix(p, v, dv)`` splits v into as many
heads as p has, of dv coordinates each, whatever the queries' head dim (Perceiver IO's decoder:
queries and keys of 256 channels in 8 heads of 32, values of the width in the same 8 heads of
n/8). The result has the queries' dim under grouping, v's otherwise.
"""

from __future__ import annotations

from ..ir.program import Mix, heads_dim, split_heads_dim
from .ast import Call


def lower_mix(low, node: Call, args: list, head: str | None, vec: type):
    """The Mix of ``mix(p, v)`` (``head``: dv of ``mix(p, v, dv)``), or None (errors
    reported); ``vec`` is the lowering's pending vector type."""
    p, v = args
    query, over = split_heads_dim(p.dim or "")
    if p.dim not in low.heads_dims or v.dim is None or v.dim in low.heads_dims:
        low.errors.error(
            f"mix(p, v) needs attention weights p over the heads of v's dim, got "
            f"{low.dim_text(p.dim)} and {low.dim_text(v.dim)}", node.span,
            "p = causal_softmax(tau * dot(q, k, dh)) with q, k of v's dim")
        return None
    if head is not None:  # values of their own head dim, as many heads as p's
        if not _own_heads(low, p.dim, v.dim, head, node):
            return None
        grouped = False
    else:
        # values with fewer heads than the weights: each serves a group of query heads
        grouped = not low.same_dim(query, v.dim)
        if grouped and not low.grouped(query, v.dim, over, node, "values"):
            return None
    if not low.compares_tokens(args, node):
        return None
    names = [low.name_of(a, node.span) for a in args]
    dim = query if grouped else v.dim
    out = low.emit(Mix(low.fresh(low.target), names[0], names[1], node.span, head), dim)
    return low.vec(out, dim)


def _own_heads(low, heads: str, values: str, head: str, node) -> bool:
    """Whether v (of dim ``values``) is as many heads of ``head`` as the weights have heads;
    reports the error where not."""
    base = low.width.base if low.width else 1
    query, over = split_heads_dim(heads)
    mine, theirs = heads_dim(low.dims, values, head), heads_dim(low.dims, query, over)
    if mine is None or theirs is None or mine.key() != theirs.key() \
            or low.dims[values].size_at(base) % low.dims[head].size_at(base):
        count = theirs.size_at(base) if theirs is not None else "?"
        low.errors.error(
            f"mix(p, v, {head}): the values' dim {values} is not as many heads of {head} "
            f"as the weights have ({query} / {over}: {count} heads)", node.span,
            f"declare the values' head dim as dim(v) / heads, e.g. `dim {head} = "
            f"{values} / {count}`, or write mix(p, v) for values of the queries' heads")
        return False
    return True
