"""Errors and warnings, each carrying the source span it is about.

Every user-facing failure is a :class:`TensorProgError`. It renders like a compiler message::

    mlp.tp:7:10: error: undefined name 'x2'
        h2 = W2 @ x2 + b2
                  ^^
    help: define 'x2' before this line, or check the spelling (did you mean 'x1'?)

One subclass per pipeline stage, so callers can tell where a program was rejected. This module
imports nothing else from the package.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field


def source_lines(source: str) -> list[str]:
    """The lines of a program as the lexer counts them: split at '\\n' only.

    ``str.splitlines`` also splits at '\\r', '\\v', '\\f', U+0085, U+2028 and U+2029, which the
    grammar treats as ordinary characters (inside a comment, or as whitespace), so its line numbers
    would disagree with the positions lark reports. A '\\r' before the '\\n' (CRLF) is dropped.
    """
    lines = source.split("\n")
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()  # the empty "line" after the final newline
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _shown(ch: str) -> str:
    """A character as it is printed in a rendered source line: controls and the Unicode line
    and paragraph separators would move the terminal's cursor, so they print as a space."""
    if ch == "\t" or unicodedata.category(ch) not in ("Cc", "Zl", "Zp"):
        return ch
    return " "


def _pad(ch: str) -> str:
    """What goes under a printed character to keep the caret aligned with it."""
    if ch == "\t":
        return "\t"
    if unicodedata.combining(ch):
        return ""
    return "  " if unicodedata.east_asian_width(ch) in ("W", "F") else " "


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int
    source: str = field(default="", repr=False, compare=False)
    filename: str = field(default="<program>", compare=False)

    def _raw_line(self) -> str:
        lines = source_lines(self.source)
        return lines[self.line - 1] if 0 < self.line <= len(lines) else ""

    def source_line(self) -> str:
        """The span's first line, printable (see :func:`_shown`); columns are unchanged."""
        return "".join(map(_shown, self._raw_line()))

    def caret(self) -> str:
        line = self._raw_line()
        start = max(self.column - 1, 0)
        end = self.end_column - 1 if self.end_line == self.line else start + 1
        pad = "".join(_pad(ch) for ch in line[:start]) + " " * max(start - len(line), 0)
        under = line[start:end]
        width = sum(max(len(_pad(ch)), 1) for ch in under) + max(end - start - len(under), 0)
        return pad + "^" * max(width, 1)

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    help: str | None = None
    severity: str = "error"

    def render(self) -> str:
        where = f"{self.span}: " if self.span is not None else ""
        out = [f"{where}{self.severity}: {self.message}"]
        if self.span is not None and self.span.source_line():
            out.append("    " + self.span.source_line())
            out.append("    " + self.span.caret())
        if self.help:
            out.append(f"help: {self.help}")
        return "\n".join(out)


class TensorProgError(Exception):
    """Base class of every error the user can cause. ``str()`` gives the rendered message."""

    stage = "tensorprog"

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, span: Span | None = None,
                 help: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic(diagnostics, span, help)
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(d.render() for d in self.diagnostics)

    @property
    def span(self) -> Span | None:
        return self.diagnostics[0].span if self.diagnostics else None


class ParseError(TensorProgError):
    """The text is not a well-formed program (syntax)."""

    stage = "parse"


class SemanticError(TensorProgError):
    """Names, dims and shapes do not fit together."""

    stage = "resolve"


class EngineError(TensorProgError):
    """The scaling engine cannot derive or classify this program or parametrization."""

    stage = "engine"


class CodegenError(TensorProgError):
    """The program has no faithful PyTorch module (e.g. a constant no float can hold)."""

    stage = "codegen"


class TraceError(TensorProgError):
    """A PyTorch model cannot be turned into a Tensor Program (an op outside the language, a dim
    that does not scale with the width); the span points into the user's Python source."""

    stage = "trace"


class UsageError(TensorProgError):
    """A command-line or API argument is invalid (e.g. a malformed ``--abc`` file)."""

    stage = "usage"


class TensorProgWarning(UserWarning):
    """A program that is accepted but probably not what was meant (e.g. an unused param)."""

    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic
        super().__init__(diagnostic.render())


class Collector:
    """Gathers a pass's errors so that it can report them all at once."""

    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []

    def error(self, message: str, span: Span | None = None, help: str | None = None) -> None:
        self.errors.append(Diagnostic(message, span, help))

    def raise_if_any(self, cls: type[TensorProgError]) -> None:
        if self.errors:
            raise cls(self.errors)
