"""Judging a coordinate check: what every vector's slope must be, and the verdicts (no torch).

Regressing log RMS on log width gives a slope per vector and step; the spread is the standard
deviation of the per-seed slopes.

Two references (``against``):

* ``"mup"``: what µP requires of this program, i.e. the exponents the engine predicts under its
  own derived µP, except at init: a vector of finite dim (an output) need only be O(1), and one
  that the checked parametrization zero-initialises (a readout, the queries) must be exactly 0.
  A parametrization passes iff it behaves like µP; SP and NTP fail and the failures are named.
* ``"predicted"``: the engine's prediction for the parametrization being checked, so the check
  tests the engine itself on any parametrization, µP or not.

Step-1 changes are measured and shown but not judged: THEORY §3 notes that the first step can
scale differently (SP's first step; a zero-initialised readout blocks every other gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..engine.classify import classify, classify_depth
from ..engine.derivation import zero_constants
from ..engine.derive import derive
from ..engine.exponents import ABC, INF, NEG_INF, ZERO, Exp, as_str, gt
from ..engine.optimizers import Optimizer
from ..engine.propagate import prescaled
from ..errors import UsageError
from ..ir.program import Dot, Program
from .noslope import ZERO_RMS, diverged_runs, no_slope

# A slope within ±0.15 of the expected exponent passes. Measured with the check's defaults (widths
# 64..2048, 3 seeds, 3 steps): under µP the largest deviation over every example and both
# optimizers is 0.13 (gated_mlp, SGD, its output), typically below 0.03; the smallest departure
# a non-µP parametrization shows is 0.43 (NTP's frozen features, exponent -1/2), and SP's
# blow-ups are 0.6 and more. 0.15 passes the first and catches the second with room on both
# sides; finite widths below 64 drift more (docs/check.md).
TOLERANCE = 0.15
# A stable run's change grows steadily: from step 2 to step 3 by x1.5 to x1.8 under SGD and up to
# x3.1 under Adam over every example at the defaults. A change that grows more than this factor
# in one step (from step 3 on), past the vector's own size at init, marks a run that diverges at
# this learning rate: its slopes measure the blow-up, whatever the parametrization
# (examples/resnet.tp under SGD at lr 0.1: x18 and x25; examples/transformer.tp at lr 10: x15).
# Vectors that start at exactly 0 are left out: they start moving a step late, so their change
# accelerates at first (a zero-initialised readout's output: x4 under Adam, and stable).
UNSTABLE_GROWTH = 8.0
# In the small-update regime a vector's change after t steps grows about linearly in t (by
# t/(t-1) from step t-1 to t: x1.5 from step 2 to 3), slower once Adam's moments average out, and
# up to quadratically where two moving factors multiply (a readout's output: 1.5 over linear). A
# change growing more than ACCELERATING times linearly (from step 3 on) is compounding: the
# updates change the gradients they come from, and the slopes then mix the width with the
# learning rate. Measured, 3 Adam steps: HF Llama (2 layers, 4 heads, vocab 256, MLP 4n) traced
# at 64/128 and checked at 256..1024 grows at most 1.1 over linear at lr 3e-3 (µP passes) and
# 2.4 at lr 1e-2 (the second block's MLP output; 12 vectors then fail, -0.3 to -0.74); over
# every example at `tensorprog check`'s defaults the largest is 2.03 (mlp_expand's output, in a
# passing run).
ACCELERATING = 2.2
# Attention logits (a per-head ``dot``) whose RMS reaches this saturate a causal softmax over a
# few tokens (e^4 ~ 55 between a typical logit and the next): its gradient vanishes and the
# logits stop moving, a regime no exponent describes. (A readout ``dot`` without heads is no
# softmax's input: dot_readout's output reaches RMS 4.2 in a passing run.)
SATURATED_LOGITS = 4.0
# what a warning suggests: a learning rate this many times lower
LR_BACKOFF = 3.0


@dataclass(frozen=True)
class Expectation:
    """The exponent a measured slope must match (``exact``), stay under (``at_most``) or, for a
    predicted blow-up, exceed 0 (``grows``: the engine's exponent is the first-order rate as n ->
    oo; at finite widths lower-order terms with large constants still compete, and higher-order
    ones join in, so only the direction is checked)."""

    exponent: Exp
    bound: str = "exact"  # "exact" | "at_most" | "grows"
    var: str = "n"  # what the slope is against: the width n, or the depth L

    def render(self) -> str:
        if self.bound == "grows":
            return f"> 0 ({self.var}^{as_str(self.exponent)} as {self.var}->oo)"
        if self.exponent is NEG_INF:
            return "zero"
        return ("<= " if self.bound == "at_most" else "") + as_str(self.exponent)


def expectations(program: Program, optimizer: Optimizer, abc: dict[str, ABC],
                 against: str = "mup") -> dict[tuple[str, str], Expectation]:
    """(vector, "init" | "change") -> what its slope must be (the params the program
    initialises to 0 exactly zero at init: ``zero_constants``). Against µP, a vector whose
    size at init those zeros lower is held to the lowered size where the parametrization
    checked gives it µP's otherwise: a gate's zero bias beside its readout-like W x (FocalNet's
    gates, Θ(1/√n) at init) makes what the gate multiplies Θ(1/√n) at init, which is µP with
    that bias zero-initialised, as a vector of zero params alone is exactly 0."""
    zeroed = zero_constants(program, abc)
    own = classify(program, optimizer, zeroed).analysis
    plain = own
    if against == "predicted":
        an = own
    elif against == "mup":
        an = derive(program, optimizer).check.analysis
        if zeroed != abc:  # the sizes without the zeros, read only against µP (below)
            plain = classify(program, optimizer, abc).analysis
    else:
        raise UsageError(f"unknown reference {against!r}", help="choose mup or predicted")

    def expect(e: Exp) -> Expectation:
        return Expectation(e, "grows" if gt(e, ZERO) else "exact")

    out = {}
    absorbed = prescaled(program)  # a raw dot or raw logits: the scale after them takes the size
    for ins in program.body:
        v = ins.out
        if against == "mup" and own.init_[v] is NEG_INF:
            out[(v, "init")] = Expectation(NEG_INF)  # zero init (a readout, the queries) is µP
        elif against == "mup" and not program.is_infinite(v) and v not in absorbed:
            out[(v, "init")] = Expectation(ZERO, "at_most")  # desideratum: outputs O(1)
        elif against == "mup" and plain.init_[v] == an.init_[v] \
                and gt(an.init_[v], own.init_[v]):
            out[(v, "init")] = expect(own.init_[v])  # lowered by zero params alone
        else:
            out[(v, "init")] = expect(an.init_[v])
        out[(v, "change")] = expect(an.change_[v])
    # the emitted module records repetition i of a repeated block as block.i.name (at its base
    # depth): each repetition is held to the generic one's exponents, which hold at any depth
    for v, name in repetitions(program):
        for kind in ("init", "change"):
            out[(name, kind)] = out[(v, kind)]
    return out


def repetitions(program: Program) -> list[tuple[str, str]]:
    """(generic value, the name its repetition i is recorded under: block.i.name) for every
    value of a repeated block, at the program's base depth."""
    out = []
    for stream in program.streams:
        if stream.count is None:
            continue  # applied once: recorded under the program's own names
        block = program.block_table[stream.block]
        count = program.depth.base if isinstance(stream.count, str) else stream.count
        for v in (block.arg, *block.values):
            local = v.removeprefix(f"{block.name}.")
            out += [(v, f"{block.name}.{i}.{local}") for i in range(count)]
    return out


