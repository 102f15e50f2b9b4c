"""A lookup of one constant id that is the table's padding_idx (RoCBert's shape and pronunciation
ids, zeros where none are given): nn.Embedding zeroes that row and masks its gradient, so the
vector is zero and never trains. The trace declares it a fixed param ``= 0`` (fromtorch/
ops_linear.py): apply leaves it, the coordinate check calls it frozen (a padding row the build
leaves nonzero is refused, and one another reader trains: tests/test_error_catalogue.py,
"padding_drawn", "padding_read", "padding_tied")."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


class Padded(nn.Module):
    """A token embedding beside a fixed-size embedding of the padding id, into one layer."""

    def __init__(self, n):
        super().__init__()
        self.e, self.f = nn.Embedding(13, n), nn.Embedding(7, 5, padding_idx=0)
        self.mix, self.head = nn.Linear(n + 5, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = torch.cat([self.e(idx), self.f(torch.zeros_like(idx))], dim=-1)
        return self.head(torch.relu(self.mix(x)))


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(Padded, (32, 64), _tokens)


def test_the_padding_row_is_a_fixed_zero_vector(traced):
    assert "param f_weight_row0 : [f5] = 0  # row 0 of f.weight, its padding_idx: never " \
        "trained" in traced.source, traced.source
    assert traced.params["f_weight_row0"].fixed == 0.0
    traced_computes_the_model(traced, Padded, _tokens)


def test_apply_leaves_it_and_the_check_calls_it_frozen(traced):
    mup = MuP(traced, "adam")
    model = Padded(128)
    report = mup.apply(model)
    assert "fixed row 0 of f.weight: never trained, left as it is" in str(report)
    assert not model.f.weight[0].any() and "f.weight" not in mup.uncovered(model)
    result = coord_check(mup, (32, 64, 128), seeds=(0,), steps=2)
    row = [r for r in result.results if r.name == "embedding_1"]
    assert [r.verdict.split(":")[0] for r in row] == ["exactly zero at init", "frozen", "frozen"]
    assert result.passed



class Both(nn.Module):
    """The padding table also read by ids given (0 among them): a param [5, 7] drawn anew
    at a wider model (too few entries to rescale by their own std: reinit.py)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.f = nn.Embedding(13, n), nn.Embedding(7, 5, padding_idx=0)
        self.mix, self.head = nn.Linear(n + 10, n), nn.Linear(n, 13)

    def forward(self, idx, ids):
        x = torch.cat([self.e(idx), self.f(ids), self.f(torch.zeros_like(idx))], dim=-1)
        return self.head(torch.relu(self.mix(x)))


def _two(model):
    idx = _tokens(model)[0]
    return idx, idx.remainder(7)


def test_a_fresh_draw_of_the_table_keeps_its_padding_row_zero():
    traced = from_torch(Both, (32, 64), _two)
    assert traced.params["f_weight_row0"].fixed == 0.0
    torch.manual_seed(0)
    model = Both(128)
    report = str(MuP(traced, "adam").apply(model))
    assert "drawn anew at 0.9286 (base 0.9286 x (n/base)^-0), its padding row 0 kept zero" \
        in report, report
    assert "fixed row 0 of f.weight: never trained, left as it is" in report
    assert not model.f.weight[0].any() and model.f.weight[1:].all()
