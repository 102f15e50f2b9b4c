"""``tensorprog derive``: the µP parametrization of a program, as a table, JSON or a walk through
the derivation in words; with ``-o``, a PyTorch module with that parametrization."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..emit.module import emit, emitted_here
from ..engine.derivation import Derivation, derive_json, derive_table, explain
from ..engine.derive import CONVENTIONS, DEPTH_CONVENTIONS, derive
from ..engine.exponents import ABC, as_str
from ..engine.optimizers import Optimizer, resolve
from ..engine.parametrization import choose, zero_init, zero_init_effects, zero_init_text
from ..errors import UsageError
from ..ir.program import Program
from ..ir.text import to_text
from ..lang.parse import parse_file
from . import common

MODULE = common.Output("a PyTorch module", (".py",),
                       lambda path: emitted_here(common.first_line(path)))


def add_parser(sub) -> None:
    d = sub.add_parser("derive", help="derive the µP parametrization of a program")
    d.add_argument("program", help="a .tp file")
    common.add_optimizer(d, "adam")
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
    common.add_module_options(d, "the table then says what zero init does to the vectors at init")


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    if args.output is not None and args.dump is None:
        common.check_output("-o", args.output, MODULE, [args.program])
    program = parse_file(args.program)
    common.check_base_width(args, program)
    common.check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    if args.dump == "ir":
        return _dump_ir(args, program)
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
    if args.json:
        common.out_json(_derivation_json(d, zeroed))
    elif args.explain:
        common.out(explain(d))
    else:
        common.out(derive_table(d, args.weight_decay))
        if zeroed is not None:
            common.out("\n" + zero_init_text(d, zeroed, _zeroed_names(d, zeroed)))
    return 0


def _dump_ir(args: argparse.Namespace, program: Program) -> int:
    if args.output is not None:
        raise UsageError("--dump ir prints the program's IR, and -o writes a module: "
                         "they do not go together", help="give one of them")
    common.out(to_text(program))
    return 0


def _zeroed_names(d: Derivation, zeroed: dict[str, ABC]) -> list[str]:
    """The params that zero init changes."""
    return sorted(p for p in zeroed if zeroed[p] != d.abc[p])


def _derivation_json(d: Derivation, zeroed: dict[str, ABC] | None) -> dict:
    data = derive_json(d)
    if zeroed is not None:
        data["zero_init"] = {"params": _zeroed_names(d, zeroed), "init": {
            v: {"before": as_str(b), "after": as_str(a)}
            for v, b, a in zero_init_effects(d, zeroed)}}
    return data


def _shown(path: str) -> str:
    """A path for the emitted module's "Regenerate with" line: as the user typed it when relative
    (so the line can be pasted from the same directory), the bare name when absolute (no
    machine's directories end up in generated code)."""
    return Path(path).name if Path(path).is_absolute() else Path(path).as_posix()


def _write_module(args: argparse.Namespace, program: Program, optimizer: Optimizer) -> int:
    abc, depth_abc, label, eps = choose(
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
