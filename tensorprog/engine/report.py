"""What every result's rendering shares: the results' protocol (``as_dict()`` for JSON, ``str()``
for people), the exponent formulas, the table layout and the depth note.

Derivations render in :mod:`tensorprog.engine.derivation`, classifications in
:mod:`tensorprog.engine.classify`. Exponents in JSON are strings sympy parses ("1/2", "-1",
"oo"); W = n^-a·w, w ~ N(0, (σ·n^-b)²), and the learning rate is η·n^-c.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..ir.program import Program
from .exponents import INF, Exp, power, scaled

# --- the results' protocol ----------------------------------------------------------------------
# Every result renders both ways (a derivation, a classification, a coordinate check, a transfer
# sweep, a limit, the report of applying µP to a model), so the command line prints str(result)
# or json.dumps(result.as_dict()) and nothing else needs to know how a result is laid out.
# Exponents appear in as_dict() as strings sympy parses ("1/2", "-1", "oo").


@runtime_checkable
class Result(Protocol):
    def as_dict(self) -> dict:
        """The result as plain JSON-serialisable data."""
        ...

    def __str__(self) -> str:
        """The result as text for people (what the command line prints)."""
        ...


CONVENTION_LINE = "W = n^-a·w,  w ~ N(0, (σ·n^-b)²),  learning rate η·n^-c"


def shape_text(program: Program, name: str) -> str:
    return "[" + ", ".join(program.param_table[name].shape) + "]"


def fan_text(dim: str | None) -> str:
    return "1" if dim is None else dim


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def param_formulas(a: Exp, b: Exp, c: Exp) -> dict[str, str]:
    """A scale (c = oo, never trained) shows only its multiplier: its value is fixed."""
    return {"init_std": "-" if c is INF else (scaled("σ", -b) if b is not INF else "0"),
            "multiplier": power(-a), "lr": "-" if c is INF else scaled("η", -c)}


def depth_note(p: Program) -> str | None:
    """What a declared depth means for width exponents shown without depth ones, said plainly."""
    if p.depth is None:
        return None
    L = p.depth.name
    return (f"depth {L} (base {p.depth.base}): no exponents in {L} here (no depth scaling; the "
            f"width exponents hold at any fixed depth)")


def program_depth_json(p: Program) -> dict | None:
    """A program's depth with no exponents in it (none derived, or a classification's)."""
    if p.depth is None:
        return None
    return {"name": p.depth.name, "base": p.depth.base, "exponents": None, "note": depth_note(p)}
