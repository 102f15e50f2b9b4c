"""A clamp at constant bounds traced (gpt-oss's and MiniMax's clamped SwiGLU): named from the
op, since on the values [-4, 4] by which a chain of coordinatewise ops is identified a clamp at 7
is the identity (whose rule would pass on a growth the clamp caps: a silent wrong answer).
``x.clamp(-c, c)`` is the language's ``c * hardtanh(x / c)``, ``x.clamp(max=c)`` its
``c * cap(x / c)``, cap(t) = min(t, 1), and ``(up + 1) * glu`` the distributed
``up * glu + 1 * glu``. Oracles: the traced program says so and derives what the same program
written by hand derives; the emitted module computes the model's clamps and trains; apply is
bit-identical at the base; hardtanh takes a bounded function's rule and cap a linear one's. A
floor on a norm's mean square (Gemma 3n's) is a norm's: test_floored_norm_trace.py."""

from __future__ import annotations

import pytest
from conftest import (
    apply_is_bit_identical_at_base,
    emit_program,
    traced_computes_the_model,
    train_once,
)

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402


class Net(nn.Module):
    """gpt-oss's MLP: gate clamped above, up clamped both ways, (up + 1) * gate·σ(α gate)."""

    def __init__(self, width, limit=0.5, alpha=1.702):
        super().__init__()
        self.limit, self.alpha = limit, alpha
        self.a = nn.Linear(4, width)
        self.gate_up = nn.Linear(width, 2 * width)
        self.c = nn.Linear(width, 3)

    def forward(self, x):
        gate, up = self.gate_up(self.a(x)).chunk(2, dim=-1)
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        return self.c((up + 1) * glu)


def inputs(model=None):
    return (4 * torch.randn(2, 4, generator=torch.Generator().manual_seed(0)),)


HAND = """width n = 8
dim D = 4
dim K = 3
input x : [D]
param A : [n, D]
param a : [n]
param G : [n, n]
param g : [n]
param U : [n, n]
param u : [n]
param C : [K, n]
param c : [K]
h = A @ x + a
gate = 0.5 * cap((G @ h + g) / 0.5)
up = 0.5 * hardtanh((U @ h + u) / 0.5)
glu = 0.587544066 * silu(gate / 0.587544066)
output y = C @ (up * glu + 1.0 * glu) + c
"""
NAMES = {"a_weight": "A", "a_bias": "a", "c_weight": "C", "c_bias": "c"}


def test_clamps_trace_by_name_and_derive_as_written():
    traced = tp.from_torch(Net, (8, 16), inputs)
    src = traced.source
    assert "cap(" in src and "hardtanh(" in src and " + 1.0 * " in src, src
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(HAND, "hand.tp"), optimizer).abc
        assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}
        assert got["gate_up_weight_part0"] == want["G"]
        assert got["gate_up_weight_part1"] == want["U"]
    emitted = emit_program(traced.program)
    assert "torch.clamp(" in emitted.source and "torch.nn.functional.hardtanh(" in emitted.source
    model, _ = train_once(load_module(emitted, "clamp_net"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    apply_is_bit_identical_at_base(traced, Net, inputs)


def test_the_table_computes_the_clamps_exactly():
    from tensorprog.ir.functions import torch_function

    t = torch.linspace(-9, 9, 181, dtype=torch.float64)
    for c in (7.0, -3.0):
        want = t.clamp(max=c) if c > 0 else t.clamp(min=c)
        assert torch.allclose(c * torch_function(torch, "cap")(t / c), want, rtol=1e-15)
    assert torch.allclose(7.0 * torch_function(torch, "hardtanh")(t / 7.0), t.clamp(-7.0, 7.0),
                          rtol=1e-15)
    for c in (0.05, -3.0):  # atleast(t) = max(t, 1): a clamp from below at c > 0
        want = t.clamp(min=c) if c > 0 else t.clamp(max=c)
        assert torch.allclose(c * torch_function(torch, "atleast")(t / c), want, rtol=1e-15)


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


def test_hardtanh_caps_a_growing_change_and_cap_passes_it_on():
    # under SP with SGD the preactivation B @ h changes as n: a clamp on both sides keeps its
    # output's change Θ(1) as tanh does; one capped above alone passes it on as relu does
    assert _sizes("hardtanh") == _sizes("tanh")
    assert _sizes("cap") == _sizes("relu")
    assert _sizes("cap")["y_2"]["update"] == "1"
    # max(x, 1): Θ(1) of a vanishing input, a growth passed on, softplus's class
    assert _sizes("atleast") == _sizes("softplus")
    assert _sizes("atleast")["y_2"]["update"] == "1"


class Unbounded(nn.Module):
    """A clamp with infinite bounds: (lo, hi) as the forward passes them."""

    def __init__(self, width, lo=None, hi=None):
        super().__init__()
        self.lo, self.hi = lo, hi
        self.a, self.up, self.c = nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.up(self.a(x)).clamp(self.lo, self.hi)))


@pytest.mark.parametrize(("lo", "hi", "fn"), [
    (None, float("inf"), None), (float("-inf"), float("inf"), None), (0.0, float("inf"), "relu"),
    (float("-inf"), 0.5, "cap")])
def test_an_infinite_bound_is_no_bound(lo, hi, fn):
    # it had been written into the program, inf * cap(x / inf): no program (inf undefined)
    def build(n):
        return Unbounded(n, lo, hi)

    traced = tp.from_torch(build, (16, 32), inputs)
    assert "inf" not in traced.source
    assert (fn is None) == (f"{fn}(" not in traced.source), traced.source
    traced_computes_the_model(traced, build, inputs)

