"""Swin V2's attention, traced: cosine attention (F.normalize of each head's queries and keys,
ops_norm.py) times a learned temperature per head, ``clamp(logit_scale, max=log 100).exp()``
(ops_temperature.py: ``dot(spread(exp(c * cap(τ / c)), dh) * q, k, dh)``), the shifted windows'
-100 mask added twice as transformers' Swinv2SelfAttention adds it (``windows[..., 2, 200]``),
and post-norm residuals (a layer norm of each branch inside the residual sum).
Oracles: the emitted program computes the model's output (float64; one head's temperature past
the clamp); the traced temperature derives what examples/swinv2.tp derives; other uses of a
function of a param, a temperature not of one number per head, or after the bias, are refused
at their line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import traced_computes_the_model
from test_swin import WINDOW, attn_mask, relative_index, window_partition, window_reverse

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class BlockV2(nn.Module):
    """Swinv2Layer's forward, written out, with a table bias (V1's) in place of the continuous
    position bias's MLP; ``variant`` breaks one thing a recogniser must see."""

    def __init__(self, n, shift, variant=""):
        super().__init__()
        self.shift, self.variant = shift, variant
        self.heads = n // 16
        self.q, self.v, self.o = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.k = nn.Linear(n, n, bias=False)
        # head 0 at Swin V2's init, log 10; head 1 past the clamp at log 100 (its gradient 0)
        init = torch.tensor([math.log(10.0), 5.0] * self.heads)[:self.heads]
        shape = (self.heads,) if variant == "flat" else (self.heads, 1, 1)
        self.logit_scale = nn.Parameter(init.reshape(shape))
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, self.heads) * 0.5)
        self.register_buffer("index", relative_index(WINDOW).view(-1), persistent=False)
        self.norm1, self.norm2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.fc1, self.fc2 = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)

    def forward(self, x, h, wd):
        b, _, c = x.shape
        w, s = WINDOW, self.shift
        y = x.view(b, h, wd, c)
        if s:
            y = torch.roll(y, (-s, -s), (1, 2))
        win = window_partition(y, w).view(-1, w * w, c)
        n_w = win.shape[0]
        q, k, v = (f(win).view(n_w, w * w, self.heads, -1).transpose(1, 2) for f in (
            self.q, self.k, self.v))
        sc = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        bias = self.table[self.index].view(w * w, w * w, -1).permute(2, 0, 1).contiguous()
        temp = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        if self.variant == "neg":  # a temperature of -exp: the program has no such form
            temp = -temp
        if self.variant == "late":  # after the bias: the bias would be scaled too
            sc = (sc + bias.unsqueeze(0)) * temp
        else:
            sc = sc * temp + bias.unsqueeze(0)
        if s:
            m = attn_mask(h, wd, w, s, x.device)
            sc = sc.view(b, n_w // b, self.heads, w * w, w * w) + m.unsqueeze(1).unsqueeze(0)
            sc = sc + m.unsqueeze(1).unsqueeze(0)  # transformers' Swin V2 adds it twice
            sc = sc.view(-1, self.heads, w * w, w * w)
        a = torch.matmul(F.softmax(sc, dim=-1), v)
        a = self.o(a.transpose(1, 2).reshape(n_w, w * w, c)).view(-1, w, w, c)
        a = window_reverse(a, w, h, wd)
        if s:
            a = torch.roll(a, (s, s), (1, 2))
        x = x + self.norm1(a.reshape(b, h * wd, c))  # post-norm: the branch normalised
        return x + self.norm2(self.fc2(F.gelu(self.fc1(x))))


class SwinV2Like(nn.Module):
    """examples/swinv2.tp in torch: a patch embedding, an unshifted and a shifted V2 block, a
    layer norm of the tokens' mean and a classifier."""

    def __init__(self, n, variant=""):
        super().__init__()
        self.embed, self.norm0 = nn.Conv2d(3, n, 4, stride=4), nn.LayerNorm(n)
        self.blocks = nn.ModuleList([BlockV2(n, 0, variant), BlockV2(n, 2, variant)])
        self.norm, self.head = nn.LayerNorm(n), nn.Linear(n, 10)

    def forward(self, img):
        x = self.embed(img)
        h, wd = x.shape[2:]
        x = self.norm0(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, h, wd)
        return self.head(self.norm(x.mean(1)))


def images(model=None):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def swinv2():
    return tp.from_torch(SwinV2Like, (32, 64), images)


def test_the_temperature_and_the_doubled_mask_trace_to_what_the_model_computes(
        swinv2, monkeypatch):
    from tensorprog.emit.templates import HELPERS

    src = swinv2.source
    assert "windows[T, f49, f8, f8, 2, 200]" in src and "windows[T, f49, f8, f8, 0]" in src
    assert "spread(exp(4.605170185988092 * cap(" in src
    # the per-head RMSNorm's eps (1e-6, in place of F.normalize's guard at 1e-12) made 0 here:
    # times a temperature of up to 100 it would hide a difference of 1e-5
    rms = [line.replace(" + 1e-6", "") for line in HELPERS["_heads_rmsnorm"]]
    monkeypatch.setitem(HELPERS, "_heads_rmsnorm", rms)
    traced_computes_the_model(swinv2, SwinV2Like, images)
