"""Swin V2's attention, traced: cosine attention (F.normalize of each head's queries and keys,
ops_norm.py) times a learned temperature per head, ``clamp(logit_scale, max=log 100).exp()``
(ops_temperature.py: ``dot(spread(exp(c * cap(τ / c)), dh) * q, k, dh)``), the shifted windows'
-100 mask added twice as transformers' Swinv2SelfAttention adds it (``windows[..., 2, 200]``),
and post-norm residuals (a layer norm of each branch inside the residual sum).
Oracles: the emitted program computes the model's output (float64; one head's temperature past
the clamp); the traced temperature derives what examples/swinv2.tp derives; the example's
logits are Swin V2's tempered cosine logits; other uses of a function of a param, a
temperature after the bias and an MLP over offsets' coordinates other than Swin V2's (its
continuous position bias: test_swinv2_cpb.py) are refused at their line; F.normalize over a
growing head dim is µP's 1/d attention, with nothing to change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model
from test_swin import WINDOW, attn_mask, relative_index, window_partition, window_reverse

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class BlockV2(nn.Module):
    """Swinv2Layer's forward, written out, with a table bias (V1's) in place of the continuous
    position bias's MLP; ``variant`` breaks one thing a recogniser must see."""

    def __init__(self, n, shift, variant=""):
        super().__init__()
        self.shift, self.variant = shift, variant
        self.heads = 2 if variant == "two_heads" else n // 16  # two: heads of n / 2
        self.q, self.v, self.o = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.k = nn.Linear(n, n, bias=False)
        # head 0 at Swin V2's init, log 10; head 1 past the clamp at log 100 (its gradient 0)
        init = torch.tensor([math.log(10.0), 5.0] * self.heads)[:self.heads]
        # "wide": one number per head, but with two more axes than the logits [B, H, T, T],
        # which broadcasts them to five
        self.logit_scale = nn.Parameter(init.reshape(
            (1, 1, self.heads, 1, 1) if variant == "wide" else (self.heads, 1, 1)))
        if variant.startswith("cpb"):  # Swin V2's continuous position bias: an MLP over the
            # offsets' log-spaced coordinates (test_swinv2_cpb.py); "cpb_linear": the offsets
            # d/(w-1) as they are, "cpb_mean": the table less its mean
            self.cpb = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, self.heads,
                                                                           bias=False))
            side = torch.arange(-(WINDOW - 1), WINDOW, dtype=torch.float32) / (WINDOW - 1) * 8
            grid = torch.stack(torch.meshgrid([side, side], indexing="ij"), -1)
            coords = grid / 8 if variant == "cpb_linear" else \
                torch.sign(grid) * torch.log2(grid.abs() + 1) / math.log2(8)
            self.register_buffer("coords", coords, persistent=False)
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
        cpb = self.variant.startswith("cpb")
        table = self.cpb(self.coords).view(-1, self.heads) if cpb else self.table
        if self.variant == "cpb_mean":
            table = table - table.mean(0)
        bias = table[self.index].view(w * w, w * w, -1).permute(2, 0, 1).contiguous()
        if cpb:
            bias = 16 * torch.sigmoid(bias)
        temp = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
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

    def __init__(self, n, variant="", short=False):
        super().__init__()
        self.embed, self.norm0 = nn.Conv2d(3, n, 4, stride=4), nn.LayerNorm(n)
        # short: the shifted block only (a quicker trace)
        self.blocks = nn.ModuleList([BlockV2(n, 2, variant)] if short else [
            BlockV2(n, 0, variant), BlockV2(n, 2, variant)])
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_apply_leaves_the_model_bit_identical(swinv2):
    # the temperature [heads] of the program is the model's [heads, 1, 1]
    apply_is_bit_identical_at_base(swinv2, SwinV2Like, images)


