"""``tensorprog classify``: is a parametrization (a preset, or per-param exponents from an --abc
file) stable, and does it learn features? A program that repeats a block over its depth gets
the depth verdict too."""

from __future__ import annotations

import argparse

from ..engine.classify import (
    classify,
    classify_depth,
    classify_depth_json,
    classify_depth_text,
    classify_json,
    classify_text,
)
from ..engine.exponents import ABC, INF, NEG_INF, Exp
from ..engine.optimizers import Optimizer, resolve
from ..engine.parametrization import PRESETS, preset
from ..errors import EngineError, UsageError
from ..ir.program import Program
from ..lang.parse import parse_file
from . import common
from .abcfile import exponent, read_abc


def add_parser(sub) -> None:
    c = sub.add_parser("classify", help="classify a parametrization: stable? feature learning?")
    c.add_argument("program", help="a .tp file")
    common.add_optimizer(c, "sgd", " (TP4's setting for the presets)")
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


def run(args: argparse.Namespace) -> int:
    common.check_paths(args)
    program = parse_file(args.program)
    common.check_muon_io(args)
    optimizer = resolve(args.optimizer, io=args.muon_io)
    c_override = _global_c(args.global_c)
    if args.preset:
        abc, label = preset(args.preset, program, optimizer, c_override), args.preset
        depth: dict[str, ABC] = {}
        notes = [f"the preset {args.preset} has no depth form: it applies no depth scaling"]
    else:
        (abc, depth), label, notes = _from_file(args.abc, program, c_override), args.abc, []
    result = classify(program, optimizer, abc)
    data = classify_json(result) if args.json else None
    if not args.json:
        common.out(classify_text(result, label, depth_pass=program.repeats_over_depth))
    if program.repeats_over_depth:
        exps, verdict = _depth_pass(program, optimizer, abc, depth, notes)
        if args.json:
            data["depth"] = classify_depth_json(program, exps, verdict, notes)
        else:
            common.out("\n" + classify_depth_text(program, exps, verdict, notes))
    if args.json:
        common.out_json(data)
    return 0


def _global_c(text: str | None) -> Exp | None:
    if text is None:
        return None
    c = exponent(text, "--c")
    if c is NEG_INF:
        raise UsageError(f"--c {text}: a learning rate cannot scale as n^oo",
                         help="c is a rational, e.g. 1 or 1/2, or oo for no training")
    return c


def _from_file(path: str, program: Program,
               c_override: Exp | None) -> tuple[dict[str, ABC], dict[str, ABC]]:
    """The width and depth exponents of the --abc file, checked against the program's params;
    --c, if given, replaces every width c."""
    abc, depth = read_abc(path)
    unknown = sorted(set(abc) - {p.name for p in program.params})
    if unknown:
        raise UsageError(f"{path}: no param named {', '.join(unknown)} in the program",
                         help="the program's params: "
                              + ", ".join(p.name for p in program.params))
    if depth and not program.repeats_over_depth:
        raise UsageError(f"{path}: depth exponents given (for {', '.join(depth)}), but "
                         f"{program.name} repeats no block over a depth",
                         help="drop the \"depth\" keys, or declare `depth L = ...` and use "
                              "`repeat L blk(...)`")
    if c_override is not None:
        abc = {p: ABC(x.a, x.b, c_override) for p, x in abc.items()}
    return abc, depth


def _depth_pass(program: Program, optimizer: Optimizer, abc: dict[str, ABC],
                depth: dict[str, ABC], notes: list[str]):
    """(the depth exponents of every param, the depth verdict or None); a refusal of the depth
    pass is added to ``notes``, since the width verdict still stands."""
    # a param zero-initialised (b = oo) or untrained (c = oo) in the width is so at any depth
    exps = {p.name: _at_depth(abc.get(p.name), depth.get(p.name, ABC(0, 0, 0)))
            for p in program.params}
    try:
        verdict = classify_depth(program, optimizer, exps)
    except EngineError as err:  # the depth pass refuses: the width verdict still stands
        verdict = None
        notes.extend(d.message + (f" ({d.help})" if d.help else "") for d in err.diagnostics)
    return exps, verdict


def _at_depth(width: ABC | None, depth: ABC) -> ABC:
    if width is None:
        return depth
    return ABC(depth.a, INF if width.b is INF else depth.b, INF if width.c is INF else depth.c)
