"""Verifying ``delta(sq, sk, b, g)`` (the gated delta rule's weights, ir/delta.py): what its
rules and its emitted form assume of the operands, each refused at the call otherwise."""

from __future__ import annotations

from fractions import Fraction

from ..errors import Collector
from .ddot import DDOT
from .delta import Delta
from .functions import MUL
from .program import Dot, Mix, Nonlin, Program, split_heads_dim

_USAGE = ("write p = delta(tau * dot(q, k, dk), kap * dot(k, k, dk), b, g) and o = mix(p, v, dv): "
          "b and g one number per head and token (b = sigmoid(Wb @ h), g <= 0); with a decay per "
          "key channel, delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, g, dk), b)")


def _dot(program: Program, name: str) -> Dot | None:
    """The per-head dot ``name`` is, alone or times scales (``tau * dot(q, k, dk)``): a Dot,
    or a ``ddot(q, k, g, dk)`` read as the Dot of its q and k (its decay: :func:`_decay`)."""
    ins = program.producer.get(name)
    if isinstance(ins, Nonlin) and ins.fn == MUL:
        table = program.param_table
        rest = [a for a in ins.args if a not in table or not table[a].is_scale]
        ins = program.producer.get(rest[0]) if len(rest) == 1 else None
    if isinstance(ins, Nonlin) and ins.fn == DDOT and len(ins.args) == 3:
        ins = Dot(ins.out, ins.args[0], ins.args[1], ins.span, ins.over)
    return ins if isinstance(ins, Dot) and ins.over is not None else None


def _decay(program: Program, dot: Dot) -> str | None:
    """The decay per key channel of a ``ddot`` read as ``dot`` (None: a plain dot)."""
    ins = program.producer.get(dot.out)
    return ins.args[2] if isinstance(ins, Nonlin) and ins.fn == DDOT else None


def verify_delta(program: Program, ins: Delta, ops: list, key, errors: Collector) -> str | None:
    """sq a per-head dot of queries with keys, sk the same keys with themselves over the same
    head dim, b and g vectors with one entry per head; the weights read by mix only. Returns
    the output's dim (sq's heads)."""
    if (ins.head is None) != (ins.dim is None):
        errors.error(f"delta(sq, sk, b, g, dv, D) names both the values' head dim and their dim, "
                     f"got {ins.head or 'no head dim'} and {ins.dim or 'no dim'}", ins.span,
                     "give both (grouped value heads) or neither")
        return None
    sq, sk = _dot(program, ins.scores), _dot(program, ins.keys)
    if sq is None:
        errors.error("delta's first argument must be a per-head dot of queries "
                     "with keys, dot(q, k, dk), alone or times a scale", ins.span, _USAGE)
        return None
    if key(program.value_dims[sq.left]) != key(program.value_dims[sq.right]):
        errors.error("delta needs queries and keys in as many heads (grouped keys are not "
                     "supported here)", ins.span, "give q and k the same dim")
        return None
    if sk is None or sk.left != sk.right or sk.left != sq.right or sk.over != sq.over:
        what = ("no per-head dot" if sk is None else
                f"dot({sk.left}, {sk.right}, {sk.over})")
        errors.error(f"delta's second argument must be the keys {sq.right} with "
                     f"themselves over {sq.over}, dot({sq.right}, {sq.right}, {sq.over}): the "
                     f"state's update (I - b k kᵀ) reads each key against the earlier ones; "
                     f"got {what}", ins.span, _USAGE)
        return None
    if _decay(program, sq) != _decay(program, sk):
        errors.error(f"delta's dots must be decayed alike: the state's decay per key channel "
                     f"weighs the scores and the keys' products the same, but they read "
                     f"{_decay(program, sq) or 'none'} and {_decay(program, sk) or 'none'}",
                     ins.span, "write delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, g, dk), "
                     "b) with one g")
        return None
    heads = ops[0]
    if ins.head is not None:  # grouped: the values' heads, a whole number r per key head
        heads = program.value_dims[ins.out]
        table = program.dim_table
        theirs, mine = table.get(ops[0]), table.get(heads)
        r = None if theirs is None or mine is None or theirs.infinite != mine.infinite else (
            mine.mult / theirs.mult if mine.infinite else Fraction(mine.size, theirs.size))
        if r is None or r.denominator != 1 or r < 1:
            errors.error(f"delta(sq, sk, b, g, {ins.head}, {ins.dim}): the values' heads "
                         f"{heads} must be a whole, fixed number of the dots' heads {ops[0]}",
                         ins.span, _USAGE)
            return None
    for name, dim, what in ((ins.beta, ops[2], "b"), (ins.decay, ops[3:4] and ops[3], "g")):
        if name is None:  # delta(sq, sk, b): no decay per head
            continue
        if dim is None or heads is None or key(dim) != key(heads):
            count = split_heads_dim(heads or "")
            errors.error(f"delta's {what} ({name}) must have one entry per head of the dots, "
                         f"{count[0]} / {count[1]} heads, but it is "
                         f"{'a scalar' if dim is None else f'of dim {dim}'}", ins.span,
                         f"compute it as a vector of a dim of that many heads, e.g. "
                         f"`param Wb : [H, n]` with `dim H = {count[0]} / {count[1]}` "
                         "counted out, then sigmoid(Wb @ h)")
            return None
    for use in program.uses(ins.out):
        if not (isinstance(use, Mix) and use.weights == ins.out):
            errors.error(f"the delta rule's weights {ins.out} are read only by mix(p, v, dv), "
                         "its token mixing, not as a value", use.span,
                         "write o = mix(delta(sq, sk, b, g), v, dv)")
    return heads
