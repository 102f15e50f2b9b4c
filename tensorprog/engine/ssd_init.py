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

The classification therefore counts a vector whose vanishing the SSD alone explains as a note,
not a violation. An SSD's P₀ is forced when it is cb's own size (the steps dt Θ(1)) and no
smaller than the forced n^-1 (n^-1/2 for N ∝ n); a vector computed from such weights is forced
when

* it is no smaller than their P₀ (the mixing itself, y = P x with x Θ(1));
* with the weights Θ(1) it would be Θ(1) (nothing else it reads vanishes: a skip D x or a
  value x initialised too small stays a violation);
* with the weights 0 it would be smaller (its size comes through them: a sum with a term
  that vanishes more slowly, such as a bias initialised too small, stays a violation).

Anything else stays a violation: a P₀ below that (C or B initialised below a readout's, a
scale on cb below 1/N), a vanishing vector that reads no SSD. Two more cases are refused,
where the forced vanishing makes the engine's sizes wrong rather than small:

* a forced vector divided by its own size (a norm, or a route normalising its gates, reads
  it): its gradient at init is larger than after training by the inverse of that size, which
  no single exponent holds (Mamba-2's gated norm needs the skip D x inside it);
* an optimizer whose step follows the gradient's size (SGD), over a finite state size: C's
  gradient is ∝ B and B's ∝ C, both vanishing at init, so C and B start at a saddle that
  SGD's steps, as small as the gradients, never leave in the width limit (the mixing never
  trains). Normalised steps (Adam, Lion, Muon) leave it at the first step. Over a state size
  ∝ n, C₀ and B₀ are Θ(1) and only cb's CLT sum vanishes: no saddle.

