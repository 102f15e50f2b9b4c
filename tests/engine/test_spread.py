"""One number per head over its head's coordinates (``spread(g, dh)``, examples/head_gate.tp):
as large as g and changing as g does, its gradient summing the head's dh coordinates (an LLN
sum over a growing dh, a finite one over a fixed dh); and softplus, the "shifted" class
(φ(0) ≠ 0 as sigmoid, unbounded as relu)."""

from fractions import Fraction

import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.exponents import ABC
from tensorprog.errors import EngineError, SemanticError

HALF = Fraction(1, 2)


def _program(dh: str, heads: str) -> tp.Program:
    text = (ROOT / "examples" / "head_gate.tp").read_text()
    text = text.replace("dim H = 4 ", f"dim H = {heads} ").replace("dim dh = n / 4 ",
                                                                 f"dim dh = {dh} ")
    return tp.parse(text)


def _abc(program, optimizer, name):
    d = tp.derive(program, optimizer)
    return d.abc[name].a, d.abc[name].b, d.abc[name].c, d.eps.get(name)


def test_a_gate_of_finitely_many_heads_over_a_growing_head_dim_is_a_readout():
    program = _program("n / 4", "4")
    # n -> H: a finite fan-out whose gradient sums dh ∝ n coordinates (LLN): Θ(1), an output's
    assert _abc(program, "adam", "Wg") == (0, 1, 1, 0)
    assert _abc(program, "adam", "bb") == (0, 0, 0, 0)
    # the per-head bias sums its gradient over dh ∝ n coordinates: SGD's LR Θ(1), not n
    assert _abc(program, "sgd", "bb")[2] == 0
    assert _abc(program, "sgd", "Wg")[:3] == (0, 1, 1)


def test_a_gate_over_a_fixed_head_dim_sums_finitely_many_coordinates():
    program = _program("16", "n / 16")
    # n -> n/16: both dims grow and the gradient sums 16 coordinates (+0): a hidden weight
    assert _abc(program, "adam", "Wg") == (0, HALF, 1, 1)
    # a bias of n/16 entries whose gradient is Θ(1/n), as any bias's: SGD's LR ∝ n
    assert _abc(program, "sgd", "bb")[2] == -1
    assert _abc(program, "adam", "bb") == (0, 0, 0, 1)


def _gated_by(fn: str) -> tp.Program:
    return tp.parse((ROOT / "examples" / "head_gate.tp").read_text().replace(
        "softplus(Wg @ h)", f"{fn}(Wg @ h)"))


@pytest.mark.parametrize("fn", ["softplus", "sigmoid"])
def test_softplus_of_a_vanishing_input_is_order_one_as_sigmoid_is(fn):
    # Wg @ h is a readout, Θ(n^-1/2) at init: softplus(0) = log 2 keeps the gate Θ(1)
    program = _gated_by(fn)
    analysis = tp.derive(program, "adam").analysis
    gate = next(ins.out for ins in program.body if getattr(ins, "fn", None) == fn
                and ins.out.startswith("laguna"))
    assert analysis.init_[gate] == 0


def test_relu_of_a_vanishing_input_vanishes_and_is_refused():
    with pytest.raises(EngineError, match="vanishes at init as 1/√n"):
        tp.derive(_gated_by("relu"), "adam")


@pytest.mark.parametrize(("fn", "size"), [("softplus", HALF), ("relu", HALF), ("sigmoid", 0)])
def test_softplus_of_a_growing_input_grows_as_relu_does(fn, size):
    # W2 at a = b = 0 (SP's init without 1/√n): W2 @ relu(W1 @ x) grows as √n; softplus is
    # unbounded and passes it on (and its change), where sigmoid saturates
    program = tp.parse(f"""width n = 64
dim d = 8
dim k = 3
input x : [d]
param W1 : [n, d]
param W2 : [n, n]
param W3 : [k, n]
output y = W3 @ {fn}(W2 @ relu(W1 @ x))
""")
    abc = {"W1": ABC(0, 0, 0), "W2": ABC(0, 0, 0), "W3": ABC(0, 1, 0)}
    an = tp.classify(program, "adam", abc=abc).analysis
    assert (an.init_["y_4"], an.change_["y_4"]) == (size, 2 * size)


@pytest.mark.parametrize(("line", "match"), [
    ("o * spread(Wg @ h, H)", "no declared dim has"),
    ("o * spread(Wg @ h, n)", "both grow|no declared dim"),
    ("o * spread(Wg @ h, 3)", "second argument of spread must be a declared dim"),
    ("o * spread(Wg @ h)", "spread takes 2 arguments"),
    ("o * spread(dot(Wq @ h, Wk @ h), dh)", "one entry per head, got a scalar"),
])
def test_a_spread_that_does_not_fit_is_refused_where_it_is_written(line, match):
    text = (ROOT / "examples" / "head_gate.tp").read_text().replace(
        "o * spread(softplus(Wg @ h), dh)", line)
    with pytest.raises(SemanticError, match=match):
        tp.parse(text)
