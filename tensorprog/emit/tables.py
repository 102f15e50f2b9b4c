"""The numbers of the emitted SCALING, WIDTH_RULES and size tables that are not exponents: each
param's fan-in at the base width (whose -1/2 power is its base std), the steps the width must be
a multiple of for every dim that is a fraction of it, and the model's size against its limits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from fractions import Fraction

from ..engine.terms import fan_dims
from ..errors import CodegenError
from ..ir.functions import CAT
from ..ir.program import ONE_HOT_KINDS, MatMul, Nonlin, Param, Program
from .literals import finite_float, quoted


def _sums(program: Program, param: str) -> list[tuple[Fraction, int]]:
    """The nonzero coordinates that reach each sum the param takes part in, as (k, p): k *
    base_width**p. A matrix used as W @ x sums over its last axis, W.T @ x over its first;
    a lookup of a one-hot input (``tokens``, ``positions``) has one nonzero coordinate
    whatever the vocabulary. A kernel's kh x kw window counts too."""
    shape = program.param_table[param].shape
    kinds = {i.name: i.kind for i in program.inputs}
    sums = []
    for u in program.uses(param):
        if not isinstance(u, MatMul) or len(shape) < 2:
            continue
        if kinds.get(u.arg) in ONE_HOT_KINDS:
            sums.append((Fraction(1), 0))
            continue
        d = program.dim_table[shape[0] if u.transposed else shape[1]]
        k, p = (d.mult, 1) if d.infinite else (Fraction(d.size), 0)
        for w in shape[2:]:
            k *= program.dim_table[w].size
        sums.append((k, p))
    return sums


def fan_in_at_base(program: Program, param: str) -> tuple[Fraction, int]:
    """A param's fan-in as (k, p): k * base_width**p at the base width, whose -1/2 power is the
    param's base std: the largest number of nonzero coordinates that reach one of its sums,
    so none of them starts above unit size at the base. A lookup of a one-hot input gets 1
    (base std 1, as a bias fed the constant 1), not the vocabulary: 1/sqrt(vocab) starts a
    GPT-2-sized embedding at 0.0045. A tied embedding is also summed over the width by its
    transposed use, so it starts at 1/sqrt(width) there: its readout then starts at unit
    size with a tie multiplier of 1 at the base, as an untied readout does. A vector (bias,
    gain, readout vector) keeps its fan-in from ``fan_dims``."""
    sums = _sums(program, param)
    if sums:
        base = program.width.base
        k, power = max(sums, key=lambda s: (s[0] * base ** s[1], s[1]))
    else:
        fan_in, _ = fan_dims(program, param)
        k, power = Fraction(1), 0
        if fan_in is not None:
            d = program.dim_table[fan_in]
            k, power = (d.mult, 1) if d.infinite else (Fraction(d.size), 0)
        for w in program.param_table[param].shape[2:]:
            k *= program.dim_table[w].size
    finite_float(k, f"the fan-in of {param}", program.param_table[param].span)
    return k, power


def width_rules(program: Program) -> list[tuple[str, int]]:
    """(rule, step) for every dim that is a fraction of the width: it is a whole number
    exactly when the width is a multiple of step (the fraction's denominator). Heads of a
    per-head dot are dims too, so a head dim that must divide the width is here."""
    w = program.width.name
    rules = []
    for d in program.dim_table.values():
        if d.infinite and d.mult.denominator != 1:
            m = d.mult
            rule = (f"{w} / {m.denominator}" if m.numerator == 1
                    else f"{m.numerator} * {w} / {m.denominator}")
            name = f"the head count {d.name}" if "/" in d.name else f"dim {d.name}"
            rules.append((f"{name} = {rule}", m.denominator))
    return rules + _cat_heads_rules(program)


