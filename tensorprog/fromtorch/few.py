"""Vectors of few entries in the coordinate check of a traced model: a 2-class classifier's
logits are 4 numbers per width and seed at batch 2, and the RMS of 4 numbers is a noisy
estimate of their scale. Where such a vector fails, :func:`remeasure` says which runs to add
(more seeds; at init only where only its init fails) and :func:`rejudge` judges it again on
its RMS pooled over every seed (docs/check.md, "Vectors of few entries")."""

from __future__ import annotations

import math

from ..numerics.judge import (
    CheckResult,
    Measurements,
    diverged_runs,
    expectations,
    fit_slope,
    judge,
    judge_slope,
)

# A slope whose noise (its standard error from the vector's entries alone, slope_noise) is more
# than tolerance / NOISE_MARGIN cannot tell a tolerated deviation from a failing one: a slope
# exactly µP's then reads past the tolerance in about 1 check in 370 (3 standard errors) at
# most. Such a vector, where it fails, is measured over enough seeds to bring it there.
NOISE_MARGIN = 3.0
# at most this many seeds in all: at init a run is a build and a forward (BEiT's 2-class
# classifier at widths 256..1024 needs 19), a trained run costs the check's own run again
MAX_SEEDS_INIT = 32
MAX_SEEDS_TRAINED = 8


def slope_noise(entries: int, seeds: int, widths) -> float:
    """The standard error of the slope of log RMS on log width where each RMS is of
    ``entries`` independent centred Gaussian numbers per seed, pooled over ``seeds``: the
    square of such an RMS is σ²·χ²ₖ/k (k = entries × seeds), so its log has a standard
    deviation of about 1/√(2k), and a least-squares slope over log widths x divides it by
    √Σ(x − x̄)². Entries that are not independent (a sequence's tokens) make it larger: this
    is a lower bound, which is what picking the vectors that need more seeds takes."""
    xs = [math.log(w) for w in widths]
    mean = sum(xs) / len(xs)
    spread = sum((x - mean) ** 2 for x in xs)
    return 1 / math.sqrt(2 * entries * seeds * spread)


def _weak(result: CheckResult, m: Measurements) -> set[str]:
    """The vectors whose slope over the check's seeds is noisier than the tolerance allows."""
    limit = result.tolerance / NOISE_MARGIN
    return {name for name, k in m.entries.items()
            if slope_noise(k, len(result.seeds), result.widths) > limit}


def remeasure(result: CheckResult, m: Measurements) -> tuple[tuple[int, ...], int] | None:
    """The seeds to add and the steps to train them (0: init alone), or None: where a judged
    entry of a vector of few entries fails with a finite slope, as many seeds as bring its
    slope's noise within tolerance / NOISE_MARGIN (at most MAX_SEEDS_INIT, or MAX_SEEDS_TRAINED
    where a change fails and every run must train)."""
    weak = _weak(result, m)
    failing = [r for r in result.results if not r.ok and r.judged and r.name in weak
               and math.isfinite(r.slope)]
    if not failing or result.diverged:
        return None
    init_only = all(r.step == 0 for r in failing)
    k = min(m.entries[r.name] for r in failing)
    per_seed = slope_noise(k, 1, result.widths)
    need = math.ceil((per_seed * NOISE_MARGIN / result.tolerance) ** 2)
    total = min(need, MAX_SEEDS_INIT if init_only else MAX_SEEDS_TRAINED)
    if total <= len(result.seeds):
        return None
    first = max(result.seeds) + 1
    return tuple(range(first, first + total - len(result.seeds))), 0 if init_only else \
        result.steps


