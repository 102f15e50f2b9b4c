"""The ``tensorprog`` command: derive µP for a program, classify a parametrization, or check one
numerically.

User errors print a positioned message and exit with status 2; a failed check exits with 1.
Only ``check`` and ``transfer`` import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .analysis import ABC, classify
from .derive import CONVENTIONS, derive
from .errors import TensorProgError, TensorProgWarning, UsageError
from .exponents import as_str, canon
from .ir import to_text
from .optimizers import OPTIMIZERS
from .parse import parse_file
from .presets import PRESETS, preset, zero_init
from .report import (
    classify_json,
    classify_text,
    derive_json,
    derive_table,
    explain,
    zero_init_effects,
    zero_init_text,
)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tensorprog",
        description="Derive and check how a network's init, multipliers and learning rates must "
                    "scale with width (µP), from the network written as a Tensor Program.")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("derive", help="derive the µP parametrization of a program")
    d.add_argument("program", help="a .tp file")
    d.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="default: adam")
    d.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3",
                   help="which member of the abc-symmetry family to print (default: table3, "
                        "every multiplier 1)")
    out = d.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--explain", action="store_true", help="walk the derivation in words")
    out.add_argument("--dump", choices=["ir"], help="print a pipeline stage and stop")
    d.add_argument("-o", "--output", metavar="OUT.py",
                   help="write a PyTorch module with this parametrization (imports only torch)")
    _module_options(d, "the table then says what zero init does to the vectors at init")

    c = sub.add_parser("classify", help="classify a parametrization: stable? feature learning?")
    c.add_argument("program", help="a .tp file")
    c.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="default: sgd (TP4's setting for the presets)")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=PRESETS)
    which.add_argument("--abc", metavar="FILE.json",
                       help='per-param exponents: {"W1": {"a": "0", "b": "1/2", "c": "1"}, ...}; '
                            '"oo" for b means zero init')
    c.add_argument("--c", dest="global_c", metavar="EXPR",
                   help="one global c for every param, e.g. 1 or 1/2 (overrides the preset's)")
    c.add_argument("--json", action="store_true", help="machine-readable output")

    k = sub.add_parser("check", help="coordinate check: train the emitted module at several widths "
                                     "and judge every vector's scaling (needs torch)")
    k.add_argument("program", help="a .tp file")
    k.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="default: adam")
    k.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3")
    _module_options(k, "the check then expects those vectors to start at exactly 0")
    k.add_argument("--widths", default="64,128,256,512,1024,2048", metavar="W1,W2,...",
                   help="widths to train (default: 64,128,256,512,1024,2048)")
    k.add_argument("--steps", type=int, default=3,
                   help="training steps per run, at least 2 (default: 3)")
    k.add_argument("--seeds", type=int, default=3, help="seeds per width (default: 3)")
    k.add_argument("--lr", type=float, help="base learning rate (default: 0.1 for sgd, "
                                            "0.01 for adam and adamw)")
    k.add_argument("--batch-size", type=int,
                   help="samples per step (default: 16, or 16 tokens' worth of sequences)")
    k.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    k.add_argument("--against", choices=["mup", "predicted"], default="mup",
                   help="judge against what µP requires (default), or against the engine's "
                        "prediction for this parametrization")
    k.add_argument("--tolerance", type=float, default=0.15,
                   help="allowed |slope - expected exponent| (default: 0.15)")
    k.add_argument("--plot", metavar="FILE.png", help="draw the coordinate-check figure")
    k.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("transfer", help="µTransfer sweep: the loss against a hyperparameter at "
                                        "several widths, µP against SP, on real data")
    t.add_argument("program", help="a .tp file")
    t.add_argument("--data", required=True, metavar="NAME",
                   help="digits (scikit-learn's), text (CPython's pydoc topics, by character) "
                        "or a FILE.pt")
    t.add_argument("--param", type=_names, default=("mup", "sp"), metavar="mup,sp",
                   help="parametrizations to compare (default: mup,sp; also ntp)")
    t.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="default: adam")
    t.add_argument("--widths", default="64,128,256,512,1024", metavar="W1,W2,...")
    t.add_argument("--hp", choices=["lr", "init_std", "output_mult"], default="lr")
    t.add_argument("--values", metavar="V1,V2,...",
                   help="HP values (default: powers of 2 around the usual optimum)")
    t.add_argument("--steps", type=int, help="training steps per trial (default: 60 for "
                                             "digits, 200 for text)")
    t.add_argument("--seeds", type=int, default=2, help="seeds per trial (default: 2)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="the learning rate when --hp is not lr")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t.add_argument("--jobs", type=int, help="worker processes (default: one per CPU core)")
    t.add_argument("--cache", default=".tensorprog-cache",
                   help="directory of per-trial results, so a sweep resumes (default: "
                        ".tensorprog-cache; 'none' to disable)")
    t.add_argument("--plot", metavar="FILE.png", help="draw loss against the HP per width")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    _limit_parser(sub)
    return ap


def _module_options(p: argparse.ArgumentParser, zero_note: str) -> None:
    """The options that pick the emitted module's parametrization (derive -o and check)."""
    p.add_argument("--param", choices=["mup", "sp", "ntp"], default="mup",
                   help="the parametrization to emit or check (default: the derived µP)")
    p.add_argument("--readout-zero-init", action="store_true",
                   help=f"initialise output weights (derived role) to zero; {zero_note}")
    p.add_argument("--zero-init", metavar="W1,W2", type=_names, default=(),
                   help="initialise these weights to zero (e.g. the attention queries)")
    p.add_argument("--base-width", type=_positive, metavar="N",
                   help="the width at which the module equals SP (default: the program's)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_plot(args) -> None:
    """Refuse an unwritable figure path before any training."""
    if args.plot:
        from .plots import check_plot_path

        check_plot_path(args.plot)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise UsageError(f"--widths: expected comma-separated integers, got {text!r}",
                         help="e.g. --widths 64,128,256,512") from None
    if len(set(widths)) < 2 or min(widths) < 1:
        raise UsageError("--widths: give at least two different positive widths")
    return widths


def _read_abc(path: str) -> dict[str, ABC]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected an object mapping param names to {{a, b, c}}")
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"a", "b", "c"}:
            raise UsageError(f"{path}: param {name!r} needs exactly the keys a, b, c",
                             help='e.g. "W2": {"a": "0", "b": "1/2", "c": "1"}')
        try:
            out[name] = ABC(*(canon(str(entry[k])) for k in "abc"))
        except ValueError as err:
            raise UsageError(f"{path}: param {name!r}: {err}") from None
    return out


