"""Lowering ``part(x, d, i)``: coordinates i·d .. (i+1)·d - 1 of x, its i-th part of d.

Gemma 4's per-layer inputs are one vector of L·d features per token (an embedding and a
projection, normalised per part), of which layer i reads part i (torch's ``p[:, :, i, :]`` of
p viewed (batch, tokens, L, d)). x's dim must be a whole number k of d's, k fixed (both dims
finite, or both growing with the width), and 0 <= i < k: the checks are the verifier's
(``tensorprog.ir.verify``), reported at the call.
"""

from __future__ import annotations

from ..ir.functions import PART
from ..ir.program import Nonlin
from ..ir.spread import part_count
from .ast import Call

_USAGE = ("write part(x, d, i): x a vector of k·d coordinates (`dim d = n / 8`, x of dim "
          "`dim ld = n / 4`: k = 2 parts), d a declared dim and i a whole number, 0 <= i < k")


def part_operands(low, node: Call):
    """(the operands to lower, the state): x, and the dim and index of the part."""
    if len(node.args) != 3:
        low.errors.error(f"part takes 3 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    d, i = node.args[1:]
    if type(d).__name__ != "Var" or d.name not in low.dims:
        low.errors.error("the second argument of part must be a declared dim (the part's "
                         "coordinates)", d.span, _USAGE)
        return None, None
    if type(i).__name__ != "Num" or i.value.denominator != 1 or i.value < 0:
        low.errors.error("the third argument of part must be a whole number >= 0 (which part)",
                         i.span, _USAGE)
        return None, None
    return node.args[:1], (PART, (d.name, int(i.value)))


def lower_part(low, node: Call, args: list, state: tuple[str, int], vec: type):
    """The Nonlin ``part`` of a call, or None (errors reported)."""
    (x,) = args
    if x is None:
        return None
    d, index = state
    dims = low.dims
    if not isinstance(x, vec) or x.dim is None or x.dim not in dims or x.dim in low.heads_dims:
        low.errors.error("part needs a vector", node.args[0].span, _USAGE)
        return None
    have, want = dims[x.dim], dims[d]
    k = part_count(have, want)
    if k is None or k != int(k) or not index < k:
        what = (f"{x.dim} and {d} do not both grow with the width: the number of parts would "
                "change with it (part reads one of a fixed number of parts)" if k is None else
                f"{x.dim} is not a whole number of parts of {d}" if k != int(k) else
                f"{x.dim} has {int(k)} parts of {d}, none numbered {index}")
        low.errors.error(f"part({x.dim}, {d}, {index}): {what}", node.span, _USAGE)
        return None
    arg = low.name_of(x, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), PART, (arg,), node.span, d, index=index), d)
    return low.vec(out, d)