def _cat_heads_rules(program: Program) -> list[tuple[str, int]]:
    """(rule, step) for ``cat(a, b, D, dv)``: its heads, D / dv, when they grow with the width
    (dv finite), or each part's coordinates in each of its fixed number of heads (dv growing):
    whole numbers only at some widths (D = 2n in heads of dv = 8 at n = 10 would be cut into
    heads of 10, silently)."""
    table, dims, w = program.dim_table, program.value_dims, program.width.name
    rules = []
    for ins in program.body:
        if not (isinstance(ins, Nonlin) and ins.fn == CAT and ins.heads):
            continue
        whole, head = table[ins.over], table[ins.heads]
        if not whole.infinite:
            continue
        if not head.infinite:  # heads of a fixed dv, as many as D grows
            counts = [(f"the heads {ins.over} / {ins.heads} of {ins.out}", whole.mult / head.size)]
        else:  # a fixed number of heads: each part's share of a head
            count = whole.mult / head.mult
            counts = [(f"{a}'s coordinates in each head of {ins.out}", table[dims[a]].mult / count)
                      for a in ins.args if table[dims[a]].infinite]
        rules += [(f"{name} = {m.numerator} * {w} / {m.denominator}", m.denominator)
                  for name, m in counts if m.denominator != 1]
    return rules


# The most an emitted Model builds, checked before anything is allocated: 10**11 parameters
# are 400 GB of float32 weights, more than one machine holds; and each block repetition is a
# Python submodule of its own, about a millisecond to build, so 10**5 take minutes and the
# 10**8 of ``repeat 100000000`` would never finish.
MAX_PARAMS = 10**11
MAX_REPEATS = 10**5


def size_code(program: Program, params: Sequence[Param], blocks: Collection[str]) -> list[str]:
    """The emitted size tables: PARAM_COUNT (each param Model builds, as k * width**p entries,
    with its block) and REPEATS (each block's repetitions: a number, or "depth"), which
    ``_check_size`` reads before Model builds anything. Refuses at emit time (CodegenError at
    the ``repeat``) a program whose repeat counts alone pass the limits at the smallest width
    any model can have."""
    counts = {s.block: (1 if s.count is None else s.count) for s in program.streams
              if s.block in blocks}
    terms = []
    for p in params:
        k, power = Fraction(1), 0
        for dim in p.shape:
            d = program.dim_table[dim]
            k, power = (k * d.mult, power + 1) if d.infinite else (k * d.size, power)
        terms.append((p.name, k, power, program.owner.get(p.name)))
    _refuse_fixed_repeats(program, counts, terms)
    lines = [f"MAX_PARAMS = {MAX_PARAMS}", f"MAX_REPEATS = {MAX_REPEATS}",
             "# the entries of each param: k * width**p, times its block's repetitions",
             "PARAM_COUNT = (" + ("" if terms else ")")]
    for name, k, power, block in terms:
        where = "None" if block is None else quoted(block)
        lines.append(f"    ({finite_float(k, f'the size of {name}', None)!r}, {power}, {where}),")
    if terms:
        lines.append(")")
    reps = ", ".join(f"{quoted(b)}: {c if isinstance(c, int) else quoted('depth')}"
                     for b, c in counts.items())
    return [*lines, f"REPEATS = {{{reps}}}"]


def _refuse_fixed_repeats(program: Program, counts: dict, terms: list) -> None:
    """A fixed repeat count that alone passes a limit (at the smallest width) has no model."""
    step = 1
    for _, s in width_rules(program):
        step = step * s // math.gcd(step, s)
    for stream in program.streams:
        if stream.block not in counts or not isinstance(stream.count, int):
            continue
        params = sum(k * step**p for _, k, p, b in terms if b == stream.block) * stream.count
        if stream.count > MAX_REPEATS or params > MAX_PARAMS:
            what = (f"{stream.count:,} repetitions, more than the {MAX_REPEATS:,} submodules"
                    if stream.count > MAX_REPEATS else
                    f"{math.ceil(params):,} parameters even at width {step}, more than the "
                    f"{MAX_PARAMS:,}")
            raise CodegenError(f"repeat {stream.count} {stream.block}: the emitted module builds "
                               f"one submodule per repetition, {what} it can build", stream.span,
                               help="use fewer repetitions, or a depth (`depth L = 4`, "
                                    "`repeat L ...`) to choose at Model(width, depth)")
