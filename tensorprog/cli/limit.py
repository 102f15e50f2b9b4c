"""``tensorprog limit``: the infinite-width limit of a program. ``--kernel`` gives the NNGP kernel
of its outputs at init; ``--train`` the µ-limit of its outputs after SGD steps under µP, or under
NTP the kernel regime (the NTK, and the outputs' mean and spread over inits)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.optimizers import OPTIMIZERS
from ..errors import UsageError
from ..ir.program import Program
from ..lang.parse import parse_file
from ..numerics.data import check_finite, dense_tensor, read_tensor_file
from . import common

RANGES: common.Ranges = (
    ("--steps", "steps", 0, 50, "the µ-limit's cost grows with the square of the steps"),
    ("--samples", "samples", 2, 2**24, "every draw's Z-variables of every step are kept in "
     "memory"),
    ("--seed", "seed", 0, 2**64 - 1, "the Monte Carlo draws come from a torch generator, whose "
     "seed is a 64-bit unsigned integer"),
)


def add_parser(sub) -> None:
    m = sub.add_parser("limit", help="the infinite-width limit of a program: its NNGP kernel at "
                                     "init (--kernel) or its µ-limit after SGD steps (--train)")
    m.add_argument("program", help="a .tp file")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--kernel", action="store_true",
                      help="compute the NNGP kernel of the outputs at init")
    what.add_argument("--train", action="store_true",
                      help="compute the µ-limit of the outputs after --steps full-batch SGD "
                           "steps on (--inputs, --targets), under µP (MLP-family programs)")
    m.add_argument("--inputs", required=True, metavar="X.pt",
                   help="a (P, dim) tensor (.pt or .npy), or for several inputs a .pt dict "
                        "{name: (P, dim) tensor}")
    m.add_argument("--targets", metavar="Y.pt",
                   help="--train: a (P, d_out) tensor (.pt or .npy) of regression targets")
    m.add_argument("--steps", type=int, default=5, help="--train: SGD steps (default: 5)")
    m.add_argument("--lr", type=float, default=0.1,
                   help="--train: the learning rate of the emitted module (default: 0.1)")
    m.add_argument("--samples", type=common.positive, default=2**14,
                   help="--train: Monte Carlo draws of the Z-variables (default: 16384)")
    m.add_argument("--seed", type=int, default=0, help="--train: the Monte Carlo seed")
    m.add_argument("--param", choices=["sp", "mup", "ntp"],
                   help="whose module: the one `derive -o --param` emits (default: sp for "
                        "--kernel; mup for --train, where ntp gives the kernel regime)")
    m.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="µP's readout init follows the optimizer's derivation (default: sgd; "
                        "--train: sgd only)")
    m.add_argument("--order", type=common.positive, default=32,
                   help="Gauss-Hermite points per axis where no closed form exists")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("-o", "--output", metavar="K.pt",
                   help="also save the result: {output: kernel tensor} with exponents and "
                        "method, or --train's outputs (steps + 1, P, d_out)")


# the keys of each result limit saves (--kernel, --train, --train --param ntp): a .pt holding a
# dict with exactly these keys was saved here, and may be replaced
SAVED_KEYS = ({"kernels", "exponents", "error", "parametrization"},
              {"outputs", "lr", "samples", "method"}, {"ntk", "mean", "std", "lr", "method"})


def _saved_here(path: Path) -> bool:
    import torch  # heavy: derive and classify never load it

    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - whatever torch cannot read was not saved here
        return False
    return isinstance(data, dict) and set(data) in SAVED_KEYS


RESULT = common.Output("a saved limit", (".pt", ".pth"), _saved_here)


def interrupted(args: argparse.Namespace) -> str:
    """What is true after Ctrl-C (see main.py)."""
    return "a limit is computed afresh by every run: the same command starts over"


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    common.check_ranges(args, RANGES)
    if args.output:
        common.check_output("-o", args.output, RESULT, [args.program, args.inputs, args.targets])
    program = parse_file(args.program)
    if args.train:
        return _train_limit(args, program)
    return _kernel(args, program)


def _kernel(args: argparse.Namespace, program: Program) -> int:
    """--kernel: the NNGP kernel of the outputs at init."""
    import torch  # heavy: derive and classify never load it

    from ..limits.nngp import nngp_kernel  # loads numpy and scipy

    if args.targets is not None:
        raise UsageError("--targets is for --train", help="--kernel needs only --inputs")
    data = _load_array(args.inputs, "--inputs", "the kernel would be nan")
    k = nngp_kernel(program, data, param=args.param or "sp", optimizer=args.optimizer,
                    order=args.order)
    if args.output:
        _save({"kernels": {o: torch.as_tensor(v) for o, v in k.kernels.items()},
               "exponents": {o: None if e is None else str(e) for o, e in k.exponents.items()},
               "error": k.error, "parametrization": k.parametrization}, args.output)
    common.out((json.dumps(k.as_dict(), indent=1) if args.json else str(k)) + "\n")
    return 0


def _train_limit(args: argparse.Namespace, program: Program) -> int:
    """--train: the µ-limit of the outputs after SGD steps (or, with --param ntp, the kernel
    regime)."""
    import torch  # heavy: derive and classify never load it

    from ..limits.mu import mu_limit  # loads numpy and scipy

    if args.param == "sp":
        raise UsageError("--train --param sp: SGD at a fixed LR has no finite limit under SP",
                         help="its updates blow up with the width; use --param mup (the "
                              "µ-limit, the default) or ntp (the kernel regime)")
    if args.optimizer != "sgd":
        raise UsageError(f"--train --optimizer {args.optimizer}: only SGD's limit is implemented",
                         help="Adam's limit (TP4b) needs the nonlinear-update master theorem, "
                              "which is not implemented; see docs/limits.md")
    if args.targets is None:
        raise UsageError("--train needs --targets Y.pt", help="a (P, d_out) tensor of targets")
    inputs = _load_array(args.inputs, "--inputs", "the limit would be nan")
    targets = _load_array(args.targets, "--targets", "the limit would be nan")
    if isinstance(targets, dict):
        raise UsageError(f"--targets {args.targets} holds a dict", help="save one tensor")
    if args.param == "ntp":
        return _kernel_regime(args, program, inputs, targets)
    result = mu_limit(program, inputs, targets, steps=args.steps, lr=args.lr,
                      samples=args.samples, seed=args.seed, progress=sys.stderr.isatty())
    if args.output:
        _save({"outputs": torch.as_tensor(result.outputs), "lr": args.lr,
               "samples": result.samples, "method": result.method}, args.output)
    text = (json.dumps({"program": program.name, **result.as_dict()}, indent=1)
            if args.json else str(result))
    common.out(text + "\n")
    return 0


def _kernel_regime(args: argparse.Namespace, program: Program, inputs, targets) -> int:
    """--train --param ntp: NTP's limit, the NTK and the outputs' mean and spread over inits."""
    import numpy as np  # heavy: derive and classify never load it
    import torch  # heavy: derive and classify never load it

    from ..limits.ntk import ntk_limit  # loads numpy and scipy

    regime = ntk_limit(program, inputs, samples=args.samples, seed=args.seed)
    mean, std = regime.distribution(program, inputs, targets, steps=args.steps, lr=args.lr)
    if args.output:
        _save({"ntk": torch.as_tensor(regime.ntk), "mean": torch.as_tensor(mean),
               "std": torch.as_tensor(std), "lr": args.lr, "method": regime.method},
              args.output)
    if args.json:
        text = json.dumps({"program": program.name, "regime": "kernel (NTP)", "lr": args.lr,
                           "ntk": regime.ntk.tolist(), "mean": mean.tolist(),
                           "std": std.tolist(), "feature_change": 0.0,
                           "method": regime.method}, indent=1)
    else:
        rows = [f"kernel regime of {program.name} under NTP, SGD at lr {args.lr:g} on "
                f"{len(mean[0])} inputs: NTK by {regime.method}; the features stay at init",
                "f_0 is a Gaussian process, so each output is Gaussian: mean ± std per input "
                "(first output coordinate)",
                f"{'step':>4}  outputs"]
        rows += [f"{t:>4}  " + " ".join(f"{m:+.3f}±{s:.3f}" for m, s in zip(
            mean[t, :6, 0], std[t, :6], strict=True)) for t in range(len(mean))]
        rows.append("NTK diagonal: " + " ".join(f"{v:.4g}" for v in np.diag(regime.ntk)[:6]))
        text = "\n".join(rows)
    common.out(text + "\n")
    return 0


def _load_array(path: str, option: str, then: str):
    """A dense, finite tensor (or a dict of them) from a .pt or .npy file, as numpy arrays:
    the checks transfer's data files get."""
    import numpy as np  # heavy: derive and classify never load it
    import torch  # heavy: derive and classify never load it

    what = "a (P, dim) tensor, or a dict of them, one per input" if option == "--inputs" else \
        "a (P, d_out) tensor"
    data = read_tensor_file(path, option, what, "torch.save(x, 'X.pt') or numpy.save('X.npy', x)",
                            npy=True)

    def bad(why: str) -> UsageError:
        return UsageError(f"{option} {path}: {why}",
                          help="save a dense, finite (P, dim) tensor, or a dict of them, one per "
                               "input")

    def checked(value, name: str):
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            value = torch.from_numpy(value)
        t = dense_tensor(value, name, bad)
        if t.is_floating_point():
            check_finite(t, name, bad, then=then)
        return t.numpy()

    if isinstance(data, dict):
        return {str(k): checked(v, str(k)) for k, v in data.items()}
    if isinstance(data, torch.Tensor | np.ndarray):
        return checked(data, "X" if option == "--inputs" else "Y")
    raise UsageError(f"{path} holds a {type(data).__name__}",
                     help="save a tensor, or a dict of tensors, one per input")


def _save(obj, path: str) -> None:
    import torch  # heavy: derive and classify never load it

    try:
        torch.save(obj, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)
