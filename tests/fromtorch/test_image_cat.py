"""Images concatenated along their channels and read by a convolution (HGNet's stem and its
stages' aggregation), traced as the sum it equals: ``conv(cat(a, b), K) = conv(a, K[:, :c]) +
conv(b, K[:, c:])``, each block of the kernel's input channels a param of its own. Oracle: the
same network written in the language with two kernels derives the same exponents; apply leaves
the model bit-identical at the base width."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402


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