def _global_c(text: str | None):
    if text is None:
        return None
    try:
        return canon(text)
    except ValueError as err:
        raise UsageError(f"--c: {err}") from None


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TensorProgWarning)
        try:
            return _run(args)
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught
                                         if issubclass(w.category, TensorProgWarning)):
                print(message, file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    program = parse_file(args.program)
    if args.command == "limit":
        return _limit(args, program)
    optimizer = OPTIMIZERS[args.optimizer]
    if args.command == "check":
        return _check(args, program, optimizer)
    if args.command == "transfer":
        return _transfer(args, program, optimizer)
    if args.command == "derive":
        if args.dump == "ir":
            sys.stdout.write(to_text(program))
            return 0
        if args.output:  # the module's own parametrization derives what it needs
            return _write_module(args, program, optimizer)
        d = derive(program, optimizer, args.convention)
        zeroed = None
        if args.zero_init or args.readout_zero_init:
            zeroed = zero_init(program, d.abc, args.zero_init, args.readout_zero_init)
            names = sorted(p for p in zeroed if zeroed[p] != d.abc[p])
        if args.json:
            data = derive_json(d)
            if zeroed is not None:
                data["zero_init"] = {"params": names, "init": {
                    v: {"before": as_str(b), "after": as_str(a)}
                    for v, b, a in zero_init_effects(d, zeroed)}}
            print(json.dumps(data, indent=2, ensure_ascii=False))
        elif args.explain:
            sys.stdout.write(explain(d))
        else:
            sys.stdout.write(derive_table(d))
            if zeroed is not None:
                sys.stdout.write("\n" + zero_init_text(d, zeroed, names))
        return 0
    c_override = _global_c(args.global_c)
    if args.preset:
        abc, label = preset(args.preset, program, optimizer, c_override), args.preset
    else:
        abc, label = _read_abc(args.abc), args.abc
        unknown = sorted(set(abc) - {p.name for p in program.params})
        if unknown:
            raise UsageError(f"{args.abc}: no param named {', '.join(unknown)} in the program")
        if c_override is not None:
            abc = {p: ABC(x.a, x.b, c_override) for p, x in abc.items()}
    result = classify(program, optimizer, abc)
    if args.json:
        print(json.dumps(classify_json(result), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(classify_text(result, label))
    return 0


def _check(args, program, optimizer) -> int:
    # torch, tqdm and matplotlib load only here: derive and classify stay light
    from .coordcheck import coord_check, render

    _check_plot(args)
    result = coord_check(program, optimizer, param=args.param, convention=args.convention,
                         readout_zero_init=args.readout_zero_init, zero=args.zero_init,
                         base_width=args.base_width,
                         widths=_widths(args.widths), steps=args.steps, seeds=args.seeds,
                         lr=args.lr, batch_size=args.batch_size, device=args.device,
                         against=args.against, tolerance=args.tolerance,
                         progress=sys.stderr.isatty())
    from .plots import coord_plot

    _report(args, result, render, coord_plot)
    return 0 if result.passed else 1


def _report(args, result, render, draw) -> None:
    """The figure (if asked), then JSON or the table: what check and transfer print."""
    if args.plot:
        draw(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(render(result))


def _transfer(args, program, optimizer) -> int:
    from .coordcheck import pick_device
    from .transfer import render, sweep

    unknown = [p for p in args.param if p not in ("mup", "sp", "ntp")]
    if unknown or not args.param:
        raise UsageError(f"--param: unknown parametrization {', '.join(unknown)}",
                         help="choose among mup, sp, ntp, e.g. --param mup,sp")
    values = None
    if args.values:
        try:
            values = [float(v) for v in args.values.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--values: expected comma-separated numbers, got {args.values!r}",
                             help="e.g. --values 1e-4,3e-4,1e-3") from None
    for name, value in (("--steps", args.steps), ("--seeds", args.seeds),
                        ("--batch-size", args.batch_size), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1")
    _check_plot(args)
    result = sweep(program, optimizer, args.data, params=args.param, hp=args.hp,
                   widths=_widths(args.widths), values=values, steps=args.steps,
                   seeds=args.seeds, batch_size=args.batch_size, lr=args.lr,
                   device=pick_device(args.device), jobs=args.jobs,
                   cache=None if args.cache.lower() == "none" else args.cache,
                   progress=sys.stderr.isatty())
    from .plots import transfer_plot

    _report(args, result, render, transfer_plot)
    return 0


def _shown(path: str) -> str:
    """A path for the emitted module's "Regenerate with" line: as the user typed it when relative
    (so the line can be pasted from the same directory), the bare name when absolute (no
    machine's directories end up in generated code)."""
    return Path(path).name if Path(path).is_absolute() else Path(path).as_posix()


def _write_module(args, program, optimizer) -> int:
    from .codegen import emit, parametrization

    abc, label = parametrization(program, optimizer, args.param, args.convention,
                                 args.readout_zero_init, args.zero_init)
    flags = [f"--param {args.param}", f"--optimizer {optimizer.name}",
             f"--convention {args.convention}"]
    flags += ["--readout-zero-init"] if args.readout_zero_init else []
    flags += [f"--zero-init {','.join(args.zero_init)}"] if args.zero_init else []
    flags += [f"--base-width {args.base_width}"] if args.base_width else []
    command = f"tensorprog derive {_shown(args.program)} -o {_shown(args.output)} \\"
    emitted = emit(program, abc, optimizer=optimizer.name, label=label,
                   command=command + "\n    " + " ".join(flags), base_width=args.base_width)
    try:
        Path(args.output).write_text(emitted.source)
    except OSError as err:
        raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
    print(f"wrote {args.output}: {label}", file=sys.stderr)
    return 0


def _limit_parser(sub) -> None:
    m = sub.add_parser("limit", help="the infinite-width limit of a program at init: its NNGP "
                                     "kernel over a set of inputs")
    m.add_argument("program", help="a .tp file")
    m.add_argument("--kernel", action="store_true", required=True,
                   help="compute the NNGP kernel of the outputs (the one limit implemented)")
    m.add_argument("--inputs", required=True, metavar="X.pt",
                   help="a (P, dim) tensor (.pt or .npy), or for several inputs a .pt dict "
                        "{name: (P, dim) tensor}")
    m.add_argument("--param", choices=["sp", "mup", "ntp"], default="sp",
                   help="whose init: the module `derive -o --param` emits (default: sp)")
    m.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="µP's readout init follows the optimizer's derivation (default: sgd)")
    m.add_argument("--order", type=_positive, default=32,
                   help="Gauss-Hermite points per axis where no closed form exists")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("-o", "--output", metavar="K.pt",
                   help="also save {output: kernel tensor} with exponents and method")


def _limit(args, program) -> int:
    import numpy as np
    import torch

    from .limit import nngp_kernel

    try:
        if args.inputs.endswith(".npy"):
            data = np.load(args.inputs, allow_pickle=False)
        else:
            data = torch.load(args.inputs, weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot read {args.inputs}: {err}",
                         help="save a tensor with torch.save(x, 'X.pt') or numpy.save") from None
    if isinstance(data, dict):
        data = {str(k): np.asarray(v) for k, v in data.items()}
    elif isinstance(data, torch.Tensor | np.ndarray):
        data = np.asarray(data)
    else:
        raise UsageError(f"{args.inputs} holds a {type(data).__name__}",
                         help="save a tensor, or a dict of tensors, one per input")
    k = nngp_kernel(program, data, param=args.param, optimizer=args.optimizer, order=args.order)
    if args.output:
        try:
            torch.save({"kernels": {o: torch.as_tensor(v) for o, v in k.kernels.items()},
                        "exponents": {o: None if e is None else str(e)
                                      for o, e in k.exponents.items()},
                        "error": k.error, "parametrization": k.parametrization},
                       args.output)
        except OSError as err:
            raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    print(k.to_json() if args.json else k.describe())
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except TensorProgError as err:
        print(err.render(), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted (a transfer sweep resumes from its cache)", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # the reader went away (`tensorprog ... | head`): stop quietly, as the Python docs advise,
        # pointing stdout at devnull so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
