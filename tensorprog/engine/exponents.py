"""Width exponents: exact sympy numbers, with -oo for an exactly-zero quantity.

"x has exponent e" means its coordinates have size Theta(n^e) (RMS). Exponents are sympy Rationals,
``-oo`` (the quantity is exactly zero, e.g. a zero-initialised weight) or ``+oo``. Arithmetic goes
through :func:`add`, which lets zero absorb (0 * anything = 0), so ``oo - oo`` never appears.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy
from sympy import Rational, S

Exp = sympy.Expr
ZERO = S.Zero
HALF = Rational(1, 2)
ONE = S.One
NEG_INF = S.NegativeInfinity
INF = S.Infinity


def canon(x) -> Exp:
    """A canonical exact exponent from an int, Fraction, str ("1/2", "-1", "oo") or sympy number."""
    if isinstance(x, str):
        text = x.strip().lower()
        if text in ("oo", "inf", "+oo", "infinity"):
            return INF
        if text in ("-oo", "-inf", "-infinity"):
            return NEG_INF
        try:
            return Rational(text)
        except (TypeError, ValueError):
            raise ValueError(f"not an exact exponent: {x!r} (use e.g. 1/2, -1, 0 or oo)") from None
    if isinstance(x, float):
        raise TypeError("exponents are exact: pass a Rational or a string like '1/2', not a float")
    value = sympy.sympify(x)
    if value in (INF, NEG_INF) or value.is_Rational:
        return value
    raise ValueError(f"not an exact exponent: {x!r}")


def add(*xs: Exp) -> Exp:
    """Sum of exponents = exponent of a product; an exact zero (-oo) wins over everything."""
    if any(x is NEG_INF for x in xs):
        return NEG_INF
    total = ZERO
    for x in xs:
        total += x
    return total


def gt(x: Exp, y: Exp) -> bool:
    """x > y for exact exponents, without sympy's general (slow) relational machinery."""
    if x is y or x is NEG_INF or y is INF:
        return False
    if x is INF or y is NEG_INF:
        return True
    return x.p * y.q > y.p * x.q


def emax(xs: Iterable[Exp]) -> Exp:
    """Max of exponents (a sum of terms); -oo for no terms (an exact zero)."""
    best = NEG_INF
    for x in xs:
        if gt(x, best):
            best = x
    return best


def emin(*xs: Exp) -> Exp:
    best = INF
    for x in xs:
        if gt(best, x):
            best = x
    return best


def as_str(e: Exp) -> str:
    """The string form used in JSON: parses back with sympy ("1/2", "-1", "oo", "-oo")."""
    return str(e)


def power(e: Exp, base: str = "n") -> str:
    """n^e for people: 1, n, 1/n, √n, 1/√n, n^(3/2); 0 for an exact zero."""
    if e is NEG_INF:
        return "0"
    if e is INF:
        return "∞"
    if e == 0:
        return "1"
    mag = abs(e)
    if mag == 1:
        body = base
    elif mag == HALF:
        body = f"√{base}"
    elif mag.q == 1:
        body = f"{base}^{mag}"
    else:
        body = f"{base}^({mag})"
    return body if e > 0 else f"1/{body}"


def scaled(coef: str, e: Exp, base: str = "n") -> str:
    """``coef·n^e`` for people, e.g. ("η", -1) -> "η/n", ("σ", 1/2) -> "σ·√n"."""
    if e is NEG_INF:
        return "0"
    p = power(e, base)
    if p == "1":
        return coef
    if p.startswith("1/"):
        return f"{coef}{p[1:]}"
    return f"{coef}·{p}"


@dataclass(frozen=True)
class ABC:
    """One param's exponents: W = n^-a·w, w ~ N(0, (σ·n^-b)²), LR η·n^-c; b = oo is zero init."""

    a: Exp
    b: Exp
    c: Exp

    def __post_init__(self) -> None:
        for k in "abc":  # accept ints, Fractions and strings; store canonical sympy numbers
            object.__setattr__(self, k, canon(getattr(self, k)))
        if not self.a.is_Rational or self.b is NEG_INF or self.c is NEG_INF:
            raise ValueError("a must be finite, and b and c finite or oo (zero init, zero LR)")

    def as_dict(self) -> dict[str, str]:
        return {"a": as_str(self.a), "b": as_str(self.b), "c": as_str(self.c)}
