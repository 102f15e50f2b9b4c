"""The Tensor Program IR: a closed vocabulary of frozen dataclasses.

A program has one width ``n`` (the dimension that goes to infinity), dims that are either finite or
a fixed multiple of ``n``, inputs (vectors), params (vectors or matrices) and a straight-line body
of instructions, each defining one new value:

==========  ====================  =========================================================
IR class    surface syntax        finite-width meaning
==========  ====================  =========================================================
MatMul      ``y = W @ x``         ``y_i = sum_j W_ij x_j`` (W a matrix param; ``W.T @ x`` uses
                                  its transpose, e.g. a tied unembedding)
LinComb     ``y = 2*u - v + b``   ``y = sum_k c_k v_k`` (vectors or vector params, rational c_k)
Nonlin      ``y = relu(h)``       ``y_i = phi(h_i)``; ``u * v`` is the Nonlin ``mul``;
                                  layernorm/rmsnorm normalise over the vector's dim,
                                  softmax/causal_softmax over the key tokens (softmax
                                  also over a finite dim)
Dot         ``s = dot(u, v)``     ``s = sum_i u_i v_i``, a scalar; ``dot(q, k, dh)``: per head
                                  of dim dh and per (query, key) token pair (attention logits)
Mix         ``o = mix(p, v)``     ``o_t = sum_s p_ts v_s`` per head: attention's token mixing
Stream      ``repeat L blk(h0)``  a block's input: ``h0`` at its first repetition, the
                                  previous repetition's return value afterwards
==========  ====================  =========================================================

A ``depth`` and blocks describe a stack of repeated blocks without unrolling it: the block's
body is inlined once, as one generic repetition whose names are qualified by the block's
(``res.u``, params ``res.W1``), after a :class:`Stream` that feeds it and before an identity that
names the last repetition's return value. :class:`Block` records which values and params belong
to the block. The Stream's back edge (the return value, computed after it) is the one place where
a value is read before the instruction that defines it.

A program may carry a finite sequence axis (token and position inputs): every vector then has one
value per token, and only ``dot(q, k, dh)`` and ``mix`` combine tokens. A ``scale`` is a param
with no axes that is never trained: a width-dependent constant multiplier the engine derives
(attention's 1/d, a tied unembedding's 1/n).

Each instruction carries its source span (excluded from equality, so a program printed with
:func:`to_text` and parsed again compares equal). This module imports nothing else from the package
but ``errors``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

from ..errors import Collector, SemanticError, Span, UsageError

#: Functions of one argument. ``mul`` (the product of two vectors) is the other Nonlin. The norms
#: act over the vector's dim and the softmaxes over the key-token axis of attention logits (softmax
#: also over a finite dim); the lowering refuses the other uses, which the rules do not model.
NONLINEARITIES = ("relu", "gelu", "tanh", "sigmoid", "silu", "identity", "layernorm", "rmsnorm",
                  "softmax", "causal_softmax", "avgpool", "global_pool")
INPUT_KINDS = ("vector", "tokens", "positions", "image")
#: functions that change an image's spatial size: 2x2 average pooling, and the global average
POOLS = {"avgpool": 2, "global_pool": None}
MUL = "mul"
#: The largest size (a base width, a dim at the base width) and integer factor a program may
#: hold: 2**53, the largest integer a float represents exactly (later stages compute in floats).
MAX_SIZE = 2**53
#: The magnitudes a nonzero number (a coefficient, an init, a scale) may have: a float's normal
#: range, so that converting it neither overflows to inf nor underflows towards 0.
FLOAT_MIN, FLOAT_MAX = sys.float_info.min, sys.float_info.max


def in_float_range(x: Fraction) -> bool:
    return x == 0 or FLOAT_MIN <= abs(x) <= FLOAT_MAX


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Width:
    """The width ``n``; ``base`` is the width at which hyperparameters are tuned."""

    name: str
    base: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Depth:
    """The depth ``L``: how many times ``repeat L`` applies a block; ``base`` is the depth at
    which hyperparameters are tuned. Like the width, it may go to infinity."""

    name: str
    base: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Block:
    """A block as applied in the program, inlined once as one generic repetition.

    ``arg`` is its argument (the value a :class:`Stream` defines), ``ret`` its return value,
    ``result`` the identity after the body that names the last repetition's return value,
    ``params`` its own params (fresh in every repetition) and ``values`` the outputs of the body
    instructions between the Stream and the result, in program order. All but ``name`` are
    qualified names (``res.W1``), except ``ret`` when the block returns an outer value and
    ``result``, a name of the enclosing program."""

    name: str
    arg: str
    ret: str
    result: str
    params: tuple[str, ...]
    values: tuple[str, ...]
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
    """An input: a vector of dim ``dim`` (``vector``), token ids over a vocabulary ``dim`` at each
    of ``seq`` positions (``tokens``, a one-hot vector per token), the positions 0..seq-1
    themselves (``positions``, one-hot over ``dim`` = ``seq``; not passed to forward), or an
    image with ``dim`` channels at every pixel of ``spatial`` (``image``)."""

    name: str
    dim: str
    span: Span | None = _span()
    kind: str = "vector"
    seq: str | None = None
    spatial: tuple[str, str] | None = None  # an image's finite height and width dims


@dataclass(frozen=True)
class Param:
    """A trained vector ``[d]`` (bias, gain, readout vector) or matrix ``[out, in]``, or a
    convolution kernel ``[out, in, kh, kw]`` (finite kh, kw); or, with no axes, a ``scale``: a
    constant multiplier ``base·(n/base_width)^-a``, never trained."""

    name: str
    shape: tuple[str, ...]
    span: Span | None = _span()
    base: Fraction | None = None  # a scale's value at the base width, or a vector's constant init

    @property
    def is_scale(self) -> bool:
        return not self.shape


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
    transposed: bool = False  # ``W.T @ x``: the fan-in is W's first axis

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
    over: str | None = None  # per head: the head dim summed over; heads = dim(left) / over

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Mix:
    """``out = mix(weights, values)``: per head, ``out_t = sum_s weights_ts values_s``.

    The token-mixing half of attention: a finite sum over tokens with Θ(1) weights, so exponents
    add as in a product (e(p) + e(v); changes from either side).
    """

    out: str
    weights: str
    values: str
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.weights, self.values)


@dataclass(frozen=True)
class Stream:
    """``out`` = the input of block ``block``: ``init`` at the first repetition, ``back`` (the
    block's return value, computed after this instruction) at every later one.

    ``count`` is the depth's name (``repeat L``), a whole number (``repeat 3``) or None (a block
    applied once, ``blk(h0)``, which has no back edge). The engine analyses this one generic
    repetition, never L copies.

    Scaling at any fixed depth: a sum of L residual branches has the size of one branch, so
    init(out) = max(init(init), init(back)), likewise for its change, and the gradient of ``out``
    flows to ``init`` and to ``back``. ``back`` is read before it is computed, so the passes
    iterate to a fixed point; a back edge whose size grows round after round compounds through
    the repetitions and is taken as unbounded. In the depth pass (only L infinite) the branches
    add over the repetitions instead: +1/2 at init (CLT), +1 for each repetition's own updates
    and +1/2 for the stream's change (Tensor Programs VI, arXiv 2310.02244; CompleteP).
    """

    out: str
    init: str
    back: str
    block: str
    count: str | int | None
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.init,)  # the back edge is read from the previous repetition

    @property
    def loops(self) -> bool:
        """Whether a later repetition reads the back edge (count other than None and 1)."""
        return self.count is not None and self.count != 1


Instruction = MatMul | LinComb | Nonlin | Dot | Mix | Stream
INSTRUCTIONS: tuple[type, ...] = (MatMul, LinComb, Nonlin, Dot, Mix, Stream)


def heads_dim_name(dim: str, over: str) -> str:
    """The name of the heads axis of ``dot(q, k, over)`` for q, k of dim ``dim``."""
    return f"{dim}/{over}"


def heads_dim(dims: dict[str, Dim], dim: str, over: str) -> Dim | None:
    """Heads = dim / over: finite when both are infinite (fixed head count) or both finite,
    infinite when only ``dim`` is (fixed head dim); None if over does not divide dim."""
    d, o = dims[dim], dims[over]
    name = heads_dim_name(dim, over)
    if d.infinite and o.infinite:
        ratio = d.mult / o.mult
        return Dim(name, size=int(ratio)) if ratio.denominator == 1 and ratio > 0 else None
    if d.infinite:
        return Dim(name, mult=d.mult / o.size)
    if o.infinite:
        return None
    return Dim(name, size=d.size // o.size) if d.size % o.size == 0 else None


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
    depth: Depth | None = None
    blocks: tuple[Block, ...] = ()

    # --- lookups (computed once; the dataclass stays immutable) -------------------------------
    @cached_property
    def depth_blocks(self) -> tuple[str, ...]:
        """The blocks repeated over the declared depth (``repeat L blk(...)``): their number of
        repetitions is the depth. Empty when the program declares no depth or repeats nothing
        over it."""
        if self.depth is None:
            return ()
        return tuple(s.block for s in self.streams if s.loops and s.count == self.depth.name)

    @property
    def repeats_over_depth(self) -> bool:
        """Whether the program has a depth pass: it repeats a block over its declared depth."""
        return bool(self.depth_blocks)

    @cached_property
    def dim_table(self) -> dict[str, Dim]:
        """Declared dims, the width, and the heads axis of every ``dot(q, k, dh)``."""
        table = {self.width.name: Dim(self.width.name, mult=Fraction(1), span=self.width.span)}
        table.update({d.name: d for d in self.dims})
        dims = self.value_dims
        for ins in self.body:
            if isinstance(ins, Dot) and ins.over is not None and dims.get(ins.left) in table:
                h = heads_dim(table, dims[ins.left], ins.over)
                if h is not None:
                    table[h.name] = h
        return table

    @cached_property
    def spatial(self) -> dict[str, tuple[int, int] | None]:
        """Height and width of every image-valued vector (None: no spatial axes)."""
        out: dict[str, tuple[int, int] | None] = {}
        for i in self.inputs:
            out[i.name] = (tuple(self.dim_table[d].size for d in i.spatial)
                           if i.spatial is not None else None)
        for p in self.params:
            out[p.name] = None
        for ins in self.body:
            sizes = next((out[o] for o in ins.operands if out.get(o) is not None), None)
            if isinstance(ins, Nonlin) and ins.fn in POOLS and sizes is not None:
                k = POOLS[ins.fn]
                sizes = None if k is None else (sizes[0] // k, sizes[1] // k)
            out[ins.out] = sizes
        return out

    def width_problem(self, width: int) -> str | None:
        """Why the program has no network at this width (a dim or head count that is not a
        whole number), or None."""
        for d in self.dim_table.values():
            if d.infinite and (d.mult * width).denominator != 1:
                return f"dim {d.name} = {d.mult} x {width} is not a whole number"
        for ins in self.body:
            if isinstance(ins, Dot) and ins.over is not None:
                total = self.dim_table[self.value_dims[ins.left]].size_at(width)
                head = self.dim_table[ins.over].size_at(width)
                if total % head:
                    return f"the head dim {ins.over} = {head} does not divide {total}"
        return None

    def check_widths(self, widths) -> None:
        """Raise a UsageError for the first width at which the program has no network."""
        for w in widths:
            problem = self.width_problem(w)
            if problem:
                raise UsageError(f"width {w}: {problem}", help="choose widths the dims divide")

    @cached_property
    def seq(self) -> str | None:
        """The sequence dim, if the program has token or position inputs."""
        return next((i.seq for i in self.inputs if i.seq is not None), None)

    @cached_property
    def param_table(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    @cached_property
    def producer(self) -> dict[str, Instruction]:
        return {ins.out: ins for ins in self.body}

    @cached_property
    def value_dims(self) -> dict[str, str | None]:
        """The dim of every vector (inputs, vector params, instruction outputs); None: a scalar
        (a scale, or a dot over the whole dim)."""
        dims: dict[str, str | None] = {i.name: i.dim for i in self.inputs}
        dims.update({p.name: (p.shape[0] if p.shape else None) for p in self.params
                     if len(p.shape) < 2})  # matrices and kernels are not values
        for ins in self.body:
            if isinstance(ins, MatMul):
                shape = self.param_table[ins.weight].shape
                dims[ins.out] = shape[1] if ins.transposed else shape[0]
            elif isinstance(ins, Dot):
                left = dims[ins.left]
                dims[ins.out] = None if ins.over is None else heads_dim_name(left, ins.over)
            elif isinstance(ins, Mix):
                dims[ins.out] = dims[ins.values]
            else:  # elementwise: a scalar factor (a scale) takes the other operand's dim
                dims[ins.out] = next((dims[o] for o in ins.operands if dims[o] is not None),
                                     None)
        return dims

    def dim(self, name: str | None) -> Dim | None:
        return None if name is None else self.dim_table[name]

    def is_infinite(self, value: str) -> bool:
        d = self.value_dims[value]
        return d is not None and self.dim_table[d].infinite

    @cached_property
    def streams(self) -> tuple[Stream, ...]:
        return tuple(ins for ins in self.body if isinstance(ins, Stream))

    @cached_property
    def block_table(self) -> dict[str, Block]:
        return {b.name: b for b in self.blocks}

    @cached_property
    def owner(self) -> dict[str, str]:
        """The block each block-owned param belongs to."""
        return {p: b.name for b in self.blocks for p in b.params}

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
    if isinstance(ins, Stream):
        return ins.operands + ((ins.back,) if ins.loops else ())
    return ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ())


# --- text form ----------------------------------------------------------------------------------


def _coef(c: Fraction) -> str:
    return str(c.numerator) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


def _count(count: str | int | None) -> str:
    return "" if count is None else f"repeat {count} "


def render_instruction(ins: Instruction, show=str) -> str:
    """One instruction as one line of the surface language; ``show`` maps a name to the text
    written for it (inside a block, a qualified name loses its block prefix)."""
    if isinstance(ins, MatMul):
        rhs = f"{show(ins.weight)}{'.T' if ins.transposed else ''} @ {show(ins.arg)}"
    elif isinstance(ins, Dot):
        over = f", {ins.over}" if ins.over is not None else ""
        rhs = f"dot({show(ins.left)}, {show(ins.right)}{over})"
    elif isinstance(ins, Mix):
        rhs = f"mix({show(ins.weights)}, {show(ins.values)})"
    elif isinstance(ins, Stream):  # in a program's text, the block call it starts
        rhs = f"{_count(ins.count)}{ins.block}({show(ins.init)})"
    elif isinstance(ins, Nonlin):
        args = [show(a) for a in ins.args]
        rhs = " * ".join(args) if ins.fn == MUL else f"{ins.fn}({', '.join(args)})"
    else:
        parts = []
        for k, (c, name) in enumerate(ins.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            text = show(name) if mag == 1 else f"{_coef(mag)} * {show(name)}"
            if k == 0:
                parts.append(("-" if c < 0 else "") + text)
            else:
                parts.append(f"{sign} {text}")
        rhs = " ".join(parts)
    return f"{show(ins.out)} = {rhs}"


def render_input(i: Input) -> str:
    if i.kind == "image":
        return f"input {i.name} : image[{i.dim}, {i.spatial[0]}, {i.spatial[1]}]"
    if i.kind == "tokens":
        return f"input {i.name} : tokens[{i.seq}, {i.dim}]"
    if i.kind == "positions":
        return f"input {i.name} : positions[{i.seq}]"
    return f"input {i.name} : [{i.dim}]"


def render_param(p: Param, show=str) -> str:
    value = f" = {float(p.base)!r}" if p.base is not None else ""
    if p.is_scale:
        return f"scale {show(p.name)}{value}"
    return f"param {show(p.name)} : [{', '.join(p.shape)}]{value}"


def _local(block: str):
    """How names read inside a block's text: its own names without the block prefix."""
    prefix = f"{block}."
    return lambda name: name.removeprefix(prefix)


