"""Depthwise convolutions traced: ``nn.Conv2d(c, c, k, padding=k // 2, groups=c)`` becomes the
language's ``dwconv(D, h)`` with D [c, k, k]. Oracles: the hand-written examples/dwconv.tp
derives the same exponents as its torch counterpart; the emitted helper computes what torch's
grouped convolution computes (stride 1, and stride 2 as ``subsample``); apply leaves the model
bit-identical at the base width; grouped convolutions the language has no form for are refused
in the error catalogue (test_error_catalogue.py, CONV_BUILDS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base, emit_program, train_once

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class DwNet(nn.Module):
    """examples/dwconv.tp in torch: depthwise-separable residual blocks around a 2x2 pool."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.dw1 = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw1 = nn.Conv2d(width, width, 1, bias=False)
        self.dw2 = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.pw2 = nn.Conv2d(width, width, 1, bias=False)
        self.head = nn.Linear(width, 10, bias=False)

    def forward(self, img):
        h0 = F.relu(self.stem(img))
        h1 = h0 + self.pw1(F.relu(self.dw1(h0)))
        p1 = F.avg_pool2d(h1, 2)
        h2 = p1 + self.pw2(F.relu(self.dw2(p1)))
        return self.head(h2.mean((2, 3)))


# traced param -> examples/dwconv.tp's
NAMES = {"stem_weight": "K0", "dw1_weight": "D1", "dw1_bias": "b1", "pw1_weight": "P1",
         "dw2_weight": "D2", "pw2_weight": "P2", "head_weight": "W"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def dwnet():
    return tp.from_torch(DwNet, (8, 16), images)


def test_a_depthwise_conv_traces_to_dwconv_of_a_kernel_per_channel(dwnet):
    src = dwnet.source
    assert "param dw1_weight : [n, f3, f3]" in src  # torch's [n, 1, 3, 3], its 1 dropped
    assert "conv2d_1 = dwconv(dw1_weight, v_relu) + dw1_bias" in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_net_derives_what_examples_dwconv_tp_derives(dwnet, optimizer):
    traced = tp.derive(dwnet.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "dwconv.tp"), optimizer).abc
    assert set(traced) == set(NAMES)
    assert {k: traced[k] for k in NAMES} == {k: written[v] for k, v in NAMES.items()}


def test_apply_leaves_the_depthwise_net_bit_identical_at_the_base_width(dwnet):
    apply_is_bit_identical_at_base(dwnet, DwNet, images)


def _helper(name):
    space = {"torch": torch}
    exec("\n".join(HELPERS[name]), space)  # noqa: S102 - the emitter's own template
    return space[name]


