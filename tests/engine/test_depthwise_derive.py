"""A depthwise convolution ``dwconv(D, h)`` (``D : [c, kh, kw]``): each channel reads only itself,
so its kernel has one growing dim and a finite fan-in kh·kw. THEORY.md §3: a gain (a vector param
times a vector, coordinatewise) summed over finitely many shifts: init Θ(1), Adam LR Θ(1), SGD LR
∝ n, as a bias or gain, and the gradient it sends back has no sum over the channels."""

from __future__ import annotations

import pytest
from conftest import ROOT
from sympy import Rational

import tensorprog as tp

HALF = Rational(1, 2)
IN = {"sgd": (0, 0, -1), "adam": (0, 0, 0)}
HID = {"sgd": (0, HALF, 0), "adam": (0, HALF, 1)}
OUT = {"sgd": (0, 1, 1), "adam": (0, 1, 1)}
SOURCE = (ROOT / "examples" / "dwconv.tp").read_text()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_depthwise_kernel_derives_as_a_gain(optimizer):
    d = tp.derive(tp.parse(SOURCE, "dwconv.tp"), optimizer)
    got = {p: (x.a, x.b, x.c) for p, x in d.abc.items()}
    want = {"K0": IN, "D1": IN, "b1": IN, "P1": HID, "D2": IN, "P2": HID, "W": OUT}
    assert got == {p: e[optimizer] for p, e in want.items()}
    assert d.check.regime == "feature_learning" and d.check.all_maximal
    # the gradient dwconv sends back is its output's times the kernel's Θ(1) entries, no sum
    # over the channels: 1/n, as every hidden vector's under µP
    grad = d.analysis.grad_
    assert grad["h1_1"] == grad["h0"] == -1


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon"])
def test_the_same_network_with_a_gain_in_place_of_each_depthwise_kernel_derives_the_same(
        optimizer):
    gains = (SOURCE.replace("param D1 : [n, k, k]", "param D1 : [n]")
             .replace("param D2 : [n, k, k]", "param D2 : [n]")
             .replace("dwconv(D1, h0)", "D1 * h0").replace("dwconv(D2, p1)", "D2 * p1"))
    dw = tp.derive(tp.parse(SOURCE, "dwconv.tp"), optimizer).abc
    gain = tp.derive(tp.parse(gains, "gains.tp"), optimizer).abc
    assert dw == gain


DEEP = """width n = 32
depth L = 4
dim C = 3
dim S = 8
dim k = 3
dim one = 1
dim K = 10
input img : image[C, S, S]
param K0 : [n, C, k, k]
param W : [K, n]
block blk(h) {
  param D : [n, k, k]
  param P : [n, n, one, one]
  return h + P @ relu(dwconv(D, h))
}
output y = W @ global_pool(repeat L blk(relu(K0 @ img)))
"""


def test_a_depthwise_kernel_in_a_repeated_block_gets_a_gains_depth_exponents_too():
    gain = DEEP.replace("param D : [n, k, k]", "param D : [n]").replace("dwconv(D, h)", "D * h")
    dw = tp.derive(tp.parse(DEEP, "deep.tp"), "adam")
    ref = tp.derive(tp.parse(gain, "gain.tp"), "adam")
    assert dw.abc == ref.abc and dw.depth.abc == ref.depth.abc
    assert dw.eps_depth == ref.eps_depth == {"K0": 0, "W": 0, "blk.D": 1, "blk.P": 1}
