"""The trace's abstract values (what each torch tensor is to the language); a walk's Trace."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

# --- the abstract values ------------------------------------------------------------------------


@dataclass
class Vec:
    """A program vector; ``tags`` name each torch axis: 'tok' (batch or sequence), 'F' (the
    vector's dim), or 'H' and 'dh' (its heads and head dim)."""

    name: str
    tags: tuple
    dim: int  # the flat dim's size
    dh: int | None = None
    # grouped-query attention: each of its heads serves ``group`` consecutive query heads (HF's
    # repeat_kv); the torch tensor then has group times the heads of the program vector
    group: int = 1


@dataclass
class PRef:
    """A param, or a row slice of one, as a matrix in its torch layout (``t``: transposed)."""

    target: str
    shape: tuple
    t: bool = False
    rows: tuple[int, int] | None = None  # a slice of the param's first program axis
    offset: float = 0.0  # a constant added to it: Gemma's gain (1 + w) is a gain of init 1 + w's
    # rows: a slice of every group of ``period`` rows (a fused qkv laid out per head: GPT-NeoX's
    # [q_h, k_h, v_h] for each head h), not of the whole axis
    period: int | None = None
    # the block's place, where its rows do not say it (unequal blocks); "i_j" for part j of
    # block i split again
    part: int | str | None = None
    # one expert's matrix, the slice [expert] of a 3-D param (a mixture of experts' stacked
    # weights, ops_moe.py); ``shape`` is then the slice's
    expert: int | None = None
    # a block of the param's columns, its input features (a concatenation fed to one linear
    # layer, ops_concat.py)
    cols: Columns | None = None
    # the param read standardised, each row (an output's fan-in) at mean 0 and variance 1 with
    # this eps: a weight-standardised kernel (ops_standardise.py)
    std: float | None = None


@dataclass
class ScaledParam:
    """``c * p`` of a param p and a number c, kept till the sum that uses it (Funnel's
    ``self.r_w_bias * self.scale`` added to ``q * self.scale``: ops_scaledparam.py)."""

    ref: PRef
    c: float
    node: str  # the product's node


@dataclass
class PEntry:
    """Entry ``index`` of a 1-D param, read as one number (``self.lambdas[0] * h``: NeoMME's
    learned mixing weights, ops_entries.py); ``ref`` is the whole param."""

    ref: PRef
    index: int


def entry_key(target: str, index) -> str:
    """The key of one entry's init among the base stats (init_stats.base_stats): ``w[i]``."""
    return f"{target}[{index}]"


def init_of(base: dict, target: str, index=None, default=None, block: str | None = None):
    """A param's init at the base width (``("const", c)`` or ``("normal", std)``): an entry's
    own where it is one entry of a 1-D param read as a number (``index``), a block's own where
    the block's draw differs from the rest of its tensor (``block``: its ``block_key``), else
    the tensor's."""
    if isinstance(index, int) and entry_key(target, index) in base:
        return base[entry_key(target, index)]
    if block is not None and block in base:
        return base[block]
    return base.get(target, default)


@dataclass
class Columns:
    """Columns lo..hi of a param's input axis, of ``size`` in all: the block that multiplies
    part ``index`` of a concatenation ``W @ cat(a, b) = W[:, :m] @ a + W[:, m:] @ b``. Traced at
    one width as numbers (``lo``, ``hi``); merged over the two widths (columns.py) each bound is
    ``(c, f)``, c + f·S of the axis's size S, since each part's size is a constant or grows
    with the width. ``span``: the concatenation's line, for apply's refusal of blocks whose LRs
    differ."""

    index: int
    lo: object
    hi: object
    size: int | None = None
    span: object = field(default=None, compare=False, repr=False)


@dataclass
class Spread:
    """A 1-D param ``ref`` of n features in a torch tensor of ``shape`` (ops_spread.py): axes
    of 1 but its features, last (``heads`` None) or as (H, dh) at the axes ``heads`` and the
    last."""

    ref: PRef
    shape: tuple
    heads: int | None = None  # the axis of the H heads, the features' dh the last
    # axes of 1 after the features: 2 for a channels-first image's gain or bias, [C, 1, 1]
    # (PoolFormer's layer_scale.unsqueeze(-1).unsqueeze(-1)); 1 on the way there
    after: int = 0


@dataclass
class RowMean:
    """``x.mean(a, keepdim=True)`` of an image over one pixel axis, whose one reader averages
    over the other (FocalNet's ``ctx.mean(2, keepdim=True).mean(3, keepdim=True)``): half of a
    global pool (ops_conv.py)."""

    src: Vec
    axis: int


@dataclass
class OverTokens:
    """A vector per sequence (a mean over the tokens: tags ("tok", "F")) given back a token
    axis, ``g.unsqueeze(1)`` and its ``repeat(1, T, 1)`` (SwiftFormer's global query), before
    it multiplies a vector per token (ops_global.py)."""

    src: Vec


@dataclass
class ParamFn:
    """A coordinatewise function of a param alone (ops_temperature.py): ``form``, the language's
    expression of it with ``{}`` for the param (``exp({})``, ``4.6 * cap({} / 4.6)``); ``op``
    the first torch op applied (what a refusal names)."""

    ref: PRef
    form: str
    op: str
    # an interval holding its values (ir/ranges.py's arithmetic): sqrt needs a positive floor
    bounds: tuple[float, float] = (-math.inf, math.inf)


@dataclass
class HeadGate:
    """``g.unsqueeze(-1)`` of a per-token vector g of H entries, before it multiplies a vector
    viewed as (…, H, dh) (ops_gate.py): one number per head over its head's coordinates, the
    program's ``spread(g, dh)``."""

    src: Vec
    node: str = ""


@dataclass
class KVRepeat:
    """HF's repeat_kv half done: ``src`` (key or value heads) with a new axis right after its
    heads (``axis``), then expanded to ``group`` copies there; the reshape that merges the two
    axes makes each key/value head serve ``group`` consecutive query heads."""

    src: Vec
    axis: int
    group: int | None = None


@dataclass
class TokenParam:
    """A param [1, 1, n] (or [n]) expanded over the batch (``cls.expand(B, -1, -1)``): one token
    per sequence, which ``torch.cat`` puts before the tokens (ops_encoder.py); a param [1, R, n]
    so expanded is R tokens (DINOv2's registers)."""

    ref: PRef


@dataclass
class Tok:
    tags: tuple


@dataclass
class Conc:
    """A value computed from inputs and constants only, known on the CPU."""

    value: object
    # computed from the token ids: its value again with probe_ids(...) in their place (the
    # trace's ids are zeros, so a copy of them reads as one constant id without it); None else.
    # Keyword-only: Given(value, input) stays positional
    probe: object = field(default=None, kw_only=True)
    # computed from an integer input given to the forward (its name), whose example values it
    # holds: what a refusal of it names (TAPAS's positions, from its token types' cells)
    given: str = field(default="", kw_only=True)


# the token input of ids the forward shifts from the token ids itself (BART's decoder ids):
# the model's graph computes them, so its probe feeds them (check.py)
SHIFTED_IDS = "shifted_ids"


@dataclass
class Given(Conc):
    """An integer input other than the token ids (an attention mask, token-type ids), known on
    the CPU from the example inputs: a constant, except where a lookup reads its ids as they
    vary (segments), which makes it a token input of the program of its own."""

    input: str = ""  # the forward's name for it (token_type_ids)


@dataclass
class Aux:
    """A value free of params whose entries are unknown here (from a buffer)."""

    buffer: str = ""  # the model's name of the buffer it is read from, where one is known
    # a cos/sin table that an op the trace does not carry it through made unknown: that op and
    # its line (walk.py's _trig), for the refusal of what then reads it
    lost: str = field(default="", kw_only=True)


@dataclass
class FixedTable(Aux):
    """A float buffer of several entries whose entries the trace read on the CPU (a sinusoidal
    position table, GPT-J's sin/cos table): to every op but a lookup of its rows at the
    positions it is a buffer of unknown entries, as before; looked up there it is
    :class:`Looked` (ops_tables.py)."""

    value: object = None


@dataclass
class Computed(Aux):
    """A value computed from a fixed table's entries (and constants) that is no lookup of its
    rows at the positions (HF's angles ``positions * inv_freq``, and ``torch.polar`` of them):
    to every op a buffer of unknown entries, as before, except that the ops on it are computed
    on the CPU too, so a complex rotary's table is known where it turns a head (ops_complex.py).
    """

    value: object = None
    # computed from the token ids too: its value with probe ids in their place, as Conc's,
    # and the table it reads (a table's rows at positions computed from the ids, viewed
    # after: ops_tables.py)
    probe: object = None
    table: object = None


@dataclass
class Looked(Conc):
    """A constant computed from the rows of a fixed table (a float buffer, or a param the model
    does not train) read at the positions k..k+T-1 (``positions`` = T): the same for every
    sequence, known on the CPU. Added to a per-token vector it is the program's ``P @ pos``
    with P a fixed table; multiplied into a head vector, rotary's cos or sin (ops_tables.py).
    The ops on it keep ``target``, the buffer or param it is read from."""

    target: str = ""
    positions: int = 0


@dataclass
class Pointwise:
    """f(src) coordinatewise; identified by its values when something else consumes it."""

    src: Vec
    f: Callable
    node: str = ""  # the node whose value this is


@dataclass
class Affine:
    """W @ x + b, emitted when consumed (a split along its rows makes it several)."""

    x: Vec
    w: PRef
    b: PRef | None
    node: str  # the node whose value this is (a split's getitem)
    tags: tuple
    layer: str = ""  # the node that applies the weight
    # a fused layer's output viewed per head (tags end in H, dh): each head's dh features
    dh: int | None = None


@dataclass
class Joined:
    """``cat(a, b, ...)`` along the features of per-token (or per-sequence) vectors: only a
    linear layer reads it, as a sum of its column blocks applied to each part (ops_concat.py)."""

    parts: list
    node: str
    tags: tuple


@dataclass
class Parts:
    items: list


@dataclass
class MeanSq:
    src: Vec
    inv: bool = False  # rsqrt taken
    k: float = 1.0  # the mean square of k**0.5 * src (a constant the forward put before it)
    centered: bool = False  # of src minus its mean: a variance (a layer norm written by hand)
    root: bool = False  # sqrt taken (a division by it is a product with its inverse)
    over: int = 0  # a sum of squares over this many coordinates, not a mean (k counts them)


@dataclass
class L2Norm:
    """The L2 norm of a vector's coordinates (of each head's), keepdim: ``F.normalize``'s
    divisor, ``|x| = sqrt(d) · RMS(x)`` over d coordinates."""

    src: Vec


@dataclass
class Mean:
    """The mean of a vector's coordinates (of each head's), keepdim: a layer norm's centre."""

    src: Vec


@dataclass
class Centered:
    """``src - mean(src)`` over its coordinates (``sq``: squared), on the way to a layer norm
    written by hand; nothing else of it is a vector the language has."""

    src: Vec
    sq: bool = False


@dataclass
class Scores:
    """Attention logits factor * dot(q, k, dh), before the softmax."""

    q: Vec
    k: Vec
    factor: float
    node: str
    tags: tuple
    causal: bool = False
    # a coordinatewise function of them and the node that finishes it: Gemma 2's soft-cap
    # c * tanh(logits / c), the logits' factor holding the 1 / c (ops_pointwise.py)
    cap: tuple[Callable, str] | None = None
    # a relative position bias added to them (ops_relative.py): the program vector ``R @ rel``
    bias: str | None = None


@dataclass
class RelBias:
    """A relative position bias (T5's): ``table`` [buckets, heads] looked up by the bucket ids of
    every (query, key) pair, one number per head and pair, which the walk carries to the
    attention logits it is added to. ``axes`` name its torch axes: 'q', 'k' (the grid), 'H'
    (the table's columns), '1' (an added axis) or 'tok' (the batch it is expanded over);
    ``rel`` is the program input of its buckets (ops_relative.py) and ``causal`` says a causal
    mask was applied to it (the decoder's, folded in by HF's sdpa path)."""

    table: PRef
    rel: str
    node: str
    axes: tuple
    grid: tuple[int, int]
    causal: bool = False


@dataclass
class OffsetTable:
    """A table computed over a window's offsets (Swin V2's continuous position bias,
    ops_offsets.py): the program vector ``vec``, one row per offset, as Swin's bias reads it;
    ``shape`` (offsets, heads), as a param table's."""

    vec: Vec
    shape: tuple[int, int]
    t: bool = False  # never transposed (ops_relative's with_bias reads a param table's t)


@dataclass
class Zeroed:
    """Attention logits times a 0/1 mask that keeps the causal entries (OpenAI GPT's ``w * b``,
    ``b`` a buffer of ones on and below the diagonal): the dropped entries are 0, not -inf, until
    the ``+ -1e4 * (1 - b)`` that completes the causal mask; any other use is refused."""

    scores: Scores
    keep: object  # the bool mask of the entries kept


@dataclass
class Probs:
    scores: Scores
    name: str


# --- rotary embeddings: an exact rotation of each pair of a head's coordinates ------------------


@dataclass
class Trig:
    """cos or sin of a param-free table of angles (a buffer, or constants): the same ``angle``
    node under both makes ``x * cos + rotate_half(x) * sin`` a rotation."""

    kind: str  # "cos" or "sin"
    angle: str
    # a number multiplying the table (YaRN's attention_scaling on gpt-oss's cos and sin): the
    # rotation it makes is that number times a rotation
    factor: float = 1.0
    # the ops that carried it since cos or sin (casts, added axes, slices), with their
    # arguments; ``rearranged``: its entries moved after cos and sin by the ops ``angle`` then
    # spells out (NeoMME's M-RoPE), ``halves``: into one table twice along the last axis
    # (ops_rotary.py's rearranged_table)
    path: tuple = ()
    rearranged: bool = False
    halves: bool = False


@dataclass
class TokensFrom:
    """The tokens of the per-token vector ``vec`` from token ``start`` on (``h[:, start:]``,
    ops_pool.py), or up to ``end`` (``h[:, :1]``, read only by a concatenation that puts
    learned tokens there, ops_encoder.py); no ``src`` or ``tags``, so no op but a mean over its
    tokens or that concatenation reads it."""

    vec: Vec
    start: int
    end: int | None = None
    size: int = 0  # vec's tokens


@dataclass
class OneToken:
    """``h[:, :1]`` of a per-token vector split off its other tokens (CvT's ``torch.split(h, [1,
    H·W], 1)``, ops_classtoken.py): the first token's vector ``vec`` (``first(h)`` in the
    program, tags ("tok", "F")) with its token axis of 1 kept. Read only by a concatenation that
    puts it back before tokens (``prepend(first(h), x, T1)``), a norm over its features, or a
    mean over its one token; any other reader is refused."""

    vec: Vec


@dataclass
class Sub:
    """Coordinates lo..hi of each head of ``src``, times ``sign``: rotary's halves (rotate_half
    negates the second), or the part of each head a partial rotary turns (the first r: ``cat``
    with the rest gives ``src`` back)."""

    src: Vec
    lo: int
    hi: int
    sign: int = 1


@dataclass
class Strided:
    """Every other coordinate of each head of ``src`` from ``start`` (0 or 1), times ``sign``:
    the halves of each pair (2i, 2i + 1) that an interleaved rotary turns (``x[..., ::2]``)."""

    src: Vec | Sub
    start: int
    sign: int = 1


@dataclass
class PairStack:
    """``stack((-x[..., 1::2], x[..., ::2]), -1)``: rotate_every_two before its flatten, which
    makes it :class:`Rotated` (GPT-J's, GLM's, Cohere's interleaved rotary)."""

    src: Vec | Sub


@dataclass
class PairHalf:
    """One half of every pair (2i, 2i + 1) of each head of ``src``, turned: the even ones
    (``start`` 0, ``x_e·cos − x_o·sin``) or the odd ones (1, ``x_o·cos + x_e·sin``), each angle
    the pair's (DeepSeek-V3's ``apply_rotary_pos_emb_interleave``); ``cat`` of the two makes
    the rotated head, its pairs laid out as halves."""

    src: Vec | Sub
    start: int
    # the halves of each head instead (gpt-oss's ``_apply_rotary_emb``: x1, x2 = chunk(x, 2),
    # ``x1·cos − x2·sin`` the first (start 0), ``x2·cos + x1·sin`` the second (1), each angle
    # the pair (i, i + d/2)'s): ``cat`` of the two is rotate_half's rotation of the head
    halves: bool = False
    factor: float = 1.0  # the tables' (Trig.factor)
    # the angle node of its cos and sin (Trig.angle): ``cat`` of two halves turned by different
    # angles is no rotation (its determinant per pair is cos(θ − φ))
    angle: str = ""


@dataclass
class Rotated:
    """rotate_half(src): the halves swapped, the new first one negated (``interleaved``: GPT-J's
    rotate_every_two, each pair (2i, 2i + 1) swapped and its new first one negated)."""

    src: Vec | Sub
    interleaved: bool = False


@dataclass
class Paired:
    """Each head of ``src`` as its coordinate pairs (2i, 2i + 1): ``x.reshape(..., -1, 2)``
    (``complex`` False), ``torch.view_as_complex`` of it (True); ``turned``: multiplied by a
    table of unit complex numbers, a rotation of every pair (ops_complex.py)."""

    src: Vec | Sub
    complex: bool = False
    turned: bool = False


@dataclass
class RopeTerm:
    """``src * cos(angle)`` (kind "cos") or ``rotate_half(src) * sin(angle)`` (kind "sin")."""

    src: Vec | Sub
    kind: str
    angle: str
    # the cos or sin table itself where it is known (read from a fixed table: ops_tables.py),
    # and which coordinates the sin term's rotate pairs ("half" or "interleaved")
    table: object = None
    pairs: str = "half"  # or "chunk": a sin term of ``src`` itself, one half of each head
    factor: float = 1.0  # the table's (Trig.factor)


@dataclass
class HeadCat:
    """Each head's features as parts from different vectors, concatenated along the head
    (multi-head latent attention, ops_mla.py): ``parts`` are per-head vectors of the same heads
    (one may be a single head shared by all, ``group`` > 1), each of its own head dim."""

    parts: tuple


@dataclass
class Blank:
    """``x.new_empty(shape)`` whose last axis is filled by parts, ``blank[..., lo:hi].copy_(p)``
    (DeepSeek's MLA builds its keys so): ``fills`` holds (lo, hi, value) in the walk's order."""

    node: str
    size: int  # the last axis
    fills: list = field(default_factory=list)


@dataclass
class Slot:
    """``blank[..., lo:hi]``, the part of a :class:`Blank` a ``copy_`` fills."""

    blank: Blank
    lo: int
    hi: int


# --- what the trace gives ---------------------------------------------------------------------


@dataclass
class ParamUse:
    """One program param: which torch tensor (and rows) it is, and its program shape's dims."""

    target: str
    rows: tuple[Fraction, Fraction] | None  # the block of the torch rows (of the out axis)
    transposed: bool  # program layout [fan_out, fan_in] is the torch tensor transposed
    module: str  # the module that applies it (for a forward patch)
    node: str
    # one row of the torch tensor as a vector param (a lookup of one constant id: BERT's types)
    index: int | tuple[int, ...] | None = None
    # entry ``index`` of a 1-D param of this many entries, read as one number (ops_entries.py):
    # the count must be the same at both widths (a finite vector of numbers)
    entries: int | None = None
    # rows of every group of the out axis (a fused qkv laid out per head): a fixed number of
    # groups (heads) or of rows per group (a fixed head dim), as the two widths agree
    groups: int | None = None
    group_rows: int | None = None
    # one expert's slice [expert] of a 3-D param (ops_moe.py): the program's matrix is that slice
    expert: int | None = None
    # a fixed table (a float buffer, or a param the model does not train) looked up by
    # positions: the RMS of the entries read (ops_tables.py). No param µP scales: apply and
    # param_groups leave it; the two widths' RMS must agree (its entries Θ(1))
    fixed: float | None = None
    # a block of the columns (the input axis) of the torch tensor: a concatenation's part
    cols: Columns | None = None
    # a row block that is not the same share of the rows at every width (a key of one head of
    # a fixed dim beside a query that grows: rows.py): each bound is rows[i]·S + row_consts[i]
    # of the out axis's size S; None where it is the share ``rows`` alone
    row_consts: tuple[Fraction, Fraction] | None = None
    # at one width, before the widths merge: the rows (lo, hi) of each group of ``size`` rows
    row_numbers: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)
    span: object = field(default=None, compare=False, repr=False)  # the layer's line
    offset: float = 0.0  # a constant the model adds where it reads it (Qwen3.5's gain 1 + w)
    # (module, graph node) of every other application of this param: a column block read again
    # by another layer (a weight tied across two nn.Linear) is this param too, and the column
    # scale's pre-hook must reach each module that applies it (columns.py)
    also: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)


