"""Attention over depth (block attention residuals, Inkling 2's): a stack of the earlier blocks'
outputs per token, ``[B, T, m, n]``, grown from empty, read by a softmax over its m entries.

The stack is held as m program vectors (:class:`~.ops_streams.Streams`), as hyper-connections'
streams are:

- ``h.new_zeros(B, T, 0, n)``: a stack of no vectors; ``torch.cat([stack, h.unsqueeze(-2)],
  dim=-2)``: one more, h;
- an op on every vector of it that leaves the stack's axis alone (an RMS norm written by hand,
  ``x * rsqrt(x.square().mean(-1, keepdim=True) + eps)``): the op's own rule, vector by vector;
- a learnt query ``q`` (a param of Q rows of n, the same for every token) against the stack:
  ``q.view(Q, n).expand(B, T, Q, n) @ stack.transpose(-1, -2)`` is, for each vector N_k,
  the layer ``q @ N_k`` of fan-out Q (one logit per query row; the param is shared by the m
  vectors), a number ``c`` times it (``hidden_size ** -0.5``, a width constant the trace reads
  at both widths), and the softmax over k of query j's m logits is ``softmax(cat(pick(s_0, one,
  j), ..., M))``, M = m, a finite vector per token;
- those weights times the stack: query j's output ``sum_k spread(pick(w_j, one, k), n) * N_k``;
  over a stack of one vector the weight is 1 and the output N_0 (the query is not read).

No exponent is set here: the query's (a layer of fan-in n and finite fan-out, as a router's)
comes from the program by derive's rules. A read of the stack in any other form is refused at
its line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .ops_streams import Lifted, Streams
from .values import Affine, Pointwise, PRef, Vec
from .where import CHECK_OPS, op_name, refuse

_HELP = (
    "read the stack of block outputs by a softmax over it with a learnt query (q @ "
    "norm(stack).transpose(-1, -2), softmax, times the stack), or write the model as a program"
)
#: ops applied to every vector of the stack by their own rules (the stack's axis untouched)
_PER_VECTOR = {"square", "pow", "mean", "add", "rsqrt", "mul", "sqrt", "div"}


@dataclass
class StackPieces:
    """An op's value on each vector of a stack (a piece of a norm, a mean square), one item per
    vector, not yet a vector itself."""

    items: tuple


@dataclass
class Queries:
    """A param of Q rows of n, the same for every token (``q.view(Q, n).expand(B, T, Q, n)``)."""

    ref: PRef
    q: int


@dataclass
class DepthLogits:
    """The logits of the stack's m vectors: ``logits[k]`` the layer ``q @ N_k``, Q entries per
    token (None: a stack of one vector, whose softmax is 1 whatever its logit)."""

    logits: tuple
    q: int


@dataclass
class DepthWeights:
    """Per query row j, the softmax of its m logits: a per-token vector of m entries (None: a
    stack of one vector, whose weight is 1)."""

    weights: tuple
    m: int


@dataclass
class DepthOutputs:
    """Per query row j, the weighted sum of the stack's vectors; ``swapped``: the query axis
    moved before the tokens (``transpose(1, 2)``)."""

    items: tuple
    swapped: bool = False


DEPTH_VALUES = (StackPieces, Queries, DepthLogits, DepthWeights, DepthOutputs)


class _OneVector:
    """A view of a graph node over the stack as the node of one of its vectors: its value's
    shape without the stack's axis, its args likewise, for the rule an op has on a vector."""

    def __init__(self, node, k: int, axis: int = 2):
        import torch

        self._node, self._k, self._axis = node, k, axis
        # (the node's own name: what the program's vectors are recorded against)
        self.name = node.name
        self.target, self.op, self.users = node.target, node.op, node.users
        self.kwargs = node.kwargs
        val = node.meta.get("val")
        self.meta = dict(node.meta)
        if hasattr(val, "shape") and len(val.shape) == 4:
            shape = tuple(val.shape[:axis]) + tuple(val.shape[axis + 1 :])
            self.meta["val"] = torch.empty(shape, dtype=val.dtype, device="meta")
        self.args = tuple(
            _OneVector(a, k, axis) if hasattr(a, "meta") and _four(a) else a for a in node.args
        )
        self.all_input_nodes = [a for a in self.args if hasattr(a, "meta")]

    def __getattr__(self, item):
        return getattr(self._node, item)


def _four(a) -> bool:
    val = a.meta.get("val")
    return hasattr(val, "shape") and len(val.shape) == 4


