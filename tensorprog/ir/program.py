"""The Tensor Program IR: a closed vocabulary of frozen dataclasses.

A program has one width ``n`` (the dimension that goes to infinity), dims that are either finite or
a fixed multiple of ``n``, inputs (vectors), params (vectors or matrices) and a straight-line body
of instructions, each defining one new value:

==========  ====================  =========================================================
IR class    surface syntax        finite-width meaning
==========  ====================  =========================================================
MatMul      ``y = W @ x``         ``y_i = sum_j W_ij x_j`` (W a matrix param; ``W.T @ x`` uses
                                  its transpose, e.g. a tied unembedding); with a kernel
                                  ``K @ img`` a stride-1 same-padded convolution, and
                                  ``conv(K, img, s, t, b, l, r, d)`` one of any geometry
LinComb     ``y = 2*u - v + b``   ``y = c + sum_k c_k v_k`` (vectors or vector params, rational c)
Nonlin      ``y = relu(h)``       ``y_i = phi(h_i)``; ``u * v`` is the Nonlin ``mul`` (a
                                  vector param of a head dim times a vector: per head);
                                  layernorm/rmsnorm normalise over the vector's dim
                                  (``rmsnorm(q, dh)``: over each head of dh coordinates),
                                  softmax/causal_softmax over the key tokens (a finite dim);
                                  ``ssd``, ``ddot``, ``wkv``: Mamba-2's, KDA's, RWKV's (ir/)
Dot         ``s = dot(u, v)``     ``s = sum_i u_i v_i``, a scalar; ``dot(q, k, dh)``: per head
                                  of dim dh and per (query, key) token pair (attention logits);
                                  k may have fewer heads than q (grouped-query attention)
Mix         ``o = mix(p, v)``     ``o_t = sum_s p_ts v_s`` per head: attention's token mixing
Delta       ``delta(sq, sk, b[, g])``  per head, the gated delta rule's token-mixing weights P
                                  (linear attention, Gated DeltaNet): ``mix(P, v)`` is its output
Route       ``route(g, k, y1..)`` ``sum over the k largest g_e of g_e y_e``: a mixture of
                                  experts (``route_norm``: the k gates divided by their sum)
RouteIn     ``route_in(g, k, i, x)``  ``g_i x`` where g_i is among g's k largest, else 0:
                                  expert i's input gated (Llama 4's experts)
Prepend     ``prepend(c, h, T1)`` the vector param c (or a vector per sequence) as a first
                                  token, then h's tokens: a sequence T1 one token longer
Stream      ``repeat L blk(h0)``  a block's input: ``h0`` at its first repetition, the
                                  previous repetition's return value afterwards
==========  ====================  =========================================================

A ``depth`` and blocks describe a stack of repeated blocks without unrolling it: the block's
body is inlined once, as one generic repetition whose names are qualified by the block's
(``res.u``, params ``res.W1``), after a :class:`Stream` that feeds it and before an identity that
names the last repetition's return value. :class:`Block` records which values and params belong
to the block. The Stream's back edge (the return value, computed after it) is the one place where
a value is read before the instruction that defines it.

A program may carry a finite sequence axis (token and position inputs): every vector has one value
per token, combined across tokens by the token-pair instructions only. A ``scale`` is a
never-trained param with no axes: a width-dependent constant the engine derives (attention's 1/d).

Each instruction carries its source span (excluded from equality: a program printed with
:func:`tensorprog.ir.text.to_text` and parsed again compares equal). A Nonlin's functions are in
:mod:`tensorprog.ir.functions`; :mod:`tensorprog.ir.verify` checks a program's invariants.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

from ..errors import Span, UsageError
from .ddot import DDOT, ddot_dim
from .delta import Delta
from .functions import CAT, PART, PICK, POOLS, RMS, pooled
from .heads import heads_dim_name, split_heads_dim
from .routes import Route, RouteIn
from .spread import HDOT, SPREAD, other_dim
from .ssd import SSD, ssd_dim

#: Inputs on (query, key) token pairs of one sequence, one-hot: T5's distance bucket (causal:
#: a later key has none of its own), Swin's offset in a window, LeViT's (|dy|, |dx|) on a grid.
RELATIVE_KINDS = ("relative", "causal_relative", "windows", "grid_offsets")
INPUT_KINDS = ("vector", "tokens", "positions", "axial", "image", "patches", *RELATIVE_KINDS,
               "offsets")
BUILT_KINDS = ("positions", "axial", *RELATIVE_KINDS, "offsets")  #: built inside, not fed
ONE_HOT_KINDS = ("tokens", "positions", "axial", *RELATIVE_KINDS)  # W @ one: a lookup, fan-in 1
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
        return f"{self.mult.numerator} * {width_name} / {self.mult.denominator}"


@dataclass(frozen=True)
class Input:
    """An input: a vector of dim ``dim`` (``vector``), token ids over a vocabulary ``dim`` at each
    of ``seq`` positions (``tokens``, a one-hot vector per token), the positions 0..seq-1
    themselves (``positions``, one-hot over ``dim`` = ``seq``; not passed to forward), the
    distance bucket of every (query, key) pair of the ``seq`` tokens (``relative`` and
    ``causal_relative``: one-hot over the ``dim`` buckets, T5's, not passed to forward; with a
    ``reach``, the softmax keeps the keys fewer than reach tokens away: LongT5's), an image with
    ``dim`` channels at every pixel of ``spatial`` (``image``), Swin's windows (``windows``), a
    window's offsets' 2 coordinates (``offsets``), positions on a grid read along one axis
    (``axial``: (t // ``stride``) mod ``dim``, one-hot: Reformer's), or LeViT's ``grid_offsets``."""

    name: str
    dim: str
    span: Span | None = _span()
    kind: str = "vector"
    seq: str | None = None
    spatial: tuple[str, str] | None = None  # an image's finite height and width dims
    window: tuple | None = None  # windows: the grid's height, width dims, shift, mask
    stride: int | None = None  # axial's positions one step spans; grid_offsets' subsampling
    queries: str | None = None  # grid_offsets: the queries' sequence, the keys' grid subsampled
    reach: int | None = None  # relative: the keys its softmax keeps are fewer than reach away


@dataclass(frozen=True)
class Param:
    """A trained vector ``[d]`` (bias, gain, readout vector), matrix ``[out, in]`` or kernel
    ``[out, in, kh, kw]`` (kh, kw finite; standardised: engine/standardised.py), a depthwise one
    ``[c, kh, kw]`` (dwconv: a gain per channel); no axes: a scale ``base·(n/base)^-a``, fixed."""

    name: str
    shape: tuple[str, ...]
    span: Span | None = _span()
    base: Fraction | None = None  # a scale's value at the base width, or a vector's constant init
    standardised: Fraction | None = None  # eps: read as (W - mean_row) / sqrt(var_row + eps)

    @property
    def is_scale(self) -> bool:
        return not self.shape

    @property
    def depthwise(self) -> bool:
        """A depthwise kernel ``[c, kh, kw]`` (``dwconv(K, h)``): read as a value of dim c, a
        gain per channel over a finite window, not applied with @."""
        return len(self.shape) == 3


@dataclass(frozen=True)
class Geometry:
    """A convolution's geometry: its stride, its zero padding per side (top, bottom, left,
    right) and its dilation, each the same along both pixel axes but the padding. The width
    exponents never read it (a kernel's fan-in is in·kh·kw however it moves over the pixels):
    it sets the output's pixels and the emitted ``conv2d``. ``groups`` g: the channels split
    into g groups, each output channel reading its group's in/g channels (the kernel [out,
    in/g, kh, kw]); with g finite and in/g ∝ n each output's fan-in (n/g)·kh·kw is infinite, so
    it derives as a full convolution of that fan-in (a fixed group width, g ∝ n, is refused)."""

    stride: int = 1
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: int = 1
    groups: int = 1

    @staticmethod
    def same(kh: int, kw: int, stride: int = 1, dilation: int = 1) -> Geometry | None:
        """The padding by half the (dilated) kernel on each side, or None for an even kernel
        (no symmetric padding keeps the size)."""
        if (kh - 1) * dilation % 2 or (kw - 1) * dilation % 2:
            return None
        ph, pw = (kh - 1) * dilation // 2, (kw - 1) * dilation // 2
        return Geometry(stride, (ph, ph, pw, pw), dilation)

    def out_size(self, size: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, int]:
        """The output's height and width (torch's conv2d: floor((H + pads - d(k-1) - 1)/s) + 1);
        0 or less where the kernel does not fit."""
        t, b, left, r = self.pads
        return ((size[0] + t + b - self.dilation * (kernel[0] - 1) - 1) // self.stride + 1,
                (size[1] + left + r - self.dilation * (kernel[1] - 1) - 1) // self.stride + 1)


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
    # a kernel's geometry; None: stride 1, padded by half the kernel (``K @ img``)
    geometry: Geometry | None = None

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.arg,)


@dataclass(frozen=True)
class LinComb:
    """``out = const + sum_k coef_k * term_k`` over vectors of one dim (a vector param: a bias;
    ``const`` only over values of params alone, ``1 + sigmoid(w)``: ir/ranges.py). Scaling: as
    large as its largest term (no cancellation assumed); a constant: Θ(1), fixed, no gradient."""

    out: str
    terms: tuple[tuple[Fraction, str], ...]
    span: Span | None = _span()
    const: Fraction = Fraction(0)

    @property
    def operands(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.terms)


@dataclass(frozen=True)
class Nonlin:
    """``out = fn(args)`` coordinatewise: a nonlinearity of one vector, or ``mul`` of two.

    Scaling: phi of a Theta(1) vector is Theta(1) and phi' is Theta(1), so changes pass through;
    a product adds its factors' exponents (a vector param in a product is a gain; one of a head
    dim multiplies every head alike, so its gradient sums over the heads). A norm divides by
    the RMS over its group of coordinates (the vector's dim, or each head's ``over``).
    """

    out: str
    fn: str
    args: tuple[str, ...]
    span: Span | None = _span()
    over: str | None = None  # a norm's head dim (QK-norm); spread's dh; part's d; cat's D
    # dwconv's geometry (MatMul.geometry's); None: stride 1, padded by half the kernel
    geometry: Geometry | None = None
    index: int | tuple[int, ...] | None = None  # part's i, shift/place's k, pick's ids, tconv's p
    heads: str | None = None  # cat's head dim: D in heads of it, each the parts' heads in turn

    @property
    def operands(self) -> tuple[str, ...]:
        return self.args


@dataclass(frozen=True)
class Dot:
    """``out = dot(left, right) = sum_i left_i right_i``: a scalar.

    Scaling: independent, centred vectors give a CLT sum (+1/2 over an infinite dim); correlated
    ones, and every change after training, give an LLN sum (+1).

    Per head (``over`` set), ``right`` may have fewer heads than ``left`` (grouped-query
    attention): dim(left) = g * dim(right), and key head j serves the g consecutive query heads
    j*g .. j*g + g-1 (torch's ``repeat_interleave``, Hugging Face's ``repeat_kv``). Each logit is
    still one query head against one key head, so its exponents are MHA's; the key's gradient
    sums over its g query heads (+1 when g grows with the width, see ``grad_dot``).
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
    add as in a product (e(p) + e(v); changes from either side). The output has the query's dim
    (the heads of ``weights``); ``values`` may have fewer heads (grouped-query attention), each
    serving as many consecutive query heads as the dims' ratio says. ``mix(p, v, dv[, D])``:
    values in heads of dv, as many as p's or (D) a whole fraction, the output D = p's heads · dv.
    """

    out: str
    weights: str
    values: str
    span: Span | None = _span()
    head: str | None = None  # mix(p, v, dv): v in heads of dv each (the output v's dim)
    dim: str | None = None  # mix(p, v, dv, D): the output's dim (v's heads grouped)

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


@dataclass(frozen=True)
class Prepend:
    """``out = prepend(token, arg, seq)``: the vector param ``token`` as the first token, then the
    tokens of ``arg``; ``out`` runs over ``seq``, a sequence one token longer than ``arg``'s (a
    vision transformer's learned class token, ``torch.cat([cls.expand(B, 1, n), h], dim=1)``);
    with ``at`` = k, before token k of ``arg`` instead (``prepend(c, h, T1, k)``: DINOv2's
    register tokens after its class token, ``torch.cat([h[:, :1], reg, h[:, 1:]], dim=1)``).

    Scaling: every token's coordinates are the token param's or ``arg``'s, so the output is as
    large as the larger (a max, as for a sum), changes as much as the one that changes more, and
    sends its gradient to each: the class position's to ``token``, the others' to ``arg``. The
    token param is thus a vector fed the constant 1 at one position (fan-in 1), as a bias is:
    the rules derive a bias's exponents for it (init Θ(1), Adam LR Θ(1), SGD LR Θ(n)).
    """

    out: str
    token: str
    arg: str
    seq: str
    span: Span | None = _span()
    # the token goes before arg's token ``at`` (0: the front; 1: after a class token, as
    # DINOv2's register tokens): where, changes no exponent
    at: int = 0

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.token, self.arg)


@dataclass(frozen=True)
class Mean:
    """``out = mean(arg, start)``: the mean of ``arg``'s token vectors from token ``start`` on, one
    vector per sequence (a vision transformer's mean-pooled readout, ``h[:, start:].mean(1)``:
    BEiT's pooler, I-JEPA's and DINOv2's heads, with ``start`` = 1 after a class token).

    Scaling: a mean of finitely many tokens with Θ(1) weights 1/(T − start) is as large as the
    tokens (a finite sum: at most its largest term, and tokens of one input are not centred
    against each other), at init and in its change; the gradient reaches each token it reads as
    dout/(T − start), a width-independent fraction, so g(arg) = g(out). The rules are those of
    ``first`` (one token, weight 1) for any finite set of weights: which tokens, and how many,
    changes no exponent (TP4's rule for a sum of finitely many vectors).
    """

    out: str
    arg: str
    start: int = 0
    span: Span | None = _span()

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.arg,)


@dataclass(frozen=True)
class Relayout:
    """``tokens(arg, seq)``: an image's H×W pixels read row-major as the H·W tokens of ``seq``
    (``x.flatten(2).transpose(1, 2)``); ``image(arg, H, W)`` (``grid``): the reverse;
    ``merge2x2(arg, D)``: Swin's patch merging; ``tail(arg, S)``: a sequence's last S tokens.

    Scaling: a relabelling of the same finitely many width-vectors (pixel i·W + j is token
    i·W + j; ``tail`` keeps some of them), so every exponent passes through unchanged: at init,
    in the change, and in the gradient, which each pixel gets from its token (TP4's rules
    read no axis but the width's; a merged pixel's are four pixels' coordinates).
    """

    out: str
    arg: str
    span: Span | None = _span()
    seq: str | None = None  # tokens(arg, seq)
    grid: tuple[str, str] | None = None  # image(arg, H, W)
    merge: str | None = None  # merge2x2(arg, D): the dim of 4 x arg's channels
    tail: bool = False  # tail(arg, seq): the last tokens of arg's sequence, as seq

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.arg,)


