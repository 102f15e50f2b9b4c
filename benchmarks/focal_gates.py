"""The zoo's FocalNet checked with its gates' init scaled: a finite-width transient or a wrong law?

    python benchmarks/focal_gates.py [--scales 0.1 1 3] [--bias B] [--lr 0.001] [--seeds 0,1]

The zoo's image FocalNet (2 stages of 1 layer, 2 focal levels, HF's init: normal 0.02, the
gates' bias 0), traced at widths 64 and 128, µP for Adam applied and checked at widths 256, 512,
1024 (3 steps), with the gates' rows of each ``projection_in`` multiplied by ``scale`` at every
width (the base width's draw included, so that µP's law is the same and only its constant moves).
µP makes a gate W_g·x Θ(1/√n) at init (a readout's W·x, its bias 0), so a gated product's change
Δv·g₀ + v₀·Δg + Δv·Δg holds a term, Δv·g₀, and the gate's own change a term, W₀·Δx's CLT part,
that vanish with the width, with constants proportional to the gates' init. A wrong exponent
does not move with a width-independent constant; a finite-width mix does: the slopes of the
products and gates go to 0 as the scale falls. ``--bias B`` sets the gates' bias to B (HF's: 0),
making each gate Θ(1) at init as µP's bias is. Prints one JSON line per scale: the failures
(vector, step, slope) and the modulation's gates and products after steps 2 and 3
(docs/check.md, "FocalNet's gates: a constant that sets the widths where µP shows").
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

IMAGE = zoo.MAPPINGS["image"]
LEVELS = 2  # the zoo's focal levels: L + 1 = 3 gates per pixel


def builder(scale: float, bias: float | None = None):
    build0 = zoo.builder("focalnet", "heads", mapping=IMAGE)

    def build(width):
        model = build0(width)
        with torch.no_grad():
            for name, mod in model.named_modules():
                if name.endswith("modulation.projection_in"):
                    c = (mod.out_features - LEVELS - 1) // 2
                    # the gates' rows, after the query's and context's
                    mod.weight[2 * c :] *= scale
                    if bias is not None:
                        mod.bias[2 * c :] = bias
        return model

    return build


def main(argv=None) -> int:
    from tensorprog.fromtorch import MuP, coord_check, from_torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", type=float, default=[0.1, 1.0, 3.0])
    ap.add_argument("--bias", type=float, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--widths", default=",".join(map(str, zoo.CHECK_WIDTHS)))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    widths = tuple(int(w) for w in args.widths.split(","))
    seeds = tuple(int(s) for s in args.seeds.split(","))
    gated = re.compile(r"modulation \((slice|mul|add)_?\d*\)$")
    for scale in args.scales:
        build = builder(scale, args.bias)
        mup = MuP(from_torch(build, zoo.TRACE_WIDTHS, zoo.example_inputs(IMAGE)), "adam")
        r = coord_check(
            mup, widths, lr=args.lr, seeds=seeds, tolerance=zoo.TOLERANCE, remeasure_few=False
        )
        slopes = {
            f"{r.where(x.name)} step {x.step}": round(x.slope, 2)
            for x in r.results
            if x.slope is not None and x.step >= 2 and gated.search(r.where(x.name))
        }
        print(
            json.dumps(
                {
                    "scale": scale,
                    "bias": args.bias,
                    "lr": args.lr,
                    "widths": widths,
                    "seeds": seeds,
                    "passed": r.passed,
                    "regime": r.regime_warning() or None,
                    "failures": sorted(
                        f"{r.where(k)} step {e.step} {e.slope:+.2f}"
                        for k, v in r.failures.items()
                        for e in v
                    ),
                    "slopes": slopes,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
