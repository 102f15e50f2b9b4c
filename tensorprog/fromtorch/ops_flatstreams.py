"""Streams side by side in the features: hyper-connections that keep m copies of the residual
stream as one per-token vector of m·n features (Qwen4-exp's ``hidden_states.repeat(1, 1, m)``,
its ``GatedResidual``), each stream a block of n of them.

The language holds the m·n features as one vector whose parts are the streams, each a fixed share
(1/m) of it, so every rule reads its size as any vector's (docs/language.md, ``cat``):

- ``x.repeat(1, 1, m)`` of a per-token vector is ``cat(x, ..., x, D)``, m copies, D = m·n;
- a norm over each stream's block (``x.view(..., m, n)`` normed over its last axis) is the
  per-part norm ``rmsnorm(h, n)``, as QK-norm's over each head (the tracer's per-head view, m
  heads of n);
- a linear layer reading the m·n features is one matrix of fan-in m·n, which grows with the
  width: a fan-out of m (the injection weights') is readout-like, derived as a router is (a low
  rank fixed while the width grows, between two layers of it, is a bottleneck derive refuses);
- a mean over the streams of a (..., m, n) view is ``(part(x, n, 0) + ... + part(x, n, m - 1))
  / m``: ``part`` takes stream k's coordinates, and the sum is a fixed number of terms;
- a per-token vector x given a stream axis, ``x.unsqueeze(-2)``, times weights of m entries per
  token given an axis of 1 after them, ``w.unsqueeze(-1)`` (a block's output injected into each
  stream with its weight), is read by the stream-axis rules (ops_streams.py, which take every op
  on such a stack first), stream by stream; this module only refuses that vector added to the
  weights, which no stream layout computes.

Each is exact for every width, so the engine derives each param's exponents from its own dims;
no table of layer roles is read. Only these layouts are traced: a repeat along another axis, or
of a vector whose streams are not its last axis, keeps the refusal of ``repeat``; a weighted
product not laid back into the m·n features (streams kept on an axis of their own, (..., m, n),
as HY v4's and DeepSeek-V4's hyper-connections keep them) is left to the other rules."""

from __future__ import annotations

from ..errors import TraceError
from .values import Affine, Pointwise, Vec
from .where import op_name, refuse, repeat_sizes

_HELP = (
    "lay the streams side by side in the features as x.repeat(1, 1, m), average them over "
    "a (..., m, n) view's stream axis, and weight them by w.unsqueeze(-1) * x.unsqueeze(-2)"
)


def _refuse_misread_tile(node, dim) -> None:
    """Refuses ``x.unsqueeze(-2)`` of a per-token vector that meets weights of one entry per
    stream (a (..., m, 1) operand) in anything but a product: torch would add w_k to each of
    stream k's coordinates, which ``spread(w, n) * cat(x, ..., x)`` does not compute."""
    shape = tuple(node.meta["val"].shape)
    ndim = len(shape)
    if ndim < 3 or dim % ndim != ndim - 2 or shape[-2] != 1:
        return
    for u in node.users:
        others = [a for a in u.all_input_nodes if a is not node and "val" in a.meta]
        if op_name(u) != "mul" and any(
            len(o.meta["val"].shape) == ndim
            and o.meta["val"].shape[-1] == 1
            and o.meta["val"].shape[-2] > 1
            for o in others
        ):
            raise refuse(
                node,
                f"a per-token vector given a stream axis (x.unsqueeze(-2)) read "
                f"by {op_name(u)} with weights of one entry per stream: the streams "
                "are traced only as the product of the two, stream k's weight w_k "
                "times x (spread(w, n) * cat(x, ..., x, D))",
                help=_HELP,
            )


def _refuse_block_dot(node, x, dims) -> None:
    """Refuses, naming it, a sum over the last axis of a vector viewed as (batch, tokens, k, d)
    that the other rules refused (no sum of squares, a norm's) and that is no dot of two vectors
    viewed per block alike (``hdot``, ops_headdot.py: Qwen4-exp's ``(key * query).sum(-1)``
    over each stream, NeoMME's projection of each head on its value): a block's coordinates
    summed on their own, or a product broadcast over the blocks, has no form."""
    ndim = len(node.args[0].meta["val"].shape)
    axes = [d % ndim for d in dims] if isinstance(dims, (list, tuple)) else None
    if isinstance(x, Vec) and x.tags == ("tok", "tok", "H", "dh") and axes == [3]:
        raise refuse(
            node,
            "a sum over each block's (head's) coordinates of a vector viewed as (..., k, d), "
            "one number per block per token, that is no product of two vectors viewed per "
            "block alike: the language's hdot(u, v, dh) is the dot of each head of u with "
            "the same head of v, one token's (NeoMME's projection on the values, (o * "
            "vn).sum(-1)), and a block's coordinates summed otherwise have no form",
            help="sum the product of two vectors viewed (..., k, d) alike, (u * v).sum(-1), "
            "or gate each block by weights of one entry per block from a linear layer "
            "(w.unsqueeze(-1))",
        ) from None


