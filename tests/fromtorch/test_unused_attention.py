"""What a model holds but no output reads. An attention whose result reaches no output (the
encoder of an encoder-decoder whose decoder has no cross-attention): derive leaves its params and
its scale out, and ``apply`` leaves them as they are (before, it looked the left-out scale up in
derive's table: a KeyError). A param of no entries: traced past (before, an IndexError)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = nn.functional

from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class DeadAttention(nn.Module):
    """An MLP LM beside a bidirectional attention over 4 heads whose result nothing reads."""

    def __init__(self, n):
        super().__init__()
        self.e, self.h, self.out = nn.Embedding(16, n), nn.Linear(n, n), nn.Linear(n, 16)
        self.qkv = nn.Linear(n, 3 * n)

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx)
        q, k, v = (z.view(b, t, 4, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        F.scaled_dot_product_attention(q, k, v).sum()  # computed, then dropped
        return self.out(torch.relu(self.h(x)))


def test_an_attention_that_reaches_no_output_is_left_as_it_is():
    traced = from_torch(DeadAttention, (32, 64), _tokens)
    (scale,) = traced.scales
    assert scale.startswith("attn_") and "qkv_weight_part0" in traced.params
    with pytest.warns(UserWarning, match="does not reach any output"):
        mup = MuP(traced, "adam")
    assert scale not in mup.derivation.abc and "qkv_weight_part0" in mup.unused
    assert not mup.patches  # nothing to patch: the scale keeps the model's own
    torch.manual_seed(0)
    model = DeadAttention(128)
    before = model.qkv.weight.detach().clone()
    report = str(mup.apply(model))
    assert torch.equal(model.qkv.weight, before)
    assert "qkv.weight reaches no output" in report and "init h.weight" in report


class EmptyRows(nn.Module):
    """An MLP LM holding a param of no entries (MobileBERT's readout rows past its embedding's,
    none when the embedding is as wide as the model)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(16, n), nn.Linear(n, 16)
        self.extra = nn.Parameter(torch.zeros(0, n))

    def forward(self, idx):
        return self.out(torch.relu(self.e(idx)))


def test_a_param_of_no_entries_is_traced_past():
    # before, reading its base init failed on its first entry (an IndexError)
    traced = from_torch(EmptyRows, (32, 64), _tokens)
    assert set(traced.params) == {"e_weight", "out_weight", "out_bias"}
