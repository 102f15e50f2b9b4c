"""The ``tensorprog`` command: derive µP for a program, classify a parametrization, or check one
numerically.

User errors print a positioned message and exit with status 2; a failed check exits with 1.
Only ``check``, ``transfer`` and ``trace`` import torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

from ..engine.derive import CONVENTIONS, DEPTH_CONVENTIONS, derive
from ..engine.exponents import INF, NEG_INF, as_str
from ..engine.optimizers import OPTIMIZERS, resolve
from ..engine.parametrization import PRESETS, preset, zero_init
from ..engine.propagate import ABC, classify, classify_depth
from ..engine.report import (
    classify_depth_json,
    classify_depth_text,
    classify_json,
    classify_text,
    derive_json,
    derive_table,
    explain,
    zero_init_effects,
    zero_init_text,
)
from ..errors import EngineError, TensorProgError, TensorProgWarning, UsageError
from ..ir.program import to_text
from ..lang.parse import parse_file
from .abcfile import exponent, read_abc
from .common import (
    OutputError,
    add_depth_options,
    add_module_options,
    add_muon_io,
    axis,
    check_base_width,
    check_lr,
    check_memory,
    check_muon_io,
    check_paths,
    check_plot,
    check_ranges,
    names,
    out,
    out_json,
    positive,
    report,
    widths,
)


class _Parser(argparse.ArgumentParser):
    """argparse ignores a failed write of the help text; this one reports it like any output."""

    def print_help(self, file=None) -> None:
        if file is None or file is sys.stdout:
            out(self.format_help())
        else:
            super().print_help(file)


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        out(f"tensorprog {_version()}\n")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="tensorprog",
        description="Derive and check how a network's init, multipliers and learning rates must "
                    "scale with width (µP), from the network written as a Tensor Program.")
    ap.add_argument("--version", action=_Version, help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("derive", help="derive the µP parametrization of a program")
    d.add_argument("program", help="a .tp file")
    d.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="default: adam")
    add_muon_io(d)
    d.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3",
                   help="which member of the abc-symmetry family to print (default: table3, "
                        "every multiplier 1)")
    d.add_argument("--depth-convention", choices=list(DEPTH_CONVENTIONS), default="completep",
                   help="how to resolve a depth exponent the desiderata leave free (a one-layer "
                        "block's branch): completep, init as small as its update (aL+bL at the "
                        "top of its range), or depth-mup, init as large as stability allows "
                        "(default: completep)")
    d.add_argument("--weight-decay", choices=["coupled", "decoupled", "independent"],
                   help="add a column saying how a fixed weight decay λ acts on each param as the "
                        "width (and depth) grow under this semantics: coupled (L2 in the "
                        "gradient), decoupled (torch's AdamW: lr·λ·w per step), independent "
                        "(λ·w per step); --json always gives all three")
    out = d.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--explain", action="store_true", help="walk the derivation in words")
    out.add_argument("--dump", choices=["ir"], help="print a pipeline stage and stop")
    d.add_argument("-o", "--output", metavar="OUT.py",
                   help="write a PyTorch module with this parametrization (imports only torch)")
    add_module_options(d, "the table then says what zero init does to the vectors at init")

    c = sub.add_parser("classify", help="classify a parametrization: stable? feature learning?")
    c.add_argument("program", help="a .tp file")
    c.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="default: sgd (TP4's setting for the presets)")
    add_muon_io(c)
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=PRESETS,
                       help="a named parametrization: sp (standard), ntp (neural tangent), mup, "
                            "mfp (mean field)")
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
    add_muon_io(k)
    k.add_argument("--convention", choices=sorted(CONVENTIONS), default="table3",
                   help="which member of the abc-symmetry family to emit (default: table3)")
    add_module_options(k, "the check then expects those vectors to start at exactly 0")
    k.add_argument("--widths", metavar="W1,W2,...",
                   help="widths to train (default: 64,128,256,512,1024,2048)")
    k.set_defaults(default_widths="64,128,256,512,1024,2048")
    add_depth_options(k, "check")
    k.add_argument("--steps", type=int, default=3,
                   help="training steps per run, at least 2 (default: 3)")
    k.add_argument("--seeds", type=int, default=3, help="seeds per width (default: 3)")
    k.add_argument("--lr", type=float, help="base learning rate (default: 0.1 for sgd and "
                                            "momentum, 0.01 for adam, adamw and muon, 0.001 "
                                            "for lion)")
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
    t.add_argument("--param", type=names, default=("mup", "sp"), metavar="mup,sp",
                   help="parametrizations to compare (default: mup,sp; also ntp, and mup-width: "
                        "µP with no depth scaling, for --depths)")
    t.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="default: adam")
    add_muon_io(t)
    t.add_argument("--widths", metavar="W1,W2,...",
                   help="widths to train (default: 64,128,256,512,1024)")
    t.set_defaults(default_widths="64,128,256,512,1024")
    add_depth_options(t, "sweep")
    t.add_argument("--hp", choices=["lr", "init_std", "output_mult"], default="lr",
                   help="the hyperparameter to sweep (default: lr)")
    t.add_argument("--values", metavar="V1,V2,...",
                   help="HP values (default: powers of 2 around the usual optimum)")
    t.add_argument("--steps", type=int, help="training steps per trial (default: 60 for "
                                             "digits, 200 for text)")
    t.add_argument("--seeds", type=int, default=2, help="seeds per trial (default: 2)")
    t.add_argument("--batch-size", type=int,
                   help="samples per step (default: 64 rows, or 32 sequences for text)")
    t.add_argument("--lr", type=float, help="the learning rate when --hp is not lr")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    t.add_argument("--jobs", type=int, help="worker processes (default: one per CPU core)")
    t.add_argument("--cache", default=".tensorprog-cache",
                   help="directory of per-trial results, so a sweep resumes (default: "
                        ".tensorprog-cache; 'none' to disable)")
    t.add_argument("--plot", metavar="FILE.png", help="draw loss against the HP per width")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    _limit_parser(sub)
    _trace_parser(sub)
    return ap


def _trace_parser(sub) -> None:
    r = sub.add_parser("trace", help="trace a PyTorch model (FILE.py:FUNCTION, a function of the "
                                     "width returning the model) into a .tp program")
    r.add_argument("target", metavar="FILE.py:FUNCTION",
                   help="the Python file and its function build(width) returning the model")
    r.add_argument("--widths", default="128,256", metavar="W1,W2",
                   help="the two widths to trace at; the first is the base width "
                        "(default: 128,256)")
    r.add_argument("--inputs", metavar="FUNCTION",
                   help="a function of the model in the same file returning its forward's "
                        "inputs (default: example_inputs if the file defines it, else token "
                        "ids of shape [2, --seq-len])")
    r.add_argument("--seq-len", type=positive, default=8,
                   help="sequence length of the default token ids (default: 8)")
    r.add_argument("-o", "--output", metavar="FILE.tp", help="write the program there "
                                                             "(default: standard output)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tensorprog")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from .. import __version__

        return __version__


# options whose value is a number, a rational or a list of numbers: argparse reads a value that
# starts with "-" as an option unless it looks like a plain negative number ("-1", not "-1/2"
# nor "-1e-3"), so such values are joined to their option ("--c=-1/2") before parsing
NUMBER_OPTIONS = ("--c", "--lr", "--tolerance", "--steps", "--seeds", "--batch-size",
                  "--base-width", "--widths", "--values", "--jobs")
_NEGATIVE = re.compile(r"-(\d|\.\d|oo\b|inf|nan)", re.IGNORECASE)


def join_negative_values(argv: list[str]) -> list[str]:
    """``argv`` with each negative value of a number option joined to it: ``--c -1/2`` becomes
    ``--c=-1/2``. Tokens after ``--`` are left alone."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + argv[i:]
        if _number_option(token) and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _number_option(token: str) -> bool:
    """A number option, or an abbreviation argparse may expand to one (``--tol``): joining a value
    to an option with "=" means the same to argparse whichever option it resolves to."""
    return token.startswith("--") and len(token) > 2 and "=" not in token and any(
        option.startswith(token) for option in NUMBER_OPTIONS)


