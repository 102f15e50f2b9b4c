"""Transformers' gated delta rule read as one op of the exported graph.

Gated DeltaNet layers (Qwen3.5, Qwen3-Next, OLMo-hybrid, Lara) compute their token mixing by
calling ``torch_chunk_gated_delta_rule`` (kernel hub name ``chunk_gated_delta_rule``): a
chunked recurrence of loops and in-place updates that the walk cannot read as the language's
``delta``. For the export, every module's binding of that function to transformers' is
replaced by a call of the custom op ``tensorprog::gated_delta(q, k, v, g, beta, l2norm)``,
which export keeps as one node (ops_delta.py reads it), and the decode step
``torch_recurrent_gated_delta_rule`` by a refusal at its line. Only the kernel's whole-sequence
form is read: no initial state, no final state asked for, no packed sequences (``cu_seqlens``).
Kimi Delta Attention's (``chunk_kimi_delta_attention``: a decay per key channel) likewise
becomes ``tensorprog::kda(q, k, v, g, beta, l2norm)``, and its decode step
``recurrent_kimi_delta_attention`` a refusal.
"""

from __future__ import annotations

import contextlib
import sys
import traceback

from ..errors import TraceError
from .where import line_span

CHUNK = "torch_chunk_gated_delta_rule"
STEP = "torch_recurrent_gated_delta_rule"
_HELP = ("trace the model's forward on a whole sequence with no cache (use_cache=False, no "
         "past state): the gated delta rule from a zero state, its output alone")

_OPS: dict = {}  # name -> the registered op


def _delta_op(name: str, compute):
    """``torch.ops.tensorprog.<name>``, registered on first use (torch is imported lazily):
    the delta rule's output from q, k, v, g, beta and the l2norm flag, computed by ``compute``,
    in q's dtype. The gated delta rule's and Kimi's share this schema."""
    if name in _OPS:
        return _OPS[name]
    import torch

    # the schema given: this module's annotations are strings (from __future__)
    @torch.library.custom_op(f"tensorprog::{name}", mutates_args=(), schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, bool l2norm) -> Tensor"))
    def op(q, k, v, g, beta, l2norm):
        return compute(q, k, v, g, beta, l2norm)

    @op.register_fake
    def _(q, k, v, g, beta, l2norm):
        return v.new_empty(v.shape, dtype=q.dtype)

    _OPS[name] = op
    return op


def gated_delta_op():
    """``torch.ops.tensorprog.gated_delta``: q, k [B, T, Hk, dk], v [B, T, Hv, dv], g and beta
    [B, T, Hv] -> [B, T, Hv, dv] in q's dtype, computed as the kernel does (float32 at least)."""
    return _delta_op("gated_delta", reference)


def reference(q, k, v, g, beta, l2norm: bool):
    """The gated delta rule's output from a zero state, token by token (S_t = exp(g_t)
    S_{t-1}(I - b_t k_t k_tᵀ) + b_t v_t k_tᵀ, o_t = S_t q_t, q scaled by dk^-1/2, q and k
    L2-normalised first where ``l2norm``), in float32 at least."""
    import torch

    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32)
    r = v.shape[2] // q.shape[2]
    q, k = (x.repeat_interleave(r, dim=2) for x in (q, k))
    q, k, v, g, beta = (x.transpose(1, 2).to(work) for x in (q, k, v, g, beta))
    if l2norm:
        q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
    q = q * q.shape[-1] ** -0.5
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    out = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]
        kt = k[:, :, t]
        step = (v[:, :, t] - (state * kt.unsqueeze(-1)).sum(-2)) * beta[:, :, t, None]
        state = state + kt.unsqueeze(-1) * step.unsqueeze(-2)
        out.append((state * q[:, :, t].unsqueeze(-1)).sum(-2))
    return torch.stack(out, 2).transpose(1, 2).to(dtype)


def refusal(what: str, help: str = _HELP) -> TraceError:
    """A refusal at the model's line that called the kernel (the innermost frame outside
    torch, the kernel hub and this package)."""
    frames = [(f.filename, f.lineno) for f in traceback.extract_stack()]
    return TraceError(f"cannot trace {what}", line_span(frames), help)


def _chunked(query, key, value, g, beta, chunk_size=64, initial_state=None,
             output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
             **kwargs):
    """torch_chunk_gated_delta_rule as the custom op, where it is the whole-sequence form."""
    if initial_state is not None:
        raise refusal("the gated delta rule from an initial state (a cache's recurrent "
                      "state): the language's delta starts each sequence from a zero state")
    if output_final_state:
        raise refusal("the gated delta rule's final state (asked for by a cache): the "
                      "language's delta gives the output alone")
    if cu_seqlens is not None or kwargs.get("seq_idx") is not None:
        raise refusal("the gated delta rule over packed sequences (cu_seqlens)")
    if kwargs.get("scale") is not None:  # flash-linear-attention's: the torch path reads none
        raise refusal("the gated delta rule with a scale of its own on the queries: the trace "
                      "reads the kernel's dk^-1/2")
    return gated_delta_op()(query, key, value, g, beta, bool(use_qk_l2norm_in_kernel)), None


