"""The language's syntax tree: statements holding small expression trees, each node with its
source span. :mod:`tensorprog.lang.syntax` builds them from lark's parse tree;
:mod:`tensorprog.lang.lower` turns them into the IR."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..errors import Span


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
class Repeat:
    """``repeat count block(arg)``: count is the depth's name (str) or a whole number (int)."""

    count: str | int
    count_span: Span
    block: str
    block_span: Span
    arg: object
    span: Span


@dataclass(frozen=True)
class Stmt:
    # width, depth, dim, input, param, scale, assign, output_assign, output_mark, block (value:
    # the argument's name, its span and the inner statements), return (value: the expression)
    kind: str
    name: str
    value: object
    span: Span
    name_span: Span
