"""Norms and attention: layer_norm, rms_norm, causal masks, softmax, sdpa, and grouped-query
attention's repeated key/value heads (sdpa's enable_gqa, HF's repeat_kv, repeat_interleave)."""

from __future__ import annotations

import dataclasses

from .values import Blank, Conc, HeadCat, KVRepeat, PRef, Probs, RelBias, Scores, Vec, Zeroed
from .where import module_of, op_name, refuse

_GQA_HELP = ("repeat each key/value head for consecutive query heads, as HF's repeat_kv "
             "(x[:, :, None].expand(b, kv, g, t, d).reshape(b, kv * g, t, d)), "
             "torch.repeat_interleave(x, g, dim=1) or sdpa's enable_gqa=True do")


class AttentionOps:
    """Norms and attention: layer_norm, rms_norm, causal masks, softmax, sdpa."""

    # -- norms, attention --------------------------------------------------------------------
    def op_layer_norm(self, node, x, shape, w=None, b=None, *rest):
        return self._norm(node, "layernorm", x, w, b, shape)

    def op_rms_norm(self, node, x, shape, w=None, *rest):
        return self._norm(node, "rmsnorm", x, w, None, shape)

    def _norm(self, node, fn, x, w, b, shape):
        last = tuple(node.args[0].meta["val"].shape)[-1:]
        if tuple(shape) != last:  # F.layer_norm(x, (T, C)): over several axes together
            raise refuse(node, f"a {fn} over the last {len(shape)} axes {list(shape)} "
                         f"together: the language's norms are over a vector's own dim (or a "
                         f"head's), the last axis alone ({last[0]})",
                         help="normalise over the last axis only, normalized_shape = "
                         "(x.shape[-1],), as nn.LayerNorm(d) does")
        x = self.vec(x, node)
        if x.tags[-1] not in ("F", "dh"):
            raise refuse(node, f"a {fn} over anything but a vector's own dim or a head's")
        expr = f"{fn}({self.norm_args(x)})"
        if w is not None:  # over a head: a gain (and a bias) of the head dim, shared by every head
            expr = f"{self.vector_param(w, node)} * {expr}"
        if b is not None:
            expr += f" + {self.vector_param(b, node)}"
        name = self.emit_vector(node.name, expr)
        if w is not None:  # g * norm(x) + b is linear in (g, b), as W @ x + b in (W, b)
            self.out.producers[name] = (self.vector_param(w, node),
                                        self.vector_param(b, node) if b is not None else None)
        return Vec(name, x.tags, x.dim, x.dh)

    def norm_args(self, x: Vec) -> str:
        """A norm's arguments: the vector, and the head dim when it normalises each head's
        coordinates (QK-norm: Qwen3, OLMo2, Gemma3), ``rmsnorm(q, dh)``."""
        return f"{x.name}, {self.dim(x.dh)}" if x.tags[-1] == "dh" else x.name

    def _masked(self, node, s: Scores, mask, additive: bool):
        import torch

        t = mask.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if mask.dtype == torch.bool:  # sdpa keeps True entries, masked_fill drops them
            keep = mask if additive else ~mask
        else:
            keep = (mask > -1e4) if additive else None
        if keep is not None and bool(keep.all()):
            # every query sees every key (an encoder's mask of an all-ones attention_mask, or
            # HF's bidirectional mask helpers): the mask changes nothing, and the softmax is
            # bidirectional unless the call is causal itself
            return s
        if mask.dim() >= 2 and mask.shape[-2] not in (1, t):
            # queries of one sequence, keys of a longer one (the tokens after a prompt, h[:, P:],
            # attending to it and the prompt): the causal mask is over one sequence's tokens
            raise refuse(node, f"an attention mask of {mask.shape[-2]} queries by {t} keys that "
                         "does not keep every key: the language's causal mask is over the "
                         "tokens of one sequence, queries and keys alike",
                         help="attend from the whole sequence (queries and keys of the same "
                         "tokens) and cut the tokens after the attention")
        if keep is None or not bool((keep == causal).all()):
            raise refuse(node, "an attention mask that is neither the causal mask nor one that "
                         "keeps every key (a padding mask hides keys per example, which the "
                         "language's attention over all tokens cannot say)",
                         help="trace with example inputs without padding: no attention_mask, "
                         "or one of all ones; the µP derived holds for padded batches too")
        return dataclasses.replace(s, causal=True)  # a soft-cap or a relative bias kept

    def zeroed(self, node, u, v) -> Zeroed | None:
        """Logits times a constant 0/1 mask (OpenAI GPT's ``w * b``): kept apart until the
        additive part that completes the mask (:meth:`unzeroed`); None: no such product."""
        import torch

        for s, m in ((u, v), (v, u)):
            value = getattr(m, "value", None)
            if isinstance(s, Scores) and isinstance(m, Conc) and isinstance(value, torch.Tensor) \
                    and value.is_floating_point() and bool(((value == 0) | (value == 1)).all()):
                return Zeroed(s, value.bool())
        return None

    def unzeroed(self, node, z: Zeroed, add: Conc, alpha) -> Scores:
        """``w * b + c * (1 - b)`` with c <= -1e4: the logits with a large negative at every
        dropped entry and unchanged at every kept one, i.e. the mask ``b`` applied as sdpa's
        boolean mask (exp(-1e4) is 0 in float32); then the causal mask or one keeping every key
        (_masked), anything else refused."""
        import torch

        value = getattr(add, "value", None)
        if isinstance(value, torch.Tensor):
            keep, value = torch.broadcast_tensors(z.keep, alpha * value)
            if bool((value[keep] == 0).all()) and bool((value[~keep] <= -1e4).all()):
                return self._masked(node, z.scores, z.keep, additive=True)
        raise refuse(node, "attention logits times a 0/1 mask, plus anything but a large "
                     "negative (-1e4 or less) at every entry the mask drops and 0 at the rest",
                     help="mask the logits with sdpa's is_causal=True, masked_fill with a "
                     "boolean mask, or w * b + -1e4 * (1 - b) as OpenAI GPT does")

    def op_masked_fill(self, node, s, mask, value):
        if not isinstance(s, Scores) or not isinstance(mask, Conc) or value > -1e4:
            raise refuse(node, "masked_fill outside attention's causal mask")
        return self._masked(node, s, mask.value, additive=False)

    def op_where(self, node, cond, x, y):
        """``torch.where(mask, logits, c)`` with a constant boolean mask and c <= -1e4 (GPT-2's
        and ImageGPT's eager attention, c their float type's lowest number): the logits where
        the mask holds and a weight of exactly 0 elsewhere, i.e. the mask applied as sdpa's
        boolean mask; ``where(mask, c, logits)`` drops the entries the mask holds instead.
        Then the causal mask or one keeping every key (_masked); anything else refused."""
        import torch

        mask = getattr(cond, "value", None) if isinstance(cond, Conc) else None
        for s, c, keep_true in ((x, y, True), (y, x, False)):
            c = c.value if isinstance(c, Conc) else c
            if isinstance(s, Scores) and isinstance(c, torch.Tensor) and c.device.type == "meta":
                # a tensor the forward makes (torch.tensor(c, device=w.device)) that the
                # export left on the meta device: its number cannot be read, so not checked
                raise refuse(node, "the op where with attention logits and a number held in a "
                             "tensor whose value the trace cannot read (made in the forward "
                             "on the logits' device)",
                             help="write the number itself, torch.where(mask, w, -1e4), or "
                             "torch.finfo(w.dtype).min; the mask must set the dropped logits "
                             "to -1e4 or less")
            if isinstance(s, Scores) and isinstance(mask, torch.Tensor) and \
                    mask.dtype == torch.bool and isinstance(c, (int, float, torch.Tensor)) and \
                    torch.as_tensor(c).numel() == 1 and float(c) <= -1e4:
                return self._masked(node, s, mask if keep_true else ~mask, additive=True)
        raise refuse(node, "the op where (other than attention logits kept where a constant "
                     "boolean mask holds and set to a large negative number, -1e4 or less, "
                     "elsewhere)",
                     help="mask the logits with sdpa's is_causal=True, masked_fill with a "
                     "boolean mask, or torch.where(causal_mask, w, torch.finfo(w.dtype).min)")

    def op_max(self, node, s, other=None, *rest):
        """``torch.max(logits, finfo.min)`` after an additive mask (XGLM's): a floor at the
        float type's lowest number changes no finite logit, and a masked one still gets weight
        exactly 0 from the softmax: the logits as they are."""
        import torch

        if getattr(node.target, "_overloadname", "") == "dim":
            # max(x, dim, keepdim): a reduction, not a floor (it had crashed on its arguments)
            raise refuse(node, "a max over a dimension of anything but attention logits (a "
                         "softmax stabilised by hand, the logits minus their row max, is traced: "
                         "ops_sink.py)")
        low = getattr(other, "value", other)
        dtype = node.meta["val"].dtype
        if isinstance(s, Scores) and isinstance(low, (int, float, torch.Tensor)) and (
                getattr(low, "numel", lambda: 1)() == 1 and dtype.is_floating_point
                and float(low) <= torch.finfo(dtype).min):
            return s
        raise refuse(node, "the op max (other than attention logits floored at their float "
                     "type's lowest number, torch.finfo(dtype).min)")

    def op_softmax(self, node, s, dim=-1, *rest):
        one = None if isinstance(s, Scores) else self.one_entry_softmax(node, dim)
        if one is not None:  # over an axis of one entry: 1 (SwiftFormer's, ops_global.py)
            return one
        if not isinstance(s, Scores) or dim not in (-1, len(s.tags) - 1):
            raise refuse(node, "a softmax of anything but attention logits")
        refuse_one_key(node, int(node.meta["val"].shape[-1]))
        logits = self.capped_logits(s, self.logits(s.q, s.k, s.factor, s.node, "out", s.bias))
        return Probs(s, f"{'causal_' if s.causal else ''}softmax({logits})")

    op__softmax = op_softmax

    def logits(self, q: Vec | HeadCat, k: Vec | HeadCat, factor: float, node: str, kind: str,
               bias: str | None = None) -> str:
        """``attn * dot(q, k, dh)`` (plus a relative position bias, ops_relative.py), the scale
        a slot whose width exponent trace.py measures. Heads concatenated from parts (MLA's,
        ops_mla.py) give one term per part: over a head of cat(a, b), the logits are
        dot(a_q, a_k) + dot(b_q, b_k). Each term has a scale of its own, all the model's one
        factor at the base width: the engine derives each from its own dot (1/d where that
        part's dim grows, Θ(1) where it stays finite), and apply folds each one's change into
        that part's query rows."""
        pairs = list(zip(getattr(q, "parts", (q,)), getattr(k, "parts", (k,)), strict=True))
        dhs = [self.dim(a.dh) for a, _ in pairs]
        dots = []
        for i, ((a, b), dh) in enumerate(zip(pairs, dhs, strict=True)):
            self.out.slots.append(("scale", factor))
            sc = self.fresh(f"attn_{node}" + (f"_part{i}" if i else ""))
            self.out.decls.append(f"scale {sc} = {{s{len(self.out.slots) - 1}}}")
            self.out.scales[sc] = {"q": a.name, "k": b.name, "slot": len(self.out.slots) - 1,
                                   # the module that computes the logits, and their node: where
                                   # apply may find the model's own scale (scale_attr.py)
                                   "caller": module_of(self.by_name[node]) if node in self.by_name
                                   else None, "node": node}
            dots.append(f"{sc} * dot({a.name}, {b.name}, {dh})")
        name = self.fresh(f"{node}_logits" if kind != "out" else node)
        plus = f" + {bias}" if bias else ""
        self.out.stmts.append(f"{name} = {' + '.join(dots)}{plus}")
        self.out.vectors[name] = (node, kind)
        return name

    def mix(self, node, p: Probs, v: Vec) -> Vec:
        q = p.scores.q
        if isinstance(q, HeadCat):  # eager MLA (ops_mla.py): the heads of the first dot
            q = q.parts[0]
            if q.dh != v.dh:
                raise refuse(node, f"multi-head latent attention whose value heads ({v.dh} "
                             f"features) are not those of the query's first part ({q.dh}): "
                             "the language's mix reads the value heads from the logits' "
                             "first dot", help="use sdpa (attn_implementation='sdpa'), which "
                             "the trace orders so, or give the values that head dim")
        w = p.scores.tags  # the weights' layout: the queries', or a view of them (merged heads)
        sdpa = op_name(node) == "scaled_dot_product_attention"  # (q, k, v): q's batch axes
        if not weights_paired(w, q, v, batch_shapes(node, 0, 2 if sdpa else 1)) or \
                not _no_broadcast(node):
            # torch batches the weights' axes with the values' by position: values left
            # [B, T, H, dh] pair head i's weights with token i's values (where H == T); checked
            # first, as the head counts below read v's axes as its layout names them
            raise refuse(node, f"attention weights laid out {layout_text(w)} times values "
                         f"laid out {layout_text(v.tags)}: torch pairs their batch axes by "
                         "position, so the weights of each head would mix the values of "
                         "another axis, not those of the same head",
                         help="lay the values out as the weights are, (batch, heads, tokens, "
                         "head dim) (v.view(b, t, h, d).transpose(1, 2)), or merge their "
                         "batch and heads as the weights' are (v.reshape(b * h, t, d))")
        # values in as many heads as the queries, of a head dim of their own (Perceiver's
        # decoder: queries and keys in 8 heads of 32, values of n in 8 heads of n/8); at a
        # width where the two head dims meet (n = 256 there) both forms compute the same, and
        # the one written is the other widths' (own_heads), so that the graphs match
        # Values of such heads fewer than the queries' (MiMo-V2-Flash: queries and keys in
        # heads of 192, values in heads of 128, both of 4 or 8 heads for 64 query heads) serve
        # whole groups of consecutive query heads, as grouped keys do: mix(p, v, dv, D), D the
        # queries' heads of dv each
        own = (None not in (v.dh, q.dh) and v.dim % v.dh == 0
               and (v.dh != q.dh or node.name in self.own_heads))
        out = v.dim
        if own:
            self.out.own_heads.add(node.name)
            heads, vheads = q.dim // q.dh, v.dim // v.dh
            # v.group: copies made by a repeat_kv before the call; sdpa's enable_gqa makes the
            # rest, each head's again consecutive: both together a whole group of the queries'
            if heads % vheads or (heads // vheads) % v.group:
                raise refuse(node, f"attention whose values ({v.dim} features in {vheads} heads "
                             f"of {v.dh}) do not come in whole groups of the queries' {heads} "
                             "heads", _GQA_HELP)
            out = heads * v.dh
        else:
            self.grouped(node, q, v, "values")
        head = f", {self.dim(v.dh)}" if own else ""
        head += f", {self.dim(out)}" if own and out != v.dim else ""
        name = self.emit_vector(node.name, f"mix({p.name}, {v.name}{head})")
        # the queries' heads, whatever v's count, laid out as the weights' batch, heads and
        # query axes are (torch's output keeps them): the values' own layout may differ only
        # in where its one head's axis (of size 1) was put by a view the export wrote for it
        return Vec(name, w[:-1] + ("dh",), out if own else q.dim, v.dh)

    def grouped(self, node, q: Vec, kv: Vec, what: str) -> None:
        """Keys (values) with fewer heads than the queries are grouped-query attention when each
        serves a whole group of consecutive query heads: whole heads of the queries' head dim,
        in a number that divides theirs (torch checks the repeated shapes; this, the program's
        own pairing)."""
        if kv.dim == q.dim:
            return
        if kv.dh != q.dh or kv.dim % q.dh or q.dim % kv.dim:
            raise refuse(node, f"attention whose {what} ({kv.dim} features in heads of {kv.dh}) "
                         f"do not come in whole groups of the queries' heads ({q.dim} features "
                         f"in heads of {q.dh})", _GQA_HELP)

    # -- grouped-query attention: HF's repeat_kv, repeat_interleave ------------------------------
    def repeat_kv_axis(self, node, v, dim):
        """``x[:, :, None]`` on key/value heads: the axis right after the heads, where HF's
        repeat_kv expands its copies (anywhere else the copies would interleave otherwise)."""
        v = v if isinstance(v, Vec) else self.vec(v, node)
        heads = v.tags.index("H")
        if dim % (len(v.tags) + 1) != heads + 1 or v.group != 1:
            raise refuse(node, "an added axis on attention heads other than right after them",
                         _GQA_HELP)
        return KVRepeat(v, heads + 1)

    def op_expand(self, node, v, sizes, *rest):
        if isinstance(v, PRef):  # cls.expand(B, 1, n): a class token (ops_encoder)
            return self.param_as_token(node, v)
        old = tuple(node.args[0].meta["val"].shape)
        new = tuple(node.meta["val"].shape)
        shared = self.shared_head(node, v, old, new)  # MLA's rotary key (ops_mla.py)
        if shared is not None:
            return shared
        if not isinstance(v, KVRepeat) or v.group is not None or len(new) != len(old) or any(
                a != b for i, (a, b) in enumerate(zip(old, new, strict=True)) if i != v.axis):
            raise refuse(node, "an expand of anything but key/value heads along a new axis "
                         "after them (HF's repeat_kv)", _GQA_HELP)
        return KVRepeat(v.src, v.axis, new[v.axis])

    def repeat_kv_merge(self, node, v):
        """The reshape that ends HF's repeat_kv: the heads and their copies merged into one axis
        of kv * g heads, head j*g + r being a copy of key/value head j."""
        old = tuple(node.args[0].meta["val"].shape)
        new = tuple(node.meta["val"].shape)
        a = v.axis if isinstance(v, KVRepeat) else None
        if a is None or v.group is None or new != old[:a - 1] + (old[a - 1] * old[a],) + old[
                a + 1:]:
            raise refuse(node, f"a view from {list(old)} to {list(new)} of repeated key/value "
                         "heads", _GQA_HELP)
        return Vec(v.src.name, v.src.tags, v.src.dim, v.src.dh, v.group)

    def op_repeat_interleave(self, node, v, repeats, dim=None, *rest, output_size=None):
        # output_size: torch's hint of the result's size along dim (Mamba-2's groups of B and
        # C repeated over the heads), the same result
        v = self.vec(v, node)
        tags = v.tags
        if not isinstance(repeats, int) or dim is None or "H" not in tags or (
                dim % len(tags) != tags.index("H")) or v.group != 1:
            raise refuse(node, "a repeat_interleave of anything but attention heads by a "
                         "whole number", _GQA_HELP)
        return Vec(v.name, tags, v.dim, v.dh, repeats)

    def op_scaled_dot_product_attention(
        self,
        node,
        q,
        k,
        v,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        keys = getattr(node.args[1], "meta", {}).get("val")
        if keys is not None:
            refuse_one_key(node, int(keys.shape[-2]))
        if any(isinstance(x, (HeadCat, Blank)) for x in (q, k)):  # MLA's heads (ops_mla.py)
            q, k = (self.filled(node, x) if isinstance(x, Blank) else x for x in (q, k))
            return self.latent_attention(node, q, k, v, attn_mask, is_causal, scale)
        q, k, v = (self.vec(x, node) for x in (q, k, v))
        if q.dh is None:  # one head of the whole dim is no view the walk splits into heads
            raise refuse(node, "attention over values not split into heads (view them as "
                         "(batch, tokens, heads, head dim) and transpose, with 2 heads or more)")
        for what, x in (("queries", q), ("keys", k), ("values", v)):
            # sdpa attends over the axis before the last: the tokens, as q @ k.T's check
            # (ops_linear) has them; (batch, tokens, heads, head dim) would attend over heads
            if x.tags[-2:] != ("tok", "dh") or "H" not in x.tags[:-2] or not heads_paired(
                    q, x, batch_shapes(node, 0, ("queries", "keys", "values").index(what))):
                raise refuse(node, f"scaled_dot_product_attention of {what} laid out "
                             f"{layout_text(x.tags)}: it attends over the axis before the last, "
                             "which must be the tokens, after the heads, and pairs the axes "
                             "before by position, which must be the queries' in their order",
                             help="transpose them to (batch, heads, tokens, head dim): "
                             "x.view(b, t, h, d).transpose(1, 2)")
        self.grouped(node, q, k, "keys")  # enable_gqa, or keys repeated before the call
        factor = scale if scale is not None else q.dh**-0.5
        return self.attend(node, q, k, v, attn_mask, is_causal, factor)

    def attend(self, node, q, k, v, attn_mask, is_causal, factor):
        """sdpa's logits, mask, softmax and mix, of whole heads or heads concatenated from
        parts (ops_mla.py: the weights' heads are those of the first part)."""
        q0, k0 = (x.parts[0] if isinstance(x, HeadCat) else x for x in (q, k))
        s = Scores(q0, k0, factor, node.name, q0.tags[:-1] + ("tok",), bool(is_causal))
        if isinstance(attn_mask, RelBias):  # T5's bias as the additive mask (ops_relative)
            s = self.with_bias(node, s, attn_mask)
        elif attn_mask is not None:
            if not isinstance(attn_mask, Conc):
                raise refuse(node, "an attention mask that depends on params or buffers")
            m = attn_mask.value
            s = self._masked(node, s, m, additive=True)
        logits = self.logits(q, k, factor, node.name, "sdpa_logits", s.bias)
        prob = f"{'causal_' if s.causal else ''}softmax({logits})"
        return self.mix(node, Probs(s, prob), v)


def weights_paired(w: tuple, q: Vec, v: Vec, shapes=None) -> bool:
    """Whether ``weights @ v`` mixes each head's values by that head's weights: the values'
    tokens and head dim last, and before them the weights' batch axes (``w``, laid out as the
    weights are: the queries' layout, or a view merging their batch and heads) paired as torch
    pairs them (:func:`batch_paired`; ``shapes``: the torch shapes of both operands' batch
    axes, :func:`batch_shapes`)."""
    if w[-2:] != ("tok", "tok") or v.tags[-2:] != ("tok", "dh"):
        return False
    return _paired(w[:-2], q, v, shapes)


def heads_paired(q: Vec, kv: Vec, shapes=None) -> bool:
    """Whether attention's matmuls, which pair the axes before the last two by position, pair
    each query head with its key (value) head: the same batch axes in the same order, or one
    key (value) head that torch broadcasts over the queries' heads (:func:`batch_paired`)."""
    return _paired(q.tags[:-2], q, kv, shapes)


def _paired(tags: tuple, q: Vec, v: Vec, shapes) -> bool:
    if shapes is not None and (len(shapes[0]), len(shapes[1])) == (len(tags), len(v.tags) - 2):
        return batch_paired(tags, shapes[0], v.tags[:-2], shapes[1])
    # no shapes to read (or not of the tagged axes, windows'): by the tags alone, a head axis
    # where either holds one head pairs with any (of size 1, or one key/value head that sdpa's
    # enable_gqa broadcasts)
    one = min(x.dim // x.dh if x.dh else 1 for x in (q, v)) == 1

    def batch(tags):
        return tuple(t for t in tags if not one or t != "H")

    return batch(tags) == batch(v.tags[:-2])


def batch_paired(a: tuple, sa: tuple, b: tuple, sb: tuple) -> bool:
    """Whether a batched matmul (or sdpa) of operands whose axes before the last two are tagged
    ``a`` and ``b``, of sizes ``sa`` and ``sb``, pairs each axis of ``a`` with the same axis of
    ``b``. Torch pairs them by position from the right: two axes of one size must be the same
    axis (the batch with the batch, heads with heads: values (1, B, T, dh) of one head, the
    batch where the heads belong, pair query head i with sequence i where B == H); an axis of
    ``b`` of size 1 is broadcast, which is the same only over heads (one key/value head shared
    by every query head); an axis of ``a`` of size 1 against a longer one of ``b`` gives the
    output more batch than the weights (their one head left where the values hold the
    batch); heads of ``b`` fewer than ``a``'s are sdpa's enable_gqa, whose groups
    :meth:`AttentionOps.grouped` checks."""
    n = max(len(a), len(b))
    a, b = (None,) * (n - len(a)) + tuple(a), (None,) * (n - len(b)) + tuple(b)
    sa, sb = (1,) * (n - len(sa)) + tuple(sa), (1,) * (n - len(sb)) + tuple(sb)
    for ta, na, tb, nb in zip(a, sa, b, sb, strict=True):
        if na == nb == 1:
            continue
        if na == nb:
            if ta != tb:
                return False
        elif nb == 1:
            if ta != "H":
                return False
        elif not (ta == tb == "H" and na % nb == 0):
            return False
    return True


def _no_broadcast(node) -> bool:
    """Whether ``weights @ v``'s output has the weights' batch axes: a weights' axis of size 1
    paired with a longer one of the values would multiply the weights' batch (checked for the
    layouts :func:`_paired` judges by their tags alone; :func:`batch_paired` refuses it). An
    einsum's operands, and sdpa (whose output is the queries' batch), pass."""
    import torch

    w, out = getattr(node.args[0], "meta", {}).get("val"), node.meta.get("val")
    if not isinstance(w, torch.Tensor) or not isinstance(out, torch.Tensor):
        return True
    return tuple(out.shape[:-2]) == tuple(w.shape[:-2])


def batch_shapes(node, first: int = 0, second: int = 1):
    """The sizes of the axes before the last two of ``node``'s operands ``first`` and
    ``second`` (an einsum's of its operands, a baddbmm's of its product's), or None where the
    graph does not hold them."""
    import torch

    op = op_name(node)
    # baddbmm(c, q, kᵀ): its products' operands after the bias (ops_bias.py)
    args = node.args[1] if op == "einsum" else node.args[1:] if op == "baddbmm" else node.args
    vals = [getattr(args[i], "meta", {}).get("val") if i < len(args) else None
            for i in (first, second)]
    if not all(isinstance(x, torch.Tensor) for x in vals):
        return None
    shapes = [tuple(int(s) for s in x.shape) for x in vals]
    if op == "einsum":  # its operands as the matmul they are laid out for (einsum_layout)
        ins, _, out = node.args[0].replace(" ", "").partition("->")
        layout = einsum_layout(ins.split(","), out)
        if layout is not None:
            shapes = [tuple(shapes[k][d] for d in layout[k]) for k in (0, 1)]
    return tuple(x[:-2] for x in shapes)


def einsum_layout(terms: list, out: str) -> tuple | None:
    """An einsum of two operands that is a batched matmul up to the order of axes (Funnel's
    "bind,bjnd->bnij"): the permutations of its operands to (batch..., i, d) and (batch...,
    d, j), and of their product (batch..., i, j) to ``out``; None for any other einsum (a
    letter repeated, summed over more than one axis, an operand's own axis kept, or the
    product's two own axes swapped)."""
    if len(terms) != 2 or any(len(set(t)) != len(t) or len(t) != len(out) for t in terms) \
            or len(out) < 3:
        return None
    a, b = terms
    summed = [c for c in a if c in b and c not in out]
    i = [c for c in a if c not in b and c in out]
    j = [c for c in b if c not in a and c in out]
    batch = [c for c in out if c in a and c in b]
    if len(summed) != 1 or len(i) != 1 or len(j) != 1 or len(batch) != len(out) - 2:
        return None
    if out.index(i[0]) > out.index(j[0]):  # the product transposed (logits keys first): none
        return None
    return ([a.index(c) for c in batch + i + summed], [b.index(c) for c in batch + summed + j],
            [(batch + i + j).index(c) for c in out])


def layout_text(tags) -> str:
    names = {"tok": "tokens", "H": "heads", "dh": "head dim", "F": "features"}
    return "(" + ", ".join(names.get(t, t) for t in tags) + ")"


def refuse_one_key(node, keys: int) -> None:
    """Refuses attention over a single key token (PVT's keys reduced to one pixel): its softmax
    is the constant 1, so no gradient reaches the logits, the queries or the keys, which the
    language's rules take to move with the logits (ir/sequences.py refuses it in a program)."""
    if keys == 1:
        raise refuse(node, "attention over a single key token: its softmax is the constant 1, "
                     "so the logits, queries and keys get no gradient, which the language's "
                     "attention rules do not describe",
                     help="give the keys 2 tokens or more (a smaller spatial reduction ratio, "
                     "or a larger image), or add the values' projection without attention")