def _step(*args, **kwargs):
    raise refusal("the gated delta rule's token-by-token step (torch_recurrent_gated_delta_"
                  "rule, a decode from a cache's state): the language's delta reads a whole "
                  "sequence from a zero state")


def from_transformers(fn) -> bool:
    """Whether ``fn`` is transformers' own kernel function (plain or as the kernel hub's
    module), not a function of the user's that shares its name."""
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", "")
    return isinstance(module, str) and module.startswith("transformers.")


@contextlib.contextmanager
def swapped(replacements: dict):
    """For the duration: every loaded module's binding of a transformers function named in
    ``replacements`` (name -> its stand-in) replaced by the stand-in; restored after."""
    done = []
    for module in list(sys.modules.values()):
        space = getattr(module, "__dict__", None)
        if not isinstance(space, dict):
            continue
        for name, new in replacements.items():
            old = space.get(name)
            if old is not None and old is not new and from_transformers(old):
                done.append((space, name, old))
                space[name] = new
    try:
        yield
    finally:
        for space, name, old in reversed(done):
            space[name] = old


KDA_CHUNK = "chunk_kimi_delta_attention"
KDA_STEP = "recurrent_kimi_delta_attention"
def kda_op():
    """``torch.ops.tensorprog.kda``: q, k, v and g [B, T, H, dk], beta [B, T, H] -> [B, T, H,
    dk] in q's dtype, computed as transformers' kernel does."""
    return _delta_op("kda", kda_reference)


def kda_reference(q, k, v, g, beta, l2norm: bool):
    """Kimi Delta Attention's output from a zero state, token by token, as transformers'
    recurrent form and fla's chunk_kda compute it: the state (dk x dv per head) decayed row by
    row first, S <- diag(exp(g_t)) S, then updated, S <- S + k_t (b_t (v_t - Sᵀk_t))ᵀ, and
    read, o_t = Sᵀ q_t; q scaled by dk^-1/2, q and k L2-normalised first where ``l2norm``
    (x / sqrt(Σx² + 1e-6)), in float32 at least."""
    import torch

    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32)
    q, k, v, g, beta = (x.transpose(1, 2).to(work) for x in (q, k, v, g, beta))
    if l2norm:
        q, k = (x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6) for x in (q, k))
    q = q * q.shape[-1] ** -0.5
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    out = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp()[..., None]
        kt = k[:, :, t]
        step = (v[:, :, t] - (state * kt.unsqueeze(-1)).sum(-2)) * beta[:, :, t, None]
        state = state + kt.unsqueeze(-1) * step.unsqueeze(-2)
        out.append((state * q[:, :, t].unsqueeze(-1)).sum(-2))
    return torch.stack(out, 2).transpose(1, 2).to(dtype)


def _kda_chunked(query, key, value, g, beta, chunk_size=64, initial_state=None,
                 output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                 **kwargs):
    """chunk_kimi_delta_attention (Kimi Linear, Bailing hybrid) as the custom op ``kda``,
    where it is the whole-sequence form; ops_delta.py reads it as ``delta(sq, sk, b)`` of
    dots decayed per key channel, ``ddot(q, k, g, dk)`` (ir/ddot.py)."""
    what = "Kimi Delta Attention"
    if initial_state is not None:
        raise refusal(f"{what} from an initial state (a cache's recurrent state): the "
                      "language's delta starts each sequence from a zero state")
    if output_final_state:
        raise refusal(f"{what}'s final state (asked for by a cache): the language's delta "
                      "gives the output alone")
    if cu_seqlens is not None or kwargs.get("seq_idx") is not None:
        raise refusal(f"{what} over packed sequences (cu_seqlens)")
    if kwargs.get("scale") is not None:
        raise refusal(f"{what} with a scale of its own on the queries: the trace reads the "
                      "kernel's dk^-1/2")
    return kda_op()(query, key, value, g, beta, bool(use_qk_l2norm_in_kernel)), None


def _kda_step(*args, **kwargs):
    raise refusal("Kimi Delta Attention's token-by-token step (recurrent_kimi_delta_attention, "
                  "a decode from a cache's state): the language's delta reads a whole "
                  "sequence from a zero state")


def delta_kernels():
    """For the duration: transformers' gated delta rule functions and Kimi Delta Attention's
    replaced by their custom ops' calls and their decode steps' refusals (:func:`swapped`)."""
    return swapped({CHUNK: _chunked, STEP: _step, KDA_CHUNK: _kda_chunked, KDA_STEP: _kda_step})
