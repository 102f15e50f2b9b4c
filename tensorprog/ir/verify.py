"""The IR verifier: the invariants every pass may rely on, checked after parsing and on programs
built through the API (names defined once and before use, shapes, blocks well formed)."""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import Collector, SemanticError, Span
from .ddot import DDOT, verify_ddot
from .functions import (
    AT,
    CAT,
    DWCONV,
    FUNCTIONS,
    MUL,
    PART,
    PICK,
    PLACE,
    PRODUCTS,
    RMS,
    SHIFT,
    SPREAD,
    TCONV,
)
from .hdot import HDOT, verify_hdot
from .heads import cat_heads_error
from .program import (
    INPUT_KINDS,
    ONE_HOT_KINDS,
    Delta,
    Dot,
    LinComb,
    MatMul,
    Mean,
    Mix,
    Nonlin,
    Prepend,
    Program,
    Relayout,
    Route,
    RouteIn,
    Stream,
    heads_dim,
    heads_dim_name,
    per_head,
    split_heads_dim,
)
from .ranges import check_ranges
from .sequences import check_sequences
from .spread import part_count
from .ssd import SSD, verify_ssd
from .verify_delta import verify_delta
from .wkv import WKV, verify_wkv

SOFTMAXES = ("softmax", "causal_softmax")


def _grouped(dims: dict, query: str, kv: str | None, over: str | None) -> bool:
    """Grouped-query attention: kv a whole number of heads of dim ``over``, and of
    dim(query) / dim(kv) groups."""
    return (over is not None and over in dims and kv in dims and query in dims
            and heads_dim(dims, query, kv) is not None
            and heads_dim(dims, kv, over) is not None)


def _own_heads(dims: dict, heads: str | None, values: str | None, head: str,
               out: str | None = None) -> bool:
    """``mix(p, v, dv)``: v is as many heads of dim ``head`` as p has heads; ``mix(p, v, dv,
    D)``: D is that many, and v whole heads of ``head`` in a whole fraction of D."""
    if heads not in dims or values not in dims or head not in dims or (
            out is not None and out not in dims):
        return False
    own = heads_dim(dims, out or values, head)
    return own is not None and own.key() == dims[heads].key() and (
        out is None or heads_dim(dims, values, head) is not None
        and heads_dim(dims, out, values) is not None)


def _verify_mix(program: Program, ins: Mix, ops: list, key, errors: Collector) -> str | None:
    """mix(p, v): p attention weights over heads of v's dim, or of whole groups of v's heads;
    mix(p, v, dv): v as many heads of dv as p has. Its dim (the program's)."""
    dims = program.dim_table
    heads = ops[0]
    query, over = split_heads_dim(heads or "")
    if ins.head is not None:  # the values' own head dim: as many heads as p's, or grouped
        mismatch = not _own_heads(dims, heads, ops[1], ins.head, ins.dim)
    else:
        mismatch = key(query) != key(ops[1]) and not _grouped(dims, query, ops[1], over)
    if heads is None or "/" not in heads or query not in dims or mismatch:
        errors.error("mix(p, v) needs attention weights p from dot(q, k, dh) of the same dim as "
                     "v, or of whole groups of v's heads; mix(p, v, dv) values of as many heads "
                     "of dv as p has; mix(p, v, dv, D) whole heads of dv, each serving a whole "
                     "group of p's heads, D of p's heads of dv", ins.span)
    return program.value_dims[ins.out]


