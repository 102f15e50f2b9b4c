"""``tensorprog trace``: a PyTorch model (a function of the width in the user's file) traced at two
widths into a .tp program. Imports torch and the user's file; see
tensorprog/fromtorch/command.py."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..fromtorch.command import trace_command
from ..fromtorch.trace import traced_here
from ..ir.sizes import check_seq_len
from . import common

PROGRAM = common.Output("a traced program", (".tp",),
                        lambda path: traced_here(common.first_line(path)))


def add_parser(sub) -> None:
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
    r.add_argument("--seq-len", type=common.positive, default=8,
                   help="sequence length of the default token ids (default: 8)")
    r.add_argument("--image", metavar="C,H,W",
                   help="trace on an image batch of shape [2, C, H, W] (zeros) instead of token "
                        "ids, e.g. --image 3,32,32 (ignored where --inputs or example_inputs "
                        "gives the inputs)")
    r.add_argument("-o", "--output", metavar="FILE.tp", help="write the program there "
                                                             "(default: standard output)")


def run(args: argparse.Namespace) -> int:
    if args.output is not None and not args.output.strip():
        raise UsageError("-o: the path is empty", help="give a file name")
    check_seq_len(args.seq_len)  # before the model's file is even imported
    if args.output is not None:  # the model's file is the input to keep
        common.check_output("-o", args.output, PROGRAM, [args.target.rpartition(":")[0]])
    image = _image(args.image) if args.image is not None else None
    source = trace_command(args.target, common.widths(args.widths), args.output, args.inputs,
                           args.seq_len, image)
    if args.output is None:
        common.out(source)
    else:
        common.out(f"wrote {args.output}\n")
    return 0


def _image(text: str) -> tuple[int, int, int]:
    """``--image C,H,W``: three positive integers, an image of at most 2^24 pixel values."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1 or values[0] * values[1] * values[2] > 1 << 24:
        raise UsageError(f"--image {text}: expected three positive integers C,H,W (channels, "
                         "height, width) of at most 2^24 values in all",
                         help="e.g. --image 3,32,32 for CIFAR-sized RGB images")
    return values
