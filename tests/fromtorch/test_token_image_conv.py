"""from_torch on Zaya's query-key convolution (modeling_zaya.py's qkv_proj): the queries and keys
side by side, channels-first, padded by K zeros before the first token, then a depthwise
conv1d of kernel 2 and one in groups (one per head) of kernel 2, both unpadded: T + 2, T + 1,
then T tokens, each reading the ones before it, read back as the queries' and keys' parts. It
traces as the convolutions of the tokens laid out as a 1 x T image, the pad their padding.
Oracle: the traced program computes the model (float64); the grouped kernel (fan-in (c/g)·2, a
multiple of n) derives a hidden layer's exponents, the depthwise one (fan-in 2) an input
weight's. A pad that leaves the sequence a token longer (cut after) is refused at its
line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class QKConv(nn.Module):
    """An embedding, q and k layers, Zaya's two convolutions over them (4 groups: 2 query heads,
    2 key heads, or groups of ``group_width`` channels), q * k of the parts, and a readout;
    ``extra`` more zeros padded, and as many tokens cut after."""

    def __init__(self, n, extra=0, group_width=None):
        super().__init__()
        self.extra = extra
        self.e = nn.Embedding(VOCAB, n)
        self.q, self.k = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.dw = nn.Conv1d(2 * n, 2 * n, 2, groups=2 * n)
        groups = 4 if group_width is None else 2 * n // group_width
        self.grouped = nn.Conv1d(2 * n, 2 * n, 2, groups=groups)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        n = h.shape[-1]
        qk = torch.cat([self.q(h), self.k(h)], dim=-1).transpose(1, 2)
        qk = F.pad(qk, (2 + self.extra, 0))
        qk = self.grouped(self.dw(qk))[..., self.extra :].transpose(1, 2)
        return self.head(h + qk[..., :n] * qk[..., n:])


def test_a_padded_convolution_of_the_tokens_computes_the_model():
    # before: refused at F.pad, "a pad by [2, 0] ... of a value that is not an image"
    traced = from_torch(QKConv, WIDTHS, _tokens)
    assert "image(" in traced.source and "tokens(" in traced.source, traced.source
    traced_computes_the_model(traced, QKConv, _tokens)
    abc = abc_by_target(traced)
    assert abc["grouped.weight"] == abc["q.weight"], abc
    assert abc["dw.weight"] == abc["e.weight"], abc


def test_a_pad_that_leaves_the_sequence_longer_is_refused():
    with pytest.raises(
        TensorProgError,
        match=r"test_token_image_conv.py:\d+:\d+: error: cannot "
        r"trace the conv1d grouped of a sequence's tokens padded by zeros, "
        r"9 tokens long where the sequence has 8",
    ):
        from_torch(lambda n: QKConv(n, extra=1), WIDTHS, _tokens)


def test_groups_that_grow_with_the_width_are_refused():
    # Zaya's in the head-dim scaling: a group per head of 16, n / 8 of them
    with pytest.raises(
        TensorProgError,
        match=r"test_token_image_conv.py:\d+:\d+: error: a "
        r"convolution in 4 groups at width 32 and 8 at 64 \(grouped\): its "
        r"groups grow with the width",
    ):
        from_torch(lambda n: QKConv(n, group_width=16), WIDTHS, _tokens)


class HeadConv(nn.Module):
    """Nystromformer's conv over the value heads' tokens: [B, 2 heads, T, dh] by a kernel
    (3, 1) in a group per head, added to the values."""

    def __init__(self, n):
        super().__init__()
        self.e, self.v = nn.Embedding(VOCAB, n), nn.Linear(n, n, bias=False)
        self.conv = nn.Conv2d(2, 2, (3, 1), padding=(1, 0), groups=2, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        v = self.v(h).view(b, t, 2, n // 2).transpose(1, 2)
        y = (v + self.conv(v)).transpose(1, 2).reshape(b, t, n)
        return self.head(h + y)


def test_a_convolution_of_the_value_heads_tokens_is_refused_as_such():
    with pytest.raises(
        TensorProgError,
        match=r"test_token_image_conv.py:\d+:\d+: error: cannot "
        r"trace the convolution conv of per-head vectors \[batch, heads, tokens, "
        r"dh\] by a kernel \[3, 1\] in a group per head",
    ):
        from_torch(HeadConv, WIDTHS, _tokens)


def test_an_ungrouped_convolution_of_the_padded_tokens_computes_the_model():
    # crashed (ValueError in ops_conv's check for a ViT's patches, which read the conv1d's
    # [B, C, T] output as an image's [B, C, H, W]) before it traced
    traced = from_torch(lambda n: QKConv(n, group_width=2 * n), WIDTHS, _tokens)
    traced_computes_the_model(traced, lambda n: QKConv(n, group_width=2 * n), _tokens)
    abc = abc_by_target(traced)
    assert abc["grouped.weight"] == abc["q.weight"], abc  # fan-in 2n·2: a hidden layer's


class NegativeParts(QKConv):
    """The keys' part read from the end, ``qk[..., -n:]``."""

    def forward(self, idx):
        h = self.e(idx)
        n = h.shape[-1]
        qk = torch.cat([self.q(h), self.k(h)], dim=-1).transpose(1, 2)
        qk = self.grouped(self.dw(F.pad(qk, (2, 0)))).transpose(1, 2)
        return self.head(h + qk[..., :n] * qk[..., -n:])


@pytest.mark.slow  # reach, not a wrong answer: it was refused
def test_a_part_counted_from_the_end_is_that_part():
    traced = from_torch(NegativeParts, WIDTHS, _tokens)
    traced_computes_the_model(traced, NegativeParts, _tokens)