# the Nonlins that move coordinates (engine/rules_spread.py), each checked by its own function
# from (program, ins, its operands' dims, key, errors): the dim of its output
_MOVES = {
    PART: lambda p, ins, ops, key, errors: _verify_part(p, ins, ops[0], errors),
    SHIFT: lambda p, ins, ops, key, errors: _verify_shift(ins, ops[0], errors),
    AT: lambda p, ins, ops, key, errors: _verify_at(p, ins, ops, errors),
    PLACE: lambda p, ins, ops, key, errors: _verify_place(ins, ops, key, errors),
    PICK: lambda p, ins, ops, key, errors: _verify_pick(p, ins, ops[0], errors),
    RMS: lambda p, ins, ops, key, errors: _verify_rms(p, ins, ops[0], errors),
    CAT: lambda p, ins, ops, key, errors: _verify_cat(p, ins, ops, errors),
    SSD: lambda p, ins, ops, key, errors: verify_ssd(p, ins, ops, errors),
    DDOT: verify_ddot,
    WKV: verify_wkv,
    HDOT: verify_hdot,
}


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

    _verify_inputs(program, dims, define, errors)
    matrices = _verify_params(program, dims, defined, define, errors)
    if errors.errors:
        errors.raise_if_any(SemanticError)

    def key(dim: str | None):
        return None if dim is None else dims[dim].key()

    one_hot = {i.name: i.kind for i in program.inputs if i.kind in ONE_HOT_KINDS}
    for ins in program.body:
        for name in ins.operands:
            if name not in defined or name in matrices:
                errors.error(f"'{name}' is not a vector defined before this instruction", ins.span)
            elif name in one_hot:
                _verify_one_hot(ins, name, one_hot[name], errors)
        if errors.errors:
            break
        ops = [defined[o] for o in ins.operands]
        if isinstance(ins, Stream):
            out = ops[0]
            if out is None:
                errors.error(f"stream {ins.out}: a block's argument must be a vector", ins.span)
        elif isinstance(ins, MatMul):
            if ins.weight not in matrices:
                errors.error(f"'{ins.weight}' is not a matrix param", ins.span)
                break
            out = _verify_matmul(program, ins, ops[0], key, errors)
        elif isinstance(ins, Dot):
            if ops[0] is None or key(ops[0]) != key(ops[1]) and not _grouped(
                    dims, ops[0], ops[1], ins.over):
                errors.error("dot needs two vectors of the same dim (per head, keys may have "
                             "a whole fraction of the queries' heads)", ins.span)
            out = None
            if ins.over is not None:
                out = heads_dim_name(ops[0], ins.over)
                if ins.over not in dims or out not in dims:
                    errors.error(f"dot over {ins.over}: it must be a dim that divides "
                                 f"{ops[0]}", ins.span)
                if not program.has_tokens:
                    errors.error("a per-head dot needs a sequence (token or position inputs)",
                                 ins.span)
        elif isinstance(ins, Mix):
            out = _verify_mix(program, ins, ops, key, errors)
        elif isinstance(ins, Delta):
            out = verify_delta(program, ins, ops, key, errors)
        elif isinstance(ins, Route):
            out = _verify_route(ins, ops, dims, key, errors)
        elif isinstance(ins, RouteIn):
            out = _verify_route_in(ins, ops, dims, errors)
        elif isinstance(ins, Prepend):
            token = program.param_table.get(ins.token)
            if (token is not None and len(token.shape) != 1 or ops[0] is None
                    or program.spatial.get(ins.token) is not None or key(ops[0]) != key(ops[1])):
                errors.error(f"prepend: {ins.token} must be a vector param, or a vector per "
                             f"sequence, of {ins.arg}'s dim", ins.span)
            if ins.seq not in dims or dims[ins.seq].infinite:
                errors.error(f"prepend: the sequence {ins.seq} must be a finite dim", ins.span)
                break
            out = ops[1]
        elif isinstance(ins, Mean):
            if ops[0] is None or ins.start < 0 or not program.has_tokens:
                errors.error("mean: a vector per token of a sequence, averaged from a token "
                             "index >= 0 on", ins.span)
            out = ops[0]
        elif isinstance(ins, Relayout) and ins.merge is not None:
            out = _verify_merge(program, ins, ops[0], errors)
        elif isinstance(ins, Relayout):
            _verify_relayout(program, ins, ops[0], errors)
            out = ops[0]
        elif isinstance(ins, Nonlin) and ins.fn in _MOVES:
            out = _MOVES[ins.fn](program, ins, ops, key, errors)
        elif isinstance(ins, Nonlin) and ins.fn == SPREAD:
            out = program.value_dims[ins.out] if len(ins.args) == 1 and ins.over else None
            if out is None or ops[0] is None:
                errors.error("spread(g, dh): g a vector of H entries and dh a declared dim, "
                             "H·dh the size of a declared dim (not two dims that both grow)",
                             ins.span)
        else:
            if isinstance(ins, Nonlin):
                _verify_arity(program, ins, errors)
            vectors = [o for o in ops if o is not None]
            scalar_factor = isinstance(ins, Nonlin) and ins.fn == MUL and len(vectors) < len(ops)
            gain = _per_head(program, ins, ops, errors)
            if len({key(o) for o in ops}) != 1 and not scalar_factor and not gain:
                errors.error("elementwise operands must have the same dim", ins.span)
            out = next((o for o in vectors if o != gain), None) if gain else (
                vectors[0] if vectors else None)
        define(ins.out, out, ins.span)
    if not errors.errors:  # every operand defined: which sequence each value runs over
        check_sequences(program, errors)
        check_ranges(program, errors)  # constants and sqrt, on what they may apply to
        _verify_cat_products(program, errors)
    _verify_blocks(program, defined, key, errors)
    spans = tuple(program.output_spans) + (None,) * len(program.outputs)  # spans are optional
    for name, span in zip(program.outputs, spans[: len(program.outputs)], strict=True):
        if name not in defined or name in matrices:
            errors.error(f"output '{name}' is not a defined vector", span)
    if not program.outputs:
        errors.error("the program has no output")
    errors.raise_if_any(SemanticError)
    return program


