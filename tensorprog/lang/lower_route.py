"""Lowering ``route(g, k, y1, ..., yE)``: a mixture-of-experts layer's top-k combination.

``route`` sums the k largest gates times their experts; ``route_norm`` first divides the k gates
by their sum (Mixtral's normalised top-k softmax, DeepSeek-V3's normalised sigmoid);
``route_in(g, k, i, x)`` is expert i's input where the gates multiply the experts' inputs
(Llama 4's): x times g_i where g_i is among the k largest, else 0. The gates
are any vector of a finite dim with one entry per expert, usually ``softmax(R @ x)`` or
``sigmoid(R @ x)``; the experts are vectors of one dim, usually MLPs with their own weights.
What the engine cannot analyse is refused here, at the call (docs/theory.md, "Mixture-of-experts
layers"): gates over a width-proportional number of experts, whose router the matmul rule would
take for a hidden weight although per token only k of its rows are read.
"""

from __future__ import annotations

from ..ir.program import Route, RouteIn
from .ast import Call

ROUTES = ("route", "route_norm", "route_in")
_USAGE = "write route(g, k, y1, y2, ...): the gates g = softmax(R @ x), k, then one expert per gate"
_USAGE_IN = ("write route_in(g, k, i, x): expert i's input, x times the gate g_i where it is "
             "among the k largest of g = sigmoid(R @ x), else 0; then sum the experts' outputs")


def _positive(low, gates: str) -> bool:
    """Whether the gates are a softmax or sigmoid: positive scores."""
    producer = next((ins for ins in reversed(low.body) if ins.out == gates), None)
    return getattr(producer, "fn", None) in ("softmax", "sigmoid")


def _whole(v, scalar: type, low: int) -> bool:
    return isinstance(v, scalar) and v.value.denominator == 1 and v.value >= low


def _finite_gates(low, node: Call, g, usage: str) -> int | None:
    """The number of experts of gates ``g``, a vector of a finite dim, or None (reported)."""
    if g.dim is None or g.dim in low.heads_dims:
        low.errors.error(f"the gates of {node.fn} must be a vector with one entry per expert, got "
                         f"{low.dim_text(g.dim)}", node.span, usage)
        return None
    size = low.dims[g.dim].size
    if size is None:
        low.errors.error(
            f"{node.fn} over the width-proportional dim {g.dim}: per token only k of the "
            "router's rows are read, so the router is a readout for each token, not the hidden "
            "weight the matmul rule would derive for it, which the engine does not model",
            node.span, "declare a finite number of experts (`dim E = 8`) and list them, "
                       "route(g, k, y1, ..., y8); see docs/theory.md")
        return None
    return size


def lower_route_in(low, node: Call, args: list, scalar: type, vec: type):
    """The RouteIn instruction of ``route_in(g, k, i, x)``, or None (errors reported)."""
    if len(args) != 4:
        low.errors.error(f"route_in takes the gates, k, the expert's index and its input, got "
                         f"{len(args)} argument{'s' * (len(args) != 1)}", node.span, _USAGE_IN)
        return None
    if any(a is None for a in args):
        return None
    g, k, i, x = args
    if not _whole(k, scalar, 1) or not _whole(i, scalar, 0):
        low.errors.error("the second and third arguments of route_in must be k, a whole number "
                         "of experts of 1 or more, and the expert's index, a whole number from "
                         "0", node.span, _USAGE_IN)
        return None
    if not isinstance(g, vec) or not isinstance(x, vec):
        low.errors.error("route_in needs vector gates and a vector input", node.span, _USAGE_IN)
        return None
    size = _finite_gates(low, node, g, _USAGE_IN)
    if size is None:
        return None
    if int(k.value) > size or int(i.value) >= size:
        low.errors.error(f"route_in: k = {k.value} and the expert {i.value} must be at most and "
                         f"below the {size} experts of {low.dim_text(g.dim)}", node.span,
                         "k counts the experts each token uses; experts are counted from 0")
        return None
    if x.dim is None or x.dim in low.heads_dims:
        low.errors.error(f"route_in: the expert's input must be a vector, got "
                         f"{low.dim_text(x.dim)}", node.span, _USAGE_IN)
        return None
    names = [low.name_of(a, node.span) for a in (g, x)]
    out = low.emit(RouteIn(low.fresh(low.target), names[0], int(k.value), int(i.value),
                           names[1], node.span), x.dim)
    return low.vec(out, x.dim)


def lower_route(low, node: Call, args: list, scalar: type, vec: type):
    """The Route instruction of a ``route``/``route_norm`` call (RouteIn of ``route_in``), or
    None (errors reported); ``scalar`` and ``vec`` are the lowering's pending constant and
    vector types."""
    if node.fn == "route_in":
        return lower_route_in(low, node, args, scalar, vec)
    if len(args) < 3:
        low.errors.error(f"{node.fn} takes the gates, k and at least one expert, got "
                         f"{len(args)} argument{'s' * (len(args) != 1)}", node.span, _USAGE)
        return None
    if any(a is None for a in args):
        return None
    g, k, experts = args[0], args[1], args[2:]
    if not _whole(k, scalar, 1):
        low.errors.error(f"the second argument of {node.fn} must be k, a whole number of experts "
                         "of 1 or more", node.span, _USAGE)
        return None
    if any(not isinstance(a, vec) for a in (g, *experts)):
        low.errors.error(f"{node.fn} needs vector gates and experts", node.span, _USAGE)
        return None
    size = _finite_gates(low, node, g, _USAGE)
    if size is None:
        return None
    if size != len(experts):
        low.errors.error(f"{node.fn}: the gates {low.dim_text(g.dim)} have {size} entries but "
                         f"{len(experts)} expert{'s' * (len(experts) != 1)} are given",
                         node.span, "give one expert per gate, in the gates' order")
        return None
    if int(k.value) > size:
        low.errors.error(f"{node.fn}: k = {k.value} is more than the {size} experts", node.span,
                         "k counts the experts each token uses: at most their number")
        return None
    dim = experts[0].dim
    if dim is None or dim in low.heads_dims or any(
            not low.same_dim(e.dim, dim) for e in experts):
        low.errors.error(f"{node.fn}: the experts must be vectors of one dim, got "
                         f"{', '.join(low.dim_text(e.dim) for e in experts)}", node.span,
                         "each expert maps the layer's input to the same dim (y_e = W2_e @ ...)")
        return None
    names = [low.name_of(a, node.span) for a in (g, *experts)]
    if node.fn == "route_norm" and not _positive(low, names[0]):
        # the rule takes the sum of the k gates to be Θ(1) like each of them, which holds for
        # positive scores (at least the largest one) but not for gates that can cancel
        low.errors.error("route_norm divides the k gates by their sum, which the engine takes to "
                         f"be as large as the gates; {names[0]} is not a softmax or sigmoid, so "
                         "its entries may cancel", node.span,
                         "normalise positive scores, route_norm(softmax(R @ h), k, ...) or "
                         "route_norm(sigmoid(R @ h), k, ...), or use route(g, k, ...)")
        return None
    out = low.emit(Route(low.fresh(low.target), names[0], int(k.value), tuple(names[1:]),
                         node.span, node.fn == "route_norm"), dim)
    return low.vec(out, dim)
