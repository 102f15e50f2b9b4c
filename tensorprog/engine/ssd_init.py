"""Which vectors vanish at init because an SSD's mixing weights do (``tensorprog.ir.ssd``).

``P = exp(G_t - G_s)·cb_ts·dt_s`` is linear in cb = C·B, and C and B are the outputs of layers
of a finite fan-out (the state size N) from the width: each meets its input's change in an LLN
sum (that change is built from its weight's transpose), so stability needs it initialised as a
readout (std ∝ 1/n), and C₀, B₀ are Θ(n^-1/2), cb₀ and P₀ Θ(n^-1). A state size that grows
with the width does not help: cb then needs a 1/N scale (the sum becomes an LLN one after
training), and its CLT sum at init leaves P₀ at Θ(n^-1/2). Unlike attention, whose softmax of
vanishing logits is Θ(1) (uniform weights), nothing here lifts a vanishing cb. So no
parametrization that is stable and updates every layer maximally has P₀ = Θ(1): the mixing
y = P x starts at 0 in the width limit (the layer at init is its skip, D x) and becomes Θ(1)
after the first steps, as a readout's output starts at 0 (TP4: feature learning forces f₀ → 0).

Derive's solution takes every init as large as stability allows, so a vanishing P₀ there is
forced. The classification therefore counts the vectors that vanish only because P₀ does as a
note, not a violation: the vectors computed from an SSD's weights whose init is no smaller than
P₀'s (the mixing itself, y = P x with x Θ(1)), where P₀ is no smaller than the forced n^-1.
Anything smaller (a given parametrization that inits C or B below a readout's), or a vanishing
vector that reads no SSD, stays a violation; so does a vector the vanishing makes blow up in
training (a norm of the mixing without the skip divides its Θ(1) change by its n^-1 size).
"""

from __future__ import annotations

from ..ir.program import Nonlin, Program
from ..ir.ssd import SSD
from .exponents import ONE, ZERO, gt, power

#: The smallest P₀ that stability forces: n^-1, C₀ and B₀ at a readout's n^-1/2 each over a
#: finite N (n^-1/2 for N ∝ n). A smaller P₀ is a given parametrization's own (an init below
#: the readout's), not forced: a violation.
FORCED = -ONE


def ssd_vanishing(program: Program, init: dict) -> dict[str, str]:
    """value -> why it vanishes at init, for the values whose vanishing an SSD's weights force
    (see the module); ``init`` is the analysis's init exponents."""
    ssds = [ins.out for ins in program.body if isinstance(ins, Nonlin) and ins.fn == SSD
            and gt(ZERO, init[ins.out]) and not gt(FORCED, init[ins.out])]
    if not ssds:
        return {}
    reads: dict[str, set[str]] = {}
    for ins in program.body:  # the SSD outputs each value is computed from
        found = set().union(*(reads.get(o, set()) for o in ins.operands))
        reads[ins.out] = found | ({ins.out} if ins.out in ssds else set())
    out = {}
    for v, found in reads.items():
        s = next((s for s in ssds if s in found and not gt(init[s], init[v])), None)
        if s is not None and gt(ZERO, init[v]):
            why = "" if v == s else f" because the SSD weights {s} do"
            out[v] = (f"{v} vanishes at init as {power(init[v])}{why} (forced: p is linear in "
                      "C·B, which stability keeps vanishing at init; docs/theory.md)")
    return out
