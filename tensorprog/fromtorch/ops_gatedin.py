"""Mixtures of experts whose gates multiply the experts' inputs, traced into ``route_in``.

Llama 4's router writes the gates of every expert in one dense table: the top-k logits scattered
into a table of -inf, then a sigmoid, so that a gate is sigmoid(logit) for a selected expert and
0 for the others. Each expert is then run on every token, on the token times its gate (0 where
the expert was not selected), and the E results are summed:

    scores = sigmoid(full_like(logits, -inf).scatter_(1, ids, top))     [tokens, E]
    routed = x.repeat(E, 1) * scores.transpose(0, 1).reshape(-1, 1)     [E * tokens, n]
    y = bmm(... bmm(routed.view(E, -1, n), W_in) ..., W_out)            each expert's MLP
    out = y.view(-1, n).reshape(E, -1, n).sum(0)

which the program writes, expert by expert (counted from 0),

    g = sigmoid(logits)
    y_e = B_e @ ... (A_e @ route_in(g, k, e, x))
    out = y_0 + ... + y_{E-1}

``route_in(g, k, e, x)`` is x times g_e where g_e is among the k largest (the logits' top-k, the
sigmoid being increasing), else 0: exactly the model's input of expert e, so the sum is the
model's, unselected experts' f(0) included. A table of 0 with the k largest gates scattered in
is the same table. Each value here is one of those tensors (:class:`Filled`, :class:`GateTable`,
:class:`Copies`); the experts' values are ops_moe.py's :class:`Experts` in the orders
"stacked" ([E * tokens, n], expert-major) and "grid" ([E, tokens, n]). Anything else done with
them is refused at its op (MoEOps.vec), with what the tracer follows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .routing import ExpertNode, Experts, TopIdx, TopW
from .values import Affine, Pointwise, PRef, Vec
from .where import refuse, repeat_sizes

HELP = ("the tracer follows a dense table of a router's gates (full_like(logits, -inf) with the "
        "top-k logits scattered in, then a sigmoid; or zeros with the k largest gates scattered "
        "in) that multiplies each expert's input, x.repeat(E, 1) * gates.transpose(0, 1)"
        ".reshape(-1, 1), the experts a batched matmul of 3-D params over [E, tokens, n] and "
        "their results summed over the experts (Llama 4's); else write the layer as a Tensor "
        "Program: g = sigmoid(R @ h), y_e = B_e @ silu(A_e @ route_in(g, k, e, h)), then "
        "y_0 + ... + y_{E-1} (docs/language.md)")
# ops applied to each expert's values alone, coordinate by coordinate: the same per expert
# whatever the layout of the experts' rows
_POINTWISE = {"mul", "add", "sub", "div", "silu", "gelu", "relu", "sigmoid", "tanh", "neg",
              "square", "exp", "erf", "softplus", "leaky_relu", "hardtanh", "clamp", "pow",
              "rsub", "_to_copy", "to", "contiguous", "clone"}
_SPLITS = {"chunk", "split", "split_with_sizes"}


@dataclass
class Filled:
    """``full_like(logits, fill)``: a table of a router's logits' shape, one constant."""

    like: Vec
    fill: float
    node: str = ""


@dataclass
class GateTable:
    """A router's gates over every expert: ``gates``' entries at the top-k of ``gates`` (its
    sigmoid's, where ``fill`` is -inf and no sigmoid was taken yet), ``fill`` elsewhere;
    ``layout``: "token" [tokens, E], "expert" [E, tokens] (transposed), "column"
    [E * tokens, 1] (flattened expert-major)."""

    gates: Vec
    k: int
    fill: float
    layout: str = "token"
    node: str = ""


@dataclass
class Copies:
    """``x.repeat(c, 1)``: c copies of the tokens' vectors, one after the other."""

    x: Vec
    count: int
    node: str = ""


GATED = (Filled, GateTable, Copies)


def grid_experts(x) -> bool:
    return isinstance(x, Experts) and x.order in ("stacked", "grid")


class GatedInputOps:
    """The ops of a layer whose gates multiply its experts' inputs (see the module's
    docstring); MoEOps hands them the ops whose arguments hold one of its values."""

    gated_help = HELP

    def router_table(self, node, like, fill):
        """``full_like(logits, fill)`` of a router's logits: a :class:`Filled` table."""
        if not isinstance(like, (Vec, Affine, Pointwise)) or fill not in (-math.inf, 0):
            raise refuse(node, "a table of a router's logits' shape filled with other than -inf "
                         "(then a sigmoid) or 0, for its top-k to be scattered in", help=HELP)
        v = self.vec(like, node)
        if v.tags[-1] != "F" or len(self._shape(node)) != 2:
            raise refuse(node, "a table of a router's gates that is not [tokens, experts]",
                         help=HELP)
        return Filled(v, float(fill))

    def expert_copies(self, node, x, sizes):
        """``x.repeat(c, 1)`` of a vector per token [tokens, n]: c copies of the tokens."""
        sizes = repeat_sizes(sizes)
        # only a traced vector: a constant repeated (Whisper's position ids over the batch) is
        # the walk's, as it was before this form
        if isinstance(x, (Vec, Affine, Pointwise)) and len(sizes) == 2 and sizes[1] == 1 \
                and isinstance(sizes[0], int) and sizes[0] > 1 \
                and len(self._shape(node.args[0])) == 2:
            v = self.vec(x, node)
            if v.tags[-1] == "F":
                return Copies(v, sizes[0])
        return None

    def gated(self, node, op: str, args, kwargs):
        """An op on the values of a gated-input layer: the table's stages, the gated inputs,
        the experts' layouts and their sum; anything else refused."""
        found = getattr(self, f"_gated_{op}", None)
        out = found(node, *args, **kwargs) if found is not None else None
        if out is not None:
            return out
        if any(grid_experts(a) for a in args) and not any(isinstance(a, GATED) for a in args):
            return self._grid_op(node, op, args, kwargs)
        if any(isinstance(a, Copies) for a in args):
            raise refuse(node, f"the op {op} on the tokens' copies for the experts (x.repeat(E, "
                         "1)) before the router's table of gates multiplies them: each expert "
                         "would read the token ungated", help=HELP)
        if op == "sigmoid" and any(isinstance(a, GateTable) and a.fill != -math.inf
                                   for a in args):
            raise refuse(node, "a sigmoid of a router's table whose entries not selected are "
                         "not -inf: those experts' gates would be sigmoid of them (1/2 for 0), "
                         "not 0", help=HELP)
        raise refuse(node, f"the op {op} on a dense table of a router's gates or the experts' "
                     "gated inputs, in a form the tracer does not follow", help=HELP)

    # -- the table ---------------------------------------------------------------------------
    def _gated_scatter(self, node, table, dim, ids, top=None, *rest, **kwargs):
        """``table.scatter(1, ids, top)``: the k largest of the router's scores scattered into
        a table, of -inf (its logits, a sigmoid to follow) or of 0 (its gates)."""
        ok = (isinstance(table, Filled) and isinstance(ids, TopIdx) and isinstance(top, TopW)
              and not kwargs and not rest and dim in (-1, 1) and not ids.flat and not ids.chosen
              and not (top.flat or top.norm or top.picked or top.chosen) and top.factor == 1
              and ids.gates.name == top.gates.name == table.like.name)
        if not ok:
            raise refuse(node, "a scatter into a router's table of other than the k largest of "
                         "the scores the table was made like, at their own ids", help=HELP)
        return GateTable(top.gates, top.k, table.fill)

    _gated_scatter_ = _gated_scatter

    def _gated_sigmoid(self, node, t):
        """sigmoid of the table of -inf with the top-k logits in: their sigmoid, 0 elsewhere,
        the table of the gates ``sigmoid(logits)`` (whose top-k is the logits'). The model's
        node holds that table, not the program's gates (sigmoid of every logit): no tensor of
        the model holds them, so they are named as an expert's values (``node#gates``), which
        the check does not read."""
        if isinstance(t, GateTable) and t.fill == -math.inf and t.layout == "token":
            name = self.emit_vector(f"{node.name}#gates", f"sigmoid({t.gates.name})")
            return GateTable(Vec(name, t.gates.tags, t.gates.dim), t.k, 0.0)
        return None

    def _gated_transpose(self, node, t, d0, d1):
        if isinstance(t, GateTable) and t.fill == 0 and t.layout == "token" \
                and {d0 % 2, d1 % 2} == {0, 1}:
            return dataclasses.replace(t, layout="expert")
        return None

    def _gated_view(self, node, v, *shape):
        size = tuple(self._shape(node))
        if isinstance(v, GateTable) and v.layout == "expert" and len(size) == 2 and size[1] == 1:
            return dataclasses.replace(v, layout="column")
        if grid_experts(v) and v.weights is None and not v.column \
                and size[-1] == self._shape(node.args[0])[-1]:  # the features kept whole
            e = len(v.items)
            if v.order == "stacked" and len(size) == 3 and size[0] == e:
                return dataclasses.replace(v, order="grid", node="")
            if v.order == "grid" and len(size) == 2:
                return dataclasses.replace(v, order="stacked", node="")
        return None

    _gated_reshape = _gated_unsafe_view = _gated_view

    def _gated_mul(self, node, u, v):
        """``x.repeat(E, 1) * gates.transpose(0, 1).reshape(-1, 1)``: each expert's input,
        ``route_in(g, k, e, x)``, the E of them stacked."""
        for x, t in ((u, v), (v, u)):
            if isinstance(x, Copies) and isinstance(t, GateTable) and t.layout == "column" \
                    and t.fill == 0 and x.count == t.gates.dim:
                items = []
                for e in range(x.count):
                    at = ExpertNode(node, e)
                    name = self.emit_vector(
                        at.name, f"route_in({t.gates.name}, {t.k}, {e}, {x.x.name})")
                    items.append(Vec(name, x.x.tags, x.x.dim))
                return Experts(items, t.gates, t.k, order="stacked", node=node.name)
        return None

    # -- the experts -------------------------------------------------------------------------
    def _gated_bmm(self, node, a, b):
        """``bmm(x, W)``, x the experts' values [E, tokens, in] and W a 3-D param
        [E, in, out]: expert e's ``x_e @ W[e]``."""
        if grid_experts(a) and a.order == "grid" and a.weights is None and not a.column \
                and isinstance(b, PRef) and len(b.shape) == 3:
            # x @ W[e]: W[e] as a linear layer's weight transposed, unless the param is stored
            # [E, out, in] and transposed for the product
            return self._experts(node, a, b, not b.t, a.gates, a.k, 0)
        return None

    def _gated_sum(self, node, v, dims, keepdim=False, *rest, **kwargs):
        """``y.sum(0)`` of the experts' results [E, tokens, n]: the layer's output, the sum of
        every expert's (each run on its gated input)."""
        if grid_experts(v) and v.order == "grid" and v.weights is None and not v.column \
                and list(dims) in ([0], [-3]) and not keepdim and not rest and not kwargs:
            ys = [self.vec(y, ExpertNode(node, e)) for e, y in enumerate(v.items)]
            name = self.emit_vector(node.name, " + ".join(y.name for y in ys))
            return Vec(name, ys[0].tags, ys[0].dim)
        return None

    def _grid_op(self, node, op: str, args, kwargs):
        """An op on the experts' values in these layouts, expert by expert: one that acts on
        each coordinate alone, or a split of their features (the last axis)."""
        ndim = len(self._shape(node.args[0]))
        if op in _SPLITS:
            dim = kwargs.get("dim", args[2] if len(args) > 2 else (0 if op == "chunk" else -1))
            if dim % ndim != ndim - 1:
                raise refuse(node, f"a {op} of the experts' values over another axis than their "
                             "features", help=HELP)
        elif op not in _POINTWISE or any(not grid_experts(a) and not isinstance(a, (int, float))
                                         for a in args):
            raise refuse(node, f"the op {op} on the experts' values [E, tokens, ...]: the "
                         "tracer follows ops on each coordinate alone between the experts' "
                         "batched matmuls, and a split of their features", help=HELP)
        return self._per_expert(node, op, args, kwargs)
