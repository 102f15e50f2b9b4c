"""A fused qkv laid out per head: the layer's output viewed as (..., H, 3·dh) and chunked,
split or sliced along its last axis (GPT-NeoX, GPT-NeoX-Japanese), or viewed as (..., H, 3, dh)
and indexed along the 3 (Bloom, Persimmon, Fuyu). Head h's rows of the weight are
[q_h; k_h; v_h], so q's rows are one block of every group of 3·dh rows: a permutation of three
separate projections' rows, traced as those three params (their µP is that of separate q, k, v).
"""

from __future__ import annotations

import dataclasses
import math

from .values import Affine, Parts, Scores, Vec
from .where import op_name

_SPLITS = ("chunk", "split", "split_with_sizes", "slice")


def _dim(user, default) -> int:
    """The axis an op acts on: after its sizes for a split or chunk, else its first argument."""
    at = 2 if op_name(user) in ("chunk", "split", "split_with_sizes") else 1
    return user.args[at] if len(user.args) > at else user.kwargs.get("dim", default)


def _parts(user) -> list:
    """The nodes a split gives: a slice itself, or a chunk's or a split's items."""
    return [user] if op_name(user) == "slice" else list(user.users)


def _covers(slices, size: int) -> bool:
    """Whether slices (start, end) of an axis of ``size`` cover all of it."""
    ends = sorted((0 if s is None else s % size if s < 0 else min(s, size),
                   size if e is None else e % size if e < 0 else min(e, size)) for s, e in slices)
    reach = 0
    for s, e in ends:
        if s > reach:
            return False
        reach = max(reach, e)
    return reach >= size


def split_last(node, ndim: int) -> bool:
    """Every use of ``node`` splits its last axis, after transposes or permutes of the others
    (GPT-NeoX transposes heads and tokens before its chunk, DeBERTa permutes them), and no
    slice of it is concatenated back: a partial rotary slices an ordinary projection's heads
    the same way (``x[..., :r]``, ``x[..., r:]``), then puts the parts back together with
    ``cat``. Parts of a split may be
    (MLA's query: ``split(q, [dn, dr])``, the rotary part turned, then ``cat``): each part is
    then a per-head vector of its own, and the concatenation a head of parts (ops_mla.py). A
    use that reads only the shape (``new_empty``: MLA's key built in place) splits nothing."""
    users = [u for u in node.users if op_name(u) != "new_empty"]
    if not users:
        return False
    slices = [(u.args[2] if len(u.args) > 2 else None, u.args[3] if len(u.args) > 3 else None)
              for u in node.users if op_name(u) == "slice"]
    if slices and not _covers(slices, node.meta["val"].shape[-1]):
        return False  # a part of each head (x[..., :2]): no layout of whole blocks
    for user in users:
        op = op_name(user)
        if op == "transpose":
            axes = [d % ndim for d in user.args[1:3]]
            if ndim - 1 in axes or not split_last(user, ndim):
                return False
        elif op == "permute":  # DeBERTa's (0, 2, 1, 3): the features stay last, as above
            if user.args[1][-1] % ndim != ndim - 1 or not split_last(user, ndim):
                return False
        elif op not in _SPLITS or not isinstance(_dim(user, 0), int) or (
            _dim(user, 0) % ndim != ndim - 1
        ) or op == "slice" and any(op_name(u) == "cat" for u in user.users):
            return False
    return True


def _split_again(node, ndim: int) -> bool:
    """Every use of ``node`` splits its last axis (split, chunk), after transposes of the
    others: no slice, which a partial rotary takes of a vector."""
    def again(u) -> bool:
        if op_name(u) == "transpose":
            return ndim - 1 not in [d % ndim for d in u.args[1:3]] and _split_again(u, ndim)
        return op_name(u) in ("split", "split_with_sizes", "chunk") and isinstance(
            _dim(u, 0), int) and _dim(u, 0) % ndim == ndim - 1

    return bool(node.users) and all(again(u) for u in node.users)


