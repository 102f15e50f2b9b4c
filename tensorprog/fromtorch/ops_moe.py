"""Mixture-of-experts layers in a traced model, traced into the language's ``route``.

A router scores the E experts per token, ``g = softmax(R @ h)`` (or ``sigmoid``), keeps the k
largest with ``torch.topk`` (divided by their sum: ``route_norm``), and the layer's output is
the sum of those k gates times their experts' outputs, each expert an MLP with its own weights.
Hugging Face's families (transformers 5: Mixtral, OLMoE, Qwen2-MoE, Qwen3-MoE, ...) keep the E
experts' matrices stacked in 3-D params [E, out, in] and dispatch the tokens by a sort of the
selected ids: a gather of the tokens in expert order, a grouped matmul of each expert's slice
(``grouped_mm``, or transformers' ``grouped_mm_fallback`` under export) over offsets counted
by ``histc``, the gates multiplied in, the inverse order, and the k results of each token
summed. The walk follows exactly that: each tensor of the dispatch is an abstract value of
routing.py, and the experts' values are E ordinary lazy values, one per expert, computed by the
same op handlers as any layer's (an expert's slice of a 3-D param is a program param of its
own: ``PRef.expert``). The final sum over the k slots writes

    m = route(g, k, y_1, ..., y_E)        (route_norm when the k gates were normalised)

whose exponents the engine derives (docs/theory.md, "Mixture-of-experts layers"): the router a
readout of E outputs, each expert its dense MLP. A selection by other scores than the gates
(DeepSeek-V3's gates plus a bias, in groups, whose ids gather the gates) is ops_select.py's.
Anything else done with the routing (a one-hot of the ids, a loop over the hit experts,
data-dependent) is refused at its op, with the way to write the layer.
"""

from __future__ import annotations

import dataclasses
import operator

from .ops_gatedin import GATED, GatedInputOps, grid_experts
from .ops_routerows import ROWS, RouteRowOps
from .ops_select import feeds_selection
from .ops_zeroexperts import ZERO, ZeroExpertOps
from .routing import (
    ROUTED,
    Choice,
    Dispatch,
    Dispatched,
    ExpertBias,
    ExpertNode,
    Experts,
    Selected,
    StackedRows,
    TopIdx,
    TopSum,
    TopW,
    experts_of,
)
from .values import Affine, Columns, Conc, Parts, Pointwise, PRef, Vec
from .where import CHECK_OPS, op_name, refuse, user_span

_HELP = ("the tracer follows a top-k router whose experts' matrices, stacked in 3-D params, "
         "are applied by a grouped matmul over the tokens sorted by expert or a batched matmul "
         "of W[ids] (transformers' experts_implementation grouped_mm, the default, or "
         "batched_mm; docs/torch.md); else write the layer as a Tensor Program: "
         "g = softmax(R @ h), then route_norm(g, k, y1, ..., yE) over expert MLPs "
         "(examples/moe.tp)")
_IDENTITY = {"to", "_to_copy", "contiguous", "clone", "alias", "type_as", "detach_copy"}
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten"}
_GROUPED = {"grouped_mm_fallback", "_grouped_mm", "grouped_mm"}
# the values of a mixture of experts' routing, those of a layer that gates its experts' inputs
# (ops_gatedin.py) among them
_MOE = ROUTED + GATED + ZERO + ROWS
# a constant the forward adds to the sum of the k gates before dividing by it, against a
# division by 0 (DeepSeek's 1e-20): larger, it changes the weights, which route_norm would not say
_TINY = 1e-6


def _flat(args, kwargs) -> list:
    out = []
    for a in list(args) + list(kwargs.values()):
        out += _flat(a, {}) if isinstance(a, (list, tuple)) else [a]
    return out


def _feeds_topk(node) -> bool:
    """Whether a top-k selection reads the node's value (through casts): a router's gates."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        op = op_name(user)
        if op == "topk":
            return True
        if op in _IDENTITY | CHECK_OPS:
            todo += list(user.users)
    return False


def _bare(x) -> bool:
    """Experts' values before their gates: what an op applies to expert by expert."""
    return isinstance(x, Experts) and x.weights is None and not x.column \
        and x.order in ("sorted", "token", "stacked", "grid")