def test_the_emitted_dwconv_is_torchs_depthwise_convolution_at_stride_1_and_2():
    # float64, fixed seed: the channels-last helper (and subsample of it at stride 2) against
    # F.conv2d(groups=c) on even and odd image sizes, 3x3 and 5x5 kernels, to 1e-12
    dw, sub = _helper("_dwconv"), _helper("_subsample")
    g = torch.Generator().manual_seed(0)
    for size, k in ((8, 3), (7, 5)):
        x = torch.randn(2, 4, size, size, generator=g, dtype=torch.float64)
        w = torch.randn(4, 1, k, k, generator=g, dtype=torch.float64)
        for stride in (1, 2):
            want = F.conv2d(x, w, stride=stride, padding=k // 2, groups=4)
            got = dw(x.movedim(1, -1), w[:, 0])
            got = (got if stride == 1 else sub(got)).movedim(-1, 1)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_strided_depthwise_conv_is_subsample_of_the_stride_1_one():
    class Strided(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.dw = nn.Conv2d(width, width, 5, stride=2, padding=2, groups=width)
            self.head = nn.Linear(width, 10)

        def forward(self, img):
            return self.head(F.relu(self.dw(F.relu(self.stem(img)))).mean((2, 3)))

    src = tp.from_torch(Strided, (8, 16), images).source
    assert "conv2d_1_full = dwconv(dw_weight, v_relu) + dw_bias" in src
    assert "conv2d_1 = subsample(conv2d_1_full)" in src


class NextBlock(nn.Module):
    """ConvNeXt's block after a stride-1 stem: a 7x7 depthwise convolution, then channels-last
    (permute(0, 2, 3, 1)) a LayerNorm, two linear layers and a layer scale, permuted back."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.pw1 = nn.Linear(width, 4 * width)
        self.pw2 = nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(0.1 * torch.ones(width))
        self.head = nn.Linear(width, 10)

    def forward(self, img):
        x = self.stem(img)
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(h))))
        return self.head((x + h.permute(0, 3, 1, 2)).mean((2, 3)))


# the same block written by hand: channels-last is the emitted module's own image layout, so a
# LayerNorm and linear layers over the channels are the language's layernorm and W @ h of an
# image, per pixel
NEXT = """width n = 8
dim C = 3
dim S = 8
dim k = 3
dim k7 = 7
dim m = 4 * n
dim K = 10
input img : image[C, S, S]
param K0 : [n, C, k, k]
param b0 : [n]
param D : [n, k7, k7]
param bD : [n]
param g : [n] = 1
param bg : [n] = 0
param W1 : [m, n]
param b1 : [m]
param gamma : [n] = 0.1
param W2 : [n, m]
param b2 : [n]
param W : [K, n]
param bW : [K]
x = K0 @ img + b0
h = g * layernorm(dwconv(D, x) + bD) + bg
x2 = x + gamma * (W2 @ gelu(W1 @ h + b1) + b2)
output y = W @ global_pool(x2) + bW
"""
NEXT_NAMES = {"stem_weight": "K0", "stem_bias": "b0", "dwconv_weight": "D", "dwconv_bias": "bD",
              "norm_weight": "g", "norm_bias": "bg", "pw1_weight": "W1", "pw1_bias": "b1",
              "gamma": "gamma", "pw2_weight": "W2", "pw2_bias": "b2", "head_weight": "W",
              "head_bias": "bW"}


def test_a_channels_last_convnext_block_traces_per_pixel_and_derives_as_written():
    traced = tp.from_torch(NextBlock, (8, 16), images)
    assert "layer_norm = norm_weight * layernorm(conv2d_1) + norm_bias" in traced.source
    assert "linear = pw1_weight @ layer_norm + pw1_bias" in traced.source
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(NEXT, "next.tp"), optimizer).abc
        assert {k: got[k] for k in NEXT_NAMES} == {k: want[v] for k, v in NEXT_NAMES.items()}
    apply_is_bit_identical_at_base(traced, NextBlock, images)


class NextStem(NextBlock):
    """ConvNeXt's own stem before the block: a 4x4 convolution of stride 4 (its stride equals
    its kernel, as a ViT's patch embedding's does) read as an image, by a channels-first
    LayerNorm (permuted to channels-last and back) and then the depthwise convolution."""

    def __init__(self, width):
        super().__init__(width)
        self.stem = nn.Conv2d(3, width, 4, stride=4)
        self.stem_norm = nn.LayerNorm(width)

    def forward(self, img):
        x = self.stem_norm(self.stem(img).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(h))))
        return self.head((x + h.permute(0, 3, 1, 2)).mean((2, 3)))


# NextStem by hand: the stem is conv(K0, img, 4, 0), an image of 2x2 pixels, not patch tokens
NEXT_STEM = NEXT.replace("dim k = 3", "dim k = 4").replace(
    "x = K0 @ img + b0", "x = gs * layernorm(conv(K0, img, 4, 0) + b0) + bs").replace(
    "param g : [n] = 1", "param gs : [n] = 1\nparam bs : [n] = 0\nparam g : [n] = 1")


def test_a_stride_4_stem_read_as_an_image_is_a_convolution_not_a_patch_embedding():
    traced = tp.from_torch(NextStem, (8, 16), images)
    assert "input img : image[" in traced.source and "patches" not in traced.source
    assert "conv(stem_weight, img, 4, 0, 0, 0, 0, 1) + stem_bias" in traced.source
    assert "dwconv(dwconv_weight, " in traced.source
    names = {**NEXT_NAMES, "stem_norm_weight": "gs", "stem_norm_bias": "bs"}
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(NEXT_STEM, "next_stem.tp"), optimizer).abc
        assert {k: got[k] for k in names} == {k: want[v] for k, v in names.items()}
    apply_is_bit_identical_at_base(traced, NextStem, images)


class MobileBlock(nn.Module):
    """MobileNet's: a TF 'SAME' pad (one more row and column at the bottom and right) before a
    3x3 stride-2 convolution, full in the stem and depthwise after it, each followed by ReLU6,
    then a 1x1 convolution, and an in-place dropout before the classifier (the value itself in
    the eval-mode graph)."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2)
        self.dw = nn.Conv2d(width, width, 3, stride=2, groups=width)
        self.pw = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, 10)
        self.drop = nn.Dropout(0.0, inplace=True)

    def forward(self, img):
        h = F.relu6(self.stem(F.pad(img, (0, 1, 0, 1))))
        h = F.relu6(self.dw(F.pad(h, (0, 1, 0, 1))))
        return self.head(self.drop(F.relu6(self.pw(h)).mean((2, 3))))


