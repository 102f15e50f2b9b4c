"""Classification of a parametrization (TP4 §5): given every param's (a, b, c), run the exponent
propagation (:mod:`tensorprog.engine.propagate`) and judge it: stable at init and in training,
nontrivial, every param updated maximally (µP) or not; the regime (feature learning, kernel,
unstable, trivial), r, and each violated condition with the tensor and exponent that break it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._gc import paused_gc
from ..errors import EngineError
from ..ir.program import LinComb, Program, Route
from .exponents import ABC, INF, NEG_INF, ZERO, Exp, as_str, emax, gt, power
from .optimizers import Optimizer
from .propagate import Analysis, live_values, prescaled, used_params
from .report import depth_note, program_depth_json, table
from .rules_delta import refuse_growing_head_dim
from .ssd_init import ssd_vanishing
from .standardised import effective
from .terms import Term, role


@dataclass
class Violation:
    condition: str  # stability_init | stability_training | vanishing_init | maximal_update | ...
    tensor: str
    exponent: Exp
    message: str

    def as_dict(self) -> dict:
        return {"condition": self.condition, "tensor": self.tensor,
                "exponent": as_str(self.exponent), "message": self.message}


@dataclass
class ParamResult:
    name: str
    shape: tuple[str, ...]
    role: str
    abc: ABC
    init: Exp  # exponent of initial entries, -(a+b)
    update: Exp  # exponent of update entries
    r: Exp  # -(largest change its update causes); 0 = updated maximally
    dominant: str  # the term that realises r


@dataclass
class Classification:
    program: Program
    optimizer: Optimizer
    analysis: Analysis
    params: dict[str, ParamResult]
    violations: list[Violation] = field(default_factory=list)
    r: Exp = INF
    stable: bool = True
    nontrivial: bool = False
    notes: list[str] = field(default_factory=list)  # vectors an SSD forces to vanish at init
    forced: list[str] = field(default_factory=list)  # ... their names, in program order
    ssd_refused: list[str] = field(default_factory=list)  # ... where that is refused (ssd_init)

    @property
    def regime(self) -> str:
        if not self.stable:
            return "unstable"
        if not self.nontrivial:
            return "trivial"
        return "feature_learning" if self.r == 0 else "kernel"

    @property
    def all_maximal(self) -> bool:
        return all(p.r == 0 for p in self.params.values() if p.role != "scale")

    def as_dict(self) -> dict:
        """classify's JSON (see :func:`classify_json`)."""
        return classify_json(self)

    def __str__(self) -> str:
        """classify's verdict as text, headed "classification" (the command names its preset)."""
        return classify_text(self, "classification")


def _dominant(terms: list[tuple[Term, Exp]]) -> tuple[Term, Exp] | None:
    best = None
    for t, v in terms:
        if best is None or gt(v, best[1]):
            best = (t, v)
    return best


def classify(program: Program, optimizer: Optimizer, abc: dict[str, ABC]) -> Classification:
    """Evaluate stability, nontriviality, r and the regime of a given parametrization (TP4 §3)."""
    with paused_gc():
        return _classify(program, optimizer, abc)


def _depth_scaled(program: Program, an: Analysis) -> set[str]:
    """The values the depth scaling shrinks: the residual branches, and the experts of a branch
    that is a route (each carries the branch's 1/L^a_L through its own last weight)."""
    out = {b for s in an.depth_streams for b in an.branches(s)}
    for b in list(out):
        prod = program.producer.get(b)
        if isinstance(prod, Route):
            out.update(prod.experts)
    # a branch that is a sum was split into its terms (propagate.residual_branches): the sum is
    # as small as they are
    for s in an.depth_streams:
        for v in program.block_table[s.block].values:
            prod = program.producer.get(v)
            if isinstance(prod, LinComb) and v != s.out and set(prod.operands) <= out:
                out.add(v)
    return out


def classify_depth(program: Program, optimizer: Optimizer,
                   abc: dict[str, ABC]) -> Classification:
    """The same, in the depth L, for the depth exponents (a_L, b_L, c_L) of every param: the
    depth pass, where no width dim is infinite and only the repetitions of a ``repeat L`` are."""
    require_depth_pass(program, optimizer)
    with paused_gc():
        return _classify(program, optimizer, abc, depth_pass=True)


def require_depth_pass(program: Program, optimizer: Optimizer) -> None:
    """Refuse what the depth pass does not cover, rather than give exponents it cannot vouch for."""
    if not program.repeats_over_depth:
        raise EngineError(f"{program.name} repeats no block over a depth, so it has no depth "
                          "exponents", help="declare `depth L = ...` and use `repeat L blk(...)`")
    if optimizer.uses_gradient_scale:
        raise EngineError(
            f"depth exponents under {optimizer.name} are not derived yet: its update size follows "
            "the gradient's size in L, which the depth pass does not track",
            help="use --optimizer adam (or adamw), whose update entries do not depend on it")


