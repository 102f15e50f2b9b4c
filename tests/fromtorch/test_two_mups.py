"""One model holds one MuP's patches: a second MuP's apply would hook the tied readout's
multiplier (and any gradient scale) a second time, so it is refused until the first MuP removes
its own; a deepcopy of a patched model carries its hooks, which apply on it replaces."""

import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


class Tied(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e, self.h = nn.Embedding(13, n), nn.Linear(n, n)

    def forward(self, idx):
        return torch.relu(self.h(self.e(idx))) @ self.e.weight.T


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def test_a_second_mup_is_refused_until_the_first_removes_its_patches():
    traced = from_torch(Tied, (32, 64), _tokens)
    first, second = MuP(traced, "adam"), MuP(traced, "adam")
    model = Tied(128)
    first.apply(model)
    first.apply(model)  # the same MuP again: its patches once
    y = model(*_tokens(model))
    with pytest.raises(UsageError, match="another MuP's forward patches"):
        second.apply(model)
    second.remove_patches(model)  # none of its own: the first's stay
    assert torch.equal(model(*_tokens(model)), y)
    first.remove_patches(model)
    second.apply(model)
    assert torch.equal(model(*_tokens(model)), y)
    # a deepcopy carries its modules' hooks: apply on it replaces them, not doubles them
    clone = copy.deepcopy(model)
    second.apply(clone)
    torch.testing.assert_close(clone(*_tokens(clone)), y, rtol=1e-6, atol=1e-7)
    second.remove_patches(clone)  # the copied hooks too
    torch.testing.assert_close(clone(*_tokens(clone)), plain(clone), rtol=1e-6, atol=1e-7)


def plain(model):
    """The tied model's output without its readout's multiplier."""
    return torch.relu(model.h(model.e(*_tokens(model)))) @ model.e.weight.T
