"""Convolutions of any geometry traced: a 7x7 stride-4 stem of overlapping patches (PoolFormer's,
PVT-v2's), an image padded by zeros before a convolution (TF's 'SAME' padding, MobileNet's
``apply_tf_padding``), a non-square kernel (TextNet's 3x1) and a dilated one, each written
``conv(K, h, s, top, bottom, left, right, d)``. Oracles: the emitted module of the traced program,
given the model's weights, computes the model's output (the geometry is read exactly); the
exponents are those of the same network with every convolution a 3x3 same-padded one (the
geometry does not enter them)."""

from __future__ import annotations

import pytest
from conftest import abc_by_target, emit_program

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402


class Net(nn.Module):
    def __init__(self, n, plain=False):
        super().__init__()
        geo = [(3, 1, 1), (3, 1, 1), (3, 1, 1), {}] if plain else \
            [(7, 4, 3), (3, 2, 0), ((3, 1), 1, (1, 0)), {"padding": 2, "dilation": 2}]
        self.stem = nn.Conv2d(3, n, *geo[0])
        self.tf = nn.Conv2d(n, n, *geo[1])
        self.vert = nn.Conv2d(n, n, *geo[2])
        self.dil = nn.Conv2d(n, n, 3, **(geo[3] or {"padding": 1}), bias=False)
        self.fc = nn.Linear(n, 10)
        self.plain = plain

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.tf(h if self.plain else F.pad(h, (0, 1, 0, 1))))
        h = torch.relu(self.vert(h)) + self.dil(h)
        return self.fc(h.mean((2, 3)))


def images(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Net, (8, 16), images)


def test_each_geometry_is_a_conv_of_its_stride_padding_and_dilation(traced):
    src = traced.source
    assert "conv2d = conv(stem_weight, img, 4, 3, 3, 3, 3, 1) + stem_bias" in src
    # the pad (0, 1, 0, 1) by zeros: one more row at the bottom, one more column at the right
    assert "conv2d_1 = conv(tf_weight, v_relu, 2, 0, 1, 0, 1, 1) + tf_bias" in src
    assert "conv2d_2 = vert_weight @ relu_1 + vert_bias" in src  # 3x1, padded by (1, 0)
    assert "conv2d_3 = conv(dil_weight, relu_1, 1, 2, 2, 2, 2, 2)" in src
    assert traced.program.spatial["conv2d"] == (4, 4)
    assert traced.program.spatial["conv2d_1"] == (2, 2)


def test_the_emitted_program_computes_the_model(traced):
    model = Net(8).double()
    emitted = load_module(emit_program(traced.program), "geo").Model(8, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            getattr(emitted, name.replace(".", "_")).copy_(p)
    (x,) = images()
    x = x.double()
    torch.testing.assert_close(emitted(x.movedim(1, -1)), model(x), rtol=1e-12, atol=1e-12)


def test_the_geometry_leaves_the_exponents_of_plain_convolutions(traced):
    plain = tp.from_torch(lambda n: Net(n, plain=True), (8, 16), images)
    for optimizer in ("adam", "sgd"):
        assert abc_by_target(traced, optimizer) == abc_by_target(plain, optimizer)
