"""The engine answers every program it accepts: a verdict, or a positioned refusal with a fix,
never "did not settle" and never a Python exception. Hand-derived exponents pin the fixes."""

from __future__ import annotations

import warnings

import pytest
from conftest import EXAMPLES, example_cases, skip_refused
from sympy import Rational

import tensorprog as tp
from tensorprog.cli.main import run as cli
from tensorprog.engine.exponents import ABC, INF, NEG_INF, gt
from tensorprog.engine.optimizers import ADAM, SGD
from tensorprog.engine.parametrization import preset
from tensorprog.engine.propagate import Analysis

HALF = Rational(1, 2)
REGIMES = ("feature_learning", "kernel", "unstable", "trivial")
PRESETS = [("sp", None), ("ntp", None), ("mup", None), ("mfp", None), ("sp", 1)]

# A readout-like matrix B used twice, with a finite bottleneck d between its uses: B's update is
# built from the gradient at v_1, and that gradient runs back through B's own update (ΔBᵀ·dy).
SEVEN = """width n = 128
dim d = 16
input x : [n]
param A : [d, n]
param B : [d, n]
v = A.T @ (B @ x)
output y = B @ v
"""


@pytest.fixture(scope="module")
def programs():
    return {path.stem: tp.parse_file(path) for path in EXAMPLES}


@pytest.mark.parametrize(("preset", "c"), PRESETS, ids=[f"{p}-c{c}" for p, c in PRESETS])
@pytest.mark.parametrize(("example", "optimizer"), example_cases(["adam", "sgd"], stem=True))
def test_every_example_classifies(programs, example, preset, c, optimizer):
    if preset in ("mup", "mfp"):  # derived first
        skip_refused(example, optimizer)
    result = tp.classify(programs[example], optimizer, preset=preset,
                         c=None if c is None else Rational(c))
    assert result.regime in REGIMES
    if preset in ("mup", "mfp") and c is None:  # µP and its symmetric twin are µP
        assert result.regime == "feature_learning" and result.all_maximal


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("example", [p.stem for p in EXAMPLES])
def test_every_example_derives(programs, example, optimizer):
    skip_refused(example, optimizer)
    d = tp.derive(programs[example], optimizer)
    assert d.check.regime == "feature_learning" and d.check.all_maximal


def test_seven_line_program_under_sp_by_hand():
    # SP, SGD, constant LR (c = 0): A is used only as A.T, so its fan-in is d (finite): a = b = 0,
    # S(A) = 0; B's fan-in is n: b = 1/2, S(B) = -1/2. THEORY.md §3, rule by rule:
    # init (CLT over n, nothing over d): v_1 = S(B)+1/2 = 0, v = S(A)+0 = 0, y = S(B)+1/2+0 = 0.
    # Stable caps (each update term <= 0): ΔA·v_1 = U(A) (finite sum) so V(A) = min(U(A), 0);
    # ΔB·x = ΔB·v = U(B)+1 (LLN) so V(B) = min(U(B), -1). Backward (dy = Θ(1)): through B's
    # finite fan-out d, dv = max(S(B), ΔB) = max(-1/2, F(B)); through A.T's fan-out n,
    # dv_1 = max(S(A)+1/2, ΔA+1) + dv. SGD: U(A) = dv + v_1, U(B) = max(dv_1 + x, dy + v).
    # The readout's update counts in full in the backward (TP4), at the size a first-order
    # backward gives it (every update at most V): there dv = -1/2 (V(B) = -1), dv_1 = 1/2 with
    # V(A) = 0, so F(B) = 1/2. Then dv = 1/2, dv_1 = 0+1+1/2 = 3/2, U(A) = 1/2 (so V(A) = 0
    # indeed), U(B) = 3/2. Changes: Δv_1 = ΔB·x = 3/2+1 = 5/2; Δv = A₀·Δv_1 = 5/2 (over d);
    # Δy = B₀·Δv with LLN (+1, Δv counted as built from B₀ᵀ) = -1/2+1+5/2 = 3.
    # Counting U(B) itself in the backward (the old rule) makes U(B) >= U(B) + 1: no fixed point.
    program = tp.parse(SEVEN)
    result = tp.classify(program, "sgd", preset="sp")
    an = result.analysis
    assert (result.params["A"].abc.b, result.params["B"].abc.b) == (0, HALF)
    assert (result.params["A"].role, result.params["B"].role) == ("input", "output")
    assert {v: an.init_[v] for v in ("v_1", "v", "y")} == {"v_1": 0, "v": 0, "y": 0}
    assert {v: an.change_[v] for v in ("v_1", "v", "y")} == {
        "v_1": Rational(5, 2), "v": Rational(5, 2), "y": 3}
    assert (an.U["A"], an.U["B"], an.F["B"], an.V["A"], an.V["B"]) == (
        HALF, Rational(3, 2), HALF, 0, -1)
    assert result.regime == "unstable" and result.r == Rational(-5, 2)
    assert (result.params["A"].r, result.params["B"].r) == (-HALF, Rational(-5, 2))
    assert {v.tensor for v in result.violations} == {"v_1", "v", "y"}