def _stacked_rows(node, args) -> StackedRows | None:
    """``w.view(E, out, in)`` of a whole 2-D param [E·out, in] (E > 1) whose every reader
    indexes it by a tensor (``W[ids]``, DBRX's experts): E experts' matrices, each a row block
    of the param; None for any other view."""
    w = args[0] if args else None
    if not isinstance(w, PRef) or len(w.shape) != 2 or w.t or w.rows or w.offset \
            or w.expert is not None or w.cols is not None or w.period or w.std is not None:
        return None
    size = tuple(node.meta["val"].shape)
    if len(size) != 3 or size[0] < 2 or size[0] * size[1] != w.shape[0] or size[2] != w.shape[1]:
        return None
    if not node.users or any(op_name(u) != "index" or u.args[0] is not node for u in node.users):
        return None
    return StackedRows(w, size[0], node=node.name)


def _expert_rows(w: StackedRows, e: int, linear_t: bool, node) -> PRef:
    """Expert e's matrix of a 2-D param viewed as [E, out, in]: its rows e·out..(e+1)·out,
    applied as a linear layer's weight (``W[e] @ x``), or as ``x @ W[e]`` (``linear_t``): then
    those rows are the block of the transposed param's input columns."""
    _, out, cols = w.shape
    lo, hi = e * out, (e + 1) * out
    if not linear_t:
        return PRef(w.ref.target, tuple(w.ref.shape), False, (lo, hi), part=e)
    return PRef(w.ref.target, tuple(w.ref.shape), True,
                cols=Columns(e, lo, hi, w.ref.shape[0], user_span(node)))


def _token_repeat(node, args, kwargs) -> bool:
    """Whether the node repeats each token of a per-token vector a whole number of times."""
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    return (len(args) > 1 and isinstance(args[1], int) and dim == 0
            and len(node.meta["val"].shape) == 2 and isinstance(args[0], (Vec, Affine, Pointwise)))


