"""Convolutions of any geometry, ``conv(K, h, stride, top, bottom, left, right, dilation)``: the
engine derives the same exponents whatever the geometry (a kernel's fan-in is in·kh·kw however
it moves over the pixels), the program's pixels follow torch's output size, the text form parses
back, and the emitted module computes torch's conv2d of the NCHW image with the same weights."""

import pytest
from conftest import emit_program

import tensorprog as tp
from tensorprog.ir.text import to_text

PROGRAM = """\
width n = 16
dim C = 3
dim S = 12
dim k = 7
dim kh = 3
dim one = 1
dim K = 10
input img : image[C, S, S]
param K0 : [n, C, k, k]
param K1 : [n, n, kh, one]
param W : [K, n]
h0 = relu({stem})
h1 = relu({body})
output y = W @ global_pool(h1)
"""
GEOMETRIES = [  # (stem, body, pixels of h0 and h1)
    ("K0 @ img", "K1 @ h0", (12, 12), (12, 12)),
    ("conv(K0, img, 4, 3)", "K1 @ h0", (3, 3), (3, 3)),
    ("conv(K0, img, 4, 2)", "conv(K1, h0, 2)", (3, 3), (2, 2)),
    ("conv(K0, img, 1, 3, 2)", "conv(K1, h0, 1, 0, 1, 0, 0, 1)", (6, 6), (5, 6)),
    ("conv(K0, img, 2, 1, 2, 3, 0, 1)", "conv(K1, h0, 2, 1, 1, 0, 0, 2)", (5, 5), (2, 3)),
]  # the pixels as torch's conv2d gives them


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_geometry_leaves_every_exponent_as_it_is(optimizer):
    abcs = [tp.derive(tp.parse(PROGRAM.format(stem=a, body=b), "g.tp"), optimizer).abc
            for a, b, *_ in GEOMETRIES]
    assert all(abc == abcs[0] for abc in abcs[1:])
    assert abcs[0]["K0"] == tp.ABC(0, 0, 0 if optimizer == "adam" else -1)  # input weight
    assert abcs[0]["K1"] == tp.ABC(0, "1/2", 1 if optimizer == "adam" else 0)  # hidden


@pytest.mark.parametrize("stem,body,h0,h1", GEOMETRIES)
def test_pixels_follow_torch_and_the_text_parses_back(stem, body, h0, h1):
    program = tp.parse(PROGRAM.format(stem=stem, body=body), "g.tp")
    assert (program.spatial["h0"], program.spatial["h1"]) == (h0, h1)
    assert tp.parse(to_text(program), "again.tp").body == program.body


def test_a_stride_1_half_padded_conv_is_the_kernel_matmul():
    same = tp.parse(PROGRAM.format(stem="conv(K0, img, 1)", body="conv(K1, h0, 1, 1, 1, 0, 0, "
                                   "1)"), "g.tp")
    assert same.body == tp.parse(PROGRAM.format(stem="K0 @ img", body="K1 @ h0"), "g.tp").body


def test_the_emitted_module_computes_torchs_conv2d():
    torch = pytest.importorskip("torch")
    from tensorprog.emit.load import load_module

    stem, body = GEOMETRIES[4][:2]
    program = tp.parse(PROGRAM.format(stem=stem, body=body), "g.tp")
    model = load_module(emit_program(program), "g").Model(16, dtype=torch.float64)
    (img,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(img)
    F = torch.nn.functional
    x = F.pad(img.movedim(-1, 1), (3, 0, 1, 2))  # left, right, top, bottom
    h0 = F.relu(F.conv2d(x, model.K0, stride=2))
    h1 = F.relu(F.conv2d(F.pad(h0, (0, 0, 1, 1)), model.K1, stride=2, dilation=2))
    assert v["h0"].shape == (2, 5, 5, 16) and v["h1"].shape == (2, 2, 3, 16)
    torch.testing.assert_close(v["h1"], h1.movedim(1, -1), rtol=1e-12, atol=1e-12)
