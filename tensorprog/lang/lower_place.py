"""Lowering ``place(v, h, k)``: h's token vectors with its tokens k .. k+S-1 replaced by v's, in
order, v a vector per token of a sequence of S tokens.

Gemma 3 (ShieldGemma-2, PaliGemma-like image-text models) embeds the prompt's ids, the image's
placeholder tokens among them, and puts the image's features in their place: torch's
``inputs_embeds.masked_scatter(ids == image_token_id, image_features)``, whose mask is one block
of S whole tokens from token k in every sequence. ``place(Wp @ img, E @ tok, k)`` says that. v
and h must be vectors of one declared dim with one value per token of a sequence each (not
attention logits, not an image, not a token input's ids), and k a whole number, k + S at most
h's length: the sequence checks are the verifier's (``tensorprog.ir.sequences``), reported at
the call.
"""

from __future__ import annotations

from ..ir.functions import PLACE
from ..ir.program import Nonlin
from .ast import Call

_USAGE = ("write place(v, h, k): v and h vectors per token of one dim, k a whole number of "
          "tokens, 0 or more (place(v, h, 3): h's tokens 3 .. 3+S-1 replaced by v's S tokens)")


def place_operands(low, node: Call):
    """(the operands to lower, the state): v and h, and the first token k."""
    if len(node.args) != 3:
        low.errors.error(f"place takes 3 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    k = node.args[2]
    if type(k).__name__ != "Num" or k.value.denominator != 1 or k.value < 0:
        low.errors.error("the third argument of place must be a whole number of tokens, 0 or "
                         "more", k.span, _USAGE)
        return None, None
    return node.args[:2], (PLACE, int(k.value))


def lower_place(low, node: Call, args: list, k: int, vec: type):
    """The Nonlin ``place`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    inputs = {i.name for i in low.inputs}
    names = []
    for a, arg in zip(args, node.args, strict=False):
        if not isinstance(a, vec) or a.dim is None or a.dim not in low.dims \
                or a.dim in low.heads_dims:
            low.errors.error("place puts token vectors in place of others: it needs vectors of "
                             "a declared dim per token", arg.span, _USAGE)
            return None
        name = low.name_of(a, node.span)
        if low.pixels.get(name) is not None:
            low.errors.error(f"place puts a sequence's tokens, but {name} is an image",
                             arg.span, "read its pixels as tokens first, tokens(h, T)")
            return None
        if name not in low.tokenwise or name in inputs:
            what = ("is an input's one-hot ids" if name in inputs else
                    "has no tokens (one vector per sequence)" if name in low.one_token else
                    "has no tokens (built from params and vector inputs alone)")
            low.errors.error(f"place puts one sequence's token vectors in place of another's, "
                             f"but {name} {what}", arg.span,
                             "place vectors computed from a `tokens` or `patches` input, e.g. "
                             "place(Wp @ v, E @ tok, k)")
            return None
        names.append(name)
    if low.dims[args[0].dim].key() != low.dims[args[1].dim].key():
        low.errors.error(f"place of a vector of {args[0].dim} into one of {args[1].dim}: a "
                         "token's vector is replaced by one of the same dim", node.span, _USAGE)
        return None
    out = low.emit(Nonlin(low.fresh(low.target), PLACE, tuple(names), node.span, index=k),
                   args[1].dim)
    return low.vec(out, args[1].dim)
