"""The emitted module's helper for ``ddot(q, k, g, dk)`` (``tensorprog.ir.ddot``): per head, the
dot of queries and keys with each key channel weighed by the decay it accumulated between the two
tokens (Kimi Delta Attention's; tests/fromtorch/test_kda_trace.py checks it, through the delta
rule, against the recurrence)."""

from __future__ import annotations

DDOT_HELPER = [
    "def _ddot(q, k, g, head_dim):",
    '    """Per head and (query, key) token pair, (..., heads, tokens, tokens): sum over the',
    "    head's channels c of q_t[c] k_s[c] exp(G_t[c] - G_s[c]) for s <= t, 0 after, G the",
    "    cumulative sum over the tokens of the log decay g (one per channel, q's dim). In",
    '    float32 at least, returned in q\'s dtype."""',
    "    dtype = q.dtype",
    "    work = torch.promote_types(dtype, torch.float32)",
    "    q, k, g = (x.to(work).unflatten(-1, (-1, head_dim)).movedim(-3, -1) for x in (q, k, g))",
    "    t = g.shape[-1]",
    "    later = torch.ones(t, t, dtype=torch.bool, device=g.device).triu(1)",
    "    # G_t - G_s as the sum of g over s < r <= t itself, which float32 keeps exact, not the",
    "    # difference of two running sums over the whole sequence",
    "    d = g.unsqueeze(-1).expand(*g.shape, t).masked_fill(~later.T, 0).cumsum(-2)",
    '    d = d.masked_fill(later, float("-inf")).exp()',
    '    return torch.einsum("...ct,...cs,...cts->...ts", q, k, d).to(dtype)',
]
