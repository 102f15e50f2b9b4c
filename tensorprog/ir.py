"""The Tensor Program IR: a closed vocabulary of frozen dataclasses.

A program has one width ``n`` (the dimension that goes to infinity), dims that are either finite or
a fixed multiple of ``n``, inputs (vectors), params (vectors or matrices) and a straight-line body
of instructions, each defining one new value:

==========  ==================  ===========================================================
IR class    surface syntax      finite-width meaning
==========  ==================  ===========================================================
MatMul      ``y = W @ x``       ``y_i = sum_j W_ij x_j`` (W is a matrix param)
LinComb     ``y = 2*u - v + b`` ``y = sum_k c_k v_k`` (vectors or vector params, rational c_k)
Nonlin      ``y = relu(h)``     ``y_i = phi(h_i)``; ``u * v`` is the Nonlin ``mul``
Dot         ``s = dot(u, v)``   ``s = sum_i u_i v_i``, a scalar (an inner product over a dim)
==========  ==================  ===========================================================

Each instruction carries its source span (excluded from equality, so a program printed with
:func:`to_text` and parsed again compares equal). This module imports nothing else from the package
but ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

from .errors import Collector, SemanticError, Span

#: Elementwise functions of one argument. ``mul`` (the product of two vectors) is the other Nonlin.
NONLINEARITIES = ("relu", "gelu", "tanh", "sigmoid", "silu", "identity")
MUL = "mul"


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Width:
    """The width ``n``; ``base`` is the width at which hyperparameters are tuned."""

    name: str
    base: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Dim:
    """A named dim: finite (``size``) or a multiple ``mult`` of the width (infinite)."""

    name: str
    size: int | None = None
    mult: Fraction | None = None
    span: Span | None = _span()

    @property
    def infinite(self) -> bool:
        return self.mult is not None

    def size_at(self, width: int) -> int:
        return int(self.mult * width) if self.mult is not None else int(self.size)

    def key(self) -> tuple:
        """What makes two dims the same dim: their size rule, not their name."""
        return ("n", self.mult) if self.mult is not None else ("fin", self.size)

    def expr(self, width_name: str) -> str:
        if self.mult is None:
            return str(self.size)
        if self.mult == 1:
            return width_name
        if self.mult.denominator == 1:
            return f"{self.mult.numerator} * {width_name}"
        if self.mult.numerator == 1:
            return f"{width_name} / {self.mult.denominator}"
        raise ValueError(f"dim {self.name}: multiple {self.mult} has no surface form")


@dataclass(frozen=True)
class Input:
    name: str
    dim: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Param:
    """A trained tensor: a vector ``[d]`` (bias, gain, readout vector) or a matrix ``[out, in]``."""

    name: str
    shape: tuple[str, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class MatMul:
    """``out = weight @ arg``: contracts the weight's last axis (its fan-in) with a vector.

    Scaling (TP4 §3): at init the sum over an infinite fan-in has n iid terms (CLT, +1/2); after
    training the update is built from the vectors it meets, so the sum is correlated (LLN, +1).
    """

    out: str
    weight: str
    arg: str
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.arg,)


@dataclass(frozen=True)
class LinComb:
    """``out = sum_k coef_k * term_k`` over vectors of one dim; a vector param here is a bias.

    Scaling: the exponent of a sum is the max of its terms' exponents (no cancellation assumed).
    """

    out: str
    terms: tuple[tuple[Fraction, str], ...]
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.terms)


@dataclass(frozen=True)
class Nonlin:
    """``out = fn(args)`` coordinatewise: a nonlinearity of one vector, or ``mul`` of two.

    Scaling: phi of a Theta(1) vector is Theta(1) and phi' is Theta(1), so changes pass through;
    a product adds its factors' exponents (a vector param in a product is a gain).
    """

    out: str
    fn: str
    args: tuple[str, ...]
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return self.args


@dataclass(frozen=True)
class Dot:
    """``out = dot(left, right) = sum_i left_i right_i``: a scalar.

    Scaling: independent, centred vectors give a CLT sum (+1/2 over an infinite dim); correlated
    ones, and every change after training, give an LLN sum (+1).
    """

    out: str
    left: str
    right: str
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.left, self.right)


Instruction = MatMul | LinComb | Nonlin | Dot
INSTRUCTIONS: tuple[type, ...] = (MatMul, LinComb, Nonlin, Dot)


@dataclass(frozen=True)
class Program:
    width: Width
    dims: tuple[Dim, ...]
    inputs: tuple[Input, ...]
    params: tuple[Param, ...]
    body: tuple[Instruction, ...]
    outputs: tuple[str, ...]
    output_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)
    name: str = field(default="program", compare=False)

    # --- lookups (computed once; the dataclass stays immutable) -------------------------------
    @cached_property
    def dim_table(self) -> dict[str, Dim]:
        table = {self.width.name: Dim(self.width.name, mult=Fraction(1), span=self.width.span)}
        table.update({d.name: d for d in self.dims})
        return table

    @cached_property
    def param_table(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    @cached_property
    def producer(self) -> dict[str, Instruction]:
        return {ins.out: ins for ins in self.body}

    @cached_property
    def value_dims(self) -> dict[str, str | None]:
        """The dim of every vector (inputs, vector params, instruction outputs); None: a scalar."""
        dims: dict[str, str | None] = {i.name: i.dim for i in self.inputs}
        dims.update({p.name: p.shape[0] for p in self.params if len(p.shape) == 1})
        for ins in self.body:
            if isinstance(ins, MatMul):
                dims[ins.out] = self.param_table[ins.weight].shape[0]
            elif isinstance(ins, Dot):
                dims[ins.out] = None
            else:
                dims[ins.out] = dims[ins.operands[0]]
        return dims

    def dim(self, name: str | None) -> Dim | None:
        return None if name is None else self.dim_table[name]

    def is_infinite(self, value: str) -> bool:
        d = self.value_dims[value]
        return d is not None and self.dim_table[d].infinite

    @cached_property
    def _uses(self) -> dict[str, list[Instruction]]:
        table: dict[str, list[Instruction]] = {}
        for ins in self.body:
            for name in dict.fromkeys(_mentions(ins)):
                table.setdefault(name, []).append(ins)
        return table

    def uses(self, name: str) -> list[Instruction]:
        """The instructions that read a value or apply a param, in program order."""
        return self._uses.get(name, [])


def _mentions(ins: Instruction) -> tuple[str, ...]:
    return ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ())


# --- text form ----------------------------------------------------------------------------------


def _coef(c: Fraction) -> str:
    return str(c.numerator) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


def render_instruction(ins: Instruction) -> str:
    """One instruction as one line of the surface language."""
    if isinstance(ins, MatMul):
        rhs = f"{ins.weight} @ {ins.arg}"
    elif isinstance(ins, Dot):
        rhs = f"dot({ins.left}, {ins.right})"
    elif isinstance(ins, Nonlin):
        rhs = " * ".join(ins.args) if ins.fn == MUL else f"{ins.fn}({', '.join(ins.args)})"
    else:
        parts = []
        for k, (c, name) in enumerate(ins.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            text = name if mag == 1 else f"{_coef(mag)} * {name}"
            if k == 0:
                parts.append(("-" if c < 0 else "") + text)
            else:
                parts.append(f"{sign} {text}")
        rhs = " ".join(parts)
    return f"{ins.out} = {rhs}"


def to_text(program: Program) -> str:
    """The IR as a program in the surface language, one instruction a line; parses back equal."""
    w = program.width
    lines = [f"width {w.name} = {w.base}"]
    lines += [f"dim {d.name} = {d.expr(w.name)}" for d in program.dims]
    lines += [f"input {i.name} : [{i.dim}]" for i in program.inputs]
    lines += [f"param {p.name} : [{', '.join(p.shape)}]" for p in program.params]
    lines += [render_instruction(ins) for ins in program.body]
    lines += [f"output {o}" for o in program.outputs]
    return "\n".join(lines) + "\n"


# --- verifier -----------------------------------------------------------------------------------


def verify(program: Program) -> Program:
    """Check the IR's invariants: names defined once and before use, shapes, outputs defined.

    The parser already reports these with help for the user; the verifier guards programs built
    through the API and every later pass. Returns the program so passes can chain it.
    """
    errors = Collector()
    dims = program.dim_table
    defined: dict[str, str | None] = {}

    def define(name: str, dim: str | None, span: Span | None) -> None:
        if name in defined or name in dims:
            errors.error(f"'{name}' is defined twice", span)
        defined[name] = dim

    for d in program.dims:
        if d.infinite == (d.size is not None):
            errors.error(f"dim {d.name} must be either finite or a multiple of the width", d.span)
    for i in program.inputs:
        if i.dim not in dims:
            errors.error(f"undeclared dim '{i.dim}'", i.span)
        define(i.name, i.dim, i.span)
    matrices = set()
    for p in program.params:
        for d in p.shape:
            if d not in dims:
                errors.error(f"undeclared dim '{d}'", p.span)
        if len(p.shape) not in (1, 2):
            errors.error(f"param {p.name} must be a vector or a matrix", p.span)
        if len(p.shape) == 2:
            matrices.add(p.name)
            if p.name in defined or p.name in dims:
                errors.error(f"'{p.name}' is defined twice", p.span)
            defined[p.name] = "<matrix>"
        else:
            define(p.name, p.shape[0], p.span)
    if errors.errors:
        errors.raise_if_any(SemanticError)

    def key(dim: str | None):
        return None if dim is None else dims[dim].key()

    for ins in program.body:
        for name in ins.operands:
            if name not in defined or name in matrices:
                errors.error(f"'{name}' is not a vector defined before this instruction", ins.span)
        if errors.errors:
            break
        ops = [defined[o] for o in ins.operands]
        if isinstance(ins, MatMul):
            shape = program.param_table.get(ins.weight).shape if ins.weight in matrices else None
            if shape is None:
                errors.error(f"'{ins.weight}' is not a matrix param", ins.span)
                break
            if key(ops[0]) != key(shape[1]):
                errors.error(f"{ins.weight} @ {ins.arg}: fan-in {shape[1]} does not match {ops[0]}",
                             ins.span)
            out = shape[0]
        elif isinstance(ins, Dot):
            if ops[0] is None or key(ops[0]) != key(ops[1]):
                errors.error("dot needs two vectors of the same dim", ins.span)
            out = None
        else:
            if isinstance(ins, Nonlin):
                arity = 2 if ins.fn == MUL else 1
                if ins.fn != MUL and ins.fn not in NONLINEARITIES or len(ins.args) != arity:
                    errors.error(f"unknown function {ins.fn}/{len(ins.args)}", ins.span)
            if len({key(o) for o in ops}) != 1:
                errors.error("elementwise operands must have the same dim", ins.span)
            out = ops[0]
        define(ins.out, out, ins.span)
    spans = tuple(program.output_spans) + (None,) * len(program.outputs)  # spans are optional
    for name, span in zip(program.outputs, spans[: len(program.outputs)], strict=True):
        if name not in defined or name in matrices:
            errors.error(f"output '{name}' is not a defined vector", span)
    if not program.outputs:
        errors.error("the program has no output")
    errors.raise_if_any(SemanticError)
    return program
