"""Lowering ``ddot(q, k, g, dk)``: a per-head dot decayed per key channel (Kimi Delta Attention's
scores and key-key products, ``tensorprog.ir.ddot``).

q, k and g are vectors per token of one dim H·dk (g the log decay, one number per key channel),
dk the head dim; the value is a per-head dot's, one number per head and token pair, read by
``delta(sq, sk, b)``. What is refused here is said at the argument at fault; the sequence
checks are the verifier's.
"""

from __future__ import annotations

from ..ir.ddot import DDOT, USAGE
from ..ir.program import Nonlin
from .ast import Call


def ddot_operands(low, node: Call):
    """(the operands to lower, the state): q, k, g, and the head dim named by the fourth."""
    if len(node.args) != 4:
        low.errors.error(f"ddot takes 4 arguments, got {len(node.args)}", node.span, USAGE)
        return None, None
    dk = node.args[3]
    if type(dk).__name__ != "Var" or dk.name not in low.dims:
        low.errors.error(
            "the fourth argument of ddot must be a declared dim, the head dim", dk.span, USAGE
        )
        return None, None
    return node.args[:3], (DDOT, dk.name)


def lower_ddot(low, node: Call, args: list, over: str, vec: type):
    """The Nonlin ``ddot`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    for arg, v, what in zip(node.args, args, ("queries", "keys", "decay"), strict=False):
        if not isinstance(v, vec) or v.dim is None or v.dim not in low.dims:
            low.errors.error(
                f"ddot's {what} must be a vector of a declared dim, per token", arg.span, USAGE
            )
            return None
        if not low.same_dim(v.dim, args[0].dim):
            low.errors.error(
                f"ddot's {what} {'is' if what == 'decay' else 'are'} [{v.dim}] but "
                f"its queries are [{args[0].dim}]: keys of the queries' heads and "
                "one decay per key channel",
                arg.span,
                USAGE,
            )
            return None
    if not low.compares_tokens(args, node):
        return None
    dim = low.heads(args[0].dim, over, node)
    if dim is None:
        return None
    names = [low.name_of(v, node.span) for v in args]
    out = low.emit(Nonlin(low.fresh(low.target), DDOT, tuple(names), node.span, over), dim)
    return low.vec(out, dim)
