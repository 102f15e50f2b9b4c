"""Identity experts of a mixture of experts (LongCat-Flash's zero-computation experts).

LongCat-Flash's router scores N + Z experts; the last Z compute nothing: an identity expert's
output is the token itself. Its layer splits the k selected slots by ``ids >= N``: the identity
slots' gates summed times the token, and the others dispatched to the N experts with matrices
(the identity slots' ids replaced by ids below N, their gates set to 0):

    identity_mask = ids >= N
    identity_out = x * w.masked_fill(~identity_mask, 0).sum(-1, keepdim=True)
    ids = where(identity_mask, (ids - N) * N // Z, ids);  w = w.masked_fill(identity_mask, 0)
    out = experts(x, ids, w) + identity_out

which is the route over all N + Z experts, the identity ones being x itself:

    m = route(g, k, y_0, ..., y_{N-1}, x, ..., x)

(each slot is an expert with matrices or an identity one; a slot dispatched with gate 0 adds 0,
whichever expert it reaches). The values here follow those steps; the two parts meet at their
sum, where the route is written. Any other use of them is refused at its op (MoEOps.vec).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .routing import TopIdx, TopW
from .values import Affine, Pointwise, Vec
from .where import refuse

_HELP = ("the tracer follows identity experts (LongCat-Flash's zero-computation experts) split "
         "off by ids >= N: their gates (masked_fill of the others, summed) times the token, "
         "added to the experts' dispatch with the identity slots' gates masked to 0; else write "
         "the layer as a Tensor Program: route(g, k, y_0, ..., y_{N-1}, h, ..., h), the "
         "token h once per identity expert (docs/torch.md)")
# ops through which one part's gates, and the dispatched ids, reach the experts' dispatch
_PART_OPS = {"view", "reshape", "_unsafe_view", "index", "unsqueeze", "mul"}
_IDS_OPS = {"view", "reshape", "_unsafe_view", "sort", "index"}


@dataclass
class IdMask:
    """``ids >= count``: which of a token's k slots hold an identity expert (``neg``: the
    negation, the slots of the experts with matrices)."""

    ids: TopIdx
    count: int
    neg: bool = False
    node: str = ""


@dataclass
class IdArith:
    """A number computed from the selected ids (the ids given to the identity slots)."""

    ids: TopIdx
    node: str = ""


@dataclass
class IdWeight:
    """The sum of a token's gates of the identity experts it selected, ``[tokens, 1]``."""

    w: TopW
    node: str = ""


@dataclass
class IdentityPart:
    """The token times its identity experts' gates: those experts' part of the route."""

    x: Vec
    w: TopW
    node: str = ""


@dataclass
class RoutedPart:
    """The experts with matrices, weighted and summed, the identity slots' gates 0: those
    experts' part of the route, ``ys`` their values."""

    w: TopW
    ys: list
    node: str = ""


ZERO = (IdMask, IdArith, IdWeight, IdentityPart, RoutedPart)


def _same(a, b) -> bool:
    return a.gates.name == b.gates.name and a.k == b.k


