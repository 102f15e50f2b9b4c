"""Training-step time of the emitted µP module against the same network written by hand.

    python benchmarks/bench_step.py [--width 4096] [--batch 64] [--device auto] [--rounds 7]

Three versions of examples/mlp.tp (3072 -> width -> width -> 10, biases, relu), each trained with
Adam: the module `tensorprog derive -o` writes; a hand-written torch model (nn.Linear layers, one
optimizer group); and the mup package's version (MuReadout + set_base_shapes + MuAdam), when mup
is installed (`pip install --no-deps mup`; it is not a dependency of tensorprog). Target: the
emitted module within 3% of the hand-written one.

The versions run interleaved, round after round, and each round times a block of steps per
version, so that load on a shared machine hits all of them alike; the table gives the median
over rounds of each version's step time and of its ratio to the hand-written one in the same round.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.measure import pick_device

ROOT = Path(__file__).resolve().parent.parent


def emitted(width: int, device: str):
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    abc, _, label, _ = choose(program, OPTIMIZERS["adam"], "mup")
    module = load_module(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label,
                              command="bench"), "mlp_mup")
    model = module.Model(width, device=device)
    return model, module.make_optimizer(model, lr=1e-3)


def hand_written(width: int, device: str):
    model = torch.nn.Sequential(
        torch.nn.Linear(3072, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
        torch.nn.ReLU(), torch.nn.Linear(width, 10, bias=False)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def with_mup(width: int, device: str):
    import mup

    def build(w: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(3072, w), torch.nn.ReLU(), torch.nn.Linear(w, w), torch.nn.ReLU(),
            mup.MuReadout(w, 10, bias=False))

    model = build(width)
    mup.set_base_shapes(model, build(256), delta=build(512))
    model = model.to(device)
    return model, mup.MuAdam(model.parameters(), lr=1e-3)


def step_time(model, opt, x, target, steps: int, device: str) -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps timed per version per round")
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3072, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)
    builders = {"hand-written torch": hand_written, "tensorprog (emitted)": emitted}
    try:
        import mup  # noqa: F401

        builders["mup (MuReadout + MuAdam)"] = with_mup
    except ImportError:
        print("mup is not installed: its row is left out (pip install --no-deps mup)")
    runs = {name: build(args.width, device) for name, build in builders.items()}
    for model, opt in runs.values():  # warm-up: allocator, optimizer state, kernels
        step_time(model, opt, x, target, 2, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            times[name].append(step_time(model, opt, x, target, args.steps, device))
    base = times["hand-written torch"]
    where = (torch.cuda.get_device_name() if device.startswith("cuda")
             else f"CPU, {os.cpu_count()} cores")
    print(f"machine: {platform.machine()}, {where}, torch {torch.__version__}; width "
          f"{args.width}, batch {args.batch}, Adam, median of {args.rounds} rounds x "
          f"{args.steps} steps\n")
    print("| version | ms / step | ratio to hand-written (median of per-round ratios) |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(f"| {name} | {1e3 * statistics.median(ts):.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
