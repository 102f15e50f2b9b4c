"""A fixed bias on attention logits, added by ``baddbmm(c, q, kᵀ, beta, alpha)``: Bloom's ALiBi
(c: each head's slope times the key's position) and GPT-NeoX-Japanese's zeros. A Θ(1) constant
before a softmax over finitely many tokens changes no exponent (fromtorch/ops_bias.py), so the
oracle is the same attention through sdpa without the bias: the params must derive exactly as
its, and ``apply`` must leave the model (which keeps its bias) bit-identical at the base width."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Alibi(nn.Module):
    """One causal attention layer, batch and heads merged for ``baddbmm`` (Bloom's layout):
    ``form`` alibi (a per-head slope times the key position, beta 1), zeros (GPT-NeoX-Japanese:
    a bias of zeros) or sdpa (the oracle: no bias). A param as the bias is refused
    (tests/test_error_catalogue.py, learned_logit_bias)."""

    def __init__(self, n, form="alibi"):
        super().__init__()
        self.form, self.h, self.dh = form, 4, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (z(x).view(b, t, self.h, self.dh).transpose(1, 2) for z in (self.q, self.k,
                                                                               self.v))
        if self.form == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            q, k, v = (z.reshape(b * self.h, t, self.dh) for z in (q, k, v))
            slopes = 2.0 ** (-8.0 * torch.arange(1, self.h + 1, device=x.device) / self.h)
            pos = torch.ones(b, t, device=x.device).cumsum(-1) - 1
            bias = {"alibi": (slopes[None, :, None] * pos[:, None, :]).reshape(b * self.h, 1, t),
                    "zeros": torch.zeros(b * self.h, t, t, device=x.device),
                    }[self.form]
            s = bias.baddbmm(q, k.transpose(1, 2), beta=1.0, alpha=self.dh ** -0.5)
            mask = torch.full((t, t), float("-inf"), device=x.device).triu(1)
            p = (s.view(b, self.h, t, t) + mask).softmax(-1)
            y = torch.bmm(p.view(b * self.h, t, t), v).view(b, self.h, t, self.dh)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, c)))


def _abc(traced):
    d = derive(traced.program, "adam")
    return sorted((d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in traced.params)


@pytest.fixture(scope="module")
def oracle():
    return _abc(from_torch(lambda n: Alibi(n, "sdpa"), WIDTHS, _tokens))


@pytest.mark.parametrize("form", ["alibi", "zeros"])
def test_a_fixed_bias_on_the_logits_derives_as_attention_without_it(form, oracle):
    traced = from_torch(lambda n: Alibi(n, form), WIDTHS, _tokens)
    assert "causal_softmax(" in traced.source
    assert _abc(traced) == oracle
    torch.manual_seed(0)
    model, given = Alibi(32, form), _tokens(None)
    before = model(*given)
    MuP(traced, "adam").apply(model)  # at the base width: the model as it comes, its bias kept
    assert torch.equal(model(*given), before)
