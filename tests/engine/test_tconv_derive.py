"""A depthwise convolution over the tokens ``tconv(D, h, p)`` (``D : [c, one, K]``): each
channel reads only its own K token shifts, so its kernel has one growing dim and a finite fan-in
K. THEORY.md §3: a gain (a vector param times a vector, coordinatewise) summed over finitely
many shifts: init Θ(1), Adam LR Θ(1), SGD LR ∝ n, and no sum over the channels in the gradient
it sends back (examples/short_conv.tp). The emitted helper is checked against the definition,
y_t = Σ_k D[c, 0, k] h_{t-p+k}, for every p."""

from __future__ import annotations

import pytest
from conftest import ROOT
from sympy import Rational

import tensorprog as tp
from tensorprog.emit.templates import HELPERS

HALF = Rational(1, 2)
IN = {"sgd": (0, 0, -1), "adam": (0, 0, 0)}
HID = {"sgd": (0, HALF, 0), "adam": (0, HALF, 1)}
OUT = {"sgd": (0, 1, 1), "adam": (0, 1, 1)}
SOURCE = (ROOT / "examples" / "short_conv.tp").read_text()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_kernel_over_the_tokens_derives_as_a_gain(optimizer):
    d = tp.derive(tp.parse(SOURCE, "short_conv.tp"), optimizer)
    got = {p: (x.a, x.b, x.c) for p, x in d.abc.items()}
    want = {"E": IN, "g": IN, "Wb": HID, "Wc": HID, "Wx": HID, "D": IN, "Wo": HID, "U": OUT}
    assert got == {p: e[optimizer] for p, e in want.items()}
    assert d.check.regime == "feature_learning" and d.check.all_maximal
    # the gradient tconv sends back is its output's times the kernel's Θ(1) entries, no sum
    # over the channels: 1/n, as every hidden vector's under µP
    assert all(g == -1 for v, g in d.analysis.grad_.items() if v not in ("y", "tok"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon"])
def test_the_same_block_with_a_gain_in_place_of_the_kernel_derives_the_same(optimizer):
    gain = (SOURCE.replace("param D : [n, one, K]", "param D : [n]")
            .replace("tconv(D, (Wb @ u) * (Wx @ u))", "D * ((Wb @ u) * (Wx @ u))"))
    assert "D * ((Wb @ u)" in gain and "param D : [n]" in gain
    conv = tp.derive(tp.parse(SOURCE, "short_conv.tp"), optimizer).abc
    assert conv == tp.derive(tp.parse(gain, "gain.tp"), optimizer).abc


def test_the_emitted_tconv_is_the_convolution_it_stands_for():
    torch = pytest.importorskip("torch")
    space: dict = {"torch": torch}
    exec("\n".join(HELPERS["_tconv"]), space)  # noqa: S102 - the emitter's own helper
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)  # (batch, tokens, channels)
    kernel = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    for p in range(3):
        want = torch.zeros_like(x)
        for t in range(6):
            for k in range(3):
                if 0 <= t - p + k < 6:
                    want[:, t] += kernel[:, 0, k] * x[:, t - p + k]
        assert torch.allclose(space["_tconv"](x, kernel, p), want, atol=1e-12), p
