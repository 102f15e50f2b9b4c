"""MobileBERT's masked-LM head: ``h.matmul(cat([decoder.weight.t(), dense.weight], 0))`` then
``+= decoder.bias``, the decoder's weight tied to the word embedding and ``dense`` the rows of
the width past the embedding's, none where the embedding is as wide as the model. An empty
param adds nothing to a concatenation, so the readout is the tied unembedding ``tie * (E.T @
h) + b``: the emitted program computes the model (float64)."""

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
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
    def __init__(self, n, per=1):
        super().__init__()
        self.embed, self.norm = nn.Embedding(VOCAB, n // per), nn.LayerNorm(n)
        self.up = nn.Linear(n // per, n)
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


def test_applys_patch_scales_the_tied_product_and_not_the_bias_added_after_it(traced):
    # the patch multiplies the output of the module that computes the product: it also held
    # the bias added after it, which it scaled as well (by 1/4 at 4x the base width)
    from tensorprog.fromtorch import MuP

    torch.manual_seed(0)
    model = Head(4 * WIDTHS[0])
    report = MuP(traced, "adam").apply(model)
    assert "its bias kept out of it" in str(report)
    with torch.no_grad():
        model.predictions.bias.copy_(torch.linspace(-2.0, 2.0, VOCAB))
        (x,) = _tokens(model)
        h = model.norm(model.up(model.embed(x)))
        program = 0.25 * (h @ model.embed.weight.T) + model.predictions.bias
        torch.testing.assert_close(model(x), program, rtol=0, atol=1e-5)


class Capped(nn.Module):
    """The tied product inside a module that returns a function of it (a cap, c·tanh(x/c)):
    a factor on that module's output is none on the product."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, h):
        return 30 * torch.tanh(h.matmul(self.decoder.weight.t()) / 30)


class Scaled(Capped):
    """The tied product times a number, negated and copied: linear in it, the factor passes."""

    def forward(self, h):
        return -(h.matmul(self.decoder.weight.t()) * 2).contiguous()


class Outside(Head):
    def __init__(self, n, inner=Capped):
        super().__init__(n)
        self.out = inner(self.predictions.decoder)

    def forward(self, idx):
        return self.out(self.norm(self.up(self.embed(idx))))


def test_a_tied_product_inside_a_module_that_returns_a_function_of_it_is_refused_at_its_line():
    with pytest.raises(TensorProgError, match=r"test_tied_cat_readout.py:\d+:\d+: error: cannot "
                       r"trace a tied unembedding(.|\n)*which is no factor on the product"):
        from_torch(Outside, WIDTHS, _tokens)


def test_a_tied_product_times_a_number_inside_its_module_is_patched_there():
    def build(n):
        return Outside(n, Scaled)

    traced = from_torch(build, WIDTHS, _tokens)
    traced_computes_the_model(traced, build, _tokens)
    from tensorprog.fromtorch import MuP

    model = build(4 * WIDTHS[0])
    MuP(traced, "adam").apply(model)
    with torch.no_grad():
        (x,) = _tokens(model)
        h = model.norm(model.up(model.embed(x)))
        torch.testing.assert_close(model(x), -0.5 * (h @ model.embed.weight.T), rtol=0,
                                   atol=1e-5)


def test_the_tied_rows_beside_a_params_rows_are_refused_at_their_line():
    # MobileBERT's own proportion, an embedding of a quarter of the width: dense has the rest
    with pytest.raises(TensorProgError, match=r"test_tied_cat_readout.py:\d+:\d+: error: cannot "
                       r"trace a concatenation of params into one matrix"):
        from_torch(lambda n: Head(n, per=4), WIDTHS, _tokens)
