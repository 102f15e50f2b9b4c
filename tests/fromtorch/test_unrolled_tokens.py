"""Tokens in Hiera's unrolled order and its mask-unit attention over them (fromtorch/
ops_maskunit.py): ``unroll`` views each image's grid of tokens [B, H, W, C] as its 2 x 2 stride
blocks, moves the strides into the batch and reads the batch back as one axis of tokens, so that
every block's four tokens lie T/4 apart; a max over a view's axis then pools each block. The
trace follows the reordering as a relayout of the tokens (their index moved op by op, as Swin's
windows are, ops_windows.py), attention over one unit (all of an image's tokens) as the walk's
attention with its output in the queries' order, and the max over each block as
``tokens(maxpool(image(h, H, W)), S)``. Oracles: the traced program computes the model at the
base width; the pooled query's layer and logits derive µP's exponents for Adam, as the
unpooled ones do; more units, a max over groups that are not the grid's 2 x 2 blocks, and an
op over the tokens in their order (a running sum) are refused at their line."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402


class Unrolled(nn.Module):
    """Hiera's two stages in small, its ops as transformers' modeling_hiera writes them: a 4 x 4
    grid of patches unrolled by one 2 x 2 stride, attention over its one mask unit (``units``:
    its count), then a stage entered by pooling its queries and its widened residual over each
    block (``stride``: the view that groups them), attending the first stage's tokens."""

    def __init__(self, n, heads=2, units=1, stride=4, mask=False, pool="max"):
        super().__init__()
        self.heads, self.units, self.stride, self.mask, self.pool = heads, units, stride, mask, pool
        # a causal mask over the tokens as torch holds them (unrolled)
        self.register_buffer("causal", torch.ones(16, 16, dtype=torch.bool).triu(1))
        self.stem = nn.Conv2d(3, n, 4, stride=4)
        self.norm1, self.qkv1, self.proj1 = nn.LayerNorm(n), nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.norm2, self.widen = nn.LayerNorm(n), nn.Linear(n, 2 * n)
        self.qkv2, self.proj2 = nn.Linear(n, 6 * n), nn.Linear(2 * n, 2 * n)
        self.head = nn.Linear(2 * n, 10)

    def attend(self, x, qkv, proj, pool):
        b, t, _ = x.shape
        c = proj.in_features
        u, dh = self.units, c // self.heads
        q, k, v = (
            qkv(x).reshape(b, t // u, u, 3, self.heads, dh).permute(3, 0, 4, 2, 1, 5).unbind(0)
        )
        if pool:
            q = q.view(b, self.heads, u, self.stride, t // (u * self.stride), dh).max(dim=3).values
        logits = (q * dh**-0.5) @ k.transpose(-1, -2)
        if self.mask and not pool:
            logits = logits.masked_fill(self.causal, float("-inf"))
        a = logits.softmax(dim=-1) @ v
        return proj(a.transpose(1, 3).reshape(b, -1, c))

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        b, t, c = x.shape
        x = x.view(b, 4, 4, c).view(b, 2, 2, 2, 2, c).permute(0, 2, 4, 1, 3, 5)
        x = x.flatten(0, 2).reshape(-1, t, c)
        x = x + self.attend(self.norm1(x), self.qkv1, self.proj1, False)
        h = self.norm2(x)
        wide = self.widen(h)
        grouped = wide.view(b, self.stride, -1, 2 * c)
        if self.pool == "amax":
            r = grouped.amax(dim=1)
        elif self.pool == "keepdim":  # [B, 1, T/4, C], flattened back
            r = grouped.max(dim=1, keepdim=True).values.flatten(1, 2)
        elif self.pool == "within":  # a max within each group of 4 (over the T/4 axis)
            r = grouped.max(dim=2).values
        else:
            r = grouped.max(dim=1).values
        x = r + self.attend(h, self.qkv2, self.proj2, True)
        return self.head(x.mean(1))


def images(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def unrolled():
    return tp.from_torch(Unrolled, (16, 32), images)


def test_the_pooling_of_unrolled_tokens_is_a_max_pool_of_their_grid(unrolled):
    assert unrolled.source.count("= tokens(maxpool(image(") == 2  # the residual's, the query's
    traced_computes_the_model(unrolled, Unrolled, images)
    # the pooled query's factor (1 at the base width) leaves the model as it was
    apply_is_bit_identical_at_base(unrolled, Unrolled, images)


def test_the_pooled_query_s_layer_and_logits_derive_as_the_unpooled_ones(unrolled):
    # Adam µP (TP5 Table 3, all multipliers 1): hidden weights init 1/fan_in, LR 1/fan_in;
    # the readout init 1/fan_in²; attention logits 1/d (a = 1). The pooled query's layer and
    # its logits take what the first stage's unpooled ones take
    abc = {k: (v.a, v.b, v.c) for k, v in tp.derive(unrolled.program, "adam").abc.items()}
    hidden = (0, Fraction(1, 2), 1)
    for w in (
        "qkv1_weight_part0",
        "qkv2_weight_part0",
        "qkv2_weight_part1",
        "widen_weight",
        "proj2_weight",
    ):
        assert abc[w] == hidden, w
    assert abc["attn_matmul_2"][0] == abc["attn_matmul"][0] == 1
    assert abc["head_weight"][:2] == (0, 1)


def test_more_than_one_mask_unit_is_refused_at_its_line():
    with pytest.raises(
        tp.TensorProgError,
        match=r"a fused qkv viewed \[2, 8, 2, 3, 2, 8\]: "
        r"Hiera's 2 mask units of 8 tokens each",
    ) as e:
        tp.from_torch(lambda n: Unrolled(n, units=2), (16, 32), images)
    assert "test_unrolled_tokens.py" in str(e.value) and "self.attend(" in str(e.value)


@pytest.mark.slow  # (the default suite's time: its near-miss of more units runs there)
def test_a_max_over_other_groups_than_the_grid_s_blocks_is_refused_at_its_line():
    # the first stage's attention keeps the unrolled order: a view by 2 groups tokens T/2
    # apart, two of a block's four with two of another's
    with pytest.raises(
        tp.TensorProgError,
        match=r"a max over groups of 2 tokens of a 4x4 "
        r"grid that are not each a 2 x 2 block of it",
    ) as e:
        tp.from_torch(lambda n: Unrolled(n, stride=2), (16, 32), images)
    assert "test_unrolled_tokens.py" in str(e.value)


def test_a_mask_on_the_logits_of_unrolled_tokens_is_refused_at_its_line():
    # the trace holds one unit's logits in the grid's order: a causal mask over the tokens
    # as torch holds them (unrolled) would mask other pairs there (traced, it computed
    # something else)
    with pytest.raises(
        tp.TensorProgError,
        match=r"masked_fill of attention logits over tokens in an unrolled order",
    ) as e:
        tp.from_torch(lambda n: Unrolled(n, mask=True), (16, 32), images)
    line = next(
        i
        for i, t in enumerate(Path(__file__).read_text().splitlines(), 1)
        if "x = x + self.attend(self.norm1(x)" in t
    )  # (the first stage's)
    assert f"test_unrolled_tokens.py:{line}:" in str(e.value)


class GridValues(nn.Module):
    """One unit's attention whose keys are the unrolled tokens and whose queries and values are
    the same tokens in the grid's order: torch pairs each key's weight with another token's
    value."""

    def __init__(self, n):
        super().__init__()
        self.stem, self.qkv = nn.Conv2d(3, n, 4, stride=4), nn.Linear(n, 3 * n)
        self.o, self.head = nn.Linear(n, n), nn.Linear(n, 10)

    def split(self, x):
        b, t, c = x.shape
        return self.qkv(x).reshape(b, t, 1, 3, 2, c // 2).permute(3, 0, 4, 2, 1, 5).unbind(0)

    def forward(self, img):
        g = self.stem(img).flatten(2).transpose(1, 2)
        b, t, c = g.shape
        x = g.view(b, 4, 4, c).view(b, 2, 2, 2, 2, c).permute(0, 2, 4, 1, 3, 5)
        x = x.flatten(0, 2).reshape(-1, t, c)
        (q, _, v), (_, k, _) = self.split(g), self.split(x)
        a = ((q * 0.25) @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.head((g + self.o(a.transpose(1, 3).reshape(b, -1, c))).mean(1))


def test_weights_over_unrolled_keys_applied_to_values_in_the_grid_s_order_are_refused():
    # (traced, the program paired each key with its own value: something else)
    with pytest.raises(
        tp.TensorProgError,
        match=r"attention weights over tokens in one order applied to values in another",
    ) as e:
        tp.from_torch(GridValues, (16, 32), images)
    assert "test_unrolled_tokens.py" in str(e.value)


@pytest.mark.slow
def test_an_amax_over_the_grid_s_blocks_is_their_max_pool():
    def build(n):
        return Unrolled(n, pool="amax")

    traced = tp.from_torch(build, (16, 32), images)
    assert traced.source.count("= tokens(maxpool(image(") == 2
    traced_computes_the_model(traced, build, images)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["keepdim", "within"])
def test_a_max_of_unrolled_tokens_other_than_hiera_s_is_refused_at_its_line(pool):
    # (a max kept its axis of 1, or over the other axis of the view, crashed the walk)
    with pytest.raises(tp.TensorProgError, match=r"max, of tokens in an unrolled order") as e:
        tp.from_torch(lambda n: Unrolled(n, pool=pool), (16, 32), images)
    assert "grouped.max(" in str(e.value)


class Summed(nn.Module):
    """Unrolled tokens summed along their axis in order (a running sum: each token's value
    depends on the order they are in)."""

    def __init__(self, n):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, n, 4, stride=4), nn.Linear(n, 10)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        b, t, c = x.shape
        x = x.view(b, 4, 4, c).view(b, 2, 2, 2, 2, c).permute(0, 2, 4, 1, 3, 5)
        x = x.flatten(0, 2).reshape(-1, t, c)
        return self.head(x.cumsum(1)[:, -1])


@pytest.mark.slow
def test_an_op_over_unrolled_tokens_in_their_order_is_refused_with_the_order():
    with pytest.raises(
        tp.TensorProgError,
        match=r"cumsum, of tokens in an unrolled order \(each image's 16 tokens of its 4x4 "
        r"grid on one axis, reordered: Hiera's unroll, its first positions holding the grid's "
        r"tokens \[0, 2, 8, 10, 1, 3, 9, 11\]\)",
    ) as e:
        tp.from_torch(Summed, (16, 32), images)
    assert "x.cumsum(1)" in str(e.value)
