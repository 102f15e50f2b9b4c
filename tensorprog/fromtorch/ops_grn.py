"""ConvNeXt V2's Global Response Normalization, traced as the language's ``grn(x)``.

On a channels-last image x [B, H, W, C], HF writes ``G = torch.linalg.vector_norm(x, ord=2,
dim=(1, 2), keepdim=True)`` (each channel's L2 norm over the pixels), ``N = G / (G.mean(dim=-1,
keepdim=True) + eps)`` (over the mean of those norms over the channels) and ``x * N``: the
program's ``grn(x)`` (eps aside, as for torch's own norms), after which the gain, the bias and the
residual are the program's ``g * grn(x) + b + x``. The walk holds the pieces as values of their own
(:class:`PixelNorm`, :class:`ChannelMean`, :class:`Response`) and emits ``grn`` at the product
that completes it; a piece used any other way (a norm over other axes, a response multiplying
another vector) is refused where it is used, since the language has no such vector.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .values import Vec
from .where import refuse

_HELP = ("write GRN as ConvNeXt V2 does on a channels-last image x: G = torch.linalg.vector_norm("
         "x, ord=2, dim=(1, 2), keepdim=True); x * (G / (G.mean(dim=-1, keepdim=True) + 1e-6))")
_PIECE = "a piece of a global response normalization (ConvNeXt V2's GRN)"


@dataclass
class PixelNorm:
    """Each channel's L2 norm over an image's pixels, keepdim: GRN's G."""

    src: Vec


@dataclass
class ChannelMean:
    """The mean of ``PixelNorm(src)`` over the channels, keepdim (``eps``: a small number added)."""

    src: Vec
    eps: bool = False


@dataclass
class Response:
    """``PixelNorm(src) / ChannelMean(src)``: GRN's N, Θ(1) whatever src's size."""

    src: Vec


GRN_VALUES = (PixelNorm, ChannelMean, Response)


class GrnOps:
    """GRN's pieces; every op on them other than the ones that complete it is refused."""

    def op_linalg_vector_norm(self, node, x, ord=2, dim=None, keepdim=False, **kw):
        shape = self._shape(node.args[0])
        tags = tuple(self._tags(x, node))
        pixels = sorted(i for i, t in enumerate(tags) if t == "px")
        axes = sorted(d % len(shape) for d in (dim if dim is not None else range(len(shape))))
        plain = ord == 2 and keepdim and kw.get("dtype") is None
        if plain and axes == [len(shape) - 1] and tags[-1] in ("F", "dh"):
            return self.norm_l2(node, x)  # F.normalize's divisor (ops_norm.py)
        if not plain or len(pixels) != 2 or axes != pixels or "F" not in tags:
            raise refuse(node, f"a vector norm (ord {ord}) over axes {axes} of a value tagged "
                         f"{list(tags)}: the language has the L2 norm of each channel over an "
                         "image's pixels, kept, inside ConvNeXt V2's GRN, and that of a "
                         "vector's coordinates (a head's), kept, as F.normalize divides by it",
                         help=_HELP)
        return PixelNorm(self.vec(x, node))

    def op_mean(self, node, x, dims=None, keepdim=False, **kw):
        if isinstance(x, PixelNorm):
            ndim = len(self._shape(node.args[0]))
            channels = tuple(self._tags(x.src, node)).index("F")
            if [d % ndim for d in dims or range(ndim)] != [channels] or not keepdim:
                raise refuse(node, f"{_PIECE}: a mean of the pixel norms over other axes than "
                             "the channels, or not kept", help=_HELP)
            return ChannelMean(x.src)
        _refuse_pieces(node, x)
        return super().op_mean(node, x, dims, keepdim)

    def op_add(self, node, u, v, alpha=1):
        for m, c in ((u, v), (v, u)):
            if isinstance(m, ChannelMean) and not m.eps and isinstance(c, (int, float)) \
                    and 0 < alpha * c <= 1e-3:
                return dataclasses.replace(m, eps=True)  # + eps: a norm's, eps aside
        _refuse_pieces(node, u, v)
        return super().op_add(node, u, v, alpha)

    def op_div(self, node, u, v):
        if isinstance(u, PixelNorm) and isinstance(v, ChannelMean) and u.src.name == v.src.name:
            return Response(u.src)
        _refuse_pieces(node, u, v)
        return super().op_div(node, u, v)

    def op_mul(self, node, u, v):
        for x, r in ((u, v), (v, u)):
            if isinstance(r, Response) and not isinstance(x, GRN_VALUES):
                if self.vec(x, node).name != r.src.name:
                    break
                name = self.emit_vector(node.name, f"grn({r.src.name})")
                return Vec(name, r.src.tags, r.src.dim, r.src.dh)
        _refuse_pieces(node, u, v)
        return super().op_mul(node, u, v)


def _refuse_pieces(node, *values) -> None:
    if any(isinstance(x, GRN_VALUES) for x in values):
        raise refuse(node, f"{_PIECE} used otherwise than GRN uses it: x * (G / (G.mean(-1) + "
                     "eps)) of the same image x", help=_HELP)
