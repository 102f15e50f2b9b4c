"""What the engine derives for Mamba-2's state-space mixing (``ssd``; examples/ssd.tp, its groups
growing with the heads), against a hand oracle from its rules (docs/theory.md, "State-space
mixing"):

* in_proj's x, z, C, B and dt parts (n -> di, n -> H with H = n/8 heads) and out_proj are
  hidden weights: (a, b, c) = (0, 1/2, 1) under Adam, (0, 1/2, 0) under SGD and Muon. C and B
  are Θ(1), cb a finite sum over N = 16 per group, so P₀ is Θ(1), and dcb is dP of its group's
  one head, Θ(1/n) (dP_ts = Σ over P = 16 of dy·x): nothing vanishes, nothing is forced;
* dt's bias, A's log and D (one per head, H ∝ n), the norms' gains: biases, (0, 0, 0) under
  Adam and Muon; under SGD their gradient is Θ(1/n) (dt's and A's: dP times Θ(1) over finitely
  many token pairs; D's: a finite sum over P), so c = -1.

With a fixed number of groups (C and B of N = 8, a finite dim) C's and B's layers have a finite
fan-out, so they must be readouts, (0, 1, 1), and cb₀, P₀ vanish as n^-1: derive refuses it
under every optimizer, at the ssd call; classify of that µP-like parametrization reports P and
the mixing P x as forced to vanish, not as violations.
"""

import re

import numpy as np
import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.classify import classify
from tensorprog.engine.exponents import ABC
from tensorprog.engine.optimizers import ADAM, SGD
from tensorprog.errors import EngineError
from tensorprog.limits.nngp import nngp_kernel

TEXT = (ROOT / "examples" / "ssd.tp").read_text()
FIXED = re.sub(r"dim N = 16 .*", "dim N = 8", TEXT).replace("WB : [di, n]", "WB : [N, n]").replace(
    "WC : [di, n]", "WC : [N, n]")  # one group: C and B of N = 8
HIDDEN = ("Wx", "Wz", "WB", "WC", "Wdt", "Wo")
BIASES = ("g", "bdt", "Alog", "D", "gn")


def oracle(optimizer: str, readouts: tuple[str, ...] = ()) -> dict[str, ABC]:
    """µP by hand; ``readouts``: block params initialised and trained as readouts instead."""
    c_hidden, c_bias = {"adam": (1, 0), "muon": (0, 0), "sgd": (0, -1)}[optimizer]
    want = {"E": ABC(0, 0, c_bias), "U": ABC(0, 1, 1), "gf": ABC(0, 0, c_bias)}
    want.update({f"mamba.{p}": ABC(0, "1/2", c_hidden) for p in HIDDEN})
    want.update({f"mamba.{p}": ABC(0, 1, 1) for p in readouts})
    want.update({f"mamba.{p}": ABC(0, 0, c_bias) for p in BIASES})
    return want


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_steps_clamped_from_below_derive_the_same(optimizer):
    # Zamba2's time_step_limit (0.001, inf): dt = max(softplus(·), lo) = lo * atleast(· / lo),
    # softplus's class (Θ(1), a change passed through), so every param derives as unclamped
    old = "dt = softplus(Wdt @ a + bdt)"
    clamped = TEXT.replace(old, "dt = 0.001 * atleast(softplus(Wdt @ a + bdt) / 0.001)")
    assert clamped != TEXT
    assert tp.derive(tp.parse(clamped), optimizer).abc == oracle(optimizer)


@pytest.mark.parametrize("optimizer", ["adam", "muon", "sgd"])
def test_the_example_derives_the_hand_oracle(optimizer):
    d = tp.derive(tp.parse(TEXT), optimizer)
    assert d.abc == oracle(optimizer)
    assert not d.check.notes and not d.check.violations
    outputs = set(d.program.outputs)
    assert all(d.analysis.init_[i.out] == 0 for i in d.program.body if i.out not in outputs)
    ssd = next(i for i in d.program.body if getattr(i, "fn", None) == "ssd")
    mixed = next(i.out for i in d.program.body if getattr(i, "weights", 0) == ssd.out)
    an = d.analysis
    assert (an.init_[ssd.args[0]], an.init_[ssd.out], an.init_[mixed]) == (0, 0, 0)
    assert an.change_[ssd.out] == an.change_[mixed] == 0
    assert an.grad(ssd.args[0]) == -1  # dP of the group's one head