def test_seven_line_program_cli(tmp_path, capsys):
    path = tmp_path / "seven.tp"
    path.write_text(SEVEN)
    for optimizer in ("sgd", "adam"):
        assert cli(["classify", str(path), "--preset", "sp", "--optimizer", optimizer]) == 0
    out = capsys.readouterr().out
    assert out.count("regime: unstable") == 2 and "did not settle" not in out


def test_tied_readout_does_not_compound_in_the_backward(programs):
    # the transformer's tied E is both the embedding (fan-out n) and the unembedding (fan-out V):
    # its update, read in full through the unembedding, feeds the gradient that builds it
    result = tp.classify(programs["transformer"], "sgd", preset="sp")
    an = result.analysis
    assert result.regime == "unstable"
    assert all(x is not INF for x in an.U.values())
    assert an.F["E"] is not INF and not gt(an.F["E"], an.U["E"])


# --- termination, whatever the iteration meets -------------------------------------------------

OSCILLATES = """width n = 32
dim d = 6
dim k = 3
input x : [d]
param P0 : [n, d]
param P1 : [n]
param P2 : [k, n]
v0 = P0 @ x
v1 = P1 * v0
output y = P2 @ v1
"""
# a zero-init gain P1 whose stable update shrinks as P0's change grows: the plain iteration
# alternates U(P0) = 1, 0, 1, ... (V(P1) = -1, 0, ...), with no fixed point between
OSC_ABC = {"P0": ABC("-1", "1", "-1/2"), "P1": ABC("-1", "oo", "-1"),
           "P2": ABC("1/2", "1", "1")}


def test_an_oscillating_iteration_ends_at_a_conservative_answer():
    program = tp.parse(OSCILLATES)
    an = Analysis(program, SGD).run(OSC_ABC)
    again = an._gradients(OSC_ABC)  # what the gradients of the answer imply
    assert all(not gt(again[p], an.U[p]) for p in OSC_ABC)  # sizes at least those
    assert an.U["P0"] == 1 and an.change_["v0"] == 1
    assert tp.classify(program, "sgd", abc=OSC_ABC).regime == "unstable"


@pytest.mark.parametrize("max_rounds", [1, 2])
def test_every_phase_of_the_iteration_ends(programs, max_rounds):
    # forced past the plain rounds at once, the iteration only grows, then widens to +oo: it
    # still ends, and never below the plain fixed point
    program = programs["transformer"]
    abc = preset("sp", program, SGD)
    settled = Analysis(program, SGD).run(abc)
    forced = Analysis(program, SGD).run(abc, max_rounds=max_rounds)
    assert all(not gt(settled.U[p], forced.U[p]) for p in abc)


# --- odd programs and parametrizations ---------------------------------------------------------

HEAD = "width n = 64\ndim d = 4\ninput x : [d]\n"


def test_param_used_only_transposed_takes_its_fan_in_from_the_use():
    program = tp.parse(HEAD + "param A : [d, n]\nparam R : [d, n]\nh = relu(A.T @ x)\n"
                       "output y = R @ h\n")
    result = tp.classify(program, "sgd", preset="sp", c=Rational(1))
    assert result.params["A"].role == "input" and result.params["A"].abc.b == 0
    assert result.analysis.init_["h"] == 0 and result.regime == "kernel"
    d = tp.derive(program, "adam")
    assert d.check.regime == "feature_learning"


