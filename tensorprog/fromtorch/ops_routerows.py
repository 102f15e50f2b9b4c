"""Experts that end in a norm of their own, applied to each route's row (Ergo's experts).

A stock experts layer sums each token's k routes inside its dispatch. Ergo's norms each
route's result before that sum, with a gain of the route's expert: it repeats each token once
per route, hands the experts' dispatch one route per row (the ids as a column [S, 1], weights
of ones), then norms the rows and weights them:

    x = h.repeat_interleave(k, 0);  ids = top_k_index.reshape(-1, 1)
    y = experts(x, ids, x.new_ones(ids.shape))         # each row its route's expert, unweighted
    y = rms_norm(y) * gain[ids.flatten()]               # gain : [E, n], a row per expert
    m = (y.view(T, k, n) * top_k_weights.unsqueeze(-1)).sum(1)

which is a route whose experts each end in their own RMSNorm and gain:

    m = route(g, k, gain_1 * rmsnorm(y_1), ..., gain_E * rmsnorm(y_E))

The dispatch of the rows is the stock one read as a top-1 selection per row (its token of a
sorted row is ``perm // 1``, its sum over the one route of a row ``view(S, 1, n).sum(1)``);
the values here mark what differs, so that each step stays exact. Each expert's gain is its
row of the 2-D param, a program param of its own (derived as a gain is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .routing import Dispatch, Dispatched, ExpertNode, Experts, TopIdx, TopW, experts_of
from .values import Parts, PRef, Vec
from .where import refuse

_VIEWS = {"view", "reshape", "_unsafe_view", "flatten"}
_HELP = (
    "the tracer follows route rows as Ergo's experts make them: x.repeat_interleave(k, 0), "
    "ids.reshape(-1, 1) and weights x.new_ones(ids.shape) handed to transformers' grouped_mm "
    "experts, then each row times gain[ids.flatten()], viewed (tokens, k, n), times the k gates "
    "and summed; else write the layer as a Tensor Program: route(g, k, g_1 * rmsnorm(y_1), ...)"
)


@dataclass
class RouteOnes:
    """The weights of ones that a dispatch of route rows is given (``x.new_ones(ids.shape)``):
    ``flat``: reshaped to one per row, ``sorted``: in the dispatch's order, ``column``: [S, 1]."""

    k: int
    flat: bool = False
    sorted: bool = False
    column: bool = True
    node: str = ""


@dataclass
class ExpertGain:
    """A 2-D param [E, n] indexed by the route rows' ids (``gain[ids]``): each row's expert's
    gain, for the product with the experts' values in the rows' order."""

    w: object  # the PRef of the whole 2-D param
    gates: object
    k: int
    node: str = ""


ROWS = (RouteOnes, ExpertGain)


def _row_ids(a) -> bool:
    """The ids of route rows as a column, or the sorted rows' own index (``perm // 1``)."""
    if isinstance(a, TopIdx):
        return a.column
    return isinstance(a, Dispatch) and a.rows and a.what == "token"