def depth_expectations(program: Program, optimizer: Optimizer, abc: dict[str, ABC],
                       depth_abc: dict[str, ABC], against: str = "mup",
                       ) -> dict[tuple[str, str], Expectation]:
    """(vector, "init" | "change") -> what its slope against the depth L must be: the depth
    pass's exponents, for the derived depth exponents (``mup``) or for ``depth_abc``
    (``predicted``). A repeated block's value v is measured over all its repetitions at once,
    as ``block.*.v`` (their RMS together), since the repetitions differ from depth to depth."""
    def at_depth(name: str) -> ABC:
        # a param zero-initialised (b = oo) or untrained (c = oo) in the width is so at any depth
        w, d = abc.get(name), depth_abc.get(name, ABC(0, 0, 0))
        if w is None:
            return d
        return ABC(d.a, INF if w.b is INF else d.b, INF if w.c is INF else d.c)

    exps = {p: at_depth(p) for p in abc}
    own = classify_depth(program, optimizer, exps).analysis
    if against == "predicted":
        an = own
    elif against == "mup":
        d = derive(program, optimizer).depth
        if d is None:
            raise UsageError(f"{program.name} has no derived depth exponents to check against",
                             help="use --against predicted, or see `tensorprog derive`")
        an = d.check.analysis
    else:
        raise UsageError(f"unknown reference {against!r}", help="choose mup or predicted")
    L = program.depth.name

    def expect(e: Exp) -> Expectation:
        return Expectation(e, "grows" if gt(e, ZERO) else "exact", L)

    out = {}
    looped = {program.block_table[b].name: program.block_table[b] for b in program.depth_blocks}
    inner = {v: b for b in looped.values() for v in (b.arg, *b.values)}
    for ins in program.body:
        v = ins.out
        if v in inner:
            v_name = f"{inner[v].name}.*.{v.removeprefix(inner[v].name + '.')}"
        else:
            v_name = v
        init = Expectation(NEG_INF, var=L) if own.init_[v] is NEG_INF else expect(an.init_[v])
        out[(v_name, "init")] = init
        out[(v_name, "change")] = expect(an.change_[v])
    return out