def _verify_one_hot(ins, name: str, kind: str, errors: Collector) -> None:
    """A one-hot input is read by a lookup (W @ tok), or its windows by at(g, w) (a pair's
    offset, Swin V2's); the emitted module holds ids (or builds them), never the one-hot
    vectors the rules would read, so a function of them would compute nothing it derives."""
    if isinstance(ins, MatMul) and ins.arg == name or isinstance(ins, Nonlin) and \
            ins.fn == AT and ins.args[-1] == name:
        return
    errors.error(f"the {kind} input {name} is one-hot ids, which only a lookup reads "
                 f"(W @ {name}): the emitted module holds the ids, not their one-hot vectors, "
                 "for anything else to read", ins.span,
                 f"look it up first (E @ {name}) and use the embedding")


def _verify_inputs(program: Program, dims, define, errors: Collector) -> None:
    """The dims are finite or a multiple of the width; each input names declared dims, and a
    sequence (a finite one) exactly when it has tokens."""
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


def _verify_relayout(program: Program, ins: Relayout, dim: str | None,
                     errors: Collector) -> None:
    """tokens(h, T) reads an image's pixels as T's tokens, image(t, H, W) lays tokens out as an
    H×W image: one of the two, of a vector, over finite dims of as many tokens as pixels."""
    dims = program.dim_table
    if ins.tail:  # tail(h, S): the sequence rules check S against h's sequence
        if dim is None or ins.seq not in dims or dims[ins.seq].infinite:
            errors.error("tail(h, S): a vector, and a finite dim", ins.span)
        elif program.spatial.get(ins.arg) is not None:
            errors.error(f"tail: {ins.arg} is an image, not a vector per token", ins.span)
        return
    named = (ins.seq,) if ins.grid is None else ins.grid
    if dim is None or (ins.seq is None) == (ins.grid is None) or any(
            d not in dims or dims[d].infinite for d in named):
        errors.error("tokens(h, T) or image(t, H, W): a vector, and finite dims", ins.span)
        return
    pixels = program.spatial.get(ins.arg) if ins.grid is None else tuple(
        dims[d].size for d in ins.grid)
    if ins.grid is None and pixels is None:
        errors.error(f"tokens: {ins.arg} is not an image", ins.span)
    elif ins.grid is None and pixels[0] * pixels[1] != dims[ins.seq].size:
        errors.error(f"tokens: {ins.arg}'s {pixels[0]}x{pixels[1]} pixels are not the "
                     f"{dims[ins.seq].size} tokens of {ins.seq}", ins.span)
    elif ins.grid is not None and program.spatial.get(ins.arg) is not None:
        errors.error(f"image: {ins.arg} is an image already", ins.span)


