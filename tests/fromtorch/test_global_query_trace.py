"""SwiftFormer's additive attention, traced (fromtorch/ops_global.py): the softmax of one number
per token over its last axis, of size 1, is the constant 1 (no gradient reaches ``w_g``), the
queries summed over the tokens are T times ``mean(q)``, and that vector per sequence, given back
its token axis (``unsqueeze(1).repeat(1, T, 1)``), times the keys is the program's ``k * g``.
The traced program computes the model (the shared oracle); a softmax over the tokens is refused."""

import functools

import pytest
from conftest import ROOT, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TensorProgWarning, TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (16, 32)


def _image(model):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


class Additive(nn.Module):
    """A strided stem, HF's SwiftFormerEfficientAdditiveAttention over the pixels' tokens (its
    L2 normalisations left out: over a growing dim, read by more than logits, apply refuses
    them: test_l2_normalize.py), a pooled readout as SwiftFormer's ``flatten(2).mean(-1)``;
    ``over`` the softmax's axis."""

    def __init__(self, n, over=-1):
        super().__init__()
        self.over = over
        self.embed = nn.Conv2d(3, n, 3, stride=2, padding=1)
        self.to_query, self.to_key = nn.Linear(n, n), nn.Linear(n, n)
        self.w_g = nn.Parameter(torch.randn(n, 1))
        self.scale_factor = n**-0.5
        self.proj, self.final = nn.Linear(n, n), nn.Linear(n, n)
        self.head = nn.Linear(n, 10)

    def attn(self, x):
        query, key = self.to_query(x), self.to_key(x)
        weight = (query @ self.w_g * self.scale_factor).softmax(dim=self.over)
        global_queries = torch.sum(weight * query, dim=1)
        global_queries = global_queries.unsqueeze(1).repeat(1, key.shape[1], 1)
        return self.final(self.proj(global_queries * key) + query)

    def forward(self, img):
        h = self.embed(img)
        b, c, hh, ww = h.shape
        t = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        t = t + self.attn(t)
        h = t.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return self.head(h.flatten(2).mean(-1))


@functools.cache
def _traced(over):
    return from_torch(lambda n: Additive(n, over), WIDTHS, _image)


def test_additive_attention_traces_and_computes_the_model():
    tr = _traced(-1)
    assert "linear_1 * v_sum_1" in tr.source  # the keys times T·mean(q), every token alike
    # the softmax of one entry is 1 whatever w_g is: no gradient reaches it, and the engine
    # leaves it out (its q @ w_g is computed for nothing, as in the model)
    with pytest.warns(TensorProgWarning, match="'w_g' does not reach any output"):
        traced_computes_the_model(tr, lambda n: Additive(n, -1), _image)


def test_a_softmax_over_the_tokens_of_a_number_per_token_is_refused():
    with pytest.raises(TraceError, match="a softmax of anything but attention logits"):
        _traced(1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_attention_derives_as_the_hand_written_one(optimizer):
    # examples/additive_attention.tp writes the block by hand (its linear layers unbiased)
    with pytest.warns(TensorProgWarning, match="'w_g' does not reach any output"):
        traced = tp.derive(_traced(-1).program, optimizer).abc
    hand = tp.derive(tp.parse_file(ROOT / "examples" / "additive_attention.tp"), optimizer).abc
    for mine, target in (("Wq", "to_query_weight"), ("Wk", "to_key_weight"),
                         ("Wp", "proj_weight"), ("Wf", "final_weight"), ("U", "head_weight")):
        assert traced[target] == hand[mine], mine