# --- measurements and results --------------------------------------------------------------------


class Measurements:
    """RMS of every vector at init (step 0) and of its change after each step, per width and seed.

    Feed it from any training loop: ``record(width, 0, model.vectors(*x))`` before training, then
    ``record(width, t, model.vectors(*x))`` after step t on the same inputs.
    """

    def __init__(self) -> None:
        self.rms: dict[tuple[str, int, int, int], float] = {}  # (vector, step, width, seed)
        # (width, seed) -> (step, why): runs that could not go on (an optimizer step overflowed)
        self.stopped: dict[tuple[int, int], tuple[int, str]] = {}
        self._start: dict[tuple[int, int], dict] = {}
        # vector -> its entries at the smallest width recorded: how many numbers one RMS is of
        self.entries: dict[str, int] = {}

    def record(self, width: int, step: int, vectors: dict, seed: int = 0) -> None:
        vectors = {k: v.detach().double() for k, v in vectors.items()}
        if step == 0:
            self._start[(width, seed)] = vectors
        elif (width, seed) not in self._start:
            raise UsageError(f"record step 0 for width {width}, seed {seed} before step {step}")
        start = self._start[(width, seed)]
        for name, v in vectors.items():
            self.entries[name] = min(self.entries.get(name, v.numel()), v.numel())
            delta = v if step == 0 else v - start[name]
            self.rms[(name, step, width, seed)] = float(delta.pow(2).mean().sqrt())

    def stop(self, width: int, step: int, last: int, why: str, seed: int = 0) -> None:
        """Record that the run at (width, seed) could not take step ``step``: every vector's
        change from there to step ``last`` is nan, which the judge reports as a divergence."""
        if (width, seed) not in self._start:
            raise UsageError(f"record step 0 for width {width}, seed {seed} before step {step}")
        self.stopped[(width, seed)] = (step, why)
        for name in self._start[(width, seed)]:
            for t in range(step, last + 1):
                self.rms[(name, t, width, seed)] = math.nan

    def axis(self, k: int) -> list:
        return sorted({key[k] for key in self.rms})

    @property
    def vectors(self) -> list[str]:
        seen = dict.fromkeys(key[0] for key in self.rms)
        return list(seen)


@dataclass
class TensorResult:
    """One vector at one step: measured slope, expectation, verdict."""

    name: str
    step: int  # 0: size at init; t >= 1: size of the change after t steps
    slope: float  # mean over seeds of the fitted log-log slope; -inf when exactly zero
    spread: float  # std over seeds
    rms: dict[int, float]  # width -> mean RMS over seeds
    expected: Expectation | None
    judged: bool
    ok: bool
    verdict: str

    def as_dict(self) -> dict:
        return {"name": self.name, "step": self.step, "slope": _finite(self.slope),
                "spread": _finite(self.spread),
                "expected": self.expected.render() if self.expected else None,
                "judged": self.judged, "ok": self.ok, "verdict": self.verdict,
                "rms": {str(w): _finite(r) for w, r in self.rms.items()}}


