"""Beyond the MLP: each structure must come out right from composing the rules, no special case.

Expected values are worked out by hand from TP4 §3's rules (and agree with TP5 Table 3's roles).
"""

from __future__ import annotations

import pytest
from conftest import ROOT
from sympy import Rational

import tensorprog as tp

HALF = Rational(1, 2)
IN = {"sgd": (0, 0, -1), "adam": (0, 0, 0)}
HID = {"sgd": (0, HALF, 0), "adam": (0, HALF, 1)}
OUT = {"sgd": (0, 1, 1), "adam": (0, 1, 1)}

CASES = {
    # product of two branches: silu(Wa x1) * (Wb x1) is Θ(1), both weights hidden
    "gated_mlp.tp": {"W0": IN, "Wa": HID, "Wb": HID, "Wo": OUT},
    # width -> 2·width: d_ff = 2n is infinite, so Wup/Wdown are hidden and Wo an output weight
    "mlp_expand.tp": {"W0": IN, "Wup": HID, "Wdown": HID, "Wo": OUT},
    # weights reused across time steps
    "rnn.tp": {"U": IN, "W": HID, "b": IN, "Wo": OUT},
    # residual sums and a gain
    "mlp_resnet.tp": {"Win": IN, "W1": HID, "W2": HID, "g": IN, "Wo": OUT},
    # a dot readout with a trained vector
    "dot_readout.tp": {"W1": IN, "W2": HID, "v": OUT},
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_structures_derive_as_expected(name, optimizer):
    d = tp.derive(tp.parse_file(ROOT / "examples" / name), optimizer)
    got = {p: (x.a, x.b, x.c) for p, x in d.abc.items()}
    assert got == {p: exp[optimizer] for p, exp in CASES[name].items()}
    assert d.check.regime == "feature_learning" and d.check.all_maximal


def test_every_vector_is_order_one_and_moves():
    d = tp.derive(tp.parse_file(ROOT / "examples" / "mlp_resnet.tp"), "adam")
    an = d.check.analysis
    for ins in d.program.body:
        if d.program.is_infinite(ins.out):
            assert (an.init_[ins.out], an.change_[ins.out]) == (0, 0), ins.out
    assert an.init_["y"] == -HALF and an.change_["y"] == 0  # feature learning forces f_0 -> 0


def test_dot_readout_in_mup_convention_gets_the_output_multiplier():
    d = tp.derive(tp.parse_file(ROOT / "examples" / "dot_readout.tp"), "adam", "mup")
    assert (d.abc["v"].a, d.abc["v"].b, d.abc["v"].c) == (1, 0, 0)


def test_dot_of_two_independent_hidden_vectors_is_clt_at_init_and_lln_after():
    src = """
width n = 64
dim d = 8
input x : [d]
param Wq : [n, d]
param Wk : [n, d]
q = Wq @ x
k = Wk @ x
output s = dot(q, k)
"""
    result = tp.classify(tp.parse(src), "adam", abc={
        "Wq": tp.ABC(Rational(0), Rational(0), Rational(0)),
        "Wk": tp.ABC(Rational(0), Rational(0), Rational(0))})
    an = result.analysis
    assert an.init_["s"] == HALF  # independent, centred: a √n sum
    assert an.change_["s"] == 1  # correlated after training: an n sum
    assert not result.stable


def test_unfixable_program_is_an_engine_error_naming_the_tensor():
    src = """
width n = 64
dim d = 8
input x : [d]
param W : [n, d]
h = relu(W @ x)
output s = dot(h, h)
"""
    with pytest.raises(tp.EngineError, match=r"s blows up at init as n"):
        tp.derive(tp.parse(src), "adam")


def test_finite_bottleneck_is_reported_not_silently_wrong():
    src = """
width n = 64
dim d = 8
dim k = 3
input x : [d]
param W1 : [n, d]
param Wa : [k, n]
param Wb : [n, k]
param Wo : [k, n]
x1 = relu(W1 @ x)
z = Wa @ x1
x2 = relu(Wb @ z)
output y = Wo @ x2
"""
    with pytest.raises(tp.EngineError, match=r"z = Wa @ x1 narrows the width to the finite dim k "
                       r"inside the network(.|\n)*computed from it \(x2_1, x2\)") as err:
        tp.derive(tp.parse(src), "adam")
    # the refusal points at the matmul that narrows the width (what vanishes after it is named)
    spans = [(d.span.line, d.span.column) for d in err.value.diagnostics if d.span]
    assert spans == [(11, 1)]  # z = Wa @ x1


# --- convolutions -------------------------------------------------------------------------------

def test_resnet_kernels_take_the_roles_of_their_channel_fans():
    """A kernel [out, in, k, k] is a matmul over in·k·k: the stem (3 input channels) is an input
    weight, the block kernels hidden, the readout after the global pool an output weight."""
    for optimizer in ("sgd", "adam"):
        d = tp.derive(tp.parse_file(ROOT / "examples" / "resnet.tp"), optimizer)
        got = {p: (x.a, x.b, x.c) for p, x in d.abc.items()}
        assert got == {"K0": IN[optimizer], "b0": IN[optimizer], "K1": HID[optimizer],
                       "K2": HID[optimizer], "K3": HID[optimizer], "K4": HID[optimizer],
                       "W": OUT[optimizer]}


def test_images_keep_their_spatial_size_through_pools():
    program = tp.parse_file(ROOT / "examples" / "resnet.tp")
    assert program.spatial["h1"] == (32, 32)
    assert program.spatial["p1"] == (16, 16)
    assert program.spatial["y_1"] is None  # the global pool
    assert tp.parse(tp.to_text(program)) == program
