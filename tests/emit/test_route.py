"""The emitted mixture of experts computes what a sparse dispatch computes: each input's k
largest gates (divided by their sum under route_norm) times only those experts' outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, emit_program

import tensorprog as tp
from tensorprog.emit.load import load_module


@pytest.mark.parametrize("normalise", [True, False])
def test_route_equals_a_sparse_dispatch(normalise):
    source = (ROOT / "examples" / "moe.tp").read_text()
    if not normalise:
        source = source.replace("route_norm(", "route(")
    module = load_module(emit_program(tp.parse(source)), "moe_route")
    torch.manual_seed(0)
    model = module.Model(width=64)
    x, = model.example_inputs(batch_size=5)
    values = model.vectors(x)
    g = values["g"]
    experts = [values[f"m_{3 * e}"] for e in range(1, 5)]  # B_e @ relu(A_e @ h)
    want = torch.zeros_like(values["m"])
    for b in range(g.shape[0]):
        top = torch.topk(g[b], 2)
        weights = top.values / top.values.sum() if normalise else top.values
        for w, e in zip(weights, top.indices.tolist(), strict=True):
            want[b] += w * experts[e][b]
    torch.testing.assert_close(values["m"], want, rtol=1e-5, atol=1e-6)
