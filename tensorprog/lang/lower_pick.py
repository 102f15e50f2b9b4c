"""Lowering ``pick(y, D, i1, ..., ik)``: coordinates i1, ..., ik of y, in that order, a vector
of D (k coordinates).

ShieldGemma-2 answers with its LM's logits at two ids of the vocabulary, Yes and No
(``logits[:, -1, [yes, no]]``): ``pick(U @ last(h), D, yes, no)`` with ``dim D = 2``. y must be a
vector of a finite declared dim (a growing one would send its gradient to finitely many of
infinitely many coordinates, which no rule here reads), D a declared finite dim of k
coordinates, and each id a whole number below y's dim: the verifier's checks
(``tensorprog.ir.verify``), reported here at the call.
"""

from __future__ import annotations

from ..ir.functions import PICK
from ..ir.program import Nonlin
from .ast import Call

_USAGE = ("write pick(y, D, i1, i2, ...): y a vector of a finite dim, D the declared dim of the "
          "k ids (`dim D = 2`), each id a coordinate of y (0 to its dim - 1)")


def pick_operands(low, node: Call):
    """(the operands to lower, the state): y, and (D, the ids)."""
    if len(node.args) < 3:
        low.errors.error(f"pick takes a vector, a dim and one id or more, got {len(node.args)} "
                         "arguments", node.span, _USAGE)
        return None, None
    d = node.args[1]
    if type(d).__name__ != "Var" or d.name not in low.dims:
        low.errors.error("the second argument of pick must be a declared dim (the ids' "
                         "coordinates)", d.span, _USAGE)
        return None, None
    for k in node.args[2:]:
        if type(k).__name__ != "Num" or k.value.denominator != 1 or k.value < 0:
            low.errors.error("the ids of pick must be whole numbers, 0 or more", k.span, _USAGE)
            return None, None
    return node.args[:1], (PICK, (d.name, tuple(int(k.value) for k in node.args[2:])))


def lower_pick(low, node: Call, args: list, state: tuple, vec: type):
    """The Nonlin ``pick`` of a call, or None (errors reported)."""
    (y,), (d, ids) = args, state
    if y is None:
        return None
    dims = low.dims
    if not isinstance(y, vec) or y.dim is None or y.dim not in dims or y.dim in low.heads_dims:
        low.errors.error("pick keeps coordinates of a vector: it needs a vector of a declared "
                         "dim", node.args[0].span, _USAGE)
        return None
    if dims[y.dim].infinite:
        low.errors.error(f"pick of coordinates of a vector of {y.dim}, which grows with the "
                         "width: pick keeps coordinates of a finite vector only", node.span,
                         "pick a readout's outputs (a vector of a finite dim, e.g. the logits)")
        return None
    size = dims[y.dim].size
    if dims[d].infinite or dims[d].size != len(ids) or any(i >= size for i in ids):
        low.errors.error(f"pick({y.dim}, {d}, {', '.join(map(str, ids))}): {d} must have one "
                         f"coordinate per id ({len(ids)}), and each id be below {y.dim}'s "
                         f"{size}", node.span, _USAGE)
        return None
    arg = low.name_of(y, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), PICK, (arg,), node.span, d, index=ids), d)
    return low.vec(out, d)
