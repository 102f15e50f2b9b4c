"""The emitted module's helper for ``ssd(cb, dt, A, P)`` (``tensorprog.ir.ssd``): Mamba-2's
state-space mixing weights built per head from its dots, steps and rates, the recurrence
unrolled over the tokens (tests/emit/test_ssd_emit.py checks it against the recurrence)."""

from __future__ import annotations

SSD_HELPER = [
    "def _ssd(cb, dt, a):",
    '    """Mamba-2\'s state-space mixing weights per head, (..., heads, tokens, tokens):',
    "    P_ts = exp(G_t - G_s) (C_t . B_s) dt_s for s <= t and 0 after, G the cumulative sum",
    "    of dt * a over the tokens; cb's groups each serve a run of consecutive heads (B and",
    '    C repeat_interleave\'d, as Mamba-2\'s are)."""',
    "    heads, groups = dt.shape[-1], cb.shape[-3]",
    "    if heads % groups:",
    '        raise ValueError(f"{groups} groups of B and C do not divide {heads} heads")',
    "    cb = cb.repeat_interleave(heads // groups, dim=-3)",
    "    x = (dt * a).transpose(-1, -2)",
    "    t = x.shape[-1]",
    "    later = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)",
    "    # G_t - G_s as the sum of dt_r a over s < r <= t itself (Mamba-2's segsum), not as a",
    "    # difference of cumulative sums, which loses the digits of a long sequence's large G",
    "    g = torch.cumsum(x.unsqueeze(-1).expand(*x.shape, t).masked_fill(~later.T, 0), dim=-2)",
    '    decay = torch.exp(g.masked_fill(later, float("-inf")))',
    "    return decay * cb * dt.transpose(-1, -2).unsqueeze(-2)"]
