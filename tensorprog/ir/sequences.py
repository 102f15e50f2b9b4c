"""Which sequence every value of a program runs over: the token axes the emitted module carries.

A program may have several sequence dims, one per sequence (an encoder-decoder's source and
target). A value built from token, position or relative inputs carries their sequence: one
value per token of ``S`` (tag ``("S",)``), or per (query, key) token pair (``("T", "S")``: the
attention logits of queries from T over keys from S, and a relative position bias). Params,
scales and plain vector inputs carry none (``()``) and broadcast over any.

A learned token prepended to a sequence (``prepend(c, h, T1)``, a vision transformer's class
token) makes a sequence of its own, one token longer: the value runs over T1, not over h's T, so
adding it to a value over T (positions of T rows) is refused as any other mix of sequences.

Only attention and place read one sequence from another: ``dot(q, k, dh)`` pairs q's tokens with k's
(cross-attention when they differ) and ``mix(p, v)`` sums v over p's key tokens, giving a value
on p's query tokens; ``place(v, h, k)`` puts v's tokens in place of some of h's, giving a value
on h's. Every other instruction acts token by token, so its operands must share a
sequence: adding a source token's vector to a target token's has no meaning (the sequences have
different lengths), and neither has a causal mask between two sequences. The engine's rules do
not depend on the tokens (each is a finite sum over them), so this is all a second sequence
changes; :func:`check_sequences` refuses the rest, with the instruction's span.
"""

from __future__ import annotations

from ..errors import Collector
from .ddot import DDOT, ddot_sequences
from .functions import AT, CAT, PLACE, SHIFT, TCONV
from .program import (
    RELATIVE_KINDS,
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
    Stream,
)
from .ssd import SSD, ssd_sequences
from .wkv import WKV, wkv_sequences

Tag = tuple[str, ...]


def _show(tag: Tag) -> str:
    if not tag:
        return "no sequence"
    if len(tag) == 1:
        return f"the tokens of {tag[0]}"
    return f"the token pairs ({tag[0]}, {tag[1]})"


def _check_dot(ins, ops: list[Tag], problem) -> Tag:
    """A per-head dot's token pairs: its query's tokens, its key's."""
    q, k = ops
    if len(q) != 1 or len(k) != 1:
        problem("a per-head dot pairs query and key tokens, but its arguments run "
                f"over {_show(q)} and {_show(k)}", ins,
                "build queries and keys as vectors per token (e.g. Wq @ h), not from "
                "attention logits")
        return ()
    return (q[0], k[0])


def _check_mix(ins, ops: list[Tag], problem) -> Tag:
    """mix(p, v)'s tokens: the weights' queries, once the values run over their keys."""
    p, v = ops
    if len(p) != 2 or v != p[1:]:
        problem("mix(p, v) sums the values over the key tokens of the weights "
                f"p, {_show(p)}, but the values run over {_show(v)}", ins,
                "take keys and values from the same sequence: in cross-attention "
                "both read the encoder's output")
    return p[:1]


