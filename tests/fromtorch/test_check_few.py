"""coord_check's vectors of few entries (fromtorch/few.py): a 2-class readout at batch 1 is
2 numbers per width and seed, whose RMS is too noisy for a slope over 2 seeds. Where such a
vector fails it is measured again over more seeds and judged on its RMS pooled over them: a
µP readout that failed by its noise passes, a readout that really grows still fails."""

import math

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402
from tensorprog.fromtorch.few import rejudge, remeasure, slope_noise  # noqa: E402
from tensorprog.numerics.judge import CheckResult, Expectation, Measurements, TensorResult  # noqa: E402,E501

WIDTHS = (64, 128, 256)


class Net(nn.Module):
    """An MLP on 16 floats with a 2-class readout, every weight at HF's std 0.02."""

    def __init__(self, n):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, n), nn.Linear(n, n), nn.Linear(n, 2)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.dim() == 2 else nn.init.zeros_(p)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def mup():
    return MuP(from_torch(Net, (32, 64), lambda m: (torch.zeros(2, 16),)), "adam")


def test_slope_noise_is_the_chi_square_spread_of_a_few_numbers():
    # 2 entries, 1 seed, widths 256..1024: the log RMS of 2 numbers spreads by 1/2, the slope
    # by 1/2 / sqrt(2 ln(2)^2) = 0.51; measured on BEiT's 2-class classifier over 32 seeds
    # (docs/check.md): 0.45 to 0.49 for the log RMS, 0.45 for the slope
    assert slope_noise(2, 1, (256, 512, 1024)) == pytest.approx(0.51, abs=0.005)
    assert slope_noise(8, 4, (256, 512, 1024)) == pytest.approx(0.51 / 4, abs=0.005)


def test_a_noisy_readout_of_two_entries_passes_on_more_seeds(mup):
    # batch 1: the readout is 2 numbers. Under µP its init scales as n^-1/2 (64 seeds of this
    # model: mean slope -0.54), but seeds 1 and 50 read +0.64 and +0.58 at init, a failure of
    # the 2-seed mean (+0.61) past ±0.4; 15 seeds bring the slope's noise to 0.13, and pooled
    # over them the readout passes
    result = coord_check(mup, WIDTHS, steps=2, seeds=(1, 50), batch=1, tolerance=0.4)
    head = next(r for r in result.results if r.step == 0 and result.where(r.name) != r.name
                and "head" in result.where(r.name))
    assert result.passed, result
    assert head.name in result.remeasured and result.settings["remeasured_seeds"] == 15
    assert "re-measured over 15 seeds, 2 entries each" in head.verdict
    assert "where 2 seeds read +0.61" in head.verdict and head.slope < 0


def _fake(rms_of_width, seeds, entries=2):
    """A check of one vector (init, expected O(1)) whose RMS at width w and seed s is
    ``rms_of_width(w, s)``, and its measurements."""
    m = Measurements()
    for s in seeds:
        for w in WIDTHS:
            m.record(w, 0, {"out": torch.full((entries,), rms_of_width(w, s))}, s)
    r = TensorResult("out", 0, 0.5, 0.0, {}, Expectation(0, "at_most"), True, False, "blows up")
    return CheckResult([r], 0.25, "mup", list(WIDTHS), list(seeds), 2), m


def test_a_readout_that_grows_still_fails_pooled_over_more_seeds():
    # a readout growing as n^+1/2 (no µP rescaling), with the noise of 2 entries: pooled over
    # 32 seeds its slope stays near +0.5 and it fails; the verdict says what was done
    noise = torch.Generator().manual_seed(0)

    def grows(w, s):
        return math.sqrt(w) * float(torch.randn((), generator=noise).abs() + 0.1)

    result, m = _fake(grows, (0, 1))
    seeds, steps = remeasure(result, m)
    assert (seeds, steps) == (tuple(range(2, 32)), 0)  # at init alone, to 32 seeds in all
    extra = _fake(grows, seeds)[1]
    rejudge(result, m, extra, steps)
    (r,) = result.results
    assert not r.ok and r.slope > 0.35 and "re-measured over 32 seeds" in r.verdict
    assert r.verdict.startswith("blows up at init")


def test_a_vector_of_many_entries_is_not_remeasured():
    result, m = _fake(lambda w, s: w ** 0.5, (0, 1), entries=64)
    assert remeasure(result, m) is None


def test_a_nan_in_a_rejudged_vector_fails_it_saying_where():
    # before: a run with an inf or nan RMS left the vector as the check's own seeds judged it
    result, m = _fake(lambda w, s: 1.0, (0, 1))
    result.results[0].ok = True
    extra = _fake(lambda w, s: math.nan if (w, s) == (128, 5) else 1.0, (2, 3, 4, 5))[1]
    rejudge(result, m, extra, 0)
    (r,) = result.results
    assert not r.ok and "re-measured over 6 seeds, not judged on them: its RMS is inf or nan " \
        "at width 128, seed 5" in r.verdict, r.verdict


def _trained(seeds, change):
    """Measurements of one vector "out", RMS 1 at init and ``change(w, s, t)`` after step t."""
    m = Measurements()
    m.entries["out"] = 2
    for s in seeds:
        for w in WIDTHS:
            for t in range(4):
                m.rms[("out", t, w, s)] = 1.0 if t == 0 else change(w, s, t)
    return m


def test_added_seeds_whose_runs_diverge_or_blow_up_fail_the_check_saying_which(mup):
    # before: the added seeds' runs were pooled into the slope whatever they did
    from tensorprog import derive
    from tensorprog.fromtorch.few import judge_runs

    def change(w, s, t):
        if (s, w, t) == (4, 128, 2):
            return math.inf  # seed 4 overflows at step 2
        return 100.0 if (s, w, t) == (3, 256, 3) else 0.1 * t  # seed 3 grows x500 at step 3

    result, m = _fake(lambda w, s: 1.0, (0, 1))
    result.results[0].ok = True
    extra = _trained((2, 3, 4), change)
    optimizer = mup.derivation.optimizer
    broken = judge_runs(result, extra, 3, mup.program, optimizer,
                        derive(mup.program, optimizer).abc)
    assert sorted(broken) == [3, 4] and not result.passed
    assert [(w, s, t) for _, w, s, t, _ in result.diverged] == [(128, 4, 2)]
    assert ("out", 256, 3, pytest.approx(500.0)) in result.unstable
    rejudge(result, m, extra, 3, broken)
    (r,) = result.results
    assert not r.ok and "not judged on them: seed 3's run: the change of out grew x500.0 from " \
        "step 2 to 3 at width 256" in r.verdict, r.verdict
