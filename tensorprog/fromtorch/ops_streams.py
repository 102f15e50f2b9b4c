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

Gemma 3n's AltUp stacks its streams first, ``torch.stack([h0, ...], dim=0)`` (``[m, B, T, n]``):
a stream is ``x[i]``, a permute moves the streams' axis (``Streams.axis``), ``x.permute(1, 2, 3,
0) @ C`` with C a per-token m x m matrix (a layer's m² outputs viewed (m, m)) makes stream j
``sum_k spread(pick(c, one, k·m + j), n) * H_k``, ``v.repeat(m, 1, 1, 1)`` is m copies of v,
``(w + c).permute(2, 0, 1).unsqueeze(-1)`` weights per stream, ``x[1:] += y`` replaces streams
1.. in the stack (its later reads see them), and a mean over the axis is the streams' mean.

What reads the streams otherwise (a product with another stack, a sum over another axis, a
flatten of a permuted or streams-first stack, a split or chunk, a constant mixing matrix across
them, a write read through another view) is refused at its line. No exponent is set here: each
param's comes from the program these statements make, by derive's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inplace import in_place
from .ops_rescale import Rescaled
from .values import Affine, HeadGate, Parts, Pointwise, PRef, Vec
from .where import aliased, op_name, refuse

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
    axis: int = (
        2  # where the streams' axis is: [B, T, m, n] (2), [m, B, T, n] (0), [B, T, n, m] (3)
    )


@dataclass
class Weighted:
    """``w.unsqueeze(-1)`` plus a number ``c`` (``(sigmoid(z) + eps).unsqueeze(-1)``): per-token
    weights of the m streams, one each, shifted by c."""

    gate: HeadGate
    c: float = 0.0
    axis: int = 2  # the streams' axis it falls on: [B, T, m, 1] (2) or [m, B, T, 1] (0)


@dataclass
class Shifted:
    """A finite per-token vector ``src`` plus a number ``c``, read only as per-stream weights
    (after ``unsqueeze(-1)``)."""

    src: Vec
    c: float
    first: bool = False  # permuted to (m, B, T): AltUp's coefficients, streams first


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
            and node.users
            and all(_spread_over_streams(u) for u in node.users)
        ):
            return Lifted(self.vec(v, node))  # h.unsqueeze(-2): one stream
        if ndim == 4 and dim % ndim == ndim - 1 and isinstance(v, Shifted):
            return Weighted(HeadGate(v.src, node.name), v.c, 0 if v.first else 2)
        if (
            ndim == 4
            and dim % ndim == ndim - 1
            and node.users
            and all(_lifts(node, u) for u in node.users)
        ):
            return self.head_gate(node, v)  # w.unsqueeze(-1) * h.unsqueeze(-2): per stream
        return super().op_unsqueeze(node, v, dim)

    def op_stack(self, node, tensors, dim=0):
        # Gemma 3n's AltUp streams, torch.stack([h0, h1, ...]) on an axis of their own
        ndim = len(node.meta["val"].shape)
        kinds = (Vec, Affine, Pointwise, Rescaled)
        if (
            ndim == 4
            and dim % ndim in (0, 2)
            and len(tensors) > 1
            and all(isinstance(t, kinds) for t in tensors)
        ):
            items = tuple(self.vec(t, node) for t in tensors)
            if all(
                len(v.tags) == 3 and v.tags[-1] == "F" and not v.dh and v.dim == items[0].dim
                for v in items
            ):
                return Streams(items, dim % ndim)
        return super().op_stack(node, tensors, dim)

    def op_repeat(self, node, v, *sizes):
        # AltUp's innovation.repeat(m, 1, 1, 1): m copies of one vector, streams first
        sizes = (
            list(sizes[0])
            if len(sizes) == 1 and isinstance(sizes[0], (list, tuple))
            else list(sizes)
        )
        if (
            isinstance(v, (Vec, Affine, Pointwise))
            and len(sizes) == 4
            and sizes[1:] == [1, 1, 1]
            and len(self._shape(node.args[0])) == 3
        ):
            x = self.vec(v, node)
            if len(x.tags) == 3 and x.tags[-1] == "F" and not x.dh:
                return Streams((x,) * sizes[0], 0)
        return super().op_repeat(node, v, *sizes)

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

        if op in IDENTITY_OPS:
            return args[0]
        x, val = args[0], node.meta.get("val")
        if isinstance(val, (list, tuple)):  # an op of several results: its own rule or refused
            return self.streams_parted(node, op, args, kwargs)
        if getattr(val, "shape", None) is None:
            # (a check of the stack's dtype or shape, _assert_tensor_metadata, holds no value)
            return None
        shape = tuple(val.shape)
        if op == "copy_" and isinstance(args[1], Streams):
            return self.streams_copied(node, args[1])
        if op in ("add_", "mul_") and isinstance(x, Streams):
            return self.streams_in_place(node, op, args, kwargs)
        if op == "permute" and isinstance(x, Shifted) and [d % 3 for d in args[1]] == [2, 0, 1]:
            return Shifted(x.src, x.c, True)
        if op == "unsqueeze" and isinstance(x, Shifted):
            return self.op_unsqueeze(node, *args)
        if isinstance(x, Streams):
            done = self.stream_layout_op(node, op, x, args, kwargs)
            if done is not None:
                return done
        if op == "expand" and isinstance(x, Lifted) and len(shape) == 4:
            return Streams((x.src,) * shape[-2])
        if op == "matmul" and isinstance(x, Streams) and x.axis == 3:
            return self.streams_mixed(node, x, args[1])
        if op in ("mul", "multiply") and len(args) == 2:
            return self.streams_weighted(node, *args)
        if (
            op == "add"
            and all(isinstance(a, Streams) for a in args[:2])
            and kwargs.get("alpha", 1) == 1
            and len(args) == 2
        ):
            a, b = args
            # (a stack of one stream added to m broadcasts it: no stream by stream sum)
            if a.axis == b.axis and len(a.items) == len(b.items):
                return Streams(
                    tuple(
                        self.stream_statement(node, f"{p.name} + {q.name}", p)
                        for p, q in zip(a.items, b.items, strict=True)
                    ),
                    a.axis,
                )
        if (
            op == "add"
            and len(args) == 2
            and isinstance(x, Streams)
            and x.axis == 0
            and kwargs.get("alpha", 1) == 1
            and isinstance(args[1], (Vec, Affine, Pointwise))
        ):
            y = self.vec(args[1], node)  # [m, B, T, n] + [B, T, n]: y added to every stream
            if len(self._shape(node.args[1])) == 3 and y.dim == x.items[0].dim:
                return Streams(
                    tuple(self.stream_statement(node, f"{p.name} + {y.name}", p) for p in x.items),
                    0,
                )
        if op == "add" and len(args) == 2 and isinstance(x, Weighted) and _number(args[1]):
            return Weighted(x.gate, x.c + float(args[1]), x.axis)  # on the same axis
        if op == "sum" and isinstance(x, Streams):
            ndim = len(self._shape(node.args[0]))
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            # over the streams' own axis only: [m, B, T, n].sum(-2) sums the tokens
            if list(dims or []) and [d % ndim for d in dims] == [x.axis] and not keep:
                return self.streams_summed(node, x)
        if (
            op in VIEW_OPS
            and isinstance(x, Streams)
            and x.axis == 2
            and len(self._shape(node.args[0])) == 4
            and len(shape) == 3
            and shape[:2] == tuple(self._shape(node.args[0]))[:2]  # (B, T) kept
            and shape[-1] == sum(p.dim for p in x.items)
        ):
            # only [B, T, m, n] flattens to the streams one after another; [B, T, n, m] (a
            # permute) interleaves them, and [m, B, T, n] viewed (B, T, m·n) mixes the tokens
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

    def streams_parted(self, node, op, args, kwargs) -> Parts:
        """``streams.unbind(axis)``: the m streams, each its vector; any other op of several
        results (a split, a chunk, a max with its indices) is refused here, at its line."""
        x = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if (
            op == "unbind"
            and isinstance(x, Streams)
            and dim % len(self._shape(node.args[0])) == x.axis
        ):
            return Parts(list(x.items))
        raise refuse(
            node,
            f"{op} of a stack of per-token residual streams into several tensors: only "
            "unbind along the streams' axis gives them one by one",
            help=_HELP + "; or index the streams one by one (x[:, :, k])",
        )

    def stream_layout_op(self, node, op, x: Streams, args, kwargs):
        """An op along (or around) the streams' axis: one stream (``select``), some of them
        (``slice``), the axis moved (``permute``), their mean; None for any other op."""
        ndim = len(self._shape(node.args[0]))
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if op == "select" and isinstance(dim, int) and dim % ndim == x.axis:
            return x.items[args[2]]
        if op == "slice" and isinstance(dim, int) and dim % ndim == x.axis:
            start, end = (list(args[2:4]) + [None, None])[:2]
            step = args[4] if len(args) > 4 else 1
            if step == 1:
                return Streams(x.items[start:end], x.axis)
        if op == "permute" and ndim == 4:
            order = [d % ndim for d in args[1]]
            rest = [d for d in order if d != x.axis]
            if rest == sorted(rest):  # the other axes keep their order: (B, T, n) as they were
                return Streams(x.items, order.index(x.axis))
        if (
            op == "mean"
            and isinstance(dim, (list, tuple))
            and [d % ndim for d in dim] == [x.axis]
            and not (args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        ):
            c = self.coefficient(1 / len(x.items), node, "")
            name = self.emit_vector(node.name, f"{c} * ({' + '.join(p.name for p in x.items)})")
            return Vec(name, x.items[0].tags, x.items[0].dim)
        return None

    def streams_in_place(self, node, op, args, kwargs) -> Streams:
        """``x += y`` on streams: exact where nothing reads x after it (inplace.py), or where x
        is some of another stack's streams (AltUp's ``corrected[1:] += y``), whose later reads
        then see those streams updated: the stack's value is rewritten here."""
        target = node.args[0]
        base = target.args[0] if op_name(target) == "slice" else None
        whole = self.env.get(base.name) if base is not None else None
        if not isinstance(whole, Streams) or set(target.users) != {node}:
            in_place(self, node, op)  # refused unless exact
            return self.stream_op(node, op[:-1], args, kwargs)
        _no_alias_read_after(self, node, base, target)
        new = self.stream_op(node, op[:-1], args, kwargs)
        dim, start = target.args[1], (list(target.args[2:3]) + [None])[0]
        if not isinstance(new, Streams) or dim % 4 != whole.axis:
            raise refuse(node, f"an in-place {op} on a part of the streams", help=_HELP)
        lo = 0 if start is None else start % len(whole.items)
        items = whole.items[:lo] + new.items + whole.items[lo + len(new.items) :]
        self.env[base.name] = Streams(items, whole.axis)
        return new

    def streams_copied(self, node, new: Streams) -> Streams:
        """``x[a:b] = y`` (``copy_`` into a slice of a stack, the write back of Python's
        ``x[a:b] += y``): the stack's streams a..b replaced by y's."""
        target = node.args[0]
        base = target.args[0] if op_name(target) == "slice" else None
        whole = self.env.get(base.name) if base is not None else None
        part = self.env.get(target.name)
        if (
            not isinstance(whole, Streams)
            or target.args[1] % 4 != whole.axis
            or new.axis != whole.axis
            # (fewer streams copied into more broadcast them: no stream by stream copy)
            or not isinstance(part, Streams)
            or len(part.items) != len(new.items)
        ):
            raise refuse(
                node,
                "a copy of streams into anything but some of another stack's streams",
                help=_HELP,
            )
        _no_alias_read_after(self, node, base, target)
        start = (list(target.args[2:3]) + [None])[0]
        lo = 0 if start is None else start % len(whole.items)
        items = whole.items[:lo] + new.items + whole.items[lo + len(new.items) :]
        self.env[base.name] = Streams(items, whole.axis)
        return new

    def streams_mixed(self, node, x: Streams, c) -> Streams:
        """``streams.permute(1, 2, 3, 0) @ C`` with C a per-token m x m matrix (AltUp's
        prediction coefficients): stream j of the result is sum_k C[k, j] * H_k."""
        m = len(x.items)
        c = self.vec(c, node) if isinstance(c, (Affine, Pointwise)) else c
        if (
            not isinstance(c, Vec)
            or c.dim != m * m
            or c.dh != m
            or len(c.tags) != 4
            or set(c.tags[2:]) != {"H", "dh"}
        ):
            raise refuse(
                node,
                f"a matmul of {m} residual streams with anything but a "
                f"per-token {m}x{m} matrix (a layer's {m * m} outputs viewed as "
                f"({m}, {m}))",
                help=_HELP,
            )
        # entry (k, j) of C: row r, column q of the layer's outputs viewed (m, m) are its
        # output r·m + q, and a transpose of the view (tags (dh, H)) swaps them
        at = (lambda k, j: j * m + k) if c.tags[2:] == ("dh", "H") else (lambda k, j: k * m + j)
        one, out = self.dim(1), []
        for j in range(m):
            terms = [
                f"spread(pick({c.name}, {one}, {at(k, j)}), {self.dim(h.dim)}) * {h.name}"
                for k, h in enumerate(x.items)
            ]
            out.append(self.stream_statement(node, " + ".join(terms), x.items[0]))
        return Streams(tuple(out), 3)

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
            if len(items) != m or (s.axis if isinstance(s, Streams) else 2) != w.axis:
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
            return Streams(tuple(out), w.axis)
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


def _no_alias_read_after(walker, node, base, target):
    """Refuses the write ``node`` into ``target``, some of ``base``'s streams, where a tensor
    sharing base's memory other than base (a view of it taken before the write, a view of that
    view, the value base is itself a view of) is read after the write: torch's read sees the
    write, the trace's would not (only base's value is rewritten)."""
    order = {n.name: i for i, n in enumerate(walker.ep.graph.nodes)}
    root = base
    while aliased(root) is not None:
        root = aliased(root)
    group, todo = [], [root]
    while todo:  # every tensor sharing the root's memory: its views, theirs, ...
        one = todo.pop()
        group.append(one)
        todo.extend(u for u in one.users if u not in group and aliased(u) is one)
    for a in group:
        if (
            a not in (base, target, node)
            and order[a.name] < order[node.name]
            and any(order[w.name] > order[node.name] for w in a.users)
        ):
            raise refuse(
                node,
                f"an in-place {op_name(node)} on some of the streams, whose stack is read "
                f"after it through another tensor sharing its memory ({a.name})",
                help=_HELP + "; or write the streams out of place (torch.cat, a new stack)",
            )


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
    if op_name(user) in ("to", "_to_copy", "float", "type_as", "alias") or (
        op_name(user) == "permute" and [d % 3 for d in user.args[1]] == [2, 0, 1]
    ):
        return bool(user.users) and all(_weighs(u) for u in user.users)
    shape = getattr(user.meta.get("val"), "shape", ())
    return op_name(user) == "unsqueeze" and len(shape) == 4 and user.args[1] in (-1, 3)


def _spread_over_streams(user) -> bool:
    """Whether ``user`` of ``h.unsqueeze(-2)`` (through casts) makes streams of it: an expand
    to m > 1 on that axis, or a product with per-stream weights ``w.unsqueeze(-1)`` (an axis of
    1 last): not a view of h as one head (GPT-BigCode's multi-query key), which is no stream."""
    if op_name(user) in ("to", "_to_copy", "float", "type_as", "alias", "contiguous"):
        return bool(user.users) and all(_spread_over_streams(u) for u in user.users)
    shape = tuple(getattr(user.meta.get("val"), "shape", ()))
    if op_name(user) == "expand":
        return len(shape) == 4 and shape[-2] > 1
    if op_name(user) == "cat":  # one more vector on a stack (attention over depth's)
        dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
        return len(shape) == 4 and dim % 4 == 2
    if op_name(user) not in ("mul", "multiply"):
        return False
    others = [a for a in user.all_input_nodes if a.meta.get("val") is not None]
    return len(shape) == 4 and any(
        tuple(a.meta["val"].shape)[-1:] == (1,) and len(a.meta["val"].shape) == 4 for a in others
    )