def _verify_merge(program: Program, ins: Relayout, dim: str | None,
                  errors: Collector) -> str | None:
    """merge2x2(h, D): h an image of even height and width, D four times its channels."""
    dims = program.dim_table
    pixels = program.spatial.get(ins.arg)
    d, c = dims.get(ins.merge), dims.get(dim or "")
    four = d is not None and c is not None and (
        d.mult == 4 * c.mult if d.infinite and c.infinite else
        not d.infinite and not c.infinite and d.size == 4 * c.size)
    if pixels is None or pixels[0] % 2 or pixels[1] % 2 or not four:
        errors.error(f"merge2x2({ins.arg}, {ins.merge}): an image of even height and width, "
                     "and a dim of four times its channels", ins.span)
        return None
    return ins.merge


def _verify_matmul(program: Program, ins: MatMul, arg: str | None, key,
                   errors: Collector) -> str:
    """W @ h: h's dim is W's fan-in (a grouped kernel's, times its groups); gives the fan-out."""
    shape = program.param_table[ins.weight].shape
    fan_out, fan_in = (shape[1], shape[0]) if ins.transposed else shape[:2]
    _verify_kernel(program, ins, shape, errors)
    groups = ins.geometry.groups if ins.geometry is not None else 1
    if groups != 1 and not _grouped_fan_in(program.dim_table, fan_in, arg, groups):
        errors.error(f"{ins.weight} @ {ins.arg}: {groups} groups of fan-in {fan_in} do "
                     f"not make {arg}", ins.span)
    elif groups == 1 and key(arg) != key(fan_in):
        errors.error(f"{ins.weight} @ {ins.arg}: fan-in {fan_in} does not match {arg}", ins.span)
    return fan_out


def _grouped_fan_in(dims: dict, fan_in: str, arg: str | None, groups: int) -> bool:
    """A grouped convolution's kernel reads in/groups of its image's channels, both ∝ n."""
    a, b = dims.get(fan_in), dims.get(arg or "")
    return a is not None and b is not None and a.infinite and b.infinite \
        and a.mult * groups == b.mult


def _verify_kernel(program: Program, ins: MatMul, shape: tuple, errors: Collector) -> None:
    """A kernel applies to an image, and only a kernel has a convolution's geometry."""
    if ins.geometry is not None and len(shape) != 4:
        errors.error(f"{ins.weight} has a convolution's geometry but is not a kernel", ins.span)
    if len(shape) == 4 and program.spatial.get(ins.arg) is None:
        errors.error(f"{ins.weight} is a convolution kernel, but {ins.arg} is not an image",
                     ins.span)


def _verify_params(program: Program, dims: dict, defined: dict, define, errors: Collector) -> set:
    """Each param's dims declared and its rank known; returns the matrix (and kernel) names,
    which are defined but are no vectors."""
    matrices = set()
    for p in program.params:
        for d in p.shape:
            if d not in dims:
                errors.error(f"undeclared dim '{d}'", p.span)
        if len(p.shape) not in (0, 1, 2, 3, 4):
            errors.error(f"param {p.name} must be a scale, a vector, a matrix or a kernel", p.span)
        if len(p.shape) in (3, 4) and any(d in dims and dims[d].infinite
                                          for d in p.shape[-2:]):
            errors.error(f"kernel {p.name}: its spatial size must be finite", p.span)
        if len(p.shape) >= 2 and len(p.shape) != 3:
            matrices.add(p.name)
            if p.name in defined or p.name in dims:
                errors.error(f"'{p.name}' is defined twice", p.span)
            defined[p.name] = "<matrix>"
        else:
            define(p.name, p.shape[0] if p.shape else None, p.span)
    _verify_depthwise(program, errors)
    _verify_standardised(program, errors)
    return matrices


