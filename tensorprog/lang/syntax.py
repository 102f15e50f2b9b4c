"""Text to syntax tree: lark's LALR parser over the packaged grammar (``grammar.lark``), syntax
errors rendered with their position and a hint, and :class:`ToAst`, the lark Transformer whose
methods are the grammar's aliases, which turns the parse tree into :mod:`tensorprog.lang.ast`
statements."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from importlib import resources

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args

from ..errors import Collector, Diagnostic, ParseError, Span, source_lines
from ..ir.program import FLOAT_MAX, FLOAT_MIN, MAX_SIZE
from .ast import BinOp, Call, Neg, Num, Repeat, Stmt, Transpose, Var


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...{text[-8:]} ({len(text)} characters)"


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("tensorprog.lang").joinpath("grammar.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


class ToAst(Transformer_NonRecursive):
    """Parse tree -> statements. One method per grammar alias; anything else is a bug.

    Non-recursive, so a sum of thousands of terms or a thousand nested calls (a parse tree that
    deep) transforms without hitting Python's recursion limit. Numbers are range-checked here,
    where their token is: later stages convert them to floats."""

    def __init__(self, source: str, filename: str):
        super().__init__()
        self.source, self.filename = source, filename
        self.errors = Collector()

    def size(self, tok: Token) -> int:
        """An integer literal used as a size (a width, a dim or its factor)."""
        if len(tok) > len(str(MAX_SIZE)) or int(tok) > MAX_SIZE:
            self.errors.error(f"the size {_short(tok)} is too large", self.span(tok),
                              f"sizes go up to 2**53 = {MAX_SIZE}, the largest integer a float "
                              "holds exactly")
            return 1
        return int(tok)

    def value(self, tok: Token) -> Fraction:
        """A number literal (a coefficient, an init or a scale), exactly as written."""
        text = str(tok)
        if not any(ch in "123456789" for ch in text.lower().split("e")[0]):
            return Fraction(0)
        f = float(text)  # never raises on the grammar's NUMBER/INT; inf or 0.0 out of range
        if not (math.isfinite(f) and abs(f) >= FLOAT_MIN):
            self.errors.error(f"the number {_short(text)} is out of range", self.span(tok),
                              f"a nonzero number must lie between {FLOAT_MIN:.3g} and "
                              f"{FLOAT_MAX:.3g} in size (a float's normal range)")
            return Fraction(1)
        try:
            return Fraction(text)
        except ValueError:  # more digits than int's string conversion allows
            self.errors.error(f"the number {_short(text)} has too many digits", self.span(tok),
                              "write it with at most 17 significant digits and an exponent, "
                              "e.g. 1.25e-3")
            return Fraction(1)

    def span(self, node) -> Span:
        return Span(node.line, node.column, node.end_line, node.end_column, self.source,
                    self.filename)

    def __default__(self, data, children, meta):
        raise AssertionError(f"grammar rule {data!r} has no handler in ToAst")

    def start(self, children):
        return list(children)

    def shape(self, children):
        return tuple(children)

    @v_args(meta=True)
    def width_decl(self, meta, c):
        return Stmt("width", str(c[0]), self.size(c[1]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def depth_decl(self, meta, c):
        return Stmt("depth", str(c[0]), self.size(c[1]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def block_def(self, meta, c):
        return Stmt("block", str(c[0]), (str(c[1]), self.span(c[1]), list(c[2:])),
                    self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def return_stmt(self, meta, c):
        span = self.span(meta)
        return Stmt("return", "return", c[0], span, span)

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
    def input_patches(self, meta, c):
        return Stmt("input", str(c[0]), ("patches", c[1], c[2]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def input_positions(self, meta, c):
        return Stmt("input", str(c[0]), ("positions", c[1]), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def input_axial(self, meta, c):
        # axial[T, A, s]: the stride s is a number of positions, not a dim
        return Stmt("input", str(c[0]), ("axial", c[1], c[2], int(c[3])), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_relative(self, meta, c):
        # relative[T, B, r]: the reach r is a number of tokens, not a dim
        reach = () if len(c) < 4 or c[3] is None else (int(c[3]),)
        return Stmt("input", str(c[0]), ("relative", c[1], c[2], *reach), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_causal_relative(self, meta, c):
        return Stmt("input", str(c[0]), ("causal_relative", c[1], c[2]), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_grid_offsets(self, meta, c):
        # grid_offsets[T, B] or [S, T, B, s]: the stride s is a number of tokens, not a dim
        rest = (*c[1:4], int(c[4])) if len(c) > 3 else tuple(c[1:3])
        return Stmt("input", str(c[0]), ("grid_offsets", *rest), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_offsets(self, meta, c):
        return Stmt("input", str(c[0]), ("offsets", c[1], c[2]), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def input_windows(self, meta, c):
        # windows[T, B, H, W, shift(, mask)]: the shift is a number of tokens, not a dim; the
        # mask, the number subtracted between the roll's regions (100 unless given)
        mask = 100 if len(c) < 7 or c[6] is None else int(c[6])
        return Stmt("input", str(c[0]), ("windows", *c[1:5], int(c[5]), mask), self.span(meta),
                    self.span(c[0]))

    @v_args(meta=True)
    def param_decl(self, meta, c):
        value = (c[2] if isinstance(c[2], Fraction) else self.value(c[2])) if len(c) > 2 \
            else None
        return Stmt("param", str(c[0]), (c[1], value), self.span(meta), self.span(c[0]))

    @v_args(meta=True)
    def param_standardised(self, meta, c):
        return Stmt("param", str(c[0]), (c[1], None, self.value(c[2])), self.span(meta),
                    self.span(c[0]))

    def negative_init(self, c):
        return -self.value(c[0])

    @v_args(meta=True)
    def scale_decl(self, meta, c):
        value = self.value(c[1]) if len(c) > 1 and c[1] is not None else None
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

    # dims are kept as (kind, tokens) and resolved by the lowering, which knows the declared dims;
    # their integers are range-checked here
    def dim_int(self, c):
        self.size(c[0])
        return ("int", c)

    def dim_name(self, c):
        return ("name", c)

    def dim_scaled(self, c):
        self.size(c[0])
        return ("scaled", [c[1], c[0]])

    def dim_scaled_right(self, c):
        self.size(c[1])
        return ("scaled", c)

    def dim_divided(self, c):
        self.size(c[1])
        return ("divided", c)

    def dim_ratio(self, c):
        self.size(c[0])
        self.size(c[2])
        return ("ratio", [c[1], c[0], c[2]])

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

    @v_args(meta=True)
    def repeat_depth(self, meta, c):
        return Repeat(str(c[0]), self.span(c[0]), str(c[1]), self.span(c[1]), c[2],
                      self.span(meta))

    @v_args(meta=True)
    def repeat_fixed(self, meta, c):
        return Repeat(self.size(c[0]), self.span(c[0]), str(c[1]), self.span(c[1]), c[2],
                      self.span(meta))

    def number(self, c):
        return Num(self.value(c[0]), self.span(c[0]))

    @v_args(meta=True)
    def call(self, meta, c):
        return Call(str(c[0]), tuple(x for x in c[1:] if x is not None), self.span(meta),
                    self.span(c[0]))


# --- syntax errors --------------------------------------------------------------------------------

_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "NUMBER": "a number", "_NL": "end of line",
    "EQUAL": "'='", "COLON": "':'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "__ANON_0": "'@'", "AT": "'@'", "$END": "end of file",
}


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: str, filename: str) -> ParseError:
    line, col = max(err.line, 1), max(err.column, 1)
    lines = source_lines(source)  # split as lark counts lines, so the caret lands where it says
    text = lines[line - 1] if line <= len(lines) else ""
    width = 1
    kind = None
    if isinstance(err, lark.exceptions.UnexpectedToken) and err.token.type != "$END":
        kind = err.token.type
        got = repr(str(err.token)) if kind != "_NL" else "end of line"
        width = max(len(source_lines(str(err.token))[0]) if str(err.token).strip() else 1, 1)
    elif isinstance(err, lark.exceptions.UnexpectedCharacters):
        kind = "CHAR"
        got = repr(text[col - 1]) if col <= len(text) else "end of line"
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
    hint = _hint(text[: col - 1], got, kind, set(allowed))
    if hint:
        hint = hint[0].upper() + hint[1:]
        help_ = f"{help_}. {hint}" if help_ else hint
    return ParseError(Diagnostic(msg, span, help_))


def _hint(before: str, got: str, kind: str | None, allowed: set[str]) -> str | None:
    """What to do about a common mistake, judged from the line up to the error and what the
    parser would have accepted there."""
    words = before.split()
    first = words[0] if words else ""
    if first in ("input", "param") and ":" in before and "[" in before.rsplit(":", 1)[1] \
            and "]" not in before.rsplit("[", 1)[1]:
        return ("a shape lists declared dims by name, without arithmetic: declare the size "
                "first, e.g. `dim m = 4 * n`, then write `[m, n]`")
    if first == "dim" and "=" in before:
        return ("a dim is a positive whole number or one other dim times or divided by a whole "
                "number: `dim m = 64`, `dim m = 4 * n`, `dim m = n / 2` (not n * n, a sum or a "
                "fraction like 0.5 * n, which the engine does not model)")
    if first == "width" and "=" in before:
        return "the width is declared with its base value, a positive whole number: `width n = 256`"
    if first == "width" and kind == "_NL":
        return "give the width its base value (where hyperparameters are tuned): `width n = 256`"
    if got == "'*'" and before.rstrip().endswith("*") or got == "'^'":
        return "there is no power operator: write a product, `x * x`"
    if got == "'.'":
        return "the only attribute is the transpose of a matrix param, written `W.T`"
    if kind in ("NAME", "INT", "NUMBER", "LPAR") and allowed & {"PLUS", "STAR", "__ANON_0"}:
        return ("two values stand side by side: put an operator between them, `W @ x` for a "
                "matmul, `a * b` for a product")
    if kind == "_NL" and "=" in before and allowed & {"NAME", "NUMBER"}:
        return "the expression ends early: complete it, or remove the trailing operator"
    return None


def syntax(source: str, filename: str) -> lark.Tree:
    try:
        return _parser().parse(source if source.endswith("\n") else source + "\n")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source, filename) from None


def magnitude(x: Fraction) -> str:
    """A number too large or small for a float, as a power of ten, from the logs of its integer
    parts (math.log10 takes any int): never its decimal digits, which past 4,300 of them str()
    refuses (sys.set_int_max_str_digits)."""
    exponent = math.floor(math.log10(abs(x.numerator)) - math.log10(x.denominator))
    return f"{'-' if x < 0 else ''}1e{exponent}"
