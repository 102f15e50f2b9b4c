"""Layout ops: views, transposes, permutes, and the split of a fused layer's output."""

from __future__ import annotations

import dataclasses
import math

from .clamped import ClampedRows
from .ops_bias import refuse_key_bias
from .ops_conv import is_image
from .ops_spread import spread_of_view
from .ops_timemajor import time_major
from .values import (
    Affine,
    Aux,
    Conc,
    KVRepeat,
    OneToken,
    PairStack,
    Parts,
    Pointwise,
    PRef,
    Probs,
    Scores,
    Spread,
    Sub,
    Trig,
    Vec,
)
from .where import CHECK_OPS, op_name, refuse

_PROBS_HELP = ("keep the attention weights' last two axes (queries, keys) as they are and "
               "matmul them with the values (or use F.scaled_dot_product_attention)")


class LayoutOps:
    """Layout ops: views, transposes, permutes, and the split of a fused layer's output."""

    # -- layout ops --------------------------------------------------------------------------
    def view(self, node, v):
        shape = tuple(node.meta["val"].shape)
        if time_major(v):  # laid out (tokens, batch, ...): ops_timemajor.py
            return self.time_major_view(node, v, self._shape(node.args[0]), shape)
        if isinstance(v, PairStack):  # rotate_every_two's flatten (ops_rotary.py)
            return self.pairs_flattened(node, v)
        if isinstance(v, (Conc, Aux)):
            return self.concrete(node, *self.args(node))
        if isinstance(v, Spread):  # a vector param viewed per head (ops_spread.py)
            return self.spread_view(node, v)
        paired = self.pairs_view(node, v)  # a head's pairs, a complex rotary's (ops_complex.py)
        if paired is not None:
            return paired
        if (spread := spread_of_view(node, v)) is not None:  # b.view(1, 1, H, dh): a bias's
            return spread  # features per head (ops_spread.py)
        if isinstance(v, PRef):  # a table of positions laid out as a grid (ops_grid.py)
            args, kwargs = self.args(node)
            return self.laid_op(node, op_name(node), [self.laid(node, v), *args[1:]], kwargs)
        if isinstance(v, KVRepeat) or getattr(v, "group", 1) != 1:  # grouped-query attention
            return self.repeat_kv_merge(node, v)
        self._whole(node, v)
        if is_image(v):  # a pooled image flattened (ops_conv.py)
            return self.image_view(node, v)
        old = self._shape(node.args[0])
        if isinstance(v, Probs):  # DeBERTa's: probs.view(b * H, t, t), then bmm with the values
            return self._probs_view(node, v, old, shape)
        image = self.tokens_to_image(node, v, old, shape)  # tokens laid out as pixels
        if image is not None:  # (ops_pixels.py)
            return image
        if one_axis_averaged(node):  # x.view(..., 1, d).mean(-2): x itself (Zaya's heads
            _one_sequence_averaged(node, v)  # of a group of one)
            return v
        tags = self._tags(v, node)
        if shape == (*old, 1) and tags[-1] == "F" and _per_head_gate(node, -1):
            return self.head_gate(node, v)  # g.view(b, t, H, 1): g.unsqueeze(-1) (ops_gate.py)
        if isinstance(v, Vec) and tags == ("tok", "F", "tok") and old[-1] == 1 and \
                shape == tuple(old[:-1]):  # one token's axis dropped: Swin's pooled tokens
            return Vec(v.name, ("tok", "F"), v.dim)
        groups = self._groups(node, v, old, shape)
        if groups is None:  # a fused qkv laid out per head, heads merged with the batch
            groups = self.fused_heads(node, v, old, shape) or self.merged_heads(old, shape, v)
        if groups is None:  # a row per head of every token, and back (ops_delta.py)
            groups = self.head_rows(node, v, old, shape)
        if groups is None and not (old[1:2] == (1,) and _one_head(node, old, shape, tags)):
            # one head of a vector's features (MLA's rotary key: ops_mla.py); of one token
            # (Perceiver's one decoder query), a view to (B, 1, 1, C) then permuted to heads
            # first is the split into one head below, as for more tokens
            groups = self.one_head_view(node, v, old, shape)
        if groups is not None:
            return groups
        feat = [s for s, t in zip(old, tags, strict=True) if t != "tok"]
        lead = [s for s, t in zip(old, tags, strict=True) if t == "tok"]
        if shape[-1] == old[-1] and tags[-1] in ("F", "dh") and "H" not in tags \
                and not _one_head(node, old, shape, tags):
            new = ("tok",) * (len(shape) - 1) + (tags[-1],)
            if math.prod(shape[:-1]) != math.prod(lead):
                raise refuse(node, f"a view from {list(old)} to {list(shape)}")
            self._keeps_the_batch(node, old, shape)
            return self._retag(v, new)
        if (
            tags[-1] == "F"
            and len(shape) == len(old) + 1
            and shape[:-2] == tuple(old[:-1])
            and shape[-2] * shape[-1] == old[-1]
        ):
            v = self.vec(v, node)
            return Vec(v.name, ("tok",) * (len(shape) - 2) + ("H", "dh"), v.dim, shape[-1])
        if tags[-2:] == ("H", "dh") and len(shape) == len(old) - 1 and shape[-1] == math.prod(feat):
            v = self.vec(v, node)  # a lazy product (x.view(B, T, H, dh) * c) written first
            return Vec(v.name, ("tok",) * (len(shape) - 1) + ("F",), v.dim)
        # channels-first [B, C, T] split into heads [B, H, dh, T] and merged back (SqueezeBERT's
        # transpose_for_scores after a kernel-1 conv1d: ops_conv1d.py); a view keeps the order
        if tags == ("tok", "F", "tok") and len(shape) == 4 and (shape[0], shape[3]) == (
                old[0], old[2]) and shape[1] * shape[2] == old[1] and isinstance(v, Vec):
            return Vec(v.name, ("tok", "H", "dh", "tok"), v.dim, shape[2])
        if tags == ("tok", "H", "dh", "tok") and len(shape) == 3 and (shape[0], shape[2]) == (
                old[0], old[3]) and shape[1] == old[1] * old[2] and isinstance(v, Vec):
            return Vec(v.name, ("tok", "F", "tok"), v.dim)
        if tags == tuple("tok" if i != len(tags) - 1 else "dh" for i in range(len(tags))) or (
            shape == tuple(old)
        ):
            return v
        if tags[-2:] == ("H", "dh") and isinstance(v, Vec) and len(shape) == len(old) and \
                tuple(shape[:-2]) == tuple(old[:-2]) and shape[-1] < old[-1] and \
                old[-1] % shape[-1] == 0:
            # each head split into finer heads (CodeGen's q, k, v in mp_num = 4 blocks, each
            # [4, n/4] of the heads of its block, viewed [H, dh]): a view keeps the features'
            # order, so the vector is the same and only its heads are smaller
            return Vec(v.name, v.tags, v.dim, shape[-1])
        if tags == ("tok", "tok", "F") and len(shape) == 3 and shape[0] == old[0] * old[1] \
                and shape[1] * shape[2] == old[2]:
            raise refuse(node, f"a view from {list(old)} to {list(shape)} of a per-token "
                         "vector: every token as an example of its own, its features cut into "
                         f"{shape[1]} blocks of {shape[2]}, as a block-diagonal layer through "
                         "bmm reads them (RecurrentGemma's RG-LRU gates): the tracer reads "
                         "a block-diagonal layer only as a grouped kernel-1 conv1d",
                         help="write it as nn.Conv1d(c, c, 1, groups=blocks) of the "
                         "channels-first value, or with one nn.Linear per block")
        if tags == ("tok", "tok", "F") and len(shape) == 3 and shape[-1] == 1 and \
                shape[0] * shape[1] == math.prod(old) and shape[0] % (old[0] * old[1]) == 0:
            raise refuse(node, f"a view from {list(old)} to {list(shape)} of a per-token "
                         f"vector: {shape[0] // (old[0] * old[1])} sets of {shape[1]} "
                         "weights per token, as a kernel computed from each token reads them "
                         "(ConvBERT's dynamic convolution, applied to the token's neighbours): "
                         "the language convolves with trained kernels only (tconv, dwconv)",
                         help="mix the tokens with a trained kernel (a depthwise nn.Conv1d) or "
                         "attention, or write the model as a program")
        raise refuse(node, f"a view from {list(old)} to {list(shape)}")

    def _keeps_the_batch(self, node, old, shape) -> None:
        """A view of a per-token vector into (batch, tokens, ...) axes must keep the input's
        batch first: ``e.reshape(1, B * T, n)`` (or ``(2 * B, T // 2, n)``) folds the batch
        into the tokens, and what then reads the tokens (a shift, a slice, a mean, attention)
        would cross one sequence into the next, which the language's per-sequence ops do not."""
        batch = getattr(self.tok_value, "shape", (None,))[0]
        if len(shape) > 2 and batch is not None and shape[0] != batch:
            raise refuse(node, f"a view from {list(old)} to {list(shape)} of a per-token "
                         f"vector, which regroups the batch of {batch} sequences and their "
                         "tokens: ops over the tokens would then cross from one sequence "
                         "into the next", help="keep the batch axis first and the tokens "
                         "of each sequence on their own (x.view(B, T, ...)), or flatten "
                         "both to one axis for ops that treat each token alone")

    def _probs_view(self, node, p: Probs, old, shape) -> Probs:
        """Attention weights with their batch and heads axes merged into one or split back
        (as their logits may be: ops_heads.merged_heads): the same weights, laid out as the
        values they then mix; any other view of them refused."""
        s = self.merged_heads(old, shape, p.scores)
        if s is None:
            raise refuse(node, f"a view from {list(old)} to {list(shape)} of attention weights "
                         "(only one that merges or splits their batch and heads axes is "
                         "traced)", help=_PROBS_HELP)
        return Probs(s, p.name)

    def _groups(self, node, v, old, shape) -> Parts | None:
        """A linear layer's output viewed as (..., k, m) and only ever unbound or indexed along
        the k axis (``qkv.view(b, t, 3, c).unbind(2)``): k row blocks of m features, as a
        split gives; or viewed as (..., k, H, dh) so (ModernBERT's ``qkv.view(b, t, 3, -1,
        dh).unbind(-3)``): the same k contiguous blocks, each viewed into heads of dh, as a
        separate projection's output is; None for any other view (a view into heads)."""
        per_head = len(shape) == len(old) + 2 and math.prod(shape[-3:]) == old[-1]
        if not (isinstance(v, Affine) and shape[:len(old) - 1] == tuple(old[:-1]) and (
                per_head and v.dh is None
                or len(shape) == len(old) + 1 and shape[-2] * shape[-1] == old[-1])):
            return None
        axis = len(old) - 1

        def along_k(user) -> bool:
            op = op_name(user)
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            return op in ("unbind", "select") and isinstance(dim, int) and dim % len(shape) == axis

        if not node.users or not all(along_k(u) for u in node.users):
            return None
        m = math.prod(shape[axis + 1:])
        blocks = [self.row_block(v, i * m, (i + 1) * m, node.name) for i in range(shape[axis])]
        if per_head:  # each block's rows h·dh..(h+1)·dh are its head h
            blocks = [dataclasses.replace(b, tags=b.tags[:-1] + ("H", "dh"), dh=shape[-1])
                      for b in blocks]
        return Parts(blocks)

    def op_unbind(self, node, v, dim=0):
        if isinstance(v, Parts):  # a fused layer's output viewed as its blocks (_groups)
            return v
        if isinstance(v, PRef) and len(v.shape) == 1 and dim in (0, -1):
            # a 1-D param's entries, each one number (HY v4's scale.unbind(0)): p[0], p[1], ...
            return Parts([self.param_entry(node, v, 0, i) for i in range(v.shape[0])])
        raise refuse(node, "an unbind of anything but a linear layer's output viewed as "
                     "(..., blocks, features)", help="chunk or split the layer's output along "
                     "its features instead")

    def op_select(self, node, v, dim, index):
        if isinstance(v, Parts):
            return self.head_part(dataclasses.replace(v.items[index], node=node.name), node)
        if isinstance(v, PRef):  # p[i] of a 1-D param: one number (ops_entries.py)
            return self.param_entry(node, v, dim, index)
        if getattr(v, "tags", getattr(getattr(v, "src", None), "tags", None)) == (
                "tok", "tok", "H", "dh") and isinstance(dim, int) and dim % 4 == 2:
            return self.one_part(node, v, index)
        return self.first_token(node, v, dim, index)  # h[:, 0]: BERT's pooler (ops_encoder)

    def one_part(self, node, v, index) -> Vec:
        """``p[:, :, i, :]`` of a per-token vector viewed (batch, tokens, k, d): its
        coordinates i·d .. (i+1)·d - 1, the language's ``part(p, d, i)`` (Gemma 4's per-layer
        inputs, k = L parts of d features, layer i reading part i). The program says k·d and
        d; the verifier refuses a k that is not the same at every width."""
        x = self.vec(v, node)
        k, d = self._shape(node.args[0])[-2:]
        name = self.emit_vector(node.name, f"part({x.name}, {self.dim(d)}, {index % k})")
        return Vec(name, ("tok", "tok", "F"), d)

    def _whole(self, node, v):
        if isinstance(v, Sub):  # only a rotary turns a part of each head, then cat puts it back
            raise refuse(
                node,
                "a part of each head's coordinates used as a vector (the language's vectors "
                "are whole; a slice of a head is traced only inside a rotary embedding)",
                help="use the whole head, or rotate the part and concatenate it back with the "
                "rest (partial rotary)",
            )

    def _shape(self, a):
        return tuple(a.meta["val"].shape)

    def _tags(self, v, node=None):
        """Each torch axis's tag of a per-token value; a value without them refused at ``node``
        with its op: attention weights (only a view of their batch and heads axes and their
        matmul with the values are traced), a param, ..."""
        tags = getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", None)
        if isinstance(v, OneToken) and node is not None:  # a split-off class token
            raise self.refuse_one_token(node, v)
        if tags is None:
            if node is None:  # the callers without a node check the value's type first
                raise AssertionError(v)
            op = getattr(getattr(node.target, "_overloadpacket", None), "__name__", node.target)
            if isinstance(v, Probs):
                raise refuse(node, f"a {op} of attention weights (only a view that merges or "
                             "splits their batch and heads axes, and their matmul with the "
                             "values, are traced)", help=_PROBS_HELP)
            kind = type(v).__name__
            raise refuse(node, f"a {op} of {_WHAT.get(kind, f'a {kind} value')}")
        return tags

    def _retag(self, v, tags):
        if isinstance(v, Pointwise):
            return Pointwise(Vec(v.src.name, tags, v.src.dim, v.src.dh), v.f, v.node)
        if isinstance(v, (Vec, Affine, Scores)):
            return type(v)(**{**v.__dict__, "tags": tags})
        raise AssertionError(v)

    def op_transpose(self, node, v, d0, d1):
        if isinstance(v, PRef):
            return PRef(v.target, v.shape, not v.t, v.rows)
        self._whole(node, v)
        tags = list(self._tags(v, node))
        perm = list(range(len(tags)))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        moved = self.time_major_relayout(node, v, perm)  # tokens first (ops_timemajor.py)
        if moved is not None:
            return moved
        self._same_kind_kept(node, v, tags, perm)
        tags[d0], tags[d1] = tags[d1], tags[d0]
        if isinstance(v, Affine) and v.dh and (v.w.rows is None or split_along(
                node, len(tags) - 1)):  # per head, split after (a block of it split again)
            return self._retag(v, tuple(tags))
        if isinstance(v, Affine) and not v.dh and "F" in tags and (split_along(
                node, tags.index("F")) or read_by_conv1d(node)):
            # LFM's in_proj(h).transpose(-1, -2) chunked into B, C, x along the channels: row
            # blocks (_split); Qwen3.5's fed to a short convolution split after (ops_tconv.py)
            return self._retag(v, tuple(tags))
        return self._retag(self.vec(v, node) if isinstance(v, Affine) else v, tuple(tags))

    def op_t(self, node, v):
        return self.op_transpose(node, v, 0, 1)

    def op_numpy_T(self, node, v):  # ``W.T`` written by hand: x @ W.T is x's linear layer
        if isinstance(v, PRef) and len(v.shape) == 2:
            return self.op_t(node, v)
        raise refuse(node, "a .T of anything but a weight matrix")

    def op_permute(self, node, v, dims):
        if isinstance(v, PRef) and len(dims) == 2:
            return self.op_t(node, v)
        if isinstance(v, Spread):  # a vector param viewed per head (ops_spread.py)
            return self.spread_permute(node, v, dims)
        self._whole(node, v)
        tags = self._tags(v, node)
        moved = self.time_major_relayout(node, v, [d % len(tags) for d in dims])
        if moved is not None:  # tokens first, or back (ops_timemajor.py)
            return moved
        self._same_kind_kept(node, v, tags, [d % len(tags) for d in dims])
        new = tuple(tags[d] for d in dims)
        if isinstance(v, Affine) and v.dh and v.w.rows is None and dims[-1] % len(dims) == len(
                dims) - 1:  # per head, split after (as op_transpose): the features stay last
            return self._retag(v, new)
        if isinstance(v, Affine) and not v.dh and split_along(node, new.index("F")):
            # FocalNet's proj_in(h).permute(0, 3, 1, 2) split into q, ctx and gates along the
            # features: row blocks of the layer, as an unpermuted split (_split)
            return self._retag(v, new)
        return self._retag(self.vec(v, node), new)

    def _same_kind_kept(self, node, v, tags, perm) -> None:
        """Refuse a transpose or permute (``perm``: the old axis of each new one) of a
        per-token vector that swaps two axes of one kind, the batch and a sequence's tokens
        ("tok") or an image's rows and columns ("px"): the language names neither, so its
        program would compute the value as if unswapped (attention over the batch, a
        convolution of the transposed image); of attention logits, their query and key axes
        (a softmax over the queries, where the program's is over the keys). A swap that its
        only readers undo (x.transpose(2, 3).transpose(2, 3)) is the value itself."""
        if not isinstance(v, (Vec, Affine, Pointwise, Scores)):
            return
        kind = swapped_kind(tags, perm)
        if kind is None or _undone(node, perm, tags) or _undoes(node, perm, tags):
            return
        if isinstance(v, Scores):  # s.transpose(-1, -2): the softmax would run over the queries
            raise refuse(node, "a transpose or permute of attention logits that swaps their "
                         "query and key axes (or the batch and either): the softmax after it "
                         "would normalise over the queries, and the weights mix the values of "
                         "the queries' tokens, where the language's attention normalises each "
                         "query's logits over the keys", help="keep the logits (batch, heads, "
                         "queries, keys), q @ k.transpose(-1, -2), or undo the swap right after "
                         "it")
        what = {"tok": "the batch and tokens axes (or two token axes)",
                "px": "an image's rows and columns (its two pixel axes)"}[kind]
        raise refuse(node, f"a transpose or permute that swaps {what}: the language's values "
                     "have no such relayout, and the program would compute the value as if "
                     "unswapped", help="keep the axes' order (batch first, then tokens; an "
                     "image's rows before its columns), or undo the swap right after it")

    def op_split(self, node, v, size, dim=-1):
        sizes = (
            [size] * (self._shape(node.args[0])[dim] // size)
            if isinstance(size, int)
            else list(size)
        )
        return self._split(node, v, sizes, dim)

    def op_split_with_sizes(self, node, v, sizes, dim=-1):
        return self._split(node, v, list(sizes), dim)

    def op_chunk(self, node, v, chunks, dim=0):
        # torch.chunk's sizes (the last one may be smaller), as the graph computed them
        sizes = [int(t.shape[dim]) for t in node.meta["val"]]
        return self._split(node, v, sizes, dim)

    def _split(self, node, v, sizes, dim):
        if isinstance(v, ClampedRows):  # a clamp of the layer's output, split (ops_pointwise)
            return self.split_clamped(node, v, sizes, dim)
        ndim = len(self._shape(node.args[0]))
        halves = self._rotary_halves(node, v, sizes, dim, ndim)
        if halves is not None:
            return halves
        parts = self.split_cat(node, v, sizes, dim)  # a concatenation's parts (ops_concat.py)
        if parts is not None:
            return parts
        if isinstance(v, PRef) and len(v.shape) == 1 and v.rows is None and not v.offset:
            # a 1-D param's blocks (HY v4's base.split(m): the pre and post weights' biases),
            # each a vector param of its own, as a fused layer's bias blocks are
            bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
            return Parts([dataclasses.replace(v, rows=(lo, hi), part=k) for k, (lo, hi) in
                          enumerate(zip(bounds, bounds[1:], strict=False))])
        if isinstance(v, Affine) and v.dh and v.w.period is None and (
                self._tags(v, node)[dim % ndim] == "H"):
            # whole heads of a fused layer (ops_heads), its heads axis wherever a transpose put
            # it (DiffLlama's value heads halved after (batch, heads, tokens, head dim))
            return self.split_heads(node, v, sizes)
        if not isinstance(v, Affine) and dim % ndim == ndim - 1 and "H" in self._tags(v, node):
            raise refuse(
                node,
                f"a split of each head's features into parts of {', '.join(map(str, sizes))} "
                "of a value that is not a linear layer's output: the tracer splits a linear "
                "layer's output viewed per head into parts, each a per-head vector of its own "
                "(multi-head latent attention's query and key/value), or a map of each of its "
                "coordinates alone read by nothing else (an activation, a batch norm of its "
                "channels), or slices the part of each head a partial rotary turns",
                help="split the layer's output right after its view into heads, with nothing "
                "between but coordinatewise functions and a batch norm (a layer norm mixes the "
                "features), or slice the part a rotary turns",
            )
        # (the last axis is the features but where a transpose put the tokens or pixels there:
        # LFM's in_proj(h).transpose(-1, -2), FocalNet's permuted layer, their row blocks)
        if not isinstance(v, Affine) or dim % ndim != ndim - 1 and (
                v.dh or self._tags(v, node)[dim % ndim] != "F") \
                or _axis_tag(self._tags(v, node), dim, ndim) in _NOT_FEATURES:
            conv = self.token_conv_output(v)  # (ops_tconv.py)
            raise refuse(
                node,
                "a split of anything but a linear layer's output features" + (
                    f" (here of {conv}, which is split only where it convolves a linear "
                    "layer's output, each part the convolution of the layer's rows of it, with "
                    "nothing between but transposes, casts and coordinatewise functions)"
                    if conv else ""),
                help="split the fused layer's output right after the layer (before any "
                "activation or view), or use separate layers" + (
                    ", each part with a depthwise nn.Conv1d of its own" if conv else ""),
            )
        items, start = [], 0
        # a block of each head split again (AXK2's query, split off its gate): its parts named
        # after it, part i_j, where the parts' own places would repeat the first split's
        again = v.w.rows is not None and v.w.period is not None and v.w.part is not None
        for s in sizes:
            # named by getitem, and by its place: a block's rows need not say it (GPT-BigCode's
            # key starts at row n, n / dh heads in)
            part = f"{v.w.part}_{len(items)}" if again else len(items)
            items.append(self.row_block(v, start, start + s, v.node, part=part))
            start += s
        return Parts(items)

    def _rotary_halves(self, node, v, sizes, dim, ndim) -> Parts | None:
        """``x1, x2 = chunk(x, 2, -1)`` of a per-head vector, each half only multiplied by a cos
        or sin table (gpt-oss's ``_apply_rotary_emb``): the two halves of each head, as
        rotate_half's slices are (ops_rotary.py's products and sums then check that they make a
        rotation); None for any other split."""
        if len(sizes) != 2 or sizes[0] != sizes[1] or dim % ndim != ndim - 1 or \
                not isinstance(v, (Vec, Affine)) or "H" not in self._tags(v, node):
            return None
        uses = [(g, u) for g in node.users for u in g.users]
        if not uses or any(op_name(g) != "getitem" for g in node.users) or any(
                op_name(u) != "mul" or not any(
                    isinstance(self.env.get(getattr(a, "name", None)), Trig)
                    for a in u.args if a is not g)
                for g, u in uses):
            return None  # (a half multiplied by anything but a cos or sin table: no rotary)
        x = self.vec(v, node)
        if x.tags[-1] != "dh" or x.dh != 2 * sizes[0]:
            return None
        return Parts([Sub(x, 0, sizes[0]), Sub(x, sizes[0], 2 * sizes[0])])

    def row_block(self, v: Affine, lo: int, hi: int, name: str, part=None) -> Affine:
        """Output features lo..hi of a linear layer (of a row block of it): the rows lo..hi of
        its weight and bias, a param of their own in the program (so a fused projection traces
        as the separate ones it stands for)."""
        off = v.w.rows[0] if v.w.rows else 0
        rows = (off + lo, off + hi)
        # per head (v.dh: ops_heads.py), rows lo..hi of each head's group of rows
        wr = PRef(v.w.target, v.w.shape, v.w.t, rows, period=v.w.period, part=part,
                  expert=v.w.expert)
        br = (PRef(v.b.target, v.b.shape, v.b.t, rows, period=v.b.period, part=part,
                   expert=v.b.expert)
              if v.b is not None else None)
        return Affine(v.x, wr, br, name, v.tags, v.layer or v.node, hi - lo if v.dh else None)

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        if isinstance(v, PRef) and len(v.shape) == 3:  # PVT's pos[:, 1:] (ops_grid.py)
            return self.laid_op(node, "slice", [self.laid(node, v), dim, start, end, step], {})
        ndim = len(self._shape(node.args[0]))
        block = isinstance(v, Affine) and not (v.dh and v.w.rows)  # not a block's head slice
        # (or along the features of a layer's output permuted channels-first: FocalNet's gates;
        # its last axis there is tokens or pixels, no features)
        across = isinstance(v, Affine) and (
            _axis_tag(self._tags(v, node), dim, ndim) in _NOT_FEATURES)
        features = not across and (dim % ndim == ndim - 1 or isinstance(v, Affine) and not v.dh
                                   and self._tags(v, node)[dim % ndim] == "F")
        if block and features and step == 1:
            size = self._shape(node.args[0])[dim]
            lo, hi = (
                min(size, max(0, e + size if e < 0 else e))
                for e in (start or 0, size if end is None else end)
            )
            return self.head_part(self.row_block(v, lo, hi, node.name), node)
        size = self._shape(node.args[0])[-1]
        if isinstance(v, Affine) and not v.dh and v.w.rows is None and v.w.period is None and \
                dim % ndim == ndim - 1 and not across and step == 2 and start in (None, 0, 1) and \
                (end is None or end >= size) and size % 2 == 0:
            # every other output feature (gpt-oss's gate_up[..., ::2] and [..., 1::2], its gate
            # and up interleaved): row `start` of every pair of rows, a param of its own, as a
            # block of every head's rows is
            first = start or 0
            w = PRef(v.w.target, v.w.shape, v.w.t, (first, first + 1), period=2, part=first,
                     expert=v.w.expert)
            b = None if v.b is None else PRef(v.b.target, v.b.shape, v.b.t, (first, first + 1),
                                              period=2, part=first, expert=v.b.expert)
            return Affine(v.x, w, b, node.name, v.tags, v.layer or v.node)
        return self.head_slice(node, v, dim, start, end, step)

    def op_unsqueeze(self, node, v, dim):
        if isinstance(v, (PRef, Spread)):  # b[None, None, :], refused in any other layout
            return self.spread(node, v)
        over = self.over_tokens(node, v, dim)  # a vector per sequence (ops_global.py)
        if over is not None:
            return over
        if "H" in self._tags(v, node):  # HF's repeat_kv: v[:, :, None].expand(...).reshape(...)
            return self.repeat_kv_axis(node, v, dim)
        one = self.one_head(node, v, dim)  # GPT-BigCode's multi-query layer (ops_heads.py)
        if one is not None:
            return one
        if _per_head_gate(node, dim):  # one number per head over its coordinates (ops_gate.py)
            return self.head_gate(node, v)
        self.refuse_gate_axis(node, dim)  # a gate's axis read otherwise: a hint (ops_gate.py)
        refuse_key_bias(node, dim)  # a bias per key on the logits (ops_bias.py)
        raise refuse(node, "an added axis on a per-token vector")


def _one_head(node, old, shape, tags) -> bool:
    """``x.view(B, T, 1, C)`` of a vector per token then permuted (or transposed) to (B, 1, T,
    C) for attention: a split into one head of all C features (PVTv2's and SegFormer's first
    stage), not a new token axis of size 1."""

    def to_heads(u) -> bool:
        if op_name(u) == "transpose":
            return sorted(d % 4 for d in u.args[1:3]) == [1, 2]
        return op_name(u) == "permute" and tuple(d % 4 for d in u.args[1]) == (0, 2, 1, 3)

    return (tags[-1] == "F" and len(shape) == len(old) + 1 == 4 and shape[-2] == 1
            and shape[:-2] == tuple(old[:-1]) and bool(node.users)
            and all(to_heads(u) for u in node.users))


def one_axis_averaged(view) -> bool:
    """Whether a view only adds one axis of size 1 and every reader of it is a mean over
    exactly that axis (``x.view(b, t, H, 1, dh).mean(-2)``: Zaya's keys averaged over a group
    of one query head): the view and the mean together leave x as it is, its entries in
    place."""
    old = tuple(view.args[0].meta["val"].shape)
    return len(view.meta["val"].shape) == len(old) + 1 and bool(view.users) and all(
        averaged_axis(u) == old for u in view.users)


def _one_sequence_averaged(view, v) -> None:
    """Refuses a mean over an axis of 1 that a view added beside a token axis of size 1 (a
    batch of one sequence, or a sequence of one token, traced): the shapes cannot tell the
    added axis from that token axis, and ``x.view(b, 1, t, d).mean(0)``, a mean over the
    batch, is x only for one sequence."""
    old = tuple(view.args[0].meta["val"].shape)
    tags = tuple(getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", ()))
    if len(tags) != len(old):  # axes not known: any axis of 1 beside it may be a token axis
        tags = ("tok",) * len(old)
    for mean in view.users:
        dims = mean.args[1]
        at = (dims if isinstance(dims, int) else dims[0]) % (len(old) + 1)
        lo, hi = at, at  # the run of axes of 1 the added one sits in, as x's axes
        while lo > 0 and old[lo - 1] == 1:
            lo -= 1
        while hi < len(old) and old[hi] == 1:
            hi += 1
        if any(tags[k] == "tok" for k in range(lo, hi)):
            raise refuse(mean, f"a mean over an axis of 1 that a view from {list(old)} to "
                         f"{list(view.meta['val'].shape)} added beside a batch or token axis "
                         "of 1: it may average the batch (or the tokens), which only one "
                         "sequence (one token) traced leaves as they are",
                         help="trace with a batch of 2 or more sequences of 2 or more tokens")


def averaged_axis(mean) -> tuple | None:
    """The shape of a mean's input without the one axis it averages, where that axis is of
    size 1 and dropped (keepdim False): the shape the mean gives, which is its input's entries
    as they are; None for any other op or mean."""
    if op_name(mean) != "mean" or len(mean.args) < 2 or mean.kwargs.get("keepdim") or (
            len(mean.args) > 2 and mean.args[2]):
        return None
    shape = tuple(mean.args[0].meta["val"].shape)
    dims = mean.args[1]
    dims = [dims] if isinstance(dims, int) else list(dims)
    if len(dims) != 1 or shape[dims[0] % len(shape)] != 1:
        return None
    axis = dims[0] % len(shape)
    return shape[:axis] + shape[axis + 1:]


def _per_head_gate(node, dim) -> bool:
    """``g.unsqueeze(-1)`` that only multiplies tensors of a heads axis of g's last size and a
    head dim after it: one number per head over each head's coordinates."""
    shape = tuple(node.meta["val"].shape)
    if dim % len(shape) != len(shape) - 1 or not node.users:
        return False

    def heads(a):
        other = tuple(a.meta["val"].shape) if "val" in getattr(a, "meta", {}) else ()
        return len(other) == len(shape) and other[-2] == shape[-2] and other[-1] > 1

    def gates(n, u) -> bool:  # through coordinatewise functions: f(g.unsqueeze(-1))
        if op_name(u) in GATE_FNS and len(u.all_input_nodes) == 1 and u.users:
            return all(gates(u, w) for w in u.users)
        return op_name(u) == "mul" and any(heads(a) for a in u.all_input_nodes if a is not n)

    return all(gates(node, u) for u in node.users)


# the coordinatewise functions a per-head gate passes through (each the same function of g)
GATE_FNS = {"sigmoid", "tanh", "softplus", "silu", "gelu", "relu", "exp"}


_CARRIERS = {"contiguous", "clone", "alias", "to", "_to_copy", "type_as"}  # the same values
# the tags of axes that are no vector's features: a batch or a sequence's tokens, an image's rows
# and columns
_NOT_FEATURES = ("tok", "px")


def _axis_tag(tags: tuple, dim: int, ndim: int) -> str | None:
    """The tag of axis ``dim`` of a node of ``ndim`` axes, the tags aligned from the right (an
    expert's copy of a value, [tokens, features], read in a node that keeps the batch axis)."""
    i = dim % ndim - ndim
    return tags[i] if -len(tags) <= i else None


def read_by_conv1d(node) -> bool:
    """Whether every reader of ``node`` (through copies and casts) is a conv1d of it."""
    users = [(node, u) for u in node.users]
    while users:
        src, u = users.pop()
        if op_name(u) in _CARRIERS:
            users += [(u, r) for r in u.users]
        elif op_name(u) in CHECK_OPS:  # export's check of the value's metadata
            continue
        elif op_name(u) != "conv1d" or not u.args or u.args[0] is not src:
            return False
    return bool(node.users)


def split_along(node, axis: int) -> bool:
    """Whether every reader of ``node`` (through copies and casts) splits it along ``axis``."""
    users = list(node.users)
    while users:
        u = users.pop()
        op = op_name(u)
        if op in _CARRIERS:
            users += list(u.users)
        elif op not in ("split", "split_with_sizes", "chunk") or len(u.args) < 3 or \
                u.args[2] % len(node.meta["val"].shape) != axis:
            return False
    return bool(node.users)


def swapped_kind(tags, perm) -> str | None:
    """The kind ("tok" or "px") of two axes whose order ``perm`` swaps, or None."""
    for kind in ("tok", "px"):
        old = [i for i in perm if tags[i] == kind]
        if old != sorted(old):
            return kind
    return None


def _perm_of(node, n) -> list | None:
    """The old axis of each new one of a transpose or permute node of ``n`` axes, else None."""
    op = op_name(node)
    if op == "transpose":
        perm = list(range(n))
        d0, d1 = (d % n for d in node.args[1:3])
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if op == "permute":
        return [d % n for d in node.args[1]]
    return None


def _undoes(node, perm, tags) -> bool:
    """Whether ``node`` undoes the swap of the transpose or permute it reads (through copies
    and casts), which its reader alone reads (:func:`_undone`)."""
    src = node.args[0]
    while op_name(src) in _CARRIERS and len(src.users) == 1:
        src = src.args[0]
    first = _perm_of(src, len(perm))
    if first is None or len(src.users) != 1:
        return False
    before = [None] * len(perm)  # the tags of the first one's input
    for j, i in enumerate(first):
        before[i] = tags[j]
    return swapped_kind(before, [first[i] for i in perm]) is None


def _undone(node, perm, tags) -> bool:
    """Whether every reader of ``node`` (through copies and casts) transposes or permutes it
    back: the order of every kind of axis restored."""
    users = list(node.users)
    if not users:
        return False
    for u in users:
        op = op_name(u)
        if op in _CARRIERS:
            if not _undone(u, perm, tags):
                return False
            continue
        back = _perm_of(u, len(perm))
        if back is None or swapped_kind(tags, [perm[d] for d in back]) is not None:
            return False
    return True


# the user's words for a value of the trace that an op reads where only others are traced
_WHAT = {"TokensFrom": "a slice of a sequence's tokens (h[:, k:], read by a mean, a pad that moves "
         "them, shift(h, k), or a layer as tail(h, T) after P learned tokens, h[:, P:])"}
