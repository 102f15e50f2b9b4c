"""Oracle tests: the papers' tables are the engine's expected outputs (never its inputs).

TP4 Table 1 (SGD, L >= 2; MFP for L = 1) and TP5 Table 3 (SGD and Adam, all multipliers 1), plus
TP5 Table 8 (the mup package's convention) and TP4's own µP form, for MLPs of several depths.
"""

from __future__ import annotations

import pytest
from conftest import mlp_source
from sympy import Rational

import tensorprog as tp

HALF = Rational(1, 2)
DEPTHS = [1, 2, 3, 5]


def _mlp(depth, biases=False):
    return tp.parse(mlp_source(depth, biases))


# --- TP4 Table 1: (preset, c) -> (r, regime), SGD ---------------------------------------------
TABLE1 = [
    ("sp", 1, HALF, "kernel"),  # PyTorch default init, LR 1/n
    ("sp", 0, -1, "unstable"),  # SP with a constant LR
    ("ntp", 0, HALF, "kernel"),  # the NTK regime
    ("mup", None, 0, "feature_learning"),
]


@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize(("name", "c", "r", "regime"), TABLE1,
                         ids=[f"{p}-c{c}" for p, c, *_ in TABLE1])
def test_tp4_table1(depth, name, c, r, regime):
    result = tp.classify(_mlp(depth), "sgd", preset=name, c=None if c is None else Rational(c))
    assert result.regime == regime
    assert result.r == r


def test_tp4_table1_mfp_one_hidden_layer():
    # MFP, L = 1: a = (0, 1), b = 0, c = -1: feature learning with r = 0
    p = _mlp(1)
    abc = {"W1": tp.ABC(0, 0, -1), "W2": tp.ABC(1, 0, -1)}
    abc = {k: tp.ABC(*(Rational(x) for x in (v.a, v.b, v.c))) for k, v in abc.items()}
    result = tp.classify(p, "sgd", abc=abc)
    assert (result.regime, result.r) == ("feature_learning", 0)
    # the mfp preset is that same parametrization
    preset = tp.classify(p, "sgd", preset="mfp")
    assert {k: (v.abc.a, v.abc.b, v.abc.c) for k, v in preset.params.items()} == {
        "W1": (0, 0, -1), "W2": (1, 0, -1)}


@pytest.mark.parametrize("depth", DEPTHS)
def test_tp4_mup_form(depth):
    # µP in TP4 style: a = (-1/2, 0, ..., 0, 1/2), b = 1/2, c = 0 under SGD
    d = tp.derive(_mlp(depth), "sgd", "tp4")
    a = [d.abc[f"W{k}"].a for k in range(1, depth + 2)]
    assert a == [-HALF] + [0] * (depth - 1) + [HALF]
    assert all(x.b == HALF and x.c == 0 for x in d.abc.values())


def test_tp4_sp_kernel_regime_names_frozen_layers():
    result = tp.classify(_mlp(3), "sgd", preset="sp", c=Rational(1))
    frozen = {v.tensor for v in result.violations if v.condition == "maximal_update"}
    assert frozen == {"W1", "W2", "W3"}  # the readout W4 still moves f by Θ(1)
    assert result.params["W2"].r == HALF and result.params["W1"].r == Rational(3, 2)


def test_tp4_sp_constant_lr_names_the_blow_up():
    result = tp.classify(_mlp(2), "sgd", preset="sp")
    blown = {v.tensor: v.exponent for v in result.violations
             if v.condition == "stability_training"}
    assert blown["h2"] == 1 and blown["x2"] == 1 and "f" in blown


# --- TP5 Table 3: per weight, all multipliers 1 --------------------------------------------------
# init variance n^(-2b) and LR η·n^(-c), with fan_in/fan_out the layer's dims:
#   input weights & biases: var 1/fan_in (b = 0), SGD LR η·fan_out (c = -1), Adam LR η (c = 0)
#   output weights:         var 1/fan_in² (b = 1), SGD LR η/fan_in (c = 1), Adam LR η/fan_in (c = 1)
#   hidden weights:         var 1/fan_in (b = 1/2), SGD LR η (c = 0), Adam LR η/fan_in (c = 1)
TABLE3 = {
    "sgd": {"input": (0, 0, -1), "output": (0, 1, 1), "hidden": (0, HALF, 0)},
    "adam": {"input": (0, 0, 0), "output": (0, 1, 1), "hidden": (0, HALF, 1)},
}


def _expected_role(name: str, depth: int) -> str:
    if name.startswith("b") or name == "W1":
        return "input"
    return "output" if name == f"W{depth + 1}" else "hidden"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_tp5_table3(optimizer, depth):
    d = tp.derive(_mlp(depth, biases=True), optimizer, "table3")
    table = TABLE3["adam" if optimizer == "adamw" else optimizer]
    for name, x in d.abc.items():
        role = _expected_role(name, depth)
        assert (x.a, x.b, x.c) == table[role], name
    assert d.check.regime == "feature_learning" and d.check.all_maximal


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_tp5_table3_classifies_as_mup(optimizer, depth):
    p = _mlp(depth, biases=True)
    abc = {n: tp.ABC(*table) for n, table in
           ((n, TABLE3[optimizer][_expected_role(n, depth)]) for n in
            [q.name for q in p.params])}
    result = tp.classify(p, optimizer, abc=abc)
    assert result.regime == "feature_learning" and result.all_maximal and not result.violations


# --- TP5 Table 8: the mup package's form: output multiplier 1/fan_in ----------------------------
# output weights: init var 1 (b = 0), multiplier 1/fan_in (a = 1), SGD LR η·fan_in, Adam LR η
TABLE8 = {"sgd": {"input": (0, 0, -1), "output": (1, 0, -1), "hidden": (0, HALF, 0)},
          "adam": {"input": (0, 0, 0), "output": (1, 0, 0), "hidden": (0, HALF, 1)}}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_tp5_table8_mup_convention(optimizer, depth):
    d = tp.derive(_mlp(depth, biases=True), optimizer, "mup")
    for name, x in d.abc.items():
        assert (x.a, x.b, x.c) == TABLE8[optimizer][_expected_role(name, depth)], name


# --- Adam under SP (TP4b; TP5's coordinate checks): a constant LR blows up ---------------------
def test_adam_sp_constant_lr_hidden_and_output_blow_up():
    result = tp.classify(_mlp(2), "adam", preset="sp")
    blown = {v.tensor: v.exponent for v in result.violations
             if v.condition == "stability_training"}
    assert blown["h2"] == 1 and blown["f"] >= 1
