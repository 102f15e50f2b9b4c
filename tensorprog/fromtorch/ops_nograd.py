"""A ``torch.no_grad`` region whose outputs are the ids of a top-k over a whole axis.

No gradient flows through integer ids, so a region under ``torch.no_grad`` that only computes
them takes nothing from the program that the model's gradient would give it: its params (those
nothing else reads) get no gradient either way. DeepSeek-V3.2's and GLM-MoE-DSA's indexer scores
every key and returns the ids of its ``index_topk`` best, which the attention turns into a mask
of the keys not selected (``ones.scatter(-1, ids, False)``). Where the top-k takes every entry
of its axis (k = the axis' size: a sequence no longer than ``index_topk``), its ids are, row by
row, a permutation of 0..size-1, in an order the program cannot know; a scatter along that axis
then sets every entry, whatever the order, so that mask is a constant: the walk follows it.
Any other use of the ids (a gather, which reads their order; a top-k of fewer entries, whose
mask depends on the scores) stays refused. A region that returns integers alone and in which a
router's gates feed a top-k (LongCat-Flash's ``get_topk_indices``: the ids of the k best gates
plus a per-expert bias) is walked in place, its ops those of the router's selection
(ops_select.py): its ids carry no gradient with no_grad or without. Any other region under
``no_grad`` stays refused.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from .ops_select import SELECTION_OPS, feeds_selection
from .values import Conc, Parts
from .where import CHECK_OPS, op_name, refuse

_UNSET = object()
# the ops of a selection's region walked in place: its scores' views, the per-expert bias
# added, the top-k and its ids (ops_select.py's), and the groups' mask
_REGION_OPS = SELECTION_OPS | {"add", "masked_fill", "getitem"}

#: ops that pass the ids on as they are: casts and copies
_CASTS = {"to", "_to_copy", "clone", "contiguous", "alias", "long", "int"}


@dataclass
class AllIds:
    """Ids of shape ``shape`` whose every row along ``dim`` is a permutation of
    0..shape[dim]-1 (a top-k of all the entries of that axis), order unknown."""

    shape: tuple
    dim: int


@dataclass
class IdsTuple:
    """The outputs of a no_grad region, each an :class:`AllIds`."""

    items: tuple


def _full_topk(out) -> AllIds | None:
    """The node ``out`` of a region's graph as the ids of a top-k over a whole axis (through
    casts), or None."""
    while getattr(out, "op", "") == "call_function" and op_name(out) in _CASTS:
        out = out.args[0]
    if getattr(out, "target", None) is not operator.getitem or out.args[1] != 1:
        return None
    top = out.args[0]
    if op_name(top) != "topk":
        return None
    shape = tuple(top.args[0].meta["val"].shape)
    k = top.args[1]
    dim = top.args[2] if len(top.args) > 2 else top.kwargs.get("dim", -1)
    largest = top.args[3] if len(top.args) > 3 else top.kwargs.get("largest", True)
    if not (isinstance(k, int) and isinstance(dim, int) and shape) or not largest:
        return None
    dim %= len(shape)
    return AllIds(shape, dim) if k == shape[dim] else None


class NoGradOps:
    """A no_grad region of top-k ids over a whole axis, and the mask scattered from them."""

    def call(self, node):
        if node.op != "call_function":
            return super().call(node)
        op = op_name(node)
        if op == "wrap_with_set_grad_enabled" and node.args and node.args[0] is False:
            found = self._ids_region(node)
            if found is not None:
                return found
            if self._selects(node):
                return self._inline(node)
            return super().call(node)  # refused there, as any other no_grad region
        args, _ = self.args(node)
        if not any(isinstance(a, (AllIds, IdsTuple)) for a in args):
            return super().call(node)
        return self._ids_op(node, op, args)

    def _ids_region(self, node) -> IdsTuple | None:
        vals = node.meta.get("val")
        vals = vals if isinstance(vals, (tuple, list)) else (vals,)
        if not vals or any(v is None or v.is_floating_point() for v in vals):
            return None
        sub = getattr(self.ep.graph_module, node.args[1].target, None)
        if sub is None:
            return None
        out = next(n for n in sub.graph.nodes if n.op == "output").args[0]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        items = tuple(_full_topk(o) for o in outs)
        return IdsTuple(items) if items and all(items) else None

    def _selects(self, node) -> bool:
        """Whether the region returns integers alone and a router's gates feed a top-k in it
        (LongCat-Flash's ``get_topk_indices``: the ids of the k best of the gates plus a
        per-expert bias): ids carry no gradient, under no_grad or not."""
        vals = node.meta.get("val")
        vals = vals if isinstance(vals, (tuple, list)) else (vals,)
        if not vals or any(v is None or v.is_floating_point() for v in vals):
            return False
        sub = getattr(self.ep.graph_module, node.args[1].target, None)
        if sub is None or any(n.op == "call_function" and op_name(n) not in _REGION_OPS
                              for n in sub.graph.nodes):
            return False
        return any(feeds_selection(a, 64) for a in node.args[2:] if hasattr(a, "users"))

    def _inline(self, node):
        """The region's ops walked in place, its placeholders the region's arguments; the
        names its nodes share with the outer graph's are restored after."""
        sub = getattr(self.ep.graph_module, node.args[1].target)
        args, _ = self.args(node)
        saved: dict = {}

        def bind(name, value):
            saved.setdefault(name, self.env.get(name, _UNSET))
            self.env[name] = value

        places = [n for n in sub.graph.nodes if n.op == "placeholder"]
        for place, value in zip(places, args[2:], strict=True):
            bind(place.name, value)
        # its nodes' names may be the outer graph's: a program vector made in it would be
        # measured at the outer node of its name, so a region that makes one is refused
        made = (len(self.out.stmts), len(self._made))
        try:
            for n in sub.graph.nodes:
                if n.op == "call_function":
                    bind(n.name, self.call(n))
                elif n.op == "output":
                    outs, _ = self.args(n)
                    out = outs[0]
        finally:
            for name, value in saved.items():
                if value is _UNSET:
                    self.env.pop(name, None)
                else:
                    self.env[name] = value
        if (len(self.out.stmts), len(self._made)) != made:
            raise refuse(node, "a torch.no_grad region that computes program values on the way "
                         "to a router's selection: the tracer walks one that computes the "
                         "selection's ids from the gates alone", help="compute the values "
                         "the selection reads outside torch.no_grad")
        return Parts(list(out)) if isinstance(out, (tuple, list)) else out

    def _ids_op(self, node, op: str, args):
        if op in CHECK_OPS:
            return None
        ids = next(a for a in args if isinstance(a, (AllIds, IdsTuple)))
        if node.target is operator.getitem and isinstance(ids, IdsTuple):
            return ids.items[args[1]]
        if isinstance(ids, AllIds) and op in _CASTS and args[0] is ids:
            return ids
        if isinstance(ids, AllIds) and op == "new_ones" and args[0] is ids:
            import torch

            dtype = node.kwargs.get("dtype") or node.meta["val"].dtype
            return Conc(torch.ones(tuple(node.meta["val"].shape), dtype=dtype))
        if op in ("scatter", "scatter_") and len(args) == 4 and args[2] is ids \
                and isinstance(args[0], Conc) and isinstance(args[1], int) \
                and isinstance(args[3], (int, float, bool)):
            base = args[0].value
            dim = args[1] % base.dim()
            if tuple(base.shape) == ids.shape and dim == ids.dim:
                # every entry of each row along dim is set, whatever the ids' order
                return Conc(base.clone().fill_(args[3]))
        raise refuse(node, f"the op {op} on the ids of a top-k over a whole axis computed "
                     "under torch.no_grad (DeepSeek-V3.2's indexer): their order is unknown "
                     "to the program, so only a scatter of one value into every entry of that "
                     "axis (its mask of the keys not selected) is followed",
                     help="use the ids only to build the mask, or trace the model without the "
                     "no_grad part")