class DepthOps:
    """The ops of a stack of block outputs read by attention over depth (the module's doc)."""

    def call(self, node):
        args, kwargs = self.args(node)
        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        op = op_name(node)
        if any(isinstance(x, DEPTH_VALUES) for x in flat):
            return self.depth_op(node, op, args, kwargs)
        if op == "cat" and isinstance(args[0], (list, tuple)) and args[0]:
            parts = args[0]
            if any(isinstance(p, (Streams, Lifted)) for p in parts):
                return self.stack_cat(
                    node, parts, args[1] if len(args) > 1 else kwargs.get("dim", 0)
                )
        if (
            op in ("square", "pow")
            and isinstance(args[0], Streams)
            and args[0].axis == 2
            and args[0].items
            and all(not hasattr(x, "__dataclass_fields__") for x in flat[1:])
        ):
            # a norm's square of every vector, whose pieces then stay per vector (a product
            # with per-stream weights, a sum of stacks: ops_streams.py's)
            return self.per_vector(node, op, args, kwargs, len(args[0].items))
        if (
            op == "select"
            and isinstance(args[0], PRef)
            and len(args[0].shape) == 3
            and args[1] == 0
            and args[0].expert is None
            and _queries_view(node)
            and all(_against_stack(e) for e in _expands(node))
        ):
            # query[i] of a param of several sets of queries (Inkling 2 Loop's, one set per
            # loop layer): that set, the slice [i] of the param (as one expert's matrix is)
            ref = args[0]
            return dataclasses.replace(ref, shape=tuple(ref.shape[1:]), expert=args[2])
        if (
            op == "view"
            and isinstance(args[0], PRef)
            and _queries_view(node)
            and all(_against_stack(e) for e in _expands(node))
        ):
            # q.view(-1, n) of a query of one row ([n]) or several ([Q, n]), expanded over
            # the tokens against a stack: the layer of Q rows it is
            shape = tuple(self._shape(node))
            if args[0].shape[-1] == shape[-1]:
                return dataclasses.replace(args[0], shape=shape)
            # (a flat [Q·n] param as Q rows: apply reads a param's width from its own last
            # axis, which here is Q·n)
            raise refuse(
                node,
                f"a query param of shape {list(args[0].shape)} viewed as {list(shape)}: "
                "only a query of one row [n] or of rows [Q, n] is read against a stack",
                help="hold the queries as a param of shape [Q, n]",
            )
        if (
            op == "expand"
            and isinstance(args[0], PRef)
            and len(self._shape(node)) == 4
            and _against_stack(node)
        ):
            ref, shape = args[0], self._shape(node)
            if len(ref.shape) == 2 and ref.shape[-1] == shape[-1] and ref.shape[0] == shape[2]:
                return Queries(ref, shape[2])
        if op in ("transpose", "permute") and isinstance(args[0], Streams) and len(args[0].items):
            done = self.transposed(op, args)
            if done is not None:
                return done
        return super().call(node)

    def stack_cat(self, node, parts, dim) -> Streams:
        """``cat([stack, h.unsqueeze(-2)], dim=-2)``: one more vector on the stack; any parts
        of stacks and single vectors on the stack's axis likewise, in their order (at the
        front, two stacks joined)."""
        if dim % 4 == 2 and all(
            isinstance(p, Lifted) or isinstance(p, Streams) and p.axis == 2 for p in parts
        ):
            items = (p.items if isinstance(p, Streams) else (p.src,) for p in parts)
            return Streams(tuple(v for part in items for v in part), 2)
        raise refuse(
            node,
            "a concatenation of a stack of per-token vectors with anything but stacks and "
            "single vectors (h.unsqueeze(-2)) on the stack's axis (dim=-2)",
            help="grow the stack by torch.cat([stack, h.unsqueeze(-2)], dim=-2), or write "
            "the model as a program",
        )

    def transposed(self, op, args):
        """``stack.transpose(-1, -2)``: the keys' layout [B, T, n, m]; None for another."""
        order = list(range(4))
        if op == "transpose":
            a, b = args[1] % 4, args[2] % 4
            order[a], order[b] = order[b], order[a]
        else:
            order = [d % 4 for d in args[1]]
        if order == [0, 1, 3, 2] and args[0].axis == 2:
            return Streams(args[0].items, 3)
        return None

    def _keeps_stack_axis(self, node, op, args, kwargs) -> bool:
        if op != "mean":
            return True
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        return bool(dims) and [d % 4 for d in dims] == [3]

    def op_new_zeros(self, node, v, size, *rest, **kwargs):
        """``h.new_zeros(B, T, 0, n)``: a stack of no vectors, to be grown by cat."""
        shape = tuple(self._shape(node))
        if len(shape) == 4 and shape[2] == 0:
            return Streams((), 2)
        return self.op_zeros_like(node, v)

    def per_vector(self, node, op, args, kwargs, m: int):
        """The op's own rule on each vector of the stack (its node seen as one vector's)."""
        out = []
        for k in range(m):
            one = _OneVector(node, k)

            def item(x, k=k):
                if isinstance(x, (Streams, StackPieces)):
                    return x.items[k]
                return x

            a = [item(x) for x in args]
            kw = {key: item(x) for key, x in kwargs.items()}
            method = getattr(self, f"op_{op}")
            out.append(method(one, *a, **kw))
        if all(isinstance(x, Vec) for x in out):
            return Streams(tuple(out), 2)
        # (a square stays lazy, for the mean that makes it a norm's mean square)
        return StackPieces(tuple(out))

    def as_stack(self, node, x):
        """A stack's vectors, where each item of ``x`` is one (a layer, a function of one)."""
        if isinstance(x, StackPieces) and all(
            isinstance(v, (Vec, Affine, Pointwise)) for v in x.items
        ):
            return Streams(tuple(self.vec(v, node) for v in x.items), 2)
        return x

    def depth_op(self, node, op, args, kwargs):
        from .walk import IDENTITY_OPS

        x = args[0] if args else None
        if op in CHECK_OPS:  # a check of a dtype or shape, which holds no value
            return None
        if op in IDENTITY_OPS:
            return x
        if op != "mean" and not (op in _PER_VECTOR and isinstance(x, StackPieces)):
            args = [self.as_stack(node, a) for a in args]
            x = args[0] if args else None
            if op in ("transpose", "permute") and isinstance(x, Streams):
                done = self.transposed(op, args)
                if done is not None:
                    return done
        pieces = isinstance(x, StackPieces) or (len(args) > 1 and isinstance(args[1], StackPieces))
        if op in _PER_VECTOR and pieces and self._keeps_stack_axis(node, op, args, kwargs):
            m = len(next(a for a in args if isinstance(a, StackPieces)).items)
            return self.per_vector(node, op, args, kwargs, m)
        if op == "scaled_dot_product_attention" and isinstance(x, Queries):
            return self.depth_sdpa(node, x, args, kwargs)
        if op == "matmul" and isinstance(x, Queries) and isinstance(args[1], Streams):
            return self.depth_logits(node, x, args[1])
        if op == "mul" and isinstance(x, DepthLogits) and _number(args[1]):
            c = float(args[1])
            return DepthLogits(tuple(self.scaled(node, s, c) for s in x.logits), x.q)
        if op == "softmax" and isinstance(x, DepthLogits) and args[1] % 4 == 3:
            return self.depth_softmax(node, x)
        if op == "matmul" and isinstance(x, DepthWeights) and isinstance(args[1], Streams):
            return self.depth_sum(node, x, args[1])
        if (
            op == "transpose"
            and isinstance(x, DepthOutputs)
            and {args[1] % 4, args[2] % 4}
            == {
                1,
                2,
            }
        ):
            return DepthOutputs(x.items, not x.swapped)
        if (
            op in ("reshape", "view")
            and isinstance(x, DepthOutputs)
            and self._shape(node) == self._shape(node.args[0])
        ):
            return x  # (sdpa's output viewed to its own shape: HF's undoing of its packing)
        if op == "select" and isinstance(x, DepthOutputs) and not x.swapped and args[1] % 4 == 2:
            return x.items[args[2]]  # one query's output (Inkling 2 Loop's messages[..., k, :])
        if op == "unbind" and isinstance(x, DepthOutputs) and not x.swapped:
            from .values import Parts

            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim % 4 == 2:
                return Parts(list(x.items))
        raise refuse(
            node,
            f"{op} of a read of a stack of block outputs: only a softmax over it with a "
            "learnt query (q @ stack.transpose(-1, -2), a number times the logits, softmax "
            "over the stack, times the stack, unbound per query) is traced",
            help=_HELP,
        )

    def depth_logits(self, node, q: Queries, stack: Streams) -> DepthLogits:
        if stack.axis != 3:
            raise refuse(node, "a query times a stack not transposed (q @ stack)", help=_HELP)
        if len(stack.items) == 1:  # a softmax over one logit: the weight 1, q not read
            return DepthLogits((None,), q.q)
        return DepthLogits(
            # (one statement per vector: the walk's cache of a node's layer would give all m
            # the first one's)
            tuple(
                self.emit_affine(Affine(h, q.ref, None, node.name, h.tags), node.name)
                for h in stack.items
            ),
            q.q,
        )

    def depth_sdpa(self, node, q: Queries, args, kwargs) -> DepthOutputs:
        """``sdpa(q, stack, stack, scale=c)``: the logits, their softmax and the sum at once."""
        names = ("attn_mask", "dropout_p", "is_causal", "scale")
        given = dict(zip(names, args[3:], strict=False)) | kwargs
        k, v = args[1], args[2]
        if (
            not isinstance(k, Streams)
            or k != v
            or k.axis != 2
            or given.get("attn_mask") is not None
            or given.get("is_causal")
            or given.get("dropout_p", 0.0)
        ):
            raise refuse(
                node,
                "attention of a learnt query over a stack of block outputs with keys and "
                "values that are not the stack itself, a mask, causality or dropout",
                help=_HELP,
            )
        c = given.get("scale")
        c = float(c) if c is not None else self._shape(node)[-1] ** -0.5
        logits = self.depth_logits(node, q, Streams(k.items, 3))
        logits = DepthLogits(tuple(self.scaled(node, s, c) for s in logits.logits), q.q)
        return self.depth_sum(node, self.depth_softmax(node, logits), k)

    def scaled(self, node, s, c: float):
        """``c * (q @ N_k)``: the slot on the layer's own output (a width constant moves into
        the query's init and LR there), which stays the layer's product."""
        if s is None:
            return None
        slot = self.coefficient(c, node, s.name)
        info = self.out.coefs[len(self.out.slots) - 1]
        name = self.emit_vector(node.name, f"{slot} * {s.name}")
        info["out"] = name
        if s.name in self.out.producers:
            self.out.producers[name] = self.out.producers[s.name]
        return Vec(name, s.tags, s.dim)

    def depth_softmax(self, node, x: DepthLogits) -> DepthWeights:
        """Query j's weights: the softmax of its m logits, ``cat(pick(s_k, one, j) ...)``."""
        m = len(x.logits)
        if m == 1:
            return DepthWeights((None,) * x.q, 1)
        one, out = self.dim(1), []
        for j in range(x.q):
            row = [
                Vec(self.emit_vector(node.name, f"pick({s.name}, {one}, {j})"), s.tags, 1)
                if x.q > 1
                else s
                for s in x.logits
            ]
            joined = self.cat_statement(node, row)
            out.append(Vec(self.emit_vector(node.name, f"softmax({joined.name})"), joined.tags, m))
        return DepthWeights(tuple(out), m)

    def depth_sum(self, node, w: DepthWeights, stack: Streams) -> DepthOutputs:
        if stack.axis != 2 or len(stack.items) != w.m:
            raise refuse(node, "weights over a stack times another stack", help=_HELP)
        one = self.dim(1)
        out = []
        for wj in w.weights:
            if wj is None:
                out.append(stack.items[0])
                continue
            terms = [
                f"spread(pick({wj.name}, {one}, {k}), {self.dim(h.dim)}) * {h.name}"
                for k, h in enumerate(stack.items)
            ]
            name = self.emit_vector(node.name, " + ".join(terms))
            out.append(Vec(name, stack.items[0].tags, stack.items[0].dim))
        return DepthOutputs(tuple(out))