def _verify_standardised(program: Program, errors: Collector) -> None:
    """A standardised param (``standardised(eps)``, eps > 0) is a matrix or a convolution
    kernel, read only as the weight of ``W @ x`` or ``conv``: its rows are standardised over
    their fan-in, which ``W.T`` would not read as its fan-in."""
    for p in program.params:
        if p.standardised is None:
            continue
        if len(p.shape) not in (2, 4) or not p.standardised > 0:
            errors.error(f"standardised param {p.name}: a matrix or a kernel [out, in, kh, kw] "
                         "with eps > 0", p.span)
        dims = [program.dim_table.get(d) for d in p.shape[1:]]
        if all(d is not None and not d.infinite for d in dims) and \
                math.prod(d.size for d in dims) < 3:
            # a row of one entry standardises to 0, one of two to ±1: no direction to train
            errors.error(f"{p.name} is standardised over a fan-in of "
                         f"{math.prod(d.size for d in dims)}: a row of one entry standardises "
                         "to 0 and one of two to ±1 whatever the weight, so it has nothing to "
                         "train (its gradient is 0)", p.span,
                         help="give it a fan-in of 3 or more, or leave it plain")
        for ins in program.uses(p.name):
            if not isinstance(ins, MatMul) or ins.transposed:
                errors.error(f"the standardised param {p.name} is read only as the weight of "
                             "W @ x or conv(K, h, ...), whose fan-in its rows are "
                             "standardised over", ins.span)


def _verify_depthwise(program: Program, errors: Collector) -> None:
    """A depthwise kernel [c, kh, kw] is a vector of dim c (a gain per channel, with a finite
    window), read only as the kernel of ``dwconv(K, h)``, whose h is an image, or (kh = 1) of
    ``tconv(K, h, p)``, 0 <= p < kw, whose h is no image (its tokens: the sequences' check)."""
    for ins in program.body:
        if isinstance(ins, Nonlin) and ins.fn == DWCONV:
            p = program.param_table.get(ins.args[0])
            if p is None or not p.depthwise or ins.args[1] not in program.spatial \
                    or program.spatial[ins.args[1]] is None:
                errors.error("dwconv(K, h): K must be a depthwise kernel [c, kh, kw] and h an "
                             "image", ins.span)
        elif isinstance(ins, Nonlin) and ins.fn == TCONV:
            p = program.param_table.get(ins.args[0])
            sizes = [program.dim_table[d].size if d in program.dim_table else 0
                     for d in p.shape] if p is not None and p.depthwise else [0, 0, 0]
            if sizes[1] != 1 or program.spatial.get(ins.args[1]) is not None \
                    or not isinstance(ins.index, int) or isinstance(ins.index, bool) \
                    or not 0 <= ins.index < sizes[2] or ins.geometry is not None:
                errors.error("tconv(K, h, p): K must be a kernel [c, one, k] (one of size 1), "
                             "h a vector per token, not an image, and 0 <= p < k", ins.span)
        elif isinstance(ins, Nonlin) and ins.geometry is not None:
            errors.error(f"{ins.fn} has a convolution's geometry but is not dwconv", ins.span)
        elif any(o in program.param_table and program.param_table[o].depthwise
                 for o in ins.operands):
            errors.error("a depthwise kernel is read only as dwconv's or tconv's first argument",
                         ins.span)


