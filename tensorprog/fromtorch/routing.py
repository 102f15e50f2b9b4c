"""The abstract values of a mixture-of-experts layer in a traced graph (ops_moe.py walks them).

A router's ``topk`` over its gates g (one entry per expert) gives the k largest gates and their
experts' ids; the dispatch reorders the tokens by expert (``sort`` of the ids, a gather of the
tokens, ``histc``/``cumsum`` offsets), a grouped matmul applies each expert's slice of a 3-D
param [E, out, in], the gates weight the results and the tokens' k results are summed. Each
value below is one of those tensors, named by what it is to the program: all of them belong to
the one route of ``gates`` (a program vector) and ``k``, and the experts' values are E ordinary
lazy values, one per expert, that the walk computes as it computes any other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .values import Vec


@dataclass
class TopW:
    """The k largest gates of each token (``topk``'s values): ``norm``: divided by their sum,
    ``factor``: times a constant; ``flat``: reshaped to one per (token, slot), ``sorted``:
    reordered by expert, ``column``: with an axis added for the product with the results."""

    gates: Vec
    k: int
    norm: bool = False
    factor: float = 1.0
    flat: bool = False
    sorted: bool = False
    column: bool = False
    node: str = ""
    # the vector the top-k selected on, where the gates are another (the softmax of the k
    # largest logits: the gates are softmax(logits), the ids are the logits')
    picked: str | None = None
    # selected by other scores than the gates (ops_select.py: the gates plus a bias, in groups)
    chosen: bool = False
    # "routed": the identity experts' gates set to 0, "identity": the others' (LongCat-Flash's
    # zero-computation experts, ops_zeroexperts.py), the experts from ``count`` on the identity
    part: str = ""
    count: int = 0

    @property
    def selection(self) -> str:
        return self.picked or self.gates.name


@dataclass
class TopSum:
    """The sum of a token's k largest gates (the divisor that normalises them)."""

    w: TopW
    node: str = ""


@dataclass
class TopIdx:
    """The ids of the experts of a token's k largest gates (``topk``'s indices)."""

    gates: Vec
    k: int
    flat: bool = False
    node: str = ""
    chosen: bool = False  # selected by other scores than the gates (ops_select.py)
    # the ids of the identity experts (those from ``count`` on) replaced by ids below it, to
    # dispatch to the ``count`` experts with matrices only (ops_zeroexperts.py)
    count: int = 0
    # one id per route row, of the tokens repeated k times (Ergo's experts, ops_routerows.py):
    # the experts' dispatch then reads each row as a top-1 selection; ``column``: as [S, 1]
    rows: bool = False
    column: bool = False


@dataclass
class Dispatch:
    """A tensor of the dispatch that carries no values of the program: the ids sorted by
    expert (``ids``), the order that sorts them (``perm``), the token of each sorted slot
    (``token``), the experts' offsets into the sorted slots (``offsets``), and the inverse
    order, a buffer then filled (``buffer``, ``inverse``)."""

    what: str
    gates: Vec
    k: int
    node: str = ""
    count: int = 0  # the experts dispatched to, where fewer than the gates' (TopIdx.count)
    rows: bool = False  # of route rows (TopIdx.rows): the dispatch's k is 1


def experts_of(v) -> int:
    """The number of experts a selection's ids dispatch to."""
    return v.count or v.gates.dim


@dataclass
class Dispatched:
    """The tokens' vector once per selected expert: gathered in the sorted order (``order``
    "sorted"), or each token repeated k times (``repeat_interleave``: "token", its router not
    known until its experts' weights meet it, ``gates`` None); ``column``: an axis added for a
    batched matmul (-1: a column, 1: a row)."""

    x: Vec
    gates: Vec | None
    k: int
    order: str = "sorted"
    column: int = 0
    node: str = ""


@dataclass
class Selected:
    """A 3-D param indexed by the selected experts' ids (``W[ids]``: each slot's expert's
    matrix), for a batched matmul with the slots' tokens."""

    w: object  # the PRef of the whole 3-D param
    gates: Vec
    k: int
    node: str = ""
    count: int = 0  # the experts dispatched to, where fewer than the gates' (TopIdx.count)


@dataclass
class ExpertBias:
    """A 2-D param [experts, out] indexed by the sorted ids (``b[ids_sorted]``: each sorted
    slot's expert's bias, transformers' grouped_mm experts with ``has_bias``), for adding to
    the experts' grouped matmul: expert e's row is its bias."""

    b: object  # the PRef of the whole 2-D param
    gates: Vec
    k: int
    node: str = ""


@dataclass
class Experts:
    """One lazy value per expert (``items[e]``: what expert e computes from every token, as the
    program writes it); ``weights``: the gates that multiply them, once applied; ``order``:
    "sorted" (the dispatch's), "token" (in the tokens' order, k slots each), "slots" (viewed as
    [tokens, k, features])."""

    items: list
    gates: Vec
    k: int
    weights: TopW | None = None
    order: str = "sorted"
    column: int = 0  # an axis added (-1, 1) or left by a batched matmul
    node: str = ""
    # times the unit weights of route rows (RouteOnes): the gates are still to come
    unit: bool = False

    def __post_init__(self):
        # each expert's value is named after the graph node and its expert (node#e3): the walk
        # caches a lazy value by its node, and the E values of one node are E program values
        if self.node:
            self.items = [
                dataclasses.replace(v, node=f"{self.node}#e{e}") if hasattr(v, "node") else v
                for e, v in enumerate(self.items)
            ]


@dataclass
class Choice:
    """A router's selection scores other than its gates (ops_select.py): the gates plus a
    per-expert constant, masked to the best groups (``scores``), or a value computed from them
    for the selection only (the groups' scores and mask, a top-k's values)."""

    gates: Vec
    scores: bool = True
    node: str = ""


@dataclass
class StackedRows:
    """A 2-D param [E·out, in] viewed as E experts' matrices [E, out, in] (DBRX's
    ``w1.view(-1, ffn, n)``): expert e's matrix is rows e·out..(e+1)·out of the param, a row
    block of its own in the program (or, applied as ``x @ W[e]``, a block of its input
    columns). Read only as ``W[ids]`` of a router's ids; anything else is refused."""

    ref: object  # the PRef of the whole 2-D param
    experts: int
    node: str = ""

    @property
    def shape(self) -> tuple:
        rows, cols = self.ref.shape
        return (self.experts, rows // self.experts, cols)


ROUTED = (TopW, TopSum, TopIdx, Dispatch, Dispatched, Selected, ExpertBias, Experts,
          Choice, StackedRows)


@dataclass
class ExpertNode:
    """A graph node as seen by expert e: the node, named ``node#e``, so that the op handlers
    write expert e's statements under names of their own."""

    node: object
    expert: int
    name: str = field(init=False)

    def __post_init__(self):
        self.name = f"{self.node.name}#e{self.expert}"

    def __getattr__(self, attr):
        return getattr(self.node, attr)
