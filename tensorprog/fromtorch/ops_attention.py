"""Norms and attention: layer_norm, rms_norm, causal masks, softmax, sdpa."""

from __future__ import annotations

from .values import Conc, Probs, Scores, Vec
from .where import refuse


class AttentionOps:
    """Norms and attention: layer_norm, rms_norm, causal masks, softmax, sdpa."""

    # -- norms, attention --------------------------------------------------------------------
    def op_layer_norm(self, node, x, shape, w=None, b=None, *rest):
        return self._norm(node, "layernorm", x, w, b)

    def op_rms_norm(self, node, x, shape, w=None, *rest):
        return self._norm(node, "rmsnorm", x, w, None)

    def _norm(self, node, fn, x, w, b):
        x = self.vec(x, node)
        if x.tags[-1] not in ("F", "dh"):
            raise refuse(node, f"a {fn} over anything but a vector's own dim or a head's")
        if b is not None and x.tags[-1] == "dh":
            raise refuse(node, f"a {fn} over each head with a bias (the language's per-head "
                         "gain has no per-head bias)", help="drop the norm's bias")
        expr = f"{fn}({self.norm_args(x)})"
        if w is not None:  # over a head: a gain of the head dim, shared by every head
            expr = f"{self.vector_param(w, node)} * {expr}"
        if b is not None:
            expr += f" + {self.vector_param(b, node)}"
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {expr}")
        self.out.vectors[name] = (node.name, "out")
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
        if keep is None or not bool((keep == causal).all()):
            raise refuse(node, "an attention mask that is not the causal mask")
        return Scores(s.q, s.k, s.factor, s.node, s.tags, True)

    def op_masked_fill(self, node, s, mask, value):
        if not isinstance(s, Scores) or not isinstance(mask, Conc) or value > -1e4:
            raise refuse(node, "masked_fill outside attention's causal mask")
        return self._masked(node, s, mask.value, additive=False)

    def op_softmax(self, node, s, dim=-1, *rest):
        if not isinstance(s, Scores) or dim not in (-1, len(s.tags) - 1):
            raise refuse(node, "a softmax of anything but attention logits")
        logits = self.logits(s.q, s.k, s.factor, s.node, "out")
        return Probs(s, f"{'causal_' if s.causal else ''}softmax({logits})")

    op__softmax = op_softmax

    def logits(self, q: Vec, k: Vec, factor: float, node: str, kind: str) -> str:
        dh = self.dim(q.dh)
        self.out.slots.append(("scale", factor))
        sc = self.fresh(f"attn_{node}")
        self.out.decls.append(f"scale {sc} = {{s{len(self.out.slots) - 1}}}")
        self.out.scales[sc] = {"q": q.name, "slot": len(self.out.slots) - 1}
        name = self.fresh(f"{node}_logits" if kind != "out" else node)
        self.out.stmts.append(f"{name} = {sc} * dot({q.name}, {k.name}, {dh})")
        self.out.vectors[name] = (node, kind)
        return name

    def mix(self, node, p: Probs, v: Vec) -> Vec:
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = mix({p.name}, {v.name})")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, v.tags, v.dim, v.dh)

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
        q, k, v = (self.vec(x, node) for x in (q, k, v))
        if enable_gqa or not (q.dim == k.dim == v.dim):
            raise refuse(
                node,
                "grouped-query attention (fewer key/value heads than query heads)",
                "the language pairs every query head with its own key and value head",
            )
        factor = scale if scale is not None else q.dh**-0.5
        s = Scores(q, k, factor, node.name, q.tags[:-1] + ("tok",), bool(is_causal))
        if attn_mask is not None:
            if not isinstance(attn_mask, Conc):
                raise refuse(node, "an attention mask that depends on params or buffers")
            m = attn_mask.value
            s = self._masked(node, s, m, additive=True)
        logits = self.logits(q, k, factor, node.name, "sdpa_logits")
        prob = f"{'causal_' if s.causal else ''}softmax({logits})"
        return self.mix(node, Probs(s, prob), v)
