"""The dim of ``spread(g, dh)``: H entries of g, each repeated over dh coordinates (one number
per head over its head's coordinates; see ``tensorprog.ir.functions.SPREAD``), and of the other
Nonlins whose output has another dim than their input's, ``part(x, d, i)`` (``PART``) and
``cat(a, b, D)`` (``CAT``), ``pick(y, D, i1, ...)`` (``PICK``), ``rms(x, D)`` (``RMS``) and
``hdot(u, v, dh)`` (``HDOT``, ir/hdot.py)."""

from __future__ import annotations

from fractions import Fraction

from .functions import CAT, PART, PICK, RMS, SPREAD
from .hdot import HDOT, hdot_dim

__all__ = ["HDOT", "SPREAD", "other_dim", "part_count", "spread_dim"]


def other_dim(dims: dict, fn: str, arg: str | None, over: str) -> str | None:
    """The dim of ``spread(g, over)`` (g of dim ``arg``), or of ``part(x, over, i)``,
    ``cat(a, b, over)``, ``pick(y, over, ...)`` and ``rms(x, over)``: over; of ``hdot(u, v,
    over)``: the heads' count."""
    if fn == HDOT:
        return hdot_dim(dims, arg, over)
    return over if fn in (PART, CAT, PICK, RMS) else spread_dim(dims, arg, over)


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


def part_count(x, d) -> Fraction | None:
    """How many parts of dim ``d`` a vector of dim ``x`` has (``part(x, d, i)``): the same at
    every width, so both dims finite or both growing; None where one grows and the other not
    (the count would change with the width). Not necessarily whole."""
    if x is None or d is None or x.infinite != d.infinite:
        return None
    return Fraction(x.mult) / Fraction(d.mult) if x.infinite else Fraction(x.size, d.size)
