"""Transformers' gated delta rule (``torch_chunk_gated_delta_rule``, Gated DeltaNet's token mixing:
Qwen3.5, Qwen3-Next, OLMo-hybrid) traces as the language's ``delta`` read by ``mix``: q and k
rmsnorm'd per head, sq = dk^-3/2 · dot(q, k, dk), sk = dk^-1 · dot(k, k, dk), grouped value
heads as delta(..., dv, D). Oracle: the traced program computes the model (the kernel computes
in float32: compared at 1e-5 of the output; its eps, 1e-6 on the sum of squares, traced exactly
as rmsnorm(sqrt(dk) * q, dk)). Anything but the whole-sequence form (a state in or out, the
decode step, keys not normalised in the kernel) is refused at its line."""

from __future__ import annotations

import pytest
from conftest import the_check_reads_the_program, traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
gdn = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")

import tensorprog as tp  # noqa: E402

DK = 16


class DeltaLayer(nn.Module):
    """A Gated DeltaNet layer between an embedding and a readout: n/32 key heads of 16, r
    times as many value heads of dv, b = sigmoid(Wb e), g = -exp(A)·softplus(Wa e + dt), the
    kernel's output gated per value head (Qwen3.5's RMSNormGated) and projected back."""

    def __init__(self, n, l2=True, state=False, step=False, r=2, dv=8):
        super().__init__()
        self.dv = DV = dv
        self.hk, self.hv = n // 32, r * n // 32
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.q, self.k = (nn.Linear(n, self.hk * DK, bias=False) for _ in range(2))
        self.v, self.z = (nn.Linear(n, self.hv * DV, bias=False) for _ in range(2))
        self.b, self.a = (nn.Linear(n, self.hv, bias=False) for _ in range(2))
        self.dt = nn.Parameter(torch.ones(self.hv))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.hv).uniform_(1, 16)))
        self.gain = nn.Parameter(torch.ones(DV))
        self.out = nn.Linear(self.hv * DV, n, bias=False)
        self.l2, self.state, self.step = l2, state, step

    def forward(self, ids):
        e = self.emb(ids)
        b, t = ids.shape
        q = self.q(e).view(b, t, self.hk, DK)
        k = self.k(e).view(b, t, self.hk, DK)
        v = self.v(e).view(b, t, self.hv, self.dv)
        beta = self.b(e).sigmoid()
        g = -self.A_log.float().exp() * F.softplus(self.a(e).float() + self.dt)
        fn = gdn.torch_recurrent_gated_delta_rule if self.step else \
            gdn.torch_chunk_gated_delta_rule
        s0 = torch.zeros(b, self.hv, DK, self.dv) if self.state else None
        o, _ = fn(q, k, v, g=g, beta=beta, initial_state=s0, output_final_state=False,
                  use_qk_l2norm_in_kernel=self.l2)
        o = o.reshape(-1, self.dv)
        o = self.gain * (o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6))
        o = (o * F.silu(self.z(e).reshape(-1, self.dv))).reshape(b, t, -1)
        return self.ro(e + self.out(o))


def ids(model=None):
    return (torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(DeltaLayer, (64, 128), ids)


def test_the_kernel_traces_as_delta_and_computes_the_model(traced):
    src = traced.source
    assert "gated_delta_sq = gated_delta_tau * dot(gated_delta_q, gated_delta_k, f16)" in src
    assert "gated_delta_tau = 0.015625" in src and "gated_delta_kap = 0.0625" in src
    assert "delta(gated_delta_sq, gated_delta_sk, " in src and ", f8, n_by2)" in src, src
    traced_computes_the_model(traced, DeltaLayer, ids, tol=1e-6)
    the_check_reads_the_program(traced, DeltaLayer, ids, tol=1e-6)


def test_apply_keeps_a_draw_not_centred_on_0_as_the_model_drew_it(traced):
    """A_log (log-uniform, mean about 2) derives exponent 0: its law is the same at every
    width, so apply leaves the model's own draw; a factor towards the base width's std (an
    estimate from 2 heads) would move its mean, the decay rates' scale, with the width."""
    torch.manual_seed(1)
    model = DeltaLayer(256)
    before = model.A_log.detach().clone()
    report = tp.MuP(traced, "adam").apply(model)
    assert torch.equal(model.A_log, before)
    assert "init A_log: the model's own draw (not centred on 0" in str(report)


@pytest.mark.slow  # a trace of its own
@pytest.mark.parametrize("r, dv", [(1, 16), (1, 32)], ids=["ungrouped", "wider_values"])
def test_other_value_heads_compute_the_model(r, dv):
    """As many value heads as key heads, of the keys' dim (delta(sq, sk, b, g)) or twice it
    (OLMo-hybrid's: the grouped form with r = 1)."""
    build = lambda n: DeltaLayer(n, r=r, dv=dv)  # noqa: E731
    traced = tp.from_torch(build, (64, 128), ids)
    traced_computes_the_model(traced, build, ids, tol=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"l2": False}, r"without its queries and keys L2-normalised"),
    ({"state": True}, r"from an initial state"),
    ({"step": True}, r"token-by-token step"),
])
def test_other_forms_are_refused_at_their_line(kw, match):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        tp.from_torch(lambda n: DeltaLayer(n, **kw), (64, 128), ids)
    assert "o, _ = fn(q, k, v, g=g, beta=beta" in str(err.value)


def qwen3_5(n):
    """Qwen3.5's text model of two Gated DeltaNet layers (rolled into a block), heads of 16
    (n/16 key heads, n/8 value heads); weights drawn of std 1, so that the kernel's eps (on
    the sum of squares, rmsnorm's on the mean) is far below every head's norm."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    torch.manual_seed(0)
    return Qwen3_5ForCausalLM(Qwen3_5TextConfig(
        vocab_size=13, hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2,
        num_attention_heads=n // 16, num_key_value_heads=n // 16, head_dim=16,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=n // 16,
        linear_num_value_heads=n // 8, layer_types=["linear_attention"] * 2,
        use_cache=False, max_position_embeddings=64, initializer_range=1.0))


@pytest.mark.slow  # a whole model's trace
def test_qwen3_5s_linear_attention_computes_the_model():
    traced = tp.from_torch(qwen3_5, (64, 128), ids)
    assert "delta(" in traced.source
    # the model's norms and kernel compute in float32 (their .float()): 1e-4 of the output
    traced_computes_the_model(traced, qwen3_5, ids, tol=1e-4)
    the_check_reads_the_program(traced, qwen3_5, ids, tol=1e-4)
