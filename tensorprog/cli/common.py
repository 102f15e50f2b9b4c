"""What the commands share: writing to stdout (``out`` and ``out_json``, from output.py), reading
numeric and list options, the checks every command makes before any work (empty paths, numeric
ranges, --base-width, --muon-io, the files it would write), the options of the emitted module and
of the depth axis, and the report of check and transfer.

Every refusal is a :class:`UsageError` raised before the work it would spoil, saying the range
or the form that is allowed and why.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..engine.derive import DEPTH_CONVENTIONS
from ..engine.optimizers import OPTIMIZERS
from ..errors import UsageError
from ..ir.program import Program
from ..numerics.plots import MARKED_FORMATS, check_plot_path, drawn_here
from .output import out, out_json

# --- option values ------------------------------------------------------------------------------


def positive(text: str) -> int:
    """An argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def names(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated names, blanks dropped."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


MAX_WIDTHS = 32  # a slope is fitted through the widths; more only adds run time


def widths(text: str, what: str = "width") -> list[int]:
    """``--widths`` (or ``--depths`` with ``what="depth"``): at least two different positive
    integers, each once, sorted."""
    option, eg = f"--{what}s", ("64,128,256,512" if what == "width" else "2,4,8,16")
    try:
        values = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated integers, got {text!r}",
                         help=f"e.g. {option} {eg}") from None
    if len(set(values)) < 2 or min(values) < 1:
        raise UsageError(f"{option}: give at least two different positive {what}s",
                         help=f"e.g. {option} {eg}")
    repeated = sorted({w for w in values if values.count(w) > 1})
    if repeated:
        raise UsageError(f"{option}: {', '.join(map(str, repeated))} given twice",
                         help=f"give each {what} once (a typo for another {what}?)")
    if len(values) > MAX_WIDTHS:
        raise UsageError(f"{option}: {len(values)} {what}s, at most {MAX_WIDTHS}",
                         help=f"the slopes are fitted through the {what}s, and a few spread over "
                              f"a factor of 8 or more fix them; each extra {what} is a full run")
    return sorted(values)


# --- checks before any work ---------------------------------------------------------------------


def check_paths(args: argparse.Namespace) -> None:
    """Refuse an empty path in any of the command's path arguments."""
    for option, path in (("program", args.program), ("-o", getattr(args, "output", None)),
                         ("--plot", getattr(args, "plot", None)),
                         ("--abc", getattr(args, "abc", None))):
        if path is not None and not path.strip():
            raise UsageError(f"{option}: the path is empty", help="give a file name")


# a command's numeric options with their allowed ranges, and why: (option, attribute, lowest,
# highest, why)
Ranges = tuple[tuple[str, str, int, int, str], ...]

MAX_LR = 1e6


def check_ranges(args: argparse.Namespace, ranges: Ranges) -> None:
    """Refuse out-of-range numeric options before any work, saying the range and why."""
    for option, attr, low, high, why in ranges:
        value = getattr(args, attr)
        if value is not None and not low <= value <= high:
            raise UsageError(f"{option} {value}: must be from {low} to {high}", help=why)
    if getattr(args, "lr", None) is not None:
        check_lr("--lr", args.lr)


def check_lr(option: str, lr: float) -> None:
    if not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise UsageError(f"{option} {lr}: the learning rate must be a positive number, at most "
                         f"{MAX_LR:g}",
                         help="larger rates diverge at every width, and near float32's range "
                              "(3.4e38) the optimizer itself overflows")


def check_base_width(args: argparse.Namespace, program: Program) -> None:
    """Refuse a --base-width at which the program has no network."""
    if getattr(args, "base_width", None):
        problem = program.width_problem(args.base_width)
        if problem:
            raise UsageError(f"--base-width {args.base_width}: {problem}",
                             help="the module equals SP at its base width, so the program "
                                  "must have a network there: choose a width the dims divide")


def check_muon_io(args: argparse.Namespace) -> None:
    """--muon-io only chooses among Muon's matrices."""
    if args.muon_io and args.optimizer != "muon":
        raise UsageError(f"--muon-io chooses Muon's matrices, but the optimizer is "
                         f"{args.optimizer}", help="add --optimizer muon, or drop --muon-io")


def check_plot(args: argparse.Namespace, *inputs: str | None) -> None:
    """Refuse, before any training, a figure path that cannot be written, or that would replace
    one of ``inputs`` or a file that is not a figure drawn here."""
    if args.plot:
        path = check_plot_path(args.plot)
        check_output("--plot", args.plot, FIGURE, inputs)
        existed = path.exists()
        try:  # append mode: an existing figure is neither truncated nor replaced yet
            with open(path, "ab"):
                pass
        except OSError as err:
            raise UsageError(f"--plot {path}: cannot write it: {err.strerror}",
                             help="choose a path in a directory you can write") from None
        if not existed:
            path.unlink()


