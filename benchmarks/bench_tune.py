"""Tuning at a small width against tuning at the large one (TP5's µTransfer), and the overhead
of running trials on Ray against the local worker pool.

    python benchmarks/bench_tune.py [--trials 16] [--repeats 2] [--small 64] [--large 512,1024]
    python benchmarks/bench_tune.py --quick      # tiny sizes: what the test suite runs
    python benchmarks/bench_tune.py --program examples/transformer.tp --data text --no-ray
    python benchmarks/bench_tune.py --no-ray --seeds 0,1,2,3 --json tp5.json --plot tp5.png
    python benchmarks/bench_tune.py --from-json tp5.json [more.json ...] --plot tp5.png

1. Overhead: one transfer sweep of examples/mlp.tp on digits (widths 32 and 64, 4 learning
   rates, 1 seed, no cache) in 2 local worker processes, then as Ray tasks on a local Ray
   instance of 2 CPUs (its start timed apart), alternated ``--rounds`` times. ``--no-ray``
   leaves it out.
2. TP5: per repeat (the sampler's seed), a study of ``--trials`` trials of µP at ``--small``,
   then one run at each ``--large`` width with its values; against a study of the same number
   of trials directly at the largest width; and SP tuned at ``--small`` and used at the largest
   width as the contrast. Reports the final training loss each reaches (mean ± spread over the
   repeats) and the compute each spends (trial-seconds, and FLOPs estimated from the program:
   6 per weight per sample and step, over the steps each trial ran). ``--seeds`` names the
   repeats' seeds (default 0 .. ``--repeats`` - 1); ``--json`` writes every arm's rows and every
   trial of its study (params, state, final loss, steps, seconds) after each arm, so a run cut
   short keeps what it finished; ``--plot`` draws each arm's best final loss so far against the
   trial; ``--from-json`` renders the table and figure of earlier dumps (merged) without training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import Emitted
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.transfer import fit_to_data, sweep, trial_plan
from tensorprog.numerics.tune import search_space, train_once, tune

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


def study_trials(tuned) -> list[dict]:
    """Every trial of the study ``tuned`` came from, in the order they were asked."""
    import optuna

    study = optuna.load_study(study_name=tuned.settings["study"],
                              storage=tuned.settings["storage"])
    return [{"number": t.number, "state": t.state.name.lower(), "loss": t.value,
             "params": t.params, "steps": t.user_attrs.get("steps"),
             "seconds": t.user_attrs.get("seconds")}
            for t in study.get_trials(deepcopy=False)]


def comparison(args, storage_dir: str, dump=None) -> dict[str, list[dict]]:
    """Per repeat, each arm's loss at the largest width and its compute; ``dump(arms)`` after
    each arm."""
    program = tp.parse_file(args.program)
    adam = OPTIMIZERS["adam"]
    largest = max(args.large)
    common = dict(trials=args.trials, steps=args.steps, batch_size=args.batch_size,
                  cache=storage_dir, jobs=args.jobs, pruner=args.pruner)
    arms: dict[str, list[dict]] = {"mup_small": [], "direct": [], "sp_small": []}
    for r in args.seeds:
        for arm, param, width in (("mup_small", "mup", args.small),
                                  ("sp_small", "sp", args.small),
                                  ("direct", "mup", largest)):
            tuned = tune(program, adam, args.data, width=width, param=param, seed=r, **common)
            row = {"repeat": r, "tuned_at": width, "study_loss": tuned.loss,
                   "seconds": tuned.trial_seconds, "flops": tuned.flops, "lr": tuned.values["lr"],
                   "factors": tuned.factors, "load": os.getloadavg(), "at": {}}
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
            print(f"repeat {r} {arm}: {row}", file=sys.stderr)
            row["trials"] = study_trials(tuned)
            arms[arm].append(row)
            if dump:
                dump(arms)
    return arms


def best_so_far(trials: list[dict]) -> list[float | None]:
    """Per trial (in the order asked), the lowest final loss of the complete trials so far
    (None before the first): pruned and failed trials have no final loss."""
    out: list[float | None] = []
    best = None
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "complete" and t["loss"] is not None:
            best = t["loss"] if best is None else min(best, t["loss"])
        out.append(best)
    return out


def merged(dumps: list[dict]) -> dict[str, list[dict]]:
    """The arms of several dumps as one: rows of the same arm and seed are refused (which
    one holds?), the dumps must agree on what a row measures, and a seed missing from an arm
    (a run cut short) is left out of every arm."""
    keys = ("program", "data", "trials", "steps", "batch_size", "small", "large", "pruner")
    arms: dict[str, list[dict]] = {"mup_small": [], "direct": [], "sp_small": []}
    for d in dumps:
        if any(d["settings"][k] != dumps[0]["settings"][k] for k in keys):
            raise SystemExit(f"the dumps differ in their settings: {d['settings']} against "
                             f"{dumps[0]['settings']}")
        for arm, rows in d["arms"].items():
            for row in rows:
                if any(r["repeat"] == row["repeat"] for r in arms[arm]):
                    raise SystemExit(f"seed {row['repeat']} of {arm} is in two dumps")
                arms[arm].append({**row, "at": {int(w): x for w, x in row["at"].items()}})
    whole = set.intersection(*({r["repeat"] for r in rows} for rows in arms.values()))
    cut = sorted({r["repeat"] for rows in arms.values() for r in rows} - whole)
    if cut:  # a run stopped between two arms of a seed
        print(f"left out seed(s) {', '.join(map(str, cut))}: not in every arm", file=sys.stderr)
    return {arm: sorted((r for r in rows if r["repeat"] in whole), key=lambda r: r["repeat"])
            for arm, rows in arms.items()}


def plot(arms: dict[str, list[dict]], settings: dict, path: str) -> None:
    """Each arm's best final loss so far against the trial, a thin line per seed and a thick
    one for their median (at the width its study tuned: 64 for the small arms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"mup_small": "tab:blue", "direct": "tab:green", "sp_small": "tab:red"}
    for arm, rows in arms.items():
        if not rows:
            continue
        curves = [best_so_far(row["trials"]) for row in rows]
        for c in curves:
            ax.plot(range(1, len(c) + 1), [math.nan if x is None else x for x in c],
                    color=colours[arm], linewidth=0.7, alpha=0.4)
        median = [statistics.median(x for x in col if x is not None)
                  if any(x is not None for x in col) else math.nan
                  for col in zip(*curves, strict=False)]
        ax.plot(range(1, len(median) + 1), median, color=colours[arm], linewidth=2.0,
                label=f"{_names(settings)[arm].split(',')[0]}, tuned at {rows[0]['tuned_at']}")
    ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("best final training loss so far (at the width tuned)")
    ax.set_title(f"{Path(settings['program']).name} on {settings['data']}: "
                 f"{settings['trials']} trials x {settings['steps']} steps, "
                 f"seeds {', '.join(str(r['repeat']) for r in arms['mup_small'])}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def values_of(settings: dict, param: str, factors: dict) -> dict:
    """The module values (``{"lr", "init_std", "mult"}``) a study's best ``factors`` stand
    for, made as ``tune`` makes them."""
    program = tp.parse_file(ROOT / settings["program"])
    plan = trial_plan(program, OPTIMIZERS["adam"], settings["data"], param=param,
                      width=settings["small"], steps=settings["steps"],
                      batch_size=settings["batch_size"], device="cpu", convention="table3")
    fitted, _ = fit_to_data(program, plan.data)
    module = load_module(Emitted(plan.sources[param]), param)
    return search_space(fitted, module, "adam").module_values(factors)


RECHECKS = {"mup_small": ("mup_small", "mup", False), "direct": ("direct", "mup", False),
            "mup_small_lr": ("mup_small", "mup", True)}


def recheck(arms: dict[str, list[dict]], settings: dict, offset: int) -> dict[str, list]:
    """Each seed's µP values trained again at the largest width with the training seed
    ``seed + offset``: µP-small's, the direct study's (whose own loss is the best of its
    trials on the seed it was chosen on) and µP-small's lr with every σ and multiplier at
    its default. Offset 0 reproduces µP-small's row."""
    program = tp.parse_file(ROOT / settings["program"])
    largest = max(settings["large"])
    out: dict[str, list] = {k: [] for k in RECHECKS}
    for name, (arm, param, lr_only) in RECHECKS.items():
        for row in arms[arm]:
            factors = dict(row["factors"])
            if lr_only:
                factors = {k: (v if k == "lr" else 1.0) for k, v in factors.items()}
            once = train_once(program, OPTIMIZERS["adam"], settings["data"],
                              values_of(settings, param, factors), width=largest,
                              param=param, steps=settings["steps"],
                              batch_size=settings["batch_size"], seed=row["repeat"] + offset)
            out[name].append((row["repeat"], once["loss"]))
            print(f"recheck {name} seed {row['repeat']} + {offset}: {once['loss']}",
                  file=sys.stderr)
    return out


def _spread(xs: list[float | None]) -> str:
    ok = [x for x in xs if x is not None]
    if len(ok) < len(xs):
        return f"{len(xs) - len(ok)} of {len(xs)} diverged"
    if len(ok) == 1:
        return f"{ok[0]:.4f}"
    return f"{statistics.mean(ok):.4f} ± {statistics.stdev(ok):.4f}"


def _names(settings: dict) -> dict[str, str]:
    largest = max(settings["large"])
    return {"mup_small": f"µP, tuned at {settings['small']}, trained once",
            "direct": f"µP, tuned directly at {largest}",
            "sp_small": f"SP, tuned at {settings['small']}, trained once"}


def table(arms: dict[str, list[dict]], settings: dict) -> str:
    names = _names(settings)
    head = ["arm", *(f"loss at {w}" for w in settings["large"]), "trial-seconds", "FLOPs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, rows in arms.items():
        if not rows:
            continue
        cells = [names[arm]]
        for w in settings["large"]:
            got = [row["at"].get(w, "-") for row in rows]
            cells.append("-" if "-" in got else _spread(got))
        cells.append(f"{statistics.mean(row['seconds'] for row in rows):.0f}")
        cells.append(f"{statistics.mean(row['flops'] for row in rows):.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed(arms: dict[str, list[dict]], settings: dict) -> str:
    """One line per seed: each arm's loss at the largest width and its study's best and lr."""
    largest = max(settings["large"])
    out = []
    for row in arms["mup_small"]:
        r = row["repeat"]
        cells = []
        for arm, rows in arms.items():
            for x in rows:
                if x["repeat"] == r:
                    at = x["at"].get(largest)
                    cells.append(f"{arm} {'diverged' if at is None else f'{at:.4f}'} (study "
                                 f"{x['study_loss']:.4f}, lr 2^{math.log2(x['lr']):.1f})")
        out.append(f"seed {r}: " + "; ".join(cells))
    return "\n".join(out)


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
    ap.add_argument("--seeds", help="the repeats' seeds, e.g. 0,1,2,3 (default: --repeats)")
    ap.add_argument("--json", help="write every arm's rows and trials here after each arm")
    ap.add_argument("--plot", help="draw best-loss-so-far against the trial, per arm")
    ap.add_argument("--from-json", nargs="+", metavar="DUMP",
                    help="render the table (and --plot) of earlier --json dumps, merged")
    ap.add_argument("--recheck", type=int, metavar="OFFSET",
                    help="with --from-json: train each seed's µP values again at the largest "
                         "width with the training seed seed + OFFSET")
    ap.add_argument("--no-ray", action="store_true", help="leave out the overhead figure")
    ap.add_argument("--rounds", type=int, default=2, help="pool/Ray rounds of the overhead")
    ap.add_argument("--no-tp5", action="store_true", help="leave out the TP5 comparison")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (1 trial, widths 16 and 32, 2 steps, no Ray)")
    args = ap.parse_args(argv)
    if args.from_json:
        dumps = [json.loads(Path(f).read_text()) for f in args.from_json]
        arms, settings = merged(dumps), dumps[0]["settings"]
        print(table(arms, settings))
        print(per_seed(arms, settings))
        if args.plot:
            plot(arms, settings, args.plot)
        if args.recheck is not None:
            for name, got in recheck(arms, settings, args.recheck).items():
                print(f"recheck at {max(settings['large'])}, seeds + {args.recheck}, {name}: "
                      f"{_spread([x for _, x in got])}; "
                      + ", ".join(f"seed {r} {x}" for r, x in got))
        return
    if args.quick:
        args.trials, args.repeats, args.small, args.large = 1, 1, 16, "32"
        args.steps, args.batch_size, args.jobs, args.no_ray = 2, 8, 1, True
    args.large = sorted(int(w) for w in args.large.split(","))
    args.seeds = ([int(r) for r in args.seeds.split(",")] if args.seeds
                  else list(range(args.repeats)))
    settings = {k: getattr(args, k) for k in ("program", "data", "trials", "steps",
                                               "batch_size", "small", "large", "pruner",
                                               "jobs", "seeds")}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}")
    if not args.no_ray:
        o = overhead(args.jobs, args.steps, args.rounds)
        print(f"overhead: {o['trials']} trials of {args.steps} steps, seconds per round: local "
              f"pool ({args.jobs} workers) {', '.join(f'{t:.1f}' for t in o['pool'])}; local "
              f"Ray ({args.jobs} CPUs) {', '.join(f'{t:.1f}' for t in o['ray'])}, after a "
              f"start of {o['ray_start']:.1f} s")
    if not args.no_tp5:
        settings["program"] = str(Path(args.program).resolve().relative_to(ROOT)
                                  if Path(args.program).resolve().is_relative_to(ROOT)
                                  else args.program)
        machine = {"machine": platform.machine(), "cpus": os.cpu_count(),
                   "load_at_start": os.getloadavg()}

        def dump(arms: dict) -> None:
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"settings": settings, **machine, "load_now": os.getloadavg(),
                     "seconds": time.perf_counter() - start, "arms": arms}, indent=1))

        with tempfile.TemporaryDirectory() as storage:
            start = time.perf_counter()
            arms = comparison(args, storage, dump)
            print(f"TP5 comparison: {Path(args.program).name} on {args.data}, "
                  f"{args.trials} trials a study, {args.steps} steps of batch "
                  f"{args.batch_size}, seeds {', '.join(map(str, args.seeds))}, {args.pruner} "
                  f"pruning, {time.perf_counter() - start:.0f} s in all, load average "
                  f"{machine['load_at_start'][1]:.1f} at the start and "
                  f"{os.getloadavg()[1]:.1f} at the end (5 min)")
            print(table(arms, settings))
            print(per_seed(arms, settings))
            if args.plot:
                plot(arms, settings, args.plot)

if __name__ == "__main__":
    main()
