"""Norms over images traced: ``nn.GroupNorm(1, c)`` as the language's ``groupnorm(h)`` (each
image normalised over its channels and pixels together), PoolFormer's pooling mixer
``nn.AvgPool2d(3, 1, 1, count_include_pad=False)`` as ``avgpool3(h)``, a layer scale given
two axes of 1 (``g.unsqueeze(-1).unsqueeze(-1) * h``) as a gain of the channels, and ConvNeXt
V2's Global Response Normalization as ``grn(h)``. Oracles: the hand-written examples
(examples/poolformer.tp, examples/convnextv2.tp) derive the same exponents as their torch
counterparts; the emitted helpers compute what torch's layers (and HF's GRN) compute; apply
leaves the model bit-identical at the base width. A layer norm (or RMSNorm) over the tokens and
features together, ``F.layer_norm(x, (T, C))``, is refused at its line: the language's norms
are over the last axis alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402
from tensorprog.engine.derivation import zero_constants  # noqa: E402
from tensorprog.engine.exponents import INF  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402
from tensorprog.fromtorch.check import coord_check  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class PoolFormer(nn.Module):
    """examples/poolformer.tp in torch, laid out as HF's PoolFormer block."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm1, self.norm2, self.norm = (nn.GroupNorm(1, width) for _ in range(3))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.scale1 = nn.Parameter(1e-5 * torch.ones(width))
        self.scale2 = nn.Parameter(1e-5 * torch.ones(width))
        self.fc1 = nn.Conv2d(width, 4 * width, 1)
        self.fc2 = nn.Conv2d(4 * width, width, 1)
        self.head = nn.Linear(width, 10)

    def forward(self, img):
        h0 = self.stem(img)
        u1 = self.norm1(h0)
        h1 = h0 + self.scale1.unsqueeze(-1).unsqueeze(-1) * (self.pool(u1) - u1)
        mlp = self.fc2(F.gelu(self.fc1(self.norm2(h1))))
        h2 = h1 + self.scale2.unsqueeze(-1).unsqueeze(-1) * mlp
        return self.head(self.norm(h2).mean((-2, -1)))


# traced param -> examples/poolformer.tp's
POOLFORMER = {"stem_weight": "K0", "stem_bias": "c0", "norm1_weight": "g1", "norm1_bias": "b1",
              "scale1": "s1", "norm2_weight": "g2", "norm2_bias": "b2", "fc1_weight": "P1",
              "fc1_bias": "c1", "fc2_weight": "P2", "fc2_bias": "c2", "scale2": "s2",
              "norm_weight": "gf", "norm_bias": "bf", "head_weight": "W", "head_bias": "bW"}


class GRN(nn.Module):
    """HF's ConvNextV2GRN, on a channels-last image."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (x * n) + self.bias + x


class ConvNeXtV2(nn.Module):
    """examples/convnextv2.tp in torch, laid out as HF's ConvNeXt V2 block (channels last)."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.pwconv1 = nn.Linear(width, 4 * width)
        self.grn = GRN(4 * width)
        self.pwconv2 = nn.Linear(4 * width, width)
        self.final = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, img):
        h0 = self.stem(img)
        x = self.norm(self.dwconv(h0).permute(0, 2, 3, 1))
        x = self.pwconv2(self.grn(F.gelu(self.pwconv1(x))))
        h1 = h0 + x.permute(0, 3, 1, 2)
        return self.head(self.final(h1.mean((-2, -1))))


CONVNEXTV2 = {"stem_weight": "K0", "stem_bias": "c0", "dwconv_weight": "D", "dwconv_bias": "d",
              "norm_weight": "g1", "norm_bias": "b1", "pwconv1_weight": "A", "pwconv1_bias": "a",
              "grn_weight": "gg", "grn_bias": "gb", "pwconv2_weight": "B", "pwconv2_bias": "bB",
              "final_weight": "gf", "final_bias": "bf", "head_weight": "W", "head_bias": "bW"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def poolformer():
    return tp.from_torch(PoolFormer, (8, 16), images)


@pytest.fixture(scope="module")
def convnextv2():
    return tp.from_torch(ConvNeXtV2, (8, 16), images)


def test_a_poolformer_block_traces_to_groupnorm_avgpool3_and_channel_gains(poolformer):
    src = poolformer.source
    assert "group_norm = norm1_weight * groupnorm(conv2d) + norm1_bias" in src
    assert "avgpool3(group_norm)" in src
    assert "scale1 * " in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_poolformer_derives_what_examples_poolformer_tp_derives(poolformer,
                                                                             optimizer):
    traced = tp.derive(poolformer.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "poolformer.tp"), optimizer).abc
    assert set(traced) == set(POOLFORMER)
    assert {k: traced[k] for k in POOLFORMER} == {k: written[v] for k, v in POOLFORMER.items()}


