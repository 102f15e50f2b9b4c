"""Multi-head latent attention (DeepSeek-V3's MLA; MiniCPM3, GLM-4.7-Flash, Youtu): each
head's query and key are concatenations of parts of different sizes, and one key part is a
single head shared by every query head.

    q = W_qb · norm(W_qa · x)          viewed per head, split into q_nope (dn) and q_pe (dr)
    c, k_pe = split(W_kva · x)          the compressed kv (kv_lora_rank) and ONE head of dr
    k_nope, v = split(W_kvb · norm(c))  per head: dn and dv features
    logits = scale · cat(q_nope, rot(q_pe)) · cat(k_nope, rot(k_pe) expanded over the heads)

The logits over a head of cat(a, b) are dot(a_q, a_k) + dot(b_q, b_k), so the program writes
them as the sum of two per-head dots under the one scale the model applies,
``attn * dot(q_nope, k_nope, dn) + attn * dot(q_pe, k_pe, dr)``: the first a multi-head term,
the second multi-query (k_pe of dim dr, one head serving all: grouped-query attention with
dim(k) = dh). The fused projections' rows become the separate params they stand for (q_b's
nope and rope rows of each head, kv_a's compressed and rotary rows, kv_b's key and value rows
of each head), and the engine derives each one's exponents from its dims; nothing here is
keyed by the layer's role. Where the rotary head dim stays finite while the heads grow, k_pe's
rows are a projection of finite fan-out meeting infinitely many query heads, which derive
refuses with its reason (docs/theory.md, "Grouped-query attention").
"""

from __future__ import annotations

import operator

from .values import Affine, Blank, HeadCat, Pointwise, Scores, Slot, Vec
from .where import op_name, refuse

_HELP = ("build each head's query and key as cat(part, part, dim=-1) of per-head vectors "
         "(MLA's no-rotary and rotary parts), or write the attention as a Tensor Program")


# the ops that take heads concatenated from parts, or a key built in place, as they are
_TAKES_PARTS = {"cat", "scaled_dot_product_attention", "slice", "copy_", "new_empty"}
_EAGER = {"transpose", "matmul"}  # eager attention's q @ k.transpose(2, 3)


