"""The ``tensorprog`` command: derive µP for a program, or classify a parametrization.

User errors print a positioned message and exit with status 2; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .analysis import ABC, classify
from .derive import CONVENTIONS, derive
from .errors import TensorProgError, TensorProgWarning, UsageError
from .exponents import canon
from .ir import to_text
from .optimizers import OPTIMIZERS
from .parse import parse_file
from .presets import PRESETS, preset
from .report import classify_json, classify_text, derive_json, derive_table, explain


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tensorprog",
        description="Derive and check how a network's init, multipliers and learning rates must "
                    "scale with width (µP), from the network written as a Tensor Program.")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("derive", help="derive the µP parametrization of a program")
    d.add_argument("program", help="a .tp file")
    d.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    d.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3",
                   help="which member of the abc-symmetry family to print (default: table3, "
                        "every multiplier 1)")
    out = d.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--explain", action="store_true", help="walk the derivation in words")
    out.add_argument("--dump", choices=["ir"], help="print a pipeline stage and stop")
    d.add_argument("-o", "--output", metavar="OUT.py",
                   help="write a PyTorch module with this parametrization (imports only torch)")
    d.add_argument("--param", choices=["mup", "sp", "ntp"], default="mup",
                   help="the parametrization to emit with -o (default: the derived µP)")
    d.add_argument("--readout-zero-init", action="store_true",
                   help="with -o: initialise output weights (derived role) to zero")
    d.add_argument("--base-width", type=int, metavar="N",
                   help="with -o: the width at which the module equals SP (default: the program's)")

    c = sub.add_parser("classify", help="classify a parametrization: stable? feature learning?")
    c.add_argument("program", help="a .tp file")
    c.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=PRESETS)
    which.add_argument("--abc", metavar="FILE.json",
                       help='per-param exponents: {"W1": {"a": "0", "b": "1/2", "c": "1"}, ...}; '
                            '"oo" for b means zero init')
    c.add_argument("--c", dest="global_c", metavar="EXPR",
                   help="one global c for every param, e.g. 1 or 1/2 (overrides the preset's)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


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
    optimizer = OPTIMIZERS[args.optimizer]
    if args.command == "derive":
        if args.dump == "ir":
            sys.stdout.write(to_text(program))
            return 0
        d = derive(program, optimizer, args.convention)
        if args.output:
            return _write_module(args, program, optimizer, d)
        if args.json:
            print(json.dumps(derive_json(d), indent=2, ensure_ascii=False))
        elif args.explain:
            sys.stdout.write(explain(d))
        else:
            sys.stdout.write(derive_table(d))
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


def _write_module(args, program, optimizer, d) -> int:
    from .codegen import emit
    from .rules import role

    if args.param == "mup":
        abc, label = d.abc, f"µP ({args.convention} convention) for {optimizer.name}"
    else:
        abc = preset(args.param, program, optimizer)
        label = f"{args.param.upper()} (constant LR) for {optimizer.name}"
    if args.readout_zero_init:
        abc = {p: ABC(x.a, "oo", x.c) if role(program, p) == "output" else x
               for p, x in abc.items()}
        label += ", readout zero-initialised"
    if args.base_width is not None and args.base_width <= 0:
        raise UsageError("--base-width must be a positive integer")
    flags = [f"--param {args.param}", f"--optimizer {optimizer.name}",
             f"--convention {args.convention}"]
    flags += ["--readout-zero-init"] if args.readout_zero_init else []
    flags += [f"--base-width {args.base_width}"] if args.base_width else []
    command = f"tensorprog derive {Path(args.program).name} -o {Path(args.output).name}"
    emitted = emit(program, abc, optimizer=optimizer.name, label=label,
                   command=command + "\n    " + " ".join(flags), base_width=args.base_width)
    try:
        Path(args.output).write_text(emitted.source)
    except OSError as err:
        raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
    print(f"wrote {args.output}: {label}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except TensorProgError as err:
        print(err.render(), file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