class RouteRowOps:
    """The steps of a dispatch of route rows (see the module's docstring); None for anything
    else, which the stock dispatch then reads or refuses."""

    def route_rows(self, node, op: str, args, kwargs):
        method = getattr(self, f"_rows_{'view' if op in _VIEWS else op}", None)
        found = method(node, *args, **kwargs) if method is not None else None
        # the ids of route rows as a column, or their rows' own index (perm // 1): the stock
        # dispatch would read them as the (tokens, k) ids' (a sort of each one-id row, the
        # unrepeated tokens gathered), so only the steps above take them
        flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else [a])]
        if found is None and any(_row_ids(a) for a in flat):
            raise refuse(
                node,
                f"the op {op} on the ids of route rows (a router's (tokens, k) ids reshaped to "
                "one per row, for the tokens repeated k times) or on their rows' order",
                help=_HELP,
            )
        return found

    def _rows_view(self, node, v, *shape):
        size = tuple(node.meta["val"].shape)
        rows = self._shape(node.args[0])
        # (S, n) viewed (S/m, m, n) only: each (token, route) row kept whole, so that a sum or
        # norm over the last axis stays one row's (a view (S/2, 1, 2n) would pair the rows)
        split = (
            len(rows) == 2
            and len(size) == 3
            and size[2] == rows[1]
            and size[0] * size[1] == rows[0]
        )
        if (
            isinstance(v, TopIdx)
            and not v.flat
            and not v.rows
            and size == (self._shape(node.args[0])[0] * v.k, 1)
        ):
            return dataclasses.replace(v, flat=True, rows=True, column=True)  # (S, 1)
        if isinstance(v, TopIdx) and v.rows and v.column and len(size) == 1:
            return dataclasses.replace(v, column=False)
        if isinstance(v, RouteOnes) and v.column and not v.sorted and len(size) == 1:
            return dataclasses.replace(v, flat=True, column=False)
        if (
            isinstance(v, Experts)
            and v.unit
            and v.order == "token"
            and not v.column
            and split
            and size[1] == 1
        ):
            return dataclasses.replace(v, column=1, node="")  # (S, 1, n): one route a row
        if (
            isinstance(v, Experts)
            and v.order == "token"
            and v.weights is None
            and not v.column
            and split
            and size[1] == v.k
        ):
            return dataclasses.replace(v, order="slots", node="")  # (T, k, n), unweighted
        return None

    def _rows_new_ones(self, node, v, size, *rest, **kwargs):
        # x.new_ones(ids.shape) of the tokens repeated once per route: a weight of 1 per row
        if (
            isinstance(v, Dispatched)
            and v.order == "token"
            and v.gates is None
            and not v.column
            and tuple(size) == (self._shape(node.args[0])[0], 1)
        ):
            return RouteOnes(v.k)
        return None

    def _rows_sort(self, node, v, dim=-1, descending=False, *rest):
        if isinstance(v, TopIdx) and v.rows and not v.column and not descending:
            return Parts(
                [Dispatch(what, v.gates, v.k, count=v.count, rows=True) for what in ("ids", "perm")]
            )
        return None

    def _rows_floor_divide(self, node, v, k):
        # perm // 1: each sorted row's own row (the rows are the routes)
        if isinstance(v, Dispatch) and v.rows and v.what == "perm" and k == 1:
            return Dispatch("token", v.gates, v.k, count=v.count, rows=True)
        return None

    def _rows_clamp_max(self, node, v, hi):
        # ids.clamp_max(E - 1): the ids of E experts are below E, so unchanged
        if isinstance(v, TopIdx) and v.rows and isinstance(hi, int) and hi >= experts_of(v) - 1:
            return v
        return None

    def _rows_index(self, node, v, indices):
        at = indices[0] if len(indices) == 1 else None
        if (
            isinstance(at, Dispatch)
            and at.rows
            and at.what == "perm"
            and isinstance(v, RouteOnes)
            and v.flat
            and not v.sorted
            and v.k == at.k
        ):
            return dataclasses.replace(v, sorted=True)
        if (
            isinstance(at, Dispatch)
            and at.rows
            and at.what == "token"
            and isinstance(v, Dispatched)
            and v.order == "token"
            and v.gates is None
            and not v.column
            and v.k == at.k
        ):
            return Dispatched(v.x, at.gates, at.k)  # the repeated tokens, sorted by expert
        if (
            isinstance(at, Dispatch)
            and at.what == "inverse"
            and isinstance(v, Experts)
            and v.unit
            and v.order == "sorted"
            and at.gates.name == v.gates.name  # undoes the sort of these experts' router
        ):
            return dataclasses.replace(v, order="token", node="")
        if (
            isinstance(at, TopIdx)
            and at.rows
            and at.flat
            and not at.column
            and isinstance(v, PRef)
            and len(v.shape) == 2
            and v.expert is None
            and not v.rows
            and not v.t
            and not v.offset
            and v.shape[0] == experts_of(at)
        ):
            return ExpertGain(v, at.gates, at.k)
        return None

    def _rows_unsqueeze(self, node, v, dim):
        if isinstance(v, RouteOnes) and v.flat and v.sorted and not v.column and dim in (-1, 1):
            return dataclasses.replace(v, column=True)
        if isinstance(v, TopW) and not v.flat and not v.column and dim in (-1, 2):
            return dataclasses.replace(v, column=True)  # (T, k, 1): a gate per route
        return None

    def _rows_sum(self, node, v, dims, keepdim=False, *rest):
        if (
            isinstance(v, Experts)
            and v.unit
            and v.column == 1
            and list(dims) == [1]
            and not keepdim
        ):
            return dataclasses.replace(v, column=0, node="")
        return None

    def _rows_mul(self, node, u, v):
        for a, b in ((u, v), (v, u)):
            if (
                isinstance(a, Experts)
                and isinstance(b, RouteOnes)
                and b.sorted
                and b.column
                and a.order == "sorted"
                and a.weights is None
                and not a.column
                and not a.unit
                and a.k == b.k
            ):
                return dataclasses.replace(a, unit=True, node="")
            if (
                isinstance(a, Experts)
                and isinstance(b, ExpertGain)
                and a.order == "token"
                and a.weights is None
                and not a.column
                and a.gates.name == b.gates.name
            ):
                return self._gained(node, a, b)
            if (
                isinstance(a, Experts)
                and isinstance(b, TopW)
                and a.order == "slots"
                and a.weights is None
                and not b.flat
                and b.column
                and b.selection == a.gates.name
                and b.k == a.k
            ):
                return dataclasses.replace(a, weights=b, node="")
        return None

    def _gained(self, node, y: Experts, gain: ExpertGain) -> Experts:
        """Each expert's value times its own row of the gain: the gain's row e is a program
        param of its own (``PRef.expert``), multiplied as any gain is."""
        w = gain.w
        outs = []
        for e, item in enumerate(y.items):
            at = ExpertNode(node, e)
            self.by_name[at.name] = at
            x = self.vec(item, at)
            g = self.vector_param(PRef(w.target, tuple(w.shape[1:]), False, expert=e), at)
            # g * y is linear in g, as a norm's gain is (a multiplier on it folds into g)
            name = self.emit_vector(at.name, f"{g} * {x.name}", producer=(g, None))
            outs.append(Vec(name, x.tags, x.dim, x.dh))
        return Experts(outs, y.gates, y.k, order=y.order)