def _per_head(program: Program, ins, ops: list, errors: Collector) -> str | None:
    """The head dim of a gain that multiplies every head of the other factor alike (a vector
    param of a dim dividing the other's), or None; a norm per head must be over a head dim
    that divides its vector's dim."""
    dims = program.dim_table
    if isinstance(ins, LinComb):  # a bias of a head dim added to every head alike
        vectors = [o for o in ops if o is not None]
        return _of_heads(program, ins, next((
            d for a, d in zip(ins.operands, ops, strict=True)
            if a in program.param_table and any(per_head(dims, d, o) for o in vectors)), None),
            "sum", errors)
    if not isinstance(ins, Nonlin):
        return None
    if ins.over is not None and (
        ins.fn not in ("layernorm", "rmsnorm", "groupnorm") or ins.over not in dims
        or ops[0] is None or heads_dim(dims, ops[0], ins.over) is None
    ):
        errors.error(f"{ins.fn} per head of {ins.over}: needs a norm and a head dim that "
                     "divides the vector's dim", ins.span)
    if ins.fn != MUL or len(ops) != 2:
        return None
    return _of_heads(program, ins, next((
        d for a, d, other in ((ins.args[0], ops[0], ops[1]), (ins.args[1], ops[1], ops[0]))
        if a in program.param_table and per_head(dims, d, other)), None), "product", errors)


def _verify_at(program: Program, ins: Nonlin, ops: list, errors: Collector) -> str | None:
    """``at(g, win)``: g a vector (its rows over win's offsets, the sequences' check) and win a
    ``windows`` input. Returns g's dim."""
    win = next((i for i in program.inputs if ins.args[-1] == i.name), None)
    if len(ins.args) != 2 or ops[0] is None or win is None or win.kind != "windows" \
            or ins.over is not None or ins.index is not None \
            or program.spatial.get(ins.args[0]) is not None:
        errors.error("at(g, win): g a vector with one row per offset of the windows input win",
                     ins.span)
    return ops[0]


def _verify_shift(ins: Nonlin, arg: str | None, errors: Collector) -> str | None:
    """``shift(h, k)``: h a vector (which tokens it has, the sequences' check) and k a whole
    number other than 0. Returns h's dim."""
    if len(ins.args) != 1 or arg is None or not isinstance(ins.index, int) \
            or isinstance(ins.index, bool) or ins.index == 0 or ins.over is not None:
        errors.error("shift(h, k): h a vector per token and k a whole number of tokens, not 0",
                     ins.span)
    return arg


def _verify_place(ins: Nonlin, ops: list, key, errors: Collector) -> str | None:
    """``place(v, h, k)``: v and h vectors of one dim (which tokens each has, the sequences'
    check) and k a whole number >= 0. Returns h's dim."""
    if len(ins.args) != 2 or None in ops or key(ops[0]) != key(ops[1]) \
            or not isinstance(ins.index, int) or isinstance(ins.index, bool) or ins.index < 0 \
            or ins.over is not None:
        errors.error("place(v, h, k): v and h vectors per token of one dim and k a whole number "
                     "of tokens, 0 or more", ins.span)
    return ops[1] if len(ops) == 2 else None


def _verify_pick(program: Program, ins: Nonlin, arg: str | None,
                 errors: Collector) -> str | None:
    """``pick(y, D, i1, ...)``: y a vector of a finite dim, D a declared finite dim of as many
    coordinates as ids, each id a whole number below y's dim. Returns D."""
    dims = program.dim_table
    ids = ins.index if isinstance(ins.index, tuple) else ()
    y, d = dims.get(arg or ""), dims.get(ins.over or "")
    if len(ins.args) != 1 or y is None or d is None or y.infinite or d.infinite \
            or not ids or len(ids) != d.size or any(
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < y.size
                for i in ids):
        errors.error("pick(y, D, i1, ...): y a vector of a finite dim, D a finite dim of as "
                     "many coordinates as ids, each id a coordinate of y", ins.span)
        return None
    return ins.over


def _verify_rms(program: Program, ins: Nonlin, arg: str | None,
                errors: Collector) -> str | None:
    """``rms(x, D)``: x a vector of a declared dim (not viewed per head), D a declared dim of one
    coordinate. Returns D."""
    dims = program.dim_table
    d = dims.get(ins.over or "")
    if len(ins.args) != 1 or arg not in dims or d is None or d.infinite or d.size != 1:
        errors.error("rms(x, D): x a vector of a declared dim, D a declared dim of one "
                     "coordinate (`dim D = 1`)", ins.span)
        return None
    return ins.over


