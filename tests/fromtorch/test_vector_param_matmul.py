"""``h @ a`` of a vector param (a per-token scalar gate, sigmoid(h @ a)): the language's matmuls
read a matrix, so it is refused at its line (it crashed the tracer with an IndexError)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class ScalarGate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.emb = nn.Embedding(32, n)
        self.a = nn.Parameter(torch.randn(n) / n)
        self.w = nn.Linear(n, n, bias=False)
        self.u = nn.Linear(n, 32, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        return self.u(h + torch.sigmoid(h @ self.a).unsqueeze(-1) * self.w(h))


def test_a_matmul_with_a_vector_param_is_refused_at_its_line():
    with pytest.raises(TraceError, match=r"a matmul with a vector param \(a, of 32 entries\)") as e:
        tp.from_torch(ScalarGate, (32, 64), lambda m=None: (torch.randint(0, 32, (2, 4)),))
    assert "torch.sigmoid(h @ self.a)" in str(e.value)
