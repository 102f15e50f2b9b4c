"""The pending values of an expression's lowering: a constant, a matrix param (only ``@`` applies
it), or a linear combination of named vectors that the consuming node may extend
(:mod:`tensorprog.lang.lower_expr`)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Scalar:
    value: Fraction


@dataclass(frozen=True)
class Matrix:
    name: str
    transposed: bool = False


@dataclass
class Vec:
    """A pending linear combination of named values, all of one dim (None = scalar): the
    coefficient of each name, in order of first appearance, and the image sizes of its non-param
    terms (None: no pixels). Owned by the one expression node that consumes it, which may extend
    it in place, so a sum of k terms costs O(k) rather than O(k^2)."""

    terms: dict[str, Fraction]
    dim: str | None
    pixels: frozenset
    # a number added to every coordinate (only to values of params alone: ir/ranges.py)
    const: Fraction = Fraction(0)

    def items(self) -> tuple[tuple[Fraction, str], ...]:
        return tuple((c, n) for n, c in self.terms.items())

    def single(self) -> str | None:
        """The name, if this is one value with coefficient 1."""
        if len(self.terms) == 1 and not self.const:
            ((n, c),) = self.terms.items()
            return n if c == 1 else None
        return None
