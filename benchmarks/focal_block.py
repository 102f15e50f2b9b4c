"""FocalNet's modulation alone: its coordinate check at the zoo's widths and wider.

    python benchmarks/focal_block.py [--lr 0.001] [--ranges 256,512,1024 1024,2048,4096]

One HF ``FocalNetModulation`` (2 focal levels, transformers' own module) in a residual block
between a 4x4 patch stem and a pooled 10-class readout, HF's init (normal 0.02, biases 0, the
gates' too), traced at widths 64 and 128, µP for Adam applied, and checked (2 seeds, 3 steps)
over each range of widths. At the zoo's widths its gated products fail by shrinking (their
change holds Δv·g₀, which vanishes with the gate's init g₀ = Θ(1/√n)); over 1024..4096 every
vector passes (docs/torch.md, FocalNet's focal modulation). Prints one JSON line per range:
the failures and every modulation vector's slope after each step.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, n: int):
        from transformers import FocalNetConfig
        from transformers.models.focalnet.modeling_focalnet import FocalNetModulation

        super().__init__()
        config = FocalNetConfig(embed_dim=n, focal_levels=[2, 2], focal_windows=[3, 3])
        self.stem = nn.Conv2d(3, n, 4, stride=4)
        self.norm0, self.norm1, self.norm2 = nn.LayerNorm(n), nn.LayerNorm(n), nn.LayerNorm(n)
        self.modulation = FocalNetModulation(config, index=0, dim=n)
        self.head = nn.Linear(n, 10)
        for m in self.modules():  # as FocalNetPreTrainedModel._init_weights
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, img):
        t = self.norm0(self.stem(img).flatten(2).transpose(1, 2))
        b, tokens, c = t.shape
        side = int(tokens**0.5)
        t = t + self.modulation(self.norm1(t).view(b, side, side, c)).view(b, tokens, c)
        return self.head(self.norm2(t).mean(1))


def image(model):
    return (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def main(argv=None) -> int:
    from tensorprog.fromtorch import MuP, coord_check, from_torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ranges", nargs="+", default=["256,512,1024", "1024,2048,4096"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mup = MuP(from_torch(Block, (64, 128), image), "adam")
    for spec in args.ranges:
        widths = tuple(int(w) for w in spec.split(","))
        r = coord_check(mup, widths, lr=args.lr, tolerance=0.25, remeasure_few=False)
        print(
            json.dumps(
                {
                    "widths": widths,
                    "lr": args.lr,
                    "passed": r.passed,
                    "failures": sorted(r.where(k) for k in r.failures),
                    "slopes": {
                        f"{r.where(x.name)} step {x.step}": round(x.slope, 2)
                        for x in r.results
                        if x.slope is not None and "modulation" in r.where(x.name)
                    },
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
