"""``F.normalize(q, dim=-1)`` over each head's coordinates (Swin V2's and YOSO's cosine
attention) traced as ``d^-1/2 * rmsnorm(q, dh)``: ``q / |q|`` is the RMS-normalised q over the
square root of its dh coordinates, a constant over heads of a fixed dim. Oracles: the traced
decoder derives what examples/qknorm.tp derives with its QK-norm gains replaced by that constant;
the emitted per-head RMSNorm times the constant is F.normalize; a head dim that grows with the
width (the constant then a power of it, after a norm, where no layer can take it) is refused."""

from __future__ import annotations

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402


class Cosine(nn.Module):
    """examples/qknorm.tp with F.normalize in place of its QK-norm and gains: cosine attention
    over heads of ``dh`` coordinates, logits times the fixed 0.25."""

    def __init__(self, width, dh=16, by_hand=False):
        super().__init__()
        self.dh, self.by_hand = dh, by_hand
        self.E, self.P = nn.Embedding(64, width), nn.Embedding(4, width)
        self.ga, self.gf = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Linear(width, width, bias=False)
                                              for _ in range(4))
        self.U = nn.Linear(width, 64, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        h0 = self.E(idx) + self.P(torch.arange(t))
        a = self.ga(h0)
        q, k, v = (w(a).view(b, t, -1, self.dh).transpose(1, 2) for w in (self.Wq, self.Wk,
                                                                          self.Wv))
        if self.by_hand:  # x / (|x| + eps)
            q, k = (x / (x.norm(dim=-1, keepdim=True) + 1e-6) for x in (q, k))
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
        h1 = h0 + self.Wo(o.transpose(1, 2).reshape(b, t, -1))
        return self.U(self.gf(h1))


def tokens(model=None):
    return (torch.arange(8).remainder(13).view(2, 4),)


# traced param -> examples/qknorm.tp's
NAMES = {"E_weight": "E", "P_weight": "P", "ga_weight": "ga", "Wq_weight": "Wq",
         "Wk_weight": "Wk", "Wv_weight": "Wv", "Wo_weight": "Wo", "gf_weight": "gf",
         "U_weight": "U"}


def _cosine_example():
    """examples/qknorm.tp with q / |q| for its QK-norm: 16^-1/2 rmsnorm(q, dh), no gains."""
    text = (ROOT / "examples" / "qknorm.tp").read_text()
    for side in "qk":
        norm = f"{side} = g{side} * rmsnorm(W{side} @ a, dh)"
        assert norm in text
        text = text.replace(norm, f"{side} = 0.25 * rmsnorm(W{side} @ a, dh)")
        text = text.replace(f"param g{side} : [dh] = 1", "")
    return tp.parse(text, "cosine.tp")


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Cosine, (32, 64), tokens)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cosine_attention_traces_to_a_constant_times_rmsnorm_and_derives_as_written(traced,
                                                                                   optimizer):
    assert "0.25 * rmsnorm(" in traced.source
    ours = tp.derive(_cosine_example(), optimizer).abc
    theirs = tp.derive(traced.program, optimizer).abc
    assert {k: theirs[k] for k in NAMES} == {k: ours[v] for k, v in NAMES.items()}
    scale = next(s for s in theirs if s.startswith("attn") or "scale" in s)
    assert theirs[scale] == ours["attn"]


@pytest.mark.slow  # a variant of the form above, one more trace
def test_a_division_by_the_norm_plus_eps_is_the_same_normalisation(traced):
    by_hand = tp.from_torch(lambda n: Cosine(n, by_hand=True), (32, 64), tokens)
    assert by_hand.source.count("0.25 * rmsnorm(") == 2
    assert tp.derive(by_hand.program, "adam").abc == tp.derive(traced.program, "adam").abc


def test_the_emitted_constant_times_the_heads_rmsnorm_is_f_normalize():
    space = {"torch": torch}
    exec("\n".join(HELPERS["_heads_rmsnorm"]), space)  # noqa: S102 - the emitter's template
    x = torch.randn(2, 3, 4 * 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = 16**-0.5 * space["_heads_rmsnorm"](x, 16)
    want = F.normalize(x.unflatten(-1, (4, 16)), dim=-1).flatten(-2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # eps aside


def test_a_normalized_head_whose_dim_grows_with_the_width_is_refused():
    with pytest.raises(tp.TensorProgError, match=r"an L2 normalisation \(F.normalize\) over 8 "
                       r"coordinates at width 32, whose number grows with the width"):
        tp.from_torch(lambda n: Cosine(n, dh=n // 4), (32, 64), tokens)
