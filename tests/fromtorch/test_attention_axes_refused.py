"""Attention whose queries, keys or values are not laid out (batch, heads, tokens, head dim):
torch's matmuls pair the axes before the last two by position and sdpa attends over the axis
before the last, so heads left where the tokens belong make attention mix heads, or pair query
head i with key token i, wherever the counts agree. Each is refused at its line (it had traced
into ordinary attention, which computes something else: the oracle of the accepted forms,
traced_computes_the_model, measured a difference of 0.1 to 0.4)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class Untransposed(nn.Module):
    """4 heads over 4 tokens; ``sdpa``: queries, keys and values (values of their own head dim,
    in 2 heads for the 4) left (batch, tokens, heads, head dim) for sdpa; ``keys``: the eager
    q @ k.T of queries transposed to their heads and keys left (batch, tokens, heads, dh)."""

    def __init__(self, n, form):
        super().__init__()
        self.form, self.dh = form, n // 4
        self.emb = nn.Embedding(64, n)
        self.q, self.k = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.v = nn.Linear(n, n // 4, bias=False)
        self.o, self.u = nn.Linear(n // 2, n, bias=False), nn.Linear(n, 64, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        (b, t, _), dh = h.shape, self.dh
        q, k = self.q(h).view(b, t, 4, dh), self.k(h).view(b, t, 4, dh)
        v = self.v(h).view(b, t, 2, dh // 2)
        if self.form == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v.repeat_interleave(2, dim=2))
        else:
            q, v = q.transpose(1, 2), v.transpose(1, 2).repeat_interleave(2, dim=1)
            o = ((q @ k.transpose(-1, -2)) * dh**-0.5).softmax(-1) @ v
            o = o.transpose(1, 2)
        return self.u(h + self.o(o.reshape(b, t, -1)))


def ids(model=None):
    return (torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("form, match", [
    ("sdpa", r"scaled_dot_product_attention of queries laid out \(tokens, tokens, heads, "
             r"head dim\)"),
    ("keys", r"q @ k.T of queries laid out \(tokens, heads, tokens, head dim\) and keys laid "
             r"out \(tokens, tokens, head dim, heads\)"),
])
def test_heads_where_the_tokens_belong_are_refused(form, match):
    with pytest.raises(TraceError, match=match):
        tp.from_torch(lambda n: Untransposed(n, form), (64, 128), ids)
