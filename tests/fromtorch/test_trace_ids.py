"""from_torch on ids the model makes itself: position ids read from a registered arange buffer
(``self.position_ids[:, :T]``, BERT's and BART's, with or without an offset) and constant ids
(BERT's token-type ids, a buffer of zeros). Each model is traced at widths 32 and 64, derived,
applied (bit-identical at the base width) and compared with the same model written without the
buffer (the oracle: positions from ``torch.arange``, the constant row as a bias)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)
T = 8


def _tokens(model):
    return (torch.arange(2 * T).remainder(13).view(2, T),)


def _abc(traced):
    """Each param's (a, b, c) under Adam, keyed by its torch target."""
    d = derive(traced.program, "adam")
    return {u.target: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p, u in traced.params.items()}


def _bit_identical_at_base(traced, build):
    """MuP.apply at the base width changes no param and no output, bit for bit."""
    mup = MuP(traced, "adam")
    torch.manual_seed(1)
    model = build(WIDTHS[0])
    torch.manual_seed(1)
    plain = build(WIDTHS[0])
    mup.apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    tok = _tokens(model)
    assert torch.equal(model(*tok), plain(*tok))
    return mup


class Positions(nn.Module):
    """Token and position embeddings, one MLP, a readout; the position ids from a buffer
    (``form`` "buffer": BERT's ``position_ids[:, :T]``; "offset": plus 2, BART's), or from
    ``torch.arange`` ("plain", the oracle)."""

    def __init__(self, n, form="buffer"):
        super().__init__()
        self.form, self.offset = form, 2 if form == "offset" else 0
        self.e, self.p = nn.Embedding(13, n), nn.Embedding(16 + self.offset, n)
        self.register_buffer("position_ids", torch.arange(16).expand((1, -1)), persistent=False)
        self.up, self.down, self.out = nn.Linear(n, 2 * n), nn.Linear(2 * n, n), nn.Linear(n, 13)

    def forward(self, idx):
        t = idx.shape[1]
        pos = torch.arange(t) if self.form == "plain" else self.position_ids[:, :t]
        x = self.e(idx) + self.p(pos + self.offset)
        return self.out(x + self.down(torch.relu(self.up(x))))


@pytest.mark.parametrize("form", ["buffer", "offset"])
def test_position_ids_from_a_buffer_are_positions(form):
    traced = from_torch(lambda n: Positions(n, form), WIDTHS, _tokens)
    assert "p_weight @ pos" in traced.source
    assert _abc(traced) == _abc(from_torch(lambda n: Positions(n, "plain"), WIDTHS, _tokens))
    _bit_identical_at_base(traced, lambda n: Positions(n, form))
