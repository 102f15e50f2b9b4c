"""An image's pixels read as tokens and tokens laid back out as an image, traced: a pyramid
vision transformer's ``x.flatten(2).transpose(1, 2)`` becomes ``tokens(h, T)`` and
``t.transpose(1, 2).reshape(B, C, H, W)`` becomes ``image(t, H, W)`` (and SwiftFormer's
channels-last ``permute(0, 2, 3, 1).reshape(B, H·W, C)`` and back). Oracles: the hand-written
examples/pixel_tokens.tp derives the same exponents as its torch counterpart, traced; the emitted
program computes the model's output at the base width; apply leaves the model bit-identical
there; a view of pixels the language has no form for is refused at its line. Tokens viewed as
their grid [B, H, W, C] and reaching a permute to channels-first through a clone, a dropout, or
a layer or function at each pixel are that image too (not Swin's windows)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class PvtStage(nn.Module):
    """examples/pixel_tokens.tp in torch: PVTv2's overlapping patch embedding, attention with a
    spatial reduction of its keys and values, and an MLP with a depthwise convolution."""

    def __init__(self, width):
        super().__init__()
        n = width
        self.stem = nn.Conv2d(3, n, 7, stride=4, padding=3)
        self.norm0 = nn.LayerNorm(n, bias=False)
        self.q = nn.Linear(n, n, bias=False)
        self.sr = nn.Conv2d(n, n, 2, stride=2)
        self.norm_r = nn.LayerNorm(n, bias=False)
        self.k = nn.Linear(n, n, bias=False)
        self.v = nn.Linear(n, n, bias=False)
        self.o = nn.Linear(n, n, bias=False)
        self.norm1 = nn.LayerNorm(n, bias=False)
        self.fc1 = nn.Linear(n, 4 * n, bias=False)
        self.dw = nn.Conv2d(4 * n, 4 * n, 3, padding=1, groups=4 * n)
        self.fc2 = nn.Linear(4 * n, n, bias=False)
        self.norm_f = nn.LayerNorm(n, bias=False)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        b = img.shape[0]
        x = self.stem(img)
        c, h, w = x.shape[1:]
        t = self.norm0(x.flatten(2).transpose(1, 2))
        r = self.sr(t.transpose(1, 2).reshape(b, c, h, w))
        r = self.norm_r(r.flatten(2).transpose(1, 2))
        # one head of every channel, transposed or permuted to (B, 1, T, C): PVTv2's and
        # SegFormer's first stage
        q = self.q(t).view(b, h * w, 1, -1).transpose(1, 2)
        k = self.k(r).view(b, r.shape[1], 1, -1).permute(0, 2, 1, 3)
        v = self.v(r).view(b, r.shape[1], 1, -1).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, scale=8 / c)
        a = t + self.o(att.transpose(1, 2).reshape(b, h * w, c))
        # SwiftFormer's channels-last forms of the same views: [B, T, C] as [B, H, W, C], then
        # channels first; [B, C, H, W] channels-last, then [B, H·W, C]
        u = self.fc1(self.norm1(a)).reshape(b, h, w, 4 * c).permute(0, 3, 1, 2)
        z = self.dw(u).permute(0, 2, 3, 1).reshape(b, h * w, 4 * c)
        m = a + self.fc2(F.gelu(z))
        return self.head(self.norm_f(m.mean(1)))


# traced param -> examples/pixel_tokens.tp's
NAMES = {"stem_weight": "K0", "stem_bias": "b0", "norm0_weight": "g0", "q_weight": "Wq",
         "sr_weight": "R", "sr_bias": "bR", "norm_r_weight": "gR", "k_weight": "Wk",
         "v_weight": "Wv", "o_weight": "Wo", "norm1_weight": "g1", "fc1_weight": "Wi",
         "dw_weight": "D", "dw_bias": "bD", "fc2_weight": "Wp", "norm_f_weight": "gf",
         "head_weight": "Wc"}


def images(model=None):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def pvt():
    return tp.from_torch(PvtStage, (8, 16), images)


def test_flattened_pixels_trace_to_tokens_and_back_to_image(pvt):
    src = pvt.source
    assert "= tokens(conv2d, f64)" in src  # the stem's 8 x 8 pixels as 64 tokens
    assert "= image(layer_norm, f8, f8)" in src  # and back, for the spatial reduction
    assert "= tokens(conv2d_1, f16)" in src  # its 4 x 4 output: the keys' 16 tokens
    assert "= image(linear_4, f8, f8)" in src  # channels-last, then permuted
    assert "= tokens(conv2d_2, f64)" in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_stage_derives_what_examples_pixel_tokens_tp_derives(pvt, optimizer):
    traced = tp.derive(pvt.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "pixel_tokens.tp"), optimizer).abc
    assert {k: traced[k] for k in NAMES} == {k: written[v] for k, v in NAMES.items()}


def test_the_traced_program_computes_the_stage_at_the_base_width(pvt):
    # pixels read as tokens in another order, or keys from other pixels, would differ here
    traced_computes_the_model(pvt, PvtStage, images)


def test_apply_leaves_the_stage_bit_identical_at_the_base_width(pvt):
    apply_is_bit_identical_at_base(pvt, PvtStage, images)


class GridConv(nn.Module):
    """Tokens viewed as their grid, reaching a depthwise convolution by ``how``."""

    def __init__(self, n, how):
        super().__init__()
        self.how = how
        self.embed, self.l, self.norm = nn.Conv2d(3, n, 4, stride=4), nn.Linear(n, n), \
            nn.LayerNorm(n)
        self.dw = nn.Conv2d(n, n, 3, padding=1, groups=n)
        self.head = nn.Linear(n, 10)

    def forward(self, img):
        x = self.embed(img)
        b, c, h, w = x.shape
        t = self.l(x.flatten(2).transpose(1, 2))
        g = t.view(b, h, w, c)
        if self.how == "clone":
            g = g.clone().permute(0, 3, 1, 2)
        elif self.how == "dropout":
            g = F.dropout(g, 0.1, self.training).permute(0, 3, 1, 2)
        elif self.how == "linear":  # a layer at each pixel, then channels-first
            g = self.l(g).contiguous().permute(0, 3, 1, 2)
        elif self.how == "norm":  # a norm and a function at each pixel
            g = F.gelu(self.norm(g)).permute(0, 3, 1, 2)
        else:  # read twice: as it is and through a layer
            g = g.permute(0, 3, 1, 2) + self.l(g).permute(0, 3, 1, 2)
        return self.head((t + self.dw(g).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("how", ["clone", "dropout", "linear", "norm", "two"])
def test_a_grid_of_tokens_reaching_channels_first_is_an_image(how):
    def build(n):
        return GridConv(n, how).eval()

    def inputs(model=None):
        return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)

    traced = tp.from_torch(build, (8, 16), inputs)
    assert "image(linear, f4, f4)" in traced.source
    traced_computes_the_model(traced, build, inputs)


class StemPositions(nn.Module):
    """A learned table [1, T, n] added to a stem's pixels read as tokens: an overlapping
    convolution's (Hiera's 7 x 7 stride 4, ``overlap``), tokens(h, D) over a dim of the walk's,
    or a patch embedding's (stride = kernel, the patches' T: the oracle). At the base width
    16 of a 4 x 4 grid the table is [1, 16, 16]: its tokens and its features alike in size."""

    def __init__(self, n, overlap=True, batch=1, first=False):
        super().__init__()
        self.first = first  # the table [1, n, 16] added to the pixels channels first
        self.stem = nn.Conv2d(3, n, 7, stride=4, padding=3) if overlap else \
            nn.Conv2d(3, n, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(batch, n, 16) if first else
                                torch.randn(batch, 16, n))
        self.fc = nn.Linear(n, n)
        self.head = nn.Linear(n, 10)

    def forward(self, img):
        if self.first:
            h = (self.stem(img).flatten(2) + self.pos).transpose(1, 2)
        else:
            h = self.stem(img).flatten(2).transpose(1, 2) + self.pos
        return self.head(torch.relu(self.fc(h)).mean(1))


def small_images(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def stem_positions():
    return tp.from_torch(StemPositions, (16, 32), small_images)


def test_a_position_table_on_pixels_read_as_tokens_is_a_lookup_of_their_positions(
        stem_positions):
    src = stem_positions.source
    assert re.search(r"input \w+ : positions\[f16\]", src), src  # the 16 tokens, not n
    assert "param v_pos : [n, f16]" in src  # a lookup: its fan-in the tokens, finite
    traced_computes_the_model(stem_positions, StemPositions, small_images)
    for optimizer in ("adam", "sgd"):  # an input weight of finite fan-in, as the stem's kernel
        abc = tp.derive(stem_positions.program, optimizer).abc
        assert abc["v_pos"] == abc["stem_weight"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_position_table_on_pixels_derives_as_one_on_patches(stem_positions, optimizer):
    patches = tp.from_torch(lambda n: StemPositions(n, overlap=False), (16, 32), small_images)
    got, want = (tp.derive(t.program, optimizer).abc for t in (stem_positions, patches))
    assert got == want


def test_a_table_of_a_row_per_image_on_pixels_read_as_tokens_is_refused():
    # [2, T, n]: a table per image of the batch, no position table (which is one for all)
    with pytest.raises(tp.TensorProgError, match=r"a param of shape \[2, 16, 16\] added to "
                       r"per-token vectors .* an image's pixels read as tokens\)") as e:
        tp.from_torch(lambda n: StemPositions(n, batch=2), (16, 32), small_images)
    assert "test_pixel_tokens.py" in str(e.value)


def test_a_table_added_to_pixels_channels_first_is_refused():
    # [1, n, T] on [B, n, T]: at the base width 16 of 16 tokens it has a position table's
    # shape, [1, T, n], but its rows are the channels (traced as one, it was a table of n
    # positions, refused only at the end as attention's two sequences)
    with pytest.raises(tp.TensorProgError, match=r"a param of shape \[1, 16, 16\] added to "
                       r"per-token vectors") as e:
        tp.from_torch(lambda n: StemPositions(n, first=True), (16, 32), small_images)
    assert "self.stem(img).flatten(2) + self.pos" in str(e.value)
