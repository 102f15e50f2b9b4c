"""Draw docs/figures/limit_convergence.png: finite networks converge to their NNGP limit as n^-1/2.

    python docs/figures/make_limit.py [--widths 64,128,...] [--seeds 16]

For each example, the emitted module (SP init, float64) at each width and seed gives one network's
kernel of the vector its readout reads, K_n = (1/n) Σ_i v_i(x_a) v_i(x_b) over 8 fixed inputs:
the covariance of that network's outputs over its readout init. Its relative distance to the
limit computed by ``tensorprog.nngp_kernel`` (mean over seeds) is fitted against the width on
log-log axes. Prints a markdown table of the errors and slopes for docs/limits.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.limits.nngp import finite_kernels, nngp_kernel  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent.parent / "examples"
#: example → the vector its readout reads
CASES = {"mlp": "x2", "mlp_resnet": "h2", "rnn": "h3", "gated_mlp": "g", "dot_readout": "x2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,128,256,512,1024,2048,4096")
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--out", default=str(HERE / "limit_convergence.png"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    print("| program | vector | " + " | ".join(f"n={w}" for w in widths) + " | slope |")
    print("|---|---|" + "---|" * (len(widths) + 1))
    for name, vector in CASES.items():
        program = tp.parse_file(EXAMPLES / f"{name}.tp")
        data = {i.name: rng.standard_normal((8, program.dim(i.dim).size))
                for i in program.inputs}
        limit = nngp_kernel(program, data, all_vectors=True).vectors[vector]
        errors = []
        for n in widths:
            ks = finite_kernels(program, data, n, seeds=range(args.seeds))[vector]
            errors.append(float(np.mean(np.linalg.norm(ks - limit, axis=(1, 2)))
                                / np.linalg.norm(limit)))
        slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
        print(f"| {name} | {vector} | " + " | ".join(f"{e:.4f}" for e in errors)
              + f" | {slope:.3f} |")
        ax.loglog(widths, errors, "o-", label=f"{name} ({vector}): slope {slope:.2f}")
    ref = np.array(widths, dtype=float)
    ax.loglog(ref, 0.5 * (ref / ref[0]) ** -0.5 * errors[0] / 0.5, "k--", lw=1,
              label="n^-1/2")
    ax.set_xlabel("width n")
    ax.set_ylabel("‖K_n − K_∞‖ / ‖K_∞‖ (mean over seeds)")
    ax.set_title("One network's kernel vs. its infinite-width limit (SP init)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
