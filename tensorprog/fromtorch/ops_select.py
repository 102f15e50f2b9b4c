"""A router that selects its experts by other scores than the gates that weight them.

DeepSeek-V3's router (and GLM-4-MoE's, EXAONE-MoE's, ...) computes sigmoid gates g = σ(R @ h),
selects each token's k experts by ``g + b`` with b a per-expert buffer that its load balancing
sets outside the gradient (``e_score_correction_bias``), optionally only among the experts of its
best groups (the groups' scores, a top-k of them and a mask), then gathers the k selected gates
``g.gather(1, ids)`` to weight the experts (divided by their sum, times a constant):

    choice = g + b                                  selection only
    ids = topk(choice masked to the best groups, k) selection only
    w = g.gather(1, ids)                            the k gates: route(g, k, ...)

The engine's exponents do not depend on which k experts are selected (docs/theory.md, "Top-k":
every candidate is one of the E finitely many Θ(1)·y_e, and the gates are g's entries), so the
layer derives as ``route(g, k, y_1, ..., y_E)`` (``route_norm`` normalised). The program's own
``route`` selects by g, which is the model's selection while b is 0 (its init) and the groups
keep every expert: the route's line says so in a comment. The variants followed: the bias a
buffer, a constant or a fixed param ``[1, E]`` squeezed (Ernie-4.5's; a param read only by the
selection gets no gradient and stays out of the program), a param the model does not train
(AFMoE's ``expert_bias``, ``requires_grad=False``), softmax gates, the logits selecting
and their gathered sigmoid weighting (Kolibri's), the k gates' sum clamped below by a tiny
number. Every value of the selection is a :class:`Choice`, which the ops here carry only
towards a top-k's ids; any other use of one is refused at its op (MoEOps.vec).
"""

from __future__ import annotations

import operator

from .routing import Choice, TopIdx, TopSum, TopW
from .values import Affine, Aux, Conc, Parts, Pointwise, PRef, Vec
from .where import refuse

# ops that compute a selection-only value from selection-only values: the groups' view, their
# best scores and the sum of them, the mask of the best groups (zeros, scatter, expand) and its
# negation, and casts
_SELECTION = {"view", "reshape", "_unsafe_view", "expand", "unsqueeze", "sum", "zeros_like",
              "scatter", "scatter_", "bitwise_not", "logical_not", "to", "_to_copy", "clone",
              "contiguous", "topk"}
SELECTION_OPS = frozenset(_SELECTION)
_HELP = ("a router's selection that the tracer follows is a top-k of its gates, or of the gates "
         "plus a per-expert constant (DeepSeek-V3's e_score_correction_bias) masked to its best "
         "groups, whose ids then gather the gates (docs/torch.md); else write the layer as a "
         "Tensor Program with route(g, k, ...) (examples/moe.tp)")
# a lower bound on the sum of the k gates (against a division by 0) that changes nothing, as a
# constant added to that sum (ops_moe.py)
_TINY = 1e-6

_HELP_DISPATCH = ("build the model with transformers' experts_implementation grouped_mm (the "
                  "default) or batched_mm where it has one; else write the layer as a Tensor "
                  "Program: g = softmax(R @ h), then route_norm(g, k, y1, ..., yE) over expert "
                  "MLPs (examples/moe.tp)")


def region_inputs(node, user) -> list:
    """The placeholders of torch.no_grad region ``user`` (its higher-order op) that receive
    ``node``'s value, or [] where ``user`` is no such region."""
    if getattr(user.target, "__name__", "") != "wrap_with_set_grad_enabled" \
            or len(user.args) < 2 or user.args[0] is not False:
        return []
    sub = getattr(user.graph.owning_module, getattr(user.args[1], "target", ""), None)
    if sub is None:
        return []
    places = [n for n in sub.graph.nodes if n.op == "placeholder"]
    return [p for p, a in zip(places, user.args[2:], strict=False) if a is node]


def feeds_selection(node, limit: int = 64) -> bool:
    """Whether a top-k reads the node's value through the ops of a selection (inside a
    torch.no_grad region too: the selection's ids carry no gradient either way)."""
    todo, seen = [(u, node) for u in node.users], set()
    while todo and len(seen) < limit:
        user, read = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        name = getattr(getattr(user.target, "_overloadpacket", None), "__name__", "")
        if name == "topk":
            return True
        if name in _SELECTION | {"masked_fill", "add"} or user.target is operator.getitem:
            todo += [(u, user) for u in user.users]
        for place in region_inputs(read, user):
            todo += [(u, place) for u in place.users]
    return False


