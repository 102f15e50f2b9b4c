"""Lowering ``rms(x, D)``: the root mean square of x's coordinates, one number per token, as a
vector of D (one coordinate).

Gemma 3n's AltUp rescales each of its streams to the embedding's RMS, ``h * RMS(e) / RMS(h)``:
``spread(rms(e, D), n) * rmsnorm(h)`` with ``dim D = 1``. x must be a vector of a declared dim
(not viewed per head) and D a declared dim of one coordinate: the verifier's checks
(``tensorprog.ir.verify``), reported here at the call.
"""

from __future__ import annotations

from ..ir.functions import RMS
from ..ir.program import Nonlin
from .ast import Call

_USAGE = ("write rms(x, D): x a vector of a declared dim, D a declared dim of one coordinate "
          "(`dim D = 1`); spread(rms(x, D), d) lays it over d coordinates")


def rms_operands(low, node: Call):
    """(the operands to lower, the state): x, and D."""
    if len(node.args) != 2:
        low.errors.error(f"rms takes 2 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    d = node.args[1]
    if type(d).__name__ != "Var" or d.name not in low.dims:
        low.errors.error("the second argument of rms must be a declared dim (of one "
                         "coordinate)", d.span, _USAGE)
        return None, None
    return node.args[:1], (RMS, d.name)


def lower_rms(low, node: Call, args: list, d: str, vec: type):
    """The Nonlin ``rms`` of a call, or None (errors reported)."""
    (x,) = args
    if x is None:
        return None
    dims = low.dims
    if not isinstance(x, vec) or x.dim is None or x.dim not in dims or x.dim in low.heads_dims:
        low.errors.error("rms is over a vector's coordinates: it needs a vector of a declared "
                         "dim", node.args[0].span, _USAGE)
        return None
    if dims[d].infinite or dims[d].size != 1:
        low.errors.error(f"rms(x, {d}) gives one number per token: {d} must have one "
                         f"coordinate (`dim {d} = 1`), not {dims[d].size or d}", node.span,
                         _USAGE)
        return None
    arg = low.name_of(x, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), RMS, (arg,), node.span, d), d)
    return low.vec(out, d)
