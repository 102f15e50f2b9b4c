"""Mixture-of-experts layers: the router and the experts derive from the rules, no role table.

Oracles (docs/theory.md, "Mixture-of-experts layers"): with E finite the router R : [E, n] is a
readout (TP5 Table 3's output row: init σ/n, LR η/n under SGD and Adam), each expert's matrices
derive exactly as the same MLP written densely, the gates are Θ(1) at init and move by Θ(1), and
a router over a width-proportional number of experts is refused at the route call.
"""

from __future__ import annotations

import pytest
from conftest import ROOT
from sympy import Rational

import tensorprog as tp

HALF = Rational(1, 2)
OUT = {"sgd": (0, 1, 1), "adam": (0, 1, 1)}  # TP5 Table 3's output weights
HID = {"sgd": (0, HALF, 0), "adam": (0, HALF, 1)}

HEAD = """width n = 64
dim d_in = 8
dim d_out = 4
dim E = 3
dim ff = 2 * n
input x : [d_in]
param W0 : [n, d_in]
param R : [E, n]
param A1 : [ff, n]
param B1 : [n, ff]
param A2 : [ff, n]
param B2 : [n, ff]
param A3 : [ff, n]
param B3 : [n, ff]
param Wo : [d_out, n]
h = relu(W0 @ x)
"""
EXPERTS = "B1 @ relu(A1 @ h), B2 @ relu(A2 @ h), B3 @ relu(A3 @ h)"


def moe(gates: str = "softmax(R @ h)", route: str = "route_norm", k: int = 2) -> str:
    return HEAD + f"g = {gates}\ny = h + {route}(g, {k}, {EXPERTS})\noutput out = Wo @ y\n"


def abc(source: str, optimizer: str) -> dict:
    d = tp.derive(tp.parse(source), optimizer)
    assert d.check.regime == "feature_learning" and d.check.all_maximal
    return {p: (x.a, x.b, x.c) for p, x in d.abc.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("gates", "route", "k"), [
    ("softmax(R @ h)", "route_norm", 2),  # Mixtral: normalised top-2 softmax
    ("softmax(R @ h)", "route", 1),  # Qwen2-MoE / OLMoE: top-k softmax, not normalised
    ("sigmoid(R @ h)", "route_norm", 2),  # DeepSeek-V3: normalised sigmoid scores
    ("sigmoid(R @ h)", "route", 3),  # every expert, sigmoid gates
])
def test_router_is_a_readout_and_experts_are_hidden(gates, route, k, optimizer):
    got = abc(moe(gates, route, k), optimizer)
    assert got["R"] == OUT[optimizer]
    for e in "123":
        assert got[f"A{e}"] == got[f"B{e}"] == HID[optimizer]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_experts_derive_exactly_as_the_same_mlp_written_densely(optimizer):
    unused = ("param R ", "param A2", "param B2", "param A3", "param B3")
    head = "".join(line + "\n" for line in HEAD.splitlines() if not line.startswith(unused))
    dense = head + "y = h + B1 @ relu(A1 @ h)\noutput out = Wo @ y\n"
    routed = abc(moe(), optimizer)
    plain = abc(dense, optimizer)
    assert routed["A1"] == plain["A1"] and routed["B1"] == plain["B1"]
    assert routed["W0"] == plain["W0"] and routed["Wo"] == plain["Wo"]


def test_gates_are_order_one_and_move_while_the_logits_start_small():
    d = tp.derive(tp.parse(moe()), "adam")
    sizes = d.as_dict()["vectors"]
    # router logits: a CLT sum through a readout at init (n^-1/2), a Θ(1) change (LLN)
    assert (sizes["g_1"]["init"], sizes["g_1"]["update"]) == ("-1/2", "0")
    # the gates: Θ(1) at init (softmax of ~0 is 1/E) and Θ(1) change: the router learns
    assert (sizes["g"]["init"], sizes["g"]["update"]) == ("0", "0")
    # the gates' gradient is Θ(1): an LLN sum over the width against the experts' change
    assert sizes["g"]["grad"] == "0"


def test_mup_convention_gives_the_router_the_readouts_multiplier():
    d = tp.derive(tp.parse(moe()), "adam", convention="mup")
    wo, r = d.abc["Wo"], d.abc["R"]
    assert (r.a, r.b, r.c) == (wo.a, wo.b, wo.c) == (1, 0, 0)


