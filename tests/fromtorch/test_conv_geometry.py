"""Convolutions of any geometry traced: a 7x7 stride-4 stem of overlapping patches (PoolFormer's,
PVT-v2's), an image padded by zeros before a convolution (TF's 'SAME' padding, MobileNet's
``apply_tf_padding``), a non-square kernel (TextNet's 3x1) and a dilated one, each written
``conv(K, h, s, top, bottom, left, right, d)``; and a squeeze-and-excitation gate (RegNet's): 1x1
convolutions of a pooled image, linear layers of the pooled vector, whose sigmoid scales every
pixel of the image. Oracles: the emitted module of the traced program, given the model's
weights, computes the model's output (the geometry is read exactly); the exponents are those of
the same network with every convolution a 3x3 same-padded one (the geometry does not enter
them), and the gate's those of the hand-written program."""

from __future__ import annotations

import pytest
from conftest import abc_by_target, emit_program, traced_computes_the_model

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


class Excite(nn.Module):
    """A convolution, then RegNet's squeeze-and-excitation: pool, 1x1 conv, relu, 1x1 conv,
    sigmoid, times the image."""

    def __init__(self, n):
        super().__init__()
        self.stem = nn.Conv2d(3, n, 3, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.att = nn.Sequential(nn.Conv2d(n, n // 4, 1), nn.ReLU(), nn.Conv2d(n // 4, n, 1),
                                 nn.Sigmoid())
        self.fc = nn.Linear(n, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.fc((h * self.att(self.pool(h))).mean((2, 3)))


EXCITE = """\
width n = 8
dim q = n / 4
dim C = 3
dim S = 16
dim k = 3
dim K = 10
input img : image[C, S, S]
param Ks : [n, C, k, k]
param bs : [n]
param A : [q, n]
param bA : [q]
param B : [n, q]
param bB : [n]
param W : [K, n]
param bW : [K]
h = relu(Ks @ img + bs)
g = sigmoid(B @ relu(A @ global_pool(h) + bA) + bB)
output y = W @ global_pool(h * g) + bW
"""
NAMES = {"stem_weight": "Ks", "stem_bias": "bs", "att_0_weight": "A", "att_0_bias": "bA",
         "att_2_weight": "B", "att_2_bias": "bB", "fc_weight": "W", "fc_bias": "bW"}


def test_a_squeeze_and_excitation_gate_is_linear_layers_of_the_pooled_image():
    traced = tp.from_torch(Excite, (8, 16), images)
    src = traced.source
    assert "param att_0_weight : [n_by4, n]" in src  # the kernel [n/4, n, 1, 1] as a matrix
    assert "conv2d_1 = att_0_weight @ adaptive_avg_pool2d + att_0_bias" in src
    assert "mul = v_relu * v_sigmoid" in src and traced.program.spatial["mul"] == (16, 16)
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(EXCITE, "excite.tp"), optimizer).abc
        assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}
    model = Excite(8).double()
    emitted = load_module(emit_program(traced.program), "se").Model(8, dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            q = getattr(emitted, name.replace(".", "_"))
            q.copy_(p.reshape(q.shape))  # a 1x1 kernel [out, in, 1, 1] is the matrix [out, in]
    (x,) = images()
    x = x.double()
    torch.testing.assert_close(emitted(x.movedim(1, -1)), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "ceil", "traced_as"), [
    (32, True, "global_pool"), (4, False, "global_pool"), (3, True, None), (2, False, "avgpool")])
def test_an_average_pool_of_one_window_over_the_image_is_its_mean(kernel, ceil, traced_as):
    # EfficientNet's AvgPool2d(hidden_dim, ceil_mode=True): a kernel past the 4 x 4 grid, one
    # window, the mean of the pixels inside it. A 3 x 3 one with ceil_mode leaves windows
    # that miss pixels: refused, never read as the mean
    class Pooled(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.stem = nn.Conv2d(3, n, 3, 4, 1)
            self.pool = nn.AvgPool2d(kernel, ceil_mode=ceil)
            self.fc = nn.Linear(n, 10)

        def forward(self, x):
            h = self.pool(torch.relu(self.stem(x)))
            return self.fc(h.flatten(1) if h.shape[-1] == 1 else h.mean((2, 3)))

    if traced_as is None:
        with pytest.raises(tp.TensorProgError, match="avg pool of kernel 3x3"):
            tp.from_torch(Pooled, (8, 16), images)
        return
    traced = tp.from_torch(Pooled, (8, 16), images)
    assert f"= {traced_as}(" in traced.source
    if traced_as == "global_pool":
        traced_computes_the_model(traced, Pooled, images)
