"""MobileBERT's masked-LM head: ``h.matmul(cat([decoder.weight.t(), dense.weight], 0))`` then
``+= decoder.bias``, the decoder's weight tied to the word embedding and ``dense`` the rows of
the width past the embedding's, none where the embedding is as wide as the model. An empty
param adds nothing to a concatenation, so the readout is the tied unembedding ``tie * (E.T @
h) + b``: the emitted program computes the model (float64)."""

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import from_torch  # noqa: E402

VOCAB, WIDTHS = 16, (32, 64)
# nn.Linear's init of its empty weight says it does nothing
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


class Predictions(nn.Module):
    """HF's MobileBertLMPredictionHead without its transform: the tied rows beside ``dense``'s,
    and the decoder's bias (the module's own ``bias``, tied to it) added after the matmul."""

    def __init__(self, n, embedding):
        super().__init__()
        self.dense = nn.Linear(VOCAB, n - embedding.embedding_dim, bias=False)
        self.decoder = nn.Linear(embedding.embedding_dim, VOCAB)
        self.decoder.weight = embedding.weight
        self.bias = self.decoder.bias

    def forward(self, h):
        h = h.matmul(torch.cat([self.decoder.weight.t(), self.dense.weight], dim=0))
        h += self.decoder.bias
        return h


class Head(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.embed, self.norm = nn.Embedding(VOCAB, n), nn.LayerNorm(n)
        self.up = nn.Linear(n, n)
        self.predictions = Predictions(n, self.embed)

    def forward(self, idx):
        return self.predictions(self.norm(self.up(self.embed(idx))))


def _tokens(model):
    return (torch.arange(12).remainder(VOCAB).view(2, 6),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(Head, WIDTHS, _tokens)


def test_the_tied_rows_beside_an_empty_param_trace_as_the_tied_readout(traced):
    # before: refused as "a concatenation of vectors (other than ...)"
    assert "_matmul * (predictions_decoder_weight.T @ layer_norm)\nadd = matmul + " \
        "predictions_decoder_bias" in traced.source, traced.source
    traced_computes_the_model(traced, Head, _tokens)
    apply_is_bit_identical_at_base(traced, Head, _tokens)