def test_sp_is_classified_unstable_naming_router_and_experts():
    sp = tp.classify(tp.parse(moe()), "adam", preset="sp")
    assert sp.regime == "unstable"
    blown = {v.tensor for v in sp.violations if v.condition == "stability_training"}
    assert {"g_1", "y"} <= blown


@pytest.mark.parametrize("source", [moe(), moe("sigmoid(R @ h)", "route", 3)])
def test_route_prints_and_parses_back_to_the_same_ir(source):
    program = tp.parse(source)
    assert tp.parse(tp.to_text(program)) == program


def test_example_derives_router_as_readout_and_shared_expert_as_dense():
    got = abc((ROOT / "examples" / "moe.tp").read_text(), "adam")
    assert got["R"] == OUT["adam"]
    assert all(got[p] == HID["adam"] for p in ("A1", "B4", "As", "Bs"))


def test_router_over_width_proportional_experts_is_refused_at_the_call():
    source = HEAD.replace("dim E = 3", "dim E = n") + (
        "g = sigmoid(R @ h)\noutput y = route(g, 2, " + ", ".join(["h"] * 3) + ")\n")
    with pytest.raises(tp.SemanticError, match="width-proportional dim E") as err:
        tp.parse(source)
    assert (err.value.span.line, err.value.span.column) == (18, 12)


def test_moe_in_a_repeated_block_derives_completep_on_every_experts_last_weight():
    source = """width n = 64
depth L = 2
dim d_in = 8
dim d_out = 4
dim E = 2
input x : [d_in]
param W0 : [n, d_in]
param Wo : [d_out, n]
block layer(h) {
    param R : [E, n]
    param A1 : [n, n]
    param B1 : [n, n]
    param A2 : [n, n]
    param B2 : [n, n]
    return h + route(softmax(R @ h), 1, B1 @ relu(A1 @ h), B2 @ relu(A2 @ h))
}
hL = repeat L layer(relu(W0 @ x))
output y = Wo @ hL
"""
    d = tp.derive(tp.parse(source), "adam")
    got = {p: (x.a, x.b, x.c) for p, x in d.abc.items()}
    assert got["layer.R"] == OUT["adam"] and got["layer.B2"] == HID["adam"]
    # in L the branch is a route: the sum over the L branches reaches each expert's last weight
    # (aL = 1, CompleteP, as a dense MLP's second weight gets); the router and the experts'
    # first weights keep aL = 0 (their changes reach the stream through those 1/L multipliers)
    depth = {p: (x.a, x.b, x.c) for p, x in d.depth.abc.items()}
    assert depth["layer.B1"] == depth["layer.B2"] == (1, 0, 0)
    assert depth["layer.A1"] == depth["layer.R"] == (0, 0, 0)


GATED_INPUTS = " + ".join(f"B{e} @ relu(A{e} @ route_in(g, 2, {e - 1}, h))" for e in (1, 2, 3))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gates_on_the_experts_inputs_derive_as_gates_on_their_outputs(optimizer):
    # oracle: route's derivation (the router a readout, each expert a dense MLP); route_in
    # gates each expert's input instead, a Θ(1) number per token that changes no exponent
    theirs = abc(moe("sigmoid(R @ h)", "route"), optimizer)
    ours = abc(HEAD + f"g = sigmoid(R @ h)\ny = h + {GATED_INPUTS}\noutput out = Wo @ y\n",
               optimizer)
    assert ours == theirs and ours["R"] == OUT[optimizer] and ours["A2"] == HID[optimizer]


def test_gated_inputs_in_a_repeated_block_derive_completep_on_every_experts_last_weight():
    block = HEAD.split("param R")[0].replace("dim E", "depth L = 2\ndim E") + """\
param Wo : [d_out, n]
block layer(h) {
    param R : [E, n]
""" + "".join(f"    param A{e} : [ff, n]\n    param B{e} : [n, ff]\n" for e in (1, 2, 3)) + f"""\
    g = sigmoid(R @ h)
    return h + {GATED_INPUTS}
}}
hL = repeat L layer(relu(W0 @ x))
output out = Wo @ hL
"""
    d = tp.derive(tp.parse(block), "adam")
    depth = {p: (x.a, x.b, x.c) for p, x in d.depth.abc.items()}
    assert depth["layer.B1"] == depth["layer.B3"] == (1, 0, 0)
    assert depth["layer.A1"] == depth["layer.R"] == (0, 0, 0)