class FlatStreamOps:
    """m streams of a per-token vector side by side in its features (see the module's doc)."""

    def op_repeat(self, node, v, *sizes):
        """``x.repeat(1, ..., 1, m)`` of a per-token vector: m copies of it side by side,
        ``cat(x, ..., x, D)``; anything else to the other rules (which refuse it)."""
        sizes = repeat_sizes(sizes)
        tags = getattr(v, "src", v).tags if isinstance(v, (Vec, Affine, Pointwise)) else None
        if (
            tags is None
            or tags[-1] != "F"
            or any(t != "tok" for t in tags[:-1])  # per token (or sequence): no heads, pixels
            or len(sizes) != len(tags)
            or any(s != 1 for s in sizes[:-1])
            or sizes[-1] < 2
        ):
            return super().op_repeat(node, v, *sizes)
        x = self.vec(v, node)
        if x.dh is not None or x.group != 1:
            return super().op_repeat(node, v, *sizes)
        return self.cat_statement(node, [x] * sizes[-1])

    def op_mean(self, node, x, dims=None, keepdim=False, **kw):
        """``x.mean(-2)`` of a vector viewed as (batch, tokens, k, d): the mean of its k parts,
        ``(part(x, d, 0) + ... + part(x, d, k - 1)) / k`` (the mean over the streams); anything
        else to the other rules."""
        total = self._over_streams(node, x, dims, keepdim, kw)
        if total is None:
            return super().op_mean(node, x, dims, keepdim, **kw)
        name = self.fresh(f"{node.name}_sum")  # no node holds the sum: the mean is node's
        self.out.stmts.append(f"{name} = {total}")
        k, d = self._shape(node.args[0])[-2:]
        self.out.part_sums[name] = (node.name, k)
        return Pointwise(Vec(name, ("tok", "tok", "F"), d), lambda t, c=1 / k: c * t, node.name)

    def op_sum(self, node, x, dims=None, keepdim=False, **kw):
        """``x.sum(-2)`` of a vector viewed as (batch, tokens, k, d): the sum of its k parts
        (the streams summed); anything else to the other rules."""
        total = self._over_streams(node, x, dims, keepdim, kw)
        if total is None:
            try:
                return super().op_sum(node, x, dims, keepdim, **kw)
            except TraceError:
                dot = self.head_dot(node, x, dims, keepdim)  # hdot(u, v, dh) (ops_headdot.py)
                if dot is not None:
                    return dot
                _refuse_block_dot(node, x, dims)
                raise
        k, d = self._shape(node.args[0])[-2:]
        name = self.emit_vector(node.name, total)
        self.out.part_sums[name] = (node.name, k)
        return Vec(name, ("tok", "tok", "F"), d)

    def _over_streams(self, node, x, dims, keepdim, kw) -> str | None:
        """The expression ``part(x, d, 0) + ... + part(x, d, k - 1)``, the sum of a per-token
        vector viewed as (batch, tokens, k, d) over its k axis, or None for any other
        reduction. A k that differs between the widths (a per-head view of heads that grow
        with it) is refused once both are traced (growing.py)."""
        ndim = len(self._shape(node.args[0]))
        tags = getattr(x.src if isinstance(x, Pointwise) else x, "tags", None)
        axes = [d % ndim for d in dims] if isinstance(dims, (list, tuple)) else None
        if (
            keepdim
            or kw
            or tags != ("tok", "tok", "H", "dh")
            or axes != [2]
            or not isinstance(x, (Vec, Affine, Pointwise))
        ):
            return None
        k, d = self._shape(node.args[0])[-2:]
        if k < 2:  # an axis of 1 a view added, averaged: x itself (ops_layout.py)
            return None
        v = self.vec(x, node)
        size = self.dim(d)
        return " + ".join(f"part({v.name}, {size}, {i})" for i in range(k))

    def op_unsqueeze(self, node, v, dim):
        """An axis added before a per-token vector's features is read here only to refuse its
        sum with weights of one entry per stream; the product of the two, the streams
        weighted, is the stream-axis rules' (ops_streams.py, first in the converter's order)."""
        _refuse_misread_tile(node, dim)
        return super().op_unsqueeze(node, v, dim)
