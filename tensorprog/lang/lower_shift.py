"""Lowering ``shift(h, k)``: h's token vectors moved k tokens later (y_t = h_{t-k}), zeros
where no token comes; k < 0 moves them earlier.

MobileBERT's trigram input feeds a linear layer each token's embedding beside its neighbours'
(``F.pad(e[:, 1:], (0, 0, 0, 1))``, ``e``, ``F.pad(e[:, :-1], (0, 0, 1, 0))``): the next
token's vector is ``shift(e, -1)``, the previous one's ``shift(e, 1)``. h must be a vector of a
declared dim with one value per token of one sequence (not attention logits, not an image, not
a token input's ids), and 0 < |k| < the sequence's length: a shift by 0 is h itself, and one by
the whole sequence or more leaves only zeros. The sequence checks are the verifier's
(``tensorprog.ir.sequences``), reported at the call.
"""

from __future__ import annotations

from ..ir.functions import SHIFT
from ..ir.program import Nonlin
from .ast import Call

_USAGE = ("write shift(h, k): h a vector per token, k a whole number of tokens, not 0 "
          "(shift(h, 1): each token reads the previous token's vector, shift(h, -1) the next "
          "one's; zeros where there is none)")


def shift_operands(low, node: Call):
    """(the operands to lower, the state): h, and the number of tokens k."""
    if len(node.args) != 2:
        low.errors.error(f"shift takes 2 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    k = node.args[1]
    sign = 1
    if type(k).__name__ == "Neg":
        k, sign = k.arg, -1
    if type(k).__name__ != "Num" or k.value.denominator != 1 or k.value == 0:
        low.errors.error("the second argument of shift must be a whole number of tokens, not 0",
                         node.args[1].span, _USAGE)
        return None, None
    return node.args[:1], (SHIFT, sign * int(k.value))


def lower_shift(low, node: Call, args: list, k: int, vec: type):
    """The Nonlin ``shift`` of a call, or None (errors reported)."""
    (h,) = args
    if h is None:
        return None
    if not isinstance(h, vec) or h.dim is None or h.dim not in low.dims \
            or h.dim in low.heads_dims:
        low.errors.error("shift moves the vectors of a sequence's tokens: it needs a vector of "
                         "a declared dim per token", node.args[0].span, _USAGE)
        return None
    arg = low.name_of(h, node.span)
    if low.pixels.get(arg) is not None:
        low.errors.error(f"shift moves a sequence's tokens, but {arg} is an image", node.span,
                         "read its pixels as tokens first, tokens(h, T)")
        return None
    if arg not in low.tokenwise or arg in {i.name for i in low.inputs}:
        kind = {i.name: i.kind for i in low.inputs}.get(arg)
        what = (_INPUT_KIND.get(kind, f"a {kind} input") if kind else
                "one vector per sequence" if arg in low.one_token else
                "built from params and vector inputs alone")
        low.errors.error(f"shift moves the vectors of a sequence's tokens, but {arg} has no "
                         f"tokens to move ({what})", node.args[0].span,
                         "shift a vector computed from a `tokens` input, e.g. the embedding "
                         "E @ tok")
        return None
    out = low.emit(Nonlin(low.fresh(low.target), SHIFT, (arg,), node.span, index=k), h.dim)
    return low.vec(out, h.dim)


# what an input holds, where shift is given one
_INPUT_KIND = {"tokens": "the input's one-hot ids", "patches": "the input's image patches, "
               "which a layer's map of them, W @ x, has as tokens", "vector": "a vector input"}
