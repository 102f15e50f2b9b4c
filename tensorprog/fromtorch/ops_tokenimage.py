"""Convolutions over a channels-first sequence's tokens after a pad of them by zeros, traced as
the convolutions of the tokens laid out as a 1 x T image.

Zaya's query-key convolution pads its [batch, channels, T] value by K zeros before the first
token and runs two convolutions with no padding of their own, a depthwise one of kernel k0 and
one in groups (one per head) of kernel k1, K = (k0 - 1) + (k1 - 1): T + K tokens, then T + k1 - 1,
then T again, each token reading only the ones before it. The language says each step as it is,
on the tokens laid out as an image one pixel high (``image(h, 1, T)``): the pad is the first
convolution's left padding, each conv1d kernel [out, in / g, K] the image kernel [out, in / g, 1,
K] (the same entries), and the last one's T pixels are read back as the tokens, ``tokens(y,
T)``. Both relabellings keep every exponent; a convolution's fan-in is its (in / g)·K entries,
as the image convolution's (the groups the same at every width: a fixed group width, whose
groups grow with it, is refused where the widths meet). A pad read otherwise, or a convolution
of such an image that leaves it neither read by another conv1d nor T tokens long, is refused at
its line."""

from __future__ import annotations

from .ops_conv import IMAGE, Padded
from .values import Affine, Pointwise, PRef, Vec
from .where import op_name, refuse, strip_prefix

_CHANNELS_FIRST = ("tok", "F", "tok")
_HELP = (
    "pad the tokens [batch, channels, T] by zeros right before a conv1d that reads only "
    "them, and convolve till T tokens are left (Zaya's F.pad(h, (K, 0)) then its "
    "convolutions of no padding)"
)


def _conv1d_input_only(node) -> bool:
    return bool(node.users) and all(
        op_name(u) == "conv1d" and u.args[0] is node and node not in u.args[1:] for u in node.users
    )