class MoEOps(GatedInputOps, ZeroExpertOps, RouteRowOps):
    """Mixture-of-experts routing: the router's top-k, the dispatch to the experts, and the
    weighted sum, written as ``route``/``route_norm`` (see the module's docstring); a layer
    whose gates multiply its experts' inputs, as ``route_in`` (GatedInputOps); identity experts
    (ZeroExpertOps); experts that norm each route's row (RouteRowOps)."""

    def call(self, node):
        if node.target is not operator.getitem:
            args, kwargs = self.args(node)
            op = op_name(node)
            flat = _flat(args, kwargs)
            if any(isinstance(x, _MOE) for x in flat):
                return self._routed(node, op, args, kwargs)
            if op == "topk":
                return self._topk(node, *args, **kwargs)
            if op in ("full_like", "zeros_like") and node.args and _feeds_topk(node.args[0]):
                # a table of the router's scores' shape, to scatter the top-k into (Llama 4's)
                return self.router_table(node, args[0], args[1] if op == "full_like" else 0)
            if op == "new_full" and node.args and _feeds_topk(node.args[0]):
                raise refuse(node, "a table of a router's gates made by new_full: the tracer "
                             "follows full_like(logits, -inf) or zeros_like(gates)", help=_HELP)
            if op in _VIEWS and (stacked := _stacked_rows(node, args)) is not None:
                return stacked  # w.view(E, out, in) of a 2-D param, indexed by the ids
            if op == "repeat" and (made := self.expert_copies(node, args[0], args[1:])):
                return made  # x.repeat(E, 1): each expert's copy of the tokens (Llama 4's)
            if op == "repeat_interleave" and _token_repeat(node, args, kwargs):
                # each token once per slot: the batched dispatch (x.repeat_interleave(k, 0))
                return Dispatched(self.vec(args[0], node), None, args[1], order="token")
            if op == "mul" and (gated := self._one_gate(node, *args)) is not None:
                return gated
            if op == "add" and len(args) == 2 and (chosen := self.choice(node, *args)) is not None:
                return chosen  # selection scores g + b (ops_select.py)
            if op in ("squeeze", "view", "reshape") and \
                    (bias := self.selection_bias(node, args[0])) is not None:
                return bias
            if op in ("softmax", "_softmax") and (_feeds_topk(node) or feeds_selection(node)):
                return self._gates(node, args[0], "softmax", args[1] if len(args) > 1 else -1)
        return super().call(node)

    def vec(self, v, node):
        if isinstance(v, GATED) or grid_experts(v):
            raise refuse(node, "a dense table of a router's gates, the tokens' copies for its "
                         "experts, or the experts' values, used other than as each expert's "
                         "gated input, its MLP and their sum", help=self.gated_help)
        if isinstance(v, ROUTED + ZERO + ROWS):
            if user_span(node) is None and v.node in self.by_name:  # at the model's output
                node = self.by_name[v.node]
            raise refuse(node, "a mixture-of-experts router's selection (its top-k gates or ids, "
                         "its selection scores, or the tokens dispatched to its experts) used "
                         "other than to weight the experts' outputs and sum them", help=_HELP)
        return super().vec(v, node)

    def run(self):
        out = super().run()
        # expert e's values (node#e) are of the node that computes all experts' (node), kind
        # "expert": no tensor of the model holds them, since the model computes expert e only
        # for the tokens routed to it, in an order that changes with the routing, so the check
        # does not read them (fromtorch/check.py); nor gates the model holds only masked or
        # selected (node#gates: Llama 4's table, Kolibri's k sigmoids, GraniteMoE's softmax of
        # the k largest logits), nor a route before the routed scaling factor its node holds
        # (node#unscaled); it reads the layer's output and the gates the model holds whole
        out.vectors = {v: (n.partition("#")[0], "expert" if "#" in n else kind)
                       for v, (n, kind) in out.vectors.items()}
        return out

    # -- the router ----------------------------------------------------------------------------
    def _gates(self, node, x, fn: str, dim, selected: bool = False) -> Vec:
        """``g = softmax(r)`` of a router's logits, a vector with one entry per expert
        (``selected``: the model's node holds only the k selected entries, so the gates are
        no tensor of the model's: named node#gates, which the check does not read)."""
        if isinstance(x, (Vec, Affine, Pointwise)):
            x = self.vec(x, node)
            if dim in (-1, len(x.tags) - 1) and x.tags[-1] == "F":
                name = self.emit_vector(f"{node.name}#gates" if selected else node.name,
                                        f"{fn}({x.name})")
                return Vec(name, x.tags, x.dim)
        raise refuse(node, f"a {fn} of a router's scores that is not over the last axis of a "
                     "per-token vector", help=_HELP)

    def _one_gate(self, node, u, v):
        """``g * y`` with g of one feature per token (Qwen2-MoE's shared expert times
        ``sigmoid(W_g @ x)``, W_g : [1, n]): ``route(g, 1, y)``, a route over one gate, which is
        that product exactly (the top-1 of one gate is it) and whose rule derives W_g as the
        readout it is; None for any other product."""
        shapes = [tuple(a.meta["val"].shape) if hasattr(a, "meta") else () for a in node.args[:2]]
        kinds = (Vec, Affine, Pointwise)
        for (g, sg), (y, sy) in (((u, shapes[0]), (v, shapes[1])),
                                 ((v, shapes[1]), (u, shapes[0]))):
            if not (isinstance(g, kinds) and isinstance(y, kinds) and len(sg) == len(sy) > 1
                    and sg[-1] == 1 < sy[-1] and sg[:-1] == sy[:-1]):
                continue
            g, y = self.vec(g, node), self.vec(y, node)
            if g.tags[-1] == "F" and y.tags[-1] == "F" and g.dim == 1:
                name = self.emit_vector(node.name, f"route({g.name}, 1, {y.name})")
                return Vec(name, y.tags, y.dim)
        return None

    def _topk(self, node, g, k, dim=-1, largest=True, sorted=True):
        if not isinstance(g, (Vec, Affine, Pointwise)) or not largest:
            raise refuse(node, "a top-k selection of anything but the k largest gates of a "
                         "router (a per-token vector, one entry per expert)", help=_HELP)
        g = self.vec(g, node)
        if dim not in (-1, len(g.tags) - 1) or g.tags[-1] != "F":
            raise refuse(node, "a top-k selection over an axis other than the gates' experts",
                         help=_HELP)
        return Parts([TopW(g, int(k)), TopIdx(g, int(k))])

    def _producer(self, name: str) -> str:
        """The function the statement defining ``name`` applies (softmax, sigmoid), or ''."""
        for st in reversed(self.out.stmts):
            lhs, _, rhs = st.partition(" = ")
            if lhs == name:
                return rhs.partition("(")[0] if "(" in rhs else ""
        return ""

    # -- the dispatch ----------------------------------------------------------------------------
    def _routed(self, node, op: str, args, kwargs):
        if op in CHECK_OPS:
            return None
        if op in _IDENTITY:
            return args[0]
        if any(isinstance(x, GATED) or grid_experts(x) for x in _flat(args, kwargs)):
            return self.gated(node, op, args, kwargs)
        if any(isinstance(x, Choice) for x in args):
            return self.selection(node, op, args, kwargs)
        found = self.zero_experts(node, op, args, kwargs)
        if found is None:
            found = self.route_rows(node, op, args, kwargs)
        if found is not None:
            return found
        method = getattr(self, f"_moe_{op}", None)
        if method is not None:
            found = method(node, *args, **kwargs)
            if found is not None:
                return found
        if any(_bare(x) for x in _flat(args, kwargs)) and op not in _VIEWS | _GROUPED:
            return self._per_expert(node, op, args, kwargs)
        raise refuse(node, f"the op {op} on a mixture-of-experts router's selection (its gates, "
                     "ids or dispatched tokens) in a form the tracer does not follow", help=_HELP)

    def _moe_view(self, node, v, *shape):
        size = tuple(node.meta["val"].shape)
        if isinstance(v, (TopW, TopIdx)) and not v.flat and len(size) == 1:
            return dataclasses.replace(v, flat=True)
        if isinstance(v, TopW) and not v.flat and len(size) == 2 and size[1] == 1:
            return dataclasses.replace(v, flat=True, column=True)  # w.reshape(-1, 1)
        if isinstance(v, Experts) and v.order == "token" and v.weights is not None \
                and len(size) == 3 and size[1] == v.k:
            return dataclasses.replace(v, order="slots", node="")
        return None

    _moe_reshape = _moe_unsafe_view = _moe_view

    def _moe_sum(self, node, v, dims, keepdim=False, *rest):
        ndim = len(self._shape(node.args[0]))
        axes = [d % ndim for d in dims]
        if isinstance(v, TopW) and not v.flat and axes == [ndim - 1] and keepdim:
            return TopSum(v)
        if isinstance(v, Experts) and v.order == "slots" and axes == [1] and v.weights is not None:
            return self._route(node, v)
        return None

    def _moe_linalg_vector_norm(self, node, v, ord=2, dims=None, keepdim=False, *rest, **kw):
        """``w.norm(p=1, dim=-1, keepdim=True)`` of the k largest gates (DBRX's divisor): their
        sum, since gates are positive (route_norm refuses scores that are neither a softmax nor
        a sigmoid) and a positive factor keeps them so; any other order, axis or sign, None."""
        ndim = len(self._shape(node.args[0]))
        axes = [d % ndim for d in ([dims] if isinstance(dims, int) else dims or [])]
        if isinstance(v, TopW) and not v.flat and ord == 1 and axes == [ndim - 1] and keepdim \
                and v.factor > 0 and not kw.get("dtype"):
            return TopSum(v)
        return None

    def _moe_add(self, node, u, v, alpha=1):
        if isinstance(u, TopSum) and isinstance(v, (int, float)) and abs(v) <= _TINY:
            return u
        for x, b in ((u, v), (v, u)):
            # the grouped matmul plus each sorted slot's expert's bias: expert e's W[e] x + b[e]
            if isinstance(x, Experts) and isinstance(b, ExpertBias) and alpha == 1 and \
                    x.order == "sorted" and x.weights is None and not x.column and \
                    x.gates.name == b.gates.name and all(
                        isinstance(a, Affine) and a.b is None and a.w.expert == e
                        and a.tags[-1] == "F" and a.w.shape[0 if not a.w.t else 1] == b.b.shape[1]
                        for e, a in enumerate(x.items)):
                items = [dataclasses.replace(a, b=PRef(b.b.target, tuple(b.b.shape[1:]), False,
                                                       expert=e))
                         for e, a in enumerate(x.items)]
                return Experts(items, x.gates, x.k, order=x.order, node=x.node)
        return None

    def _moe_add_(self, node, u, v, alpha=1):
        # out.add_(bias) on the grouped matmul's own output (transformers' _grouped_linear):
        # nothing else reads it, so the out-of-place sum
        return self._moe_add(node, u, v, alpha) if isinstance(u, Experts) else None

    def _moe_div(self, node, u, v):
        if isinstance(u, TopW) and isinstance(v, TopSum) and v.w.gates.name == u.gates.name \
                and not u.norm and v.w.factor == u.factor and not u.flat:
            return dataclasses.replace(u, norm=True)
        if isinstance(u, TopW) and isinstance(v, (int, float)) and v != 0:
            return dataclasses.replace(u, factor=u.factor / v)
        return None

    def _moe_div_(self, node, u, v):
        # w /= w.sum(-1, keepdim=True): exact as the out-of-place division when every other read
        # of w comes before it (the sum), as in Hugging Face's routers
        target = node.args[0]
        order = {n: i for i, n in enumerate(node.graph.nodes)}
        if any(order[user] > order[node] for user in target.users if user is not node):
            return None
        return self._moe_div(node, u, v)

    def _moe_mul(self, node, u, v):
        for a, b in ((u, v), (v, u)):
            if isinstance(a, TopW) and isinstance(b, (int, float)):
                return dataclasses.replace(a, factor=a.factor * b)
            if _bare(a) and isinstance(b, TopW) and b.flat and b.column \
                    and b.sorted == (a.order == "sorted") and b.selection == a.gates.name:
                return dataclasses.replace(a, weights=b, node="")
        return None

    def _moe_softmax(self, node, v, dim=-1, *rest):
        # softmax of the k largest logits = the k largest of softmax(logits) over their sum
        # (GraniteMoE, GPT-OSS select on the logits, then normalise the k)
        if isinstance(v, TopW) and not v.flat and not v.norm and v.factor == 1 \
                and dim in (-1, len(v.gates.tags) - 1) and not self._producer(v.gates.name):
            return TopW(self._gates(node, v.gates, "softmax", -1, selected=True), v.k,
                        norm=True, picked=v.gates.name)
        return None

    _moe__softmax = _moe_softmax

    def _moe_unsqueeze(self, node, v, dim):
        if isinstance(v, TopW) and v.flat and dim in (-1, 1):
            return dataclasses.replace(v, column=True)
        if isinstance(v, (Dispatched, Experts)) and not v.column and dim in (-1, 1, 2) \
                and getattr(v, "weights", None) is None:
            return dataclasses.replace(v, column=1 if dim == 1 else -1, node="")
        return None

    def _moe_squeeze(self, node, v, dim=None):
        if isinstance(v, Experts) and v.column and dim in (v.column, 2 if v.column < 0 else 1):
            return dataclasses.replace(v, column=0, node="")
        return None

    def _moe_bmm(self, node, a, b):
        # W[ids] @ x[:, :, None] (x @ W.T per slot) or x[:, None] @ W[ids] (W stored [in, out])
        if isinstance(a, Selected) and isinstance(b, (Dispatched, Experts)) and b.column == -1:
            return self._experts(node, b, a.w, False, a.gates, a.k, -1, a.count)
        if isinstance(b, Selected) and isinstance(a, (Dispatched, Experts)) and a.column == 1:
            return self._experts(node, a, b.w, True, b.gates, b.k, 1, b.count)
        return None

    def _moe_sort(self, node, v, dim=-1, descending=False, *rest):
        if isinstance(v, TopIdx) and v.flat and not descending:
            return Parts([Dispatch("ids", v.gates, v.k, count=v.count),
                          Dispatch("perm", v.gates, v.k, count=v.count)])
        return None

    def _moe_floor_divide(self, node, v, k):
        if isinstance(v, Dispatch) and v.what == "perm" and k == v.k:
            return Dispatch("token", v.gates, v.k, count=v.count)
        return None

    def _moe_histc(self, node, v, bins=100, lo=0, hi=0):
        if isinstance(v, Dispatch) and v.what == "ids" and (lo, hi) == (0, bins - 1) \
                and bins == experts_of(v):
            return Dispatch("counts", v.gates, v.k, count=v.count)
        return None

    def _moe_cumsum(self, node, v, dim, *rest, **kw):
        if isinstance(v, Dispatch) and v.what == "counts":
            return Dispatch("offsets", v.gates, v.k, count=v.count)
        return None

    def _moe_empty_like(self, node, v, *rest, **kw):
        if isinstance(v, Dispatch) and v.what == "perm":
            return Dispatch("buffer", v.gates, v.k, count=v.count)
        return None

    def _moe_index_put_(self, node, v, indices, values, accumulate=False):
        # inv[perm] = arange(S): the order that undoes the sort
        ok = isinstance(v, Dispatch) and v.what == "buffer" and len(indices) == 1
        perm = indices[0] if ok else None
        if ok and isinstance(perm, Dispatch) and perm.what == "perm" and not accumulate \
                and isinstance(values, Conc):
            import torch

            if torch.equal(values.value, torch.arange(values.value.numel())):
                # the order that undoes perm's sort: perm's router's (the buffer is only room)
                return Dispatch("inverse", perm.gates, perm.k, count=perm.count)
        return None

    _moe_index_put = _moe_index_put_

    def _moe_index(self, node, v, indices):
        if len(indices) != 1:
            return None
        at = indices[0]
        if isinstance(at, TopIdx) and at.flat and isinstance(v, StackedRows) \
                and v.experts == experts_of(at):
            return Selected(v, at.gates, at.k, count=at.count)  # rows of a 2-D param
        if isinstance(at, TopIdx) and at.flat and isinstance(v, PRef) and len(v.shape) == 3 \
                and v.expert is None and not v.rows and v.shape[0] == experts_of(at):
            # W[ids]: each slot's expert's matrix
            return Selected(v, at.gates, at.k, count=at.count)
        if not isinstance(at, Dispatch):
            return None
        if at.what == "ids" and isinstance(v, PRef) and len(v.shape) == 2 and v.expert is None \
                and not v.rows and not v.t and not v.offset and v.shape[0] == experts_of(at):
            return ExpertBias(v, at.gates, at.k)  # b[ids sorted]: each slot's expert's bias
        if at.what == "token" and isinstance(v, (Vec, Affine, Pointwise)):
            x = self.vec(v, node)
            if x.tags[-1] == "F":
                return Dispatched(x, at.gates, at.k)
        if at.what == "perm" and isinstance(v, TopW) and v.flat and not v.sorted \
                and v.selection == at.gates.name:
            return dataclasses.replace(v, sorted=True)
        if at.what == "inverse" and isinstance(v, Experts) and v.weights is not None \
                and v.order == "sorted" and at.gates.name == v.gates.name:
            return dataclasses.replace(v, order="token", node="")
        return None

    def _moe_grouped_mm_fallback(self, node, *args, **kwargs):
        return self._grouped(node, *args, **kwargs)

    _moe__grouped_mm = _moe_grouped_mm = _moe_grouped_mm_fallback

    # -- the experts ---------------------------------------------------------------------------
    def _grouped(self, node, x, w, offs=None, *rest, **kwargs):
        """``grouped_mm(x, W.transpose(-2, -1), offs)``: each expert's slice of a 3-D param
        applied to the tokens sorted to it."""
        offs = kwargs.get("offs", offs)
        ok = isinstance(offs, Dispatch) and offs.what == "offsets" and isinstance(w, PRef)
        if not ok or not isinstance(x, (Dispatched, Experts)) or x.order != "sorted" \
                or x.column or x.gates.name != offs.gates.name:
            raise refuse(node, "a grouped matmul that is not each expert's slice of a 3-D "
                         "param applied to the tokens the router sorted to it", help=_HELP)
        # grouped_mm(x, W) is x @ W[e]: as a linear layer's weight, W[e] transposed
        return self._experts(node, x, w, not w.t, offs.gates, offs.k, 0, offs.count)

    def _experts(self, node, x, w, linear_t: bool, gates, k: int, column: int,
                 count: int = 0) -> Experts:
        """Expert e's ``W[e] @ x`` for every token, as the program writes it (which tokens use
        it is the route's selection): the slice [e] of 3-D param ``w`` is a program param of
        its own (``linear_t``: applied as a linear layer's weight transposed)."""
        stacked = isinstance(w, StackedRows)
        if not stacked and (not isinstance(w, PRef) or len(w.shape) != 3 or w.rows
                            or w.expert is not None):
            raise refuse(node, "a matmul of the dispatched tokens with anything but a 3-D param "
                         "[experts, out, in] (or [experts, in, out])", help=_HELP)
        if w.shape[0] != (count or gates.dim):
            raise refuse(node, f"{w.shape[0]} experts' weights for a router of "
                         f"{count or gates.dim}",
                         help=_HELP)
        if x.gates is not None and x.gates.name != gates.name:
            raise refuse(node, "the tokens of one router with the experts of another",
                         help=_HELP)
        order = x.order
        items = []
        for e in range(w.shape[0]):
            src = x.x if isinstance(x, Dispatched) else self.vec(x.items[e], ExpertNode(node, e))
            ref = _expert_rows(w, e, linear_t, node) if stacked else \
                PRef(w.target, tuple(w.shape[1:]), linear_t, expert=e)
            items.append(Affine(src, ref, None, node.name, src.tags[:-1] + ("F",), node.name))
        return Experts(items, gates, k, order=order, column=column, node=node.name)

    def _per_expert(self, node, op: str, args, kwargs):
        """An op on the experts' values (their activation, the gated product, a split of a
        fused gate/up projection): the op's own handler, once per expert."""
        method = getattr(self, f"op_{op}", None)
        if method is None or op.endswith("_"):
            raise refuse(node, f"the op {op} on the experts' values", help=_HELP)
        experts = [x for x in _flat(args, kwargs) if isinstance(x, ROUTED)]
        if any(not _bare(x) or x.order != experts[0].order
               or x.gates.name != experts[0].gates.name for x in experts):
            raise refuse(node, f"the op {op} on the experts' values and another part of the "
                         "routing", help=_HELP)

        def pick(a, e):
            if isinstance(a, Experts):
                return a.items[e]
            if isinstance(a, (list, tuple)):
                return type(a)(pick(x, e) for x in a)
            return a

        outs = []
        for e in range(len(experts[0].items)):
            at = ExpertNode(node, e)
            self.by_name[at.name] = at
            outs.append(method(at, *pick(list(args), e), **{k: pick(v, e)
                                                             for k, v in kwargs.items()}))
        first = experts[0]
        if all(isinstance(o, Parts) for o in outs):
            return Parts([Experts([o.items[i] for o in outs], first.gates, first.k,
                                  order=first.order) for i in range(len(outs[0].items))])
        return Experts(outs, first.gates, first.k, order=first.order, node=node.name)

    def _route(self, node, v: Experts):
        """The k weighted results of each token summed: ``m = route(g, k, y_1, ..., y_E)``
        (the routed experts' part of a route with identity experts: RoutedPart)."""
        w = v.weights
        ys = [self.vec(y, ExpertNode(node, e)) for e, y in enumerate(v.items)]
        if w.part:
            return self.routed_part(node, w, ys)
        if len(ys) != w.gates.dim:
            raise refuse(node, f"{len(ys)} experts for a router of {w.gates.dim}", help=_HELP)
        return self.emit_route(node, w, [y.name for y in ys], ys[0])

    def emit_route(self, node, w: TopW, experts: list[str], like: Vec):
        """``route(g, k, *experts)`` of the k gates ``w`` (``route_norm`` normalised, times
        their factor), a vector like ``like``."""
        if w.norm and self._producer(w.gates.name) not in ("softmax", "sigmoid"):
            raise refuse(node, "the k largest of a router's scores divided by their sum, "
                         "scores that are neither a softmax nor a sigmoid (they may cancel)",
                         help=_HELP)
        if w.norm and w.k == 1:
            raise refuse(node, "one expert per token whose gate is divided by the sum of the "
                         "gates taken: that gate is 1 for every token, so the router gets no "
                         "gradient (it only selects, and under Adam its rounding noise takes "
                         "full steps), which a route that derives its gates trained cannot say",
                         help="take two or more experts per token, or keep the one gate as "
                         "its score (Switch Transformer's top-1 takes its softmax probability)")
        fn = "route_norm" if w.norm else "route"
        # selected by other scores (ops_select.py): the same exponents, said on the line
        why = f"  # selected by {w.gates.name} + a per-expert bias, in its best groups" \
            if w.chosen else ""
        # under a routed scaling factor (in the k gates), the model's node holds the route
        # times it: the route alone is no tensor of the model's (node#unscaled, not read)
        name = self.emit_vector(
            node.name if w.factor == 1 else f"{node.name}#unscaled",
            f"{fn}({w.gates.name}, {w.k}, {', '.join(experts)}){why}")
        out = Vec(name, like.tags, like.dim)
        if w.factor != 1:  # a routed scaling factor: a constant on the layer's output
            return Pointwise(out, lambda t, c=w.factor: c * t, node.name)
        return out
