"""Draw docs/figures/mulimit_convergence.png: finite µP networks trained by SGD converge to the
µ-limit that tensorprog.limits.mu computes from the program; NTP's features freeze.

    python docs/figures/make_mulimit.py [--widths 64,...] [--seeds 8] [--samples 262144]

Two programs: a 3-hidden-layer relu MLP with biases (base width 64, two hidden n × n weights)
and examples/gated_mlp.tp; 8 fixed inputs and targets, 5 full-batch SGD steps, float64. Left:
the RMS distance of one network's outputs at steps 0..5 to the limit (Monte Carlo over
``--samples`` draws), mean over seeds. Right: the RMS change of the last pre-activation after 5
steps, under µP and NTP, and the limit's. Right: NTP's outputs against the kernel regime
(the NTK limit, tensorprog.limits.ntk, from each network's own f_0). Prints the tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.limits.mu import finite_training, mu_limit  # noqa: E402
from tensorprog.limits.ntk import ntk_limit  # noqa: E402

HERE = Path(__file__).resolve().parent
MLP3 = """width n = 64
dim d = 8
dim o = 1
input x : [d]
param W1 : [n, d]
param b1 : [n]
param W2 : [n, n]
param b2 : [n]
param W3 : [n, n]
param b3 : [n]
param W4 : [o, n]
h1 = W1 @ x + b1
h2 = W2 @ relu(h1) + b2
h3 = W3 @ relu(h2) + b3
output y = W4 @ relu(h3)
"""
# name, program, input dim, output dim, lr, the feature plotted
CASES = [("3-hidden-layer relu MLP", MLP3, 8, 1, 0.01, "h3"),
         ("gated MLP", (HERE.parent.parent / "examples" / "gated_mlp.tp").read_text(), 16, 4,
          0.1, "g_3")]


def rms_per_seed(out: np.ndarray, limit: np.ndarray) -> float:
    return float(np.mean(np.sqrt(np.mean((out - limit) ** 2, axis=(1, 2, 3)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,128,256,512,1024,2048,4096")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2**18)
    ap.add_argument("--out", default=str(HERE / "mulimit_convergence.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    widths = [int(w) for w in args.widths.split(",")]
    steps = 5
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for row, (name, source, d, o, lr, feature) in zip(axes, CASES, strict=True):
        program = tp.parse(source)
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((8, d)), rng.standard_normal((8, o))
        start = time.perf_counter()
        limit = mu_limit(program, x, y, steps=steps, lr=lr, samples=args.samples)
        took = time.perf_counter() - start
        ntk = ntk_limit(program, x, samples=args.samples)
        errors, moves, ntp_errors = [], {"mup": [], "ntp": []}, []
        for n in widths:
            out, move = finite_training(program, x, y, n, steps=steps, lr=lr,
                                        seeds=range(args.seeds))
            errors.append(rms_per_seed(out, limit.outputs))
            moves["mup"].append(float(move[feature].mean(0)[-1]))
            out, move = finite_training(program, x, y, n, steps=steps, lr=lr,
                                        seeds=range(args.seeds), param="ntp")
            moves["ntp"].append(float(move[feature].mean(0)[-1]))
            kernel = np.stack([ntk.outputs(o[0], y, steps=steps, lr=lr) for o in out])
            ntp_errors.append(rms_per_seed(out, kernel))
        slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
        ntp_slope = np.polyfit(np.log(widths), np.log(moves["ntp"]), 1)[0]
        ntk_slope = np.polyfit(np.log(widths), np.log(ntp_errors), 1)[0]
        lim_move = limit.feature_change[feature][-1]
        print(f"## {name}: lr {lr}, limit over {args.samples} draws in {took:.1f} s")
        print(f"limit loss, steps 0..{steps}: "
              + ", ".join(f"{v:.4f}" for v in limit.as_dict()["loss"]))
        print(f"limit change of {feature} after {steps} steps: {lim_move:.4f}")
        print("| width | µP output error | µP feature change | NTP feature change | "
              "NTP output error vs. NTK |")
        print("|---:|---:|---:|---:|---:|")
        for n, e, m, t, k in zip(widths, errors, moves["mup"], moves["ntp"], ntp_errors,
                                 strict=True):
            print(f"| {n} | {e:.4f} | {m:.4f} | {t:.5f} | {k:.4f} |")
        print(f"slopes: µP output error {slope:.3f}, NTP feature change {ntp_slope:.3f}, "
              f"NTP output error vs. the kernel regime {ntk_slope:.3f}\n")
        a, b, c = row
        a.loglog(widths, errors, "o-", label=f"µP, SGD: slope {slope:.2f}")
        a.loglog(widths, errors[0] * (np.array(widths) / widths[0]) ** -0.5, "k--", lw=1,
                 label="n^-1/2")
        a.set_xlabel("width n")
        a.set_ylabel(f"RMS(f_t − f_t^∞), t ≤ {steps}")
        a.set_title(f"{name}: outputs vs. the µ-limit")
        a.legend()
        b.loglog(widths, moves["mup"], "o-", label="µP (finite)")
        b.loglog(widths, moves["ntp"], "s-", label=f"NTP (finite): slope {ntp_slope:.2f}")
        b.axhline(lim_move, color="k", ls=":", label="µ-limit")
        b.set_xlabel("width n")
        b.set_ylabel(f"RMS({feature}_{steps} − {feature}_0)")
        b.set_title("features: learned under µP, frozen under NTP")
        b.legend()
        c.loglog(widths, ntp_errors, "s-", color="C1", label=f"NTP, SGD: slope {ntk_slope:.2f}")
        c.loglog(widths, ntp_errors[0] * (np.array(widths) / widths[0]) ** -0.5, "k--", lw=1,
                 label="n^-1/2")
        c.set_xlabel("width n")
        c.set_ylabel(f"RMS(f_t − f_t^NTK), t ≤ {steps}")
        c.set_title("NTP: outputs follow the NTK")
        c.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