class TokenImageOps:
    """A pad of a channels-first sequence's tokens read by conv1d's, and the conv1d's of it."""

    def op_pad(self, node, x, pad, mode="constant", value=None):
        src = x.src if isinstance(x, Pointwise) else x
        if (
            not isinstance(x, (Vec, Affine, Pointwise))
            or tuple(getattr(src, "tags", ()) or ()) != _CHANNELS_FIRST
            or len(pad) != 2
            or not _conv1d_input_only(node)
        ):
            return super().op_pad(node, x, pad, mode, value)
        left, right = (int(p) for p in pad)
        if mode != "constant" or value not in (None, 0) or left < 0 or right < 0:
            raise refuse(
                node,
                f"a pad by {[left, right]} ({mode}, value {value}) of a "
                "sequence's tokens [batch, channels, T] read by a conv1d: only one "
                "by zeros is the convolution's padding",
                help=_HELP,
            )
        h = self.vec(x, node)
        t = int(node.args[0].meta["val"].shape[-1])
        self.__dict__.setdefault("token_images", {})
        name = self.fresh(f"{node.name}_image")
        self.out.stmts.append(f"{name} = image({h.name}, {self.dim(1)}, {self.dim(t)})")
        img = Vec(name, IMAGE, h.dim)
        self.token_images[name] = t
        return Padded(img, (0, 0, left, right))

    def op_conv1d(self, node, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        inner = x.vec if isinstance(x, Padded) else x
        t = getattr(self, "token_images", {}).get(getattr(inner, "name", None))
        if t is None:
            return super().op_conv1d(node, x, w, b, stride, padding, dilation, groups)
        layer = strip_prefix(getattr(w, "target", "?")).removesuffix(".weight")
        one = [int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride])]
        d = [int(s) for s in (dilation if isinstance(dilation, (list, tuple)) else [dilation])]
        p = (
            [int(s) for s in (padding if isinstance(padding, (list, tuple)) else [padding])]
            if not isinstance(padding, str)
            else None
        )
        if (
            not isinstance(w, PRef)
            or (b is not None and not isinstance(b, PRef))
            or len(w.shape) != 3
            or w.rows
            or w.t
            or w.offset
            or w.cols
            or one != [1]
            or d != [1]
            or p is None
            or len(p) != 1
        ):
            raise refuse(
                node,
                f"the conv1d {layer} of a sequence's tokens padded by zeros, "
                f"stride {stride}, padding {padding}, dilation {dilation}: only a "
                "whole kernel param [out, in / g, K], stride and dilation 1 and a "
                "padding of its own by a number is traced",
                help=_HELP,
            )
        kernel = PRef(w.target, (w.shape[0], w.shape[1], 1, w.shape[2]))
        y = self.op_conv2d(node, x, kernel, b, (1, 1), (0, p[0]), (1, 1), groups)
        width = int(node.meta["val"].shape[-1])
        if width == t:  # back to the sequence: its tokens
            seq = self.sequences().get(t) or self.dim(t)
            self.out.vectors.pop(y.name, None)
            name = self.emit_vector(node.name, f"tokens({y.name}, {seq})")
            self.token_images.setdefault("_out", set()).add(name)
            return Vec(name, _CHANNELS_FIRST, y.dim)
        if not _conv1d_input_only(node):
            raise refuse(
                node,
                f"the conv1d {layer} of a sequence's tokens padded by zeros, "
                f"{width} tokens long where the sequence has {t}, read by another op "
                "than a conv1d: the language's sequences keep their length",
                help=_HELP,
            )
        self.token_images[y.name] = t
        return y

    def op_conv2d(self, node, x, w, *rest, **kwargs):
        """A convolution of per-head vectors [batch, heads, T, dh] by a kernel (K, 1) in one
        group per head (Nystromformer's conv over the value heads' tokens): refused as what it
        is. Each head's K taps are one number per head shared by its dh coordinates, and the
        language's token convolution (tconv) takes one kernel per coordinate; the form would be
        a sum over the taps of spread(w_j, dh) * shift(v, p - j), whose taps are slices of one
        param along its kernel axis, which apply has no block for."""
        src = x.src if isinstance(x, Pointwise) else x
        tags = tuple(getattr(src, "tags", ()) or ())
        if (
            isinstance(w, PRef)
            and len(w.shape) == 4
            and tags[-2:] == ("tok", "dh")
            and "H" in tags
            and w.shape[-1] == 1
        ):
            layer = strip_prefix(w.target).removesuffix(".weight")
            raise refuse(
                node,
                f"the convolution {layer} of per-head vectors [batch, heads, "
                f"tokens, dh] by a kernel {list(w.shape[-2:])} in a group per head "
                "(Nystromformer's conv over the value heads' tokens): each head's "
                f"{w.shape[-2]} taps are shared by its dh coordinates, which the "
                "language's token convolution, one kernel per coordinate (tconv), "
                "cannot say",
                help="convolve the value's channels [batch, n, tokens] "
                "depthwise (nn.Conv1d(n, n, K, groups=n, padding=K // 2): tconv), or "
                "build the model without it (Nystromformer's conv_kernel_size=None)",
            )
        return super().op_conv2d(node, x, w, *rest, **kwargs)

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        """``y[..., i·d:(i+1)·d]`` of such a convolution's tokens, k parts of d features (Zaya's
        query and key heads, as many of each): the language's ``part(y, d, i)``, the same
        exponents as y's. Any other slice is the next class's."""
        outs = getattr(self, "token_images", {}).get("_out", ())
        if (
            not isinstance(v, Vec)
            or v.name not in outs
            or v.tags != ("tok", "tok", "F")
            or dim % 3 != 2  # of the tokens: any vector's (a shift's slice)
        ):
            return super().op_slice(node, v, dim, start, end, step)
        size = v.dim
        lo, hi = int(start or 0), size if end is None else min(int(end), size)
        lo, hi = (lo + size if lo < 0 else lo), (hi + size if hi < 0 else hi)  # y[..., -d:]
        d = hi - lo
        if step != 1 or d <= 0 or size % d or lo % d:
            raise refuse(
                node,
                f"a slice [{lo}:{hi}] of the {size} features of a convolution "
                "over the tokens: only one of its k equal parts (the language's "
                "part(y, d, i)) is traced",
                help="give the convolution's parts the same number of features (as "
                "many key heads as query heads), or convolve each part apart",
            )
        name = self.emit_vector(node.name, f"part({v.name}, {self.dim(d)}, {lo // d})")
        return Vec(name, v.tags, d)
