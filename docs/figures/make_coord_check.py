"""Draw docs/figures/coord_check_mlp.png: the three-way coordinate check of examples/mlp.tp.

    python docs/figures/make_coord_check.py [--widths 64,128,...] [--device auto]

µP with Adam passes; SP at a constant Adam LR blows up; NTP with SGD freezes its features
(TP4 Table 1's NTP is an SGD parametrization: at a constant Adam LR it blows up instead).
Prints each check's table too, for the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.lang.parse import parse_file
from tensorprog.numerics.coordcheck import DEFAULT_WIDTHS, coord_check
from tensorprog.numerics.judge import render
from tensorprog.numerics.plots import coord_plot

HERE = Path(__file__).resolve().parent
CASES = (("mup", "adam"), ("sp", "adam"), ("ntp", "sgd"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(HERE / "coord_check_mlp.png"))
    args = ap.parse_args()
    program = parse_file(HERE.parent.parent / "examples" / "mlp.tp")
    widths = [int(w) for w in args.widths.split(",")]
    results = []
    for param, opt in CASES:
        r = coord_check(program, OPTIMIZERS[opt], param=param, widths=widths,
                        device=args.device, progress=sys.stderr.isatty())
        print(render(r))
        results.append(r)
    print(f"wrote {coord_plot(results, args.out)}")


if __name__ == "__main__":
    main()
