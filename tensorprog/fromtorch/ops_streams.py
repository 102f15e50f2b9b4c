"""Hyper-connections: m residual streams per token on an axis of their own, ``[B, T, m, n]``,
held as m program vectors (HY v4's and DeepSeek-V4's hyper-connections).

The language's vectors are per token, so an axis of a finite number m of streams is read as m
vectors of n coordinates each, and every op along that axis is written out per stream:

- ``h.unsqueeze(2).expand(-1, -1, m, -1)``: m copies of h (:class:`Lifted`, then
  :class:`Streams`);
- ``w.unsqueeze(-1) * streams`` with w a per-token vector of m entries (a finite vector, made by
  a layer of finite fan-out, as a router's gates): stream k times ``spread(pick(w, one, k), n)``,
  one number per token over its n coordinates; ``w.unsqueeze(-1) * h.unsqueeze(-2)``: m streams
  ``spread(pick(w, one, k), n) * h``, and a number c added to w (HY's ``sigmoid(...) + eps``),
  ``c * h`` more of each;
- a sum over the streams' axis: the sum of the m vectors; a sum of two stacks: stream by stream;
- ``streams.flatten(2)`` (or a view to m·n features): ``cat(H_1, ..., H_m, D)``, D = m·n, all
  of whose parts grow with the width, so an RMS norm over it and a linear layer reading it are
  the language's own (a layer of fan-in m·n and finite fan-out derives as a readout does).

What reads the streams otherwise (a product with another stack, a mean over the streams, a
mixing matrix across them) is refused at its line. No exponent is set here: each param's comes
from the program these statements make, by derive's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine, HeadGate, Pointwise, PRef, Vec
from .where import op_name, refuse

_HELP = (
    "hold the streams as m per-token vectors, mix them with per-token weights of m entries "
    "(w.unsqueeze(-1) * streams, summed over the streams' axis), and flatten them to m·n "
    "features for a linear layer or a norm"
)


@dataclass
class Lifted:
    """A per-token vector ``src`` given an axis of 1 before its features (``h.unsqueeze(-2)``):
    one stream, to be expanded to m or spread over m streams by per-stream weights."""

    src: Vec


@dataclass
class Streams:
    """m per-token vectors of the same dim on an axis of their own before the features, torch's
    ``[B, T, m, n]``: ``items[k]`` is stream k."""

    items: tuple


@dataclass
class Weighted:
    """``w.unsqueeze(-1)`` plus a number ``c`` (``(sigmoid(z) + eps).unsqueeze(-1)``): per-token
    weights of the m streams, one each, shifted by c."""

    gate: HeadGate
    c: float = 0.0


@dataclass
class Shifted:
    """A finite per-token vector ``src`` plus a number ``c``, read only as per-stream weights
    (after ``unsqueeze(-1)``)."""

    src: Vec
    c: float


STREAM_VALUES = (Lifted, Streams, Weighted, Shifted)


class StreamOps:
    """The ops of a stack of residual streams (see the module's doc)."""

    def call(self, node):
        args, kwargs = self.args(node)
        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        if any(isinstance(x, STREAM_VALUES) for x in flat):
            return self.stream_op(node, op_name(node), args, kwargs)
        return super().call(node)

    def op_unsqueeze(self, node, v, dim):
        shape = tuple(node.meta["val"].shape)
        ndim = len(shape)
        tags = getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", None)
        if (
            isinstance(v, (Vec, Affine, Pointwise))
            and ndim == 4
            and dim % ndim == ndim - 2
            and tags
            and tags[-1] == "F"
            and len(tags) == 3
            and not getattr(v, "dh", None)
        ):
            return Lifted(self.vec(v, node))  # h.unsqueeze(-2): one stream
        if ndim == 4 and dim % ndim == ndim - 1 and isinstance(v, Shifted):
            return Weighted(self.head_gate(node, v.src), v.c)
        if (
            ndim == 4
            and dim % ndim == ndim - 1
            and node.users
            and all(_lifts(node, u) for u in node.users)
        ):
            return self.head_gate(node, v)  # w.unsqueeze(-1) * h.unsqueeze(-2): per stream
        return super().op_unsqueeze(node, v, dim)

    def op_add(self, node, u, v, alpha=1):
        # w + c where w.unsqueeze(-1) weighs streams (HY's sigmoid(z) + eps): kept apart, as
        # the weights w plus c times each stream, where the function would read c as a factor
        if alpha == 1 and node.users and all(_weighs(u) for u in node.users):
            for w, c in ((u, v), (v, u)):
                if _number(c) and isinstance(w, (Vec, Affine, Pointwise)):
                    return Shifted(self.vec(w, node), float(c))
        return super().op_add(node, u, v, alpha)

    def view(self, node, v):
        shape = tuple(node.meta["val"].shape)
        if (
            isinstance(v, PRef)
            and v.rows
            and len(v.shape) == 1
            and len(shape) == 2
            and shape[0] == shape[1] > 1
        ):
            # DeepSeek-V4's comb_b.view(m, m): the bias of a per-token matrix across streams
            raise refuse(
                node,
                f"a block of a 1-D param laid out as a {shape[0]}x{shape[1]} "
                "matrix (a mixing matrix across residual streams, hyper-connections' "
                "comb): the trace mixes streams only by per-token weights of one entry "
                "per stream, and a matrix made doubly stochastic by Sinkhorn's "
                "iterations divides by per-token sums of its entries, which the "
                "language has no exact form of",
                help=_HELP + "; or drop the comb "
                "matrix (HY v4's hyper-connections), or write the model as a program",
            )
        return super().view(node, v)

    def stream_op(self, node, op, args, kwargs):
        from .walk import IDENTITY_OPS, VIEW_OPS

        if op in IDENTITY_OPS or getattr(node.meta.get("val"), "shape", None) is None:
            # (a check of the stack's dtype or shape, _assert_tensor_metadata, holds no value)
            return args[0] if op in IDENTITY_OPS else None
        shape = tuple(node.meta["val"].shape)
        if op in IDENTITY_OPS:
            return args[0]
        x = args[0]
        if op == "unsqueeze" and isinstance(x, Shifted):
            return self.op_unsqueeze(node, *args)
        if op == "expand" and isinstance(x, Lifted) and len(shape) == 4:
            return Streams((x.src,) * shape[-2])
        if op in ("mul", "multiply") and len(args) == 2:
            return self.streams_weighted(node, *args)
        if (
            op == "add"
            and all(isinstance(a, Streams) for a in args[:2])
            and kwargs.get("alpha", 1) == 1
            and len(args) == 2
        ):
            a, b = args
            return Streams(
                tuple(
                    self.stream_statement(node, f"{p.name} + {q.name}", p)
                    for p, q in zip(a.items, b.items, strict=True)
                )
            )
        if op == "add" and len(args) == 2 and isinstance(x, Weighted) and _number(args[1]):
            return Weighted(x.gate, x.c + float(args[1]))
        if op == "sum" and isinstance(x, Streams):
            ndim = len(self._shape(node.args[0]))
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if list(dims or []) and [d % ndim for d in dims] == [ndim - 2] and not keep:
                return self.streams_summed(node, x)
        if (
            op in VIEW_OPS
            and isinstance(x, Streams)
            and len(shape) == 3
            and shape[-1] == sum(p.dim for p in x.items)
        ):
            return self.cat_statement(node, list(x.items))  # flatten(2): cat(H_1, ..., D)
        what = {
            Lifted: "a per-token vector given an axis before its features",
            Streams: "a stack of per-token residual streams (hyper-connections)",
            Weighted: "per-stream weights (w.unsqueeze(-1))",
            Shifted: "per-stream weights plus a number",
        }
        kinds = sorted({what[type(a)] for a in args if type(a) in what})
        raise refuse(
            node,
            f"{op} of {' and '.join(kinds)}: only copies of one vector, "
            "per-token weights times the streams, sums over the streams' axis and a "
            "flatten of the streams to m·n features are traced",
            help=_HELP,
        )

    def streams_weighted(self, node, u, v) -> Streams:
        """``w.unsqueeze(-1) * streams`` (stream k times w_k) or ``w.unsqueeze(-1) *
        h.unsqueeze(-2)`` (m streams, w_k·h)."""
        for w, s in ((u, v), (v, u)):
            if isinstance(w, HeadGate):
                w = Weighted(w)
            if not isinstance(w, Weighted) or not isinstance(s, (Streams, Lifted)):
                continue
            m = w.gate.src.dim
            items = s.items if isinstance(s, Streams) else (s.src,) * m
            if len(items) != m:
                raise refuse(
                    node,
                    f"per-stream weights of {m} entries times {len(items)} streams",
                    help=_HELP,
                )
            one = self.dim(1)
            out = []
            for k, h in enumerate(items):
                expr = f"spread(pick({w.gate.src.name}, {one}, {k}), {self.dim(h.dim)}) * {h.name}"
                if w.c:
                    expr += f" + {self.coefficient(w.c, node, h.name)} * {h.name}"
                out.append(self.stream_statement(node, expr, h))
            return Streams(tuple(out))
        raise refuse(
            node,
            "a product of residual streams with anything but per-token weights "
            "of one entry per stream (w.unsqueeze(-1))",
            help=_HELP,
        )

    def streams_summed(self, node, s: Streams) -> Vec:
        name = self.emit_vector(node.name, " + ".join(p.name for p in s.items))
        return Vec(name, s.items[0].tags, s.items[0].dim)

    def stream_statement(self, node, expr: str, like: Vec) -> Vec:
        """One stream's statement; no graph node holds it alone (the stack is one tensor)."""
        name = self.fresh(f"{node.name}_stream")
        self.out.stmts.append(f"{name} = {expr}")
        return Vec(name, like.tags, like.dim)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _lifts(node, user) -> bool:
    """Whether ``user`` multiplies ``node`` by a tensor with an axis of 1 before its features
    (``h.unsqueeze(-2)``): per-stream weights making m streams of one vector."""
    if op_name(user) not in ("mul", "multiply"):
        return False
    others = [a for a in user.all_input_nodes if a is not node]
    return (
        len(others) == 1
        and len(others[0].meta["val"].shape) == 4
        and others[0].meta["val"].shape[-2] == 1
        and others[0].meta["val"].shape[-1] > 1
    )


def _weighs(user) -> bool:
    """Whether ``user`` (through casts) is ``unsqueeze(-1)`` to 4 axes: a weight per stream."""
    if op_name(user) in ("to", "_to_copy", "float", "type_as", "alias"):
        return bool(user.users) and all(_weighs(u) for u in user.users)
    shape = getattr(user.meta.get("val"), "shape", ())
    return op_name(user) == "unsqueeze" and len(shape) == 4 and user.args[1] in (-1, 3)