# the numeric options' allowed ranges, with why: (option, attribute, lowest, highest, why)
_RANGES = {
    "check": (("--steps", "steps", 2, 1000, "the check judges changes from step 2 on (a first "
               "step can scale differently); it is about the first steps, so beyond 1000 a run "
               "only costs time"),
              ("--seeds", "seeds", 1, 100, "the mean over seeds steadies after a few"),
              ("--batch-size", "batch_size", 1, 65536, "every sample's vectors are kept in "
               "memory")),
    "transfer": (("--steps", "steps", 1, 100_000, "each of the sweep's trials trains this long"),
                 ("--seeds", "seeds", 1, 100, "the mean over seeds steadies after a few"),
                 ("--batch-size", "batch_size", 1, 65536, "a batch is held in memory"),
                 ("--jobs", "jobs", 1, 256, "each worker process loads its own torch")),
    "limit": (("--steps", "steps", 0, 50, "the µ-limit's cost grows with the square of the "
               "steps"),
              ("--samples", "samples", 2, 2**24, "every draw's Z-variables of every step are "
               "kept in memory")),
}


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse out-of-range numeric options before any work, saying the range and why."""
    check_ranges(args, _RANGES.get(args.command, ()))
    if args.command == "check" and not (0 < args.tolerance < 0.5):  # also refuses nan
        raise UsageError(f"--tolerance {args.tolerance}: the tolerance must be positive and "
                         "below 1/2",
                         help="exponents differ by multiples of 1/2 or less, so a tolerance of "
                              "1/2 cannot tell n^(1/2) from n^0")


def _global_c(text: str | None):
    if text is None:
        return None
    c = exponent(text, "--c")
    if c is NEG_INF:
        raise UsageError(f"--c {text}: a learning rate cannot scale as n^oo",
                         help="c is a rational, e.g. 1 or 1/2, or oo for no training")
    return c


def _trace(args: argparse.Namespace) -> int:
    """Imports torch and the user's file; see tensorprog/fromtorch/command.py."""
    if args.output is not None and not args.output.strip():
        raise UsageError("-o: the path is empty", help="give a file name")
    from ..fromtorch.command import trace_command

    source = trace_command(args.target, widths(args.widths), args.output, args.inputs,
                           args.seq_len)
    if args.output is None:
        out(source)
    else:
        out(f"wrote {args.output}\n")
    return 0


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(join_negative_values(argv))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TensorProgWarning)
        try:
            return _run(args)
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught
                                         if issubclass(w.category, TensorProgWarning)):
                print(message, file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    if args.command == "trace":
        return _trace(args)
    check_paths(args)
    _check_numbers(args)
    program = parse_file(args.program)
    if args.command == "limit":
        return _limit(args, program)
    check_base_width(args, program)
    check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    if args.command == "check":
        return _check(args, program, optimizer)
    if args.command == "transfer":
        return _transfer(args, program, optimizer)
    if args.command == "derive":
        if args.dump == "ir":
            if args.output is not None:
                raise UsageError("--dump ir prints the program's IR, and -o writes a module: "
                                 "they do not go together", help="give one of them")
            out(to_text(program))
            return 0
        if args.output is not None:  # the module derives its own parametrization
            return _write_module(args, program, optimizer)
        if args.weight_decay == "coupled" and optimizer.name in ("lion", "muon"):
            # the emitted make_optimizer refuses it too: their steps decay w decoupled only
            raise UsageError(f"{optimizer.name} decays decoupled only: use --weight-decay "
                             "decoupled or independent")
        d = derive(program, optimizer, args.convention, args.depth_convention)
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
            out_json(data)
        elif args.explain:
            out(explain(d))
        else:
            out(derive_table(d, args.weight_decay))
            if zeroed is not None:
                out("\n" + zero_init_text(d, zeroed, names))
        return 0
    c_override = _global_c(args.global_c)
    if args.preset:
        abc, label = preset(args.preset, program, optimizer, c_override), args.preset
        depth = {}
        notes = [f"the preset {args.preset} has no depth form: it applies no depth scaling"]
    else:
        (abc, depth), label, notes = read_abc(args.abc), args.abc, []
        unknown = sorted(set(abc) - {p.name for p in program.params})
        if unknown:
            raise UsageError(f"{args.abc}: no param named {', '.join(unknown)} in the program",
                             help="the program's params: "
                                  + ", ".join(p.name for p in program.params))
        if depth and not program.repeats_over_depth:
            raise UsageError(f"{args.abc}: depth exponents given (for {', '.join(depth)}), but "
                             f"{program.name} repeats no block over a depth",
                             help="drop the \"depth\" keys, or declare `depth L = ...` and use "
                                  "`repeat L blk(...)`")
        if c_override is not None:
            abc = {p: ABC(x.a, x.b, c_override) for p, x in abc.items()}
    result = classify(program, optimizer, abc)
    data = classify_json(result) if args.json else None
    if not args.json:
        out(classify_text(result, label, depth_pass=program.repeats_over_depth))
    if program.repeats_over_depth:
        # a param zero-initialised (b = oo) or untrained (c = oo) in the width is so at any depth
        exps = {p.name: _at_depth(abc.get(p.name), depth.get(p.name, ABC(0, 0, 0)))
                for p in program.params}
        try:
            verdict = classify_depth(program, optimizer, exps)
        except EngineError as err:  # the depth pass refuses: the width verdict still stands
            verdict = None
            notes += [d.message + (f" ({d.help})" if d.help else "") for d in err.diagnostics]
        if args.json:
            data["depth"] = classify_depth_json(program, exps, verdict, notes)
        else:
            out("\n" + classify_depth_text(program, exps, verdict, notes))
    if args.json:
        out_json(data)
    return 0


def _at_depth(width: ABC | None, depth: ABC) -> ABC:
    if width is None:
        return depth
    return ABC(depth.a, INF if width.b is INF else depth.b, INF if width.c is INF else depth.c)


def _check(args, program, optimizer) -> int:
    # torch, tqdm and matplotlib load only here: derive and classify stay light
    from ..numerics.coordcheck import coord_check, pick_device, render

    check_plot(args)
    widths, depths, width = axis(args)
    device = pick_device(args.device)
    check_memory(program, widths or [width or program.width.base], device)
    result = coord_check(program, optimizer, param=args.param, convention=args.convention,
                         readout_zero_init=args.readout_zero_init, zero=args.zero_init,
                         base_width=args.base_width,
                         widths=widths, steps=args.steps, seeds=args.seeds,
                         lr=args.lr, batch_size=args.batch_size, device=device,
                         against=args.against, tolerance=args.tolerance,
                         progress=sys.stderr.isatty(), depths=depths, width=width,
                         depth_convention=args.depth_convention)
    from ..numerics.plots import coord_plot

    report(args, result, render, coord_plot)
    return 0 if result.passed else 1


def _values(text: str | None, hp: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--values: expected comma-separated numbers, got {text!r}",
                         help="e.g. --values 1e-4,3e-4,1e-3") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise UsageError(f"--values: {bad[0]} is not a positive number",
                         help="every HP value is a positive multiplier or rate; the sweep "
                              "compares them on a log scale")
    if hp == "lr":
        for v in values:
            check_lr("--values", v)
    return values


def _transfer(args, program, optimizer) -> int:
    from ..numerics.coordcheck import pick_device
    from ..numerics.transfer import render, sweep

    params = tuple(dict.fromkeys(args.param))
    unknown = [p for p in params if p not in ("mup", "sp", "ntp", "mup-width")]
    if unknown or not params:
        raise UsageError(f"--param: unknown parametrization {', '.join(unknown)}" if unknown
                         else "--param: no parametrization given",
                         help="choose among mup, sp, ntp, mup-width, e.g. --param mup,sp")
    values = _values(args.values, args.hp)
    check_plot(args)
    widths, depths, width = axis(args)
    device = pick_device(args.device)
    check_memory(program, widths or [width or program.width.base], device)
    result = sweep(program, optimizer, args.data, params=params, hp=args.hp,
                   widths=widths, values=values, steps=args.steps,
                   seeds=args.seeds, batch_size=args.batch_size, lr=args.lr,
                   device=device, jobs=args.jobs,
                   cache=None if args.cache.lower() == "none" else args.cache,
                   progress=sys.stderr.isatty(), depths=depths, width=width,
                   depth_convention=args.depth_convention)
    from ..numerics.plots import transfer_plot

    report(args, result, render, transfer_plot)
    return 0


def _shown(path: str) -> str:
    """A path for the emitted module's "Regenerate with" line: as the user typed it when relative
    (so the line can be pasted from the same directory), the bare name when absolute (no
    machine's directories end up in generated code)."""
    return Path(path).name if Path(path).is_absolute() else Path(path).as_posix()


def _write_module(args, program, optimizer) -> int:
    from ..emit.module import emit, full_parametrization

    abc, depth_abc, label, eps = full_parametrization(
        program, optimizer, args.param, args.convention, args.readout_zero_init, args.zero_init,
        args.depth_convention)
    flags = ["--param", args.param, "--optimizer", optimizer.name,
             "--convention", args.convention]
    flags += (["--depth-convention", args.depth_convention]
              if depth_abc and args.depth_convention != "completep" else [])
    flags += ["--muon-io"] if args.muon_io else []
    flags += ["--readout-zero-init"] if args.readout_zero_init else []
    flags += ["--zero-init", ",".join(args.zero_init)] if args.zero_init else []
    flags += ["--base-width", str(args.base_width)] if args.base_width else []
    # argv words: codegen quotes them for the shell and escapes them for the docstring
    command = ["tensorprog", "derive", _shown(args.program), "-o", _shown(args.output)]
    emitted = emit(program, abc, optimizer=optimizer, label=label,
                   command=[command, flags], base_width=args.base_width, depth_abc=depth_abc,
                   eps=eps)
    try:
        Path(args.output).write_text(emitted.source)
    except OSError as err:
        raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
    print(f"wrote {args.output}: {label}", file=sys.stderr)
    return 0


def _limit_parser(sub) -> None:
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
    m.add_argument("--samples", type=positive, default=2**14,
                   help="--train: Monte Carlo draws of the Z-variables (default: 16384)")
    m.add_argument("--seed", type=int, default=0, help="--train: the Monte Carlo seed")
    m.add_argument("--param", choices=["sp", "mup", "ntp"],
                   help="whose module: the one `derive -o --param` emits (default: sp for "
                        "--kernel; mup for --train, where ntp gives the kernel regime)")
    m.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                   help="µP's readout init follows the optimizer's derivation (default: sgd; "
                        "--train: sgd only)")
    m.add_argument("--order", type=positive, default=32,
                   help="Gauss-Hermite points per axis where no closed form exists")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("-o", "--output", metavar="K.pt",
                   help="also save the result: {output: kernel tensor} with exponents and "
                        "method, or --train's outputs (steps + 1, P, d_out)")


