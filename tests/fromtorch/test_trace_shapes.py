"""Values that read only another value's shape: ``zeros_like(h, dtype=int)[..., 0]`` (GIT's
token types, a constant, never the program's) and ``y.view_as(h)`` (Beam's gate, a view). The
oracle is the same model written with ``torch.zeros(b, t)`` and ``view``: they must trace to the
same program."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Net(nn.Module):
    def __init__(self, n, like=True):
        super().__init__()
        self.like = like
        self.e, self.types, self.f = nn.Embedding(13, n), nn.Embedding(2, n), nn.Linear(n, n)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        if self.like:
            types = torch.zeros_like(x, dtype=torch.int)[..., 0]
            h = self.f(x).view(2, 8, 4, -1).view_as(x)
        else:
            types = torch.zeros(x.shape[:2], dtype=torch.int, device=x.device)
            h = self.f(x).view(2, 8, 4, -1).view(x.shape)
        return self.out(torch.relu(h) + self.types(types))


def test_a_value_of_another_values_shape_traces_as_its_constant_or_view():
    traced = from_torch(Net, WIDTHS, _tokens)
    oracle = from_torch(lambda n: Net(n, like=False), WIDTHS, _tokens)
    assert traced.source == oracle.source
