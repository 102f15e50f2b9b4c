"""A fixed bias on attention logits: ``baddbmm(c, q, kᵀ, beta, alpha)``, i.e. ``beta·c +
alpha·(q @ kᵀ)``. Bloom adds ALiBi this way (c: each head's slope times the key's position, a
constant of the positions and the head count, not trained); GPT-NeoX-Japanese passes zeros.

The language writes no such constant, and µP needs none: with finitely many tokens the softmax
of ``s + c`` is Θ(1) whatever the size of s or c, its change is e(Δs) capped at 0 (c does not
change), and the gradient it sends back to s is g(p) through a Jacobian of Θ(1) entries (the
``Nonlin softmax`` row of docs/language.md). Adding a Θ(1) constant before it therefore changes
no exponent, and the logits are traced as ``attn * dot(q, k, dh)`` alone; the model keeps its
bias (``apply`` changes no forward). Only a constant of the trace qualifies (computed from the
inputs and constants, on the CPU) whose entries are finite and above -1e4: a large negative is
a mask, taken as HF's masks are (the causal one, or one that keeps every key); a bias from a
param or a buffer of unknown entries is refused (a learned bias is T5's, ops_relative.py). A
constant added with ``+`` (MPT's ALiBi, ``scores + bias``) takes the mask path already
(ops_attention's ``_masked``), where a finite constant is a mask that keeps every key: the
same reading.
"""

from __future__ import annotations

import dataclasses

from .values import Conc, Scores
from .where import op_name, refuse

# ops on the way from a value to sdpa's attn_mask that keep it a bias of the logits: the
# query axis it is spread over, the masks written into it, casts
_TO_MASK = {"expand", "expand_as", "masked_fill", "to", "_to_copy", "alias", "contiguous",
            "clone", "type_as", "add", "where"}

_HELP = ("add a constant bias of the positions (ALiBi's) as Bloom does, baddbmm(bias, q, kᵀ) "
         "with bias computed from the positions and the head count, or a learned one as T5 "
         "does (ops_relative); drop a bias that depends on params or buffers")


class FixedBiasOps:
    """``baddbmm``: attention logits plus a constant of the trace."""

    def op_baddbmm(self, node, c, q, kt, beta=1, alpha=1):
        s = self.op_matmul(node, q, kt)
        if not isinstance(s, Scores):  # a weight's product plus a bias: no attention here
            raise refuse(node, "a baddbmm other than attention logits plus a constant bias",
                         help=_HELP)
        s = dataclasses.replace(s, factor=s.factor * alpha, node=node.name)
        return s if beta == 0 else self.fixed_bias(node, s, c, beta)

    def fixed_bias(self, node, s: Scores, c, beta=1) -> Scores:
        """Logits ``s`` plus ``beta * c``, c a constant of the trace: a mask (entries of -1e4
        or less, HF's) as ``_masked`` takes it, else a finite bias that the program leaves out
        (the module's docstring says why µP is the same with it)."""
        import torch

        value = c.value if isinstance(c, Conc) else None
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise refuse(node, "attention logits plus a bias that is not a constant of the "
                         "positions (it depends on params or on a buffer's unknown entries)",
                         help=_HELP)
        value = beta * value
        if bool((value <= -1e4).any()):
            return self._masked(node, s, value, additive=True)
        if not bool(value.isfinite().all()):
            raise refuse(node, "attention logits plus a bias with entries that are not finite",
                         help=_HELP)
        return s


def _reaches_attn_mask(node, depth: int = 6) -> bool:
    """Whether ``node`` feeds scaled_dot_product_attention's attn_mask through ``_TO_MASK``."""
    for u in node.users:
        if op_name(u) == "scaled_dot_product_attention" and (
                u.kwargs.get("attn_mask") is node or (len(u.args) > 3 and u.args[3] is node)):
            return True
        if depth and op_name(u) in _TO_MASK and _reaches_attn_mask(u, depth - 1):
            return True
    return False


def refuse_key_bias(node, dim) -> None:
    """Refuses an axis of 1 put before a per-token value's last axis (its tokens: [B, H, 1, T])
    on its way to sdpa's attn_mask: a value of each key, spread over the queries and added to
    the logits (Doge's dynamic mask, exp(A * softplus(dt_proj(v)))). Unlike a constant bias
    (above) it depends on params and the tokens, which no form of the language's attention
    says."""
    shape = tuple(node.meta["val"].shape)
    if len(shape) < 3 or dim % len(shape) != len(shape) - 2 or not _reaches_attn_mask(node):
        return
    raise refuse(node, "a value of each key computed from the tokens, spread over the queries "
                 "([..., 1, T]) and added to the attention logits through sdpa's attn_mask "
                 "(Doge's dynamic mask): the language's attention adds only a constant bias "
                 "of the positions, or a mask", help=_HELP)
