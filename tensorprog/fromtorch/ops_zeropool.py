"""Max pools of an image padded by zeros: 0 joins the max at the border, where torch's own
padding of a max pool (by -inf) would not, so the pad and the pool trace together as one
language function of the image before the pad.

* HGNet's stem: ``F.pad(h, (0, 1, 0, 1))`` then ``MaxPool2d(2, stride=1)``: ``maxpool2(h)``;
* BiT's stem: ``nn.ConstantPad2d(1, 0)`` then ``MaxPool2d(3, stride=2)`` (unpadded, not in ceil
  mode): ``subsample(maxpool3z(h))``, output pixel i being the 3x3 neighbourhood of pixel 2i
  (⌊(H − 1)/2⌋ + 1 = ⌈H/2⌉ of them, subsample's count); at stride 1, ``maxpool3z(h)``.

Any other pool of a zero-padded image is refused where the pad is (ops_conv._zero_pad).
"""

from __future__ import annotations

from .where import op_name


def _pair(a):
    a = tuple(a) if isinstance(a, (list, tuple)) else (a,)
    return a * 2 if len(a) == 1 else a


def padded_pool(node, pads: tuple) -> bool:
    """Whether ``node`` is a max pool that, read after a zero pad of ``pads`` (the same tuple in
    F.pad's order and the Padded's: both pads here read alike), is a language function: HGNet's
    2x2 at stride 1 after (0, 1, 0, 1), BiT's 3x3 at stride 1 or 2 after (1, 1, 1, 1); no
    padding of its own, no dilation, no ceil mode (which changes nothing at stride 1)."""
    args = list(node.args) + [None] * 7
    kernel, stride, padding, dilation, ceil = args[1:6]
    if op_name(node) != "max_pool2d" or node.kwargs or _pair(padding or 0) != (0, 0) \
            or _pair(dilation or 1) != (1, 1):
        return False
    stride = _pair(stride or kernel)
    if tuple(pads) == (0, 1, 0, 1):
        return _pair(kernel) == (2, 2) and stride == (1, 1)
    return tuple(pads) == (1, 1, 1, 1) and _pair(kernel) == (3, 3) and not ceil \
        and stride in ((1, 1), (2, 2))


def zero_padded_max(walker, node, x, pads: tuple):
    """The language's value of a pool that ``padded_pool`` accepts, of the image ``x`` before
    its pad."""
    if tuple(pads) == (0, 1, 0, 1):
        return walker._emit(node, f"maxpool2({x.name})", x.dim, x.tags)  # an image's tags
    if _pair(node.args[2] if len(node.args) > 2 and node.args[2] else node.args[1]) == (1, 1):
        return walker._emit(node, f"maxpool3z({x.name})", x.dim, x.tags)
    full = walker.fresh(f"{node.name}_full")  # no value in the model: not probed
    walker.out.stmts.append(f"{full} = maxpool3z({x.name})")
    return walker._emit(node, f"subsample({full})", x.dim, x.tags)
