"""A block whose param reaches no output (a traced layer that the model computes and drops, as a
fused key/value layer's unused separate k and v projections in every layer): derive leaves the
param out, and each repetition's module computes what the block returns without it, as the
Model's own instructions do. Oracle: the module computes what the block written without that
param computes, given the same params."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import emit_program  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
from tensorprog.errors import TensorProgWarning  # noqa: E402

BLOCK = """width n = 16
dim d_in = 4
dim d_out = 3
input x : [d_in]
param W_in : [n, d_in]
param W_out : [d_out, n]
block layer(h) {{
    param W1 : [n, n]
{extra}    return h + W1 @ relu(h)
}}
h2 = repeat 2 layer(W_in @ x)
output y = W_out @ h2
"""


def test_a_repetition_leaves_out_what_a_left_out_param_computes():
    plain = load_module(emit_program(tp.parse(BLOCK.format(extra=""))), "block_plain")
    with pytest.warns(TensorProgWarning, match="does not reach any output"):
        program = tp.parse(BLOCK.format(extra="    param Wx : [n, n]\n    u = Wx @ h\n"))
        source = emit_program(program)
    left = load_module(source, "block_left_out")
    torch.manual_seed(0)
    a, b = plain.Model(32, dtype=torch.float64), left.Model(32, dtype=torch.float64)
    b.load_state_dict(a.state_dict())  # the same params: Wx is in neither
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    assert "u" not in b.vectors(x) and "layer.0.u" not in b.vectors(x)