def require_width(program: Program) -> None:
    """Refuse a program none of whose outputs depends on a vector of infinite dim: it has no
    width limit, so neither a derivation nor a regime means anything."""
    live = live_values(program)
    if not any(program.is_infinite(ins.out) for ins in program.body if ins.out in live):
        # point at the first output: it is what fails to reach the width
        span = next((s for s in program.output_spans if s is not None), program.width.span)
        raise EngineError(f"no output of {program.name} depends on a vector of width "
                          f"{program.width.name}: there is nothing to scale", span=span,
                          help=f"give a hidden layer a dim of {program.width.name} (or a multiple)")


def _classify(program: Program, optimizer: Optimizer, abc: dict[str, ABC],
              depth_pass: bool = False) -> Classification:
    require_width(program)
    refuse_growing_head_dim(program)  # the delta rule: rules_delta.py
    used = used_params(program)
    missing = [p for p in used if p not in abc]
    if missing:
        raise EngineError(f"no (a, b, c) given for param(s) {', '.join(missing)}",
                          help="give every param of the program its exponents")
    abc = {p: abc[p] for p in used}
    # a standardised param trains as the plain (a, 0, c - k·b) (standardised.py)
    an = Analysis(program, optimizer, depth_pass).run(effective(program, abc, optimizer.a_coef))
    result = Classification(program, optimizer, an, {})
    base = "n" if an.width_limit else program.depth.name
    # In L, every vector is Θ(1) but a residual branch, which the depth scaling shrinks so that
    # the sum of L of them is Θ(1): the sizes the depth desiderata hold a vector to.
    scaled = _depth_scaled(program, an)
    held = program.is_infinite if an.width_limit else (lambda v: v not in scaled)
    absorbed = prescaled(program)  # sizes a scale takes back: not where an update shows
    for name in used:
        ups = [u for u in an.update_terms(name) if u[0] not in absorbed]
        top = None
        for entry in ups:
            if top is None or gt(entry[2], top[2]):
                top = entry
        r = -top[2] if top else INF
        result.params[name] = ParamResult(
            name, program.param_table[name].shape, role(program, name), abc[name], an.S[name],
            an.U[name], r, f"{top[1].what} in {top[0]}" if top else "no update reaches the output")
    outputs = set(program.outputs)
    absorbed = prescaled(program)
    forced, refused = ssd_vanishing(program, an) if an.width_limit else ({}, {})
    result.ssd_refused = sorted(refused)
    for ins in program.body:
        v = ins.out
        if v in absorbed:
            continue
        e0, d = an.init_[v], an.change_[v]
        if gt(e0, ZERO):
            t = _dominant(an.init_terms[v])
            result.violations.append(Violation(
                "stability_init", v, e0,
                f"{v} blows up at init as {power(e0, base)} (dominant term {t[0].what}: "
                f"{t[0].why})"))
        elif held(v) and gt(e0, NEG_INF) and gt(ZERO, e0) and v in forced:
            result.notes.append(forced[v])
            result.forced.append(v)
        elif held(v) and gt(e0, NEG_INF) and gt(ZERO, e0) and v in refused:
            result.violations.append(Violation("vanishing_init", v, e0, refused[v]))
        elif held(v) and gt(e0, NEG_INF) and gt(ZERO, e0) and v not in outputs:
            result.violations.append(Violation(
                "vanishing_init", v, e0, f"{v} vanishes at init as {power(e0, base)}: its "
                "coordinates should be Θ(1)"))
        if gt(d, ZERO):
            t = _dominant(an.change_terms[v])
            result.violations.append(Violation(
                "stability_training", v, d,
                f"{v} blows up during training as {power(d, base)} (dominant term {t[0].what}: "
                f"{t[0].why})"))
    result.stable = not result.violations
    result.nontrivial = any(not gt(ZERO, an.change_[o]) for o in program.outputs)
    features = [an.change_[ins.out] for ins in program.body
                if held(ins.out) and ins.out not in absorbed]
    result.r = -emax(features) if features else INF
    if result.stable and not result.nontrivial:
        for o in program.outputs:
            result.violations.append(Violation(
                "nontrivial", o, an.change_[o],
                f"output {o} moves only as {power(an.change_[o], base)} during training: it "
                "freezes"))
    for p in result.params.values():
        if result.stable and gt(p.r, ZERO) and p.role != "scale":  # a scale is never trained
            result.violations.append(Violation(
                "maximal_update", p.name, -p.r,
                f"{p.name} is not updated maximally: its update moves features by "
                f"{power(-p.r, base)} ({p.dominant}); they freeze as {base} grows"))
    return result


