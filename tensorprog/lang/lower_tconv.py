"""Lowering ``tconv(D, h)`` and ``tconv(D, h, p)``: a depthwise convolution over the tokens of a
per-token vector h of dim c by a kernel param ``D : [c, one, K]`` (K finite, one a dim of 1),
torch's ``nn.Conv1d(c, c, K, groups=c)`` weight as it is. Token t of channel c reads the K
tokens from t - p on: y_t = Σ_k D[c, 0, k] · h_{t-p+k}, zeros where no token comes.
``tconv(D, h)`` is p = K - 1, causal (each token reads itself and the K - 1 before it: the
short convolution of LFM, Mamba and linear attention, ``conv(x)[..., :T]`` of a conv padded by
K - 1); p = (K - 1) // 2 is the same-padded one (ConvBERT's, ``padding=K // 2`` for K odd).

Each channel reads only itself, so the kernel has one dim (c, which may grow with the width)
and a finite fan-in K: for the width exponents it is a gain (a vector param times a vector)
summed over finitely many token shifts, derived with the product's rules as ``dwconv``'s
(``tensorprog.ir.functions.TCONV``). The kernel is read by nothing else. h must have one value
per token of a sequence (not an image: that is ``dwconv``'s; not a token input's ids), and
0 <= p < K.
"""

from __future__ import annotations

from ..ir.functions import TCONV
from ..ir.program import Nonlin
from .ast import Call

_USAGE = ("write tconv(D, h) (causal: each token reads itself and the K - 1 before it) or "
          "tconv(D, h, p) (from p tokens before on; p = (K - 1) // 2 same-padded): D a kernel "
          "`param D : [c, one, K]` (dim one = 1, K finite; torch's Conv1d weight [c, 1, K]), h "
          "a vector per token of dim c")


def tconv_operands(low, node: Call):
    """(the operands to lower, the state): D and h, and p (None: K - 1, causal)."""
    if len(node.args) not in (2, 3):
        low.errors.error(f"tconv takes 2 or 3 arguments, got {len(node.args)}", node.span,
                         _USAGE)
        return None, None
    p = None
    if len(node.args) == 3:
        k = node.args[2]
        if type(k).__name__ != "Num" or k.value.denominator != 1:
            low.errors.error("the third argument of tconv must be a whole number of tokens, "
                             "p >= 0", k.span, _USAGE)
            return None, None
        p = int(k.value)
    return node.args[:2], (TCONV, p)


def lower_tconv(low, node: Call, args: list, p: int | None, vec: type):
    """The Nonlin ``tconv`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    d, h = args
    name = getattr(d, "name", None)
    kernel = low.matrices.get(name) if name is not None and not getattr(
        d, "transposed", False) else None
    if kernel is None or len(kernel.shape) != 3 or low.dims[kernel.shape[1]].infinite \
            or low.dims[kernel.shape[1]].size != 1:
        low.errors.error("the first argument of tconv must be a kernel param [c, one, K] "
                         "(dim one = 1)", node.args[0].span, _USAGE)
        return None
    taps = low.dims[kernel.shape[2]].size
    if not isinstance(h, vec) or h.dim is None or not low.same_dim(kernel.shape[0], h.dim):
        what = low.dim_text(h.dim) if isinstance(h, vec) else "no vector"
        low.errors.error(f"shape mismatch in tconv: {name} has {kernel.shape[0]} channels but "
                         f"the tokens' vectors are {what}", node.span,
                         "a kernel over the tokens has one row of taps per channel")
        return None
    p = taps - 1 if p is None else p
    if not 0 <= p < taps:
        low.errors.error(f"tconv reads the {taps} tokens from p before on, but p = {p}: it "
                         f"must be between 0 and {taps - 1}", node.args[2].span, _USAGE)
        return None
    arg = low.name_of(h, node.span)
    if low.pixels.get(arg) is not None:
        low.errors.error(f"tconv convolves a sequence's tokens, but {arg} is an image",
                         node.span, "convolve an image with dwconv(D, h), or read its pixels "
                         "as tokens first, tokens(h, T)")
        return None
    if arg not in low.tokenwise or arg in {i.name for i in low.inputs}:
        low.errors.error(f"tconv convolves a sequence's tokens, but {arg} has no tokens to "
                         "convolve", node.args[1].span,
                         "convolve a vector computed from a `tokens` input, e.g. W @ (E @ tok)")
        return None
    out = low.emit(Nonlin(low.fresh(low.target), TCONV, (name, arg), node.span, index=p),
                   h.dim)
    return low.vec(out, h.dim)
