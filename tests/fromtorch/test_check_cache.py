"""coord_check on a model that caches a tensor computed from its params in eval mode (LeViT's
attention bias, ``attention_bias_cache``): the check trains in eval mode, so the cache would be
read again after each step, stale and with its graph freed. The check drops a dict attribute's
graph tensors before each training forward (fromtorch/caches.py), and names a cache of another
form where one is read again."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
# torch.export warns of the cache its run in eval mode fills (and then drops it again)
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attribute:UserWarning")

from tensorprog.errors import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


class Net(nn.Module):
    """An MLP on 16 floats whose hidden features are gated by sigmoid(g), g a param; in eval
    mode the gate is computed once and kept, as LeViT keeps its bias: in a dict keyed by device
    (``keep="dict"``), in a bare attribute (``"bare"``), or not kept (``None``)."""

    keep: str | None = None

    def __init__(self, n):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, n), nn.Linear(n, n), nn.Linear(n, 2)
        self.g = nn.Parameter(torch.zeros(n))
        for p in (self.fc1.weight, self.fc2.weight, self.head.weight):
            nn.init.normal_(p, std=0.02)
        self.cache, self.kept = {}, None

    def gate(self, device):
        if self.training or self.keep is None:
            return torch.sigmoid(self.g)
        if self.keep == "bare":
            if self.kept is None:
                self.kept = torch.sigmoid(self.g)
            return self.kept
        if str(device) not in self.cache:
            self.cache[str(device)] = torch.sigmoid(self.g)
        return self.cache[str(device)]

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)) * self.gate(x.device))))


def _inputs(model):
    return (torch.randn(2, 16),)


class Built(Net):
    keep = "dict"


@pytest.fixture(scope="module")
def mup():
    # one trace for every form: the traced graph is the same (export's run in eval mode fills
    # the cache, and reads it once)
    return MuP(from_torch(Built, (32, 64), lambda m: (torch.zeros(2, 16),)), "adam")


def _checked(mup, keep, monkeypatch):
    monkeypatch.setattr(Built, "keep", keep)
    return coord_check(mup, (64, 128), steps=2, seeds=(0,), batch=1)


def test_a_cache_kept_by_device_is_read_afresh_at_every_step(mup, monkeypatch):
    traced_computes_the_model(mup.traced, Built, _inputs)
    cached = _checked(mup, "dict", monkeypatch)
    assert cached.passed, str(cached)


@pytest.mark.slow
def test_the_runs_with_a_cache_are_those_of_the_model_without(mup, monkeypatch):
    # each forward read the current params: the same slopes, bit for bit, as the model's that
    # never caches
    cached, fresh = (_checked(mup, keep, monkeypatch) for keep in ("dict", None))
    assert [(r.name, r.step, r.slope) for r in cached.results] == [
        (r.name, r.step, r.slope) for r in fresh.results
    ]


def test_a_cache_in_a_bare_attribute_read_again_is_named(mup, monkeypatch):
    with pytest.raises(UsageError) as err:
        _checked(mup, "bare", monkeypatch)
    message = str(err.value)
    assert "reads again a tensor it computed from its params" in message
    assert "(kept in kept)" in message and "keep it in a dict attribute" in message, message