@dataclass
class Trace:
    """One width's conversion: statements as templates with size slots."""

    decls: list[str] = field(default_factory=list)
    stmts: list[str] = field(default_factory=list)
    slots: list[tuple[str, float]] = field(default_factory=list)
    params: dict[str, ParamUse] = field(default_factory=dict)
    param_dims: dict[str, list[str]] = field(default_factory=dict)
    vectors: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (node, kind)
    scales: dict[str, dict] = field(default_factory=dict)  # scale -> {q: vector, slot: i}
    # vector -> (weight, bias) of the W @ x + b that made it
    producers: dict[str, tuple] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    rotary: list[str] = field(default_factory=list)  # vectors a rotary embedding rotates
    # coefficient slot -> {x: the vector it multiplies ('' under a function), span}
    coefs: dict[int, dict] = field(default_factory=dict)
    # the nodes whose number is a coefficient slot (convert's ``keep``)
    coefficient_nodes: set[str] = field(default_factory=set)
    # the nodes whose number 1 was written as no slot (convert's agreed_forms: where one is
    # also a coefficient node, the trace is converted again with it kept)
    bare_nodes: set[str] = field(default_factory=set)
    # token inputs besides the token ids (segment ids looked up): program name -> vocabulary
    ids: dict[str, int] = field(default_factory=dict)
    codebooks: dict[str, tuple[int, int]] = field(default_factory=dict)  # (ops_codebooks.py)
    stacked: tuple | None = None
    # inputs over a sequence besides ``tok`` (sequences.py): program name -> (kind, its
    # sequence's dim, table rows: vocabulary or buckets); sequence dims besides T -> length
    seq_inputs: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    seq_dims: dict[str, int] = field(default_factory=dict)
    # the logits a merged attention's mask makes causal (ops_merged.py): resolve reads their
    # queries and keys as one sequence, as it does a causal softmax's
    causal_keys: set[str] = field(default_factory=set)
    # attention nodes whose values have a head dim of their own, mix(p, v, dv) (ops_attention)
    own_heads: set[str] = field(default_factory=set)
    # concatenations of vectors along their features read by more than linear layers, which
    # the program joins as cat(a, b, D) (ops_concat.py): program name -> (the size slot of D,
    # the node, its readers, whether its parts are one per sequence); one whose D grows with the
    # width is refused once both are traced
    cats: dict[str, tuple[int, str, str, bool, tuple]] = field(default_factory=dict)
    # sums of a vector's k parts (a mean over streams: ops_flatstreams.py): name -> (node, k); a k
    # that differs between the widths is refused once both are traced (growing.py)
    part_sums: dict[str, tuple[str, int]] = field(default_factory=dict)


def ids_kept(node, op: str, args: list) -> int | None:
    """Which argument of ``op`` holds the ids that it keeps where it sets other entries to one
    number (``index_put``/``masked_fill`` of the ids, ``where(mask, number, ids)``), or None.
    The number may be a constant tensor the walk does not read (a lifted ``tensor(0)``)."""
    if op in ("index_put", "index_put_", "masked_fill", "masked_fill_") and len(args) > 2:
        at, value = 0, 2
    elif op == "where" and len(args) == 3 and isinstance(args[1], Tok):
        at, value = 1, 2
    elif op == "where" and len(args) == 3:
        at, value = 2, 1
    else:
        return None
    val = getattr(node.args[value], "meta", {}).get("val")
    number = isinstance(node.args[value], (int, bool)) or getattr(val, "numel", lambda: 0)() == 1
    return at if isinstance(args[at], Tok) and number else None