# --- files a command writes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """A kind of file a command writes: ``what`` it is, the ``suffixes`` its name may end in (the
    first is suggested; none: the writer checks the name itself), ``ours``, which tells an
    existing file of this kind written here earlier (safe to replace) from anything else, and a
    ``note`` on what ``ours`` can recognise."""

    what: str
    suffixes: tuple[str, ...]
    ours: Callable[[Path], bool]
    note: str = ""


def first_line(path: Path) -> str:
    """The first line of a text file ("" if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(4096)
    except OSError:
        return ""


FIGURE = Output("a figure", (), drawn_here,
                note=f"only {', '.join('.' + f for f in MARKED_FORMATS)} figures carry the mark "
                     "that tells one drawn here")


def check_output(option: str, path: str, kind: Output, inputs: Iterable[str | None]) -> None:
    """Refuse, before any work, to write ``path`` where writing would destroy something: a
    directory, a name without the kind's suffix (``derive F.tp -o F.tp`` is a slip for another
    file), one of the command's own ``inputs`` (compared as files, so that symlinks, hard links
    and ``./`` spellings count), or an existing file this package did not write (a user's model,
    program or data), or a file whose directory does not exist. Only a file of the same kind
    written here earlier is replaced."""
    out = Path(path)
    if out.is_dir():
        name = "out" + kind.suffixes[0] if kind.suffixes else "figure.png"
        raise UsageError(f"{option} {path}: is a directory",
                         help=f"give a file name, e.g. {out / name}")
    if not out.parent.is_dir():  # writers fail only after the work (torch.save: RuntimeError)
        raise UsageError(f"{option} {path}: cannot write it: no directory {out.parent}",
                         help="create the directory first, or write to an existing one")
    if kind.suffixes and out.suffix.lower() not in kind.suffixes:
        raise UsageError(f"{option} {path}: {kind.what} is written to a "
                         f"{' or '.join(kind.suffixes)} file",
                         help=f"e.g. {option} {out.with_suffix(kind.suffixes[0])}")
    for given in inputs:
        if given and _same_file(out, Path(given)):
            raise UsageError(f"{option} {path}: that is the input {given}; writing {kind.what} "
                             "there would replace it", help="write to another file")
    if out.exists() and not kind.ours(out):
        raise UsageError(f"{option} {path}: the file exists and is not {kind.what} that "
                         "tensorprog wrote",
                         help="tensorprog replaces only files it wrote: choose another name, or "
                              "move the file away first" + (f" ({kind.note})" if kind.note else ""))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # follows symlinks; also sees hard links
    except OSError:  # one of them does not exist (yet): compare the resolved paths
        return a.resolve() == b.resolve()


# --- options shared by several commands ---------------------------------------------------------


def add_optimizer(parser: argparse.ArgumentParser, default: str, note: str = "") -> None:
    """--optimizer (its default said in the help, with ``note``) and --muon-io, which only
    means something beside it."""
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=default,
                        help=f"default: {default}{note}")
    parser.add_argument("--muon-io", action="store_true",
                        help="with --optimizer muon: orthogonalise the input and output matrices "
                             "too (default: hidden matrices only; token and position lookups, "
                             "vectors and scalars always take AdamW)")


def add_module_options(p: argparse.ArgumentParser, zero_note: str) -> None:
    """The options that pick the emitted module's parametrization (derive -o and check)."""
    p.add_argument("--param", choices=["mup", "sp", "ntp", "mup-width"], default="mup",
                   help="the parametrization to emit or check (default: the derived µP, with "
                        "its depth exponents where the program repeats a block over a depth; "
                        "mup-width: the same µP with no depth scaling)")
    p.add_argument("--readout-zero-init", action="store_true",
                   help=f"initialise output weights (derived role) to zero; {zero_note}")
    p.add_argument("--zero-init", metavar="W1,W2", type=names, default=(),
                   help="initialise these weights to zero (e.g. the attention queries)")
    p.add_argument("--base-width", type=positive, metavar="N",
                   help="the width at which the module equals SP (default: the program's)")


def add_depth_options(p: argparse.ArgumentParser, what: str) -> None:
    """--depths and --width: the depth axis of check and transfer."""
    p.add_argument("--depths", metavar="L1,L2,...",
                   help=f"{what} at these depths instead of widths, at one width (--width); the "
                        "program must repeat a block over its depth")
    p.add_argument("--width", type=positive, metavar="N",
                   help="the width of every run with --depths (default: the program's base width)")
    p.add_argument("--depth-convention", choices=list(DEPTH_CONVENTIONS), default="completep",
                   help="how a free depth exponent is resolved in the emitted module "
                        "(default: completep)")


def axis(args: argparse.Namespace) -> tuple[list[int], list[int] | None, int | None]:
    """(widths, depths, width) from --widths, or --depths and --width."""
    if args.depths is None:
        if args.width is not None:
            raise UsageError("--width sets the width of a depth sweep: it needs --depths",
                             help="give --depths L1,L2,..., or --widths for a width sweep")
        return widths(args.widths or args.default_widths), None, None
    if args.widths is not None:  # a depth sweep runs at one width: --widths would go unused
        raise UsageError("--widths sets a width sweep; --depths runs at one width",
                         help="give that width as --width N (default: the program's base width)")
    return [], widths(args.depths, "depth"), args.width


# --- training runs (check and transfer) ---------------------------------------------------------


def report(args: argparse.Namespace, result, render, draw) -> None:
    """JSON or the table, then the figure (if asked): what check and transfer print. The results
    come first, so that a figure that cannot be written loses nothing."""
    if args.json:
        out_json(result.as_dict())
    else:
        out(render(result))
    if args.plot:
        try:
            draw(result, args.plot)
        except OSError as err:
            raise UsageError(f"--plot {args.plot}: cannot write it: {err.strerror or err}",
                             help="the results are printed above; choose another path") from None
        print(f"wrote {args.plot}", file=sys.stderr)
