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
  token given an axis of 1 after them, ``w.unsqueeze(-1)``, is ``spread(w, n) * cat(x, ..., x,
  D)``: stream k gets w_k · x (``spread`` lays each entry over its block).

Each is exact for every width, so the engine derives each param's exponents from its own dims;
no table of layer roles is read. Only these layouts are traced: a repeat along another axis, or
of a vector whose streams are not its last axis, keeps the refusal of ``repeat``; a weighted
product not laid back into the m·n features (streams kept on an axis of their own, (..., m, n),
as HY v4's and DeepSeek-V4's hyper-connections keep them) is left to the other rules."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TraceError
from .values import Affine, HeadGate, Pointwise, Vec
from .where import op_name, refuse, repeat_sizes

_HELP = (
    "lay the streams side by side in the features as x.repeat(1, 1, m), average them over "
    "a (..., m, n) view's stream axis, and weight them by w.unsqueeze(-1) * x.unsqueeze(-2)"
)


@dataclass
class Tiled:
    """``x.unsqueeze(-2)`` of a per-token vector x, an axis of 1 before its features, whose
    every reader multiplies it by weights of m entries per token given an axis after them: m
    copies of x, each weighted, once the product is taken."""

    src: Vec
    node: str


FLAT_STREAM_VALUES = (Tiled,)


# (walk.py's VIEW_OPS, which imports this module)
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as"}


def _flattened(product) -> bool:
    """Whether every reader of ``product``, (..., m, n), lays it back into m·n features (a
    flatten or view of its last two axes): the streams side by side, not on an axis of their
    own (which other rules hold apart)."""
    shape = tuple(product.meta["val"].shape)
    want = (*shape[:-2], shape[-2] * shape[-1])
    return bool(product.users) and all(
        op_name(u) in _VIEWS and tuple(u.meta["val"].shape) == want for u in product.users
    )


def _paired(node, dim) -> str | None:
    """Which factor of ``(x.unsqueeze(-2) * w.unsqueeze(-1)).flatten(-2)`` the unsqueeze
    ``node`` makes: "tile" (x's, (..., 1, n)), "weights" (w's, (..., m, 1)), or None where any
    reader is not a product with the other factor's layout (m > 1 and n > 1) laid back into the
    features."""
    shape = tuple(node.meta["val"].shape)
    ndim = len(shape)
    if ndim < 3 or not node.users:
        return None
    if dim % ndim == ndim - 2 and shape[-2] == 1 and shape[-1] > 1:
        kind, want = "tile", lambda o: o[-1] == 1 and o[-2] > 1
    elif dim % ndim == ndim - 1 and shape[-1] == 1 and shape[-2] > 1:
        kind, want = "weights", lambda o: o[-2] == 1 and o[-1] > 1
    else:
        return None
    for u in node.users:
        others = [a for a in u.all_input_nodes if a is not node]
        if op_name(u) != "mul" or len(others) != 1 or node not in u.args:
            return None
        other = tuple(others[0].meta["val"].shape) if "val" in others[0].meta else ()
        if len(other) != ndim or not want(other) or other[:-2] != shape[:-2]:
            return None
        if not _flattened(u):
            return None
    return kind


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
    that the other rules refused (no sum of squares, a norm's): one number per block per token,
    a dot of two vectors over each of their blocks (Qwen4-exp's per-layer input gate, ``(key *
    query).sum(-1)`` over each stream; NeoMME's projection of each head on its value)."""
    ndim = len(node.args[0].meta["val"].shape)
    axes = [d % ndim for d in dims] if isinstance(dims, (list, tuple)) else None
    if isinstance(x, Vec) and x.tags == ("tok", "tok", "H", "dh") and axes == [3]:
        raise refuse(
            node,
            "a sum over each block's (head's) coordinates of a vector viewed as (..., k, d), "
            "one number per block per token (a dot of two vectors over each head or stream of "
            "one token: Qwen4-exp's per-layer input gate (key * query).sum(-1), NeoMME's "
            "projection on the values): the language's dot pairs tokens (attention's dot(q, k, "
            "dh)) or sums a whole vector, and has no dot per block of one token",
            help="gate each block by weights of one entry per block from a linear layer "
            "(w.unsqueeze(-1)), or trace the model without this part",
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
        """The factors of ``x.unsqueeze(-2) * w.unsqueeze(-1)`` (a block's output injected into
        each stream with its weight): x's a :class:`Tiled`, w's the per-head gate of its m
        entries (ops_gate.py); any other added axis to the other rules."""
        kind = _paired(node, dim) if isinstance(v, (Vec, Affine, Pointwise)) else None
        tags = getattr(v, "src", v).tags if kind else None
        if kind == "tile" and tags == ("tok", "tok", "F"):
            x = self.vec(v, node)
            if x.dh is None and x.group == 1:
                return Tiled(x, node.name)
        if kind == "weights" and tags == ("tok", "tok", "F"):
            return self.head_gate(node, v)
        _refuse_misread_tile(node, dim)
        return super().op_unsqueeze(node, v, dim)

    def op_mul(self, node, u, v):
        """``x.unsqueeze(-2) * w.unsqueeze(-1)``: stream k is w_k · x, the program's
        ``spread(w, n) * cat(x, ..., x, D)`` viewed as m heads of n (a flatten makes it the
        vector of m·n features); anything else to the other rules."""
        if not any(isinstance(a, Tiled) for a in (u, v)):
            return super().op_mul(node, u, v)
        tile, gate = (u, v) if isinstance(u, Tiled) else (v, u)
        if not isinstance(gate, HeadGate) or "H" in gate.src.tags or gate.src.dh:
            raise refuse(
                node,
                "a per-token vector given a stream axis (x.unsqueeze(-2)) "
                "multiplied by anything but weights of one entry per stream per token "
                "(w.unsqueeze(-1))",
                help=_HELP,
            )
        x, m = tile.src, gate.src.dim
        copies = self.cat_statement(self._node(tile.node), [x] * m, held=False)
        name = self.emit_vector(
            node.name, f"spread({gate.src.name}, {self.dim(x.dim)}) * {copies.name}"
        )
        return Vec(name, ("tok", "tok", "H", "dh"), m * x.dim, x.dim)
