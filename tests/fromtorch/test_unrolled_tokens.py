"""Tokens in Hiera's unrolled order: ``unroll`` views each image's grid of tokens [B, H, W, C]
as its 2 x 2 stride blocks, moves the strides into the batch and reads the batch back as one
axis of tokens, so that every block's four tokens lie T/4 apart (a max over a view's axis
then pools the block). The trace follows this reordering as a relayout of the tokens (their
index moved op by op, as Swin's windows are, ops_windows.py) and the per-token ops on them
(rolled back up, they are the walk's own again); the mask-unit attention that Hiera reads next
(a fused qkv viewed [B, tokens per unit, units, 3, heads, dh], its queries pooled by a max over
the strides) has no form in the trace yet, and is refused at its line with the order the tokens
are in and what is missing."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402


class Unrolled(nn.Module):
    """A 4 x 4 grid of patches unrolled by one 2 x 2 stride (transformers' Hiera ``unroll``,
    its ops as it writes them), then a layer and a norm per token, then Hiera's mask-unit
    attention over its one unit."""

    def __init__(self, n, heads=2, attend=True):
        super().__init__()
        self.heads, self.attend = heads, attend
        self.stem = nn.Conv2d(3, n, 4, stride=4)
        self.fc, self.norm = nn.Linear(n, n), nn.LayerNorm(n)
        self.qkv, self.head = nn.Linear(n, 3 * n), nn.Linear(n, 10)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)
        b, t, c = x.shape
        x = x.view(b, 4, 4, c).view(b, 2, 2, 2, 2, c).permute(0, 2, 4, 1, 3, 5).flatten(0, 2)
        x = self.norm(self.fc(x.reshape(-1, t, c)))
        if not self.attend:  # rolled back up: each block's strides back beside its pixels
            x = x.view(b, 2, 2, 2, 2, c).permute(0, 3, 1, 4, 2, 5).reshape(b, t, c)
            return self.head(torch.relu(x).mean(1))
        qkv = self.qkv(x).reshape(b, t, 1, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(3, 0, 4, 2, 1, 5).unbind(0)
        a = ((q * (c // self.heads) ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.head(a.transpose(1, 3).reshape(b, t, c).mean(1))


def images(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def test_per_token_ops_on_unrolled_tokens_rolled_back_trace_exactly():
    def build(n):
        return Unrolled(n, attend=False)

    traced = tp.from_torch(build, (16, 32), images)
    assert "fc_weight @ " in traced.source
    traced_computes_the_model(traced, build, images)


def test_mask_unit_attention_over_unrolled_tokens_is_refused_with_their_order():
    with pytest.raises(tp.TensorProgError, match=(
            r"a view from \[2, 16, 48\] to \[2, 16, 1, 3, 2, 8\], of tokens in an unrolled "
            r"order \(each image's 16 tokens of its 4x4 grid on one axis, reordered: Hiera's "
            r"unroll, its first positions holding the grid's tokens \[0, 2, 8, 10, 1, 3, 9, "
            r"11\]\).*Hiera's mask-unit attention")) as e:
        tp.from_torch(Unrolled, (16, 32), images)
    assert "test_unrolled_tokens.py" in str(e.value)  # at the model's line
    assert "qkv = self.qkv(x).reshape" in str(e.value)
