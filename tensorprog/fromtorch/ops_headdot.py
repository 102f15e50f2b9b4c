"""A dot per head of one token, traced with the language's ``hdot(u, v, dh)``.

NeoMME's exclusive self-attention removes from each head of the attention output o its component
along the token's own unit value, ``(o * vn).sum(-1, keepdim=True)`` of o and vn =
F.normalize(v) viewed (..., H, dh): one number per head and token, the program's ``hdot(o, vn,
dh)`` (a vector of H entries), given its axis of 1 back as a per-head gate (``HeadGate``: read
by a product with a vector viewed per head, ``spread(s, dh) * x``). Only the sum over the last
axis of a product of two vectors viewed per head alike (the same heads, the same head dim) is
traced so; any other block (a sum over the heads, over two heads' coordinates, of a vector not
viewed per head) keeps the refusal of a sum over each block (ops_flatstreams.py).

The exponents are derived (engine/rules_hdot.py): over heads of a fixed dh a finite sum; over a
dh that grows a CLT or LLN sum. An L2 normalisation over a dh that grows has a constant dh^-1/2
of the width, held at its base value: a dot reading it is refused there
(normed._refuse_unit_in_head_dot), as its exact program needs a scale of the dot the trace does
not write.
"""

from __future__ import annotations

import math

from .ops_arith import flat_param
from .ops_layout import GATE_FNS
from .values import Affine, HeadGate, ParamFn, Pointwise, Vec
from .where import CHECK_OPS, op_name, refuse

_CASTS = {"to", "_to_copy", "contiguous", "clone", "alias"}  # the same values (an integer
# type aside, which the walker refuses)


def _per_head(x) -> bool:
    """A vector viewed per head: its heads at the axis before its last, its head dim."""
    return isinstance(x, Vec) and x.tags[-2:] == ("H", "dh") and bool(x.dh)


def _misread(node):
    """The first reader of the gate ``node`` (shape (..., H, 1)) that no gate rule reads, or
    None: each must be a coordinatewise function of it (sigmoid(s)) or a product, with a
    tensor of its heads and a head dim (the gate's use, ``spread(s, dh) * x``) or with another
    gate of one number per head (tanh(alpha).view(1, 1, -1, 1) * s), read so in turn. A view of
    it, a sum, a product broadcast otherwise, is no per-head gate."""
    shape = tuple(node.meta["val"].shape)
    for user in node.users:
        others = [a for a in user.all_input_nodes if a is not node]
        sizes = [tuple(a.meta["val"].shape) if "val" in a.meta else () for a in others]
        if op_name(user) in CHECK_OPS:  # export's check of a cast's dtype: no value
            continue
        if op_name(user) in GATE_FNS | _CASTS and not others:
            bad = _misread(user)
        elif (
            op_name(user) == "mul"
            and len(others) == 1
            and 2 <= len(sizes[0]) <= len(shape)
            and sizes[0][-2] == shape[-2]
        ):
            bad = None if sizes[0][-1] > 1 else _misread(user)  # a head's vector, or a gain
        else:
            bad = user
        if bad is not None:
            return bad
    return None


def _refuse_misread(node) -> None:
    """Refuses, at the gate's line, a per-head dot's gate read other than as a gate."""
    bad = _misread(node)
    if bad is not None:
        raise refuse(
            node,
            f"a dot per head kept as a gate (..., H, 1) read by {op_name(bad)}: "
            "it is traced only as a factor of products with a vector viewed as (..., "
            "H, dh) (spread(hdot(u, v, dh), dh) * x), through coordinatewise functions "
            "and gains of one number per head",
            help="multiply the per-head view by "
            "the dot once, (u * v).sum(-1, keepdim=True) * x, and compute anything "
            "else from (u * v).sum(-1)",
        )


class HeadDotOps:
    """``(u * v).sum(-1)`` of two vectors viewed (..., H, dh): ``hdot(u, v, dh)``."""

    def head_dot(self, node, x, dims, keepdim: bool):
        """The program's ``hdot(u, v, dh)`` for ``(u * v).sum(-1, keepdim)`` of u, v viewed
        per head alike (keepdim: a :class:`HeadGate`, else the vector of H entries); None for
        any other sum."""
        prod = node.args[0]
        ndim = len(prod.meta["val"].shape)
        axes = [d % ndim for d in dims] if isinstance(dims, (list, tuple)) else None
        if (
            axes != [ndim - 1]
            or not isinstance(x, Vec)
            or not _per_head(x)
            or not hasattr(prod, "op")
            or op_name(prod) != "mul"
            or len(prod.args) != 2
        ):
            return None
        sides = [self.env.get(getattr(a, "name", None)) for a in prod.args]
        if not all(isinstance(s, (Vec, Affine, Pointwise)) for s in sides):
            return None  # a param, a constant: no per-token vector
        u, v = (self.vec(s, node) for s in sides)
        if (
            not (_per_head(u) and _per_head(v))
            or (u.tags, u.dim, u.dh, u.group) != (v.tags, v.dim, v.dh, 1)
            or tuple(prod.args[0].meta["val"].shape) != tuple(prod.args[1].meta["val"].shape)
        ):
            return None  # a broadcast product, or heads laid out unlike: the other rules'
        if keepdim:  # its axis of 1 read as a gate's alone: a view of it is none (a view of
            _refuse_misread(node)  # a HeadGate has no rule)
        heads = u.dim // u.dh
        self.dim(heads)  # the heads' count, hdot's result dim, declared
        if list(prod.users) == [node]:  # the product, read by this sum alone, is its dot's
            self._drop_product(x.name, (f"{u.name} * {v.name}", f"{v.name} * {u.name}"))
        name = self.emit_vector(node.name, f"hdot({u.name}, {v.name}, {self.dim(u.dh)})")
        g = Vec(name, (*u.tags[:-2], "F"), heads)
        return HeadGate(g, node.name) if keepdim else g

    def _drop_product(self, name: str, forms: tuple[str, ...]) -> None:
        """Drops the statement ``name = u * v`` (either order) that the walk emitted for the
        product a dot sums, and its record as a vector of the model's (nothing reads it)."""
        for form in forms:
            if f"{name} = {form}" in self.out.stmts:
                self.out.stmts.remove(f"{name} = {form}")
                self.out.vectors.pop(name, None)
                return

    def head_dot_gain(self, node, u, v):
        """``f(w).view(1, 1, H, 1) * s`` of a function of a param w of H entries (NeoMME's
        tanh(alpha)) and a per-head gate s of H entries per token (the dot above): the gate of
        ``f(w) * s``, w a gain of s's H entries; None for any other product."""
        for g, s in ((u, v), (v, u)):
            if not isinstance(g, ParamFn) or not isinstance(s, HeadGate):
                continue
            ref = flat_param(g.ref)
            shape = tuple(node.meta["val"].shape)
            if (
                len(ref.shape) != 1
                or ref.shape[0] != s.src.dim
                or shape[-2:] != (s.src.dim, 1)
                or math.prod(g.ref.shape) != s.src.dim
            ):
                return None
            _refuse_misread(node)  # read as a gate, as the dot's own
            w = self.vector_param(ref, node)
            name = self.emit_vector(node.name, f"({g.form.replace('{}', w)}) * {s.src.name}")
            return HeadGate(Vec(name, s.src.tags, s.src.dim), node.name)
        return None
