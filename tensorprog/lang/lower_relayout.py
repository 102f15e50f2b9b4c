"""Lowering ``tokens(h, T)`` and ``image(t, H, W)``: an image-valued vector's pixels read
row-major as the tokens of a sequence T (a vision model's patch embedding flattened into
tokens), and a sequence's tokens laid back out as the pixels of an H×W image (its depthwise
convolution, or a strided convolution reducing the keys and values).

The calls name dims, as ``prepend`` does: a sequence is a dim, declared with its size (H·W
tokens), and so are an image's height and width. What the rule would not describe is refused
here, at the call: a first argument that is not an image (tokens) or has no tokens (image),
or dims that do not hold as many tokens as pixels.
"""

from __future__ import annotations

from ..ir.program import Relayout
from .ast import Call

TOKENS, IMAGE = "tokens", "image"
RELAYOUTS = (TOKENS, IMAGE)
_USAGE = {TOKENS: "write tokens(h, T): h an image-valued vector of H×W pixels, T a dim of H·W "
                  "tokens (`dim T = 64` for 8x8 pixels)",
          IMAGE: "write image(t, H, W): t a vector per token of a sequence of H·W tokens, H "
                 "and W finite dims (the image's height and width)"}


def relayout_operands(low, node: Call) -> tuple:
    """A ``tokens`` or ``image`` call's one value operand and the dims it names after it, or
    (None, None) where those are not finite dims (reported)."""
    want = 2 if node.fn == TOKENS else 3
    if len(node.args) != want:
        low.errors.error(f"{node.fn} takes {want} arguments, got {len(node.args)}", node.span,
                         _USAGE[node.fn])
        return None, None
    for arg in node.args[1:]:
        if type(arg).__name__ != "Var" or arg.name not in low.dims \
                or low.dims[arg.name].infinite:
            low.errors.error(f"the arguments of {node.fn} after the value must be finite dims",
                             arg.span, _USAGE[node.fn])
            return None, None
    return node.args[:1], (node.fn, tuple(a.name for a in node.args[1:]))


def lower_relayout(low, node: Call, args: list, named: tuple[str, ...], vec: type):
    """The Relayout instruction of a ``tokens`` or ``image`` call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    (h,) = args
    if not isinstance(h, vec) or h.dim is None or h.dim in low.heads_dims:
        low.errors.error(f"{node.fn} needs a vector", node.span, _USAGE[node.fn])
        return None
    name = low.name_of(h, node.span)
    sizes = [low.dims[d].size for d in named]
    pixels = low.pixels.get(name)
    if node.fn == TOKENS:
        if pixels is None:
            low.errors.error(f"tokens reads an image's pixels as tokens, but {name} has no "
                             "pixels", node.span, _USAGE[TOKENS])
            return None
        if pixels[0] * pixels[1] != sizes[0]:
            low.errors.error(f"{name} has {pixels[0]}x{pixels[1]} pixels, but {named[0]} has "
                             f"{sizes[0]} tokens", node.span,
                             f"declare `dim {named[0]} = {pixels[0] * pixels[1]}`")
            return None
        ins = Relayout(low.fresh(low.target), name, node.span, seq=named[0])
    else:
        if name not in low.tokenwise or pixels is not None:
            low.errors.error(f"image lays out a sequence's tokens as pixels, but {name} has no "
                             "tokens", node.span, _USAGE[IMAGE])
            return None
        ins = Relayout(low.fresh(low.target), name, node.span, grid=(named[0], named[1]))
    out = low.emit(ins, h.dim)
    if node.fn == TOKENS:  # the pixels are now tokens: no image axes, a sequence's
        low.pixels.pop(out, None)
        low.tokenwise.add(out)
    else:
        low.pixels[out] = (sizes[0], sizes[1])
        low.tokenwise.discard(out)
    return low.vec(out, h.dim)
