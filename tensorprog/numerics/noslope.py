"""Where a check can fit no slope: a vector whose RMS is inf or nan in some run (the model's own
values are not finite there), or exactly 0 in some runs and not in others (it never moved in
those). Each gets a verdict of its own naming the runs, widths and seeds, so that a non-finite
measurement never passes into a slope or a verdict as a number (no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

ZERO_RMS = 1e-30  # below this an RMS counts as an exact zero (a zero-initialised weight's output)


def no_slope(m, name: str, step: int, widths: Sequence[int], seeds: Sequence[int],
             axis: str = "width") -> str:
    """The verdict on ``name`` at ``step`` where its per-seed slopes are not all finite
    (``m``: judge's Measurements, whose widths are depths where ``axis`` is "depth"): the runs
    whose RMS is inf or nan, else the runs where it is exactly 0 and those where it is not."""
    what = "at init" if step == 0 else "in its change"

    def runs_(pairs) -> str:
        return _runs(pairs, widths, axis)

    runs = {(w, s): m.rms.get((name, step, w, s), math.nan) for s in seeds for w in widths}
    bad = [k for k, v in runs.items() if not math.isfinite(v)]
    # a run that could not take a step (``m.stop``: its loss not finite, its step overflowing)
    stopped = [k for k in bad if k in m.stopped and m.stopped[k][0] <= step]
    if stopped and len(stopped) == len(bad):
        w, s = stopped[0]
        return (f"not measured {what}: its runs in {runs_(stopped)} stopped at step "
                f"{m.stopped[(w, s)][0]} ({m.stopped[(w, s)][1]}), so no slope can be fit")
    if bad:
        return (f"not finite {what}: the model's own values are inf or nan in "
                f"{runs_([k for k in bad if k not in stopped])}, so no slope can be fit")
    zero = [k for k, v in runs.items() if v <= ZERO_RMS]
    moved = [k for k in runs if k not in zero]
    # a change exactly 0: the params it depends on did not move at all in those runs
    why = "" if step == 0 else (" (nothing it depends on moved there: their gradient vanished, "
                                "or its update fell below Adam's eps or float32's rounding)")
    return (f"exactly zero {what} in {runs_(zero)} but not in {runs_(moved)}"
            f"{why}, so no slope can be fit")


def _runs(pairs, widths: Sequence[int], axis: str) -> str:
    """(width, seed) pairs by seed: "seed 0 (width 256, 512), seed 1 (every width)"."""
    by: dict[int, list[int]] = {}
    for w, s in pairs:
        by.setdefault(s, []).append(w)
    return ", ".join(f"seed {s} (" + (f"every {axis}" if len(ws) == len(widths) else
                                      f"{axis} " + ", ".join(map(str, ws))) + ")"
                     for s, ws in sorted(by.items()))


def diverged_runs(m) -> list[tuple[str, int, int, int, str]]:
    """Per run with an inf or nan RMS: the first step where one appears and the first vector
    (in program order) that has it there, so that the report names where the overflow began;
    vector "" where the run stopped before any vector went inf or nan (``m.stopped``)."""
    out = []
    names, steps = m.vectors, m.axis(1)
    for width in m.axis(2):
        for seed in m.axis(3):
            bad = next(((t, v) for t in steps for v in names
                        if not math.isfinite(m.rms.get((v, t, width, seed), 0.0))), None)
            if bad is None:
                continue
            t, v = bad
            stop = m.stopped.get((width, seed))
            if stop and stop[0] == t:  # the run stopped before any vector went inf or nan
                out.append(("", width, seed, t, stop[1]))
            else:
                out.append((v, width, seed, t, f"{v} is the first vector to go inf or nan "
                                               f"(step {t}): the model's own values are not "
                                               "finite"))
    return out
