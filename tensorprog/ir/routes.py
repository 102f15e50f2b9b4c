"""The IR's mixture-of-experts instructions: ``route`` (the k largest gates times their experts'
outputs) and ``route_in`` (an expert's input times its gate), re-exported by program.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Route:
    """``out = route(gates, k, *experts)``: ``sum over the k largest gates_e of gates_e·experts_e``,
    a mixture-of-experts layer's combination (``normalise``: the k gates divided by their sum).

    ``gates`` has one entry per expert (a finite dim); every expert is a vector of one dim.
    Scaling (docs/theory.md, "Mixture-of-experts layers"): top-k is a coordinatewise mask of the
    gates (a selected gate keeps its size, the others are 0), so this is a finite sum of Θ(1)
    weights times experts, as in ``mix``; the gates' gradient is a sum over the experts' dim.
    """

    out: str
    gates: str
    k: int
    experts: tuple[str, ...]
    span: Span | None = _span()
    normalise: bool = False

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.gates, *self.experts)


@dataclass(frozen=True)
class RouteIn:
    """``out = route_in(gates, k, expert, arg)``: ``gates_expert · arg`` where ``gates_expert`` is
    among the k largest gates, else 0: the input of expert ``expert`` (counted from 0) of a
    mixture of experts whose gates multiply the experts' inputs (Llama 4's), not their outputs.
    Such a layer runs every expert on its gated input and sums them all, ``y_0 + ... + y_{E-1}``
    (an expert not selected reads 0); for an expert that is not linear this differs from
    ``route``, which multiplies the selected experts' outputs by their gates.

    Scaling (docs/theory.md, "Mixture-of-experts layers"): the gate is one Θ(1) number per input
    and expert (a softmax's or a sigmoid's entry, masked by the top-k), so the output is as
    large as ``arg`` and changes with the gate or with ``arg``, as ``route``'s one expert does;
    the gate's gradient is a sum over ``arg``'s dim (CLT at init, LLN against ``arg``'s change).
    """

    out: str
    gates: str
    k: int
    expert: int
    arg: str
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.gates, self.arg)
