"""Functions of a param used as a gain (Ergo's residual gates, examples/residual_gate.tp): the
engine derives the param a gain's exponents through them, the text form keeps the number added,
and the emitted module computes the functions of the param in its forward."""

from __future__ import annotations

import math

import pytest
from conftest import ROOT, emit_program

import tensorprog as tp
from tensorprog.emit.load import load_module

GATE = """width n = 16
dim d = 3
dim k = 2
input x : [d]
param W : [n, d]
param U : [n, n]
param w : [n] = 0
param V : [k, n]
h = W @ x
f = U @ relu(h)
r = sqrt(1 + sigmoid(w)) * exp(-0.5 * softplus(w))
output y = V @ (sigmoid(w) * f + r * h)
"""


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_gate_read_through_functions_derives_as_the_blocks_plain_gain(optimizer):
    d = tp.derive(tp.parse_file(ROOT / "examples" / "residual_gate.tp"), optimizer)
    gate, gain = d.abc["layer.w"], d.abc["layer.g"]
    assert (gate.a, gate.b, gate.c) == (gain.a, gain.b, gain.c)
    assert gate.b == 0 and gate.c == (0 if optimizer == "adam" else -1)


def test_the_number_added_survives_the_text_form():
    program = tp.parse(GATE)
    text = tp.to_text(program)
    assert "= 1 + " in text
    assert tp.to_text(tp.parse(text)) == text


def test_the_emitted_module_computes_the_gates_of_its_param():
    torch = pytest.importorskip("torch")
    module = load_module(emit_program(tp.parse(GATE)), "param_functions").Model(
        16, dtype=torch.float64)
    torch.manual_seed(0)
    with torch.no_grad():
        module.w.copy_(torch.randn(16, dtype=torch.float64) * 3)
    x = torch.randn(5, 3, dtype=torch.float64)
    h = x @ module.W.T  # table3: every multiplier 1
    f = torch.relu(h) @ module.U.T
    w = module.w
    r = torch.sqrt(1 + torch.sigmoid(w)) * torch.exp(-0.5 * torch.nn.functional.softplus(w))
    want = (torch.sigmoid(w) * f + r * h) @ module.V.T
    assert torch.allclose(module(x), want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("init", ["", " = 0"])
def test_a_gate_read_through_sigmoid_alone_has_its_init_fixed_by_the_slope(init):
    # sigmoid is Θ(1) whatever its argument, but its slope, which passes w's change on,
    # vanishes unless w is O(1): that bounds w's init, as a gain's
    gated = GATE.replace("param w : [n] = 0", f"param w : [n]{init}").replace(
        "sigmoid(w) * f + r * h", "sigmoid(w) * f")
    gated = "\n".join(line for line in gated.splitlines() if not line.startswith("r = "))
    w = tp.derive(tp.parse(gated), "adam").abc["w"]
    assert (w.a, w.b, w.c) == (0, 0, 0)


def test_sqrt_is_taken_only_above_a_positive_bound():
    with pytest.raises(tp.SemanticError, match=r"not bounded below by a positive number"):
        tp.parse(GATE.replace("sqrt(1 + sigmoid(w))", "sqrt(sigmoid(w))"))
    assert math.isfinite(tp.derive(tp.parse(GATE), "adam").abc["w"].c)
