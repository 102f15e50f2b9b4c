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

from collections.abc import Callable
from dataclasses import dataclass

from .gained import Gained, block_of
from .values import Affine, Joined, OneToken, Parts, Pointwise, PRef, TokensFrom, Vec
from .where import CHECK_OPS, op_name, refuse, strip_prefix

_CHANNELS_FIRST = ("tok", "F", "tok")
_HELP = ("write the short convolution as nn.Conv1d(c, c, K, groups=c, padding=K - 1) of a "
         "[batch, c, tokens] value, its output's first tokens kept, conv(h)[..., :T] (causal), "
         "or with padding=K // 2, K odd (same-padded), stride and dilation 1")


@dataclass
class Taps:
    """A depthwise Conv1d weight [c, 1, K] with its axis of 1 squeezed out (transformers'
    ``causal_conv1d_forward``): read only as ``taps.unsqueeze(1)``, the weight again."""

    ref: PRef


@dataclass
class SplitConv:
    """A depthwise token convolution written part by part (``_split_conv``), held through the
    ops before the split of its channels; nothing else reads it."""

    parts: list
    ops: list


_SPLITS = ("split", "split_with_sizes", "chunk")
# between the convolution and the split: the same values, or a coordinatewise function of one
_CARRY = ("contiguous", "clone", "alias", "to", "_to_copy", "type_as")
_ACTS = ("silu", "gelu", "relu", "sigmoid", "tanh")


def _channel_split(node, causal: bool):
    """(the ops, the split node, its sizes) where the convolution ``node``'s value reaches one
    split of its channels through single readers that each keep its values or apply a
    coordinatewise function (its first T tokens first, where ``causal``); None otherwise."""
    cur, axis, chain = node, 1, []
    while len(readers := _readers(cur)) == 1:
        u = readers[0]
        op = op_name(u)
        if not u.args or u.args[0] is not cur:
            return None
        if op == "slice" and cur is node and causal or op in _CARRY:
            chain.append((u, "keep"))
        elif op == "transpose":
            d0, d1 = (int(a) % 3 for a in u.args[1:3])
            axis = d1 if axis == d0 else d0 if axis == d1 else axis
            chain.append((u, "transpose"))
        elif op in _ACTS and len(u.args) == 1:
            chain.append((u, "act"))
        elif op in _SPLITS and len(u.args) > 2 and int(u.args[2]) % 3 == axis \
                and (not causal or chain):
            return chain, u, [int(t.shape[axis]) for t in u.meta["val"]]
        else:
            return None
        cur = u
    return None


def _readers(node) -> list:
    """The nodes that read ``node``'s value (export's checks of its metadata read none)."""
    return [u for u in node.users if op_name(u) not in CHECK_OPS]


def _only_into(node, conv) -> bool:
    """Whether ``node``'s value reaches no reader but ``conv``, through copies, casts and
    transposes."""
    readers = _readers(node)
    return bool(readers) and all(
        u is conv or op_name(u) in _CARRY + ("transpose",) and _only_into(u, conv)
        for u in readers)


