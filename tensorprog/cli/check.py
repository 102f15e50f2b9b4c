"""``tensorprog check``: the coordinate check. The emitted module is trained at several widths (or
depths) and every vector's scaling is judged against µP or the engine's prediction; a failed
check exits with 1."""

from __future__ import annotations

import argparse
import sys

from ..engine.derive import CONVENTIONS
from ..engine.optimizers import resolve
from ..errors import UsageError
from ..lang.parse import parse_file
from ..numerics.coordcheck import coord_check
from ..numerics.judge import render
from ..numerics.measure import pick_device
from ..numerics.plots import coord_plot
from . import common

RANGES: common.Ranges = (
    ("--steps", "steps", 2, 1000, "the check judges changes from step 2 on (a first step can "
     "scale differently); it is about the first steps, so beyond 1000 a run only costs time"),
    ("--seeds", "seeds", 1, 100, "the mean over seeds steadies after a few"),
    ("--batch-size", "batch_size", 1, 65536, "every sample's vectors are kept in memory"),
)


def add_parser(sub) -> None:
    k = sub.add_parser("check", help="coordinate check: train the emitted module at several widths "
                                     "and judge every vector's scaling (needs torch)")
    k.add_argument("program", help="a .tp file")
    common.add_optimizer(k, "adam")
    k.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3",
                   help="which member of the abc-symmetry family to emit (default: table3)")
    common.add_module_options(k, "the check then expects those vectors to start at exactly 0")
    k.add_argument("--widths", metavar="W1,W2,...",
                   help="widths to train (default: 64,128,256,512,1024,2048)")
    k.set_defaults(default_widths="64,128,256,512,1024,2048")
    common.add_depth_options(k, "check")
    k.add_argument("--steps", type=int, default=3,
                   help="training steps per run, at least 2 (default: 3)")
    k.add_argument("--seeds", type=int, default=3, help="seeds per width (default: 3)")
    k.add_argument("--lr", type=float, help="base learning rate (default: 0.1 for sgd and "
                                            "momentum, 0.01 for adam, adamw and muon, 0.001 "
                                            "for lion)")
    k.add_argument("--batch-size", type=int,
                   help="samples per step (default: 16, or 16 tokens' worth of sequences)")
    k.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    k.add_argument("--autocast", choices=["none", "bf16"], default="none",
                   help="train under bfloat16 autocast (params and optimizer state stay "
                        "float32; the vectors are recorded in float32); default: none")
    k.add_argument("--against", choices=["mup", "predicted"], default="mup",
                   help="judge against what µP requires (default), or against the engine's "
                        "prediction for this parametrization")
    k.add_argument("--tolerance", type=float, default=0.15,
                   help="allowed |slope - expected exponent| (default: 0.15)")
    k.add_argument("--plot", metavar="FILE.png", help="draw the coordinate-check figure")
    k.add_argument("--json", action="store_true", help="machine-readable output")


def interrupted(args: argparse.Namespace) -> str:
    """What is true after Ctrl-C (see main.py)."""
    return ("a check keeps nothing between runs: run it again for the verdict (fewer --widths or "
            "--seeds run faster)")


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    common.check_ranges(args, RANGES)
    if not (0 < args.tolerance < 0.5):  # also refuses nan
        raise UsageError(f"--tolerance {args.tolerance}: the tolerance must be positive and "
                         "below 1/2",
                         help="exponents differ by multiples of 1/2 or less, so a tolerance of "
                              "1/2 cannot tell n^(1/2) from n^0")
    program = parse_file(args.program)
    common.check_base_width(args, program)
    common.check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    common.check_plot(args, args.program)
    widths, depths, width = common.axis(args)
    device = pick_device(args.device)
    result = coord_check(program, optimizer, param=args.param, convention=args.convention,
                         readout_zero_init=args.readout_zero_init, zero=args.zero_init,
                         base_width=args.base_width,
                         widths=widths, steps=args.steps, seeds=args.seeds,
                         lr=args.lr, batch_size=args.batch_size, device=device,
                         against=args.against, tolerance=args.tolerance,
                         progress=sys.stderr.isatty(), depths=depths, width=width,
                         depth_convention=args.depth_convention,
                         autocast=None if args.autocast == "none" else args.autocast)
    common.report(args, result, render, coord_plot)
    return 0 if result.passed else 1
