"""What the engine derives for Mamba-2's state-space mixing (``ssd``; examples/ssd.tp), against
a hand oracle from its rules (docs/theory.md, "State-space mixing"):

* in_proj's x, z and dt parts (n -> di, n -> H with H = n/8 heads) and out_proj are hidden
  weights: (a, b, c) = (0, 1/2, 1) under Adam, (0, 1/2, 0) under SGD;
* C's and B's (n -> N = 8) get an output's gradient, Θ(1): dcb sums dP over the H/G ∝ n heads
  of its group, LLN after training (+1), and dP_ts = Σ over P = 16 of dy·x is Θ(1/n): so they
  are readouts, (0, 1, 1) under both; C₀, B₀ are Θ(n^-1/2), cb₀ and P₀ Θ(n^-1);
* dt's bias, A's log and D (one per head, H ∝ n), the norms' gains: biases, (0, 0, 0) under
  Adam; under SGD their gradient is Θ(1/n) (dt's and A's: dP times Θ(1) over finitely many
  token pairs; D's: a finite sum over P), so c = -1;
* P₀'s vanishing is forced (no stable parametrization with maximal updates lifts it), so P
  and the mixing P x are reported as forced to vanish, not as violations; the skip D x keeps
  y Θ(1). Without the skip the gated norm divides by the mixing's n^-1 size (its gradient at
  init n times its trained size): refused. Under SGD the SGD oracle above meets every other
  condition, but C and B start at a saddle its steps never leave in the width limit: refused.
  With a fixed head count (H = 4, P = n/2) dt's layer becomes a readout too, and its per-head
  params finite ones.
"""

import re

import numpy as np
import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.classify import classify
from tensorprog.engine.derivation import explain
from tensorprog.engine.exponents import ABC
from tensorprog.engine.optimizers import ADAM, SGD
from tensorprog.errors import EngineError
from tensorprog.limits.nngp import nngp_kernel

TEXT = (ROOT / "examples" / "ssd.tp").read_text()
HIDDEN = ("Wx", "Wz", "Wdt", "Wo")
READOUTS = ("WB", "WC")
BIASES = ("g", "bdt", "Alog", "D", "gn")


def oracle(optimizer: str) -> dict[str, ABC]:
    c_hidden, c_bias = (1, 0) if optimizer == "adam" else (0, -1)
    want = {"E": ABC(0, 0, c_bias), "U": ABC(0, 1, 1), "gf": ABC(0, 0, c_bias)}
    want.update({f"mamba.{p}": ABC(0, "1/2", c_hidden) for p in HIDDEN})
    want.update({f"mamba.{p}": ABC(0, 1, 1) for p in READOUTS})
    want.update({f"mamba.{p}": ABC(0, 0, c_bias) for p in BIASES})
    return want


def test_the_example_derives_the_hand_oracle():
    assert tp.derive(tp.parse(TEXT), "adam").abc == oracle("adam")


def test_sgd_is_refused_at_the_saddle_of_c_and_b():
    # C's gradient is ∝ B and B's ∝ C, both Θ(n^-1/2) at init: SGD's steps, as small as the
    # gradients, leave C and B at Θ(n^-1/2) for every fixed number of steps, so the mixing never
    # trains in the width limit and the exponents above would claim a change that never comes
    with pytest.raises(EngineError, match="a saddle that steps as small as the gradients "
                       "never leave") as e:
        tp.derive(tp.parse(TEXT), "sgd")
    at = next(i for i, line in enumerate(TEXT.splitlines(), 1) if "p = ssd(" in line)
    assert e.value.diagnostics[1].span.line == at  # at the ssd
    # the SGD oracle meets every other condition: only the forced vectors are refused
    c = classify(tp.parse(TEXT), SGD, oracle("sgd"))
    assert [(v.condition, v.tensor) for v in c.violations] == [
        ("vanishing_init", "mamba.p"), ("vanishing_init", "mamba.y_1")]


