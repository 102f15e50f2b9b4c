"""Lowering ``mix(p, v)`` and ``mix(p, v, dv)``: attention's token mixing.

p is attention weights over the heads of a ``dot(q, k, dh)``; v the values. ``mix(p, v)`` splits
v into heads of the queries' head dim: as many as p's heads, or fewer, each serving a whole group
of consecutive query heads (grouped-query attention). ``mix(p, v, dv)`` splits v into as many
heads as p has, of dv coordinates each, whatever the queries' head dim (Perceiver IO's decoder:
queries and keys of 256 channels in 8 heads of 32, values of the width in the same 8 heads of
n/8). ``mix(p, v, dv, D)`` splits v into heads of dv that are a whole fraction of p's, each
serving a group of consecutive query heads, as grouped-query attention's keys do: the result
has D, p's heads of dv coordinates each (MiMo-V2-Flash: queries and keys in 64 heads of 192,
values in 4 or 8 heads of 128). The result has the queries' dim under grouping, v's otherwise.
"""

from __future__ import annotations

from ..ir.program import Mix, heads_dim, split_heads_dim
from .ast import Call


def mix_operands(low, node: Call):
    """(the operands to lower, the state) of ``mix(p, v, dv)``, dv the values' head dim, and of
    ``mix(p, v, dv, D)``, D the output's dim: (dv, D); (None, None) where an argument is not a
    declared dim (reported)."""
    names = []
    usage = {2: ("the values' head dim", "e.g. `dim dv = n / 8` for values in 8 heads, then "
                 "mix(p, v, dv)"),
             3: ("the output's dim, the weights' heads of the values' head dim",
                 "e.g. `dim vo = 2 * vkv` for values of dim vkv serving groups of 2 query "
                 "heads, then mix(p, v, dv, vo)")}
    for i, arg in enumerate(node.args[2:], 2):
        if type(arg).__name__ != "Var" or arg.name not in low.dims:
            low.errors.error(f"the {('third', 'fourth')[i - 2]} argument of mix must be "
                             f"{usage[i][0]}", arg.span, usage[i][1])
            return None, None
        names.append(arg.name)
    over = low.head_dim(node.args[2])  # the sequence it needs
    if over is None:
        return None, None
    return node.args[:2], (names[0] if len(names) == 1 else tuple(names))


def lower_mix(low, node: Call, args: list, head: str | tuple[str, str] | None, vec: type):
    """The Mix of ``mix(p, v)`` (``head``: dv of ``mix(p, v, dv)``, (dv, D) of ``mix(p, v, dv,
    D)``), or None (errors reported); ``vec`` is the lowering's pending vector type."""
    p, v = args
    head, out = head if isinstance(head, tuple) else (head, None)
    query, over = split_heads_dim(p.dim or "")
    if p.dim not in low.heads_dims or v.dim is None or v.dim in low.heads_dims:
        low.errors.error(
            f"mix(p, v) needs attention weights p over the heads of v's dim, got "
            f"{low.dim_text(p.dim)} and {low.dim_text(v.dim)}", node.span,
            "p = causal_softmax(tau * dot(q, k, dh)) with q, k of v's dim")
        return None
    if out is not None:  # values of their own head dim, a whole fraction of p's heads
        if not _grouped_own(low, p.dim, v.dim, head, out, node):
            return None
        grouped = False
    elif head is not None:  # values of their own head dim, as many heads as p's
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
    dim = out or (query if grouped else v.dim)
    made = low.emit(Mix(low.fresh(low.target), names[0], names[1], node.span, head, out), dim)
    return low.vec(made, dim)


def _grouped_own(low, heads: str, values: str, head: str, out: str, node) -> bool:
    """Whether v (of dim ``values``) is whole heads of ``head``, each serving a whole group of
    the weights' heads, and ``out`` the weights' heads of ``head`` each; reports the error
    where not."""
    base = low.width.base if low.width else 1
    query, over = split_heads_dim(heads)
    size = {d: low.dims[d].size_at(base) for d in (values, head, out)}
    theirs = heads_dim(low.dims, query, over)
    count = theirs.size_at(base) if theirs is not None else "?"
    if heads_dim(low.dims, values, head) is None or size[values] % size[head]:
        low.errors.error(
            f"mix(p, v, {head}, {out}): the values' dim {values} = {size[values]} is not a whole "
            f"number of heads of {head} = {size[head]}", node.span,
            f"give the values whole heads: `dim {values} = H * {head}` for H value heads")
        return False
    mine = heads_dim(low.dims, out, head)
    if mine is None or theirs is None or mine.key() != theirs.key() or size[out] % size[head]:
        low.errors.error(
            f"mix(p, v, {head}, {out}): the output's dim {out} is not as many heads of {head} "
            f"as the weights have ({query} / {over}: {count} heads)", node.span,
            f"declare the output's dim as the weights' heads times {head}, e.g. `dim {out} = "
            f"{count} * {head}`")
        return False
    if heads_dim(low.dims, out, values) is None or size[out] % size[values]:
        # whole groups at the base width but not at every width: one count grows, not the other
        low.errors.error(
            f"mix(p, v, {head}, {out}): the values' heads ({values} / {head}: "
            f"{size[values] // size[head]} at the base width) and the weights' ({count}) do not "
            f"grow alike with the width, so they are no whole groups at every width ({values} "
            f"does not divide {out})" if size[out] % size[values] == 0 else
            f"mix(p, v, {head}, {out}): the values' {size[values] // size[head]} heads at the "
            f"base width do not each serve a whole group of the weights' {count} heads "
            f"({values} does not divide {out})", node.span,
            "grouped values share each head among a whole group of consecutive query heads: "
            f"dim({out}) = g * dim({values})")
        return False
    return True


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
