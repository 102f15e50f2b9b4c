"""``tensorprog transfer``: the µTransfer sweep. The loss is measured against one hyperparameter
at several widths (or depths) on real data, for µP against SP; per-trial results are cached so
that an interrupted sweep resumes."""

from __future__ import annotations

import argparse
import math
import sys

from ..engine.optimizers import resolve
from ..errors import UsageError
from ..lang.parse import parse_file
from ..numerics.backend import import_ray
from ..numerics.measure import pick_device
from ..numerics.plots import transfer_plot
from ..numerics.transfer import render, sweep
from . import common

RANGES: common.Ranges = (
    ("--steps", "steps", 1, 100_000, "each of the sweep's trials trains this long"),
    ("--seeds", "seeds", 1, 100, "the mean over seeds steadies after a few"),
    ("--batch-size", "batch_size", 1, 65536, "a batch is held in memory"),
    ("--jobs", "jobs", 1, 256, "each worker process loads its own torch"),
)

PARAMS = ("mup", "sp", "ntp", "mup-width")


def add_parser(sub) -> None:
    t = sub.add_parser("transfer", help="µTransfer sweep: the loss against a hyperparameter at "
                                        "several widths, µP against SP, on real data")
    t.add_argument("program", help="a .tp file")
    t.add_argument("--data", required=True, metavar="NAME",
                   help="digits (scikit-learn's), text (CPython's pydoc topics, by character) "
                        "or a FILE.pt")
    t.add_argument("--param", type=common.names, default=("mup", "sp"), metavar="mup,sp",
                   help="parametrizations to compare (default: mup,sp; also ntp, and mup-width: "
                        "µP with no depth scaling, for --depths)")
    common.add_optimizer(t, "adam")
    t.add_argument("--widths", metavar="W1,W2,...",
                   help="widths to train (default: 64,128,256,512,1024)")
    t.set_defaults(default_widths="64,128,256,512,1024")
    common.add_depth_options(t, "sweep")
    t.add_argument("--axis", metavar="NAME=V1,V2,...",
                   help="sweep along batch (size), seq (length) or steps instead of widths, at "
                        "one width (--width), e.g. --axis batch=16,32,64,128")
    t.add_argument("--hp", choices=["lr", "init_std", "output_mult"], default="lr",
                   help="the hyperparameter to sweep (default: lr)")
    t.add_argument("--values", metavar="V1,V2,...",
                   help="HP values (default: powers of 2 around the usual optimum)")
    t.add_argument("--steps", type=int, help="training steps per trial (default: 60 for "
                                             "digits, 200 for text)")
    t.add_argument("--seeds", type=int, default=2, help="seeds per trial (default: 2)")
    t.add_argument("--batch-size", type=int,
                   help="samples per step (default: 64 rows, or 32 sequences for text)")
    t.add_argument("--lr", type=float, help="the learning rate when --hp is not lr")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t.add_argument("--jobs", type=int, help="worker processes (default: one per CPU core)")
    t.add_argument("--ray-address", metavar="ADDR",
                   help="run every trial on this Ray cluster ('auto': this machine's; "
                        "'local': start one) instead of local worker processes")
    t.add_argument("--cache", default=".tensorprog-cache",
                   help="directory of per-trial results, so a sweep resumes (default: "
                        ".tensorprog-cache; 'none' to disable)")
    t.add_argument("--plot", metavar="FILE.png", help="draw loss against the HP per width")
    t.add_argument("--json", action="store_true", help="machine-readable output")


def interrupted(args: argparse.Namespace) -> str:
    """What is true after Ctrl-C (see main.py): each finished trial was cached as it finished."""
    if args.cache.lower() == "none":
        return "--cache none kept no trial: the same command runs the whole sweep again"
    return f"the finished trials are cached in {args.cache}: the same command resumes the sweep"


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    common.check_ranges(args, RANGES)
    if args.ray_address:
        import_ray()  # an optional extra: refused before any work when it is missing
    program = parse_file(args.program)
    common.check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    params = _params(args.param)
    values = _values(args.values, args.hp)
    common.check_plot(args, args.program, args.data)
    along, at = _along(args)
    if along:  # a sweep at one width, like --depths: common.axis would refuse --width alone
        widths, depths, width = [], None, args.width
    else:
        widths, depths, width = common.axis(args)
    device = pick_device(args.device)
    result = sweep(program, optimizer, args.data, params=params, hp=args.hp,
                   widths=widths, values=values, steps=args.steps,
                   seeds=args.seeds, batch_size=args.batch_size, lr=args.lr,
                   device=device, jobs=args.jobs,
                   cache=None if args.cache.lower() == "none" else args.cache,
                   progress=sys.stderr.isatty(), depths=depths, width=width,
                   depth_convention=args.depth_convention, ray_address=args.ray_address,
                   axis=along, at=at)
    common.report(args, result, render, transfer_plot)
    return 0


def _params(given: tuple[str, ...]) -> tuple[str, ...]:
    """--param: known parametrizations, each once, in the order given."""
    params = tuple(dict.fromkeys(given))
    unknown = [p for p in params if p not in PARAMS]
    if unknown or not params:
        raise UsageError(f"--param: unknown parametrization {', '.join(unknown)}" if unknown
                         else "--param: no parametrization given",
                         help="choose among mup, sp, ntp, mup-width, e.g. --param mup,sp")
    return params


def _values(text: str | None, hp: str) -> list[float] | None:
    """--values: positive, finite HP values (learning rates also at most MAX_LR)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--values: expected comma-separated numbers, got {text!r}",
                         help="e.g. --values 1e-4,3e-4,1e-3") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(f"--values: {bad[0]} is not a positive number",
                         help="every HP value is a positive multiplier or rate; the sweep "
                              "compares them on a log scale")
    if hp == "lr":
        for v in values:
            common.check_lr("--values", v)
    return values


def _along(args: argparse.Namespace) -> tuple[str | None, list[int] | None]:
    """--axis NAME=V1,V2,...: the axis and its values (checked against the program in the
    sweep), or (None, None)."""
    if args.axis is None:
        return None, None
    name, eq, text = args.axis.partition("=")
    eg = "e.g. --axis batch=16,32,64,128, --axis seq=8,16,32 or --axis steps=30,60,120"
    if not eq:
        raise UsageError(f"--axis {args.axis}: expected NAME=V1,V2,...", help=eg)
    if args.depths is not None or args.widths is not None:
        other = "--depths" if args.depths is not None else "--widths"
        raise UsageError(f"--axis {name} runs at one width: {other} would set another axis",
                         help="give the width as --width N (default: the program's base width)")
    try:
        at = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--axis {args.axis}: expected comma-separated integers", help=eg) \
            from None
    return name.strip(), at
