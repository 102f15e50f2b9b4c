"""The ``tensorprog`` command: derive µP for a program, classify a parametrization, or check one
numerically.

This module holds what is not one command's: argv (negative numbers as option values), the
top-level parser built from each command module's ``add_parser(sub)``, dispatch to the command's
``run(args) -> int``, the version, warnings, error rendering, Ctrl-C and exit codes.

User errors print a positioned message and exit with status 2; a failed check exits with 1;
Ctrl-C prints one line saying what is true for the command, and exits with 130.
Only ``check``, ``transfer``, ``tune``, ``limit`` and ``trace`` import torch. This module imports
only what is light (the package's facade loads its names on first use): the commands, and with
them sympy and the pipeline, load inside ``main``'s handling, so that Ctrl-C in the first second
of a run is caught like any other.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import re
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

from .._version import __version__
from ..errors import TensorProgError, TensorProgWarning
from .output import OutputError, out

# the subcommands in the order --help lists them, each a module of this package with
# ``add_parser(sub)``, ``run(args) -> int`` and optionally ``interrupted(args) -> str``
COMMANDS = ("derive", "classify", "check", "transfer", "tune", "limit", "trace")


def command(name: str):
    """The module of the command ``name`` (imported on first use: it loads the pipeline)."""
    return importlib.import_module(f".{name}", __package__)


class _Parser(argparse.ArgumentParser):
    """argparse ignores a failed write of the help text; this one reports it like any output.
    The top-level parser keeps its subcommands' parsers in ``commands``."""

    commands: dict[str, argparse.ArgumentParser]

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


def _version() -> str:
    try:
        return version("tensorprog")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with one subparser per command (the subparsers share its class)."""
    ap = _Parser(
        prog="tensorprog",
        description="Derive and check how a network's init, multipliers and learning rates must "
                    "scale with width (µP), from the network written as a Tensor Program.")
    ap.add_argument("--version", action=_Version, help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command(name).add_parser(sub)
    ap.commands = sub.choices
    return ap


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line. argparse leaves the arguments no subcommand option took to the
    top-level parser, which refuses them with its own usage (not the command's) and no hint; here
    the command's parser refuses them, suggesting the closest of its options for a misspelled
    one (``--optimiser``: did you mean --optimizer?)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(join_negative_values(argv))
    if extra:
        sub = parser.commands[args.command]
        options = [o for action in sub._actions for o in action.option_strings]
        given = [e.split("=")[0] for e in extra if e.startswith("-")]
        hints = [f"{g}: did you mean {close[0]}?" for g in given
                 for close in [difflib.get_close_matches(g, options, 1, 0.6)] if close]
        sub.error(f"unrecognized arguments: {' '.join(extra)}"
                  + "".join(f"\n  {hint}" for hint in hints))
    return args


# options whose value is a number, a rational or a list of numbers: argparse reads a value that
# starts with "-" as an option unless it looks like a plain negative number ("-1", not "-1/2"
# nor "-1e-3"), so such values are joined to their option ("--c=-1/2") before parsing
NUMBER_OPTIONS = ("--c", "--lr", "--tolerance", "--steps", "--seeds", "--batch-size",
                  "--base-width", "--widths", "--values", "--jobs")
_NEGATIVE = re.compile(r"-(\d|\.\d|oo\b|inf|nan)", re.IGNORECASE)


def join_negative_values(argv: list[str]) -> list[str]:
    """``argv`` with each negative value of a number option joined to it: ``--c -1/2`` becomes
    ``--c=-1/2``. Tokens after ``--`` are left alone."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return joined + argv[i:]
        if _number_option(token) and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            joined.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        joined.append(token)
        i += 1
    return joined


def _number_option(token: str) -> bool:
    """A number option, or an abbreviation argparse may expand to one (``--tol``): joining a value
    to an option with "=" means the same to argparse whichever option it resolves to."""
    return token.startswith("--") and len(token) > 2 and "=" not in token and any(
        option.startswith(token) for option in NUMBER_OPTIONS)


class Interrupted(Exception):
    """Ctrl-C while a command ran, with what is true for that command afterwards (what it kept,
    whether a rerun resumes)."""


def run(argv: list[str] | None = None) -> int:
    """Parse argv and run its command; TensorProgWarnings are printed once each, on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TensorProgWarning)
        module = command(args.command)
        try:
            return module.run(args)
        except KeyboardInterrupt:
            told = getattr(module, "interrupted", None)
            raise Interrupted(told(args) if told else "") from None
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught
                                         if issubclass(w.category, TensorProgWarning)):
                print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except SystemExit as exit_:  # argparse: --help, --version or a malformed command line
        code = exit_.code
    except TensorProgError as err:
        print(err.render(), file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # before a command ran: while the pipeline loaded
        print("interrupted", file=sys.stderr)
        code = 130
    except Interrupted as stop:
        print(f"interrupted: {stop}" if str(stop) else "interrupted", file=sys.stderr)
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
