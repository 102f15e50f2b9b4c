"""from_torch on T5Gemma 2's embedding, ``h[ids == k] = v`` after the lookup ``h = E[ids] * s``
(modeling_t5gemma2.py's T5Gemma2TextScaledWordEmbedding: the end-of-image token's learned
vector). With k outside the table's rows no id the lookup can take is k, so the mask keeps no
token for any input and the assignment leaves ``h``: oracle, the emitted program computes the
model (float64), and the derivation is the same model's without the assignment, v unused. With
k a row of the table the tokens of id k take v, a choice of vector by the token's value: refused
at its line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class EoiEmbedded(nn.Module):
    """The scaled embedding with its end-of-image vector, a hidden layer and a readout."""

    def __init__(self, n, eoi: int | None = 256_000):
        super().__init__()
        self.eoi = eoi
        self.e = nn.Embedding(VOCAB, n)
        self.eoi_embedding = nn.Parameter(torch.randn(n))
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)
        self.fc, self.head = nn.Linear(n, n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx) * self.scale.to(self.e.weight.dtype)
        if self.eoi is not None:
            h[idx == self.eoi] = self.eoi_embedding.to(h.dtype)
        return self.head(torch.relu(self.fc(h)))


@pytest.mark.slow  # two traces
def test_an_id_outside_the_table_assigns_no_token():
    # before: refused at h[idx == eoi] = ..., "an assignment by a mask computed from the token ids"
    traced = from_torch(EoiEmbedded, WIDTHS, _tokens)
    traced_computes_the_model(traced, EoiEmbedded, _tokens)
    assert "eoi_embedding" not in {p.target for p in traced.params.values()}
    # the derivation is the same model's without the assignment (v reaches no output)
    plain = from_torch(lambda n: EoiEmbedded(n, eoi=None), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)


def test_an_id_in_the_table_is_refused_at_its_line():
    with pytest.raises(TensorProgError, match=r"computed from the token ids.*\n(.*\n)*.*h\[idx"):
        from_torch(lambda n: EoiEmbedded(n, eoi=5), WIDTHS, _tokens)


class _Lookup(nn.Embedding):
    """T5Gemma 2's scaled lookup with its end-of-image row (T5Gemma2TextScaledWordEmbedding)."""

    def __init__(self, n):
        super().__init__(VOCAB, n)
        self.embed_scale = nn.Buffer(torch.tensor(n**0.5), persistent=False)
        self.eoi_embedding = nn.Parameter(torch.zeros(n))

    def forward(self, idx):
        h = super().forward(idx) * self.embed_scale.to(self.weight.dtype)
        h[idx == 256_000] = self.eoi_embedding.to(h.dtype)
        return h


class TwoLookups(nn.Module):
    """Two such lookups sharing their end-of-image vector (T5Gemma 2's encoder and decoder),
    the first's table tied to the readout: its width constant sqrt(n) must be patched on its
    module's output, which is the product itself for every input."""

    def __init__(self, n):
        super().__init__()
        self.first, self.second = _Lookup(n), _Lookup(n)
        self.second.eoi_embedding = self.first.eoi_embedding
        self.hidden = nn.Linear(n, n, bias=False)

    def forward(self, idx):
        h = self.first(idx) + self.hidden(self.second(idx))
        return h @ self.first.weight.t()


@pytest.mark.slow  # a trace at two widths: about 3 s
def test_a_width_constant_before_the_assignment_is_patched_on_its_lookup_module():
    # before: "no module returns that vector alone": the module returns the assignment after
    # the product, and export shares one cast of the shared vector between the two calls
    from tensorprog.fromtorch import MuP

    traced = from_torch(TwoLookups, WIDTHS, _tokens)
    assert "first" in traced.constant_modules.values()
    MuP(traced, "adam")
