"""coord_check where no slope can be fit: a model whose own values go inf or nan at one width,
and one whose change is exactly 0 in one seed and not in the other. Each gets a verdict of its
own that names the runs (vector, width, seed, step); before, the mean of the per-seed slopes was
nan and the zoo printed it as a slope of "+nan"."""

import math

import pytest
from conftest import ROOT, import_file

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


class Net(nn.Module):
    """An MLP on 16 floats, every weight at HF's std 0.02. ``inf_at``: its hidden weight holds an
    inf at that width; ``dead_seed``: built under that seed, its first layer's bias is -1, so its
    ReLU is 0 everywhere and no gradient reaches that layer (its change is exactly 0)."""

    inf_at: int | None = None
    dead_seed: int | None = None

    def __init__(self, n):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, n), nn.Linear(n, n), nn.Linear(n, 2)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.dim() == 2 else nn.init.zeros_(p)
        if n == self.inf_at:
            with torch.no_grad():
                self.fc2.weight[0, 0] = math.inf
        if torch.initial_seed() == self.dead_seed:
            nn.init.constant_(self.fc1.bias, -1.0)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _checked(**kw):
    build = type("Built", (Net,), kw)
    mup = MuP(from_torch(build, (32, 64), lambda m: (torch.zeros(2, 16),)), "adam")
    seeds = (0, 1) if "dead_seed" in kw else (0,)
    return coord_check(mup, (64, 128), steps=2, seeds=seeds, batch=1)


@pytest.fixture(scope="module")
def zoo():
    pytest.importorskip("transformers")
    return import_file(ROOT / "benchmarks" / "zoo.py", "zoo")


def test_a_model_whose_values_are_inf_at_one_width_fails_naming_vector_width_and_step(zoo):
    result = _checked(inf_at=128)
    assert not result.passed
    assert [(v, w, s, t) for v, w, s, t, _ in result.diverged] == [("linear_1", 128, 0, 0)]
    fc2 = next(r for r in result.results if r.name == "linear_1" and r.step == 0)
    assert fc2.verdict == ("not finite at init: the model's own values are inf or nan in seed 0 "
                           "(width 128), so no slope can be fit")
    assert all(not r.ok for r in result.results if math.isnan(r.slope))
    assert "fc2 (linear_1) is the first vector" not in str(result)  # the graph's name
    assert "the model's own values are not finite" in str(result)
    detail = zoo._failed(result)
    assert detail.startswith("diverged at width 128, seed 0, step 0: linear_1 is the first "
                             "vector to go inf or nan (step 0): the model's own values are not "
                             "finite"), detail
    assert "nan" not in detail.replace("inf or nan", "")
    assert zoo._worst(result) == ""  # no vector has a slope: the SP column gives _failed's words


def test_a_change_exactly_zero_in_one_seed_only_says_which_seed(zoo):
    result = _checked(dead_seed=1)
    (fc1,) = result.failures["linear"]
    assert fc1.step == 2 and math.isnan(fc1.slope) and not result.diverged
    assert fc1.verdict.startswith("exactly zero in its change in seed 1 (every width) but not in "
                                  "seed 0 (every width) (nothing it depends on moved there")
    detail = zoo._failed(result)
    assert detail.startswith("5 vectors have no slope, first fc1 (linear): exactly zero in its "
                             "change in seed 1 (every width)"), detail
    assert "+nan" not in detail and isinstance(zoo._slope(result.failures["linear"]), str)