def _load_array(path: str, option: str, then: str):
    """A dense, finite tensor (or a dict of them) from a .pt or .npy file, as numpy arrays:
    the checks transfer's data files get."""
    import numpy as np
    import torch

    from ..numerics.data import _all_finite, _tensor

    try:
        if path.endswith(".npy"):
            data = np.load(path, allow_pickle=False)
        else:
            data = torch.load(path, weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot read {path}: {err}",
                         help="save a tensor with torch.save(x, 'X.pt') or numpy.save") from None

    def bad(why: str) -> UsageError:
        return UsageError(f"{option} {path}: {why}",
                          help="save a dense, finite (P, dim) tensor, or a dict of them, one per "
                               "input")

    def checked(value, name: str):
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            value = torch.from_numpy(value)
        t = _tensor(value, name, bad)
        if t.is_floating_point():
            _all_finite(t, name, bad, then=then)
        return t.numpy()

    if isinstance(data, dict):
        return {str(k): checked(v, str(k)) for k, v in data.items()}
    if isinstance(data, torch.Tensor | np.ndarray):
        return checked(data, "X" if option == "--inputs" else "Y")
    raise UsageError(f"{path} holds a {type(data).__name__}",
                     help="save a tensor, or a dict of tensors, one per input")


def _save(obj, path: str) -> None:
    import torch

    try:
        torch.save(obj, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)


