"""Which sequence every value of a program runs over: the token axes the emitted module carries.

A program may have several sequence dims, one per sequence (an encoder-decoder's source and
target). A value built from token, position or relative inputs carries their sequence: one
value per token of ``S`` (tag ``("S",)``), or per (query, key) token pair (``("T", "S")``: the
attention logits of queries from T over keys from S, and a relative position bias). Params,
scales and plain vector inputs carry none (``()``) and broadcast over any.

Only attention reads one sequence from another: ``dot(q, k, dh)`` pairs q's tokens with k's
(cross-attention when they differ) and ``mix(p, v)`` sums v over p's key tokens, giving a value
on p's query tokens. Every other instruction acts token by token, so its operands must share a
sequence: adding a source token's vector to a target token's has no meaning (the sequences have
different lengths), and neither has a causal mask between two sequences. The engine's rules do
not depend on the tokens (each is a finite sum over them), so this is all a second sequence
changes; :func:`check_sequences` refuses the rest, with the instruction's span.
"""

from __future__ import annotations

from ..errors import Collector
from .program import RELATIVE_KINDS, Dot, Mix, Nonlin, Program, Stream

Tag = tuple[str, ...]


def _show(tag: Tag) -> str:
    if not tag:
        return "no sequence"
    if len(tag) == 1:
        return f"the tokens of {tag[0]}"
    return f"the token pairs ({tag[0]}, {tag[1]})"


def value_sequences(program: Program, errors: Collector | None = None) -> dict[str, Tag]:
    """The sequence tag of every value; with ``errors``, each instruction that combines values
    of different sequences (or masks a cross-attention causally) is reported there."""
    tags: dict[str, Tag] = {}
    for i in program.inputs:
        tags[i.name] = (() if i.seq is None else (i.seq, i.seq) if i.kind in RELATIVE_KINDS
                        else (i.seq,))
    tags.update({p.name: () for p in program.params})

    def problem(message: str, ins, help_: str) -> None:
        if errors is not None:
            errors.error(message, ins.span, help_)

    for ins in program.body:
        if isinstance(ins, Stream):
            tags[ins.out] = tags.get(ins.init, ())
            continue
        ops = [tags.get(o, ()) for o in ins.operands]
        if isinstance(ins, Dot) and ins.over is not None:
            q, k = ops
            if len(q) != 1 or len(k) != 1:
                problem("a per-head dot pairs query and key tokens, but its arguments run "
                        f"over {_show(q)} and {_show(k)}", ins,
                        "build queries and keys as vectors per token (e.g. Wq @ h), not from "
                        "attention logits")
                tags[ins.out] = ()
                continue
            tags[ins.out] = (q[0], k[0])
            continue
        if isinstance(ins, Mix):
            p, v = ops
            if len(p) != 2 or v != p[1:]:
                problem("mix(p, v) sums the values over the key tokens of the weights "
                        f"p, {_show(p)}, but the values run over {_show(v)}", ins,
                        "take keys and values from the same sequence: in cross-attention "
                        "both read the encoder's output")
                tags[ins.out] = p[:1]
                continue
            tags[ins.out] = p[:1]
            continue
        if isinstance(ins, Nonlin) and ins.fn == "first":  # one token's vector: no sequence
            tags[ins.out] = ()
            continue
        found = list(dict.fromkeys(t for t in ops if t))
        if len(found) > 1:
            problem(f"this combines {_show(found[0])} with {_show(found[1])}, but an "
                    "elementwise operation pairs tokens of one sequence only", ins,
                    "read another sequence through attention: "
                    "mix(softmax(tau * dot(q, k, dh)), v) with k and v from it")
        tag = found[0] if found else ()
        if (isinstance(ins, Nonlin) and ins.fn == "causal_softmax" and len(tag) == 2
                and tag[0] != tag[1]):
            problem("causal_softmax masks later keys of the queries' own sequence, but its "
                    f"logits pair {tag[0]}'s tokens with {tag[1]}'s", ins,
                    "cross-attention reads every source token: use softmax")
        tags[ins.out] = tag
    return tags


def check_sequences(program: Program, errors: Collector) -> None:
    """Report in ``errors`` every instruction that mixes sequences (see the module)."""
    value_sequences(program, errors)
