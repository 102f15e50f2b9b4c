"""Python source text for the values the emitter writes: string literals, docstring text, exact
numbers as floats or short fractions, exponents, and a dim's size in terms of the width.

A value a float cannot hold is refused here (``CodegenError`` with the span it came from), so the
emitted module never computes with an overflowed or underflowed constant.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

from ..engine.exponents import INF
from ..errors import CodegenError, Span
from ..ir.program import Program


def docstring_text(text: str) -> str:
    """``text`` as it may stand inside a triple-quoted docstring with its value unchanged:
    backslashes and double quotes escaped, unprintable characters written as escapes, so that no
    file or program name can end the string (or the line) early."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # \n, \x1b, \u2028, ...
    return "".join(out)


def quoted(text: str) -> str:
    """A double-quoted Python string literal (JSON's escapes are Python's too)."""
    return json.dumps(text)


def finite_float(x: Fraction, what: str, span: Span | None) -> float:
    """``x`` as the float the module computes with; refuse what a float cannot hold."""
    try:
        f = float(x)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or (f == 0 and x != 0):
        raise CodegenError(f"{what} = {x} is {'too large' if f else 'too small'} for a float "
                           "in the emitted module", span,
                           help="use a value between 1e-300 and 1e300 in size")
    return f


def number_literal(x: Fraction, what: str = "the constant", span: Span | None = None) -> str:
    """An exact rational as Python source: a float literal when the float is exact (0.5, 3.0),
    ``p / q`` for a short fraction (1 / 3), else the nearest float's shortest repr."""
    f = finite_float(x, what, span)
    if f == x or len(str(x.numerator)) + len(str(x.denominator)) > 12:
        return repr(f)
    return f"{x.numerator} / {x.denominator}"


def dim_expr(program: Program, dim: str, width: str = "width") -> str:
    """A dim's size in Python; a fraction of the width uses //, exact once the width passed
    _check_widths."""
    d = program.dim_table[dim]
    if not d.infinite:
        return str(d.size)
    m = d.mult
    if m == 1:
        return width
    if m.denominator == 1:
        return f"{m.numerator} * {width}"
    if m.numerator == 1:
        return f"{width} // {m.denominator}"
    return f"{width} * {m.numerator} // {m.denominator}"


def exponent_literal(e, param: str, span: Span | None) -> str:
    if e is INF:
        return "math.inf"
    return number_literal(Fraction(int(e.p), int(e.q)), f"the exponent of {param}", span)