def _verify_part(program: Program, ins: Nonlin, arg: str | None,
                 errors: Collector) -> str | None:
    """``part(x, d, i)``: x a vector whose dim is a whole number k of d's at every width (a
    fixed k: d and x's dim both finite, or both growing), and 0 <= i < k. Returns d."""
    dims = program.dim_table
    d = dims.get(ins.over or "")
    x = dims.get(arg or "")
    k = part_count(x, d)
    if len(ins.args) != 1 or k is None or k.denominator != 1 or not (
            isinstance(ins.index, int) and 0 <= ins.index < k):
        errors.error("part(x, d, i): x a vector of k·d coordinates (k fixed: d and x's dim "
                     "both finite or both growing) and i a whole number, 0 <= i < k", ins.span)
        return None
    return ins.over


def _verify_cat(program: Program, ins: Nonlin, ops: list, errors: Collector) -> str | None:
    """``cat(a, b, ..., D)``: two or more vectors (no params, no scalars), each of a declared
    dim, all finite (D finite and their sum) or all proportional to the width (D too, its
    proportion their sum): either way each part is a fixed share of the whole. Returns D."""
    dims = program.dim_table
    parts = [dims.get(o or "") for o in ops]
    d = dims.get(ins.over or "")
    ok = len(ins.args) >= 2 and d is not None and all(p is not None for p in parts) and not any(
        a in program.param_table for a in ins.args)
    if ok and d.infinite:
        ok = all(p.infinite for p in parts) and sum(p.mult for p in parts) == d.mult
    elif ok:
        ok = not any(p.infinite for p in parts) and sum(p.size for p in parts) == d.size
    if not ok:
        errors.error("cat(a, b, ..., D): two or more vectors (not params), each of a finite "
                     "dim, or each of a dim proportional to the width, and D the dim of their "
                     "sizes summed", ins.span)
        return None
    why = ins.heads and (ins.heads not in dims and f"{ins.heads} is no declared dim" or
                         cat_heads_error(parts, d, dims[ins.heads], program.width.base))
    if why:
        errors.error(f"cat(..., {ins.over}, {ins.heads}): {why}", ins.span)
        return None
    return ins.over


def _verify_cat_products(program: Program, errors: Collector) -> None:
    """A product (``mul``, ``dwconv``), ``dot`` or ``ddot`` of vectors built, coordinate by
    coordinate, from different concatenations (``cat``): the engine takes a concatenation to be
    as large as its largest part (its RMS), which a product of two such vectors is only where
    their largest parts meet; built from different ones (``cat(a, b, D) * cat(b, a, D)``) they
    may not, and the product's size would be overstated. A matmul's output has no parts (every
    coordinate reads them all); anything else keeps its operands'. Reported at the product."""
    origin: dict[str, frozenset] = {}
    for _ in range(2):  # a block's back edge is read before it is computed: twice round
        for ins in program.body:
            if isinstance(ins, Nonlin) and ins.fn == CAT:
                origin[ins.out] = frozenset((ins.out,))
            elif isinstance(ins, (MatMul, Dot)) or isinstance(ins, Nonlin) and ins.fn in (
                    DDOT, HDOT):
                origin[ins.out] = frozenset()
            else:
                ops = (ins.values,) if isinstance(ins, Mix) else ins.operands
                ops = (*ops, ins.back) if isinstance(ins, Stream) else ops
                origin[ins.out] = frozenset().union(*(origin.get(o, frozenset()) for o in ops))
    for ins in program.body:
        if isinstance(ins, Dot) or isinstance(ins, Nonlin) and ins.fn in (*PRODUCTS, DDOT, HDOT):
            sides = [origin.get(o, frozenset()) for o in ins.operands]
            if len({s for s in sides if s}) > 1:  # two factors of different concatenations
                errors.error("a product of two vectors built from different concatenations "
                             f"({', '.join(sorted(sides[0] | sides[1]))}): each is as large as "
                             "its largest part, and their product is only where those parts "
                             "meet, which the engine cannot tell", ins.span,
                             "multiply values built from one concatenation, or concatenate "
                             "the products of the parts")


