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
mask depends on the scores) stays refused. Beside its ids, such a region may hand back an input
that torch returns as itself (Dots.llm3's ``h.to(w.dtype)`` at h's own dtype, which export
routes h's later reads through): that input, gradient and all; a copy (``copy=True``, another
memory format, ``alias``), made under no_grad, gives its input no gradient and is refused.
A region that returns integers alone and in which a
router's gates feed a top-k (LongCat-Flash's ``get_topk_indices``: the ids of the k best gates
plus a per-expert bias) is walked in place, its ops those of the router's selection
(ops_select.py): its ids carry no gradient with no_grad or without. A region that only
multiplies or divides its inputs in place by 1 (RWKV's rescaling of its weights for inference,
with fewer blocks than its rescale_every) returns them as they were. Any other region that
returns ids or masks alone is refused for what it selects (a mask by a comparison of values
the model computes, PhiMoE's sparsemixer's, is no route's top-k), and any other region under
``no_grad`` as one that carries a value on with no gradient.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from .ops_select import SELECTION_OPS, feeds_selection
from .values import Conc, Parts, PRef
from .where import CHECK_OPS, op_name, refuse, strip_prefix

_UNSET = object()
# the ops of a selection's region walked in place: its scores' views, the per-expert bias
# added, the top-k and its ids (ops_select.py's), and the groups' mask
_REGION_OPS = SELECTION_OPS | {"add", "masked_fill", "getitem"}

#: ops that pass the ids on as they are: casts and copies
_CASTS = {"to", "_to_copy", "clone", "contiguous", "alias", "long", "int"}
# a cast that returns its input itself where the dtype is its own (not ``alias``: under
# no_grad its output has no grad_fn, so no gradient reaches the input through it)
_SAME = {"to"}


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


def _input_itself(out, places) -> int | None:
    """The index among ``places`` of the region input that the node ``out`` is, through casts
    to its own dtype (which return the input tensor itself), or None."""
    def dtype(n):
        val = getattr(n, "meta", {}).get("val")
        return getattr(val, "dtype", None)

    own = dtype(out)
    while getattr(out, "op", "") == "call_function" and op_name(out) in _SAME \
            and dtype(out) == own and _returns_self(out):
        out = out.args[0]
    if out not in places or own is None or dtype(out) != own:
        return None
    return places.index(out)


def _returns_self(cast) -> bool:
    """Whether a ``to`` returns its input itself where dtype and device are its own: not with
    ``copy=True`` nor with a ``memory_format`` other than the input's own (each a new tensor,
    made under no_grad with no gradient to the input: ``x.to(x.dtype, copy=True)``)."""
    import torch

    schema = getattr(cast.target, "_schema", None)
    if schema is None:
        return False
    given = dict(zip((a.name for a in schema.arguments), cast.args, strict=False))
    given.update(cast.kwargs)
    vals = [getattr(n, "meta", {}).get("val") for n in (cast, cast.args[0])]
    return not given.get("copy") and given.get("memory_format") in (
        None, torch.preserve_format) and all(v is not None for v in vals) and \
        vals[0].device == vals[1].device


@dataclass
class Unchanged:
    """The outputs of a no_grad region that returns its inputs as they were (each the walk's
    value of its input)."""

    items: tuple


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
        if node.target is operator.getitem and isinstance(args[0], Unchanged):
            return args[0].items[args[1]]
        if not any(isinstance(a, (AllIds, IdsTuple)) for a in args):
            return super().call(node)
        return self._ids_op(node, op, args)

    def _ids_region(self, node) -> IdsTuple | None:
        vals = node.meta.get("val")
        vals = vals if isinstance(vals, (tuple, list)) else (vals,)
        if not vals or any(v is None for v in vals):
            return None
        sub = getattr(self.ep.graph_module, node.args[1].target, None)
        if sub is None:
            return None
        out = next(n for n in sub.graph.nodes if n.op == "output").args[0]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        places = [n for n in sub.graph.nodes if n.op == "placeholder"]
        items = []
        for o, v in zip(outs, vals, strict=True):
            if v.is_floating_point():
                # an input cast to its own dtype (Dots's ``h.to(w.dtype)``): torch returns
                # the input itself, gradient and all, which export hands on as an output
                at = _input_itself(o, places)
                if at is None:
                    return None
                items.append(self.args(node)[0][2 + at])
                _refuse_expanded_back(node, [node.args[2 + at]], items[-1:])
            else:
                items.append(_full_topk(o))
        if not any(isinstance(x, AllIds) for x in items) or any(x is None for x in items):
            return None
        return IdsTuple(tuple(items))

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

    def no_grad_region(self, node):
        """A torch.no_grad region over program values that no rule above follows: its inputs
        as they were where it only scales them in place by 1 (RWKV's rescaling of its weights
        for inference, 2**(block // rescale_every), with fewer blocks than rescale_every); a
        refusal that says what it does where it writes its inputs otherwise or returns ids or
        masks alone; else None (the walk's refusal: a value carried on with no gradient)."""
        sub = getattr(self.ep.graph_module, node.args[1].target, None)
        if sub is None:
            return None
        places = [n for n in sub.graph.nodes if n.op == "placeholder"]
        calls = [n for n in sub.graph.nodes if n.op == "call_function"]
        writes = [n for n in calls if op_name(n).endswith("_") and n.args
                  and getattr(n.args[0], "op", "") == "placeholder"]
        if writes:
            kept = _unchanged(sub, places, calls)
            if kept is None:
                raise refuse(writes[0], f"a torch.no_grad region that writes its inputs in "
                             f"place ({op_name(writes[0])} of {writes[0].args[0].target}): the "
                             "forward then reads values that the trace itself changed (RWKV "
                             "rescales its weights for inference when the model is put in eval "
                             "mode, as the trace does), which no program states",
                             help="build the model so that its forward changes no param (RWKV: "
                             "rescale_every=0, or more than its number of layers)")
            args, _ = self.args(node)
            items = tuple(args[2 + i] for i in kept)
            _refuse_expanded_back(node, [node.args[2 + i] for i in kept], items)
            return Unchanged(items) if isinstance(_outputs(sub), (tuple, list)) else items[0]
        _refuse_other_selection(node, sub)
        return None

    def refuse_grad_stop(self, node, op: str):
        """The refusal of a detach, or of a torch.no_grad region ``no_grad_region`` did not
        keep, at the user's line (export gives a region's op none: its first op's,
        where.user_span)."""
        region = op.startswith("wrap")
        return refuse(
            node,
            f"{'torch.no_grad' if region else op}: no gradient flows through it, so the params "
            "before it get none from this path, which the program cannot say (µP would claim "
            "they are trained)"
            + (" (a custom autograd.Function may give them one in its backward, which the "
               "trace does not read: Reformer's reversible layers recompute their forward "
               "there)" if region else ""),
            help="remove the detach (or torch.no_grad) from the forward, or trace the model "
            "without the detached part",
        )



_COMPARISONS = {"gt", "ge", "lt", "le", "eq", "ne"}
_HELP_SELECT = ("route each token by a top-k of its router's gates (Mixtral's route_norm(softmax("
                "R @ h), k, ...), DeepSeek-V3's top-k of the gates plus a per-expert bias; "
                "docs/torch.md), or write the layer as a Tensor Program with route(g, k, ...) "
                "(examples/moe.tp)")


def _refuse_expanded_back(node, given, items) -> None:
    """Refuses a region that hands back as itself a param expanded over the tokens (a param
    read as a tensor of another shape, ``z.expand_as(x)``): the expand_as is kept as the param
    only where a sum or product reads it (ops_pointwise.py), which the reads after the region
    escape; a view of it there would be read as the param's n entries."""
    for outer, item in zip(given, items, strict=True):
        val = getattr(outer, "meta", {}).get("val")
        if isinstance(item, PRef) and val is not None and tuple(val.shape) != tuple(item.shape):
            raise refuse(node, f"a torch.no_grad region that hands back the param "
                         f"{strip_prefix(item.target)} of shape {list(item.shape)} expanded to "
                         f"{list(val.shape)}: the trace reads an expanded param only where a "
                         "sum or product reads it right away", help="expand the param after "
                         "the region, or add it to the value before it (x + b)")


def _outputs(sub):
    return next(n for n in sub.graph.nodes if n.op == "output").args[0]


def _unchanged(sub, places, calls) -> list[int] | None:
    """The index of the input each output of region ``sub`` is, where its every op multiplies
    or divides an input in place by 1 (a no-op); None otherwise."""
    for n in calls:
        factor = n.args[1] if len(n.args) == 2 else None
        if op_name(n) not in ("mul_", "div_") or n.args[0] not in places or n.kwargs \
                or isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or factor != 1:
            return None
    outs = _outputs(sub)
    found = []
    for out in outs if isinstance(outs, (tuple, list)) else (outs,):
        while out in calls:
            out = out.args[0]
        if out not in places:
            return None
        found.append(places.index(out))
    return found


def _refuse_other_selection(node, sub) -> None:
    """Refuse region ``node`` (graph ``sub``) where it returns ids or masks alone, which no rule
    above follows: no gradient is lost through them, so its torch.no_grad is no obstacle; what
    it selects is. A mask by comparing values computed from its floating-point inputs (PhiMoE's
    sparsemixer: the gates within 2 jitter_eps of their max, relatively) keeps entries by their
    values, which a route's top-k (a choice by rank) cannot state."""
    vals = node.meta.get("val")
    vals = vals if isinstance(vals, (tuple, list)) else (vals,)
    if not vals or any(v is None or v.is_floating_point() for v in vals):
        return
    read: set = set()
    for n in sub.graph.nodes:
        val = n.meta.get("val")
        floating = getattr(val, "is_floating_point", lambda: False)()
        if n.op == "placeholder" and floating:
            read.add(n)
        elif n.op == "call_function" and any(a in read for a in n.all_input_nodes):
            if op_name(n) in _COMPARISONS:
                raise refuse(n, f"a mask computed under torch.no_grad by a comparison "
                             f"({op_name(n)}) of values the model computes: no gradient is lost "
                             "through a mask, but the entries it keeps depend on their values, "
                             "not on their rank (PhiMoE's sparsemixer weighs each selected "
                             "expert by a softmax over the gates within 2 jitter_eps of their "
                             "max, relatively), and the language's route(g, k, ...) keeps the "
                             "k largest gates: it cannot state that mask",
                             help=_HELP_SELECT)
            if floating:
                read.add(n)
    ops = sorted({op_name(n) for n in sub.graph.nodes if n.op == "call_function"} - CHECK_OPS)
    raise refuse(node, "a torch.no_grad region that returns ids or masks alone (no gradient is "
                 f"lost through them) computed by ops ({', '.join(ops)}) that the tracer does "
                 "not follow as a router's selection: it follows a top-k of a router's gates "
                 "(plus a per-expert constant) and a top-k over a whole axis",
                 help=_HELP_SELECT)
