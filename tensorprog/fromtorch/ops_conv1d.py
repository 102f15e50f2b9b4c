"""A kernel-1 ``conv1d`` over a channels-first sequence (SqueezeBERT's q, k, v and MLP layers,
``nn.Conv1d(c, out, kernel_size=1)`` on [B, C, T]): each token's C channels times the kernel
[out, C, 1], plus the bias, exactly a linear layer over the channels, ``W @ h + b`` of the
program with W : [out, C] (the kernel without its axis of 1), the value keeping its
channels-first layout (what transposes it back is traced as any transpose). ``apply`` reads and
scales the 3-D kernel in place. Only that is traced: a kernel wider than 1, a stride, padding or
dilation (a convolution over the tokens), and groups (each output channel reading 1/g of the
channels: a block-diagonal layer, which the language has no form for over tokens) are refused at
the layer's line."""

from __future__ import annotations

from .values import PRef, Vec
from .where import refuse, strip_prefix

_CHANNELS_FIRST = ("tok", "F", "tok")


def _one(a, value) -> bool:
    """Whether a conv argument (an int or a one-entry list) is ``value``."""
    a = list(a) if isinstance(a, (list, tuple)) else [a]
    return len(a) == 1 and a[0] == value


class Conv1dOps:
    """``conv1d`` of kernel 1 as a linear layer over a channels-first value's channels."""

    def op_conv1d(self, node, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        if not isinstance(w, PRef) or (b is not None and not isinstance(b, PRef)) or \
                len(w.shape) != 3 or w.rows or w.t or w.offset or w.cols:
            raise refuse(node, "a conv1d whose kernel is not a whole param [out, in, k]")
        layer = strip_prefix(w.target).removesuffix(".weight")
        if w.shape[2] != 1 or not _one(stride, 1) or not (
                _one(padding, 0) or padding == "valid" or padding == "same") or \
                not _one(dilation, 1):
            raise refuse(node, f"the conv1d {layer} of kernel {w.shape[2]}, stride {stride}, "
                         f"padding {padding}, dilation {dilation}: only a kernel of 1, stride "
                         "1 without padding (a linear layer over each token's channels) is "
                         "traced, not a convolution over the tokens",
                         help="mix the tokens with attention, or write the model as a program")
        if groups != 1:
            raise refuse(node, f"the conv1d {layer} of kernel 1 in {groups} groups: each output "
                         f"channel reads 1/{groups} of the channels, a block-diagonal linear "
                         f"layer of {groups} blocks, which the language has no form for over "
                         "tokens (its grouped conv is an image's)",
                         help="use groups=1 (one nn.Linear over the channels), or a "
                         "separate layer per block of channels")
        x = self.vec(x, node)
        if tuple(x.tags) != _CHANNELS_FIRST or x.dim != w.shape[1]:
            raise refuse(node, f"the conv1d {layer} of a value laid out otherwise than [batch, "
                         f"{w.shape[1]} channels, tokens] (its tags {list(x.tags)})",
                         help="give it the per-token vectors transposed channels-first, "
                         "h.transpose(1, 2) of a [batch, tokens, channels] value")
        weight, _ = self.param(PRef(w.target, w.shape[:2]), node)
        bias = self.vector_param(b, node) if b is not None else None
        expr = f"{weight} @ {x.name}" + (f" + {bias}" if bias else "")
        return Vec(self.emit_vector(node.name, expr, (weight, bias)), x.tags, w.shape[0])
