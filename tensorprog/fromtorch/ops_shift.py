"""A sequence's token vectors moved by k tokens, zeros where none comes, traced as the
language's ``shift(h, k)`` (y_t = h_{t-k}).

MobileBERT's trigram input writes the next token's vector as ``F.pad(h[:, 1:], [0, 0, 0, 1])``
(``shift(h, -1)``) and the previous one's as ``F.pad(h[:, :-1], [0, 0, 1, 0])``
(``shift(h, 1)``); RWKV's token shift crops and pads at once, ``nn.ZeroPad2d((0, 0, 1, -1))``
(``shift(h, 1)``). Each is read exactly so only when what the pad adds on one side of the
tokens is what the slice (or the pad's crop) took off the other, by zeros, and nothing else is
padded: the same number of tokens, each another token's vector or 0. Any other pad of the
tokens is refused (a sequence one token longer, a token zeroed in place, a pad by another
value), as is a slice of the tokens that no such pad reads (ops_pool.py).
"""

from __future__ import annotations

from .values import Affine, Pointwise, TokensFrom, Vec
from .where import refuse

_PER_TOKEN = ("tok", "tok", "F")
_HELP = ("move the tokens with F.pad(h[:, k:], (0, 0, 0, k)) (each token reads the one k "
         "later, zeros at the end) or F.pad(h[:, :-k], (0, 0, k, 0)) (the one k earlier)")


class ShiftOps:
    """``F.pad`` of a slice of a per-token vector's tokens (or of the vector itself, cropping
    as much as it pads) that moves them by k tokens: ``shift(h, k)``; any other pad is the
    next class's (ConvOps': an image's, for the convolutions that read it)."""

    def op_pad(self, node, x, pad, mode="constant", value=None):
        shifted = self.token_shift(node, x, pad, mode, value)
        if shifted is None:
            refuse_longer_sequence(node, x, pad)
        return shifted if shifted is not None else super().op_pad(node, x, pad, mode, value)

    def token_shift(self, node, x, pad, mode, value) -> Vec | None:
        """``shift(h, k)`` for the pad ``node`` of ``x``; None when ``x`` is no per-token vector
        nor a slice of one's tokens (the caller's pads then read it)."""
        if isinstance(x, TokensFrom):
            h, size = x.vec, x.size
            cut = (x.start, 0 if x.end is None else size - x.end)  # taken off before, after
        elif isinstance(x, (Vec, Affine, Pointwise)) and _tags(x) == _PER_TOKEN \
                and any(int(p) < 0 for p in pad):
            h, size, cut = self.vec(x, node), int(self._shape(node.args[0])[1]), (0, 0)
        else:
            return None  # a pad that crops none of a vector's tokens: the next class's
        pads = [int(p) for p in pad]
        before, after = (pads[2:4] + [0, 0])[:2]
        # on each side the tokens taken off (the slice's, a negative pad's) and the zeros put
        # on: a move by k is k zeros on one side and k tokens off the other, nothing else
        off = (cut[0] + max(0, -before), cut[1] + max(0, -after))
        on = (max(0, before), max(0, after))
        k = on[0] - off[0]
        if len(pads) % 2 or len(pads) < 4 or any(pads[:2]) or any(pads[4:]) \
                or mode != "constant" or value not in (None, 0) or k == 0 \
                or on != (off[1], off[0]) or not abs(k) < size:
            what = f"h[:, {x.start or ''}:{'' if x.end is None else x.end}]" \
                if isinstance(x, TokensFrom) else "a (batch, tokens, features) vector h"
            raise refuse(node, f"a pad by {pads} ({mode}, value {value}) of {what} that does "
                         "not move its tokens by fewer than the sequence's, zeros where none "
                         "comes (the language's shift(h, k); the sequence keeps its length)",
                         help=_HELP)
        return Vec(self.emit_vector(node.name, f"shift({h.name}, {k})"), h.tags, h.dim)


def refuse_longer_sequence(node, x, pad) -> None:
    """A pad that adds tokens to a (batch, tokens, features) vector's sequence, nothing else
    (PEGASUS-X's encoder pads its token vectors to whole blocks before its first layer): refused
    as what it is. LongT5's pad of each head's queries, keys and values is another's
    (ops_blocks.py: its block-local attention). PEGASUS-X runs every layer over the padding
    tokens and masks them as keys, and its attention within blocks takes one softmax over the
    block's keys and those of learned global tokens, a second sequence that attends every token:
    the language's sequences keep their length, and its attention reads the keys of one
    sequence at a time."""
    tags = _tags(x)
    pads = [int(p) for p in pad]
    k = len(tags) - 2  # the pair of the pad that reaches the tokens (axis 1), from the last
    pair = pads[2 * k:2 * k + 2] if len(pads) >= 2 * k + 2 else []
    rest = pads[:2 * k] + pads[2 * k + 2:]
    if len(tags) < 3 or tags[:2] != ("tok", "tok") or "px" in tags or len(pair) != 2 \
            or pair == [0, 0] or min(pair) < 0 or any(rest):
        return
    before, after = pair
    t = int(node.args[0].meta["val"].shape[1])
    raise refuse(node, f"a pad of a sequence's {t} tokens by {before} before and {after} after "
                 f"(to {t + before + after}): the language's sequences keep their length. "
                 "(PEGASUS-X pads its encoder's token vectors to whole blocks, runs every layer "
                 "over the padding and masks it as keys; its attention within a block takes one "
                 "softmax over the block's keys and those of learned global tokens, a second "
                 "sequence that attends every token, which the language's attention over one "
                 "sequence's keys has no form for)",
                 help="pad each head's queries, keys and values only, as LongT5's block-local "
                 "attention does (traced as attention over the sequence), or trace a model "
                 "whose attention is over the whole sequence")


def _tags(x) -> tuple:
    src = x.src if isinstance(x, Pointwise) else x
    return tuple(getattr(src, "tags", None) or ())
