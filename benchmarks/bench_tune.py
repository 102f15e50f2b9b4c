"""Tuning at a small width against tuning at the large one (TP5's µTransfer), and the overhead
of running trials on Ray against the local worker pool.

    python benchmarks/bench_tune.py [--trials 16] [--repeats 2] [--small 64] [--large 512,1024]
    python benchmarks/bench_tune.py --quick      # tiny sizes: what the test suite runs
    python benchmarks/bench_tune.py --program examples/transformer.tp --data text --no-ray

1. Overhead: one transfer sweep of examples/mlp.tp on digits (widths 32 and 64, 4 learning
   rates, 1 seed, no cache) in 2 local worker processes, then as Ray tasks on a local Ray
   instance of 2 CPUs (its start timed apart), alternated ``--rounds`` times. ``--no-ray``
   leaves it out.
2. TP5: per repeat (the sampler's seed), a study of ``--trials`` trials of µP at ``--small``,
   then one run at each ``--large`` width with its values; against a study of the same number
   of trials directly at the largest width; and SP tuned at ``--small`` and used at the largest
   width as the contrast. Reports the final training loss each reaches (mean ± spread over the
   repeats) and the compute each spends (trial-seconds, and FLOPs estimated from the program:
   6 per weight per sample and step, over the steps each trial ran).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.transfer import sweep
from tensorprog.numerics.tune import train_once, tune

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp.tp"


def overhead(jobs: int, steps: int, rounds: int, widths=(32, 64)) -> dict:
    """Seconds of one small sweep on the local pool and on a local Ray instance, alternated
    ``rounds`` times (the pool starts its workers each time; Ray's stay up after the first)."""
    import ray

    program = tp.parse_file(MLP)
    kw = dict(params=("mup",), widths=widths, values=[1e-3, 3e-3, 1e-2, 3e-2], steps=steps,
              seeds=1, cache=None)
    t0 = time.perf_counter()
    ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    times: dict = {"trials": len(widths) * 4, "ray_start": time.perf_counter() - t0,
                   "pool": [], "ray": []}
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            sweep(program, OPTIMIZERS["adam"], "digits", jobs=jobs, **kw)
            times["pool"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sweep(program, OPTIMIZERS["adam"], "digits", ray_address="local", **kw)
            times["ray"].append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return times


def comparison(args, storage_dir: str) -> dict[str, list[dict]]:
    """Per repeat, each arm's loss at the largest width and its compute."""
    program = tp.parse_file(args.program)
    adam = OPTIMIZERS["adam"]
    largest = max(args.large)
    common = dict(trials=args.trials, steps=args.steps, batch_size=args.batch_size,
                  cache=storage_dir, jobs=args.jobs, pruner=args.pruner)
    arms: dict[str, list[dict]] = {"mup_small": [], "direct": [], "sp_small": []}
    for r in range(args.repeats):
        for arm, param, width in (("mup_small", "mup", args.small),
                                  ("sp_small", "sp", args.small),
                                  ("direct", "mup", largest)):
            tuned = tune(program, adam, args.data, width=width, param=param, seed=r, **common)
            row = {"repeat": r, "tuned_at": width, "study_loss": tuned.loss,
                   "seconds": tuned.trial_seconds, "flops": tuned.flops, "lr": tuned.values["lr"],
                   "at": {}}
            targets = args.large if arm == "mup_small" else [largest]
            for w in targets:
                if arm == "direct" and w == width:  # the study's own best trial at this width
                    row["at"][w] = tuned.loss
                    continue
                once = train_once(program, adam, args.data, tuned.values, width=w, param=param,
                                  steps=args.steps, batch_size=args.batch_size, seed=r)
                row["at"][w] = once["loss"]  # None: diverged
                row["seconds"] += once["seconds"]
                row["flops"] += once["flops"]
            arms[arm].append(row)
            print(f"repeat {r} {arm}: {row}", file=sys.stderr)
    return arms


def _spread(xs: list[float | None]) -> str:
    ok = [x for x in xs if x is not None]
    if len(ok) < len(xs):
        return f"{len(xs) - len(ok)} of {len(xs)} diverged"
    if len(ok) == 1:
        return f"{ok[0]:.4f}"
    return f"{statistics.mean(ok):.4f} ± {statistics.stdev(ok):.4f}"


def table(arms: dict[str, list[dict]], args) -> str:
    largest = max(args.large)
    names = {"mup_small": f"µP, tuned at {args.small}, trained once",
             "direct": f"µP, tuned directly at {largest}",
             "sp_small": f"SP, tuned at {args.small}, trained once"}
    head = ["arm", *(f"loss at {w}" for w in args.large), "trial-seconds", "FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, rows in arms.items():
        cells = [names[arm]]
        for w in args.large:
            got = [row["at"].get(w, "-") for row in rows]
            cells.append("-" if "-" in got else _spread(got))
        cells.append(f"{statistics.mean(row['seconds'] for row in rows):.0f}")
        cells.append(f"{statistics.mean(row['flops'] for row in rows):.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--program", default=str(MLP), help="the program of the TP5 comparison")
    ap.add_argument("--data", default="digits", help="its data: digits or text")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--small", type=int, default=64)
    ap.add_argument("--large", default="512,1024")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--pruner", default="median")
    ap.add_argument("--no-ray", action="store_true", help="leave out the overhead figure")
    ap.add_argument("--rounds", type=int, default=2, help="pool/Ray rounds of the overhead")
    ap.add_argument("--no-tp5", action="store_true", help="leave out the TP5 comparison")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (1 trial, widths 16 and 32, 2 steps, no Ray)")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.repeats, args.small, args.large = 1, 1, 16, "32"
        args.steps, args.batch_size, args.jobs, args.no_ray = 2, 8, 1, True
    args.large = sorted(int(w) for w in args.large.split(","))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}")
    if not args.no_ray:
        o = overhead(args.jobs, args.steps, args.rounds)
        print(f"overhead: {o['trials']} trials of {args.steps} steps, seconds per round: local "
              f"pool ({args.jobs} workers) {', '.join(f'{t:.1f}' for t in o['pool'])}; local "
              f"Ray ({args.jobs} CPUs) {', '.join(f'{t:.1f}' for t in o['ray'])}, after a "
              f"start of {o['ray_start']:.1f} s")
    if not args.no_tp5:
        with tempfile.TemporaryDirectory() as storage:
            start = time.perf_counter()
            arms = comparison(args, storage)
            print(f"TP5 comparison: {Path(args.program).name} on {args.data}, "
                  f"{args.trials} trials a study, {args.steps} steps of batch "
                  f"{args.batch_size}, {args.repeats} repeat(s), {args.pruner} pruning, "
                  f"{time.perf_counter() - start:.0f} s in all")
            print(table(arms, args))


if __name__ == "__main__":
    main()