class ZeroExpertOps:
    """The ops of a layer with identity experts (see the module's docstring); MoEOps hands
    them every op on a router's selection first, None meaning not one of theirs."""

    def zero_experts(self, node, op: str, args, kwargs):
        if op in ("ge", "lt") and len(args) == 2 and isinstance(args[0], TopIdx) \
                and isinstance(args[1], int) and not args[0].flat and not args[0].count \
                and 0 < args[1] < args[0].gates.dim:
            return IdMask(args[0], args[1], neg=op == "lt")
        if op in ("bitwise_not", "logical_not") and isinstance(args[0], IdMask):
            return dataclasses.replace(args[0], neg=not args[0].neg, node="")
        if op == "masked_fill" and len(args) == 3 and isinstance(args[1], IdMask):
            return self._masked_gates(node, *args)
        if op in ("sub", "mul", "floor_divide") and len(args) == 2 \
                and isinstance(args[0], (TopIdx, IdArith)) and isinstance(args[1], int) \
                and not (isinstance(args[0], TopIdx) and (args[0].flat or args[0].count)):
            return IdArith(args[0] if isinstance(args[0], TopIdx) else args[0].ids)
        if op == "where" and len(args) == 3 and isinstance(args[0], IdMask):
            return self._dispatched_ids(node, *args)
        if op == "sum" and isinstance(args[0], TopW) and args[0].part == "identity":
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if list(dims or []) in ([-1], [1]) and keep and not args[0].flat:
                return IdWeight(args[0])
            raise refuse(node, "a sum of the identity experts' gates other than over a "
                         "token's slots, kept as a column", help=_HELP)
        if op == "mul" and len(args) == 2:
            for x, w in ((args[0], args[1]), (args[1], args[0])):
                if isinstance(w, IdWeight) and isinstance(x, (Vec, Affine, Pointwise)):
                    v = self.vec(x, node)
                    if v.tags[-1] == "F" and len(self._shape(node)) == 2:
                        return IdentityPart(v, w.w)
        if op == "add" and len(args) == 2:
            parts = {type(a): a for a in args}
            if set(parts) == {IdentityPart, RoutedPart}:
                return self._whole_route(node, parts[RoutedPart], parts[IdentityPart])
        # the gates of one part, and the ids with the identity slots' replaced, go on only to
        # the dispatch (a sum or a normalisation of one part's gates is no route's)
        if any(isinstance(a, TopW) and a.part for a in args) and op not in _PART_OPS \
                or any(isinstance(a, TopIdx) and a.count for a in args) and op not in _IDS_OPS:
            raise refuse(node, f"the op {op} on the gates or ids of a router's experts with "
                         "matrices once its identity experts are split off, other than to "
                         "dispatch them", help=_HELP)
        if any(isinstance(a, ZERO) for a in args):
            raise refuse(node, f"the op {op} on a router's identity experts (their mask, gates "
                         "or part of the layer) in a form the tracer does not follow",
                         help=_HELP)
        return None

    def _masked_gates(self, node, w, mask: IdMask, fill):
        """The k gates with the identity slots' (``ids >= N``) or the others' set to 0."""
        if not isinstance(w, TopW) or fill != 0 or w.flat or w.part \
                or not _same(w, mask.ids) or w.chosen != mask.ids.chosen:
            raise refuse(node, "a masked_fill by the identity experts' mask of other than the "
                         "selection's own k gates, with 0", help=_HELP)
        # masked where ids >= N: the identity slots zeroed, the routed experts' gates kept
        part = "identity" if mask.neg else "routed"
        return dataclasses.replace(w, part=part, count=mask.count, node="")

    def _dispatched_ids(self, node, mask: IdMask, other, ids):
        """``where(ids >= N, other ids, ids)``: the ids to dispatch to the N experts with
        matrices, the identity slots' replaced (their gates are 0 there)."""
        ok = (not mask.neg and isinstance(ids, TopIdx) and _same(ids, mask.ids)
              and isinstance(other, IdArith) and _same(other.ids, ids) and not ids.flat
              and not ids.count)
        if not ok:
            raise refuse(node, "a where over the identity experts' mask other than their ids "
                         "replaced by ids computed from them", help=_HELP)
        return dataclasses.replace(ids, count=mask.count, node="")

    def routed_part(self, node, w: TopW, ys: list):
        """The dispatch's weighted sum where the identity slots' gates are 0."""
        if w.part != "routed" or len(ys) != w.count:
            raise refuse(node, f"{len(ys)} experts weighted by the gates of "
                         f"{'identity' if w.part == 'identity' else 'routed'} slots of a "
                         f"router of {w.count} experts with matrices", help=_HELP)
        return RoutedPart(w, ys)

    def _whole_route(self, node, routed: RoutedPart, identity: IdentityPart):
        """The two parts summed: the route over every expert, the identity ones the token."""
        a, b = routed.w, identity.w
        if not (_same(a, b) and a.count == b.count and a.factor == b.factor
                and a.norm == b.norm and a.chosen == b.chosen and a.picked == b.picked):
            raise refuse(node, "the routed experts' part and the identity experts' part of two "
                         "different selections", help=_HELP)
        x, like = identity.x, routed.ys[0]
        if x.dim != like.dim or x.tags != like.tags:
            raise refuse(node, "identity experts whose token is not of the experts' shape",
                         help=_HELP)
        names = [y.name for y in routed.ys] + [x.name] * (a.gates.dim - a.count)
        return self.emit_route(node, dataclasses.replace(a, part="", count=0), names, like)