def _finite(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("-inf" if x < 0 else "inf")


@dataclass
class CheckResult:
    results: list[TensorResult]
    tolerance: float
    against: str
    widths: list[int]
    seeds: list[int]
    steps: int
    settings: dict = field(default_factory=dict)
    # (vector, width, step, growth): changes that accelerate as a diverging run's do
    unstable: list[tuple[str, int, int, float]] = field(default_factory=list)
    # (vector, width, seed, step, why): per run that overflowed, the first vector (in program
    # order) that went inf or nan and the step where it did; vector "" where the run stopped
    # before any did (the loss overflowed, or the optimizer refused the step)
    diverged: list[tuple[str, int, int, int, str]] = field(default_factory=list)
    # (vector, width, step, growth over linear): changes that compound (ACCELERATING), and
    # (vector, width, step, RMS): attention logits that saturate their softmax
    accelerating: list[tuple[str, int, int, float]] = field(default_factory=list)
    saturated: list[tuple[str, int, int, float]] = field(default_factory=list)
    # (vector, width, step, RMS(h_t − h_t-1) / RMS(h_t-1)): normalised vectors that turn in a
    # step from step 2 on (turns.TURNED), which a traced model's check measures
    turned: list[tuple[str, int, int, float]] = field(default_factory=list)
    # program vector -> the name a person knows it by (a traced model's module path)
    names: dict[str, str] = field(default_factory=dict)
    # vector -> its verdict, where a change that the total's slope would fail passes by its
    # parts: finite-width drift (a traced model's router: fromtorch/check.py's _drift)
    drift: dict[str, str] = field(default_factory=dict)
    # vector -> its verdict, where a vector of few entries was judged again on its RMS pooled
    # over more seeds (a traced model's: fromtorch/few.py)
    remeasured: dict[str, str] = field(default_factory=dict)

    def where(self, name: str) -> str:
        """The vector's display name: its module path where one is known, and its own name."""
        shown = self.names.get(name)
        return f"{shown} ({name})" if shown and shown != name else name

    @property
    def small_updates(self) -> bool:
        """Whether the run stayed in the small-update regime its slopes assume."""
        return not (self.accelerating or self.saturated or self.unstable or self.diverged
                    or self.turned)

    def regime_warning(self) -> str:
        """"" for a run in the small-update regime; else what left it, and a lower lr to try."""
        if self.small_updates or self.diverged:
            return ""
        axis = self.settings.get("axis", "width")
        if self.unstable:
            v, w, t, g = max(self.unstable, key=lambda u: u[3])
            grew = "overflowed" if g == math.inf else f"grew x{g:.1f}"
            what = f"the change of {self.where(v)} {grew} from step {t - 1} to {t} at {axis} {w}"
        elif self.accelerating:
            v, w, t, g = max(self.accelerating, key=lambda u: u[3])
            what = (f"the change of {self.where(v)} grew {g:.1f}x faster than linearly from "
                    f"step {t - 1} to {t} at {axis} {w}")
        elif self.saturated:
            v, w, t, r = max(self.saturated, key=lambda u: u[3])
            what = (f"the attention logits {self.where(v)} reached RMS {r:.1f} after step {t} "
                    f"at {axis} {w}: the softmax saturates")
        else:
            v, w, t, r = max(self.turned, key=lambda u: u[3])
            what = (f"the normalised {self.where(v)} changed by {r:.2f} times its own size in "
                    f"step {t} alone at {axis} {w}: its features turn (cosine about "
                    f"{1 - r * r / 2:.2f} with the step before) rather than move a little")
        lr = self.settings.get("lr")
        hint = f" (e.g. lr {lr / LR_BACKOFF:.2g})" if isinstance(lr, (int, float)) else ""
        return (f"not in the small-update regime: {what}; the slopes then mix the learning rate "
                f"with the width: lower the learning rate{hint}")

    @property
    def passed(self) -> bool:
        return not self.diverged and all(r.ok for r in self.results)

    @property
    def failures(self) -> dict[str, list[TensorResult]]:
        """Failing vectors and their failing entries, in program order."""
        out: dict[str, list[TensorResult]] = {}
        for r in self.results:
            if not r.ok:
                out.setdefault(r.name, []).append(r)
        return out

    def slope(self, name: str, step: int) -> float:
        return next(r.slope for r in self.results if r.name == name and r.step == step)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "against": self.against, "tolerance": self.tolerance,
                "widths": self.widths, "seeds": self.seeds, "steps": self.steps,
                **self.settings, "failures": list(self.failures),
                "unstable": [{"vector": v, "width": w, "step": t, "growth": _finite(g)}
                             for v, w, t, g in self.unstable],
                "diverged": [{"vector": v, "width": w, "seed": s, "step": t, "why": why}
                             for v, w, s, t, why in self.diverged],
                "accelerating": [{"vector": v, "width": w, "step": t, "over_linear": g}
                                 for v, w, t, g in self.accelerating],
                "saturated": [{"vector": v, "width": w, "step": t, "rms": r}
                              for v, w, t, r in self.saturated],
                "turned": [{"vector": v, "width": w, "step": t, "relative_change": r}
                           for v, w, t, r in self.turned],
                "regime": self.regime_warning() or None,
                "names": dict(self.names), "drift": list(self.drift),
                "tensors": [r.as_dict() for r in self.results]}

    def __repr__(self) -> str:
        s = self.settings
        what = " ".join(str(s[k]) for k in ("program", "param", "optimizer") if k in s)
        return (f"<CheckResult {what + ': ' if what else ''}{self._verdict()}, widths "
                f"{_span(self.widths)} x {len(self.seeds)} seed(s), {self.steps} steps>")

    def __str__(self) -> str:
        """What was checked, the verdict, each failing vector's worst entry and any warning."""
        s = self.settings
        ref = "what µP requires" if self.against == "mup" else "the engine's prediction"
        lr = f"lr {s['lr']:g}, " if isinstance(s.get("lr"), (int, float)) else ""
        under = s.get("label") or " + ".join(str(s[k]) for k in ("param", "optimizer") if k in s)
        lines = [f"coordinate check of {s.get('program', 'a program')}"
                 + (f" under {under}" if under else ""),
                 f"  {lr}{s.get('axis', 'width')}s {', '.join(map(str, self.widths))} x "
                 f"{len(self.seeds)} seed(s), "
                 f"{self.steps} steps, against {ref} (±{self.tolerance:g})",
                 f"  {self._verdict()}"]
        # vectors that passed by their parts at every step their total change's slope failed
        names = [self.where(n) for n in self.drift if n not in self.failures]
        if names:
            lines.append(f"  passed by their parts (finite-width drift): {', '.join(names[:4])}"
                         + (f" and {len(names) - 4} more" if len(names) > 4 else ""))
        detail = _failure_lines(self)
        if self.diverged:  # every vector then fails; the runs say why
            detail = detail[:len(self.diverged)]
        lines += [f"    {line}" for line in detail[:_SHOWN]]
        if len(detail) > _SHOWN:
            lines.append(f"    ... and {len(detail) - _SHOWN} more")
        for v, w, t, g in self.unstable[:3]:
            grew = "overflowed" if g == math.inf else f"grew x{g:.1f}"
            lines.append(f"  unstable: the change of {self.where(v)} {grew} from step {t - 1} "
                         f"to {t} at {self.settings.get('axis', 'width')} {w}")
        if len(self.unstable) > 3:
            lines.append(f"  unstable: {len(self.unstable) - 3} more")
        if not self.unstable and self.regime_warning():
            lines.append(f"  warning: {self.regime_warning()}")
        return "\n".join(lines)

    def _verdict(self) -> str:
        if self.diverged:
            return f"DIVERGED: {len(self.diverged)} run(s) went inf or nan"
        if self.passed:
            return "PASS"
        names = [self.where(n) for n in self.failures]
        more = f" and {len(names) - 4} more" if len(names) > 4 else ""
        return f"FAIL: {', '.join(names[:4])}{more}"


