"""Transformers' RWKV time mixing read as one op of the exported graph.

RWKV layers compute their WKV by calling ``rwkv_linear_attention(time_decay, time_first, key,
value, state, return_state)``, whose CPU path is a loop over the tokens with in-place writes
(its CUDA path a kernel of the hub), neither of which the walk reads as the language's ``wkv``.
For the export, every module's binding of that function to transformers' is replaced by
:func:`_linear_attention`, which computes the same value as

    g = -exp(time_decay),   out = tensorprog::wkv(g, time_first, key, value),

the log decay per token a function of the param in torch ops the walk reads (ops_paramfn.py),
and the custom op, which export keeps as one node, read by ops_wkv.py as ``wkv(g, u, k, v)``
(ir/wkv.py). Only the whole-sequence form is read: no state in (a cache's) and none asked for.
"""

from __future__ import annotations

from .delta_kernel import refusal, swapped

NAME = "rwkv_linear_attention"
_HELP = (
    "trace the model's forward on a whole sequence with no cache (use_cache=False, no past "
    "state): the WKV from a zero state, its output alone"
)

_OP = None


def wkv_op():
    """``torch.ops.tensorprog.wkv``, registered on first use: g and u [D], k and v [B, T, D] ->
    [B, T, D] in v's dtype, computed as :func:`reference` does."""
    global _OP
    if _OP is not None:
        return _OP
    import torch

    @torch.library.custom_op(
        "tensorprog::wkv",
        mutates_args=(),
        schema=("(Tensor g, Tensor u, Tensor k, Tensor v) -> Tensor"),
    )
    def wkv(g, u, k, v):
        return reference(g, u, k, v)

    @wkv.register_fake
    def _(g, u, k, v):
        return v.new_empty(v.shape)

    _OP = wkv
    return wkv


def reference(g, u, k, v):
    """The WKV from a zero state, token by token, as transformers' ``rwkv_linear_attention_cpu``
    computes it with time_decay = log(-g): per channel a numerator and a denominator decayed by
    exp(g) each token, the current token weighed by exp(u + k_t), all over exp of the running
    maximum of the logits (so no exp overflows); in float32 at least."""
    import torch

    dtype = v.dtype
    work = torch.promote_types(dtype, torch.float32)
    g, u, k, v = (x.to(work) for x in (g, u, k, v))
    num = torch.zeros_like(k[:, 0])
    den = torch.zeros_like(k[:, 0])
    top = torch.full_like(k[:, 0], -1e38)
    out = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        m = torch.maximum(top, u + kt)
        a, b = torch.exp(top - m), torch.exp(u + kt - m)
        out.append((a * num + b * vt) / (a * den + b))
        m = torch.maximum(top + g, kt)
        a, b = torch.exp(top + g - m), torch.exp(kt - m)
        num, den, top = a * num + b * vt, a * den + b, m
    return torch.stack(out, 1).to(dtype)


def _linear_attention(time_decay, time_first, key, value, state=None, return_state=False):
    """rwkv_linear_attention as the custom op, where it is the whole-sequence form."""
    import torch

    if state is not None:
        raise refusal(
            "the WKV from a cache's state (RWKV's decode): the language's wkv starts "
            "each sequence from a zero state",
            _HELP,
        )
    if return_state:
        raise refusal(
            "the WKV's final state (asked for by use_cache): the language's wkv gives "
            "the output alone",
            _HELP,
        )
    return wkv_op()(-torch.exp(time_decay), time_first, key, value), None


def wkv_kernels():
    """For the duration: transformers' RWKV time mixing replaced by :func:`_linear_attention`
    (delta_kernel.swapped)."""
    return swapped({NAME: _linear_attention})
