"""Lowering ``hdot(u, v, dh)``: the dot of each head of u with the same head of v, one token's,
one number per head and token (``tensorprog.ir.hdot``).

u and v are vectors per token of one declared dim D, dh a declared dim, and the result a vector
of H, the declared dim of D/dh's size (the width first, as ``spread``'s result); ``spread(hdot(u,
v, dh), dh)`` lays it back over the heads. What is refused is said at the argument at fault.
"""

from __future__ import annotations

from ..ir.hdot import HDOT, USAGE, hdot_dim
from ..ir.program import Nonlin
from .ast import Call


def hdot_operands(low, node: Call):
    """(the operands to lower, the state): u, v, and the head dim named by the third."""
    if len(node.args) != 3:
        low.errors.error(f"hdot takes 3 arguments, got {len(node.args)}", node.span, USAGE)
        return None, None
    dh = node.args[2]
    if type(dh).__name__ != "Var" or dh.name not in low.dims:
        low.errors.error(
            "the third argument of hdot must be a declared dim, the head dim", dh.span, USAGE
        )
        return None, None
    return node.args[:2], (HDOT, dh.name)


def lower_hdot(low, node: Call, args: list, dh: str, vec: type):
    """The Nonlin ``hdot`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    for arg, v in zip(node.args, args, strict=False):
        if (
            not isinstance(v, vec)
            or v.dim is None
            or v.dim not in low.dims
            or v.dim in low.heads_dims
        ):
            low.errors.error(
                "hdot's arguments must be vectors per token of a declared dim "
                "(not attention logits or weights)",
                arg.span,
                USAGE,
            )
            return None
    u, v = args
    if not low.same_dim(u.dim, v.dim):
        low.errors.error(
            f"hdot of [{u.dim}] and [{v.dim}]: both sides need one dim", node.args[1].span, USAGE
        )
        return None
    width = low.width.name if low.width is not None else None
    dims = {**({width: low.dims[width]} if width in low.dims else {}), **low.dims}
    out_dim = hdot_dim(dims, u.dim, dh)
    if out_dim is None:
        low.errors.error(
            f"hdot({u.dim} over heads of {dh}): {u.dim} is no whole number of "
            f"heads of {dh}, or no declared dim has that many",
            node.span,
            "declare the heads' count (`dim H = n / 16` for dh = 16, `dim H = 4` for dh = n / 4)",
        )
        return None
    names = [low.name_of(a, node.span) for a in args]
    out = low.emit(Nonlin(low.fresh(low.target), HDOT, tuple(names), node.span, dh), out_dim)
    return low.vec(out, out_dim)