# --- rendering ----------------------------------------------------------------------------------

def classify_json(c: Classification) -> dict:
    an = c.analysis
    return {
        "program": c.program.name, "optimizer": c.optimizer.name,
        "depth": program_depth_json(c.program),
        "stable": c.stable, "nontrivial": c.nontrivial, "regime": c.regime, "r": as_str(c.r),
        "all_maximal": c.all_maximal,
        "params": {n: {"shape": list(x.shape), "role": x.role, **x.abc.as_dict(),
                       "r": as_str(x.r), "maximal": x.r == 0,
                       "init_entries": as_str(x.init), "update_entries": as_str(x.update)}
                   for n, x in c.params.items()},
        "vectors": {ins.out: {"init": as_str(an.init_[ins.out]),
                              "update": as_str(an.change_[ins.out])} for ins in c.program.body},
        "violations": [v.as_dict() for v in c.violations],
        **({"forced_to_vanish": list(c.notes)} if c.notes else {}),
    }


def classify_text(c: Classification, label: str, depth_pass: bool = False) -> str:
    rows = [["param", "shape", "role", "a", "b", "c", "r", "maximal"]]
    for n, x in c.params.items():
        rows.append([n, "[" + ", ".join(x.shape) + "]", x.role, as_str(x.abc.a), as_str(x.abc.b),
                     as_str(x.abc.c), as_str(x.r), "yes" if x.r == 0 else "no"])
    d = c.program.depth
    note = ([] if d is None else
            [f"depth {d.name} (base {d.base}): the width verdict holds at any fixed depth; the "
             f"verdict as {d.name} grows follows it"] if depth_pass else [depth_note(c.program)])
    out = [f"{label} for {c.program.name} under {c.optimizer.name}", *note, "", table(rows), "",
           f"stable: {'yes' if c.stable else 'no'}   nontrivial: "
           f"{'yes' if c.nontrivial else 'no'}   r = {c.r}   regime: {c.regime}"]
    if c.violations:
        out += ["", "Violations:"] + [f"  - [{v.condition}] {v.message}" for v in c.violations]
    if c.notes:  # vectors an SSD's weights force to vanish at init: no stable µP lifts them
        out += ["", "Forced to vanish at init:"] + [f"  - {n}" for n in c.notes]
    return "\n".join(out) + "\n"


def _depth_given(exps: dict[str, ABC]) -> str:
    nonzero = {p: x for p, x in exps.items() if (x.a, x.b, x.c) != (0, 0, 0)}
    if not nonzero:
        return "none (a_L = b_L = c_L = 0 for every param: no depth scaling)"
    return ", ".join(f"{p} ({as_str(x.a)}, {as_str(x.b)}, {as_str(x.c)})"
                     for p, x in nonzero.items()) + "; 0, 0, 0 for the others" * (
        len(nonzero) < len(exps))


def classify_depth_text(program: Program, exps: dict[str, ABC], c: Classification | None,
                        notes: list[str]) -> str:
    """The depth pass's section of ``classify``: its verdict as L grows, or why it has none
    (``c`` None: the pass refused, and ``notes`` say why)."""
    L = program.depth.name
    out = [f"Depth ({L} → ∞)", f"depth exponents (a_L, b_L, c_L): {_depth_given(exps)}",
           *(f"note: {n}" for n in notes)]
    if c is not None:
        out.append(f"stable: {'yes' if c.stable else 'no'}   feature learning in {L}: "
                   f"{'yes' if c.regime == 'feature_learning' else 'no'}   every param updated "
                   f"maximally: {'yes' if c.all_maximal else 'no'}   regime: {c.regime}")
        if c.violations:
            out += ["", "Violations:"] + [f"  - [{v.condition}] {v.message}"
                                          for v in c.violations]
    return "\n".join(out) + "\n"


def classify_depth_json(program: Program, exps: dict[str, ABC], c: Classification | None,
                        notes: list[str]) -> dict:
    """The ``"depth"`` object of ``classify --json``: the depth exponents used and the depth
    pass's verdict (null where it refused; ``notes`` say why)."""
    return {"name": program.depth.name, "base": program.depth.base,
            "exponents": {p: x.as_dict() for p, x in exps.items()},
            "stable": None if c is None else c.stable,
            "feature_learning": None if c is None else c.regime == "feature_learning",
            "all_maximal": None if c is None else c.all_maximal,
            "regime": None if c is None else c.regime,
            "violations": [] if c is None else [v.as_dict() for v in c.violations],
            "notes": notes}
