"""The names of attention's heads axes: ``q/dh`` for the heads of a ``dot(q, k, dh)`` of q, k of
dim ``q`` (a dim of the program's table, :meth:`tensorprog.ir.program.Program.dim_table`)."""

from __future__ import annotations

from fractions import Fraction


def heads_dim_name(dim: str, over: str) -> str:
    """The name of the heads axis of ``dot(q, k, over)`` for q, k of dim ``dim``."""
    return f"{dim}/{over}"


def split_heads_dim(name: str) -> tuple[str, str]:
    """(dim, over) of a heads axis named by :func:`heads_dim_name`."""
    dim, _, over = name.partition("/")
    return dim, over


def cat_heads_error(parts: list, whole, head, base: int) -> str | None:
    """Why ``cat(a, b, ..., D, dv)`` (each head of dv coordinates of D the parts' heads in turn)
    does not split, or None: D must be a whole number H of dv's heads at every width (both
    growing with it, or both finite: H fixed; D growing and dv finite: H grows), and each part
    a whole number of coordinates per head (at the base width ``base`` too, as every declared
    dim is: n / 6 of each head at n = 16 is no layout). ``parts``, ``whole``, ``head``: the
    parts', D's and dv's :class:`tensorprog.ir.program.Dim`."""
    if whole.infinite != head.infinite and not whole.infinite:
        return f"{whole.name} is finite and {head.name} grows with the width"
    if whole.infinite == head.infinite:  # a fixed number of heads
        count = (whole.mult / head.mult) if whole.infinite else Fraction(whole.size, head.size)
        if count.denominator != 1 or count < 1:
            return f"{whole.name} is not a whole number of heads of {head.name}"
        each = [(p.mult * base if p.infinite else p.size) / count for p in parts]
        if any(e.denominator != 1 for e in each):
            return f"a part is not a whole number of coordinates in each of {count} heads"
        return None
    # heads of a fixed dv, as many as D grows: each part's share of a head is then fixed
    if not all(p.infinite for p in parts):
        return f"a part of a finite dim beside heads of {head.name} whose number grows"
    if any((p.mult * head.size / whole.mult).denominator != 1 for p in parts):
        return f"a part is not a whole number of coordinates in each head of {head.name}"
    return None
