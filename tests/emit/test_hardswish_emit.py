"""hardswish and hardsigmoid emitted: the module's vectors are x·relu6(x + 3)/6 and
relu6(x + 3)/6 of their inputs, written out here by their definitions (not torch's functions),
on inputs that reach past the kinks at ±3."""

import pytest
from conftest import emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim D = 4
dim K = 3
input x : [D]
param A : [n, D]
param W : [K, n]
h = A @ x
s = hardswish(h)
g = hardsigmoid(h)
output y = W @ (s + g)
"""


def test_hardswish_and_hardsigmoid_are_their_definitions():
    module = load_module(emit_program(tp.parse(SMALL)), "small_hardswish")
    model = module.Model(16, dtype=torch.float64)
    x = 8 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = model.vectors(x)
    h = v["h"]
    assert (h > 3).any() and (h < -3).any() and (h.abs() < 3).any()
    torch.testing.assert_close(v["s"], h * (h + 3).clamp(0, 6) / 6, rtol=0, atol=1e-14)
    torch.testing.assert_close(v["g"], (h + 3).clamp(0, 6) / 6, rtol=0, atol=1e-14)