def to_text(program: Program) -> str:
    """The IR as a program in the surface language, one instruction a line; parses back equal.

    A block is written where it is applied: its definition (params, body, ``return``), then
    ``result = repeat count block(init)``, which stands for the Stream, the body and the identity
    naming the result."""
    w = program.width
    lines = [f"width {w.name} = {w.base}"]
    if program.depth is not None:
        lines.append(f"depth {program.depth.name} = {program.depth.base}")
    lines += [f"dim {d.name} = {d.expr(w.name)}" for d in program.dims]
    lines += [render_input(i) for i in program.inputs]
    owned = program.owner
    lines += [render_param(p) for p in program.params if p.name not in owned]
    skip: set[str] = set()
    for ins in program.body:
        if ins.out in skip:
            continue
        if not isinstance(ins, Stream):
            lines.append(render_instruction(ins))
            continue
        b = program.block_table[ins.block]
        show = _local(b.name)
        lines.append(f"block {b.name}({show(b.arg)}) {{")
        lines += ["    " + render_param(program.param_table[p], show) for p in b.params]
        lines += ["    " + render_instruction(program.producer[v], show) for v in b.values]
        lines += [f"    return {show(b.ret)}", "}"]
        lines.append(f"{b.result} = {_count(ins.count)}{b.name}({ins.init})")
        skip.update(b.values + (b.result,))
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
        if i.dim not in dims or (i.seq is not None and i.seq not in dims):
            errors.error(f"undeclared dim '{i.dim}'", i.span)
        if i.kind not in INPUT_KINDS or (i.kind in ("vector", "image")) != (i.seq is None):
            errors.error(f"input {i.name}: a {i.kind} input needs a sequence dim exactly when it "
                         "is tokens or positions", i.span)
        elif i.seq is not None and dims.get(i.seq) is not None and dims[i.seq].infinite:
            errors.error(f"input {i.name}: the sequence dim {i.seq} must be finite", i.span)
        define(i.name, i.dim, i.span)
    if len({i.seq for i in program.inputs if i.seq is not None}) > 1:
        errors.error("all token and position inputs must share one sequence dim")
    matrices = set()
    for p in program.params:
        for d in p.shape:
            if d not in dims:
                errors.error(f"undeclared dim '{d}'", p.span)
        if len(p.shape) not in (0, 1, 2, 4):
            errors.error(f"param {p.name} must be a scale, a vector, a matrix or a kernel", p.span)
        if len(p.shape) == 4 and any(d in dims and dims[d].infinite for d in p.shape[2:]):
            errors.error(f"kernel {p.name}: its spatial size must be finite", p.span)
        if len(p.shape) >= 2:
            matrices.add(p.name)
            if p.name in defined or p.name in dims:
                errors.error(f"'{p.name}' is defined twice", p.span)
            defined[p.name] = "<matrix>"
        else:
            define(p.name, p.shape[0] if p.shape else None, p.span)
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
        if isinstance(ins, Stream):
            out = ops[0]
            if out is None:
                errors.error(f"stream {ins.out}: a block's argument must be a vector", ins.span)
        elif isinstance(ins, MatMul):
            shape = program.param_table.get(ins.weight).shape if ins.weight in matrices else None
            if shape is None:
                errors.error(f"'{ins.weight}' is not a matrix param", ins.span)
                break
            fan_out, fan_in = (shape[1], shape[0]) if ins.transposed else shape[:2]
            if len(shape) == 4 and program.spatial.get(ins.arg) is None:
                errors.error(f"{ins.weight} is a convolution kernel, but {ins.arg} is not an image",
                             ins.span)
            if key(ops[0]) != key(fan_in):
                errors.error(f"{ins.weight} @ {ins.arg}: fan-in {fan_in} does not match {ops[0]}",
                             ins.span)
            out = fan_out
        elif isinstance(ins, Dot):
            if ops[0] is None or key(ops[0]) != key(ops[1]):
                errors.error("dot needs two vectors of the same dim", ins.span)
            out = None
            if ins.over is not None:
                out = heads_dim_name(ops[0], ins.over)
                if ins.over not in dims or out not in dims:
                    errors.error(f"dot over {ins.over}: it must be a dim that divides "
                                 f"{ops[0]}", ins.span)
                if program.seq is None:
                    errors.error("a per-head dot needs a sequence (token or position inputs)",
                                 ins.span)
        elif isinstance(ins, Mix):
            heads = ops[0]
            if heads is None or "/" not in heads or heads.split("/")[0] not in dims \
                    or key(heads.split("/")[0]) != key(ops[1]):
                errors.error("mix(p, v) needs attention weights p from dot(q, k, dh) of the "
                             "same dim as v", ins.span)
            out = ops[1]
        else:
            if isinstance(ins, Nonlin):
                arity = 2 if ins.fn == MUL else 1
                if ins.fn != MUL and ins.fn not in NONLINEARITIES or len(ins.args) != arity:
                    errors.error(f"unknown function {ins.fn}/{len(ins.args)}", ins.span)
            vectors = [o for o in ops if o is not None]
            scalar_factor = isinstance(ins, Nonlin) and ins.fn == MUL and len(vectors) < len(ops)
            if len({key(o) for o in ops}) != 1 and not scalar_factor:
                errors.error("elementwise operands must have the same dim", ins.span)
            out = vectors[0] if vectors else None
        define(ins.out, out, ins.span)
    _verify_blocks(program, defined, key, errors)
    spans = tuple(program.output_spans) + (None,) * len(program.outputs)  # spans are optional
    for name, span in zip(program.outputs, spans[: len(program.outputs)], strict=True):
        if name not in defined or name in matrices:
            errors.error(f"output '{name}' is not a defined vector", span)
    if not program.outputs:
        errors.error("the program has no output")
    errors.raise_if_any(SemanticError)
    return program


