"""A depthwise conv1d over a channels-first sequence's tokens, traced as the language's
``tconv(D, h, p)`` (token t of channel c reads the K tokens from t - p on, zeros where none
comes), D the Conv1d weight [c, 1, K] as it is.

Two layouts of padding keep the sequence's length, and only these are read:

* causal, the short convolution of LFM, Mamba and linear attention: ``nn.Conv1d(c, c, K,
  groups=c, padding=K - 1)`` (or ``F.conv1d(h, w, b, padding=K - 1, groups=c)``), then
  ``[..., :T]``, the first T of its T + K - 1 tokens: p = K - 1. Every reader of the
  convolution must be that slice (the tokens after T read the zeros past the end, no token of
  the program), and the program's vector stands for the slice's value;
* same-padded (ConvBERT's ``padding=K // 2``, K odd; ``padding="same"``): p = (K - 1) // 2.

Transformers' kernel-hub wrapper passes the weight as ``conv1d.weight.squeeze(1)`` and the
convolution reads it back as ``weight.unsqueeze(1)``: the squeezed weight is held as
:class:`Taps`, which only that unsqueeze reads. Any stride, dilation, other groups, other
padding, a slice keeping other tokens, or another reader of the padded output is refused at the
user's line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import OneToken, PRef, TokensFrom, Vec
from .where import op_name, refuse, strip_prefix

_CHANNELS_FIRST = ("tok", "F", "tok")
_HELP = ("write the short convolution as nn.Conv1d(c, c, K, groups=c, padding=K - 1) of a "
         "[batch, c, tokens] value, its output's first tokens kept, conv(h)[..., :T] (causal), "
         "or with padding=K // 2, K odd (same-padded), stride and dilation 1")


@dataclass
class Taps:
    """A depthwise Conv1d weight [c, 1, K] with its axis of 1 squeezed out (transformers'
    ``causal_conv1d_forward``): read only as ``taps.unsqueeze(1)``, the weight again."""

    ref: PRef


def _ints(a) -> list:
    return list(a) if isinstance(a, (list, tuple)) else [a]


def _text(a) -> str:
    """A conv argument as written for one axis: 2 for [2], "same" as it is."""
    return str(_ints(a)[0]) if len(_ints(a)) == 1 else str(a)


class TokenConvOps:
    """``conv1d`` of a kernel wider than 1, depthwise over the tokens, and the ops around it:
    the weight squeezed and unsqueezed back, and the slice of a causal one's first tokens."""

    def op_squeeze(self, node, v, dim=None):
        if isinstance(v, PRef) and len(v.shape) == 3 and v.shape[1] == 1 and \
                _ints(dim) in ([1], [-2]) and not (v.t or v.rows or v.offset or v.cols):
            return Taps(v)
        # no other squeeze has a value of the language: refused as the walk refuses an op it
        # lacks (a slice of the tokens there, saying what reads it)
        if isinstance(v, (TokensFrom, OneToken)):
            self.vec(v, node)
        raise refuse(node, "the op squeeze")

    def op_unsqueeze(self, node, v, dim):
        if isinstance(v, Taps):
            if _ints(dim) in ([1], [-2]):
                return v.ref
            raise refuse(node, f"a squeezed conv1d weight {strip_prefix(v.ref.target)} "
                         f"unsqueezed at axis {dim}, not back at axis 1", help=_HELP)
        return super().op_unsqueeze(node, v, dim)

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        if node.args[0].name in getattr(self, "_causal_convs", ()):
            return v  # the causal convolution's first T tokens (checked at the convolution)
        return super().op_slice(node, v, dim, start, end, step)

    def token_conv(self, node, x, w: PRef, b, stride, padding, dilation, groups) -> Vec:
        """``tconv(D, h, p) (+ b)`` for a depthwise conv1d of kernel K > 1 (its checks: the
        module's docstring); refused otherwise."""
        layer = strip_prefix(w.target).removesuffix(".weight")
        c, k = w.shape[0], w.shape[2]
        shape = tuple(node.args[0].meta["val"].shape)
        c_in = int(shape[-2])  # (an unbatched [c, T] is refused below, by its layout)
        pads = _ints(padding)
        p = None
        if padding == "same":
            p = (k - 1) // 2  # torch pads the odd one of an even kernel's K - 1 at the end
        elif len(pads) == 1 and isinstance(pads[0], int) and 2 * pads[0] == k - 1:
            p = pads[0]
        elif len(pads) == 1 and pads[0] == k - 1:
            p = k - 1  # causal: the slice of the first T tokens, checked below
        what = (f"the conv1d {layer} of kernel {k}, stride {_text(stride)}, padding "
                f"{_text(padding)}, dilation {_text(dilation)}, groups {groups}")
        if not (groups == c_in == c and w.shape[1] == 1):
            raise refuse(node, f"{what} over the tokens: only a depthwise one (groups = in = out "
                         "channels, a kernel [c, 1, K]) is traced, each channel reading its own "
                         "K tokens (the language's tconv)", help=_HELP)
        if not _ints(stride) == [1] or not _ints(dilation) == [1] or p is None:
            raise refuse(node, f"{what}: a depthwise convolution over the tokens is traced with "
                         "stride 1, dilation 1 and the padding that keeps the sequence's "
                         "length: K - 1 then its first T tokens (causal) or K // 2 for K odd "
                         "(same-padded)", help=_HELP)
        x = self.vec(x, node)
        if tuple(x.tags) != _CHANNELS_FIRST or x.dim != c:
            raise refuse(node, f"{what} of a value laid out otherwise than [batch, {c} "
                         f"channels, tokens] (its tags {list(x.tags)})",
                         help="give it the per-token vectors transposed channels-first, "
                         "h.transpose(1, 2) of a [batch, tokens, channels] value")
        named = node.name
        if p == k - 1 and 2 * p != k - 1:
            named = self._causal_slice(node, what, int(shape[2]))
        kernel, _ = self.param(w, node)
        bias = self.vector_param(b, node) if b is not None else None
        expr = f"tconv({kernel}, {x.name}, {p})" + (f" + {bias}" if bias else "")
        # linear in D and b together: a multiplier on it folds into them
        out = Vec(self.emit_vector(named, expr, (kernel, bias)), x.tags, c)
        self._tconvs = {**getattr(self, "_tconvs", {}), out.name: layer}
        return out

    def token_conv_output(self, v) -> str:
        """What ``v`` is, where it is a depthwise convolution over the tokens or a coordinatewise
        function of one ("the conv1d conv's output"); "" for anything else."""
        src = getattr(v, "src", v)
        layer = getattr(self, "_tconvs", {}).get(getattr(src, "name", None))
        return f"the conv1d {layer}'s output" if layer else ""

    def _causal_slice(self, node, what: str, t: int) -> str:
        """The name of the slice keeping the first ``t`` of the T + K - 1 tokens a padding by
        K - 1 gives, the only reader the convolution may have; refused otherwise."""
        users, size = list(node.users), int(node.meta["val"].shape[2])  # T + K - 1 tokens
        for u in users:
            args = list(u.args) + [None] * 5
            dim, start, end, step = (u.kwargs.get(n, a) for n, a in zip(
                ("dim", "start", "end", "step"), args[1:5], strict=True))
            lo, hi = ((e + size if isinstance(e, int) and e < 0 else e) for e in (start, end))
            if op_name(u) != "slice" or u.args[0] is not node or dim is None or dim % 3 != 2 \
                    or lo not in (None, 0) or hi != t or step not in (None, 1):
                reader = f"the op {op_name(u)}" if op_name(u) != "slice" else (
                    f"a slice of its tokens {start}:{end} (dim {dim})")
                raise refuse(node, f"{what}, padded by K - 1 on both sides (T + K - 1 tokens), "
                             f"read by {reader}: only its first T = {t} tokens, "
                             "conv(h)[..., :T], are a causal convolution of the sequence",
                             help=_HELP)
        if not users:
            raise refuse(node, f"{what}, padded by K - 1 and not read", help=_HELP)
        self._causal_convs = getattr(self, "_causal_convs", set()) | {node.name}
        return users[0].name
