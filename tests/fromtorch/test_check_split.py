"""The probe's split of attention logits' change (``probe(..., logits=True)``, coord_check's
``split_logits``): the part the attention's own params make, its q/k path rerun from its
step-0 input, and the rest, the change its input brings. Checked on changes whose split is
known: a query weight's alone moves only the first part, an embedding's alone only the second."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.check import probe  # noqa: E402

VOCAB, SEQ, HEADS = 16, 6, 4


class Attn(nn.Module):
    """An embedding, one pre-norm attention layer of 4 heads (head dim n/4), a readout."""

    def __init__(self, n):
        super().__init__()
        self.embed, self.ln = nn.Embedding(VOCAB, n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        self.head = nn.Linear(n, VOCAB)

    def forward(self, idx):
        x = self.embed(idx)
        h = self.ln(x)
        b, t, n = h.shape
        q, k, v = (p(h).view(b, t, HEADS, n // HEADS).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


def _tokens(model):
    return (torch.zeros(2, SEQ, dtype=torch.long),)


@pytest.mark.parametrize("moved, own_moves", [("q", True), ("embed", False)])
def test_attention_logits_split_into_their_own_update_and_their_inputs_change(moved, own_moves):
    traced = from_torch(Attn, (32, 64), _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = traced.build(64)
    mup.apply(model)
    split: dict = {}
    read = probe(mup, model, (torch.arange(2 * SEQ).remainder(VOCAB).view(2, SEQ),), {},
                 split, logits=True)
    before = read()
    (name,) = (v for v in split if "logits" in v)
    with torch.no_grad():
        getattr(model, moved).weight.add_(0.1 * torch.randn_like(getattr(model, moved).weight))
    after = read()
    own, cross = split[name]
    change = after[name] - before[name]
    assert change.abs().max() > 1e-3
    # the two parts add up to the change, and the part a change did not touch is exactly 0
    torch.testing.assert_close(own + cross, change, rtol=0, atol=1e-6)
    assert torch.equal(cross if own_moves else own, torch.zeros_like(own))
