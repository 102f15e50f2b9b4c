"""``spread(g, dh)``, one number per head over its head's coordinates (examples/head_gate.tp): the
emitted module repeats each of g's entries over dh coordinates (torch's ``g.unsqueeze(-1)``
against a (…, H, dh) view), in a product (Laguna's per-head gate) and in a sum (Beam's per-head
bias), on tokens and on an image's pixels (H = 1: one gate for a pixel's whole vector), and the
text form parses back to the same program."""

import pytest
from conftest import emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

TOKENS = """\
width n = 16
dim T = 4
dim V = 10
dim H = 4
dim dh = n / 4
input tok : tokens[T, V]
param E : [n, V]
param Wg : [H, n]
param b : [H]
param Wb : [n, n]
h = E @ tok
g = softplus(Wg @ h)
gated = h * spread(g, dh)
biased = Wb @ h + spread(b, dh)
output y = Wb @ (gated + biased)
"""

IMAGE = """\
width n = 8
dim C = 3
dim S = 4
dim one = 1
input img : image[C, S, S]
param K : [n, C, one, one]
param G : [one, n, one, one]
h = K @ img
out = h * spread(sigmoid(G @ h), n)
output y = global_pool(out)
"""


def test_spread_repeats_each_heads_number_over_its_coordinates():
    module = load_module(emit_program(tp.parse(TOKENS)), "spread_tokens")
    model = module.Model(16, dtype=torch.float64)
    (tok,) = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = model.vectors(tok)
    h, g = v["h"], v["g"]
    assert g.shape == (3, 4, 4)  # (batch, tokens, heads)
    torch.testing.assert_close(g, torch.nn.functional.softplus(v["g_1"]), rtol=0, atol=0)
    want = (h.view(3, 4, 4, 4) * g.unsqueeze(-1)).view(3, 4, 16)  # Laguna's per-head gate
    torch.testing.assert_close(v["gated"], want, rtol=0, atol=0)
    b = model.b.detach() * getattr(model, "b_mult", 1.0)
    bias = (v["biased"] - v["biased_1"]).view(3, 4, 4, 4)
    torch.testing.assert_close(bias, b[None, None, :, None].expand(3, 4, 4, 4), rtol=0,
                               atol=1e-14)


def test_spread_of_one_number_per_pixel_scales_the_pixels_vector():
    module = load_module(emit_program(tp.parse(IMAGE)), "spread_image")
    model = module.Model(8, dtype=torch.float64)
    (img,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(img)
    gate = v["out_2"]  # one number per pixel, channels-last
    assert gate.shape[-1] == 1
    torch.testing.assert_close(v["out"], v["h"] * gate, rtol=0, atol=0)


def test_spread_round_trips_through_the_text_form():
    program = tp.parse(TOKENS)
    text = tp.to_text(program)
    assert "spread(g, dh)" in text and "spread(b, dh)" in text
    assert tp.parse(text) == program