class SelectOps:
    """The values of a router's selection by other scores (see the module's docstring)."""

    def choice(self, node, u, v):
        """``g + b``, b a per-expert constant and g a router's gates, where a top-k reads the
        sum: a :class:`Choice` of g; None for any other sum."""
        # (a sum of numbers, a SymInt, has no shape: Reformer's max position id + axis size)
        shape = tuple(getattr(node.meta.get("val"), "shape", ()))
        for g, b, at in ((u, v, 1), (v, u, 0)):
            # b: a buffer, a constant, or a param (Ernie-4.5's, fixed): read by the selection
            # only, it gets no gradient (a top-k's ids have none) and stays out of the program
            if not isinstance(g, (Vec, Pointwise, Affine)) or not isinstance(b, (Aux, Conc, PRef)):
                continue
            if isinstance(b, PRef) and getattr(node.args[at], "op", "") != "call_function" \
                    and not self._frozen(b):
                continue  # a param as it is: a trainable bias of the scores, not the selection's
            val = getattr(node.args[at], "meta", {}).get("val")
            b_shape = tuple(val.shape) if val is not None else ()
            if len(shape) >= 2 and b_shape[-1:] == shape[-1:] and set(b_shape[:-1]) <= {1} \
                    and feeds_selection(node):
                g = self.vec(g, node)
                if g.tags[-1] == "F" and g.dim == shape[-1]:
                    return Choice(g)
            if isinstance(b, PRef) and len(b.shape) > 1 and feeds_selection(node):
                # reshaped for this sum (selection_bias), but not a gates' selection bias
                raise refuse(node, "a param added to a router's scores other than as a "
                             "per-expert bias of its selection", help=_HELP)
        return None

    def _frozen(self, b: PRef) -> bool:
        """Whether ``b`` is a param the model does not train (``requires_grad=False``: AFMoE's
        ``expert_bias``, which its load balancing sets outside the gradient): a constant of the
        selection as a buffer is, its whole self (no part, offset or expert of it)."""
        p = self.ep.state_dict.get(b.target)
        return p is not None and not p.requires_grad and not (
            b.t or b.rows or b.offset or b.expert is not None)

    def selection_bias(self, node, p):
        """``b.squeeze()`` (a view) of a param [1, E] that only a selection's sum reads
        (Ernie-4.5's ``e_score_correction_bias``): the param, for :meth:`choice`; None else."""
        size = tuple(node.meta["val"].shape) if "val" in node.meta else ()
        if isinstance(p, PRef) and len(size) == 1 and node.users and all(
                getattr(u.target, "_overloadpacket", None) is not None
                and u.target._overloadpacket.__name__ == "add" and feeds_selection(u)
                for u in node.users):
            return p
        return None

    def selection(self, node, op: str, args, kwargs):
        """An op on a router's selection-only values (a :class:`Choice` among ``args``)."""
        found = [a for a in args if isinstance(a, Choice)]
        if isinstance(args[1] if len(args) > 1 else None, Choice) \
                and found[0].gates.name != args[1].gates.name:
            raise refuse(node, "the selection of one router masked by another's", help=_HELP)
        first = found[0]
        if op == "topk":
            k, dim = args[1], args[2] if len(args) > 2 else kwargs.get("dim", -1)
            largest = args[3] if len(args) > 3 else kwargs.get("largest", True)
            shape = node.args[0].meta["val"].shape
            if first.scores and largest and dim in (-1, len(shape) - 1) \
                    and shape[-1] == first.gates.dim:
                # the ids of the k experts selected: those of the gates' route
                return Parts([Choice(first.gates, scores=False),
                              TopIdx(first.gates, int(k), chosen=True)])
            return Parts([Choice(first.gates, scores=False)] * 2)
        if op == "masked_fill" and first.scores and len(args) > 2 \
                and isinstance(args[1], Choice) and args[2] == float("-inf"):
            return first  # the candidates restricted to the best groups: still the choice
        if op in _SELECTION:
            return Choice(first.gates, scores=False)
        raise refuse(node, f"the op {op} on a router's selection scores (its gates plus a "
                     "per-expert bias, or its groups' scores and mask)", help=_HELP)

    def _moe_gather(self, node, v, dim, index, *rest, **kwargs):
        """``g.gather(1, ids)``: the k gates of the selected experts."""
        if isinstance(index, TopIdx) and not index.flat and dim in (-1, 1) \
                and isinstance(v, (Vec, Pointwise, Affine)):
            g = self.vec(v, node)
            if g.name == index.gates.name:
                return TopW(g, index.k, chosen=index.chosen)
        return None

    def _moe_sigmoid(self, node, v):
        """``sigmoid(logits.gather(1, ids))`` (Kolibri's): the k gathered logits' sigmoid is
        the sigmoid's k entries, so the gates are ``sigmoid(logits)``, selected by the ids.
        The model's node holds those k entries, not the gates over every expert: no tensor of
        the model holds them, so they are named as an expert's values (``node#gates``), which
        the check does not read."""
        if isinstance(v, TopW) and v.chosen and not (v.flat or v.norm or v.picked) \
                and v.factor == 1 and not self._producer(v.gates.name):
            name = self.emit_vector(f"{node.name}#gates", f"sigmoid({v.gates.name})")
            gates = Vec(name, v.gates.tags, v.gates.dim)
            return TopW(gates, v.k, picked=v.gates.name, chosen=True)
        return None

    def _moe_scatter(self, node, v, dim, index, *rest, **kwargs):
        """``zeros.scatter(1, ids, 1)``: refused, saying what is missing (a one-hot of the ids
        feeds a dispatch the tracer does not follow)."""
        if isinstance(index, TopIdx) and not index.flat:
            raise refuse(node, "a one-hot of the selected experts' ids (zeros.scatter(1, ids, "
                         "...)): it feeds a dense dispatch (every expert on every token, "
                         "masked) or JetMoE's (the one-hot's column sums, made a Python list, "
                         "split the tokens expert by expert, and index_add puts them back), "
                         "neither of which the tracer follows; it follows a sort of the ids "
                         "with a grouped matmul over histc/cumsum offsets, or W[ids] with bmm",
                         help=_HELP_DISPATCH)
        return None

    _moe_scatter_ = _moe_scatter

    def _moe_clamp(self, node, v, lo=None, hi=None):
        """``clamp(sum of the k gates, min=tiny)`` (Ernie-4.5's, against a division by 0): the
        sum itself, where the bound is below any sum of k gates that matters."""
        if isinstance(v, TopSum) and hi is None and lo is not None and 0 <= lo <= _TINY:
            return v
        return None