class LatentAttentionOps:
    """Heads concatenated from parts of different vectors and sizes, a key head shared by all
    heads, and attention over such heads as a sum of one dot per part."""

    def call(self, node):
        """Heads concatenated from parts have no program vector of their own (the program has
        one per part), so any op on them but sdpa's (or the cat and copies that build them) is
        refused here, at the op, with what to do."""
        if node.target is not operator.getitem and op_name(node) not in _TAKES_PARTS:
            args, kwargs = self.args(node)
            if op_name(node) in _EAGER and isinstance(args[0], (HeadCat, Blank)):
                return self._eager(node, *args)
            if any(isinstance(x, (HeadCat, Blank, Slot)) for x in _flat(args, kwargs)):
                raise refuse(node, f"a {op_name(node)} of heads concatenated from parts of "
                             "different vectors (multi-head latent attention's query or key): "
                             "the program writes attention over them as one dot per part, and "
                             "has no vector for the concatenation",
                             help="pass the concatenated query and key straight to "
                             "F.scaled_dot_product_attention (HF: attn_implementation='sdpa')")
        return super().call(node)

    def _eager(self, node, x, *rest):
        """Eager attention over heads of parts: ``k.transpose(2, 3)`` transposes each part,
        ``q @ k^T`` is the logits of each part's pair (their dots summed when the logits are
        emitted, ``logits``); the values' matmul then reads the first part's heads (``mix``)."""
        x = self.filled(node, x) if isinstance(x, Blank) else x
        if op_name(node) == "transpose" and isinstance(x, HeadCat):
            return HeadCat(tuple(self.op_transpose(node, p, *rest) for p in x.parts))
        k = rest[0] if rest else None
        k = self.filled(node, k) if isinstance(k, Blank) else k
        if not (isinstance(x, HeadCat) and isinstance(k, HeadCat) and len(x.parts) == len(
                k.parts) and all(a.tags[-1] == "dh" and b.tags[-2] == "dh" and a.dh == b.dh
                                 for a, b in zip(x.parts, k.parts, strict=True))):
            raise refuse(node, f"a {op_name(node)} of heads concatenated from parts other than "
                         "attention's q @ k.transpose(-2, -1) with parts that pair up",
                         help=_HELP)
        for a, b in zip(x.parts, k.parts, strict=True):
            self.grouped(node, a, b, "keys")
        return Scores(x, k, 1.0, node.name, x.parts[0].tags[:-1] + ("tok",))

    # -- keys built in place: key = x.new_empty(...); key[..., :a].copy_(k_nope); ... ----------
    def op_new_empty(self, node, like, size, *rest, **kwargs):
        return Blank(node.name, int(node.meta["val"].shape[-1]))

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        if not isinstance(v, Blank):
            return super().op_slice(node, v, dim, start, end, step)
        ndim = len(node.args[0].meta["val"].shape)
        lo, hi = (min(v.size, max(0, e + v.size if e < 0 else e))
                  for e in (start or 0, v.size if end is None else end))
        if dim % ndim != ndim - 1 or step != 1:
            raise refuse(node, "a slice of a new_empty tensor other than a part of its last "
                         "axis, filled by copy_", help=_HELP)
        return Slot(v, lo, hi)

    def op_copy_(self, node, dst, src, *rest):
        if not isinstance(dst, Slot) or any(not (hi <= dst.lo or lo >= dst.hi)
                                            for lo, hi, _ in dst.blank.fills):
            raise refuse(node, "an in-place copy_ into anything but a part of a new_empty "
                         "tensor's last axis, each part filled once", help=_HELP)
        dst.blank.fills.append((dst.lo, dst.hi, src))
        return dst

    def filled(self, node, b: Blank):
        """What a blank holds once its parts are copied in: the one part, or its parts in
        order as each head's concatenation; refused unless they cover its last axis."""
        fills = sorted(b.fills, key=lambda f: f[0])
        ends = [0] + [hi for _, hi, _ in fills]
        if not fills or [lo for lo, _, _ in fills] != ends[:-1] or ends[-1] != b.size:
            raise refuse(node, f"a new_empty tensor read before copy_ has filled its last "
                         f"axis ({b.size} features; filled: "
                         f"{[(lo, hi) for lo, hi, _ in fills]})", help=_HELP)
        parts = [x for _, _, x in fills]
        return parts[0] if len(parts) == 1 else self.head_cat(node, parts, -1)

    # -- one head shared by all: view(b, 1, t, d), then expand over the heads ---------------------
    def one_head_view(self, node, v, old, shape):
        """A (batch, tokens, d) vector viewed as (batch, 1, tokens, d): one head of d features
        (MLA's rotary key, viewed so for HF's caches), which a rotary turns and an expand then
        shares with every query head; None for any other view, or where a linear layer reads
        the view (MLA's compressed kv, viewed the same way: per token features still)."""
        if not (isinstance(v, (Vec, Affine)) and v.tags == ("tok", "tok", "F")
                and getattr(v, "dh", None) is None and tuple(shape) == (old[0], 1, *old[1:])
                and node.users and not any(op_name(u) == "linear" for u in node.users)):
            return None
        v = self.vec(v, node)
        return Vec(v.name, ("tok", "H", "tok", "dh"), v.dim, v.dim)

    def shared_head(self, node, v, old, new):
        """``k.expand(-1, H, -1, -1)`` of one head: the same key head for all H query heads,
        multi-query attention's sharing (each query head's logits read it); None for any other
        expand."""
        if not (isinstance(v, Vec) and v.group == 1 and "H" in v.tags and v.dh == v.dim):
            return None
        axis = v.tags.index("H")
        if len(old) != len(new) or old[axis] != 1 or any(
                a != b for i, (a, b) in enumerate(zip(old, new, strict=True)) if i != axis):
            return None
        return Vec(v.name, v.tags, v.dim, v.dh, new[axis])

    # -- each head as the concatenation of parts -----------------------------------------------
    def head_cat(self, node, tensors, dim):
        """``cat(parts, dim=-1)`` of per-head vectors of the same heads (their own head dims,
        one of them possibly one head shared by all): each head the parts' features in order;
        None where the tensors are no such parts."""
        parts = []
        for t in tensors:
            if isinstance(t, HeadCat):
                parts.extend(t.parts)
                continue
            if isinstance(t, Affine) and t.dh or isinstance(t, Pointwise) and t.src.dh:
                t = self.vec(t, node)  # a part times a constant too (LongCat-Flash's LoRA scale)
            if not (isinstance(t, Vec) and t.dh and t.tags[-1] == "dh"):
                return None
            parts.append(t)
        ndim = len(parts[0].tags) if parts else 0
        if len(parts) < 2 or dim % ndim != ndim - 1 or any(p.tags != parts[0].tags
                                                           for p in parts):
            return None
        heads = {p.dim // p.dh * p.group for p in parts}
        if len(heads) != 1:
            raise refuse(node, "a concatenation of per-head vectors of different head counts "
                         f"({sorted(heads)})", help=_HELP)
        return HeadCat(tuple(parts))

    def latent_attention(self, node, q, k, v, mask, is_causal, scale):
        """sdpa over heads concatenated from parts: one dot per part, under the model's one
        scale, then the values mixed. The value heads' dim must be a part's (the language's
        ``mix`` reads the value heads from the logits' first dot, put first here)."""
        qs, ks = (list(x.parts) if isinstance(x, HeadCat) else [self.vec(x, node)]
                  for x in (q, k))
        if [x.dh for x in qs] != [x.dh for x in ks]:
            raise refuse(node, "attention whose queries' and keys' heads are concatenations of "
                         f"parts of different sizes (queries {[x.dh for x in qs]}, keys "
                         f"{[x.dh for x in ks]}): the logits are one dot per part, so the parts "
                         "must pair up", help=_HELP)
        v = self.vec(v, node)
        first = next((i for i, x in enumerate(qs) if x.dh == v.dh), None)
        if first is None:
            raise refuse(node, f"multi-head latent attention whose value heads ({v.dh} "
                         f"features) match none of the query heads' parts ({[x.dh for x in qs]}):"
                         " the language's mix reads the value heads from the logits' first dot",
                         help="give the values the head dim of the queries' no-rotary part "
                         "(v_head_dim = qk_nope_head_dim, as DeepSeek's configs do)")
        order = [first] + [i for i in range(len(qs)) if i != first]
        qs, ks = [qs[i] for i in order], [ks[i] for i in order]
        for a, b in zip(qs, ks, strict=True):
            self.grouped(node, a, b, "keys")  # a shared rotary key: dim(k) = dh, MQA
        factor = scale if scale is not None else sum(x.dh for x in qs) ** -0.5
        return self.attend(node, HeadCat(tuple(qs)), HeadCat(tuple(ks)), v, mask, is_causal,
                           factor)


def _flat(args, kwargs) -> list:
    return [x for a in (*args, *kwargs.values()) for x in (a if isinstance(a, (list, tuple))
                                                           else [a])]