@pytest.mark.parametrize("body", [
    "param W : [n, d]\noutput x2 = x\n",  # an output that is an input
    "param W : [n, d]\nparam R : [d, n]\nh = relu(W @ x)\nz = R @ h\noutput y = relu(x)\n",
    "param W : [d, d]\noutput y = W @ x\n",  # no infinite dim anywhere
])
def test_an_output_no_width_reaches_is_refused_by_both_commands(body):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)  # the unused params
        program = tp.parse(HEAD + body)
        for run in (lambda: tp.classify(program, "sgd", preset="sp"),
                    lambda: tp.derive(program, "adam")):
            with pytest.raises(tp.EngineError, match=r"nothing to scale(.|\n)*help: give a "
                                                     r"hidden layer a dim of n"):
                run()


def test_a_param_that_reaches_no_output_is_left_out_with_a_warning():
    program = tp.parse(HEAD + "param W : [n, d]\nparam Z : [n, n]\nparam R : [d, n]\n"
                       "h = relu(W @ x)\ndead = Z @ h\noutput y = R @ h\n")
    with pytest.warns(tp.TensorProgWarning, match="'Z' does not reach any output"):
        result = tp.classify(program, "adam", preset="mup")
    assert "Z" not in result.params and result.regime == "feature_learning"


MLP = HEAD + ("param W : [n, d]\nparam M : [n, n]\nparam b : [n]\nparam R : [d, n]\n"
              "h = relu(W @ x + b)\ng = relu(M @ h)\noutput y = R @ g\n")


@pytest.mark.parametrize("optimizer", [SGD, ADAM])
@pytest.mark.parametrize("c", ["oo", "0"])
def test_zero_init_everywhere_never_moves(optimizer, c):
    # every weight zero: every vector and every gradient is exactly 0, so even Adam (whose step
    # ignores the gradient's scale) takes no step
    program = tp.parse(MLP)
    abc = {p: ABC("0", "oo", c) for p in ("W", "M", "b", "R")}
    result = tp.classify(program, optimizer.name, abc=abc)
    an = result.analysis
    assert all(an.init_[v] is NEG_INF and an.change_[v] is NEG_INF for v in ("h", "g", "y"))
    assert all(u is NEG_INF for u in an.U.values())
    assert result.regime == "trivial" and result.stable


def test_negative_and_odd_exponents_get_an_answer():
    program = tp.parse(MLP)
    abc = {"W": ABC("-3", "-5/2", "-7"), "M": ABC("100", "-100", "1/1000"),
           "b": ABC("-1/3", "oo", "-9/4"), "R": ABC("1/2", "oo", "0")}
    for optimizer in ("sgd", "adam"):
        result = tp.classify(program, optimizer, abc=abc)
        assert result.regime == "unstable"
        assert all(v.exponent.is_Rational for v in result.violations)


# --- engine errors and warnings -------------------------------------------------------------------


DECLS = ("width n = 8\ndim d = 3\ndim k = 2\ninput x : [d]\nparam W : [n, d]\nparam V : [k, n]\n"
         "param b : [n]\n")  # 7 lines; the bad line below is line 8


def test_a_matrix_tied_in_a_circle_is_a_positioned_engine_error():
    program = tp.parse("width n = 8\ndim d = 3\ninput x : [d]\nparam W : [n, d]\n"
                       "output y = W.T @ (W @ x)\n", "bad.tp")
    with pytest.raises(tp.EngineError, match="no single condition fixes the init and update of W"
                       ) as info:
        tp.derive(program)
    assert info.value.render().startswith("bad.tp:4:1: error: ")


def test_param_reaching_no_output_is_a_warning():
    src = DECLS + "param U : [n, d]\nh = W @ x + b\ndead = U @ x\noutput y = V @ h\n"
    program = tp.parse(src, "dead.tp")
    with pytest.warns(tp.TensorProgWarning, match=r"'U' does not reach any output"):
        d = tp.derive(program, "adam")
    assert "U" not in d.abc
