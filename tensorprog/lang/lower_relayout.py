"""Lowering ``tokens(h, T)``, ``image(t, H, W)``, ``merge2x2(h, D)`` and ``tail(h, S)``: an
image-valued vector's pixels read row-major as the tokens of a sequence T (a vision model's patch
embedding flattened into tokens), a sequence's tokens laid back out as the pixels of an H×W image
(its depthwise convolution, or a strided convolution reducing the keys and values), an image's
2×2 blocks of pixels merged into one pixel of their four vectors (Swin's patch merging, D = 4·C),
and the last tokens of a sequence as a shorter one S (CvT's tokens after its class token).

The calls name dims, as ``prepend`` does: a sequence is a dim, declared with its size (H·W
tokens), and so are an image's height and width. What the rule would not describe is refused
here, at the call: a first argument that is not an image (tokens) or has no tokens (image),
or dims that do not hold as many tokens as pixels.
"""

from __future__ import annotations

from ..ir.program import Relayout
from .ast import Call

TOKENS, IMAGE, MERGE, TAIL = "tokens", "image", "merge2x2", "tail"
RELAYOUTS = (TOKENS, IMAGE, MERGE, TAIL)
_USAGE = {TOKENS: "write tokens(h, T): h an image-valued vector of H×W pixels, T a dim of H·W "
                  "tokens (`dim T = 64` for 8x8 pixels)",
          IMAGE: "write image(t, H, W): t a vector per token of a sequence of H·W tokens, H "
                 "and W finite dims (the image's height and width)",
          MERGE: "write merge2x2(h, D): h an image-valued vector of even height and width, D "
                 "a dim of four times its channels (`dim D = 4 * n` for h of dim n)",
          TAIL: "write tail(h, S): h a vector per token of a sequence T, S a dim of fewer "
                "tokens (`dim S = 16` for the 16 tokens after T's first of 17)"}


def relayout_operands(low, node: Call) -> tuple:
    """A ``tokens`` or ``image`` call's one value operand and the dims it names after it, or
    (None, None) where those are not finite dims (reported)."""
    want = 3 if node.fn == IMAGE else 2
    if len(node.args) != want:
        low.errors.error(f"{node.fn} takes {want} arguments, got {len(node.args)}", node.span,
                         _USAGE[node.fn])
        return None, None
    for arg in node.args[1:]:
        if node.fn == MERGE and type(arg).__name__ == "Var" and arg.name in low.dims:
            continue  # the merged channels grow with the width as the image's do
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
    if node.fn == MERGE:
        return _merge(low, node, h, name, pixels, named[0], vec)
    if node.fn == TAIL:  # its sequence's length against S: the sequence rules (ir/sequences.py)
        if name not in low.tokenwise or pixels is not None:
            low.errors.error(f"tail keeps the last tokens of a sequence, but {name} has no "
                             "tokens", node.span, _USAGE[TAIL])
            return None
        if name in {i.name for i in low.inputs}:  # ids, laid out (batch, tokens) unembedded
            low.errors.error(f"tail keeps the last tokens of a vector per token, not of the "
                             f"input {name} (one-hot ids)", node.span,
                             "apply tail to a vector computed from it, e.g. tail(E @ tok, S)")
            return None
        out = low.emit(Relayout(low.fresh(low.target), name, node.span, seq=named[0],
                                tail=True), h.dim)
        low.tokenwise.add(out)
        return low.vec(out, h.dim)
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


def _merge(low, node: Call, h, name: str, pixels, merged: str, vec: type):
    """``merge2x2(h, D)``: h's 2×2 blocks of pixels, one pixel each of D = 4·C channels."""
    c, d = low.dims[h.dim], low.dims[merged]
    four = d.mult == 4 * c.mult if d.infinite and c.infinite else (
        not d.infinite and not c.infinite and d.size == 4 * c.size)
    if pixels is None or pixels[0] % 2 or pixels[1] % 2:
        low.errors.error(f"merge2x2 merges an image's 2x2 blocks of pixels, but {name} has "
                         + (f"{pixels[0]}x{pixels[1]} pixels" if pixels else "no pixels"),
                         node.span, _USAGE[MERGE])
        return None
    if not four:
        low.errors.error(f"merge2x2 gives four times {name}'s channels ({h.dim}), but "
                         f"{merged} is not 4 x {h.dim}", node.span, _USAGE[MERGE])
        return None
    out = low.emit(Relayout(low.fresh(low.target), name, node.span, merge=merged), merged)
    low.pixels[out] = (pixels[0] // 2, pixels[1] // 2)
    low.tokenwise.discard(out)
    return low.vec(out, merged)
