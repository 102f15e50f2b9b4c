"""Lightning attention (MiniMax's): linear attention with a fixed decay per head, computed in
blocks with a running state. Unrolled, it is o_t = Σ_(s<=t) exp(-λ_h (t - s)) (q_t·k_s) v_s, the
language's ssd with steps 1 and rates -λ (checked here against MiniMax's own blocked loop over
several blocks, the rates read from its buffers); the language cannot hold those steps and rates
fixed, so the trace refuses the layer at its line, naming the form and the rates read from the
buffer. A buffer that is no causal exponential decay (a near miss) keeps the refusal of a product
with a buffer of several values (ops_lightning.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch.ops_lightning import decay_rates  # noqa: E402
from tensorprog.fromtorch.ssd_kernel import reference  # noqa: E402


def _decay(rates, t):
    gap = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    lam = torch.tensor(rates)[:, None, None]
    return torch.where(gap >= 0, torch.exp(-lam * gap.clamp(min=0)), torch.zeros(()))[None]


def test_decay_rates_reads_a_causal_decay_per_head_and_nothing_else():
    rates = decay_rates(_decay([0.5, 0.125, 0.0], 6))
    assert rates == pytest.approx([0.5, 0.125, 0.0], abs=1e-6)
    upper = _decay([0.5], 4)
    upper[0, 0, 0, 1] = 0.5  # a weight on a later token: not causal
    two = _decay([0.5], 4)
    two[0, 0, 3, 0] *= 0.9  # another rate on the longest gap: no single exponential
    mask = _decay([0.0, 0.0], 4)  # a 0/1 causal mask: ops_attention's to read
    for near in (upper, two, mask, torch.rand(1, 2, 4, 4), _decay([0.5], 4)[..., :3]):
        assert decay_rates(near) is None


@pytest.mark.slow  # importing transformers' MiniMax takes seconds
def test_minimax_blocked_loop_is_ssd_with_steps_one_and_rates_read_from_its_buffers():
    mm = pytest.importorskip("transformers.models.minimax.modeling_minimax")
    torch.manual_seed(0)
    heads, hd, t = 4, 8, 10  # 3 blocks of 4: the running state carried twice
    cfg = mm.MiniMaxConfig(
        hidden_size=heads * hd,
        num_attention_heads=heads,
        head_dim=hd,
        num_hidden_layers=3,
        block_size=4,
    )
    layer = mm.MiniMaxLightningAttention(cfg, 1).double()
    x = torch.randn(2, t, heads * hd, dtype=torch.double)
    seen = {}
    layer.norm.register_forward_hook(lambda mod, args, out: seen.setdefault("o", args[0]))
    layer(x, None, None)
    q, k, v = torch.split(layer.act_fn(layer.qkv_proj(x)).reshape(2, t, heads, 3 * hd), hd, 3)
    lam = decay_rates(layer.diagonal_decay)  # read from the buffer the intra-block product uses
    assert lam == pytest.approx(layer.slope_rate.reshape(-1).tolist(), rel=1e-4)
    want = reference(
        v, torch.ones(2, t, heads, dtype=torch.double), -torch.tensor(lam, dtype=torch.double), k, q
    )
    # the buffers are float32 (exp of a float32 product): equal to their precision
    assert torch.allclose(seen["o"], want.reshape(2, t, -1), rtol=0, atol=1e-5)


class Lightning(torch.nn.Module):
    """One lightning layer as MiniMax writes its single-block path, on embedded tokens."""

    def __init__(self, n, rates, table=None, softmax=False):
        super().__init__()
        self.heads, self.hd = len(rates), n // len(rates)
        self.emb = torch.nn.Embedding(11, n)
        self.qkv = torch.nn.Linear(n, 3 * n, bias=False)
        self.out = torch.nn.Linear(n, 11, bias=False)
        self.decay = torch.nn.Buffer(_decay(rates, 6) if table is None else table)
        self.softmax = softmax

    def forward(self, ids):
        b, t = ids.shape
        h = torch.nn.functional.silu(self.qkv(self.emb(ids)))
        q, k, v = torch.split(h.reshape(b, t, self.heads, 3 * self.hd), self.hd, dim=3)
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2)) * self.decay[..., :t, :t]
        o = torch.matmul(w.softmax(-1) if self.softmax else w, v)
        return self.out(o.transpose(1, 2).reshape(b, t, -1))


def _ids(model):
    return (torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0)),)


def test_lightning_attention_is_refused_at_its_line_with_the_form_and_its_rates():
    with pytest.raises(
        TraceError,
        match=r"linear attention with a fixed decay per head "
        r"\(lightning attention\).* λ = \[0\.5, 0\.25\] read from it",
    ) as e:
        tp.from_torch(lambda n: Lightning(n, [0.5, 0.25]), (32, 64), _ids)
    assert "test_lightning_trace.py" in str(e.value) and "self.decay[..., :t, :t]" in str(e.value)
    assert "ssd(dot(q, k, dh), dt = 1, A = -λ, dh)" in str(e.value)


@pytest.mark.parametrize("near", ["another table", "a softmax after"])
def test_a_near_miss_keeps_the_refusal_of_a_product_with_a_buffer(near):
    """A buffer that is no causal exponential decay, or the decayed scores read by a softmax
    (not linear attention's weights), is not named lightning attention."""
    table = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(0)).tril()
    kw = {"table": table} if near == "another table" else {"softmax": True}
    with pytest.raises(
        TraceError,
        match=r"a product with the buffer decay, of more than one "
        r"float entry",
    ) as e:
        tp.from_torch(lambda n: Lightning(n, [0.5, 0.25], **kw), (32, 64), _ids)
    assert "self.decay[..., :t, :t]" in str(e.value)
