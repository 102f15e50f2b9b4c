"""Transformers' Mamba-2 scan read as one op of the exported graph.

Mamba-2 layers (transformers' mamba2, bamba, granitemoehybrid, nemotron_h, zamba2, ...) reach
their state-space mixing through ``mamba2_scan_forward(module, x, B, C, dt, cache)``, whose
whole-sequence path calls ``mamba2_chunk_scan(x, dt, A, B, C, chunk_size, D, dt_bias, ...)``
(kernel hub name ``mamba_chunk_scan_combined``): chunks padded, einsums and a cumulative sum
over them, which the walk cannot read as the language's ``ssd``. For the export, every
module's binding of that function to transformers' is replaced by :func:`_chunked`, which
computes the same value in torch ops the walk reads, around one custom op for the mixing:

    dt = clamp(softplus(dt + dt_bias), min=lo),
    y = tensorprog::ssd_scan(x·1, dt, A, B, C) + D[:, None] * x,

x, B and C in float32 as the kernel takes them. ``ssd_scan(x, dt, A, B, C)`` is the mixing alone,
y_t = Σ_{s<=t} exp(G_t - G_s) (C_t · B_s) dt_s x_s per head, G_t = Σ_{r<=t} dt_r A (ops_ssd.py
reads it as ``mix(ssd(dot(C, B, N), dt, A, P), x, P)``); A (-exp(A_log)), D and dt_bias stay
the model's params in the graph, with their gradients. Only the whole-sequence form is read: no
initial state, no final state asked for, dt clamped from below alone (time_step_limit (lo,
inf): the clamp at lo > 0 is ``lo * atleast(dt / lo)`` in the program, at lo <= 0 the identity
on softplus's values), and the single-token decode step (``mamba2_selective_state_update``)
is refused at its line.
"""

from __future__ import annotations

import math

from .delta_kernel import refusal, swapped

CHUNK = "mamba2_chunk_scan"
STEP = "mamba2_selective_state_update"

_OP = None


def ssd_scan_op():
    """``torch.ops.tensorprog.ssd_scan``, registered on first use: x [B, T, H, P], dt [B, T, H],
    A [H], B and C [B, T, G, N] (G dividing H: group g serves heads g·H/G .. (g+1)·H/G - 1) ->
    [B, T, H, P] in x's dtype."""
    global _OP
    if _OP is not None:
        return _OP
    import torch

    @torch.library.custom_op("tensorprog::ssd_scan", mutates_args=(), schema=(
        "(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C) -> Tensor"))
    def ssd_scan(x, dt, A, B, C):
        return reference(x, dt, A, B, C)

    @ssd_scan.register_fake
    def _(x, dt, A, B, C):
        return x.new_empty(x.shape)

    _OP = ssd_scan
    return _OP


def reference(x, dt, A, B, C):
    """The mixing unrolled: y_t = Σ_{s<=t} exp(G_t - G_s) (C_t · B_s) dt_s x_s per head, in x's
    dtype (the kernel's float32)."""
    import torch

    heads, groups = x.shape[2], B.shape[2]
    B, C = (u.to(x.dtype).repeat_interleave(heads // groups, dim=2) for u in (B, C))
    dt = dt.to(x.dtype)
    g = torch.cumsum(dt * A.to(x.dtype), dim=1)  # [B, T, H]
    cb = torch.einsum("bthn,bshn->bhts", C, B)
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    gap = (g.transpose(1, 2)[..., :, None] - g.transpose(1, 2)[..., None, :])
    decay = torch.where(causal, gap, torch.full_like(gap, -math.inf)).exp()
    p = cb * decay * dt.transpose(1, 2)[..., None, :]
    return torch.einsum("bhts,bshp->bthp", p, x)


def _chunked(hidden_states, dt, A, B, C, chunk_size=None, D=None, dt_bias=None,
             initial_states=None, dt_softplus=False, dt_limit=(0.0, math.inf),
             return_final_states=False, **kwargs):
    """mamba2_chunk_scan's value, its mixing as the custom op, where it is the whole-sequence
    form."""
    import torch
    import torch.nn.functional as F

    if initial_states is not None:
        raise refusal("the Mamba-2 scan from an initial state (a cache's recurrent state): "
                      "the language's ssd starts each sequence from a zero state", _HELP)
    if return_final_states:
        raise refusal("the Mamba-2 scan's final state (asked for by a cache): the language's "
                      "ssd gives the output alone", _HELP)
    if kwargs.get("seq_idx") is not None or kwargs.get("cu_seqlens") is not None:
        raise refusal("the Mamba-2 scan over packed sequences (seq_idx, cu_seqlens)", _HELP)
    lo, hi = (float(b) for b in dt_limit)
    if hi != math.inf:
        raise refusal(f"the Mamba-2 scan with its steps clamped to {tuple(dt_limit)} "
                      "(time_step_limit), bounded above: the language clamps the steps from "
                      "below alone (lo * atleast(dt / lo)), not to a range",
                      "set the config's time_step_limit to (lo, inf)")
    if D is not None and D.dim() != 1:
        raise refusal(f"the Mamba-2 scan's skip D of shape {list(D.shape)}: traced as one "
                      "number per head (D [heads])", _HELP)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if lo > 0 or not dt_softplus:  # (softplus's values are >= 0 already: a clamp at 0 or
        dt = torch.clamp(dt, min=lo)  # below is the identity on them) ops_pointwise's op_clamp
    x = hidden_states.float()
    y = ssd_scan_op()(x, dt, A, B.float(), C.float())
    if D is not None:
        y = y + D[None, None, :, None] * x  # the kernel's D[..., None] * x, as ops_spread reads it
    return y


_HELP = ("trace the model's forward on a whole sequence with no cache (use_cache=False, no past "
         "state): the Mamba-2 scan from a zero state, its output alone")


def _step(*args, **kwargs):
    raise refusal("the Mamba-2 scan's token-by-token step (mamba2_selective_state_update, a "
                  "decode from a cache's state): the language's ssd reads a whole sequence "
                  "from a zero state", _HELP)


def ssd_kernels():
    """For the duration: transformers' Mamba-2 scan functions replaced by :func:`_chunked` and
    the decode step's refusal (delta_kernel.swapped)."""
    return swapped({CHUNK: _chunked, STEP: _step})
