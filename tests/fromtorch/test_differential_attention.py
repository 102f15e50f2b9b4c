"""Differential attention (DiffLlama, arXiv 2410.05258) as Hugging Face writes it: the values
halved along their heads, each half tiled over the heads by torch's repeat, two attention calls
over the same weights, their outputs side by side in each head (``torch.cat(..., -1)``), the
heads' first half minus λ times their second, a norm per head of 2·dh and the output layer.

Traced as ``cat(v_a, v_a, D)`` (tiled heads: the whole vector copied), ``mix``, ``cat(o1, o2,
D2, dv)`` (each head o1's head then o2's) and ``part(o, n, i)`` (runs of whole heads). Oracle:
the emitted program computes the model's output; the exponents are those of the layers' dims
(the value halves and the output layer hidden weights)."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class DiffAttention(nn.Module):
    """One differential attention layer over H = 4 heads (``dh``: a fixed head dim of 16
    instead, n / 16 heads), λ a number (``lam``), or "params": DiffLlama's
    exp(λq1·λk1) − exp(λq2·λk2) + λ_init of four params of the head dim; ``split``: the heads
    halved, or "unequal": cut into runs of 1 and H − 1 heads."""

    def __init__(self, n, dh=None, lam=0.5, split="halves"):
        super().__init__()
        self.heads = n // dh if dh else 4
        self.dh, self.lam, self.split = n // self.heads, lam, split
        self.emb = nn.Embedding(64, n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.u = nn.Linear(n, 64, bias=False)
        if split == "unequal":
            self.oa = nn.Linear(2 * self.dh, n, bias=False)
            self.oc = nn.Linear(2 * n - 2 * self.dh, n, bias=False)
        self.norm = nn.RMSNorm(2 * self.dh, eps=1e-6, elementwise_affine=False)
        if lam == "params":
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                setattr(self, name, nn.Parameter(0.1 * torch.randn(self.dh)))

    def forward(self, ids):
        h = self.emb(ids)
        b, t, n = h.shape
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        v1, v2 = (x.repeat(1, 2, 1, 1) for x in torch.chunk(v, 2, dim=1))
        o1 = F.scaled_dot_product_attention(q, k, v1, is_causal=True).transpose(1, 2)
        o2 = F.scaled_dot_product_attention(q, k, v2, is_causal=True).transpose(1, 2)
        o = torch.cat([o1, o2], dim=-1)
        if self.split == "unequal":  # each run read by a layer of its own
            a, c = torch.split(o, [1, self.heads - 1], dim=2)
            return self.u(h + self.oa(a.reshape(b, t, -1)) + self.oc(c.reshape(b, t, -1)))
        a, c = torch.chunk(o, 2, dim=2)
        lam = self.lam
        if lam == "params":
            lam = (torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1))
                   - torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1)) + 0.2)
        o = 0.8 * self.norm(a - lam * c)
        return self.u(h + self.o(o.reshape(b, t, -1)))


def ids(model=None):
    return (torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("dh", [None, 16])
def test_outputs_side_by_side_per_head_then_halved_along_the_heads(dh):
    def build(n):
        return DiffAttention(n, dh)

    traced = tp.from_torch(build, (32, 64), ids)
    dv = "n_by2" if dh is None else "f32"  # 2·dh: the half of the width, or 32 coordinates
    assert f"cat(scaled_dot_product_attention, scaled_dot_product_attention_1, n_x2, {dv})" \
        in traced.source
    assert "part(v_cat, n, 1)" in traced.source and f"rmsnorm(sub, {dv})" in traced.source
    traced_computes_the_model(traced, build, ids)
    # the halves of the value layer, tiled and side by side, are hidden weights as the query's
    # and the output layer's are: copies and runs of heads are finitely many terms
    for optimizer in ("adam", "sgd"):
        abc = tp.derive(traced.program, optimizer).abc
        assert abc["v_weight_part0"] == abc["v_weight_part1"] == abc["q_weight"] \
            == abc["o_weight"]


def test_heads_side_by_side_split_into_unequal_runs_are_refused_at_their_line():
    # a run of one head beside one of three: no equal parts of the vector
    with pytest.raises(TraceError, match=r"cannot trace a split_with_sizes of attention outputs "
                       r"side by side in each head \(4 heads, cut into runs of \[1, 3\] along "
                       r"axis 2\)") as e:
        tp.from_torch(lambda n: DiffAttention(n, split="unequal"), (32, 64), ids)
    assert "torch.split(o, [1, self.heads - 1], dim=2)" in str(e.value)


def test_lambda_of_a_dot_of_two_params_is_refused_at_its_line():
    # λq1 · λk1 is unchanged by λq1 -> c λq1, λk1 -> λk1 / c: nothing fixes each one's scale,
    # over a head dim of 16 as over a growing one
    with pytest.raises(TraceError, match=r"a dot of two params \(lambda_q1 · lambda_k1, over "
                       r"16 entries: DiffLlama's λ") as e:
        tp.from_torch(lambda n: DiffAttention(n, 16, lam="params"), (32, 64), ids)
    assert "torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1" in str(e.value)
