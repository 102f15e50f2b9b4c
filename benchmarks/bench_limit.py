"""NNGP kernel speed: a 10-layer MLP on 256 inputs, on CPU.

    python benchmarks/bench_limit.py            # prints a markdown table

Target: the relu MLP (every step a closed form) in under 1 s. The same MLP with tanh needs a
2-D Gauss-Hermite quadrature per layer and pair of inputs; it is timed for comparison. Times are
the best of a few runs (this machine is shared and noisy).
"""

from __future__ import annotations

import platform
import time

import numpy as np

import tensorprog as tp
from tensorprog.limits.nngp import nngp_kernel


def mlp(layers: int, fn: str) -> str:
    """An MLP with biases and ``layers`` hidden layers of width n."""
    lines = ["width n = 256", "dim d_in = 32", "dim d_out = 10", "input x : [d_in]",
             "param W0 : [n, d_in]", "param b0 : [n]", "param Wo : [d_out, n]"]
    lines += [f"param W{k} : [n, n]\nparam b{k} : [n]" for k in range(1, layers)]
    lines.append(f"x0 = {fn}(W0 @ x + b0)")
    lines += [f"x{k} = {fn}(W{k} @ x{k - 1} + b{k})" for k in range(1, layers)]
    lines.append(f"output y = Wo @ x{layers - 1}")
    return "\n".join(lines) + "\n"


def best(f, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    x = np.random.default_rng(0).standard_normal((256, 32))
    print(f"CPU: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print("| program | inputs | method | time (s) | est. error |")
    print("|---|---|---|---|---|")
    for fn, repeats in (("relu", 5), ("tanh", 1)):
        program = tp.parse(mlp(10, fn))
        k = nngp_kernel(program, x)
        t = best(lambda p=program: nngp_kernel(p, x), repeats)
        method = "closed forms" if k.error == 0 else "Gauss-Hermite 32x32"
        print(f"| 10-layer {fn} MLP | 256 | {method} | {t:.3f} | {k.error:.1e} |")


if __name__ == "__main__":
    main()
