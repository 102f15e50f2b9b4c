"""The emitted module's helper for ``wkv(g, u, k, v)`` (``tensorprog.ir.wkv``): RWKV's time
mixing per channel, written as the softmax over the tokens s <= t that transformers'
max-stabilised loop computes (tests/fromtorch/test_rwkv_trace.py checks it against that loop)."""

from __future__ import annotations

WKV_HELPER = [
    "def _wkv(g, u, k, v):",
    '    """Per channel, (..., tokens, channels): wkv_t = sum over s <= t of a_ts v_s, a_t the',
    "    softmax over s of k_s + (t-1-s) g for s < t and u + k_t for s = t; g (the log decay,",
    '    <= 0) and u one number per channel. In float32 at least, returned in v\'s dtype."""',
    "    dtype = v.dtype",
    "    work = torch.promote_types(dtype, torch.float32)",
    "    g, u, k, v = (x.to(work) for x in (g, u, k, v))",
    "    t = k.shape[-2]",
    "    i = torch.arange(t, device=k.device)",
    "    lag = (i[:, None] - 1 - i[None, :]).to(work)  # t - 1 - s, for s < t",
    "    logits = k.unsqueeze(-3) + lag[..., None] * g  # (..., t, s, channels)",
    "    logits = torch.where((i[:, None] == i[None, :])[..., None], u + k.unsqueeze(-3), logits)",
    '    logits = logits.masked_fill((i[None, :] > i[:, None])[..., None], float("-inf"))',
    '    return torch.einsum("...tsc,...sc->...tc", logits.softmax(-2), v).to(dtype)',
]