_SHOWN = 12  # failing vectors listed by str(CheckResult); render lists them all


def _span(widths: Sequence[int]) -> str:
    return f"{widths[0]}..{widths[-1]}" if len(widths) > 2 else ",".join(map(str, widths))


def _failure_lines(result: CheckResult) -> list[str]:
    """One line per diverged run, then one per failing vector: its worst entry."""
    axis = result.settings.get("axis", "width")
    lines = [f"{axis} {w}, seed {s}: {why}" for _, w, s, _, why in result.diverged]
    for name, entries in result.failures.items():
        worst = max(entries, key=lambda r: abs(r.slope) if math.isfinite(r.slope) else 1e9)
        when = "at init" if worst.step == 0 else f"after step {worst.step}"
        lines.append(f"{result.where(name)}: {worst.verdict} ({when})")
    return lines


def fit_slope(widths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log value on log width.

    -inf for a quantity exactly 0 at every width; nan when some widths are exactly 0 and others
    not, or when a run diverged (inf or nan): no power law describes either.
    """
    if not all(math.isfinite(v) for v in values):
        return math.nan
    zero = [v <= ZERO_RMS for v in values]
    if all(zero):
        return -math.inf
    if any(zero):
        return math.nan
    xs = [math.log(w) for w in widths]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
            / sum((x - mx) ** 2 for x in xs))


def judge_slope(slope: float, exp: Expectation, tol: float, step: int,
                rms: dict[int, float]) -> tuple[bool, str]:
    """Whether one slope meets its expectation, and the verdict (``rms``: width -> RMS)."""
    return _judge(slope, exp, tol, step, rms)


def _judge(slope: float, exp: Expectation, tol: float, step: int,
           rms: dict[int, float]) -> tuple[bool, str]:
    e = exp.exponent
    what = "at init" if step == 0 else "in its change"
    if math.isnan(slope):
        bad = [w for w, r in rms.items() if not math.isfinite(r)]
        if bad:
            return False, (f"not finite {what}: the model's own values are inf or nan at "
                           f"width {', '.join(map(str, bad))}, so no slope can be fit")
        return False, f"exactly zero {what} at some widths or seeds but not others, so no slope"
    if slope == -math.inf:
        if e is NEG_INF or exp.bound == "at_most":
            return True, f"exactly zero {what}"
        return False, f"exactly zero {what}: frozen, expected {exp.render()}"
    if e is NEG_INF:
        return False, f"nonzero {what} (slope {slope:+.2f}), expected exactly zero"
    target = float(e)
    if exp.bound == "grows":
        if slope > tol:
            return True, f"blows up {what}, as predicted (slope {slope:+.2f})"
        return False, f"does not blow up {what}: slope {slope:+.2f}, expected {exp.render()}"
    n = exp.var
    if exp.bound == "at_most" and slope <= target + tol:
        return True, f"O({n}^{as_str(e)}) {what}"
    if abs(slope - target) <= tol:
        return True, f"{n}^{as_str(e)} {what}"
    if slope > target:
        grows = "blows up" if target >= 0 else "shrinks too slowly"
        return False, f"{grows} {what}: slope {slope:+.2f}, expected {exp.render()}"
    frozen = "freezes" if step else "vanishes"
    return False, f"{frozen} {what}: slope {slope:+.2f}, expected {exp.render()}"


def judge(program: Program, optimizer: Optimizer, abc: dict[str, ABC],
          measurements: Measurements, *, against: str = "mup",
          tolerance: float = TOLERANCE,
          expected: dict[tuple[str, str], Expectation] | None = None) -> CheckResult:
    """Fit every vector's slope per step and compare it with the engine's expectation (or
    ``expected``'s, e.g. the depth's: the measurements' "width" axis is then the depth)."""
    if tolerance <= 0:
        raise UsageError("the tolerance must be positive")
    widths, steps, seeds = (measurements.axis(k) for k in (2, 1, 3))
    if len(widths) < 2:
        raise UsageError("a slope needs at least two widths")
    if expected is None:
        expected = expectations(program, optimizer, abc, against)
    last = max(steps)
    if last < 2:
        raise UsageError("the check judges changes from step 2 on (a first step can scale "
                         "differently): train at least 2 steps")
    judged_steps = {0} | {t for t in steps if t >= 2}
    results = []
    for name in measurements.vectors:
        for t in steps:
            per_seed = [fit_slope(widths, [measurements.rms[(name, t, w, s)] for w in widths])
                        for s in seeds]
            if all(x == -math.inf for x in per_seed):
                slope = -math.inf
            elif all(math.isfinite(x) for x in per_seed):
                slope = sum(per_seed) / len(per_seed)
            else:  # diverged somewhere, or zero for some seeds only
                slope = math.nan
            spread = (math.sqrt(sum((x - slope) ** 2 for x in per_seed) / (len(per_seed) - 1))
                      if len(per_seed) > 1 and math.isfinite(slope) else math.nan)
            rms = {w: sum(measurements.rms[(name, t, w, s)] for s in seeds) / len(seeds)
                   for w in widths}
            exp = expected.get((name, "init" if t == 0 else "change"))
            judged = exp is not None and t in judged_steps
            ok, verdict = (_judge(slope, exp, tolerance, t, rms) if exp
                           else (True, "not a program vector"))
            if exp is not None and math.isnan(slope):  # no slope: which runs, and why
                ok, verdict = False, no_slope(measurements, name, t, widths, seeds,
                                              "width" if exp.var == "n" else "depth")
            if not judged and all(math.isfinite(r) for r in rms.values()):
                ok, verdict = True, f"{verdict} (step 1: not judged)"
            results.append(TensorResult(name, t, slope, spread, rms, exp, judged, ok, verdict))
    return CheckResult(results, tolerance, against, widths, seeds, last,
                       settings={"program": program.name, "optimizer": optimizer.name},
                       unstable=_unstable(results), diverged=diverged_runs(measurements),
                       accelerating=_accelerating(results),
                       saturated=_saturated(program, results))


def _unstable(results: list[TensorResult]) -> list[tuple[str, int, int, float]]:
    """Changes that grow more than UNSTABLE_GROWTH-fold in one step (from step 3 on) past the
    vector's own nonzero size at init, or that overflow to inf or nan: the run diverges, so its
    slopes say nothing about scaling. Growth is inf for an overflow."""
    by = {(r.name, r.step): r.rms for r in results}
    out = []
    for (name, t), rms in by.items():
        if t < 3 or (name, t - 1) not in by or (name, 0) not in by:
            continue
        before, init = by[(name, t - 1)], by[(name, 0)]
        for w, now in rms.items():
            prev, start = before.get(w, 0.0), init.get(w, 0.0)
            if not (math.isfinite(prev) and math.isfinite(start)) or prev <= ZERO_RMS:
                continue
            if not math.isfinite(now):
                out.append((name, w, t, math.inf))
            elif start > ZERO_RMS and now > UNSTABLE_GROWTH * prev and now > start:
                out.append((name, w, t, now / prev))
    return out


def _accelerating(results: list[TensorResult]) -> list[tuple[str, int, int, float]]:
    """Changes that grow more than ACCELERATING times linearly in one step (from step 3 on),
    past the vector's own nonzero size at init: the run has left the small-update regime.
    Vectors that start at exactly 0 start moving a step late and are left out, as in
    :func:`_unstable`, and so are the growths :func:`_unstable` already reports."""
    by = {(r.name, r.step): r.rms for r in results}
    out = []
    for (name, t), rms in by.items():
        if t < 3 or (name, t - 1) not in by or (name, 0) not in by:
            continue
        for w, now in rms.items():
            prev, start = by[(name, t - 1)].get(w, 0.0), by[(name, 0)].get(w, 0.0)
            if not all(math.isfinite(x) and x > ZERO_RMS for x in (now, prev, start)):
                continue
            over = now / prev / (t / (t - 1))
            if over > ACCELERATING and now / prev <= UNSTABLE_GROWTH:
                out.append((name, w, t, over))
    return out


def _saturated(program: Program, results: list[TensorResult]) -> list[tuple[str, int, int,
                                                                                float]]:
    """Attention logits (the outputs of a per-head ``dot``) whose RMS after a step, bounded
    below by its change less its size at init, reaches SATURATED_LOGITS."""
    logits = {i.out for i in program.body if isinstance(i, Dot) and i.over is not None}
    logits |= {name for v, name in repetitions(program) if v in logits}
    init = {r.name: r.rms for r in results if r.step == 0}
    out = []
    for r in results:
        if r.name not in logits or r.step == 0:
            continue
        for w, change in r.rms.items():
            low = change - init[r.name].get(w, 0.0)
            if math.isfinite(low) and low >= SATURATED_LOGITS:
                out.append((r.name, w, r.step, change))
    return out


# --- rendering -----------------------------------------------------------------------------------


def render(result: CheckResult) -> str:
    """The check as a table: per vector the init slope and the change slope after each step."""
    s = result.settings
    steps = range(1, result.steps + 1)
    ref = "what µP requires" if result.against == "mup" else "the engine's prediction"
    depth = s.get("axis") == "depth"
    axis = (f"depths {', '.join(map(str, result.widths))} at width {s.get('width')}" if depth
            else f"widths {', '.join(map(str, result.widths))}")
    lines = [f"coordinate check of {s.get('program', 'the module')}: {s.get('label', '')}",
             f"{axis} x {len(result.seeds)} seed(s), "
             f"{result.steps} step(s) of {s.get('optimizer', '?')} at lr {s.get('lr', '?')}, "
             f"batch {s.get('batch_size', '?')}, on {s.get('device', '?')}"
             + (f" under {s['autocast']} autocast" if s.get("autocast") else ""),
             f"slope of log RMS against log {'depth' if depth else 'width'} (± spread over "
             f"seeds), against {ref}, "
             f"tolerance ±{result.tolerance}", ""]
    by = {(r.name, r.step): r for r in result.results}
    names = list(dict.fromkeys(r.name for r in result.results))
    header = ["vector", "init", "expected"] + [f"change t={t}" for t in steps] + ["expected", ""]
    rows = []
    for name in names:
        init = by[(name, 0)]
        last = by[(name, result.steps)]
        row = [name, _cell(init), init.expected.render() if init.expected else "-"]
        row += [_cell(by[(name, t)]) + ("" if by[(name, t)].judged else "*") for t in steps]
        bad = [r for r in result.results if r.name == name and not r.ok]
        row += [last.expected.render() if last.expected else "-", "FAIL" if bad else "ok"]
        rows.append(row)
    sizes = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, sizes, strict=True)).rstrip())
    if result.steps >= 2:
        lines.append("(* step 1 is shown but not judged: a first step can scale differently)")
    lines.append("")
    if result.unstable:
        name, width, t, growth = max(result.unstable, key=lambda u: u[3])
        vectors = len({u[0] for u in result.unstable})
        lr = s.get("lr")
        hint = f" (e.g. --lr {lr / 10:g})" if isinstance(lr, (int, float)) else ""
        grew = ("overflowed to inf or nan" if growth == math.inf
                else f"grew x{growth:.1f}" if growth < 10 else f"grew x{growth:.0f}")
        lines += [f"WARNING: training may be diverging: the change of {name} {grew} from step "
                  f"{t - 1} to step {t} at {s.get('axis', 'width')} {width}",
                  f"  ({vectors} vector(s), sub-expressions included); the slopes then measure "
                  "the run's blow-up,",
                  f"  not the parametrization: lower the learning rate{hint}", ""]
    if not result.unstable and result.regime_warning():
        lines += [f"WARNING: {result.regime_warning()}", ""]
    failures = result.failures
    how = "µP requires" if result.against == "mup" else "predicted"
    if result.diverged:
        lr = s.get("lr")
        hint = f" (e.g. --lr {lr / 10:g})" if isinstance(lr, (int, float)) else ""
        runs = len(result.diverged)
        lines.append(f"DIVERGED: {runs} run(s) overflowed to inf or nan, so no slope "
                     f"can be judged; lower the learning rate{hint}:")
        lines += [f"  {line}" for line in _failure_lines(result)[:runs]]
        if failures:
            lines.append(f"  ({len(failures)} vector(s) fail as a result)")
    elif not failures:
        caveat = " (but see the warning above)" if result.unstable else ""
        lines.append(f"PASS: every vector scales as {how}{caveat}")
    else:
        lines.append(f"FAIL: {len(failures)} vector(s) do not scale as {how}:")
        lines += [f"  {line}" for line in _failure_lines(result)]
    return "\n".join(lines) + "\n"


def _cell(r: TensorResult) -> str:
    if r.slope == -math.inf:
        return "zero"
    if math.isnan(r.slope):
        return "n/a"
    return f"{r.slope:+.2f}" + (f"±{r.spread:.2f}" if math.isfinite(r.spread) else "")
