"""Text to IR: the pipeline's front end, and the driver that names its passes in order.

1. :func:`_syntax` parses with lark (LALR) and renders a syntax error with its position.
2. :class:`_ToAst`, a lark Transformer whose methods are the grammar's aliases, turns the parse tree
   into statements holding small expression trees (the dataclasses below).
3. :func:`tensorprog.lower.lower` resolves names and dims, checks shapes and emits the IR, which
   :func:`tensorprog.ir.verify` checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Transformer, v_args

from ._gc import paused_gc
from .errors import Diagnostic, ParseError, Span
from .ir import Program
from .lower import lower


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("tensorprog.grammar").joinpath("tensorprog.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


# --- AST ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    name: str
    span: Span


@dataclass(frozen=True)
class Num:
    value: Fraction
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str
    left: object
    right: object
    span: Span


@dataclass(frozen=True)
class Transpose:
    name: str
    span: Span


@dataclass(frozen=True)
class Neg:
    arg: object
    span: Span


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple
    span: Span
    fn_span: Span


@dataclass(frozen=True)
class Stmt:
    kind: str  # width, dim, input, param, assign, output_assign, output_mark
    name: str
    value: object
    span: Span
    name_span: Span


class _ToAst(Transformer):
    """Parse tree -> statements. One method per grammar alias; anything else is a bug."""

    def __init__(self, source: str, filename: str):
        super().__init__()
        self.source, self.filename = source, filename

    def span(self, node) -> Span:
        return Span(node.line, node.column, node.end_line, node.end_column, self.source,
                    self.filename)

    def __default__(self, data, children, meta):
        raise AssertionError(f"grammar rule {data!r} has no handler in _ToAst")

    def start(self, children):
        return list(children)

    def shape(self, children):
        return tuple(children)

    @v_args(meta=True)
    def width_decl(self, meta, c):
        return Stmt("width", str(c[0]), int(c[1]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def dim_decl(self, meta, c):
        return Stmt("dim", str(c[0]), c[1], self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def input_decl(self, meta, c):
        return Stmt("input", str(c[0]), c[1], self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def input_tokens(self, meta, c):
        return Stmt("input", str(c[0]), ("tokens", c[1], c[2]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def input_image(self, meta, c):
        return Stmt("input", str(c[0]), ("image", c[1], c[2], c[3]), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_positions(self, meta, c):
        return Stmt("input", str(c[0]), ("positions", c[1]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def param_decl(self, meta, c):
        value = Fraction(str(c[2])) if len(c) > 2 else None
        return Stmt("param", str(c[0]), (c[1], value), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def scale_decl(self, meta, c):
        value = Fraction(str(c[1])) if len(c) > 1 and c[1] is not None else None
        return Stmt("scale", str(c[0]), value, self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def assign(self, meta, c):
        return Stmt("assign", str(c[0]), c[1], self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def output_assign(self, meta, c):
        return Stmt("output_assign", str(c[0]), c[1], self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def output_mark(self, meta, c):
        return Stmt("output_mark", str(c[0]), None, self.span(meta), self.span(c[0]))

    # dims are kept as (kind, tokens) and resolved by the lowering, which knows the declared dims
    def dim_int(self, c):
        return ("int", c)

    def dim_name(self, c):
        return ("name", c)

    def dim_scaled(self, c):
        return ("scaled", [c[1], c[0]])

    def dim_scaled_right(self, c):
        return ("scaled", c)

    def dim_divided(self, c):
        return ("divided", c)

    @v_args(meta=True)
    def add(self, meta, c):
        return BinOp("+", c[0], c[1], self.span(meta))

    @v_args(meta=True)
    def sub(self, meta, c):
        return BinOp("-", c[0], c[1], self.span(meta))

    @v_args(meta=True)
    def mul(self, meta, c):
        return BinOp("*", c[0], c[1], self.span(meta))

    @v_args(meta=True)
    def div(self, meta, c):
        return BinOp("/", c[0], c[1], self.span(meta))

    @v_args(meta=True)
    def matmul(self, meta, c):
        return BinOp("@", c[0], c[1], self.span(meta))

    @v_args(meta=True)
    def neg(self, meta, c):
        return Neg(c[0], self.span(meta))

    def var(self, c):
        return Var(str(c[0]), self.span(c[0]))

    @v_args(meta=True)
    def transpose(self, meta, c):
        return Transpose(str(c[0]), self.span(meta))

    def number(self, c):
        return Num(Fraction(str(c[0])), self.span(c[0]))

    @v_args(meta=True)
    def call(self, meta, c):
        return Call(str(c[0]), tuple(x for x in c[1:] if x is not None), self.span(meta),
                    self.span(c[0]))


# --- syntax errors --------------------------------------------------------------------------------

_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "NUMBER": "a number", "_NL": "end of line",
    "EQUAL": "'='", "COLON": "':'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','",
    "LPAR": "'('", "RPAR": "')'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "__ANON_0": "'@'", "AT": "'@'", "$END": "end of file",
}


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: str, filename: str) -> ParseError:
    line, col = max(err.line, 1), max(err.column, 1)
    width = 1
    if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type != "$END":
        got = repr(str(err.token)) if err.token.type != "_NL" else "end of line"
        width = max(len(str(err.token).splitlines()[0]) if str(err.token).strip() else 1, 1)
    elif isinstance(err, lark.exceptions.UnexpectedCharacters):
        got = repr(source.splitlines()[line - 1][col - 1]) if source.splitlines() else "?"
    else:
        got = "end of file"
    allowed = getattr(err, "expected", None) or getattr(err, "allowed", None) or []
    expected = sorted({_TOKEN_WORDS.get(t, repr(t.lower())) for t in allowed
                       if not t.startswith("__ANON") or t == "__ANON_0"})
    span = Span(line, col, line, col + width, source, filename)
    msg = f"syntax error: unexpected {got}"
    help_ = f"expected {', '.join(expected)}" if expected else None
    if got in ("'['", "'{'"):
        help_ = "vectors are declared with a shape, e.g. `input x : [d_in]`; " + (help_ or "")
    return ParseError(Diagnostic(msg, span, help_))


def _syntax(source: str, filename: str) -> lark.Tree:
    try:
        return _parser().parse(source if source.endswith("\n") else source + "\n")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source, filename) from None


def parse(source: str, filename: str = "<program>") -> Program:
    """Parse a Tensor Program; raise :class:`ParseError`/:class:`SemanticError` with positions."""
    with paused_gc():
        tree = _syntax(source, filename)
        stmts = _ToAst(source, filename).transform(tree)
        return lower(stmts, source, filename)


def parse_file(path: str | Path) -> Program:
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as err:
        raise ParseError(f"cannot read {path}: {err.strerror}",
                         help="check the path of the program file") from None
    return parse(source, str(path))
