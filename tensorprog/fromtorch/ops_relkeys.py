"""Transformer-XL's relative attention terms beside its content logits (Funnel's), refused with
what they compute.

transformers' FunnelRelMultiheadAttention adds two terms to each head's logits q_i · k_j (its
query biases are traced: ops_scaledparam.py):

* the positional term, ``einsum("td,dnh->tnh", r, r_kernel)`` then ``einsum("binh,tnh->bnit",
  q + v, r_head)`` and a relative shift: (q_i + v) · W_r r_{i-j}, r_p a fixed sinusoid of
  offset p over the model's d features (its frequencies set by d), W_r a param [d, H, dh]. These
  are keys of the offsets, not of a sequence's tokens: the language's relative positions are a
  learned number per head and offset bucket (T5's ``R @ rel``), and its logits pair a query
  with a sequence's keys.
* the token-type term, ``einsum("bind,snd->bnis", q + r_s_bias, seg_embed)``: each head's query
  dotted with each of the s rows of a param [s, H, dh], one number per head, token and row,
  chosen per pair of tokens by whether their segments match and zeroed at the class token. The
  language reads a per-head vector only as attention's query, key or value.

Either needs a form of its own: for the first, a float input of the offsets' sinusoids whose
dim is the width, a hidden-like layer W_r of it, and a logit ``dot(q, W_r r, dh)`` read at
offset i - j (its µP then that of q·k: W_r of fan-in n, the logit's 1/dh); for the second, a
per-head readout of finitely many rows added to the logits through a constant choice per pair
of tokens. Until then each is refused at its einsum, which says what it is."""

from __future__ import annotations

from .values import Affine, Pointwise, PRef, Vec
from .where import refuse, strip_prefix

_HELP = (
    "trace the model without this term, or write the model as a program (docs/torch.md "
    "lists the relative positions the language reads)"
)


def refuse_relative_einsum(node, equation: str, operands) -> None:
    """Refuses an einsum of a 3-D param [a, H, dh] with a fixed table or a per-head vector,
    saying which of Transformer-XL's terms it is; returns for any other einsum."""
    if len(operands) != 2:
        return
    params = [x for x in operands if isinstance(x, PRef) and len(x.shape) == 3]
    if len(params) != 1:
        return
    p = params[0]
    first = operands[0] is p
    other = operands[1] if first else operands[0]
    ins, _, out = equation.replace(" ", "").partition("->")
    terms = ins.split(",")
    mine, theirs = (terms[0], terms[1]) if first else (terms[1], terms[0])
    if len(mine) != 3 or len(terms) != 2:
        return
    rows, heads, dh = mine
    name, shape = strip_prefix(p.target), list(p.shape)
    if (
        not isinstance(other, (Vec, Affine, Pointwise, PRef))
        and rows not in out
        and rows in theirs
        and heads in out
        and dh in out
    ):  # a constant: no param in it
        raise refuse(
            node,
            f"an einsum {equation!r} of a fixed table (no param in it: the "
            "sinusoids of Transformer-XL's and Funnel's relative offsets) with the "
            f"3-D param {name} of shape {shape}: relative attention's positional keys "
            "W_r r_p, one per offset p, which each query meets at offset i - j; the "
            "language's relative positions are a learned number per head and offset "
            "bucket (T5's R @ rel), and its logits pair a query with the keys of a "
            "sequence's tokens, not with vectors of the offsets",
            help=_HELP,
        )
    if (
        isinstance(other, (Vec, Affine, Pointwise))
        and rows in out
        and rows not in theirs
        and heads in out
        and heads in theirs
        and dh in theirs
        and dh not in out
    ):
        raise refuse(
            node,
            f"an einsum {equation!r} of a per-head vector with the 3-D param "
            f"{name} of shape {shape}: each head's vector dotted with each of the "
            "param's rows of that head (Funnel's token-type attention, one number per "
            "head, token and row, joining the logits by whether two tokens' segments "
            "match): the language reads a per-head vector only as attention's query, "
            "key or value",
            help=_HELP,
        )
