"""Wall time of the coordinate check on examples/mlp.tp at the default widths and seeds.

    python benchmarks/bench_check.py [--device auto] [--widths 64,...,2048] [--seeds 3]

Reports the in-process time of the check's steps (derive, emit, train and judge) per
parametrization, the share spent training, and the whole `tensorprog check --plot` command
(interpreter start, imports and figure included). Best of two runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.coordcheck import DEFAULT_LR
from tensorprog.numerics.judge import judge
from tensorprog.numerics.measure import measure, pick_device

ROOT = Path(__file__).resolve().parent.parent


def _timed(program, param: str, opt: str, widths, seeds: int, device: str):
    """The steps of tensorprog.check, timed apart: (total, training, passed)."""
    optimizer = OPTIMIZERS[opt]
    t0 = time.perf_counter()
    abc, _, label, _ = choose(program, optimizer, param)
    module = load_module(emit(program, abc, optimizer=optimizer, label=label,
                              command="bench"), param)
    t1 = time.perf_counter()
    m = measure(module, widths, seeds=range(seeds), optimizer=opt, device=device,
                lr=DEFAULT_LR[opt])
    t2 = time.perf_counter()
    result = judge(program, optimizer, abc, m)
    return time.perf_counter() - t0, t2 - t1, result.passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--widths", default="64,128,256,512,1024,2048")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    device = pick_device(args.device)
    where = (torch.cuda.get_device_name() if device.startswith("cuda")
             else f"CPU, {os.cpu_count()} cores")
    print(f"machine: {platform.machine()}, {where}, torch {torch.__version__}; widths "
          f"{widths[0]}..{widths[-1]} ({len(widths)}), {args.seeds} seeds, 3 steps\n")
    print("| check | total (s) | of which training (s) | verdict |")
    print("|---|---:|---:|---|")
    for param, opt in (("mup", "adam"), ("sp", "adam"), ("ntp", "sgd")):
        runs = [_timed(program, param, opt, widths, args.seeds, device) for _ in range(2)]
        total, training, passed = min(runs)
        print(f"| {param} + {opt} | {total:.2f} | {training:.2f} | "
              f"{'pass' if passed else 'fail'} |")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tensorprog.cli", "check", str(ROOT / "examples" / "mlp.tp"),
               "--widths", args.widths, "--seeds", str(args.seeds), "--device", device,
               "--plot", str(Path(tmp) / "coord.png")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        print(f"\n`tensorprog check examples/mlp.tp --plot coord.png`: "
              f"{time.perf_counter() - t0:.2f} s end to end")


if __name__ == "__main__":
    main()
