"""Text to IR: the pipeline's front end, and the driver that names its passes in order.

1. :func:`tensorprog.lang.syntax.syntax` parses with lark (LALR) and renders a syntax error
   with its position.
2. :class:`tensorprog.lang.syntax.ToAst`, a lark Transformer whose methods are the grammar's
   aliases, turns the parse tree into statements holding small expression trees
   (:mod:`tensorprog.lang.ast`).
3. :func:`tensorprog.lang.lower.lower` resolves names and dims, checks shapes and emits the IR,
   which :func:`tensorprog.ir.verify.verify` checks.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from .._gc import paused_gc
from ..errors import ParseError, Span
from ..ir.program import Program
from .lower import lower
from .syntax import ToAst, syntax


def parse(source: str, filename: str = "<program>") -> Program:
    """Parse a Tensor Program; raise :class:`ParseError`/:class:`SemanticError` with positions."""
    with paused_gc():
        tree = syntax(source, filename)
        to_ast = ToAst(source, filename)
        stmts = to_ast.transform(tree)
        to_ast.errors.raise_if_any(ParseError)
        return lower(stmts, source, filename)


def parse_file(path: str | Path) -> Program:
    """Parse the program in a UTF-8 file (a byte-order mark is skipped; a '\\r\\n' or lone '\\r'
    ends a line, as in Python's text mode)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ParseError(f"cannot read {path}: {err.strerror}",
                         help="check the path of the program file") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(err, data, str(path)) from None
    return parse(source.replace("\r\n", "\n").replace("\r", "\n"), str(path))


def _not_utf8(err: UnicodeDecodeError, data: bytes, filename: str) -> ParseError:
    """Where the first byte that is not UTF-8 is, as a line and a column of characters."""
    line_start = data.rfind(b"\n", 0, err.start) + 1
    line = data.count(b"\n", 0, err.start) + 1
    column = len(data[line_start:err.start].decode("utf-8", errors="replace")) + 1
    shown = data.decode("utf-8", errors="replace")  # the bad byte prints as U+FFFD
    span = Span(line, column, line, column + 1, shown, filename)
    return ParseError(f"the file is not UTF-8 text: byte 0x{data[err.start]:02x} cannot be "
                      "decoded", span, "save the program as UTF-8")