def test_apply_leaves_the_poolformer_bit_identical_at_the_base_width(poolformer):
    apply_is_bit_identical_at_base(poolformer, PoolFormer, images)


def test_hf_grn_traces_to_grn_with_its_gain_and_bias_as_vectors_of_the_channels(convnextv2):
    src = convnextv2.source
    assert "param grn_weight : [n_x4] = 0" in src  # torch's [1, 1, 1, 4n], its axes of 1 dropped
    assert "= grn(v_gelu)" in src
    assert "grn_weight * mul" in src and "+ grn_bias" in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_convnextv2_derives_what_examples_convnextv2_tp_derives(convnextv2,
                                                                             optimizer):
    traced = tp.derive(convnextv2.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "convnextv2.tp"), optimizer).abc
    assert set(traced) == set(CONVNEXTV2)
    assert {k: traced[k] for k in CONVNEXTV2} == {k: written[v] for k, v in CONVNEXTV2.items()}


def test_apply_leaves_the_convnextv2_bit_identical_at_the_base_width(convnextv2):
    apply_is_bit_identical_at_base(convnextv2, ConvNeXtV2, images)


def test_the_check_expects_a_product_of_zero_initialised_params_to_be_exactly_zero(convnextv2):
    # HF's GRN gain and bias start at 0, so gg * grn(u) + gb is exactly 0 at init at every
    # width: the check judges the program with b = oo for them (as a zero-initialised readout),
    # and for the layernorms' zero biases; params of a random or nonzero init keep µP's b
    abc = tp.derive(convnextv2.program, "adam").abc
    zeroed = {p for p, x in zero_constants(convnextv2.program, abc).items() if x.b is INF}
    assert zeroed == {"grn_weight", "grn_bias", "norm_bias", "final_bias"}


@pytest.mark.slow
def test_the_coordinate_check_passes_the_convnextv2_under_mup():
    # widths 16-64, one seed, 3 Adam steps on 4 random 8x8 images: before the zero-initialised
    # GRN gain was read as such, its product's init (exactly 0, slope -inf) failed the check
    mup = MuP(tp.from_torch(ConvNeXtV2, (8, 16), images), "adam")
    good = coord_check(mup, (16, 32, 64), seeds=(0,), batch=4, tolerance=0.25)
    assert good.passed, good


def _helper(name):
    space = {"torch": torch}
    exec("\n".join(HELPERS[name]), space)  # noqa: S102 - the emitter's own template
    return space[name]


def test_the_emitted_groupnorm_and_avgpool3_are_torchs_layers():
    gn, pool3 = _helper("_groupnorm"), _helper("_avgpool3")
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    last = x.movedim(1, -1)
    module = nn.GroupNorm(1, 5, affine=False).double()
    torch.testing.assert_close(gn(last).movedim(-1, 1), module(x), rtol=1e-12, atol=1e-12)
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(pool3(last).movedim(-1, 1), pool(x), rtol=1e-12, atol=1e-12)
    # a corner pixel averages its 4 neighbours inside the image, not 9 with the padding's zeros
    torch.testing.assert_close(pool3(last)[:, 0, 0], last[:, :2, :2].mean((1, 2)))


def test_the_emitted_grn_is_hfs_without_its_gain_bias_and_residual():
    grn = _helper("_grn")
    x = torch.randn(2, 5, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hf = GRN(6).double()
    with torch.no_grad():
        hf.weight.fill_(1.0)
    torch.testing.assert_close(grn(x), hf(x) - x, rtol=1e-12, atol=1e-12)
    # positively homogeneous: grn(c x) = c grn(x), its size passes through (eps aside)
    torch.testing.assert_close(grn(3 * x), 3 * grn(x), rtol=1e-6, atol=1e-9)


class WholeNorm(nn.Module):
    """A norm over the last two axes together, the tokens and the features."""

    def __init__(self, n, fn):
        super().__init__()
        self.fn = fn
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        return self.out(x + self.fn(x, (idx.shape[1], x.shape[-1])))


@pytest.mark.parametrize("fn", [F.layer_norm, F.rms_norm], ids=["layer_norm", "rms_norm"])
def test_a_norm_over_the_tokens_and_features_together_is_refused(fn):
    with pytest.raises(tp.TensorProgError, match=r"test_norms_trace\.py:\d+:\d+: error: cannot "
                       r"trace a (layer|rms)norm over the last 2 axes \[8, 8\] together"):
        tp.from_torch(lambda n: WholeNorm(n, fn), (8, 16),
                      lambda m: (torch.arange(16).remainder(13).view(2, 8),))