def _split_heads(node, ndim: int, heads: int | None = None) -> bool:
    """Every use of ``node`` splits its heads axis (``heads``, else the one before the last:
    Falcon's multi-query ``split([H, 1, 1], dim=-2)``: the query's heads, then one key and one
    value head), or swaps it with another axis but the last (a transpose, or a permute that
    keeps the head dim last) and then splits it there (DiffLlama's values ``v.transpose(1, 2)``
    halved along their heads, ``chunk(v, 2, 1)``)."""
    heads = ndim - 2 if heads is None else heads

    def split(u) -> bool:
        if op_name(u) == "transpose" and isinstance(u.args[1], int) and isinstance(
                u.args[2], int):
            a, b = (d % ndim for d in u.args[1:3])
            return heads in (a, b) and ndim - 1 not in (a, b) and _split_heads(
                u, ndim, b if a == heads else a)
        if op_name(u) == "permute" and all(isinstance(d, int) for d in u.args[1]):
            order = [d % ndim for d in u.args[1]]  # DeBERTa's (0, 2, 1, 3): the head dim last
            return order[-1] == ndim - 1 and _split_heads(u, ndim, order.index(heads))
        return (op_name(u) in ("split", "split_with_sizes", "chunk")
                and isinstance(_dim(u, 0), int) and _dim(u, 0) % ndim == heads)

    return bool(node.users) and all(split(u) for u in node.users)


def _select_blocks(node, ndim: int) -> bool:
    """Every use of ``node`` indexes the axis before the last (``fused[..., 0, :]``)."""
    return bool(node.users) and all(
        op_name(u) == "select" and isinstance(_dim(u, 0), int) and _dim(u, 0) % ndim == ndim - 2
        for u in node.users
    )


