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

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int
    source: str = field(default="", repr=False, compare=False)
    filename: str = field(default="<program>", compare=False)

    def source_line(self) -> str:
        lines = self.source.splitlines()
        return lines[self.line - 1] if 0 < self.line <= len(lines) else ""

    def caret(self) -> str:
        width = self.end_column - self.column if self.end_line == self.line else 1
        return " " * (self.column - 1) + "^" * max(width, 1)

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