def _of_heads(program: Program, ins, gain: str | None, what: str,
              errors: Collector) -> str | None:
    """``gain``, after checking that it is a head dim of the program (the dim some per-head
    dot, norm or spread splits a vector into heads of) or of one entry (a number for every
    coordinate: ReZero's alpha). A param of 8 entries times (or plus) a vector of n is no
    gain (or bias) of heads the program has."""
    heads = {i.over for i in program.body if getattr(i, "over", None) is not None}
    one = gain is not None and program.dim_table[gain].size == 1  # one number for every entry
    if gain is not None and gain not in heads and not one:
        errors.error(f"a {what} of a vector param of {gain} and a vector of another dim: a "
                     "gain or bias applies to every head alike only where its dim is a head "
                     "dim of the program, and no dot, per-head norm or spread here splits a "
                     f"vector into heads of {gain}", ins.span,
                     f"give the param the other term's dim, or use {gain} as the head dim it "
                     "is (dot(q, k, dh), rmsnorm(q, dh))")
    return gain


def _verify_arity(program: Program, ins: Nonlin, errors: Collector) -> None:
    """A known function of one argument, or two: a product's factors (``mul``, ``dwconv``), or
    a softmax's logits and its sink (a vector param, one logit per head)."""
    arity = (2,) if ins.fn in PRODUCTS else (1, 2) if ins.fn in SOFTMAXES else (1,)
    if ins.fn not in (*PRODUCTS, *FUNCTIONS) or len(ins.args) not in arity:
        errors.error(f"unknown function {ins.fn}/{len(ins.args)}", ins.span)
    elif ins.fn in SOFTMAXES and len(ins.args) == 2 and not _merged_logits(program, ins) and (
            ins.args[1] not in program.param_table
            or len(program.param_table[ins.args[1]].shape) != 1):
        errors.error(f"{ins.fn} with a sink: attention logits, then a vector param with one "
                     "logit per head, or attention logits of the same heads over other keys",
                     ins.span)


def _merged_logits(program: Program, ins: Nonlin) -> bool:
    """A softmax's second argument that is logits as its first is (computed, of the same
    dim: the same heads), over another sequence's keys (ir/sequences.py checks which)."""
    a, b = ins.args
    dims = program.value_dims
    return b not in program.param_table and dims.get(b) is not None and dims.get(b) == dims.get(a)


def _verify_route(ins: Route, ops: list, dims: dict, key, errors: Collector) -> str | None:
    """One finite gate per expert, experts of one dim, and 1 <= k <= their number."""
    gates = dims.get(ops[0]) if ops[0] is not None else None
    if gates is None or gates.infinite or gates.size != len(ins.experts):
        errors.error(f"route: the gates {ins.gates} must have one entry per expert (a finite dim "
                     f"of size {len(ins.experts)})", ins.span)
    if any(o is None for o in ops[1:]) or len({key(o) for o in ops[1:]}) != 1:
        errors.error("route: the experts must be vectors of one dim", ins.span)
    if not 1 <= ins.k <= len(ins.experts):
        errors.error(f"route: k = {ins.k} must be between 1 and the number of experts", ins.span)
    return ops[1]


def _verify_route_in(ins: RouteIn, ops: list, dims: dict, errors: Collector) -> str | None:
    """Finite gates, an expert among them, 1 <= k <= their number, and a vector input."""
    gates = dims.get(ops[0]) if ops[0] is not None else None
    if gates is None or gates.infinite:
        errors.error(f"route_in: the gates {ins.gates} must be a vector of a finite dim, one "
                     "entry per expert", ins.span)
    elif not (0 <= ins.expert < gates.size and 1 <= ins.k <= gates.size):
        errors.error(f"route_in: expert {ins.expert} and k = {ins.k} must be below and at "
                     f"most the {gates.size} experts", ins.span)
    if ops[1] is None:
        errors.error("route_in: the expert's input must be a vector", ins.span)
    return ops[1]


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
