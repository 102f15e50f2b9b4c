"""``tensorprog tune``: an Optuna study of the base constants (LR, init σ per role group,
multipliers) at one width; ``-o FILE`` writes the best values as JSON, with the scaling they were
tuned for, for the emitted module's ``Model.from_config`` and ``make_optimizer(config=...)`` or
a traced model's ``MuP(config=...)`` (numerics/tune.py)."""

from __future__ import annotations

import argparse
import json
import sys

from ..engine.optimizers import resolve
from ..errors import UsageError
from ..lang.parse import parse_file
from ..numerics.backend import import_ray
from ..numerics.measure import pick_device
from ..numerics.tune import PRUNERS, render, tune
from . import common
from .output import out, out_json

RANGES: common.Ranges = (
    ("--trials", "trials", 1, 100_000, "a study of a few dozen trials finds the optimum of a "
                                       "handful of HPs"),
    ("--steps", "steps", 1, 100_000, "each trial trains this long"),
    ("--batch-size", "batch_size", 1, 65536, "a batch is held in memory"),
    ("--jobs", "jobs", 1, 256, "each worker process loads its own torch"),
    ("--width", "width", 1, 2**20, "the study trains at this width"),
)


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help="tune the base LR, init σ and multipliers at one width "
                                    "with Optuna, for µTransfer to wider models")
    t.add_argument("program", help="a .tp file")
    t.add_argument("--data", required=True, metavar="NAME",
                   help="digits, text or a FILE.pt (as for transfer)")
    t.add_argument("--width", type=int, help="the width to tune at (default: the base width)")
    t.add_argument("--param", choices=["mup", "sp"], default="mup",
                   help="the parametrization (default: mup)")
    common.add_optimizer(t, "adam")
    t.add_argument("--convention", choices=["table3", "mup", "tp4"], default="table3",
                   help="µP's form (as for derive); under mup the readout has a multiplier, "
                        "which is tuned too")
    t.add_argument("--trials", type=int, default=20,
                   help="finished trials the study holds at the end (default: 20); a rerun "
                        "resumes the study up to this count")
    t.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="stop trials whose running loss falls behind: median (default), asha "
                        "(successive halving) or none")
    t.add_argument("--steps", type=int, help="training steps per trial (default: 60 for "
                                             "digits, 200 for text)")
    t.add_argument("--batch-size", type=int,
                   help="samples per step (default: 64 rows, or 32 sequences for text)")
    t.add_argument("--seed", type=int, default=0,
                   help="the sampler's seed and every trial's init and batches (default: 0)")
    t.add_argument("--storage", metavar="URL",
                   help="the study's database (default: sqlite in --cache); any URL Optuna "
                        "takes, e.g. postgresql://host/db for a study several machines share")
    t.add_argument("--study", metavar="NAME",
                   help="the study's name (default: one made from the program and settings)")
    t.add_argument("--cache", default=".tensorprog-cache",
                   help="directory of the default study database (default: .tensorprog-cache)")
    t.add_argument("--jobs", type=int, default=1,
                   help="trials at once in local worker processes (default: 1)")
    t.add_argument("--ray-address", metavar="ADDR",
                   help="run every trial on this Ray cluster ('auto': this machine's; "
                        "'local': start one), with Ray Tune and Optuna as its search")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t.add_argument("-o", "--output", metavar="FILE.json",
                   help="write the best values, for the emitted module's "
                        "Model.from_config(FILE, width) and make_optimizer(model, config=FILE) "
                        "(or MuP(traced, config=FILE))")
    t.add_argument("--json", action="store_true", help="machine-readable output")


def interrupted(args: argparse.Namespace) -> str:
    return ("the finished trials are in the study: the same command resumes it (trials left "
            "running are trained again)")


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    common.check_ranges(args, RANGES)
    if args.ray_address:
        import_ray()  # an optional extra: refused before any work when it is missing
    if args.output and not args.output.endswith(".json"):
        raise UsageError(f"-o {args.output}: the tuned values are written as JSON",
                         help="give a file name ending in .json")
    program = parse_file(args.program)
    common.check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    if args.width is not None:
        problem = program.width_problem(args.width)
        if problem:
            raise UsageError(f"--width {args.width}: {problem}",
                             help="choose a width every dim of the program divides")
    result = tune(program, optimizer, args.data, width=args.width, trials=args.trials,
                  param=args.param, convention=args.convention, pruner=args.pruner,
                  steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                  storage=args.storage, study_name=args.study,
                  cache=args.cache, jobs=args.jobs, device=pick_device(args.device),
                  ray_address=args.ray_address, progress=sys.stderr.isatty())
    if args.output:
        try:
            with open(args.output, "w") as f:
                json.dump(result.as_dict(), f, indent=1)
                f.write("\n")
        except OSError as err:
            raise UsageError(f"-o {args.output}: cannot write it ({err.strerror or err})",
                             help="choose a path in a directory you can write") from None
    if args.json:
        out_json(result.as_dict())
    else:
        out(render(result) + (f"wrote {args.output}\n" if args.output else ""))
    return 0