class FusedHeadOps:
    """A linear layer's output viewed per head and split into per-head blocks."""

    def fused_heads(self, node, v, old, shape):
        """The view of a fused layer's output into heads whose every use splits each head's
        features into blocks: a lazy per-head layer (GPT-NeoX's (H, 3·dh), then split by
        ``op_chunk``, ``op_split`` or ``op_slice``) or its blocks at once (Bloom's (H, 3, dh),
        then indexed); None for any other view (an ordinary projection viewed into heads)."""
        if not (isinstance(v, Affine) and v.dh is None and v.tags[-1] == "F"
                and v.w.rows is None and v.w.period is None):
            return None
        # an axis of 1 among the tokens (MLA's compressed kv, viewed (b, 1, t, r) for HF's
        # caches, then projected) holds nothing to lay out: the view drops it
        keep = [i for i, (s, t) in enumerate(zip(old, v.tags, strict=True))
                if not (i > 0 and s == 1 and t == "tok")]
        old, vtags = [old[i] for i in keep], tuple(v.tags[i] for i in keep)
        lead, rest = tuple(shape[: len(old) - 1]), tuple(shape[len(old) - 1:])
        if lead != tuple(old[:-1]) or math.prod(rest) != old[-1]:
            return None
        tags = vtags[:-1] + ("H", "dh")
        if len(rest) == 2 and split_last(node, len(shape)):
            return self._per_head(v, rest[1], node.name, tags)
        if len(rest) == 2 and _split_heads(node, len(shape)):  # whole heads: contiguous rows
            return dataclasses.replace(v, node=node.name, tags=tags, dh=rest[1],
                                       layer=v.layer or v.node)
        if len(rest) == 3 and _select_blocks(node, len(shape)):
            heads = self._per_head(v, rest[1] * rest[2], node.name, tags)
            d = rest[2]
            return Parts([self.row_block(heads, i * d, (i + 1) * d, node.name)
                          for i in range(rest[1])])
        return None

    def split_heads(self, node, v: Affine, sizes) -> Parts:
        """Whole heads of a fused layer's output viewed per head (Falcon's multi-query split):
        heads lo..hi are the contiguous rows lo·dh..hi·dh, a row block as a split of the
        features gives, each part still per head."""
        items, start = [], 0
        for s in sizes:
            block = self.row_block(dataclasses.replace(v, dh=None), start * v.dh,
                                   (start + s) * v.dh, v.node)
            # named by its place: its rows (H·dh.. for the key) change with the head count
            w, b = (dataclasses.replace(r, part=len(items)) if r else r for r in (block.w, block.b))
            items.append(dataclasses.replace(block, w=w, b=b, tags=v.tags, dh=v.dh))
            start += s
        return Parts(items)

    def one_head(self, node, v, dim):
        """A fused layer's output given a heads axis of 1 before its tokens and split along its
        features (GPT-BigCode's multi-query ``c_attn(x).unsqueeze(1).split((n, dh, dh), 3)``):
        each part is a block of rows, one head of its whole size (the query is viewed into its
        heads after; the key and value stay one head each); None for any other added axis."""
        ndim = len(node.meta["val"].shape)
        if not (isinstance(v, Affine) and v.dh is None and v.tags == ("tok", "tok", "F")
                and v.w.rows is None and dim % ndim == 1 and node.users and all(
                    op_name(u) in ("split", "split_with_sizes") and _dim(u, 0) % ndim == ndim - 1
                    for u in node.users)):
            return None
        size = v.w.shape[1] if v.w.t else v.w.shape[0]
        return dataclasses.replace(v, node=node.name, tags=("tok", "H", "tok", "dh"), dh=size,
                                   layer=v.layer or v.node)

    def merged_heads(self, old, shape, v):
        """The batch and heads axes merged into one and split back (BART's attention, MVP,
        TrOCR: ``q.reshape(b * H, t, dh)``, ``bmm``, ``.view(b, H, t, t)``): each row of the
        merged axis is one head of one sequence, all that attention reads of it, so it is
        tagged as the heads axis; None for any other view."""
        old, shape = tuple(old), tuple(shape)
        if not isinstance(v, (Vec, Scores)):
            return None
        if v.tags[:2] == ("tok", "H") and len(old) == 4 and shape == (old[0] * old[1], *old[2:]):
            return self._retag(v, ("H",) + v.tags[2:])
        if v.tags[0] == "H" and len(old) == 3 and len(shape) == 4 and (
            shape[0] * shape[1] == old[0] and shape[2:] == old[1:]
        ):
            return self._retag(v, ("tok", "H") + v.tags[1:])
        if isinstance(v, Vec) and v.tags == ("tok", "H", "tok", "dh") and old[1] == 1 and (
            len(shape) == 4 and shape[:2] == (old[0], old[2]) and shape[2] * shape[3] == old[3]
        ):  # one head of a whole query (GPT-BigCode's) viewed into its heads
            return Vec(v.name, ("tok", "tok", "H", "dh"), v.dim, shape[3])
        return None

    def head_part(self, v, node):
        """A block of a per-head layer, as the vector it is (named by the node that takes it:
        a chunk's item, a slice, an index), so that every op after it sees a vector; a block
        of each head (rows of every group of ``period``) whose every use splits each head again
        (AXK2's query split off its gate, then into its rotary and other parts) stays a block
        of the layer, each of its parts one of rows. A block of whole heads (Falcon's query: no
        period) split again would need rows of each of its heads, which one range of rows
        cannot say: a vector, whose split is refused."""
        if not (isinstance(v, Affine) and v.dh and v.w.rows):
            return v
        again = v.w.period is not None and _split_again(node, len(node.meta["val"].shape))
        return v if again else self.vec(v, node)

    def _per_head(self, v: Affine, m: int, name: str, tags) -> Affine:
        """``v`` viewed as heads of m features each: every block of it is a block of each
        group of m rows of the weight (and bias)."""
        w = dataclasses.replace(v.w, period=m)
        b = dataclasses.replace(v.b, period=m) if v.b is not None else None
        return Affine(v.x, w, b, name, tags, v.layer or v.node, dh=m)
