"""Lowering ``conv(K, h, s[, p[, d]])`` and ``conv(K, h, s, top, bottom, left, right, d)``: a
convolution of any geometry (stride s, zero padding p on every side or per side, dilation d).

``K @ h`` is the stride-1 convolution padded by half the kernel (the size kept); ``conv`` gives
the geometry of any other. Both are the MatMul of the kernel, a matmul over the in·kh·kw values
of each window, so the engine derives the same exponents whatever the geometry: the geometry
sets the output's pixels and what the emitted module computes. ``conv(K, h, s)`` pads by half
the (dilated) kernel, so ``conv(K, h, 2)`` is ``subsample(K @ h)`` exactly; ``conv(K, h, 1)``
is ``K @ h`` itself (the same instruction).
"""

from __future__ import annotations

from ..ir.program import Geometry
from .ast import Call

CONV = "conv"
_USAGE = ("write conv(K, h, stride), conv(K, h, stride, pad), conv(K, h, stride, pad, "
          "dilation) or conv(K, h, stride, top, bottom, left, right, dilation[, groups]): K a "
          "kernel [out, in, kh, kw] ([out, in / groups, kh, kw]), h an image, whole numbers "
          "after them")


def lower_conv(low, node: Call, args: list, scalar: type, vec: type):
    """The MatMul of a ``conv`` call with its geometry, or None (errors reported)."""
    if len(args) not in (3, 4, 5, 8, 9):
        low.errors.error(f"conv takes 3, 4, 5, 8 or 9 arguments, got {len(args)}", node.span,
                         _USAGE)
        return None
    if any(a is None for a in args):
        return None
    kernel, h, nums = args[0], args[1], args[2:8]
    shape = getattr(kernel, "name", None) and low.matrices.get(kernel.name)
    if not shape or len(shape.shape) != 4 or kernel.transposed or not isinstance(h, vec):
        low.errors.error("conv applies a kernel param to an image", node.span, _USAGE)
        return None
    kh, kw = (low.dims[d].size for d in shape.shape[2:])
    geometry = read_geometry(low, node, kernel.name, nums, (kh, kw), scalar, CONV, _USAGE)
    if geometry is None:
        return None
    if len(args) == 9:
        groups = read_groups(low, node, args[8], shape.shape[:2], h, scalar)
        if groups is None:
            return None
        geometry = Geometry(geometry.stride, geometry.pads, geometry.dilation, groups)
    sizes = [z for z in h.pixels if z is not None]
    if len(sizes) != 1:
        return low.op_matmul(kernel, h, node)  # not an image: op_matmul says so
    out = out_pixels(low, node, geometry, sizes[0], (kh, kw), CONV)
    if out is None:
        return None
    if geometry == Geometry.same(kh, kw):  # stride 1, padded by half: K @ h itself
        return low.op_matmul(kernel, h, node)
    return low.op_matmul(kernel, h, node, geometry, out)


def read_groups(low, node: Call, arg, kernel: tuple[str, str], h, scalar: type) -> int | None:
    """The groups of ``conv(..., g)``, or None (reported): g whole and 1 or more, the kernel's
    in-dim the image's channels over g, both growing with the width (g finite: each output
    reads (n/g)·kh·kw values, a full convolution's rule), and its out-dim whole in g groups."""
    if not isinstance(arg, scalar) or arg.value.denominator != 1 or arg.value < 1:
        low.errors.error("the groups of conv must be a whole number, 1 or more", node.span, _USAGE)
        return None
    groups = int(arg.value)
    if groups == 1:
        return 1
    out, fan_in = (low.dims.get(d) for d in kernel)
    channels = low.dims.get(h.dim) if h.dim else None
    if channels is None or fan_in is None or out is None:
        return None
    if groups > 1 and (not fan_in.infinite or not channels.infinite):
        low.errors.error(
            f"conv in {groups} groups of {low.dim_text(kernel[1])} channels: a grouped "
            "convolution's groups must stay fixed as the width grows, each reading a share of "
            "the channels that grows with it (in / groups ∝ n)", node.span,
            "declare the kernel [out, c / g, kh, kw] with c the image's channels; a fixed "
            "group width (g ∝ n) has no form here: use dwconv for groups of one channel")
        return None
    if fan_in.mult * groups != channels.mult:
        low.errors.error(
            f"shape mismatch in conv: {groups} groups of {low.dim_text(kernel[1])} channels, "
            f"but the image has {low.dim_text(h.dim)}", node.span,
            "the kernel's second dim is the image's channels over the groups")
        return None
    base = low.width.base if low.width else 1
    if out.infinite and (out.mult * base) % groups or not out.infinite and out.size % groups:
        low.errors.error(f"conv's {low.dim_text(kernel[0])} output channels do not split "
                         f"into {groups} groups", node.span, "give each group as many")
        return None
    return groups


def read_geometry(low, node: Call, kernel: str, nums: list, window: tuple[int, int],
                  scalar: type, fn: str, usage: str) -> Geometry | None:
    """The geometry the numbers after a kernel and an image give (stride[, pad[, dilation]] or
    stride, top, bottom, left, right, dilation), or None (errors reported): ``conv``'s and
    ``dwconv``'s alike."""
    if any(not isinstance(a, scalar) or a.value.denominator != 1 for a in nums):
        low.errors.error(f"the stride, padding and dilation of {fn} must be whole numbers",
                         node.span, usage)
        return None
    stride, *pads, dilation = [int(a.value) for a in nums] + ([1] if len(nums) < 3 else [])
    if stride < 1 or dilation < 1 or any(p < 0 for p in pads):
        low.errors.error(f"{fn} with stride {stride}, padding {pads}, dilation {dilation}",
                         node.span, "the stride and dilation are 1 or more, the padding 0 or "
                         "more")
        return None
    kh, kw = window
    if pads:
        return Geometry(stride, tuple(pads * 4 if len(pads) == 1 else pads), dilation)
    geometry = Geometry.same(kh, kw, stride, dilation)
    if geometry is None:
        low.errors.error(f"{fn} of the {kh}x{kw} kernel {kernel} without a padding: "
                         "an even kernel has no padding by half of it", node.span,
                         f"give the padding: {fn}(K, h, stride, top, bottom, left, right, "
                         "dilation)")
    return geometry


def out_pixels(low, node: Call, geometry: Geometry, size: tuple[int, int],
               window: tuple[int, int], fn: str) -> tuple[int, int] | None:
    """The output's pixels of a convolution of that geometry, or None where none is left."""
    out = geometry.out_size(size, window)
    if min(out) < 1:
        low.errors.error(f"{fn} of a {size[0]}x{size[1]} image by a {window[0]}x{window[1]} "
                         f"kernel (stride {geometry.stride}, padding {list(geometry.pads)}, "
                         f"dilation {geometry.dilation}) leaves no pixel", node.span,
                         "pad more, or use a smaller kernel or stride")
        return None
    return out
