"""Lowering ``prepend(c, h, T1)``: a learned token (the vector param c) before the tokens of h, a
sequence of T1 tokens (a vision transformer's class token, read at the end by ``first``), and
``prepend(c, h, T1, k)``: before h's token k (DINOv2's register tokens after its class token).

The call names the longer sequence because the language's sequences are dims: positions over
it (``input pos : positions[T1]``) and values computed from the result run over T1, which must
be one token longer than h's sequence (checked with the other sequence rules, in
:mod:`tensorprog.ir.sequences`). What the rule would not describe is refused here, at the call:
a first argument that is neither a param nor a vector per sequence, and a second argument
without tokens. A param is a learned token (the engine's rule makes it a vector fed the constant 1
at one position: a bias); a vector per sequence, ``first(x)``, is a token put back before tokens
computed from the others (CvT's class token, split off before its convolutions over the image's
tokens and concatenated back after them): the rule is the same max, and its gradient reaches
the vector.
"""

from __future__ import annotations

from ..ir.program import Prepend
from .ast import Call

PREPEND = "prepend"
_USAGE = ("write prepend(c, h, T1): c a vector param (`param c : [n]`) or a vector per sequence "
          "(`first(x)`), h a vector per token of a sequence T, and T1 a dim declared one token "
          "longer than T; prepend(c, h, T1, k) puts c before h's token k")


def prepend_seq(low, node: Call) -> tuple[str, int] | None:
    """The longer sequence's dim, the third argument of ``prepend``, and the token the learned
    one goes before, its fourth (0 if none), or None (reported)."""
    if len(node.args) not in (3, 4):
        low.errors.error(f"prepend takes 3 or 4 arguments, got {len(node.args)}", node.span,
                         _USAGE)
        return None
    arg = node.args[2]
    if type(arg).__name__ != "Var" or arg.name not in low.dims or low.dims[arg.name].infinite:
        low.errors.error("the third argument of prepend must be the longer sequence's dim, a "
                         "finite dim", arg.span, _USAGE)
        return None
    at = node.args[3] if len(node.args) == 4 else None
    if at is not None and (type(at).__name__ != "Num" or at.value.denominator != 1
                           or at.value < 0 or at.value >= low.dims[arg.name].size):
        low.errors.error("the fourth argument of prepend must be a token index, a whole number "
                         "from 0 to the shorter sequence's length", at.span, _USAGE)
        return None
    return arg.name, 0 if at is None else int(at.value)


def lower_prepend(low, node: Call, args: list, seq: tuple[str, int], vec: type):
    """The Prepend instruction of a ``prepend`` call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    c, h = args
    if not isinstance(c, vec) or not isinstance(h, vec):
        low.errors.error("prepend needs a vector param and a vector per token", node.span,
                         _USAGE)
        return None
    token = c.single()
    if token is None and c.dim is not None and not any(t in low.tokenwise for t in c.terms):
        token = low.name_of(c, node.span)  # first(h) written in the call: a value of its own
    if token is None or c.dim is None or (token not in low.param_names
                                          and token not in low.one_token):
        low.errors.error("the first argument of prepend must be a vector param, the learned "
                         "token, or a vector per sequence (a token put back, first(h))",
                         node.args[0].span, _USAGE)
        return None
    if h.dim is None or h.dim in low.heads_dims or not low.same_dim(c.dim, h.dim):
        low.errors.error(f"shape mismatch in prepend: the token is {low.dim_text(c.dim)} but "
                         f"the sequence's vectors are {low.dim_text(h.dim)}", node.span,
                         "the learned token is a vector of the dim of every other token")
        return None
    name = low.name_of(h, node.span)
    if name not in low.tokenwise:
        what = ("is one token's vector, read by first" if name in low.one_token
                else "is built from params and vector inputs alone")
        low.errors.error(f"prepend puts a token before the tokens of a sequence, but {name} "
                         f"has no tokens: it {what}", node.span,
                         "prepend to a vector per token, e.g. the patch embedding `E @ x`")
        return None
    seq, at = seq
    out = low.emit(Prepend(low.fresh(low.target), token, name, seq, node.span, at), h.dim)
    return low.vec(out, h.dim)
