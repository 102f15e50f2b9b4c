"""LeViT's attention bias, traced: a learnt table [heads, offsets] read at each (query, key)
pair's offset (|dy|, |dx|) on the square grid of the image's tokens
(``attention_biases[:, attention_bias_idxs]``, transformers' LevitAttention) and added to the
logits becomes the language's ``R @ g`` with ``input g : grid_offsets[T, B]`` (ops_relative.py).
Oracles: the emitted program computes the model's output (float64; the bias drawn at random, so
a pair read at another offset, or a head at another's row, would differ); the table derives as
a lookup of one of B offsets (init Θ(1), Adam LR Θ(1), as T5's bias), its rows one per head,
so with heads of 16 it grows with the width; examples/levit.tp derives what the traced
counterpart derives. LeViT's subsampling attention (queries the grid subsampled, keys every
token) is ``grid_offsets[S, T, B, s]``, checked the same way. Near misses (ids that vary per
example, ids the network computes, ids of another layout, the bias scaled) are refused at
their line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"
SIDE = 4  # a 16 x 16 image in patches of 4: a 4 x 4 grid of tokens


def levit_index(side):  # LevitAttention.__init__'s attention_bias_idxs, as transformers builds it
    points = list(itertools.product(range(side), range(side)))
    offsets, indices = {}, []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            offsets.setdefault(offset, len(offsets))
            indices.append(offsets[offset])
    return torch.LongTensor(indices).view(len(points), len(points)), len(offsets)


class Attention(nn.Module):
    """LevitAttention's forward (a fused q, k, v per head, hardswish before the projection);
    ``variant`` breaks what the recogniser must see."""

    def __init__(self, n, variant=""):
        super().__init__()
        self.variant, self.heads, self.dh = variant, n // 16, 16
        self.qkv, self.proj = nn.Linear(n, 3 * n), nn.Linear(n, n)
        index, offsets = levit_index(SIDE)
        if variant == "layout":  # the offsets numbered column-major: another table entry
            index = index.view(SIDE, SIDE, SIDE, SIDE).transpose(0, 1).transpose(2, 3)
            index = index.reshape(SIDE * SIDE, SIDE * SIDE)
        if variant == "per_example":  # the ids given once per example of a batch of 2
            index = index.expand(2, -1, -1)
        # drawn at random (LeViT's are zeros) so that a pair read at another offset differs
        self.biases = nn.Parameter(torch.randn(self.heads, offsets))
        self.register_buffer("idxs", index, persistent=False)
        if variant == "computed":
            self.pick = nn.Linear(n, offsets)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, self.heads, -1).split(self.dh, dim=3)
        q, k, v = (z.permute(0, 2, 1, 3) for z in (q, k, v))
        ids = self.idxs
        if self.variant == "computed":  # ids the network computes from the tokens
            ids = self.pick(x).argmax(-1)[0][:, None].expand(t, t)
        bias = self.biases[:, ids]
        if self.variant == "scaled":  # the bias scaled before it joins the logits
            bias = bias * 2.0
        a = (q @ k.transpose(-2, -1) * self.dh**-0.5 + bias).softmax(dim=-1)
        return self.proj(F.hardswish((a @ v).transpose(1, 2).reshape(b, t, -1)))


class Subsample(nn.Module):
    """LevitAttentionSubsample's forward: the queries the grid's every other row and column
    (LevitSubsample, stride 2), the keys and values every token, the bias at each pair's
    (|qy·2 - ky|, |qx·2 - kx|)."""

    def __init__(self, n, side=SIDE):
        super().__init__()
        self.heads, self.dh, self.side = n // 16, 16, side
        self.kv, self.q, self.proj = nn.Linear(n, 2 * n), nn.Linear(n, n), nn.Linear(n, n)
        points = list(itertools.product(range(side), range(side)))
        out = list(itertools.product(range((side + 1) // 2), range((side + 1) // 2)))
        offsets, indices = {}, []
        for p1 in out:
            for p2 in points:
                offset = (abs(p1[0] * 2 - p2[0]), abs(p1[1] * 2 - p2[1]))
                offsets.setdefault(offset, len(offsets))
                indices.append(offsets[offset])
        self.biases = nn.Parameter(torch.randn(self.heads, len(offsets)))
        self.register_buffer("idxs", torch.LongTensor(indices).view(len(out), -1), persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        k, v = self.kv(x).view(b, t, self.heads, -1).split(self.dh, dim=3)
        k, v = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        q = self.q(subsample(x, self.side)).view(b, -1, self.heads, self.dh).permute(0, 2, 1, 3)
        a = (q @ k.transpose(-2, -1) * self.dh**-0.5 + self.biases[:, self.idxs]).softmax(-1)
        return self.proj(F.hardswish((a @ v).transpose(1, 2).reshape(b, -1, c)))


def subsample(x, side=SIDE):  # LevitSubsample's, stride 2
    b, _, c = x.shape
    return x.view(b, side, side, c)[:, ::2, ::2].reshape(b, -1, c)


class LevitLike(nn.Module):
    """examples/levit.tp in torch: a patch embedding of the image's 4 x 4 patches, a block of
    LeViT's attention (its bias on the grid) and a hardswish MLP, the tokens' mean and a
    classifier."""

    def __init__(self, n, variant=""):
        super().__init__()
        self.embed = nn.Conv2d(3, n, 4, stride=4)
        if variant == "stem":  # LeViT's: strided convolutions, the image's pixels as tokens
            self.embed = nn.Sequential(
                nn.Conv2d(3, n // 2, 2, stride=2), nn.Hardswish(), nn.Conv2d(n // 2, n, 2, stride=2)
            )
        self.norm1, self.norm2, self.norm = nn.LayerNorm(n), nn.LayerNorm(n), nn.LayerNorm(n)
        self.variant, self.attn = variant, Attention(n, variant)
        self.up, self.down = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.head = nn.Linear(n, 10)
        # subsample: the tokens' every other row and column, then a layer (LevitSubsample);
        # subsample_attention: LeViT's attention of queries so subsampled
        # (odd: on a 3 x 3 grid, whose subsample keeps its last row and column)
        self.last = (
            Subsample(n, 3 if variant == "odd" else SIDE)
            if variant in ("subsample_attention", "odd")
            else nn.Linear(n, n)
        )

    def forward(self, img):
        x = self.embed(img).flatten(2).transpose(1, 2)
        if self.variant != "odd":  # (the grid's own attention is LeViT's of a 4 x 4 grid)
            x = x + self.attn(self.norm1(x))
            x = x + self.down(F.hardswish(self.up(self.norm2(x))))
        if self.variant == "subsample":
            x = self.last(subsample(x))
        if self.variant in ("subsample_attention", "odd"):
            x = self.last(x)
        return self.head(self.norm(x).mean(1))


def images(model=None):
    return (torch.randn(2, 3, 4 * SIDE, 4 * SIDE, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def levit():
    return tp.from_torch(LevitLike, (32, 64), images)


@pytest.mark.slow
def test_the_bias_traces_to_what_the_model_computes(levit):
    # the transformers' ids are the emitted module's: a pair read at another offset (or a
    # head at another's row) changes the logits, the bias drawn at random
    assert "input rel : grid_offsets[T, f16]" in levit.source
    traced_computes_the_model(levit, LevitLike, images)


@pytest.mark.parametrize(("side", "stride"), [(4, 1), (7, 1), (4, 2), (7, 2), (7, 3)])
def test_the_emitted_offsets_are_transformers_ids(side, stride):
    # LevitAttention's and LevitAttentionSubsample's attention_bias_idxs, numbered in the
    # order their loops first meet each offset, against the emitted module's _grid_offsets
    from tensorprog.emit.templates import HELPERS

    space = {"torch": torch, "math": __import__("math")}
    exec("\n".join(HELPERS["_grid_offsets"]), space)  # noqa: S102 - the emitted helper
    out = (side - 1) // stride + 1
    points = list(itertools.product(range(side), range(side)))
    offsets, indices = {}, []
    for p1 in itertools.product(range(out), range(out)):
        for p2 in points:
            offset = (abs(p1[0] * stride - p2[0]), abs(p1[1] * stride - p2[1]))
            indices.append(offsets.setdefault(offset, len(offsets)))
    want = torch.tensor(indices).view(out * out, side * side)
    got = space["_grid_offsets"](out * out, side * side, side * side, stride, None)
    assert len(offsets) == side * side and torch.equal(got, want)


@pytest.mark.slow
def test_the_bias_over_an_images_pixels_as_tokens_computes_the_model():
    # LeViT's stem: the grid's tokens are pixels of a convolution's output, tokens(h, T), so
    # the offsets' sequence is that dim, not the patches' T
    def build(n):
        return LevitLike(n, "stem")

    traced = tp.from_torch(build, (32, 64), images)
    assert "input rel : grid_offsets[f16, f16]" in traced.source
    traced_computes_the_model(traced, build, images)


@pytest.mark.slow
def test_queries_subsampled_on_the_grid_trace_to_what_the_model_computes():
    # LevitSubsample's x.view(B, r, r, C)[:, ::2, ::2].reshape(B, -1, C): the grid's every
    # other row and column, as tokens of a sequence of their own
    def build(n):
        return LevitLike(n, "subsample")

    traced = tp.from_torch(build, (32, 64), images)
    assert "tokens(subsample(image(" in traced.source
    traced_computes_the_model(traced, build, images)


@pytest.mark.slow
def test_the_subsampling_attentions_bias_traces_to_what_the_model_computes():
    # LevitAttentionSubsample: queries the grid's every other row and column, keys every
    # token, the bias at (|2·qy - ky|, |2·qx - kx|): grid_offsets[S, T, B, 2], pairs of two
    # sequences; a pair read at another offset would differ (the table drawn at random)
    def build(n):
        return LevitLike(n, "subsample_attention")

    traced = tp.from_torch(build, (32, 64), images)
    assert "grid_offsets[f4, T, f16, 2]" in traced.source
    traced_computes_the_model(traced, build, images)
    d = tp.derive(tp.parse_file(EXAMPLES / "levit.tp"), "adam")
    assert abc_by_target(traced, "adam")["last.biases"] == (
        d.abc["Rs"].a,
        d.abc["Rs"].b,
        d.abc["Rs"].c,
    )


@pytest.mark.slow
def test_an_odd_grids_subsampling_attention_traces_to_what_the_model_computes():
    # a 3 x 3 grid subsampled by 2 keeps rows and columns 0 and 2 (LeViT's 7 x 7 grid at 224
    # pixels gives 4 x 4): its queries, 2 x 2, and their offsets to the 9 keys
    def build(n):
        return LevitLike(n, "odd")

    def odd_images(model=None):
        return (torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)),)

    traced = tp.from_torch(build, (32, 64), odd_images)
    assert "grid_offsets[f4, T, f9, 2]" in traced.source
    traced_computes_the_model(traced, build, odd_images)


@pytest.mark.slow
def test_the_table_derives_as_a_lookup_of_one_offset_per_head(levit):
    abc = abc_by_target(levit, "adam")
    # one row per head (heads of 16: n/16 rows), fan-in the 16 offsets: an embedding's
    # exponents, init Θ(1) and Adam LR Θ(1), as T5's table
    assert "param attn_biases : [n_by16, f16]" in levit.source
    assert abc["attn.biases"] == (0, 0, 0)
    d = tp.derive(tp.parse_file(EXAMPLES / "levit.tp"), "adam")
    written = {
        "attn.biases": "R",
        "attn.qkv.weight": "Wq",
        "attn.proj.weight": "Wo",
        "up.weight": "Wi",
        "down.weight": "Wp",
        "head.weight": "U",
    }
    assert {k: abc[k] for k in written} == {
        k: (d.abc[v].a, d.abc[v].b, d.abc[v].c) for k, v in written.items()
    }


@pytest.mark.parametrize(
    ("variant", "match", "line"),
    [
        ("layout", r"constant ids \[16, 16\] other than LeViT's offsets", "self.biases[:, ids]"),
        pytest.param(
            "per_example",
            r"constant ids of shape \[2, 16, 16\], not one id per \(query, key\) "
            r"pair",
            "self.biases[:, ids]",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "scaled",
            r"a relative position bias \(LeViT's: a \[heads, offsets\] table read at each "
            r"token pair's offset on a grid of 16 tokens\) used other than added to attention "
            r"logits \(by mul\)",
            "bias = bias * 2.0",
            marks=pytest.mark.slow,
        ),
        # ids the network computes: refused where they are made, no lookup of a constant
        pytest.param(
            "computed", r"cannot trace the op argmax", "argmax(-1)", marks=pytest.mark.slow
        ),
    ],
)
def test_near_misses_are_refused_at_their_line(variant, match, line):
    with pytest.raises(TensorProgError, match=match) as err:
        tp.from_torch(lambda n: LevitLike(n, variant), (32, 64), images)
    assert line in str(err.value)


class _GivenIds(nn.Module):
    """LevitLike whose bias ids the forward is given: at the example, LeViT's own."""

    def __init__(self, n):
        super().__init__()
        self.inner = LevitLike(n)

    def forward(self, img, ids):
        self.inner.attn.idxs = ids
        return self.inner(img)


def test_ids_given_to_the_forward_are_refused_though_the_example_is_levits():
    # the emitted module builds the grid's ids itself: ids fed at each call (here LeViT's at
    # the example, any others later) would be dropped
    with pytest.raises(TensorProgError, match="ids given to the forward") as err:
        tp.from_torch(_GivenIds, (32, 64), lambda m=None: (*images(), levit_index(SIDE)[0]))
    assert "self.biases[:, ids]" in str(err.value)