NAMES = {"embed.weight": "K0", "blocks.0.logit_scale": "t1", "blocks.1.logit_scale": "t2",
         "blocks.0.table": "Rb1", "blocks.1.table": "Rb2", "blocks.0.q.weight": "Wq1",
         "blocks.1.k.weight": "Wk2", "blocks.1.o.weight": "Wo2", "blocks.0.norm1.weight": "a1",
         "blocks.1.norm2.bias": "f2", "blocks.1.fc1.weight": "Wi2", "head.weight": "Wc"}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_blocks_derive_what_examples_swinv2_tp_derives(swinv2, optimizer):
    # the temperature keeps a per-head bias's exponents (SGD: LR n, its gradient summed over
    # a finite head dim), the post-norm blocks' matrices stay hidden weights
    traced = abc_by_target(swinv2, optimizer)
    d = tp.derive(tp.parse_file(EXAMPLES / "swinv2.tp"), optimizer)
    written = {k: (d.abc[v].a, d.abc[v].b, d.abc[v].c) for k, v in NAMES.items()}
    assert {k: traced[k] for k in NAMES} == written


def test_the_example_writes_the_temperature_as_a_gain_on_the_queries(monkeypatch):
    # exp(c * cap(τ / c)) is exp(min(τ, c)), and spread(g, dh) * q̂ dotted with k̂ is g_h · q̂·k̂
    # for each head h: the example's logits are Swin V2's, one head past the clamp
    from conftest import emit_program

    from tensorprog.emit.load import load_module
    from tensorprog.emit.templates import HELPERS

    rms = [line.replace(" + 1e-6", "") for line in HELPERS["_heads_rmsnorm"]]
    monkeypatch.setitem(HELPERS, "_heads_rmsnorm", rms)  # F.normalize's, eps aside
    module = load_module(emit_program(tp.parse_file(EXAMPLES / "swinv2.tp")), "swinv2_example")
    model = module.Model(64, dtype=torch.float64)
    tau = torch.tensor([math.log(10.0), 5.0, -1.0, 4.0], dtype=torch.float64)
    with torch.no_grad():
        model.t1.copy_(tau)
        v = model.vectors(*model.example_inputs(2, generator=torch.Generator().manual_seed(0)))
    heads = [F.normalize((v["x0"] @ w.t()).unflatten(-1, (4, 16)).transpose(1, 2), dim=-1)
             for w in (model.Wq1, model.Wk1)]
    temp = torch.clamp(tau, max=math.log(100.0)).exp()[:, None, None]
    want = heads[0] @ heads[1].transpose(-1, -2) * temp
    assert torch.allclose(v["s1_4"], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("variant", "match"), [
    # the temperature after the bias: the bias would be scaled too
    pytest.param("late", r"the param blocks\.0\.logit_scale of shape \[2, 1, 1\] multiplying "
                 r"attention logits within windows", marks=pytest.mark.slow),
    ("wide", r"the param blocks\.0\.logit_scale of shape \[1, 1, 2, 1, 1\] multiplying"),
    # an MLP over coordinates other than Swin V2's (test_swinv2_cpb.py traces Swin V2's)
    ("cpb_linear", r"a linear layer applied to a constant tensor \[7, 7, 2\], not to the "
                   r"input's tokens, whose entries are not Swin V2's log-spaced coordinates"),
])
def test_other_temperatures_and_a_computed_bias_are_refused_at_their_line(variant, match):
    with pytest.raises(TensorProgError, match=r"test_swinv2\.py:\d+:\d+: error: cannot trace .*"
                       + match):
        tp.from_torch(lambda n: SwinV2Like(n, variant, short=True), (32, 64), images)


@pytest.mark.slow
def test_cosine_attention_over_a_growing_head_dim_is_mups_own_1_over_d(monkeypatch):
    # heads of n / 2: F.normalize is dh^-1/2 · rmsnorm, a power of n on each side of the
    # logits, whose multiplier then goes as 1/dh: µP's (normed.l2_into_scales), so apply has
    # nothing to change, through the temperature on the query
    from tensorprog.emit.templates import HELPERS
    from tensorprog.fromtorch import MuP

    def build(n):
        return SwinV2Like(n, "two_heads", short=True)

    traced = tp.from_torch(build, (32, 64), images)
    (scale, info), = traced.scales.items()
    assert set(info["l2_vectors"]) == {"div", "tq", "div_1"}
    assert info["model_a"] == 1 == tp.derive(traced.program, "adam").abc[scale].a
    mup = MuP(traced, "adam")
    assert mup.patches == [] and mup.folded == []
    rms = [line.replace(" + 1e-6", "") for line in HELPERS["_heads_rmsnorm"]]
    monkeypatch.setitem(HELPERS, "_heads_rmsnorm", rms)  # F.normalize's, eps aside
    traced_computes_the_model(traced, build, images)
