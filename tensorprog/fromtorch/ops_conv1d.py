"""A kernel-1 ``conv1d`` over a channels-first sequence (SqueezeBERT's q, k, v and MLP layers,
``nn.Conv1d(c, out, kernel_size=1)`` on [B, C, T]): each token's C channels times the kernel
[out, C, 1], plus the bias, exactly a linear layer over the channels, ``W @ h + b`` of the
program with W : [out, C] (the kernel without its axis of 1), the value keeping its
channels-first layout (what transposes it back is traced as any transpose). ``apply`` reads and
scales the 3-D kernel in place. Any dilation is the same (one tap has no spacing). In g groups
(each output channel reading the in/g channels of its group: a block-diagonal layer) it is the
grouped 1x1 convolution of the tokens laid out as a 1 x T image (``_grouped_conv1d``). A kernel
wider than 1 is a convolution over the tokens, traced when depthwise (ops_tconv.py); a stride or
padding of kernel 1 is refused at the layer's line."""

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
        if w.shape[2] != 1:  # a convolution over the tokens: depthwise only (ops_tconv.py)
            return self.token_conv(node, x, w, b, stride, padding, dilation, groups)
        layer = strip_prefix(w.target).removesuffix(".weight")
        # (a dilation spaces a kernel's taps: with one tap it changes nothing)
        if not _one(stride, 1) or not (
                _one(padding, 0) or padding == "valid" or padding == "same"):
            raise refuse(node, f"the conv1d {layer} of kernel {w.shape[2]}, stride {stride}, "
                         f"padding {padding}: only a kernel of 1, stride 1 without padding (a "
                         "linear layer over each token's channels) is traced, not a "
                         "convolution over the tokens",
                         help="mix the tokens with attention, or write the model as a program")
        x = self.vec(x, node)
        if tuple(x.tags) != _CHANNELS_FIRST or x.dim != w.shape[1] * groups:
            raise refuse(node, f"the conv1d {layer} of a value laid out otherwise than [batch, "
                         f"{w.shape[1] * groups} channels, tokens] (its tags {list(x.tags)})",
                         help="give it the per-token vectors transposed channels-first, "
                         "h.transpose(1, 2) of a [batch, tokens, channels] value")
        bias = self.vector_param(b, node) if b is not None else None
        if groups != 1:
            return self._grouped_conv1d(node, x, w, bias, groups)
        weight, _ = self.param(PRef(w.target, w.shape[:2]), node)
        expr = f"{weight} @ {x.name}" + (f" + {bias}" if bias else "")
        return Vec(self.emit_vector(node.name, expr, (weight, bias)), x.tags, w.shape[0])

    def _grouped_conv1d(self, node, x: Vec, w: PRef, bias: str | None, groups: int) -> Vec:
        """Kernel 1 in g groups: output channel o reads the in/g channels of its group, a
        block-diagonal layer. The language says it as the grouped 1x1 convolution it is, of
        the tokens laid out as a 1 x T image and read back as the same tokens:
        ``tokens(conv(K, image(h, 1, T), 1, 0, 0, 0, 0, 1, g) + b, T)``, K : [out, in / g, 1,
        1] (the kernel [out, in / g, 1] given a second axis of 1); both relabellings keep every
        exponent, and a grouped convolution's fan-in is in / g (∝ n for g fixed)."""
        t = int(node.args[0].meta["val"].shape[2])
        image = self.fresh(f"{node.name}_image")
        self.out.stmts.append(f"{image} = image({x.name}, {self.dim(1)}, {self.dim(t)})")
        kernel, _ = self.param(PRef(w.target, (*w.shape, 1)), node)
        conv = self.fresh(f"{node.name}_conv")
        self.out.stmts.append(f"{conv} = conv({kernel}, {image}, 1, 0, 0, 0, 0, 1, {groups})"
                              + (f" + {bias}" if bias else ""))
        seq = self.sequences().get(t) or self.dim(t)
        # linear in K and b as W @ h + b is: a multiplier on it (attention's factor on the
        # query) folds into them
        name = self.emit_vector(node.name, f"tokens({conv}, {seq})", (kernel, bias))
        return Vec(name, x.tags, w.shape[0])
