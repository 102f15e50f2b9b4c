"""Lightning attention (MiniMax's): linear attention with a fixed decay rate per head, refused
with what it computes.

MiniMax's ``MiniMaxLightningAttention`` mixes the tokens in blocks of ``block_size``: within a
block, ``(q kᵀ ⊙ diagonal_decay) v``; across blocks, a running state kᵀv decayed by the
buffers ``query_decay``, ``key_decay`` and ``exp(-slope_rate · block)``. Unrolled over the T
tokens (the buffers' values read, not assumed: tests/fromtorch/test_lightning_trace.py checks the
blocked loop against this on several blocks), it is per head h

    o_t = Σ_{s<=t} exp(-λ_h (t - s)) (q_t · k_s) v_s,   λ_h = slope_rate[h],

linear attention's weights P_ts = D_ts (q_t · k_s) with a fixed decay matrix per head, no
softmax and no scale. That is the language's ``ssd(cb, dt, A, P)`` exactly, with cb =
``dot(q, k, dh)``, steps dt = 1 at every token and rates A = -λ (ir/ssd.py: exp(G_t - G_s) =
exp(-λ (t - s))); the gated delta rule ``delta`` is not it (its weights carry a factor b,
0 for b = 0). But the language's ssd takes its steps as a vector the program computes per token
and its rates as a param (or a function of one), both trained, and it has no vector of fixed
values of several entries (a product with one is refused: ops_fixedgain.py), so neither the
constant steps nor the fixed rates can be written. Tracing them as params would train what the
model keeps fixed. So the product of the per-head scores with the decay buffer is refused at its
line, saying what the layer computes and the rates read from the buffer; a buffer that is not
such a decay (a near miss: another matrix per head) keeps the refusal of a product with a
buffer of several values.

MiniMax's rates come from the head count (ALiBi's slopes times a factor of the layer index,
``c · 2^(-8(h+1)/H)``). With a fixed count (4 heads) they are the same at every width, but the
head dim grows, and ssd over a growing dot is refused by derive anyway (P is linear in q·k, a
CLT sum at init and an LLN one after training: docs/theory.md, "State-space mixing"). With
heads of a fixed dim their count grows with the width, and each width's heads sample the profile
``c · 2^(-8u)``, u = (h+1)/H in (0, 1], ever more finely: head h's rate is not the same number at
two widths, so fixed rates would be read at each width as a function of h/H, not as one vector
the widths share. Every rate stays in (0, c], so every decay over the finitely many tokens is
Θ(1) and no exponent depends on them (rules_ssd.py's decay term, Θ(1) while dt·A is O(1)).
"""

from __future__ import annotations

from .values import Computed, FixedTable, Scores
from .where import op_name, refuse

# the decay's entries agree with exp(-λ (t - s)) to this relative error: the buffers are built
# in float32 (exp of a float32 product)
_RTOL = 1e-4


def decay_rates(value) -> list[float] | None:
    """λ_h where ``value`` (a float tensor [..., H, T, T], its leading axes of size 1, T >= 2) is
    a causal exponential decay per head, value[h, t, s] = exp(-λ_h (t - s)) for s <= t and 0
    above, λ_h >= 0; None for any other tensor."""
    import torch

    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 3:
        return None
    t = value.shape[-1]
    if value.shape[-2] != t or t < 2 or any(s != 1 for s in value.shape[:-3]):
        return None
    d = value.detach().double().reshape(-1, t, t)
    far = d[:, t - 1, 0]  # exp(-λ (T - 1)): λ read over the longest gap, the most precise
    if not bool(((far > 0) & (d[:, 1, 0] <= 1)).all()) or bool((far == 1).all()):
        return None  # (every entry 1: a 0/1 causal mask, whose product ops_attention reads)
    rates = -torch.log(far) / (t - 1)
    gap = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    want = torch.where(
        gap >= 0, torch.exp(-rates[:, None, None] * gap.clamp(min=0)), torch.zeros(()).double()
    )
    if not bool(torch.isclose(d, want, rtol=_RTOL, atol=0.0).all()):
        return None
    return [float(r) for r in rates]


_HELP = (
    "the layer is ssd(dot(q, k, dh), dt = 1, A = -λ, dh) read by mix (docs/theory.md, "
    '"State-space mixing"), a form the language writes only with steps and rates the '
    "model computes and trains: write the layer as a program with a param A of the heads "
    "and per-token steps (Mamba-2's), or trace the model with another attention layer"
)


class LightningOps:
    """Per-head linear-attention scores times a fixed causal decay per head (lightning
    attention's intra-block product)."""

    def lightning_decay(self, node, u, v):
        """Refuse ``scores * decay`` (either order) where the scores are a per-head q·k and the
        decay a buffer's causal exponential decay per head (module docstring); None for any
        other product."""
        for s, d in ((u, v), (v, u)):
            if not isinstance(s, Scores) or not isinstance(d, (FixedTable, Computed)):
                continue
            if s.bias is not None or s.cap is not None:  # no plain dot: another layer
                continue
            rates = decay_rates(d.value)
            # weights that a matmul applies to the values: linear attention's (a softmax after
            # the product would make them another layer, for the generic refusal to name)
            if (
                rates is None
                or not node.users
                or any(op_name(user) != "matmul" for user in node.users)
            ):
                continue
            shown = ", ".join(f"{r:.3g}" for r in rates[:8]) + (", ..." if len(rates) > 8 else "")
            raise refuse(
                node,
                f"linear attention with a fixed decay per head (lightning attention): the "
                f"scores {'' if s.factor == 1 else f'{s.factor:g} · '}q·k times "
                f"{d.buffer or 'a buffer'}, exp(-λ_h (t - s)) for s <= t, "
                f"λ = [{shown}] read from it; unrolled, o_t = Σ_(s<=t) exp(-λ_h (t - s)) "
                "(q_t·k_s) v_s, the language's ssd with steps 1 and rates -λ, which it "
                "has no way to hold fixed (its steps are computed per token and its rates "
                "are a trained param)",
                help=_HELP,
            )
        return None