def _limit(args, program) -> int:
    import torch

    from ..limits.nngp import nngp_kernel

    if args.train:
        return _train_limit(args, program)
    if args.targets is not None:
        raise UsageError("--targets is for --train", help="--kernel needs only --inputs")
    data = _load_array(args.inputs, "--inputs", "the kernel would be nan")
    k = nngp_kernel(program, data, param=args.param or "sp", optimizer=args.optimizer,
                    order=args.order)
    if args.output:
        _save({"kernels": {o: torch.as_tensor(v) for o, v in k.kernels.items()},
               "exponents": {o: None if e is None else str(e) for o, e in k.exponents.items()},
               "error": k.error, "parametrization": k.parametrization}, args.output)
    out((k.to_json() if args.json else k.describe()) + "\n")
    return 0


def _train_limit(args, program) -> int:
    import torch

    from ..limits.mu import describe, mu_limit

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
    text = (json.dumps({"program": program.name, **result.to_json()}, indent=1)
            if args.json else describe(result, program))
    out(text + "\n")
    return 0


def _kernel_regime(args, program, inputs, targets) -> int:
    """--train --param ntp: NTP's limit, the NTK and the outputs' mean and spread over inits."""
    import numpy as np
    import torch

    from ..limits.ntk import ntk_limit

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
    out(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except SystemExit as exit_:  # argparse: --help, --version or a malformed command line
        code = exit_.code
    except TensorProgError as err:
        print(err.render(), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted (a transfer sweep resumes from its cache)", file=sys.stderr)
        code = 130
    except OutputError as err:
        sys.exit(_output_failed(err.error))
    try:  # what is still buffered, e.g. the --help text (argparse ignores a failed write)
        sys.stdout.flush()
    except OSError as err:
        code = _output_failed(err)
    sys.exit(code)


def _output_failed(err: OSError) -> int:
    """A write to stdout failed: stop quietly if the reader went away (`tensorprog ... | head`,
    as the Python docs advise), else say why; then point stdout at devnull so that the
    interpreter's final flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured, or already closed)
        pass
    if err.errno == errno.EPIPE:
        return 1
    print(f"error: cannot write the output: {err.strerror or err}", file=sys.stderr)
    print("help: " + ("free some disk space, or send the output elsewhere"
                      if err.errno == errno.ENOSPC else "send the output elsewhere"),
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    main()
