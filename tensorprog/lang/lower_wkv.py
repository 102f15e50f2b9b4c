"""Lowering ``wkv(g, u, k, v)``: RWKV's time mixing per channel (``tensorprog.ir.wkv``).

g (the log decay per token, ``-1 * exp(w)``) and u (the current token's bonus) are values of a
declared dim D without tokens, params or functions of params; k and v vectors per token of D.
The value is a vector per token of D. What is refused here is said at the argument at fault;
the sequence checks are the verifier's.
"""

from __future__ import annotations

from ..ir.program import Nonlin
from ..ir.wkv import USAGE, WKV
from .ast import Call


def wkv_operands(low, node: Call):
    """(the operands to lower, the state): g, u, k and v, no other argument."""
    if len(node.args) != 4:
        low.errors.error(f"wkv takes 4 arguments, got {len(node.args)}", node.span, USAGE)
        return None, None
    return node.args, (WKV, None)


def lower_wkv(low, node: Call, args: list, _over, vec: type):
    """The Nonlin ``wkv`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    what = ("decay", "bonus", "keys", "values")
    for arg, v, name in zip(node.args, args, what, strict=True):
        if not isinstance(v, vec) or v.dim is None or v.dim not in low.dims:
            low.errors.error(f"wkv's {name} must be a vector of a declared dim", arg.span, USAGE)
            return None
        if not low.same_dim(v.dim, args[2].dim):
            low.errors.error(
                f"wkv's {name} are [{v.dim}] but its keys [{args[2].dim}]: one of each per channel",
                arg.span,
                USAGE,
            )
            return None
    for arg, v, name in zip(node.args[:2], args[:2], what, strict=False):
        if any(t in low.tokenwise or t in low.one_token for t in v.terms):
            low.errors.error(
                f"wkv's {name} is one number per channel, the same at every token, "
                "but this one is computed from the inputs",
                arg.span,
                "use a param of the keys' dim, or a function of one: -1 * exp(w)",
            )
            return None
    if not low.compares_tokens(args[2:], node):
        return None
    names = [low.name_of(v, node.span) for v in args]
    out = low.emit(Nonlin(low.fresh(low.target), WKV, tuple(names), node.span, None), args[2].dim)
    return low.vec(out, args[2].dim)
