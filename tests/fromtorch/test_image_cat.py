"""Images concatenated along their channels and read by a convolution (HGNet's stem and its
stages' aggregation), traced as the sum it equals: ``conv(cat(a, b), K) = conv(a, K[:, :c]) +
conv(b, K[:, c:])``, each block of the kernel's input channels a param of its own; and HGNet's
stem pool, a 2x2 max at stride 1 of the image padded by zeros at the bottom and right, traced as
``maxpool2``. Oracles: the same networks written in the language (examples/hgnet_stem.tp)
derive the same exponents; apply leaves them bit-identical at the base width; the emitted
maxpool2 is torch's pad and pool."""

from __future__ import annotations

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base, emit_program

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402


class Cat(nn.Module):
    """A stem, two branches (n and 2n channels), their concatenation into a 3x3 stride-2
    convolution with a bias, a global pool and a readout."""

    def __init__(self, n):
        super().__init__()
        self.stem = nn.Conv2d(3, n, 3, padding=1, bias=False)
        self.a = nn.Conv2d(n, n, 1, bias=False)
        self.b = nn.Conv2d(n, 2 * n, 3, padding=1, bias=False)
        self.mix = nn.Conv2d(3 * n, n, 3, stride=2, padding=1)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        h = F.relu(self.stem(img))
        x = torch.cat([F.relu(self.a(h)), F.relu(self.b(h))], dim=1)
        return self.head(F.relu(self.mix(x)).mean((2, 3)))


WRITTEN = """width n = 16
dim C = 3
dim S = 8
dim k = 3
dim one = 1
dim n2 = 2 * n
dim K = 10
input img : image[C, S, S]
param K0 : [n, C, k, k]
param A : [n, n, one, one]
param B : [n2, n, k, k]
param M1 : [n, n, k, k]
param M2 : [n, n2, k, k]
param m : [n] = 0
param W : [K, n]
h = relu(K0 @ img)
y = relu(conv(M1, relu(A @ h), 2, 1, 1, 1, 1, 1) + conv(M2, relu(B @ h), 2, 1, 1, 1, 1, 1) + m)
output z = W @ global_pool(y)
"""
NAMES = {"stem_weight": "K0", "a_weight": "A", "b_weight": "B", "mix_weight_cols0": "M1",
         "mix_weight_cols1": "M2", "mix_bias": "m", "head_weight": "W"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Cat, (16, 32), images)


def test_a_conv_of_concatenated_images_is_the_sum_of_its_kernels_blocks(traced):
    assert "param mix_weight_cols1 : [n, n_x2, f3, f3]" in traced.source
    assert "conv(mix_weight_cols0, relu_1, 2, 1, 1, 1, 1, 1) + conv(mix_weight_cols1, " \
           "relu_2, 2, 1, 1, 1, 1, 1) + mix_bias" in traced.source


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_concatenation_derives_what_the_written_sum_derives(traced, optimizer):
    got = tp.derive(traced.program, optimizer).abc
    want = tp.derive(tp.parse(WRITTEN), optimizer).abc
    assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}


def test_apply_leaves_the_concatenation_bit_identical_at_the_base_width(traced):
    apply_is_bit_identical_at_base(traced, Cat, images)


class Stem(nn.Module):
    """examples/hgnet_stem.tp in torch: HGNet-v2's stem (its pad, 2x2 max pool at stride 1,
    2x2 convolutions and the concatenation into a 3x3 stride-2 convolution)."""

    def __init__(self, n):
        super().__init__()
        self.stem1 = nn.Conv2d(3, n, 3, stride=2, padding=1, bias=False)
        self.stem2a = nn.Conv2d(n, n // 2, 2, bias=False)
        self.stem2b = nn.Conv2d(n // 2, n, 2, bias=False)
        self.stem3 = nn.Conv2d(2 * n, n, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=1, ceil_mode=True)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        h = F.pad(F.relu(self.stem1(img)), (0, 1, 0, 1))
        b = F.relu(self.stem2b(F.pad(F.relu(self.stem2a(h)), (0, 1, 0, 1))))
        s = F.relu(self.stem3(torch.cat([self.pool(h), b], dim=1)))
        return self.head(s.mean((2, 3)))


STEM = {"stem1_weight": "K0", "stem2a_weight": "A", "stem2b_weight": "B",
        "stem3_weight_cols0": "K1", "stem3_weight_cols1": "K2", "head_weight": "W"}


def big_images(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def test_hgnets_stem_derives_what_examples_hgnet_stem_tp_derives():
    traced = tp.from_torch(Stem, (16, 32), big_images)
    assert "maxpool2(v_relu)" in traced.source
    got = tp.derive(traced.program, "adam").abc
    want = tp.derive(tp.parse_file(ROOT / "examples" / "hgnet_stem.tp"), "adam").abc
    assert {k: got[k] for k in STEM} == {k: want[v] for k, v in STEM.items()}
    apply_is_bit_identical_at_base(traced, Stem, big_images)


def test_the_emitted_maxpool2_is_torchs_pad_then_max_pool():
    model = load_module(emit_program(tp.parse_file(ROOT / "examples" / "hgnet_stem.tp")),
                        "hgnet_stem").Model(16, dtype=torch.float64)
    (img,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(img)
    h = v["h"].movedim(-1, -3)  # channels-last in the emitted module
    want = nn.MaxPool2d(2, stride=1, ceil_mode=True)(F.pad(h, (0, 1, 0, 1)))
    assert torch.equal(v["p"].movedim(-1, -3), want)
