"""Values that read only another value's shape: ``zeros_like(h, dtype=int)[..., 0]`` (GIT's
token types, a constant, never the program's) and ``y.view_as(h)`` (Beam's gate, a view). The
oracle is the same model written with ``torch.zeros(b, t)`` and ``view``: they must trace to the
same program."""

import pytest
from conftest import emit_program

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
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


class Narrow(nn.Module):
    """An MLP whose hidden layer is 3/16 of the width (MobileNet v2's 96 of 512 channels)."""

    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(10, 3 * n // 16), nn.Linear(3 * n // 16, n)
        self.out = nn.Linear(n, 4)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


WRITTEN = """width n = 32
dim k = 3 * n / 16
dim d = 10
dim c = 4
input x : [d]
param A : [k, d]
param a : [k]
param B : [n, k]
param b : [n]
param O : [c, n]
param o : [c]
output y = O @ relu(B @ relu(A @ x + a) + b) + o
"""


def test_a_dim_of_a_fraction_of_the_width_traces_as_k_n_over_m():
    traced = from_torch(Narrow, WIDTHS, lambda m: (torch.randn(2, 10),))
    assert "dim n_x3by16 = 3 * n / 16" in traced.source
    names = {"a_weight": "A", "a_bias": "a", "b_weight": "B", "b_bias": "b", "out_weight": "O",
             "out_bias": "o"}
    got = tp.derive(traced.program, "adam").abc
    want = tp.derive(tp.parse(WRITTEN), "adam").abc
    assert {k: got[k] for k in names} == {k: want[v] for k, v in names.items()}
    # the emitted module sizes the dim as the width's 3/16 (whole at multiples of 16)
    model = load_module(emit_program(traced.program), "narrow").Model(64)
    assert tuple(dict(model.named_parameters())["a_weight"].shape) == (12, 10)
