"""An image's pixels read as tokens and tokens laid back out as an image (``tokens(h, T)``,
``image(t, H, W)``; examples/pixel_tokens.tp): the emitted module computes torch's own
``x.flatten(2).transpose(1, 2)`` and ``t.transpose(1, 2).reshape(B, C, H, W)``, exactly, and the
engine derives a relabelling as the identity."""

import pytest
from conftest import emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim C = 3
dim H = 2
dim W = 3
dim T = 6
dim k = 3
dim K = 4
input img : image[C, H, W]
param E : [n, C, k, k]
param A : [n, n]
param D : [n, k, k]
param U : [K, n]
h = E @ img
t = tokens(h, T)
u = relu(A @ t)
g = image(u, H, W)
z = dwconv(D, g)
output y = U @ global_pool(z)
"""


def test_tokens_and_image_are_torchs_flatten_and_reshape():
    module = load_module(emit_program(tp.parse(SMALL)), "small_relayout")
    model = module.Model(16, dtype=torch.float64)
    (x,) = model.example_inputs(5, generator=torch.Generator().manual_seed(0))
    v = model.vectors(x)
    h = v["h"].permute(0, 3, 1, 2)  # the emitted image is channels-last: torch's (B, C, H, W)
    assert v["t"].shape == (5, 6, 16)
    assert torch.equal(v["t"], h.flatten(2).transpose(1, 2))
    u = v["u"]
    back = u.transpose(1, 2).reshape(5, 16, 2, 3)
    assert torch.equal(v["g"].permute(0, 3, 1, 2), back)
    assert model(x).shape == (5, 4)


def test_a_relabelling_passes_every_exponent_through():
    a = tp.derive(tp.parse(SMALL), "adam").check.analysis
    for table in (a.init_, a.change_, a.grad_):
        assert table["t"] == table["h"] and table["g"] == table["u"]


def test_relayouts_round_trip_through_the_text_form():
    text = tp.to_text(tp.parse(SMALL))
    assert "tokens(h, T)" in text and "image(u, H, W)" in text
    assert tp.to_text(tp.parse(text)) == text