def _queries_view(node) -> bool:
    """Whether ``node`` views a param as Q rows that only an expand over (B, T) reads."""
    shape = tuple(node.meta["val"].shape)
    return len(shape) == 2 and _expanded(node)


def _expanded(node) -> bool:
    """Whether every reader of ``node`` (through casts) expands it to [B, T, Q, n]."""
    if not node.users:
        return False
    for u in node.users:
        if op_name(u) in CHECK_OPS:
            continue
        if op_name(u) in ("to", "_to_copy", "alias", "contiguous", "float"):
            if not _expanded(u):
                return False
        elif not (op_name(u) == "expand" and len(u.meta["val"].shape) == 4):
            return False
    return True


def _expands(node):
    """The expands that read ``node`` (through casts)."""
    for u in node.users:
        if op_name(u) == "expand":
            yield u
        elif op_name(u) in ("to", "_to_copy", "alias", "contiguous", "float"):
            yield from _expands(u)


def _against_stack(node) -> bool:
    """Whether the expanded query (through casts) is read only by a matmul or sdpa: attention
    over depth's, not another use of a param expanded over the tokens."""
    if not node.users:
        return False
    for u in node.users:
        if op_name(u) in CHECK_OPS:
            continue
        if op_name(u) in ("to", "_to_copy", "alias", "contiguous", "float", "clone"):
            if not _against_stack(u):
                return False
        elif op_name(u) not in ("matmul", "scaled_dot_product_attention"):
            return False
    return True


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
