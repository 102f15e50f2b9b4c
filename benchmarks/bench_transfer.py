"""Wall time of a µTransfer sweep and its parallel speedup.

    python benchmarks/bench_transfer.py [--jobs 1,2]

Runs the default MLP sweep on digits (µP and SP, widths 64..1024, 11 learning rates, 2 seeds,
60 Adam steps) with no cache, once per worker count, and reports the wall time and the speedup
over one worker. Workers are separate processes (spawned), each with cores / jobs torch threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.transfer import sweep

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="1,2", help="worker counts to compare")
    args = ap.parse_args()
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| workers | trials | wall time (s) | speedup |")
    print("|---:|---:|---:|---:|")
    first = None
    for jobs in (int(j) for j in args.jobs.split(",")):
        t0 = time.perf_counter()
        s = sweep(program, OPTIMIZERS["adam"], "digits", jobs=jobs, cache=None)
        wall = time.perf_counter() - t0
        first = first or wall
        print(f"| {jobs} | {s.settings['trials']} | {wall:.1f} | {first / wall:.2f} |")


if __name__ == "__main__":
    main()