@pytest.mark.parametrize("optimizer", ["adam", "muon", "sgd"])
def test_a_fixed_number_of_groups_is_refused(optimizer):
    with pytest.raises(EngineError, match="no µP has the state-space mixing Θ\\(1\\) at init: "
                       "C's and B's layers have a finite fan-out") as e:
        tp.derive(tp.parse(FIXED), optimizer)
    at = next(i for i, line in enumerate(FIXED.splitlines(), 1) if "p = ssd(" in line)
    first = e.value.diagnostics[1]
    assert (first.span.line, first.message.split()[0]) == (at, "mamba.p")  # at the ssd
    assert [d.message.split()[0] for d in e.value.diagnostics[1:]] == ["mamba.p", "mamba.y_1"]
    assert "help: let the groups grow with the heads: C and B of a dim ∝ n" in str(e.value)


@pytest.mark.parametrize("bias", ["0", "1"])
def test_c_and_b_lifted_at_init_by_a_bias_of_zero_only_are_refused(bias):
    # HF Mamba-2's short conv adds a bias of 0 to C and B: the derivation counts a constant init
    # as Θ(1), an upper bound, so C₀ and B₀ looked Θ(1) and derive gave µP, whose mixing still
    # vanished at init in the model (the zoo's 4-head check, -0.5 to -0.6); a bias of 1 lifts them
    biases = f"\n    param bC : [N] = {bias}\n    param bB : [N] = {bias}"
    text = FIXED.replace("    param WC : [N, n]", "    param WC : [N, n]" + biases).replace(
        "dot(WC @ a, WB @ a, N)", "dot(WC @ a + bC, WB @ a + bB, N)")
    if bias == "1":
        assert not tp.derive(tp.parse(text), "adam").check.notes
        return
    with pytest.raises(EngineError, match="no µP has the state-space mixing"):
        tp.derive(tp.parse(text), "adam")


def test_classify_still_notes_the_forced_vectors_of_a_fixed_number_of_groups():
    program = tp.parse(FIXED)
    c = classify(program, ADAM, oracle("adam", readouts=("WB", "WC")))
    assert c.forced == ["mamba.p", "mamba.y_1"] and not c.violations
    assert c.notes[0].startswith("mamba.p vanishes at init as 1/n (forced")
    assert (c.analysis.init_["mamba.p_3"], c.analysis.grad("mamba.p_3")) == (-1, 0)
    # under SGD the same vectors are refused: C and B start at a saddle its steps never leave
    c = classify(program, SGD, oracle("sgd", readouts=("WB", "WC")))
    assert [(v.condition, v.tensor) for v in c.violations] == [
        ("vanishing_init", "mamba.p"), ("vanishing_init", "mamba.y_1")]


def test_without_the_skip_the_norm_of_the_vanishing_mixing_is_refused():
    text = FIXED.replace(" + spread(D, P) * x", "").replace("    param D : [H] = 1", "")
    with pytest.raises(EngineError, match="mamba.out_4 divides by its size: its gradient at "
                       "init is n times its size after training"):
        tp.derive(tp.parse(text), "adam")


def test_a_fixed_head_count_is_refused_whatever_the_groups():
    # P = n/2, H = 4: C and B of a dim ∝ n need N ∝ n per group (cb's CLT sum under the 1/N
    # scale leaves P₀ at n^-1/2), and a finite N·G makes their layers readouts (P₀ at n^-1)
    text = re.sub(r"dim P = 16 .*", "dim P = n / 2", TEXT)
    text = re.sub(r"dim H = n / 8 .*", "dim H = 4", text)
    grown = re.sub(r"dim N = 16 .*", "dim N = n / 2\nscale s = 1", text).replace(
        "p = ssd(dot(", "p = ssd(s * dot(")
    with pytest.raises(EngineError, match="cb sums over a state size that grows with the width"):
        tp.derive(tp.parse(grown), "adam")
    fixed = re.sub(r"dim N = 16 .*", "dim N = 8", text).replace("[di, n]      # in_proj, B",
                                                                 "[N, n]")
    fixed = fixed.replace("[di, n]      # in_proj, C", "[N, n]")
    with pytest.raises(EngineError, match="C's and B's layers have a finite fan-out"):
        tp.derive(tp.parse(fixed), "adam")


def test_the_limits_refuse_it_at_the_token_input():
    with pytest.raises(EngineError, match="tokens inputs have no NNGP rule") as e:
        nngp_kernel(tp.parse(TEXT), np.zeros((2, 6)))
    assert e.value.span is not None


def test_an_init_below_the_readouts_is_a_violation_not_a_forced_note():
    program = tp.parse(FIXED)
    abc = oracle("adam", readouts=("WB", "WC"))
    abc["mamba.WB"] = ABC(0, "3/2", 1)  # B₀ = Θ(n^-1): P₀ = Θ(n^-3/2), below what is forced
    c = classify(program, ADAM, abc)
    assert [v.tensor for v in c.violations if v.condition == "vanishing_init"] == [
        "mamba.p", "mamba.y_1"]
    assert not c.notes
