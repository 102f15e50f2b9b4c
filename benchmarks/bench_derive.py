"""Derive speed on generated deep programs, and CLI start-up to answer on examples/mlp.tp.

    python benchmarks/bench_derive.py            # prints a markdown table

Targets: 1,000 instructions derive in under 1 s; growth no faster than linear; the CLI answers for
examples/mlp.tp in under 1 s. Times are the best of a few runs (this machine is shared and noisy).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import tensorprog as tp

ROOT = Path(__file__).resolve().parent.parent


def mlp_chain(layers: int) -> str:
    """An MLP with biases: 3 instructions a layer (matmul, bias add, relu)."""
    lines = ["width n = 256", "dim d_in = 32", "dim d_out = 10", "input x : [d_in]",
             "param W0 : [n, d_in]", "param Wo : [d_out, n]"]
    lines += [f"param W{k} : [n, n]\nparam b{k} : [n]" for k in range(1, layers + 1)]
    lines.append("x0 = relu(W0 @ x)")
    lines += [f"x{k} = relu(W{k} @ x{k - 1} + b{k})" for k in range(1, layers + 1)]
    lines.append(f"output y = Wo @ x{layers}")
    return "\n".join(lines) + "\n"


def best(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}\n")
    print("| instructions | parse (s) | derive (s) | derive µs/instruction |")
    print("|---:|---:|---:|---:|")
    previous = None
    for layers, repeats in ((33, 5), (333, 3), (3333, 2)):
        src = mlp_chain(layers)
        t_parse, program = best(lambda s=src: tp.parse(s), repeats)
        t_derive, _ = best(lambda p=program: tp.derive(p, "adam"), repeats)
        size = len(program.body)
        print(f"| {size:,} | {t_parse:.3f} | {t_derive:.3f} | {1e6 * t_derive / size:.0f} |")
        if previous:
            growth = (t_derive / previous[1]) / (size / previous[0])
            print(f"|  (×{size / previous[0]:.0f} size: derive time ×{t_derive / previous[1]:.1f}, "
                  f"{growth:.2f}× linear) | | | |")
        previous = (size, t_derive)
    cmd = [sys.executable, "-m", "tensorprog.cli", "derive", str(ROOT / "examples" / "mlp.tp")]
    t_cli, _ = best(lambda: subprocess.run(cmd, check=True, capture_output=True), 5)
    print(f"\nCLI start-up to answer, `tensorprog derive examples/mlp.tp`: {t_cli:.2f} s")


if __name__ == "__main__":
    main()
