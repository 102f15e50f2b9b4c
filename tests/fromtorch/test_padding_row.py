"""A lookup of one constant id that is the table's padding_idx (RoCBert's shape and pronunciation
ids, zeros where none are given): nn.Embedding zeroes that row and masks its gradient, so the
vector is zero and never trains. The trace declares it a fixed param ``= 0`` (fromtorch/
ops_linear.py): apply leaves it, the coordinate check calls it frozen (a padding row the build
leaves nonzero is refused: tests/test_error_catalogue.py, "padding_drawn")."""

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