MOBILE = """width n = 8
dim C = 3
dim S = 8
dim k = 3
dim one = 1
dim K = 10
input img : image[C, S, S]
param K0 : [n, C, k, k]
param b0 : [n]
param D : [n, k, k]
param bD : [n]
param P : [n, n, one, one]
param bP : [n]
param W : [K, n]
param bW : [K]
h0 = relu6(conv(K0, img, 2, 0, 1, 0, 1, 1) + b0)
h1 = relu6(dwconv(D, h0, 2, 0, 1, 0, 1, 1) + bD)
output y = W @ global_pool(relu6(P @ h1 + bP)) + bW
"""
MOBILE_NAMES = {"stem_weight": "K0", "stem_bias": "b0", "dw_weight": "D", "dw_bias": "bD",
                "pw_weight": "P", "pw_bias": "bP", "head_weight": "W", "head_bias": "bW"}


def test_a_zero_pad_before_a_strided_depthwise_conv_is_its_geometry():
    traced = tp.from_torch(MobileBlock, (8, 16), images)
    assert "conv2d_1 = dwconv(dw_weight, v_relu6, 2, 0, 1, 0, 1, 1) + dw_bias" in traced.source
    assert traced.program.spatial["conv2d_1"] == (2, 2)  # 8 -> 4 -> 2 pixels, as torch's
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(tp.parse(MOBILE, "mobile.tp"), optimizer).abc
        assert {k: got[k] for k in MOBILE_NAMES} == {k: want[v] for k, v in MOBILE_NAMES.items()}
    apply_is_bit_identical_at_base(traced, MobileBlock, images)
    emitted = emit_program(traced.program)  # its pixels follow the geometry: it trains
    assert "_dwconv_geometry(" in emitted.source
    model, _ = train_once(load_module(emitted, "mobile_block"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_emitted_dwconv_of_a_geometry_is_torchs_padded_depthwise_convolution():
    # float64, fixed seed: the channels-last helper against F.pad then F.conv2d(groups=c), on
    # odd and even sizes, asymmetric pads, strides 1-3 and dilation 2, to 1e-12
    dw = _helper("_dwconv_geometry")
    g = torch.Generator().manual_seed(0)
    for size, k, stride, pads, dilation in ((8, 3, 2, (0, 1, 0, 1), 1), (7, 3, 1, (2, 1, 0, 3), 2),
                                            (9, 5, 3, (1, 1, 2, 2), 1)):
        x = torch.randn(2, 4, size, size, generator=g, dtype=torch.float64)
        w = torch.randn(4, 1, k, k, generator=g, dtype=torch.float64)
        t, b, left, r = pads
        want = F.conv2d(F.pad(x, (left, r, t, b)), w, stride=stride, dilation=dilation, groups=4)
        got = dw(x.movedim(1, -1), w[:, 0], stride, pads, dilation).movedim(-1, 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
