"""A product of two params (a gain squared, g * g) is refused at its line: the language's params
enter the program as they are, one read at a time."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402


class Squared(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.g = nn.Parameter(torch.ones(n))

    def forward(self, idx):
        return self.out(self.e(idx) * (self.g * self.g))


def test_a_param_times_a_param_is_refused_at_its_line():
    with pytest.raises(TensorProgError, match=r"test_param_products\.py:\d+:\d+: error: cannot "
                       r"trace a product of two params"):
        from_torch(Squared, (32, 64), lambda m: (torch.zeros(2, 8, dtype=torch.long),))
