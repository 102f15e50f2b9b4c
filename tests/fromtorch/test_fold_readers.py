"""apply's attention factor on the query: folded into the query layer's init and LR (or patched
on its output) it scales every reader of that output. Where the layer's output is also read
outside attention (added to the residual), that reader would be scaled with it, so apply refuses
and says which instruction reads it; a query read by attention alone is folded as before."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Attn(nn.Module):
    """One causal attention of 4 heads of n/4 (µP's 1/dh against sdpa's 1/sqrt(dh)); ``twice``:
    the query layer's output also added to the residual."""

    def __init__(self, n, twice=False):
        super().__init__()
        self.dh, self.twice = n // 4, twice
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        qf = self.q(x)
        q, k, v = (y.view(b, t, 4, self.dh).transpose(1, 2) for y in (qf, self.k(x), self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return self.out(h + qf if self.twice else h)


def test_a_query_layer_read_by_attention_alone_takes_the_fold():
    mup = MuP(from_torch(Attn, (16, 32), _tokens), "adam")
    assert [f.split(":")[1].strip() for f in mup.folded] == [
        "(n/base)^-1/2 folded into the init and LR of q.weight"]


def test_a_query_layer_whose_output_is_also_read_elsewhere_is_refused():
    traced = from_torch(lambda n: Attn(n, twice=True), (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .*µP needs the "
                       r"attention logits times \(n/base\)\^-1/2, which apply puts on the query "
                       r"linear, made by q.weight, .* but add_1 reads linear too"):
        MuP(traced, "adam")