def _verify_blocks(program: Program, defined: dict, key, errors: Collector) -> None:
    """Each block: one Stream, its values right after it, the back edge its return value, of
    the argument's dim, and the result an identity of it right after the body."""
    if len({b.name for b in program.blocks}) != len(program.blocks):
        errors.error("a block is recorded twice")
    streams = {s.block: s for s in program.streams}
    if set(streams) != {b.name for b in program.blocks} or len(streams) != len(program.streams):
        errors.error("every block needs exactly one Stream, and every Stream a block")
        return
    index = {ins.out: k for k, ins in enumerate(program.body)}
    params = set(program.param_table)
    for b in program.blocks:
        s = streams[b.name]
        if isinstance(s.count, str) and (program.depth is None or s.count != program.depth.name):
            errors.error(f"block {b.name} repeats over '{s.count}', which is not the depth", s.span)
        if isinstance(s.count, int) and s.count < 1:
            errors.error(f"block {b.name} repeats {s.count} times", s.span)
        if s.out != b.arg or s.back != b.ret:
            errors.error(f"block {b.name}: its Stream must define its argument and read its "
                         "return value", s.span)
        start = index[s.out]
        if tuple(ins.out for ins in program.body[start + 1: start + 1 + len(b.values)]) \
                != b.values:
            errors.error(f"block {b.name}: its values must follow its Stream", s.span)
            continue
        res = program.body[start + 1 + len(b.values)] if start + 1 + len(b.values) < len(
            program.body) else None
        if not (isinstance(res, LinComb) and res.out == b.result
                and res.terms == ((Fraction(1), b.ret),)):
            errors.error(f"block {b.name}: its result must be an identity of its return value "
                         "right after its body", s.span)
        if any(p not in params for p in b.params):
            errors.error(f"block {b.name}: it names a param the program does not declare", s.span)
        if b.ret not in defined or defined[b.ret] == "<matrix>" or b.arg not in defined \
                or key(defined[b.ret]) != key(defined[b.arg]):
            errors.error(f"block {b.name}: its return value must be a vector of its argument's "
                         "dim", s.span)
