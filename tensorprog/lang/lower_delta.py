"""Lowering ``delta(sq, sk, b, g)``: the weights of the gated delta rule's token mixing (linear
attention as Gated DeltaNet computes it; ir/delta.py has the meaning).

sq and sk are per-head dots, ``tau * dot(q, k, dk)`` and ``kap * dot(k, k, dk)`` (the keys with
themselves); b and g are vectors with one entry per head, per token: the write strength
``b = sigmoid(Wb @ h)`` and the log of the decay, ``g <= 0``. ``delta(sq, sk, b)`` has no decay
per head: with dots decayed per key channel, ``ddot(q, k, g, dk)`` (Kimi Delta Attention). The
result is read by ``mix(p, v, dv)``. ``delta(sq, sk, b, g, dv, D)``: the values (of dim D, in
heads of dv) have r times the dots' heads, each query/key head serving r consecutive value heads
(Qwen3-Next's 16 key heads and 32 value heads); b and g then have the values' heads, r finite.
The checks on which dots these are run in the verifier (ir/verify_delta.py), positioned at this
call.
"""

from __future__ import annotations

from fractions import Fraction

from ..ir.program import Delta
from .ast import Call

DELTA = "delta"
_USAGE = ("write delta(tau * dot(q, k, dk), kap * dot(k, k, dk), b, g): the scores, the keys "
          "with themselves, then b and g, one number per head (b = sigmoid(Wb @ h), g <= 0)")


def delta_operands(low, node: Call):
    """(the values to lower, (dv, D)) of ``delta(sq, sk, b, g, dv, D)``; (None, None) where dv
    or D is not a declared dim (reported)."""
    for arg, what in zip(node.args[4:], ("fifth argument of delta must be the values' head dim",
                                         "sixth argument of delta must be the values' dim"),
                         strict=True):
        if type(arg).__name__ != "Var" or arg.name not in low.dims:
            low.errors.error(f"the {what}", arg.span,
                             "e.g. `dim dv = 16` and `dim D = 2 * n` for values in twice the "
                             "dots' heads, then delta(sq, sk, b, g, dv, D) and mix(p, v, dv)")
            return None, None
    return node.args[:4], (node.args[4].name, node.args[5].name)


def _groups(low, keys, values, node) -> bool:
    """Whether the values' heads are a whole, finite number r of the dots' heads at every width
    (both counts fixed, or both growing alike); reports the error where not."""
    base = low.width.base if low.width else 1
    k, v = keys.size_at(base), values.size_at(base)
    fix = ("give the values r times the dots' heads, both fixed or both growing with the width "
           "(`dim D = 2 * n` with the same head dim)")
    if keys.infinite != values.infinite:
        low.errors.error(f"delta's values have {v} heads at the base width and its dots {k}, but "
                         "one count grows with the width and the other does not: the value heads "
                         "per key head would not be a fixed number, which the engine does not "
                         "derive", node.span, fix)
        return False
    ratio = values.mult / keys.mult if keys.infinite else Fraction(v, k)
    if ratio.denominator != 1 or ratio < 1:
        low.errors.error(f"delta's values have {v} heads at the base width and its dots {k}: "
                         "each key head must serve a whole number of value heads", node.span, fix)
        return False
    return True


def lower_delta(low, node: Call, args: list, over, vec: type):
    """The Delta of a ``delta`` call, or None (errors reported); ``over`` is (dv, D) of the
    grouped form; ``vec`` is the lowering's pending vector type."""
    if any(a is None for a in args):
        return None
    if not all(isinstance(a, vec) for a in args):
        low.errors.error("delta needs the two dots and the vectors b and g, got a constant",
                         node.span, _USAGE)
        return None
    sq, sk, b = args[:3]
    g = args[3] if len(args) > 3 else None  # delta(sq, sk, b): no decay per head
    if sq.dim not in low.heads_dims or sk.dim != sq.dim:
        low.errors.error(f"delta's first two arguments are per-head dots over one head dim, got "
                         f"{low.dim_text(sq.dim)} and {low.dim_text(sk.dim)}", node.span, _USAGE)
        return None
    out = sq.dim
    if over is not None:  # the values' own heads, r of them per key head
        out = low.heads(over[1], over[0], node)
        if out is None or not _groups(low, low.heads_dims[sq.dim], low.heads_dims[out], node):
            return None
    heads = low.heads_dims[out]
    for what, v in (("b", b), ("g", g)):
        if v is None:
            continue
        if v.dim is None or v.dim in low.heads_dims or low.dims[v.dim].key() != heads.key():
            count = heads.expr(low.width.name if low.width else "n")
            low.errors.error(f"delta's {what} must have one entry per {'value ' * bool(over)}"
                             f"head ({count} heads), got {low.dim_text(v.dim)}", node.span,
                             f"declare the heads, `dim H = {count}`, and compute {what} of it, "
                             "e.g. sigmoid(Wb @ h) with `param Wb : [H, n]`")
            return None
    names = [low.name_of(a, node.span) for a in args] + [None] * (4 - len(args))
    head, dim = over if over is not None else (None, None)
    made = low.emit(Delta(low.fresh(low.target), *names, node.span, head, dim), out)
    return low.vec(made, out)
