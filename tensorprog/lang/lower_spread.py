"""Lowering ``spread(g, dh)``: one number per head over each head's dh coordinates.

g is a vector of H entries (a value, or a vector param); the result has H·dh coordinates,
coordinate (h, i) being g_h for each of the dh coordinates i of head h: torch's
``g.repeat_interleave(dh, -1)``, or ``g.unsqueeze(-1)`` against a (…, H, dh) view. It is
multiplied with a vector of H·dh (Laguna's per-head attention gate, ``o * spread(softplus(Wg
@ h), dh)`` with ``Wg : [H, n]``) or added to one (Beam's per-head gate bias, ``Wg @ h +
spread(b, dh)`` with ``param b : [H]``). H = 1 is one number for the whole vector (FocalNet's
gate per pixel, ``spread(g, C)`` with g of ``dim one = 1``).

The result's dim is a declared one of H·dh's size (the width, then the declared dims in order:
``tensorprog.ir.program.spread_dim``); H and dh may not both grow with the width (n² coordinates).
A vector param of a head dim times a vector (``g * rmsnorm(q, dh)``, g : [dh]) is the other
broadcast, the same dh coordinates for every head: ``spread`` says which one is meant.
"""

from __future__ import annotations

from ..ir.functions import SPREAD
from ..ir.program import Nonlin
from ..ir.spread import spread_dim
from .ast import Call

_USAGE = ("write spread(g, dh): g a vector with one entry per head (`dim H = 4`, g of dim H) and "
          "dh a declared dim, each head's coordinates (`dim dh = n / 4`), so that H·dh is the "
          "dim of the vector it joins")


def spread_operands(low, node: Call):
    """(the operands to lower, the state): g, and the head dim named by the second argument."""
    if len(node.args) != 2:
        low.errors.error(f"spread takes 2 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    dh = node.args[1]
    if type(dh).__name__ != "Var" or dh.name not in low.dims:
        low.errors.error("the second argument of spread must be a declared dim (each head's "
                         "coordinates)", dh.span, _USAGE)
        return None, None
    return node.args[:1], (SPREAD, dh.name)


def lower_spread(low, node: Call, args: list, dh: str, vec: type):
    """The Nonlin ``spread`` of a call, or None (errors reported)."""
    (g,) = args
    if g is None:
        return None
    if not isinstance(g, vec) or g.dim is None or g.dim in low.heads_dims:
        what = ("attention logits or weights" if isinstance(g, vec) and g.dim in low.heads_dims
                else "a scalar" if isinstance(g, vec) else "no vector")
        low.errors.error(f"spread needs a vector of one entry per head, got {what}",
                         node.args[0].span, _USAGE)
        return None
    width = low.width.name if low.width is not None else None
    dims = {**({width: low.dims[width]} if width in low.dims else {}), **low.dims}
    out_dim = spread_dim(dims, g.dim, dh)
    if out_dim is None:
        both = dims[g.dim].infinite and dims[dh].infinite
        low.errors.error(
            f"spread({g.dim} entries over {dh} coordinates each): "
            + ("both grow with the width, n² coordinates" if both else
               f"no declared dim has {g.dim}·{dh}'s size"), node.span,
            "declare the dim of the vector the heads make up (`dim d = ...`), or fix H or dh"
            if not both else _USAGE)
        return None
    arg = low.name_of(g, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), SPREAD, (arg,), node.span, dh), out_dim)
    return low.vec(out, out_dim)
