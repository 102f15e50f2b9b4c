"""Draw docs/figures/mulimit_convergence.png: finite µP networks trained by SGD converge to the
µ-limit computed by tensorprog.mulimit; NTP's features freeze.

    python docs/figures/make_mulimit.py [--widths 64,...] [--seeds 16]

A one-hidden-layer relu MLP with a bias (base width 64), 8 fixed inputs and targets, 5 full-batch
SGD steps at LR 0.02, float64. Left: the RMS distance of one network's outputs at steps 0..5 to
the limit (Monte Carlo over 2^20 particles), mean over seeds. Right: the RMS change of the
pre-activations after 5 steps, under µP and NTP, and the limit's. Prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.mulimit import finite_training, mu_limit  # noqa: E402

HERE = Path(__file__).resolve().parent
PROGRAM = """width n = 64
dim d = 8
dim o = 1
input x : [d]
param W1 : [n, d]
param b1 : [n]
param W2 : [o, n]
h = W1 @ x + b1
z = relu(h)
output y = W2 @ z
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,256,1024,4096,16384")
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--out", default=str(HERE / "mulimit_convergence.png"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    program = tp.parse(PROGRAM)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 8)), rng.standard_normal((8, 1))
    steps, lr = 5, 0.02
    limit = mu_limit(program, x, y, steps=steps, lr=lr, samples=2**20)
    errors, moves = [], {"mup": [], "ntp": []}
    for n in widths:
        out, move = finite_training(program, x, y, n, steps=steps, lr=lr,
                                    seeds=range(args.seeds))
        errors.append(float(np.mean(np.sqrt(np.mean((out - limit.outputs) ** 2,
                                                    axis=(1, 2, 3))))))
        moves["mup"].append(float(move.mean(0)[-1]))
        _, move = finite_training(program, x, y, n, steps=steps, lr=lr,
                                  seeds=range(args.seeds), param="ntp")
        moves["ntp"].append(float(move.mean(0)[-1]))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    ntp_slope = np.polyfit(np.log(widths), np.log(moves["ntp"]), 1)[0]
    print(f"limit outputs, steps 0..{steps} (first input): "
          + ", ".join(f"{v:.3f}" for v in limit.outputs[:, 0, 0]))
    print(f"limit feature change after {steps} steps: {limit.feature_change[-1]:.4f}")
    print("| width | µP output error | µP feature change | NTP feature change |")
    print("|---:|---:|---:|---:|")
    for n, e, m, t in zip(widths, errors, moves["mup"], moves["ntp"], strict=True):
        print(f"| {n} | {e:.4f} | {m:.4f} | {t:.5f} |")
    print(f"slopes: µP output error {slope:.3f}, NTP feature change {ntp_slope:.3f}")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(widths, errors, "o-", label=f"µP, SGD: slope {slope:.2f}")
    a.loglog(widths, errors[0] * (np.array(widths) / widths[0]) ** -0.5, "k--", lw=1,
             label="n^-1/2")
    a.set_xlabel("width n")
    a.set_ylabel("RMS(f_t − f_t^∞) over t ≤ 5, inputs")
    a.set_title("outputs after SGD steps vs. the µ-limit")
    a.legend()
    b.loglog(widths, moves["mup"], "o-", label="µP (finite)")
    b.loglog(widths, moves["ntp"], "s-", label=f"NTP (finite): slope {ntp_slope:.2f}")
    b.axhline(limit.feature_change[-1], color="k", ls=":", label="µ-limit")
    b.set_xlabel("width n")
    b.set_ylabel(f"RMS(h_{steps} − h_0)")
    b.set_title("feature change: learned under µP, frozen under NTP")
    b.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
