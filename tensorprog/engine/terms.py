"""The algebra of the scaling rules (rules.py): a term is the exponent of one piece of a sum, a
number plus slots (rules.py's docstring says which), and ``terms`` multiplies sums of them out.
Also what a rule may read of a param: its fans, as its uses show them, and the role they make."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import product
from typing import Protocol

from ..ir.program import ONE_HOT_KINDS, Dot, MatMul, Program, Stream
from .exponents import NEG_INF, ZERO, Exp, add
from .optimizers import ParamShape

Slot = tuple[str, str]  # ("S" | "U" | "V" | "F", param name)


@dataclass(frozen=True)
class Mono:
    """A number plus slots: one alternative for the size of an operand."""

    const: Exp
    slots: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Term:
    """One piece of a sum: its exponent (``const`` + slots) and why it has that size."""

    const: Exp
    slots: tuple[Slot, ...]
    what: str  # e.g. "ΔW2·x1"
    why: str  # e.g. "n correlated terms (LLN)"
    kind: str  # "init" | "cross" (p_0 meets a change) | "update" (Δp) | "flow" (no param here)
    clamp: Exp | None = None  # a bounded nonlinearity caps the size at n^clamp

    def params(self, slot_kind: str) -> list[str]:
        return [p for k, p in self.slots if k == slot_kind]


class Sizes(Protocol):
    """What a rule may ask about operands (the analysis provides it)."""

    program: Program
    width_limit: bool  # the width pass (width dims infinite), or the depth pass (only L is)

    def init(self, name: str) -> list[Mono]: ...
    def change(self, name: str) -> list[Mono]: ...
    def train(self, name: str) -> list[Mono]: ...
    def grad(self, name: str) -> Exp: ...
    def first_order_train(self, name: str) -> list[Mono]: ...
    def first_order_change(self, name: str) -> list[Mono]: ...
    def centred_apart(self, u: str, v: str) -> bool: ...
    def built_with(self, value: str, weight: str, transposed: bool) -> bool: ...
    def infinite(self, dim: str | None) -> bool: ...
    def branches(self, stream: Stream) -> list[str]: ...
    def channel(self, which: str) -> AbstractContextManager: ...


def terms(what: str, why: str, kind: str, *parts: list[Mono], const: Exp = ZERO,
          clamp: Exp | None = None) -> list[Term]:
    """All terms of a product of sums: one Term per choice of alternative in each part."""
    out = []
    for choice in product(*parts):
        c = add(const, *(m.const for m in choice))
        slots = tuple(s for m in choice for s in m.slots)
        if c is NEG_INF:
            continue  # an exact zero contributes nothing
        has_update = any(k == "U" for k, _ in slots)
        has_init = any(k == "S" for k, _ in slots)
        k = kind
        if kind == "auto":
            k = "update" if has_update else ("cross" if has_init else "flow")
        out.append(Term(c, slots, what, why, k, clamp))
    return out


def infinite_dim(program: Program, dim: str | None) -> bool:
    return dim is not None and program.dim_table[dim].infinite


def fan_dims(program: Program, param: str) -> tuple[str | None, str | None]:
    """A param's (fan_in, fan_out) dims as its uses show them; None means 1.

    A matrix [out, in] is used with @ (a tied matrix is also used transposed; its declared shape
    decides); one used only transposed (W.T @ x) sums over its first dim, so its fans are swapped.
    A vector is a bias or gain (fed the constant 1: fan_in 1) unless it is contracted by ``dot``
    (then it is a readout vector: fan_in its dim, fan_out 1). A scale has no fans.
    """
    shape = program.param_table[param].shape
    if not shape:
        return None, None
    if len(shape) >= 2:
        uses = [u for u in program.uses(param) if isinstance(u, MatMul)]
        if uses and all(u.transposed for u in uses):
            return shape[0], shape[1]
        return shape[1], shape[0]
    if any(isinstance(i, Dot) for i in program.uses(param)):
        return shape[0], None
    return None, shape[0]


def fan_in_infinite(program: Program, param: str) -> bool:
    fin, _ = fan_dims(program, param)
    return infinite_dim(program, fin)


def role(program: Program, param: str) -> str:
    """input / hidden / output / finite, from which fans are infinite (never declared)."""
    if program.param_table[param].is_scale:
        return "scale"
    fin, fout = (infinite_dim(program, d) for d in fan_dims(program, param))
    return {(False, True): "input", (True, True): "hidden", (True, False): "output",
            (False, False): "finite"}[(fin, fout)]


def param_shape(program: Program, param: str, infinite) -> ParamShape:
    """What an optimizer's rule may read of a param besides its gradient: its role, whether it
    is a matrix an orthogonalising optimizer can take (2-D, used only as a matmul weight, never
    on a token or position lookup, which is an embedding), and which fans ``infinite`` (the
    pass's own test: the width, or the depth) calls infinite."""
    decl = program.param_table[param]
    lookups = {i.name for i in program.inputs if i.kind in ONE_HOT_KINDS}
    uses = program.uses(param)
    matrix = len(decl.shape) == 2 and bool(uses) and all(
        isinstance(u, MatMul) and u.weight == param and u.arg not in lookups for u in uses)
    fin, fout = fan_dims(program, param)
    return ParamShape(role(program, param), matrix, infinite(fin), infinite(fout))
