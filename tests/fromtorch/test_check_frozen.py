"""coord_check of a model with a frozen table (``requires_grad=False``: Marian's and Pegasus's
sinusoidal positions), traced as a fixed table: the vector it makes never changes, which is what
the model does, so the check says "frozen" rather than failing it at slope -inf; a trained
table's vector is judged as ever."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.p = nn.Embedding(8, n, _freeze=True)  # as HF's sinusoidal position tables
        self.up, self.down = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx) + self.p(torch.arange(idx.shape[1]))
        x = x + self.down(torch.relu(self.up(x)))
        return self.out(x)


def test_a_vector_of_frozen_params_is_frozen_not_failing():
    traced = from_torch(Net, (32, 64), lambda m: (torch.arange(16).remainder(13).view(2, 8),))
    result = coord_check(MuP(traced, "adam"), (64, 128), steps=2, seeds=(0,))
    table = {r.name: r for r in result.results if r.step == 2}
    # the frozen table is a fixed table of the program (fromtorch/ops_tables.py): no producer
    # a multiplier could fold into, read as P @ pos
    fixed = [p for p, u in traced.params.items() if u.fixed is not None]
    assert [traced.params[p].target for p in fixed] == ["p.weight"]
    positions = next(ins.out for ins in traced.program.body
                     if getattr(ins, "weight", None) == fixed[0])
    tokens = next(v for v, u in traced.producers.items()
                  if traced.params[u[0]].target == "e.weight")
    assert table[positions].slope == float("-inf")
    assert table[positions].ok and table[positions].verdict.startswith("frozen")
    assert not table[tokens].verdict.startswith("frozen")
    assert result.passed
