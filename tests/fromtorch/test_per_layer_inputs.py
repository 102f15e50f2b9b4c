"""from_torch on Gemma 4's per-layer inputs: one vector of L·d features per token (a lookup of
the tokens plus a projection of the embedding, normalised over each layer's d features), viewed
(batch, tokens, L, d), of which layer i reads ``p[:, :, i, :]``: the language's
``part(p, d, i)``. Oracles: the emitted program computes the model (float64), and derives the
exponents of examples/per_layer_inputs.tp, the same network written by hand. A part of a vector
whose number of parts grows with the width is refused at its line."""

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (64, 128)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class RMS(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class PerLayerInputs(nn.Module):
    """Gemma 4's text model in small: its per-layer inputs (HF's get_per_layer_inputs and
    project_per_layer_inputs) and each layer's gate, projection and norm of them."""

    def __init__(self, n, layers=2, per=8, vocab=13):
        super().__init__()
        self.L, self.d = layers, n // per
        self.e, self.epl = nn.Embedding(vocab, n), nn.Embedding(vocab, layers * self.d)
        self.mp, self.pnorm = nn.Linear(n, layers * self.d, bias=False), RMS(self.d)
        self.gates = nn.ModuleList(nn.Linear(n, self.d, bias=False) for _ in range(layers))
        self.projs = nn.ModuleList(nn.Linear(self.d, n, bias=False) for _ in range(layers))
        self.norms = nn.ModuleList(RMS(n) for _ in range(layers))
        self.head = nn.Linear(n, vocab, bias=False)

    def forward(self, idx):
        x = self.e(idx)
        tok = (self.epl(idx) * self.d ** 0.5).reshape(*idx.shape, self.L, self.d)
        proj = (self.mp(x) * x.shape[-1] ** -0.5).reshape(*idx.shape, self.L, self.d)
        p = (self.pnorm(proj) + tok) * 2 ** -0.5
        h = x
        for i in range(self.L):
            gated = F.gelu(self.gates[i](h)) * p[:, :, i, :]
            h = h + self.norms[i](self.projs[i](gated))
        return self.head(h)


@pytest.fixture(scope="module")
def traced():
    return from_torch(PerLayerInputs, WIDTHS, _tokens)


def _computes_the_model(traced, build, layers):
    for i in range(layers):
        assert f", {i})" in traced.source and "part(" in traced.source, traced.source
    traced_computes_the_model(traced, build, _tokens)


def test_each_layers_part_of_the_per_layer_inputs_computes_the_model(traced):
    # before: refused as "indexing a traced value along an axis other than a fused layer's
    # blocks or the sequence of a (batch, tokens, features) vector"
    _computes_the_model(traced, PerLayerInputs, 2)


@pytest.mark.slow
def test_three_layers_parts_of_half_the_width_compute_the_model():
    def build(n):
        return PerLayerInputs(n, layers=3, per=2)

    _computes_the_model(from_torch(build, WIDTHS, _tokens), build, 3)


def test_the_traced_parts_derive_the_hand_written_programs_exponents(traced):
    got = abc_by_target(traced)
    want = tp.derive(tp.parse_file(ROOT / "examples" / "per_layer_inputs.tp"), "adam").abc
    same = {"e.weight": "E", "epl.weight": "Epl", "mp.weight": "Wpl", "pnorm.weight": "gpl",
            "gates.0.weight": "G0", "projs.0.weight": "P0", "gates.1.weight": "G1",
            "projs.1.weight": "P1", "head.weight": "U"}
    for target, name in same.items():
        abc = want[name]
        assert got[target] == (abc.a, abc.b, abc.c), target


class GrowingParts(nn.Module):
    """A vector viewed into n/16 parts of 16 (their number grows with the width), one read."""

    def __init__(self, n):
        super().__init__()
        self.e, self.q = nn.Embedding(13, n), nn.Linear(n, n, bias=False)
        self.g, self.head = nn.Linear(16, n, bias=False), nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        x = self.e(idx)
        q = torch.relu(self.q(x)).view(*idx.shape, -1, 16)
        return self.head(x + self.g(q[:, :, 1, :]))


def test_a_part_of_a_growing_number_of_parts_is_refused_at_its_line():
    with pytest.raises(TensorProgError, match=r"test_per_layer_inputs.py:\d+:\d+: error: (.|\n)*"
                       r"part\(n, f16, 1\): n and f16 do not both grow with the width"):
        from_torch(GrowingParts, WIDTHS, _tokens)