Instruction = (MatMul | LinComb | Nonlin | Dot | Mix | Delta | Stream | Route | RouteIn
               | Prepend | Mean | Relayout)
INSTRUCTIONS: tuple[type, ...] = (MatMul, LinComb, Nonlin, Dot, Mix, Delta, Stream, Route,
                                  RouteIn, Prepend, Mean, Relayout)


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


def per_head(dims: dict[str, Dim], gain: str | None, dim: str | None) -> bool:
    """Whether a vector of dim ``gain`` times one of dim ``dim`` multiplies each head of ``dim``
    by the same ``gain`` coordinates (a QK-norm's gain of the head dim): gain divides dim."""
    return (gain is not None and dim is not None and dims[gain].key() != dims[dim].key()
            and heads_dim(dims, dim, gain) is not None)


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
        """Declared dims, the width, and the heads axis of every ``dot(q, k, dh)`` (with grouped
        keys, also the key heads and the groups: each must be whole at a width)."""
        table = {self.width.name: Dim(self.width.name, mult=Fraction(1), span=self.width.span)}
        table.update({d.name: d for d in self.dims})
        dims = self.value_dims
        for ins in self.body:
            if isinstance(ins, Dot) and ins.over is not None and dims.get(ins.left) in table:
                h = heads_dim(table, dims[ins.left], ins.over)
                if h is not None:
                    table[h.name] = h
                if dims.get(ins.right) in table and table[dims[ins.right]].key() != table[
                        dims[ins.left]].key():  # grouped: the key heads and the groups
                    for g in (heads_dim(table, dims[ins.right], ins.over),
                              heads_dim(table, dims[ins.left], dims[ins.right])):
                        if g is not None:
                            table.setdefault(g.name, g)
            if isinstance(ins, Nonlin) and ins.fn in (SSD, DDOT) and dims.get(ins.out):
                h = heads_dim(table, *split_heads_dim(dims[ins.out]))
                table.update({h.name: h} if h is not None else {})
            if isinstance(ins, Delta) and ins.head and {ins.dim, ins.head} <= table.keys():
                h = heads_dim(table, ins.dim, ins.head)  # the values' heads
                table.update({h.name: h} if h else {})
            if isinstance(ins, Mix) and ins.head:  # values' own heads, and their groups
                for a, b in ((dims[ins.values], ins.head), (dims[ins.out], dims[ins.values])):
                    h = heads_dim(table, a, b) if {a, b} <= table.keys() else None
                    table.update({h.name: h} if h and table[a].key() != table[b].key() else {})
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
                sizes = pooled(ins.fn, sizes)
            if isinstance(ins, (MatMul, Nonlin)) and ins.geometry is not None \
                    and sizes is not None:  # a kernel's last two axes are its window
                weight = ins.weight if isinstance(ins, MatMul) else ins.args[0]
                kernel = self.param_table[weight].shape[-2:]
                sizes = ins.geometry.out_size(sizes, tuple(self.dim_table[d].size
                                                           for d in kernel))
            if isinstance(ins, Relayout):  # pixels as tokens, tokens as pixels, 2x2 merged
                sizes = ((sizes[0] // 2, sizes[1] // 2) if ins.merge and sizes else None
                         if ins.grid is None else tuple(self.dim_table[d].size for d in ins.grid))
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
                kv = self.dim_table[self.value_dims[ins.right]].size_at(width)
                if kv % head or total % kv:  # grouped-query: whole key heads, whole groups
                    return (f"the keys' dim {self.value_dims[ins.right]} = {kv} is not a whole "
                            f"number of heads of {head} that divides {total}")
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

    @property
    def has_tokens(self) -> bool:
        """Whether some value runs over a sequence (token or position inputs, ``tokens(h, T)``)."""
        return self.seq is not None or any(isinstance(i, Relayout) and i.seq is not None
                                           for i in self.body)

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
        # declared dims only: the heads axes (dim_table) are derived from these value dims
        declared = {self.width.name: Dim(self.width.name, mult=Fraction(1)),
                    **{d.name: d for d in self.dims}}
        dims.update({p.name: (p.shape[0] if p.shape else None) for p in self.params
                     if len(p.shape) < 2 or p.depthwise})  # matrices and kernels are not values
        for ins in self.body:
            if isinstance(ins, MatMul):
                shape = self.param_table[ins.weight].shape
                dims[ins.out] = shape[1] if ins.transposed else shape[0]
            elif isinstance(ins, Dot):
                dims[ins.out] = ins.over and heads_dim_name(dims[ins.left], ins.over)
            elif isinstance(ins, Mix):  # the query's dim: the values' unless they are grouped
                query, values = split_heads_dim(dims[ins.weights] or "")[0], dims[ins.values]
                grouped = (ins.head is None and query in declared and values in declared
                           and declared[query].key() != declared[values].key())
                dims[ins.out] = ins.dim or (query if grouped else values)
            elif isinstance(ins, Delta):  # the scores' heads, or the values' (grouped)
                dims[ins.out] = (heads_dim_name(ins.dim, ins.head) if ins.head is not None
                                 else dims[ins.scores])
            elif isinstance(ins, Route):
                dims[ins.out] = dims[ins.experts[0]]
            elif isinstance(ins, RouteIn):
                dims[ins.out] = dims[ins.arg]
            elif isinstance(ins, Prepend) or isinstance(ins, Relayout) and ins.merge:
                dims[ins.out] = getattr(ins, "merge", None) or dims[ins.arg]
            elif isinstance(ins, Nonlin) and ins.fn in (SSD, DDOT):  # ir/ssd.py, ir/ddot.py
                dims[ins.out] = (ddot_dim(dims, ins) if ins.fn == DDOT else ssd_dim(
                    declared, ins.args[1:2] and dims.get(ins.args[1]), ins))
            elif isinstance(ins, Nonlin) and ins.fn in (SPREAD, PART, CAT, PICK, RMS, HDOT):
                dims[ins.out] = other_dim(declared, ins.fn, dims[ins.args[0]], ins.over or "")
            else:  # elementwise: a scalar factor (a scale) takes the other operand's dim,
                # a per-head gain the dim of the heads it multiplies
                found = [dims[o] for o in ins.operands if dims[o] is not None]
                # (a relative bias [H] added to logits [n/dh] is no gain: the logits' heads)
                if (len(found) == 2 and found[0] != found[1] and set(found) <= declared.keys()
                        and per_head(declared, *found)):
                    found = found[1:]
                dims[ins.out] = found[0] if found else None
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
        for ins, name in ((i, m) for i in self.body for m in dict.fromkeys(_mentions(i))):
            table.setdefault(name, []).append(ins)
        return table

    def uses(self, name: str) -> list[Instruction]:
        """The instructions that read a value or apply a param, in program order."""
        return self._uses.get(name, [])


def _mentions(ins: Instruction) -> tuple[str, ...]:
    if isinstance(ins, Stream):
        return ins.operands + ((ins.back,) if ins.loops else ())
    return ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ())
