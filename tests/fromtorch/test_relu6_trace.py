"""ReLU6 traced: ``nn.ReLU6`` (torch's hardtanh(x, 0, 6)) and ``F.relu6`` are the language's
``relu6``, named from the op, since on the values [-4, 4] by which a chain of coordinatewise ops
is identified relu6 is relu (and a relu where the model caps at 6 would be derived as unbounded:
a silent wrong answer). Oracles: the traced program says relu6 where the model does, derives
what the same program written by hand derives, its emitted module calls torch's relu6 and
trains, and apply is bit-identical at the base; another clamp is refused in the error
catalogue (CONV_BUILDS, clamp)."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base, emit_program, train_once

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, 3)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.c(F.relu6(self.b(self.act(2 * self.a(x)))))


def inputs(model=None):
    return (4 * torch.randn(2, 4, generator=torch.Generator().manual_seed(0)),)


HAND = """width n = 8
dim D = 4
dim K = 3
input x : [D]
param A : [n, D]
param a : [n]
param B : [n, n]
param b : [n]
param C : [K, n]
param c : [K]
h = relu6(2 * (A @ x + a))
output y = C @ relu6(B @ h + b) + c
"""
NAMES = {"a_weight": "A", "a_bias": "a", "b_weight": "B", "b_bias": "b", "c_weight": "C",
         "c_bias": "c"}


def test_relu6_traces_by_name_and_derives_as_written():
    traced = tp.from_torch(Net, (8, 16), inputs)
    src = traced.source
    assert src.count("= relu6(") == 2 and "relu(" not in src
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(HAND, "hand.tp"), optimizer).abc
        assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}
    emitted = emit_program(traced.program)
    assert "torch.nn.functional.relu6(" in emitted.source
    model, _ = train_once(load_module(emitted, "relu6_net"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    apply_is_bit_identical_at_base(traced, Net, inputs)
