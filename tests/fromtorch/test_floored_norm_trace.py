"""A norm whose mean square has a floor, ``x / sqrt(mean(x²).clamp(min=f))`` (Gemma 3n's AltUp
magnitudes), traced as the language's ``rmsnorm(x)``: the floor is read as the emitted norm's
eps is (1e-6 added to the mean square), equal to the model's value wherever the mean square is
far above both. Oracles: the emitted module computes, to float64 rounding, the model with each
floor replaced by that eps, and the model itself within the bound that replacement allows
(|1/sqrt(m + 1e-6) - 1/sqrt(m)| <= 1e-6 / (2m) of 1/sqrt(m)); a floor under a zero-initialised
layer's vector, a ceiling, a higher floor, a floor held in a tensor and a clamp of the inverse
root are refused at the clamp's line, an rsqrt of the RMS (no norm: x / mean(x²)^1/4) at its
own. A vector rescaled to another's RMS (Gemma 3n's AltUp, ``h * rms(x) / rms(h)``):
test_rescale_trace.py."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

EPS = 1e-6  # the emitted rmsnorm's, on the mean square


def _ms(x):
    return x.pow(2).mean(-1, keepdim=True)


#: the first norm's spelling: floored (as the model writes it) and refused ones
FIRST = {
    "floor": lambda h: h / torch.sqrt(_ms(h).clamp(min=1e-5)),
    "eps": lambda h: h * torch.rsqrt(_ms(h) + EPS),
    "ceiling": lambda h: h / torch.sqrt(_ms(h).clamp(1e-5, 10.0)),
    "high floor": lambda h: h / torch.sqrt(_ms(h).clamp(min=0.1)),
    "inverse": lambda h: h * torch.rsqrt(_ms(h)).clamp(min=1e-3),
    "tensor floor": lambda h: h * torch.rsqrt(_ms(h).clamp_min(torch.tensor(1e-5))),
    "root of root": lambda h: h * torch.rsqrt(torch.sqrt(_ms(h)).clamp(min=1e-3)),
}


class Floored(nn.Module):
    """Three norms with a floor, each spelled another way: Gemma 3n's sqrt(mean(x²).clamp(min=
    1e-5)) divided by; an rsqrt of ``clamp_min``; a floor on the RMS itself (1e-3: 1e-6 on the
    mean square). ``eps``: each one's floor replaced by the emitted norm's eps."""

    def __init__(self, n, first="floor", eps=False, zero=False):
        super().__init__()
        self.first, self.eps = ("eps" if eps else first), eps
        self.e = nn.Embedding(13, n)
        self.a, self.b, self.c = (nn.Linear(n, n, bias=False) for _ in range(3))
        self.head = nn.Linear(n, 13, bias=False)
        if zero:
            nn.init.zeros_(self.a.weight)

    def forward(self, idx):
        h = FIRST[self.first](self.a(self.e(idx)))
        g = self.b(h)
        g = g * torch.rsqrt(_ms(g) + EPS if self.eps else _ms(g).clamp_min(1e-5))
        k = self.c(g)
        k = k * torch.rsqrt(_ms(k) + EPS) if self.eps else k / torch.sqrt(_ms(k)).clamp(min=1e-3)
        return self.head(k)


def inputs(model=None):
    return (torch.arange(16).remainder(13).view(2, 8),)


def test_a_floored_mean_square_traces_as_rmsnorm_and_computes_the_model_away_from_the_floor():
    traced = from_torch(Floored, (32, 64), inputs)
    body = traced.source.split("\n")
    assert [s.split(" = ")[1] for s in body if "rmsnorm(" in s] == [
        "rmsnorm(linear)", "rmsnorm(linear_1)", "rmsnorm(linear_2)"], traced.source
    assert "clamp" not in traced.source and "cap(" not in traced.source
    # exactly the norms with the emitted eps in place of the floors
    traced_computes_the_model(traced, lambda n: Floored(n, eps=True), inputs)
    # and so the model itself, where every mean square is far above the floors and eps: each
    # norm moves by at most EPS / (2 m) of its output (m: its mean square), the next renormalises
    torch.manual_seed(3)
    model = Floored(32).double()
    twin = Floored(32, eps=True).double()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        h = model.a(model.e(inputs()[0]))
        g = model.b(h / _ms(h).sqrt())
        k = model.c(g / _ms(g).sqrt())
        low = min(_ms(v).min().item() for v in (h, g, k))
        gap = (model(*inputs()) - twin(*inputs())).abs().max().item()
    assert low > 1e-2 and 0 < gap <= 10 * EPS / (2 * low), (low, gap)


@pytest.mark.parametrize("first, zero, said", [
    ("floor", True, r"a mean square clamped to \[1e-05, inf\] of a vector that is 0 at init "
                    r"\(a\.weight is zero-initialised\)"),
    ("ceiling", False, r"a mean square clamped to \[1e-05, 10\.0\]: the language's norms"),
    pytest.param("high floor", False, r"a mean square clamped to \[0\.1, inf\]: the language's "
                 r"norms", marks=pytest.mark.slow),
    pytest.param("inverse", False, r"an inverse RMS clamped to \[0\.001, inf\]: the language's "
                 r"norms", marks=pytest.mark.slow),
    ("tensor floor", False, r"a clamp_min at a bound that is a tensor, not a number"),
    ("root of root", False, r"a piece of a norm written by hand: a power -0\.5 of an RMS"),
])
def test_a_floor_that_is_no_norms_eps_is_refused_at_the_clamp(first, zero, said):
    with pytest.raises(TensorProgError, match=r"test_floored_norm_trace.py:\d+:\d+: error: "
                       rf"cannot trace {said}"):
        from_torch(lambda n: Floored(n, first, zero=zero), (32, 64), inputs)