def value_sequences(program: Program, errors: Collector | None = None) -> dict[str, Tag]:
    """The sequence tag of every value; with ``errors``, each instruction that combines values
    of different sequences (or masks a cross-attention causally) is reported there."""
    tags: dict[str, Tag] = {}
    for i in program.inputs:
        tags[i.name] = (() if i.seq is None else (i.queries or i.seq, i.seq)
                        if i.kind in RELATIVE_KINDS else (i.seq,))
    tags.update({p.name: () for p in program.params})

    def problem(message: str, ins, help_: str) -> None:
        if errors is not None:
            errors.error(message, ins.span, help_)

    prepends = {ins.seq for ins in program.body if isinstance(ins, Prepend)}
    for ins in program.body:
        if isinstance(ins, Stream):
            tags[ins.out] = tags.get(ins.init, ())
            continue
        ops = [tags.get(o, ()) for o in ins.operands]
        if isinstance(ins, Dot) and ins.over is not None:
            tags[ins.out] = _check_dot(ins, ops, problem)
            continue
        if isinstance(ins, Mix):
            tags[ins.out] = _check_mix(ins, ops, problem)
            continue
        if isinstance(ins, Delta):
            tags[ins.out] = _check_delta(ins, ops, problem)
            continue
        if merged_softmax(ins, ops):
            tags[ins.out] = _check_merged(program, ins, ops, problem)
            continue
        if isinstance(ins, Prepend):
            tags[ins.out] = (ins.seq,)
            _check_prepend(program, ins, ops, problem)
            continue
        if isinstance(ins, Relayout):
            tags[ins.out] = (ins.seq,) if ins.seq is not None else ()
            _check_relayout(program, ins, ops[0], problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn in ("first", "last"):  # one token's: no sequence
            tags[ins.out] = ()
            continue
        if isinstance(ins, Nonlin) and ins.fn == AT:  # rows over offsets read at token pairs
            tags[ins.out] = ops[1] if len(ops) == 2 else ()
            _check_at(program, ins, ops, problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == SSD:  # a recurrence on token pairs: ir/ssd.py
            tags[ins.out] = ssd_sequences(ins, ops, _show, problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == DDOT:  # token pairs of one sequence: ir/ddot.py
            tags[ins.out] = ddot_sequences(ins, ops, _show, problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == WKV:  # a recurrence per channel: ir/wkv.py
            tags[ins.out] = wkv_sequences(ins, ops, _show, problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == SHIFT:  # the same tokens, moved
            tags[ins.out] = ops[0]
            _check_shift(program, ins, ops[0], problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == TCONV:  # the same tokens, each of K read
            tags[ins.out] = ops[1]
            _check_tconv(program, ins, ops[1], problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == PLACE:  # h's tokens, some of them v's
            tags[ins.out] = ops[-1]
            _check_place(program, ins, ops, problem)
            continue
        if isinstance(ins, Nonlin) and ins.fn == CAT and len(set(ops)) > 1:
            # its parts side by side, token by token: not broadcast as a sum's operands are
            problem(f"cat puts its parts' coordinates side by side, token by token, but they "
                    f"run over {' and '.join(_show(t) for t in dict.fromkeys(ops))}", ins,
                    "concatenate vectors of one sequence (all per token of it, or all one "
                    "per sequence)")
            tags[ins.out] = ops[0]
            continue
        if isinstance(ins, Mean):  # a mean over the tokens: one vector per sequence
            tags[ins.out] = ()
            _check_mean(program, ins, ops[0], problem)
            continue
        found = list(dict.fromkeys(t for t in ops if t))
        longer = [t[0] for t in found if len(t) == 1 and t[0] in prepends]
        if len(found) > 1:
            problem(f"this combines {_show(found[0])} with {_show(found[1])}, but an "
                    "elementwise operation pairs tokens of one sequence only", ins,
                    f"{longer[0]} has learned tokens before the others (prepend): add what "
                    f"runs over it after prepend, positions over it too (`input pos : "
                    f"positions[{longer[0]}]`)" if longer else
                    "read another sequence through attention: "
                    "mix(softmax(tau * dot(q, k, dh)), v) with k and v from it")
        tag = found[0] if found else ()
        if (isinstance(ins, Nonlin) and ins.fn in ("softmax", "causal_softmax") and len(tag) == 2
                and program.dim_table[tag[1]].size == 1):
            problem(f"{ins.fn} over the key tokens of {tag[1]}, a sequence of 1 token, is the "
                    "constant 1: no gradient reaches its logits, which the attention rules "
                    "take to move", ins, f"give {tag[1]} 2 tokens or more (a smaller "
                    "reduction of the keys' image), or use the values without attention")
        if (isinstance(ins, Nonlin) and ins.fn == "causal_softmax" and len(tag) == 2
                and tag[0] != tag[1]):
            problem("causal_softmax masks later keys of the queries' own sequence, but its "
                    f"logits pair {tag[0]}'s tokens with {tag[1]}'s", ins,
                    "cross-attention reads every source token: use softmax")
        tags[ins.out] = tag
    for ins in program.body:  # a repetition's return value is the next repetition's argument
        if isinstance(ins, Stream) and ins.loops and tags.get(ins.back, ()) != tags[ins.out]:
            problem(f"block {ins.block} is repeated, so its return value is its next "
                    f"repetition's argument, but it returns values over "
                    f"{_show(tags.get(ins.back, ()))} from an argument over {_show(tags[ins.out])}",
                    ins, "return a value of the argument's sequence (a tail or a prepend "
                    "inside the block changes it), or apply the block once")
    return tags


def merged_softmax(ins, ops: list[Tag]) -> bool:
    """Whether ``ins`` is a softmax over two sets of attention logits (``softmax(a, b)``,
    lower_sink.py), rather than one or one with a sink (a param, over no sequence)."""
    return (isinstance(ins, Nonlin) and ins.fn in ("softmax", "causal_softmax")
            and len(ops) == 2 and len(ops[0]) == 2 and len(ops[1]) == 2)


def causal_parts(ins: Nonlin, ops: list[Tag]) -> tuple[bool, bool]:
    """Which of a merged softmax's two logit sets its causal mask applies to: those pairing
    the queries' sequence with itself (the decoder's own keys), none for ``softmax``."""
    causal = ins.fn == "causal_softmax"
    return tuple(causal and t[0] == t[1] for t in ops)  # type: ignore[return-value]


def _check_merged(program: Program, ins: Nonlin, ops: list[Tag], problem) -> Tag:
    """One softmax over two sets of keys for the same queries: the logits' queries of one
    sequence, their keys of two different ones (two sets over the same keys would count each
    key twice), and ``causal_softmax`` only where one set holds the queries' own keys, which it
    masks. Its tag: the first set's pairs, whose keys its weights are on."""
    (qa, ka), (qb, kb) = ops
    if qa != qb or ka == kb:
        problem(f"{ins.fn}(a, b) is one softmax over the keys of a and of b for the same "
                f"queries, but a runs over {_show(ops[0])} and b over {_show(ops[1])}", ins,
                "take both from the same queries, their keys from two different sequences: "
                "dot(q, k, dh) over the queries' own tokens, dot(q, kc, dh) over another's")
    elif ins.fn == "causal_softmax" and not any(causal_parts(ins, ops)):
        problem("causal_softmax masks later keys of the queries' own sequence, but neither "
                f"set of logits pairs {qa}'s tokens with themselves", ins,
                "keys of another sequence are all seen: use softmax(a, b)")
    return ops[0]


def _check_delta(ins: Delta, ops: list[Tag], problem) -> Tag:
    """The delta rule runs over the tokens of one sequence, in order (a recurrence: token t
    reads the state after tokens 1..t): its dots pair that sequence's tokens with themselves
    and b and g are vectors per token of it. Its tag: the dots' pairs."""
    sq, sk, b = ops[:3]
    g = ops[3] if len(ops) > 3 else ()  # delta(sq, sk, b): no decay per head
    seq = sq[:1]
    if len(sq) != 2 or sq[0] != sq[1] or sk != sq:
        problem("delta is a recurrence over the tokens of one sequence (each token reads the "
                f"state its earlier tokens left), but its dots run over {_show(sq)} and "
                f"{_show(sk)}", ins,
                "take queries and keys from one sequence: sq = dot(q, k, dk) and sk = "
                "dot(k, k, dk); a cross-sequence delta rule has no causal order")
    elif b not in (seq, ()) or g not in (seq, ()):
        problem(f"delta's b and g are one number per head, per token of {seq[0]} or for all "
                f"of them, but they run over {_show(b)} and {_show(g)}", ins,
                "compute them from the layer's input token by token, b = sigmoid(Wb @ h)")
    return sq if len(sq) == 2 else ()


def _check_mean(program: Program, ins: Mean, arg: Tag, problem) -> None:
    """A mean over the tokens of one sequence, from a token it has."""
    if len(arg) != 1:
        problem(f"mean averages the vectors of a sequence's tokens, but {ins.arg} runs over "
                f"{_show(arg)}", ins, "take the mean of a vector per token, e.g. the last "
                "block's output")
        return
    size = program.dim_table[arg[0]].size
    if ins.start >= size:
        problem(f"mean from token {ins.start} on, but {arg[0]} has {size} tokens (0 to "
                f"{size - 1})", ins, f"start at a token of {arg[0]}, e.g. mean(h, 1) after a "
                "class token")


def _check_at(program: Program, ins: Nonlin, ops: list[Tag], problem) -> None:
    """``at(g, win)``: g one row per offset of the windows' offsets (a value computed from an
    ``offsets`` input over win's offset dim), win a ``windows`` input."""
    kinds = {i.name: i for i in program.inputs}
    win = kinds.get(ins.args[-1])
    if len(ops) != 2 or win is None or win.kind != "windows":
        problem("at(g, win) reads g at each token pair's offset in the windows win, but its "
                "second argument is no windows input", ins,
                "give it an input declared `windows[T, B, H, W, s]`")
        return
    if ops[0] != (win.dim,) or ins.args[0] in kinds:
        what = (f"{ins.args[0]} is the offsets input itself (its coordinates, not a value per "
                "head)" if ins.args[0] in kinds else f"{ins.args[0]} runs over {_show(ops[0])}")
        problem(f"at(g, {win.name}) reads one row of g per offset of {win.name}'s {win.dim}, "
                f"but {what}", ins,
                f"compute g from `input c : offsets[{win.dim}, E]` by layers of each offset's "
                "coordinates (W2 @ relu(W1 @ c + b1))")


def _check_shift(program: Program, ins: Nonlin, arg: Tag, problem) -> None:
    """A shift of the tokens of one sequence (not of token pairs, not of an image, not of a
    token input's ids) by fewer tokens than it has: by more, only zeros are left."""
    image = program.spatial.get(ins.args[0]) is not None
    if len(arg) != 1 or image or ins.args[0] in {i.name for i in program.inputs}:
        what = ("an image" if image else "an input's one-hot ids"
                if len(arg) == 1 else f"a value over {_show(arg)}")
        problem(f"shift moves the vectors of a sequence's tokens, but {ins.args[0]} is {what}",
                ins, "shift a vector per token, e.g. the embedding E @ tok")
        return
    size = program.dim_table[arg[0]].size
    if abs(ins.index) >= size:
        problem(f"shift by {ins.index} tokens, but {arg[0]} has {size}: every token would read "
                "past the sequence, a vector of zeros", ins,
                f"shift by fewer than {size} tokens")


def _check_tconv(program: Program, ins: Nonlin, arg: Tag, problem) -> None:
    """A convolution over the tokens of one sequence (not of token pairs, not of a token
    input's ids: an image is the verifier's)."""
    if len(arg) != 1 or ins.args[1] in {i.name for i in program.inputs}:
        what = "an input's one-hot ids" if len(arg) == 1 else f"a value over {_show(arg)}"
        problem(f"tconv convolves a sequence's tokens, but {ins.args[1]} is {what}", ins,
                "convolve a vector per token, e.g. a layer's W @ (E @ tok)")


def _check_place(program: Program, ins: Nonlin, ops: list[Tag], problem) -> None:
    """v's tokens in place of h's tokens k .. k+S-1: both vectors per token of a sequence (not
    token pairs, images or a token input's ids), v's S tokens within h's from token k."""
    inputs = {i.name for i in program.inputs}
    for arg, tag in zip(ins.args, ops, strict=False):
        image = program.spatial.get(arg) is not None
        if len(tag) != 1 or image or arg in inputs:
            what = ("an image" if image else "an input's one-hot ids" if len(tag) == 1
                    else f"a value over {_show(tag)}")
            problem(f"place puts one sequence's token vectors in place of another's, but {arg} "
                    f"is {what}", ins, "place vectors per token, e.g. place(Wp @ v, E @ tok, k)")
            return
    (s,), (t,) = ops
    size, into = program.dim_table[s].size, program.dim_table[t].size
    if ins.index + size > into:
        problem(f"place puts {s}'s {size} tokens from token {ins.index} of {t}, but {t} has "
                f"{into} tokens (0 to {into - 1})", ins,
                f"place them from a token k with k + {size} <= {into}" if size <= into else
                f"place them into a sequence of {size} tokens or more")


def _check_relayout(program: Program, ins: Relayout, arg: Tag, problem) -> None:
    """tokens(h, T) reads an image (no sequence) as tokens; image(t, H, W) reads one
    sequence's tokens, as many as the image's pixels; tail(h, S) the last tokens of a longer
    sequence."""
    if ins.tail:
        size = program.dim_table[ins.seq].size
        if len(arg) != 1 or program.dim_table[arg[0]].size <= size:
            problem(f"tail keeps the last {size} tokens of a sequence of more, but {ins.arg} "
                    f"runs over {_show(arg)}" + (
                        f" of {program.dim_table[arg[0]].size} tokens" if len(arg) == 1
                        else ""), ins,
                    f"apply tail to a vector per token of a sequence longer than {ins.seq}")
    elif ins.merge is not None and arg:
        problem(f"merge2x2 merges an image's 2x2 blocks of pixels, but {ins.arg} runs over "
                f"{_show(arg)}", ins, "lay the tokens out as an image first, image(t, H, W)")
    elif ins.grid is None and arg:
        problem(f"tokens reads an image's pixels as a sequence, but {ins.arg} runs over "
                f"{_show(arg)}", ins, "apply tokens to an image-valued vector")
    elif ins.grid is not None:
        h, w = (program.dim_table[d].size for d in ins.grid)
        if len(arg) != 1 or program.dim_table[arg[0]].size != h * w:
            problem(f"image lays out the tokens of a sequence as {h}x{w} pixels, but "
                    f"{ins.arg} runs over {_show(arg)}" + (
                        f" of {program.dim_table[arg[0]].size} tokens" if len(arg) == 1
                        else ""), ins,
                    f"apply image to a vector per token of a sequence of {h * w} tokens")


def _check_prepend(program: Program, ins: Prepend, ops: list[Tag], problem) -> None:
    """A token param (or a vector per sequence) before the tokens of one sequence, giving a
    sequence one token longer."""
    token, arg = ops
    dims = program.dim_table
    if token:
        problem(f"prepend puts one vector per sequence before the tokens of a sequence, but "
                f"{ins.token} runs over {_show(token)}", ins,
                "read one token of it first, first(h)")
        return
    if len(arg) != 1:
        problem(f"prepend puts a learned token before the tokens of a sequence, but "
                f"{ins.arg} runs over {_show(arg)}", ins,
                "prepend to a vector per token, e.g. the patch embedding `E @ x`")
        return
    (seq,) = arg
    want = dims[seq].size + 1
    if dims[ins.seq].infinite or dims[ins.seq].size != want:
        size = "infinite" if dims[ins.seq].infinite else f"{dims[ins.seq].size} tokens"
        problem(f"prepend gives {seq}'s {dims[seq].size} tokens and one more, {want}, but "
                f"{ins.seq} has {size}", ins,
                f"declare the longer sequence `dim {ins.seq} = {want}` and its positions over it")


def prepended(program: Program, seq: str) -> tuple[str, int] | None:
    """The sequence that ``seq`` extends with learned tokens (``prepend(c, h, seq)``, nested
    for several) and how many it prepends; None when no ``prepend`` makes ``seq``. The emitted
    module counts such a sequence's positions from the tokens fed on the shorter one."""
    tags, count = value_sequences(program), 0
    while True:
        ins = next((i for i in program.body if isinstance(i, Prepend) and i.seq == seq), None)
        if ins is None or len(tags.get(ins.arg, ())) != 1:
            return (seq, count) if count else None
        seq, count = tags[ins.arg][0], count + 1


def check_sequences(program: Program, errors: Collector) -> None:
    """Report in ``errors`` every instruction that mixes sequences (see the module)."""
    value_sequences(program, errors)
    check_reaches(program, errors)


def check_reaches(program: Program, errors: Collector) -> None:
    """A relative input with a reach (``relative[T, B, r]``, LongT5's band of keys) is also a
    mask: the emitted module sets the logits of keys r or more tokens away to -inf before the
    softmax whose logits sum its bias (found from the softmax back through sums alone). Its
    bias ``R @ rel`` must therefore reach a softmax's logits through sums alone, and a softmax
    read one reach: anything else would compute the attention over every key, silently."""
    reach = {i.name: i.reach for i in program.inputs if i.reach is not None}
    if not reach:
        return
    carries = {name: {r} for name, r in reach.items()}  # a value summing a reach's bias
    for ins in program.body:
        if isinstance(ins, MatMul) and ins.arg in reach:
            carries[ins.out] = {reach[ins.arg]}
            continue
        read = [o for o in ins.operands if o in carries]
        if not read:
            continue
        got = set().union(*(carries[o] for o in read))
        softmax = isinstance(ins, Nonlin) and ins.fn in ("softmax", "causal_softmax")
        if isinstance(ins, LinComb) or softmax and read == [ins.args[0]]:
            if len(got) > 1:
                errors.error(f"{ins.fn if softmax else 'this sum'} adds relative biases of "
                             f"reaches {sorted(got)}: one softmax keeps the keys of one reach",
                             ins.span, "give the relative inputs of these logits one reach")
            if isinstance(ins, LinComb):
                carries[ins.out] = got
            continue
        errors.error(f"a relative bias of reach {min(got)} read other than summed into "
                     "attention logits that a softmax reads (the reach masks the keys r or more "
                     "tokens away in that softmax only)", ins.span,
                     "add R @ rel to the logits and take their softmax directly: "
                     "softmax(tau * dot(q, k, dh) + R @ rel)")