def judge_runs(result: CheckResult, extra: Measurements, steps: int, program, optimizer,
               abc) -> dict[int, str]:
    """Judges the added runs as the check's own are: each seed's alone, for a run that went
    inf or nan (added to ``result.diverged``, which fails the check), a change that blew up
    (``unstable``), compounded or saturated the softmax (added to the regime's lists). Returns
    seed -> why, for each seed whose run diverged or blew up: pooled with the others its RMS
    says nothing about scaling (:func:`rejudge` then fails the vectors it would judge)."""
    broken: dict[int, str] = {}
    expected = expectations(program, optimizer, abc, result.against)
    for seed in extra.axis(3):
        one = _one_seed(extra, seed)
        for v, w, s, t, why in diverged_runs(one):
            result.diverged.append((v, w, s, t, why))
            broken.setdefault(s, f"its run at width {w} went inf or nan at step {t} ({why})")
        if steps < 2 or seed in broken:  # the judge's slopes start at step 2
            continue
        found = judge(program, optimizer, abc, one, against=result.against,
                      tolerance=result.tolerance, expected=expected)
        result.unstable += found.unstable
        result.accelerating += found.accelerating
        result.saturated += found.saturated
        for v, w, t, g in found.unstable:
            grew = "overflowed" if g == math.inf else f"grew x{g:.1f}"
            broken.setdefault(seed, f"the change of {result.where(v)} {grew} from step {t - 1} "
                                    f"to {t} at width {w}")
    return broken


def _one_seed(m: Measurements, seed: int) -> Measurements:
    one = Measurements()
    one.rms = {k: x for k, x in m.rms.items() if k[3] == seed}
    one.stopped = {k: x for k, x in m.stopped.items() if k[1] == seed}
    one.entries = dict(m.entries)
    return one


def rejudge(result: CheckResult, m: Measurements, extra: Measurements, steps: int,
            broken: dict[int, str] | None = None) -> None:
    """Judges every judged entry (up to step ``steps``) of the vectors of few entries again on
    their RMS pooled over the check's seeds and ``extra``'s: per width the root mean square
    over every seed of the per-seed RMS, i.e. the RMS of all their entries together. Its
    slope replaces the mean of the per-seed slopes (the log of a noisy RMS is biased low, and
    a mean of noisy slopes is no less noisy); the verdict says so, and what the check's own
    seeds read. A vector that fails on the pooled RMS fails; so does one with an inf or nan
    RMS in any run, and every one where an added seed's run diverged or blew up (``broken``,
    :func:`judge_runs`), each saying which seed."""
    weak = _weak(result, m)
    seeds = [(m, s) for s in result.seeds] + [(extra, s) for s in extra.axis(3)]
    widths = result.widths
    for r in result.results:
        if r.name not in weak or not r.judged or r.step > steps or r.expected is None \
                or not math.isfinite(r.slope) or r.name in result.drift:
            continue
        runs = [[got.rms.get((r.name, r.step, w, s), math.nan) for w in widths]
                for got, s in seeds]
        bad = next(((w, s) for (_, s), run in zip(seeds, runs, strict=True)
                    for w, x in zip(widths, run, strict=True) if not math.isfinite(x)), None)
        why = (f"its RMS is inf or nan at width {bad[0]}, seed {bad[1]}" if bad else
               next((f"seed {s}'s run: {b}" for s, b in sorted((broken or {}).items())), None))
        if why is not None:  # no slope to pool: the vector fails, and says where
            before, r.verdict = r.ok, (f"{r.verdict}; re-measured over {len(runs)} seeds, "
                                      f"not judged on them: {why}")
            if not before:
                result.remeasured[r.name] = r.verdict
            r.ok = False
            continue
        pooled = {w: math.sqrt(sum(run[i] ** 2 for run in runs) / len(runs))
                  for i, w in enumerate(widths)}
        slope = fit_slope(widths, list(pooled.values()))
        if not math.isfinite(slope):
            continue
        each = [fit_slope(widths, run) for run in runs]
        spread = math.sqrt(sum((x - slope) ** 2 for x in each) / (len(each) - 1))
        ok, verdict = judge_slope(slope, r.expected, result.tolerance, r.step, pooled)
        before = r.ok
        r.verdict = (f"{verdict}; re-measured over {len(runs)} seeds, {m.entries[r.name]} "
                     f"entries each: slope of the RMS pooled over them {slope:+.2f} (±"
                     f"{spread / math.sqrt(len(runs)):.2f}), where {len(result.seeds)} seeds "
                     f"read {r.slope:+.2f}")
        r.slope, r.spread, r.rms, r.ok = slope, spread, pooled, ok
        if not before:
            result.remeasured[r.name] = r.verdict
    result.settings["remeasured_seeds"] = len(seeds)
