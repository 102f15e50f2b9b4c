"""relu6 takes the rule of a bounded function (tensorprog/ir/functions.py: relu near 0, capped
at 6): under SP with SGD, the change of relu6's output stays Θ(1) where the hidden preactivation
blows up as n, exactly as tanh's does, where relu passes the growth on (Θ(n))."""

from __future__ import annotations

import tensorprog as tp

MLP = """width n = 8
dim D = 4
dim K = 3
input x : [D]
param A : [n, D]
param B : [n, n]
param C : [K, n]
h = FN(A @ x)
output y = C @ FN(B @ h)
"""


def _sizes(fn: str) -> dict:
    return tp.classify(tp.parse(MLP.replace("FN", fn)), "sgd", preset="sp").as_dict()["vectors"]


def test_relu6_caps_a_growing_change_as_tanh_does_and_relu_does_not():
    relu6, tanh, relu = _sizes("relu6"), _sizes("tanh"), _sizes("relu")
    assert relu6 == tanh
    assert relu6["y_1"]["update"] == relu["y_1"]["update"] == "1"  # B @ h blows up as n
    assert relu6["y_2"]["update"] == "0" and relu["y_2"]["update"] == "1"  # FN(B @ h)