def test_the_mixing_vanishes_at_init_as_forced_and_nothing_else_does():
    d = tp.derive(tp.parse(TEXT), "adam")
    an, dims = d.analysis, d.program.value_dims
    ssd = next(i for i in d.program.body if getattr(i, "fn", None) == "ssd")
    cb, mixed = ssd.args[0], next(i.out for i in d.program.body if getattr(i, "weights", 0)
                                 == ssd.out)
    assert (an.init_[cb], an.init_[ssd.out], an.init_[mixed]) == (-1, -1, -1)
    assert an.change_[ssd.out] == an.change_[mixed] == 0  # Θ(1) after training
    assert an.grad(cb) == 0  # an output's gradient: the sum over the group's heads
    assert an.init_["mamba.y"] == 0  # the skip D x
    assert [re.match(r"\S+", n).group() for n in d.check.notes] == [ssd.out, mixed]
    assert not d.check.violations and dims[ssd.out] == "di/P"
    shown = str(d).split("Coordinate sizes")[0]  # above the long table, under the regime
    assert "every param updated maximally in the width limit.\nWarning: the state-space " \
        "mixing vanishes at init" in shown and "`tensorprog check` fails in the SSD branch" in shown
    assert "Warning: the state-space mixing vanishes at init" in explain(d)


def test_without_the_skip_the_norm_of_the_vanishing_mixing_is_refused():
    text = TEXT.replace(" + spread(D, P) * x", "").replace("    param D : [H] = 1", "")
    with pytest.raises(EngineError, match="mamba.out_4 divides by its size: its gradient at "
                       "init is n times its size after training"):
        tp.derive(tp.parse(text), "adam")


def test_a_fixed_head_count_makes_the_steps_layer_a_readout():
    text = re.sub(r"dim P = 16 .*", "dim P = n / 2", TEXT)
    text = re.sub(r"dim H = n / 8 .*", "dim H = 4", text)
    abc = tp.derive(tp.parse(text), "adam").abc
    assert abc["mamba.Wdt"] == abc["mamba.WB"] == ABC(0, 1, 1)
    assert abc["mamba.Alog"] == abc["mamba.D"] == ABC(0, 0, 0)
    assert abc["mamba.Wx"] == ABC(0, "1/2", 1)


def test_the_limits_refuse_it_at_the_token_input():
    with pytest.raises(EngineError, match="tokens inputs have no NNGP rule") as e:
        nngp_kernel(tp.parse(TEXT), np.zeros((2, 6)))
    assert e.value.span is not None


def test_groups_that_grow_with_the_heads_leave_nothing_vanishing():
    # ngroups = heads (N = P = 16, C and B of di): C's and B's layers are hidden weights, cb a
    # finite sum of Θ(1) terms, so P₀ is Θ(1): no forced vanishing, no note
    text = TEXT.replace("dim N = 8 ", "dim N = 16").replace("WB : [N, n]", "WB : [di, n]")
    d = tp.derive(tp.parse(text.replace("WC : [N, n]", "WC : [di, n]")), "adam")
    assert d.abc["mamba.WB"] == d.abc["mamba.WC"] == ABC(0, "1/2", 1)
    assert not d.check.notes and all(d.analysis.init_[i.out] == 0 for i in d.program.body
                                     if getattr(i, "fn", None) == "ssd")


def test_an_init_below_the_readouts_is_a_violation_not_a_forced_note():
    program = tp.parse(TEXT)
    abc = dict(tp.derive(program, "adam").abc)
    abc["mamba.WB"] = ABC(0, "3/2", 1)  # B₀ = Θ(n^-1): P₀ = Θ(n^-3/2), below what is forced
    c = classify(program, ADAM, abc)
    assert [v.tensor for v in c.violations if v.condition == "vanishing_init"] == [
        "mamba.p", "mamba.y_1"]
    assert not c.notes
