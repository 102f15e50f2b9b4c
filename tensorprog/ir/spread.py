"""The dim of ``spread(g, dh)``: H entries of g, each repeated over dh coordinates (one number
per head over its head's coordinates; see ``tensorprog.ir.functions.SPREAD``)."""

from __future__ import annotations

from .functions import SPREAD

__all__ = ["SPREAD", "spread_dim"]


def spread_dim(dims: dict, heads: str | None, over: str) -> str | None:
    """The dim of ``spread(g, over)`` for g of dim ``heads``: the first of ``dims`` (name ->
    ``ir.program.Dim``: the width, then the declared dims in order) of heads·over's size; None
    if there is none, or if both grow with the width (n² coordinates)."""
    if heads is None or heads not in dims or over not in dims:
        return None
    h, o = dims[heads], dims[over]
    if h.infinite and o.infinite:
        return None
    if h.infinite or o.infinite:
        want = ("n", (h.mult or o.mult) * (o.size if h.infinite else h.size))
    else:
        want = ("fin", h.size * o.size)
    return next((name for name, d in dims.items() if d.key() == want), None)
