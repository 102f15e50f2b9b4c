"""apply's init at a width: µP's std reached for every param, the ones of a fixed size (a
readout's bias over a few classes) included, whose few entries at each width give no estimate of
the model's std to rescale by."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


class TwoClasses(nn.Module):
    """A readout over 2 classes: its bias has 2 entries at every width (torch's law, std
    1/sqrt(3·fan_in), which shrinks with the width; µP holds it at the base width's)."""

    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(16, n)
        self.out = nn.Linear(n, 2)

    def forward(self, idx):
        return self.out(torch.relu(self.e(idx)))


def _tokens(model):
    return (torch.zeros(2, 4, dtype=torch.long),)


@pytest.fixture(scope="module")
def mup():
    return MuP(from_torch(TwoClasses, (8, 16), _tokens), "adam")


def test_a_two_entry_readout_bias_gets_mups_std_at_every_width(mup):
    # 40 seeds at width 64: the bias's 80 entries have RMS within 25% of the base std (3
    # standard errors of a std read from 80 normal draws). Rescaled by the drawn std of its own
    # 2 entries instead, each draw was multiplied by sigma / (|b0 - b1| / sqrt 2), whose mean
    # part blew up: an RMS of 3.8x the base std over these seeds
    sigma = mup.traced.base["out.bias"][1]
    assert sigma == pytest.approx(1 / (3 * 8) ** 0.5)  # torch's law at the base width
    drawn = []
    for seed in range(40):
        torch.manual_seed(seed)
        model = TwoClasses(64)
        report = mup.apply(model)
        drawn.append(model.out.bias.detach().clone())
        mup.remove_patches(model)
    rms = float(torch.cat(drawn).pow(2).mean().sqrt())
    assert rms == pytest.approx(sigma, rel=0.25)
    assert any("out.bias: std" in line and "drawn anew at" in line for line in report.lines)


def test_the_fresh_draw_follows_torchs_seed_leaves_its_generator_and_stays_idempotent(mup):
    def applied(seed):
        torch.manual_seed(seed)
        model = TwoClasses(64)
        state = torch.get_rng_state()
        mup.apply(model)
        assert torch.equal(torch.get_rng_state(), state)
        once = model.out.bias.detach().clone()
        MuP(mup.traced, "adam").apply(model)  # again, by another MuP of the same trace
        assert torch.equal(model.out.bias, once)
        mup.remove_patches(model)
        return once

    assert torch.equal(applied(3), applied(3))
    assert not torch.equal(applied(3), applied(4))
    # a param that grows with the width keeps the model's draw, rescaled
    torch.manual_seed(0)
    model, own = TwoClasses(64), None
    own = model.out.weight.detach().clone()
    mup.apply(model)
    ratio = model.out.weight.detach() / own
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))
