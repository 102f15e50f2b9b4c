"""What a program's values are made of, beyond their dims: which are computed from params alone
(a function of a gain, Ergo's ``sqrt(1 + sigmoid(w))``), and an interval that holds every
coordinate of a value.

Two of the language's forms need them, and the verifier checks both here:

* a number added to a vector (``LinComb.const``) only to a value of params alone: a function of
  a trained param, shifted; a constant added to a per-token vector has no form (a bias param
  does that job, and learns its size);
* ``sqrt`` only of a value bounded below by a positive number: √x's slope 1/(2√x) grows without
  bound near 0, so near 0 a change of x does not pass through at its own size (√(Δx) is larger
  than Δx), and no rule of the engine would stand behind it. Above m > 0 the slope is at most
  1/(2√m), and sqrt is in softplus's class (ir/functions.py).

The intervals are interval arithmetic over the instructions, a rule per instruction: a
coordinatewise function's values lie in its row's ``bounds``; a sum's in the sum of its terms'
intervals (times their coefficients, plus its constant); a product's in the product of its
factors'; anything else (a param, an input, a matmul, a norm) is claimed nowhere, (-∞, ∞).
Params are unbounded because training moves them anywhere: a gain initialised at 0 is bounded
by nothing after a step. So only what the functions themselves bound is proved, never a value
that training might take out of it.
"""

from __future__ import annotations

import math

from ..errors import Collector
from .functions import FUNCTIONS, MUL
from .program import LinComb, Nonlin, Program

Interval = tuple[float, float]
ANY: Interval = (-math.inf, math.inf)


def _times(a: float, b: float) -> float:
    return 0.0 if a == 0 or b == 0 else a * b  # 0 · ∞ is 0: a factor that is exactly 0


def scaled(c, iv: Interval) -> Interval:
    """c times every value of ``iv``."""
    lo, hi = _times(float(c), iv[0]), _times(float(c), iv[1])
    return (min(lo, hi), max(lo, hi))


def added(a: Interval, b: Interval) -> Interval:
    return (a[0] + b[0], a[1] + b[1])


def product(a: Interval, b: Interval) -> Interval:
    ends = [_times(x, y) for x in a for y in b]
    return (min(ends), max(ends))


def _lincomb(ins: LinComb, iv: dict) -> Interval:
    out = (float(ins.const), float(ins.const))
    for c, name in ins.terms:
        out = added(out, scaled(c, iv.get(name, ANY)))
    return out


def _nonlin(ins: Nonlin, iv: dict) -> Interval:
    if ins.fn == MUL:
        return product(*(iv.get(x, ANY) for x in ins.args))
    row = FUNCTIONS.get(ins.fn)
    return row.bounds if row is not None and len(ins.args) == 1 else ANY


#: one rule per instruction that bounds its output; every other instruction bounds nothing
RULES = {LinComb: _lincomb, Nonlin: _nonlin}


def intervals(program: Program) -> dict[str, Interval]:
    """An interval holding every coordinate of each value the program computes."""
    iv: dict[str, Interval] = {}
    for ins in program.body:
        rule = RULES.get(type(ins))
        iv[ins.out] = rule(ins, iv) if rule is not None else ANY
    return iv


def of_params(program: Program) -> set[str]:
    """The params and the values computed from params alone (no input, no block's stream)."""
    made = {p.name for p in program.params}
    for ins in program.body:
        if isinstance(ins, (LinComb, Nonlin)) and all(o in made for o in ins.operands):
            made.add(ins.out)
    return made


def check_ranges(program: Program, errors: Collector) -> None:
    """A constant added only to values of params alone; sqrt only of a value bounded below by a
    positive number."""
    iv, made = intervals(program), None
    for ins in program.body:
        if isinstance(ins, LinComb) and ins.const:
            made = of_params(program) if made is None else made
            if not all(o in made for o in ins.operands):
                errors.error(f"{ins.out}: a constant added to a value computed from the "
                             "inputs: the language adds a number only to a function of params "
                             "(a gain's, 1 + sigmoid(w))", ins.span,
                             "use a bias param instead: `param b : [n]` and `h = W @ x + b`")
        if isinstance(ins, Nonlin) and ins.fn == "sqrt":
            lo, hi = iv.get(ins.args[0], ANY)
            if not lo > 0:
                errors.error(f"sqrt({ins.args[0]}): its argument is not bounded below by a "
                             f"positive number (its values are only known to lie in [{lo:g}, "
                             f"{hi:g}]); near 0 the slope of √x grows without bound, so a "
                             "change would not pass through at its own size", ins.span,
                             "take sqrt of a value that its functions keep above a positive "
                             "number, e.g. sqrt(1 + sigmoid(w)) of a param w")