``derive`` refuses every program with forced vectors (:func:`refuse_forced`): the mixing is
Θ(1) only at second order in the step, so the rates and ε derived for it would not transfer.
Groups that grow with the heads (C and B of a dim ∝ n, a fixed N per group) leave nothing
forced.
"""

from __future__ import annotations

import copy

from ..errors import Diagnostic, EngineError
from ..ir.program import Dot, LinComb, MatMul, Nonlin, Program
from ..ir.routes import Route
from ..ir.ssd import SSD
from .exponents import HALF, NEG_INF, ONE, ZERO, Exp, gt, power
from .propagate import Analysis, settle_back_edges
from .rules import INIT, NONLIN_SHAPE

WHY = "forced: p is linear in C·B, which stability keeps vanishing at init; docs/theory.md"


def _dots(program: Program, cb: str) -> list[Dot]:
    """The dots behind cb, back through scales and sums (not through layers)."""
    todo, seen, found = [cb], set(), []
    while todo:
        v = todo.pop()
        ins = program.producer.get(v)
        if v in seen or ins is None:
            continue
        seen.add(v)
        if isinstance(ins, Dot):
            found.append(ins)
        elif isinstance(ins, (Nonlin, LinComb)):
            todo.extend(ins.operands)
    return found


def zeroed_saddle(program: Program, zeroed: set[str]) -> tuple[str, str, str] | None:
    """(an SSD, and the weights of its C and B) where zero-initialising ``zeroed`` makes both C
    and B exactly 0: each one's gradient is ∝ the other, so both stay exactly 0 and the SSD's
    mixing never trains (``--readout-zero-init`` zeroes them, their role being output's)."""
    for ins in program.body:
        if not (isinstance(ins, Nonlin) and ins.fn == SSD):
            continue
        for dot in _dots(program, ins.args[0]):
            sides = [program.producer.get(v) for v in (dot.left, dot.right)]
            if all(isinstance(m, MatMul) and m.weight in zeroed for m in sides):
                return ins.out, sides[0].weight, sides[1].weight
    return None


def _forced(program: Program, cb: str) -> Exp:
    """The smallest P₀ that stability forces: n^-1 for a cb summed over a finite state size
    (C₀ and B₀ at a readout's n^-1/2 each), n^-1/2 over one ∝ n (C₀ and B₀ Θ(1), the CLT sum
    under the 1/N scale training needs). A smaller P₀ is a given parametrization's own (an init
    below the readout's, a scale below 1/N), not forced: a violation."""
    grows = any(d.over is not None and program.dim(d.over).infinite for d in _dots(program, cb))
    return -HALF if grows else -ONE


def _init_with(program: Program, an: Analysis, ssds: set[str], size: Exp) -> dict[str, Exp]:
    """The init exponents again, with the SSD weights ``ssds`` taken to be of ``size``."""
    alt = copy.copy(an)
    alt.init_, alt.init_terms = dict(an.init_), {}

    def one_round() -> None:
        for ins in program.body:
            if ins.out in ssds:
                alt.init_[ins.out] = size
            else:
                alt.record_init(ins.out, INIT[type(ins)](ins, alt))

    settle_back_edges(program, one_round, [alt.init_], also=alt._carried)
    return alt.init_


def _divided(program: Program) -> dict[str, object]:
    """value -> an instruction that divides by that value's size (a norm, normalised gates)."""
    out: dict[str, object] = {}
    for ins in program.body:
        if isinstance(ins, Nonlin) and NONLIN_SHAPE.get(ins.fn) == "normalize":
            out.setdefault(ins.args[0], ins)
        elif isinstance(ins, Route) and ins.normalise:
            out.setdefault(ins.gates, ins)
    return out


def ssd_vanishing(program: Program, an: Analysis) -> tuple[dict[str, str], dict[str, str]]:
    """(notes, refusals): value -> why it vanishes at init, for the values whose vanishing an
    SSD's weights force (notes), and for those whose forced vanishing leaves the engine's sizes
    wrong (refusals: violations); see the module. ``an`` is the analysis classified."""
    init = an.init_
    forced = {ins.out: _forced(program, ins.args[0]) for ins in program.body
              if isinstance(ins, Nonlin) and ins.fn == SSD}
    ssds = {ins.out for ins in program.body if ins.out in forced and gt(ZERO, init[ins.out])
            and not gt(forced[ins.out], init[ins.out]) and init[ins.out] == init[ins.args[0]]}
    if not ssds:
        return {}, {}
    lifted = _init_with(program, an, ssds, ZERO)
    dropped = _init_with(program, an, ssds, NEG_INF)
    reads: dict[str, set[str]] = {}
    for ins in program.body:  # the SSD outputs each value is computed from
        found = set().union(*(reads.get(o, set()) for o in ins.operands))
        reads[ins.out] = found | ({ins.out} if ins.out in ssds else set())
    notes: dict[str, str] = {}
    saddle: set[str] = set()  # forced by weights whose C₀ and B₀ both vanish (a finite N)
    for v, found in reads.items():
        s = next((s for s in sorted(found) if not gt(init[s], init[v])), None)
        if s is None or not gt(ZERO, init[v]):
            continue
        if v == s or (not gt(ZERO, lifted[v]) and gt(init[v], dropped[v])):
            why = "" if v == s else f" because the SSD weights {s} do"
            notes[v] = f"{v} vanishes at init as {power(init[v])}{why} ({WHY})"
            if forced[s] == -ONE:
                saddle.add(v)
    refusals: dict[str, str] = {}
    divided = _divided(program)
    for v in [v for v in notes if v in divided]:
        ins = divided.pop(v)
        refusals[v] = (
            f"{v} vanishes at init as {power(init[v])} (forced by an SSD's weights) and "
            f"{ins.out} divides by its size: its gradient at init is {power(-init[v])} times "
            "its size after training, which no exponent of the width holds; normalise a sum "
            "that holds a Θ(1) term, Mamba-2's skip: mix(p, x, P) + spread(D, P) * x")
        del notes[v]
    if an.optimizer.uses_gradient_scale:
        for v in [v for v in notes if v in saddle]:
            refusals[v] = (
                f"{v} vanishes at init as {power(init[v])} (forced by an SSD's weights), and "
                f"under {an.optimizer.name} it stays so: C's gradient is ∝ B and B's ∝ C, both "
                "vanishing at init, a saddle that steps as small as the gradients never leave "
                "in the width limit, so the mixing never trains (normalised steps, adam's, "
                "lion's or muon's, leave it at the first)")
            del notes[v]
    return notes, refusals


def refuse_forced(program: Program, check) -> None:
    """Refuse, for ``derive``, a program whose check (``check``, a Classification) finds vectors
    an SSD's weights force to vanish at init: its notes, and the vectors refused outright (a
    norm of them, SGD's saddle). No µP has the mixing Θ(1) there, and the rates derived for it
    would not transfer (docs/theory.md, "State-space mixing"); ``classify`` still reports them
    as notes of a given parametrization. One diagnostic per vector, at its instruction."""
    messages = {v.tensor: v.message for v in check.violations if v.tensor in check.ssd_refused}
    messages.update(zip(check.forced, check.notes, strict=True))
    if not messages:
        return
    init = check.analysis.init_
    finite = any(isinstance(ins, Nonlin) and ins.fn == SSD and gt(ZERO, init[ins.out])
                 and _forced(program, ins.args[0]) == -ONE for ins in program.body)
    why = ("C's and B's layers have a finite fan-out (the state size of a fixed number of "
           "groups), so stable feature learning needs them initialised as readouts (std ∝ 1/n); "
           "then cb and p vanish as n^-1, and the mixing is Θ(1) only at second order in the "
           "step (ΔC·ΔB), so the learning rates and ε derived for it would not transfer"
           if finite else
           "cb sums over a state size that grows with the width, so training needs a 1/N scale "
           "on it (an LLN sum once trained), and its CLT sum at init leaves cb and p at n^-1/2")
    shown = [ins.out for ins in program.body if ins.out in messages]
    last = shown[-1]
    raise EngineError(
        [Diagnostic(f"no µP has the state-space mixing Θ(1) at init: {why} (docs/theory.md, "
                    "\"State-space mixing\")")]
        + [Diagnostic(
            messages[v], program.producer[v].span,
            "let the groups grow with the heads: C and B of a dim ∝ n (ngroups ∝ heads, a "
            "fixed state size N per group: `param WC : [di, n]` and cb = dot(WC @ a, WB @ a, "
            "N)); or judge a given parametrization with `tensorprog classify`, which reports "
            "these vectors as forced to vanish" if v == last else None)
           for v in shown])
