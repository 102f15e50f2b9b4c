"""Kimi Delta Attention (transformers' ``chunk_kimi_delta_attention``: Kimi Linear, Bailing
hybrid) traces as the language's delta rule of dots decayed per key channel: q and k rmsnorm'd
per head, sq = dk^-3/2 · ddot(q, k, g, dk), sk = dk^-1 · ddot(k, k, g, dk), delta(sq, sk, b)
read by mix. Oracle: the traced program computes the model, whose kernel decays the state before
each update (the kernel computes in float32: compared at 1e-5 of the output, keys short enough
that the kernel's eps shows: traced exactly, rmsnorm(sqrt(dk) * k, dk)). The decode step
and a state in or out are refused at the model's line."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
kimi = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch.delta_kernel import kda_reference  # noqa: E402

DK = 16


class KdaLayer(nn.Module):
    """A Kimi Delta Attention layer between an embedding and a readout: n/16 heads of 16,
    b = sigmoid(Wb e), the decay per key channel g = -exp(A_log[head])·softplus(Wf e + dt)
    (Kimi Linear's forget gate, its low-rank Wf made full), the output projected back."""

    def __init__(self, n, l2=True, state=False, step=False):
        super().__init__()
        self.h = n // DK
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.q, self.k, self.v, self.f = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.b = nn.Linear(n, self.h, bias=False)
        self.dt = nn.Parameter(torch.ones(n))
        self.A_log = nn.Parameter(torch.log(torch.empty(1, 1, self.h, 1).uniform_(1, 4)))
        self.out = nn.Linear(n, n, bias=False)
        self.l2, self.state, self.step = l2, state, step
        for w in (self.q, self.k):  # keys short enough (Σk² ~ 1e-3 per head) that the
            nn.init.normal_(w.weight, std=1e-3)  # kernel's eps, 1e-6 on Σk², shows at 1e-5

    def forward(self, ids):
        e = self.emb(ids)
        b, t = ids.shape
        q, k, v = (f(e).view(b, t, self.h, DK) for f in (self.q, self.k, self.v))
        beta = self.b(e).sigmoid()
        g = -self.A_log.exp() * F.softplus((self.f(e) + self.dt).view(b, t, self.h, DK))
        s0 = torch.zeros(b, self.h, DK, DK) if self.state else None
        if self.step:
            o, _ = kimi.recurrent_kimi_delta_attention(
                q,
                k,
                v,
                g=g,
                beta=beta,
                initial_state=s0,
                output_final_state=False,
                use_qk_l2norm_in_kernel=self.l2,
            )
        else:
            o, _ = kimi.chunk_kimi_delta_attention(
                q, k, v, g=g, beta=beta, initial_state=s0, use_qk_l2norm_in_kernel=self.l2
            )
        return self.ro(e + self.out(o.reshape(b, t, -1)))


def ids(model=None):
    return (torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)),)


def test_the_reference_is_transformers_kernel():
    """The custom op's reference (decay, then update) is the chunked kernel's output."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 4, generator=gen) for _ in "qkv")
    g = -torch.rand(2, 7, 3, 4, generator=gen)
    beta = torch.rand(2, 7, 3, generator=gen)
    want, _ = kimi.chunk_kimi_delta_attention(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)
    assert torch.allclose(kda_reference(q, k, v, g, beta, True), want, atol=1e-5)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(KdaLayer, (64, 128), ids)


def test_the_kernel_traces_as_delta_of_decayed_dots_and_computes_the_model(traced):
    src = traced.source
    assert "kda_sq = kda_tau * ddot(kda_q, kda_k, " in src, src
    assert "kda_p = delta(kda_sq, kda_sk, " in src
    traced_computes_the_model(traced, KdaLayer, ids, tol=1e-5)


def test_the_layer_derives_as_gated_deltanets(traced):
    """With heads of a fixed 16, P is Θ(1) and every projection a hidden weight."""
    d = tp.derive(traced.program, "adam")
    table = {p: (str(x.a + x.b), str(x.c)) for p, x in d.abc.items()}
    for w in ("q", "k", "v", "f", "b", "out"):
        assert table[f"{w}_weight"] == ("1/2", "1"), (w, table[f"{w}_weight"])
    assert table["A_log"] == table["dt"] == ("0", "0")


@pytest.mark.parametrize(
    "kw, match",
    [
        pytest.param(
            {"l2": False}, r"without its queries and keys L2-normalised", marks=pytest.mark.slow
        ),  # a trace each: one runs by default
        ({"state": True}, r"from an initial state"),
        pytest.param({"step": True}, r"token-by-token step", marks=pytest.mark.slow),
    ],
)
def test_other_forms_are_refused_at_their_line(kw, match):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        tp.from_torch(lambda n: KdaLayer(n, **kw), (64, 128), ids)
    assert "o, _ = kimi." in str(err.value) and "_kimi_delta_attention(" in str(err.value)