def _composed(fns: list) -> Callable:
    """The coordinatewise function the ``fns`` nodes apply, in order, to a tensor."""
    def f(t):
        for u in fns:
            t = u.target(t, **u.kwargs)
        return t
    return f


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

    def op_tensor_split(self, node, v, indices, dim=0):
        """Refused: of a sequence's tokens, saying what splits them so (a recurrence's chunked
        and token-by-token steps, the next op after a short convolution in Mamba-2 and Gated
        DeltaNet layers); of anything else, as the walk refuses an op it lacks."""
        tags = tuple(self._tags(v, node) or ()) if isinstance(v, (Vec, Affine, Pointwise)) \
            else ()
        if tags and 0 < dim % len(tags) and tags[dim % len(tags)] == "tok":
            raise refuse(node, "a split of a sequence's tokens into pieces (tensor_split along "
                         "the tokens), as a recurrence over the tokens computed piece by piece "
                         "reads them (an SSM's selective scan, a gated delta rule: their chunked "
                         "and token-by-token steps): the tracer reads no recurrence; the "
                         "language mixes a sequence's tokens by attention, shift and tconv",
                         help="write the model as a program, or mix its tokens with attention")
        raise refuse(node, "the op tensor_split")

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
        if len(shape) != 3:
            raise refuse(node, f"{what} of an unbatched value [{c} channels, tokens]",
                         help="give it a batch axis first, [batch, channels, tokens]")
        causal = p == k - 1 and 2 * p != k - 1
        if causal:
            self._causal_slice(node, what, int(shape[2]))
        split = _channel_split(node, causal)
        layer_out = x.out if isinstance(x, Gained) else x  # (times a fixed gain: ops_fixedgain)
        if split is not None and sum(split[2]) == c and (
                isinstance(layer_out, Affine) and tuple(x.tags) == _CHANNELS_FIRST
                and not layer_out.dh and layer_out.w.period is None
                and layer_out.w.expert is None and not isinstance(layer_out.x, Joined)
                or isinstance(x, Vec) and tuple(x.tags) == _CHANNELS_FIRST
                and [q.dim for q in self.cat_parts.get(x.name, ())] == split[2]):
            return self._split_conv(node, x, w, b, p, split)
        x = self.vec(x, node)
        if tuple(x.tags) != _CHANNELS_FIRST or x.dim != c:
            raise refuse(node, f"{what} of a value laid out otherwise than [batch, {c} "
                         f"channels, tokens] (its tags {list(x.tags)})",
                         help="give it the per-token vectors transposed channels-first, "
                         "h.transpose(1, 2) of a [batch, tokens, channels] value")
        named = _readers(node)[0].name if causal else node.name
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

    def _split_conv(self, node, x: Affine | Vec | Gained, w: PRef, b, p: int, split) -> SplitConv:
        """The convolution of a linear layer's output whose channels are split after it (with
        only transposes, casts and coordinatewise functions between: Qwen3.5's q, k, v; Mamba-2's
        x, B, C): its channels are independent, so part j is the convolution of the layer's rows
        of part j by the kernel's (and bias's) rows of part j, ``tconv(D_j, W_j @ h + b_j, p) +
        c_j``, each a param of its own (row blocks, as a fused layer's split); of a
        concatenation split at its parts' bounds (OLMo-hybrid's and Kimi's cat of q, k and v
        layers), of each part. The ops between are walked by :meth:`call` on the parts; the
        split gives them (getitem names each)."""
        chain, at, sizes = split
        if isinstance(x, Vec):
            self._drop_cat(x.name, node)
        parts, lo = [], 0
        for j, size in enumerate(sizes):
            rows = (lo, lo + size)
            if isinstance(x, Vec):  # cat(q, k, v) of the separate layers (OLMo-hybrid's)
                xj = self.cat_parts[x.name][j]
            elif isinstance(x, Gained):  # the rows' block times its entries of the gain
                block = self.row_block(x.out, *rows, x.out.node, part=j)
                xj = self.vec(block_of(x, block, *rows), node)
                self.out.vectors.pop(xj.name, None)
            else:
                xj = self.emit_affine(self.row_block(x, *rows, x.node, part=j), x.node)
                self.out.vectors.pop(xj.name, None)  # no value of the model's holds it alone
            kernel, _ = self.param(PRef(w.target, w.shape, rows=rows, part=j), node)
            bias = self.vector_param(PRef(b.target, b.shape, rows=rows, part=j), node) \
                if b is not None else None
            name = self.fresh(f"{node.name}_part{j}")
            self.out.stmts.append(f"{name} = tconv({kernel}, {xj.name}, {p})"
                                  + (f" + {bias}" if bias else ""))
            self.out.producers[name] = (kernel, bias)
            self._tconvs = {**getattr(self, "_tconvs", {}),
                            name: strip_prefix(w.target).removesuffix(".weight")}
            parts.append(Vec(name, x.tags, size))
            lo += size
        held = SplitConv(parts, [])
        self._split_chain = {**getattr(self, "_split_chain", {}),
                             **{u.name: held for u, _ in chain}, at.name: held}
        held.ops = chain
        return held

    def _drop_cat(self, name: str, conv) -> None:
        """Leave out the statement ``name = cat(...)`` where the convolution ``conv``, read part
        by part, is its only reader (through copies and transposes: its parts are read
        instead); where anything else reads it, the statement stays for that reader."""
        cat = self.by_name.get(self.out.cats.get(name, (None, ""))[1])
        if cat is None or not _only_into(cat, conv):
            return
        self.out.stmts = [s for s in self.out.stmts if not s.startswith(f"{name} = cat(")]
        self.out.vectors.pop(name, None)
        self.out.cats.pop(name, None)

    def call(self, node):
        held = getattr(self, "_split_chain", {}).get(node.name)
        if held is None:
            return super().call(node)
        if op_name(node) not in _SPLITS:
            return held  # a slice, cast, transpose or function: applied to the parts at the split
        tags, fns = list(_CHANNELS_FIRST), []
        for u, op in held.ops:
            if op == "transpose":
                d0, d1 = (int(a) % 3 for a in u.args[1:3])
                tags[d0], tags[d1] = tags[d1], tags[d0]
            elif op == "act":
                fns.append(u)
        items = []
        for part in held.parts:
            v = Vec(part.name, tuple(tags), part.dim)
            items.append(Pointwise(v, _composed(fns), node.name) if fns else v)
        return Parts(items)

    def _causal_slice(self, node, what: str, t: int) -> str:
        """The name of the slice keeping the first ``t`` of the T + K - 1 tokens a padding by
        K - 1 gives, the only reader the convolution may have; refused otherwise."""
        users, size = _readers(node), int(node.meta["val"].shape[2])  # T + K - 1 tokens
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
