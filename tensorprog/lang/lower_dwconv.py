"""Lowering ``dwconv(K, h)``: a depthwise (per-channel) convolution of an image-valued vector h of
dim c by a kernel param ``K : [c, kh, kw]`` (finite kh, kw), stride 1 and same-padded, as
``nn.Conv2d(c, c, k, padding=k // 2, groups=c)`` computes it: out[c] = Σ_taps K[c, tap] ·
shift_tap(h)[c]. ``dwconv(K, h, s[, p[, d]])`` and ``dwconv(K, h, s, top, bottom, left, right,
d)`` give it any other geometry, as ``conv``'s numbers do (lower_conv.py): MobileNet's TF 'SAME'
pad before a stride-2 one is ``dwconv(K, h, 2, 0, 1, 0, 1, 1)``. The geometry sets the output's
pixels and what the emitted module computes, never the exponents.

Each channel reads only itself, so the kernel has one dim (c, which may grow with the width) and
a finite fan-in kh·kw: for the width exponents it is a gain (a vector param times a vector,
coordinatewise) summed over finitely many spatial shifts, and the engine derives it with the
product's rules (``tensorprog.ir.functions.DWCONV``). The kernel is read by nothing else: ``@``
(a full convolution's matmul over channels) and every other use of it are refused here.
"""

from __future__ import annotations

from ..ir.functions import DWCONV
from ..ir.program import Geometry, Nonlin
from .ast import Call
from .lower_conv import out_pixels, read_geometry

_USAGE = ("write dwconv(K, h), or with a geometry dwconv(K, h, stride[, pad[, dilation]]) or "
          "dwconv(K, h, stride, top, bottom, left, right, dilation): K a depthwise kernel "
          "`param K : [c, k, k]` (k finite), h an image-valued vector of dim c")


def depthwise_misuse(low, name: str, span, what: str) -> bool:
    """Report a depthwise kernel applied as a matrix (``D @ h``, ``D.T @ h``); True if so."""
    p = low.matrices.get(name)
    if p is None or len(p.shape) != 3:
        return False
    low.errors.error(f"{name} is a depthwise kernel [{', '.join(p.shape)}]: {what}", span,
                     _USAGE + "; a full convolution's kernel is [out, in, kh, kw]; one over "
                     "a sequence's tokens [c, one, K] is applied by tconv(D, h)")
    return True


def lower_dwconv(low, node: Call, args: list, vec: type, matrix: type, scalar: type):
    """The Nonlin ``dwconv`` of a call, or None (errors reported)."""
    if len(node.args) not in (2, 3, 4, 5, 8):
        low.errors.error(f"dwconv takes 2, 3, 4, 5 or 8 arguments, got {len(node.args)}",
                         node.span, _USAGE)
        return None
    if any(a is None for a in args):
        return None
    k, h, nums = args[0], args[1], args[2:]
    p = low.matrices.get(k.name) if isinstance(k, matrix) and not k.transposed else None
    if p is None or len(p.shape) != 3:
        low.errors.error("the first argument of dwconv must be a depthwise kernel param "
                         "[c, kh, kw]", node.args[0].span, _USAGE)
        return None
    if not isinstance(h, vec) or h.dim is None or not low.same_dim(p.shape[0], h.dim):
        what = low.dim_text(h.dim) if isinstance(h, vec) else "no vector"
        low.errors.error(f"shape mismatch in dwconv: {k.name} has {p.shape[0]} channels but the "
                         f"image is {what}", node.span,
                         "a depthwise kernel has one row of taps per channel of the image")
        return None
    arg = low.name_of(h, node.span)
    if arg not in low.pixels:
        low.errors.error(f"{k.name} is a convolution kernel, but {arg} is not an image",
                         node.span, "apply kernels to values computed from an `image` input, "
                         "before global_pool")
        return None
    window = tuple(low.dims[d].size for d in p.shape[1:])
    geometry, pixels = None, None
    if nums:
        geometry = read_geometry(low, node, k.name, nums, window, scalar, DWCONV, _USAGE)
        pixels = geometry and low.pixels[arg] and out_pixels(low, node, geometry,
                                                             low.pixels[arg], window, DWCONV)
        if not pixels:
            return None
        if geometry == Geometry.same(*window):  # stride 1, padded by half: dwconv(K, h)
            geometry = None
    out = low.emit(Nonlin(low.fresh(low.target), DWCONV, (k.name, arg), node.span,
                          geometry=geometry), h.dim)
    if geometry is not None:  # its own pixels, where dwconv(K, h) keeps its input's
        low.pixels[out] = pixels
    return low.vec(out, h.dim)
