"""The numbers of the emitted SCALING and WIDTH_RULES tables that are not exponents: each param's
fan-in at the base width (whose -1/2 power is its base std), and the steps the width must be a
multiple of for every dim that is a fraction of it.
"""

from __future__ import annotations

from fractions import Fraction

from ..engine.rules import fan_dims
from ..ir.program import MatMul, Program
from .literals import finite_float


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
        if kinds.get(u.arg) in ("tokens", "positions"):
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
    return rules
