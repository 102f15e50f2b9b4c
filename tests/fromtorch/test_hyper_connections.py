"""Hyper-connections (HY v4's, DeepSeek-V4's without its comb matrix): m residual streams per token
on an axis of their own, ``[B, T, m, n]``, traced as m program vectors (ops_streams.py). Oracles:
the emitted module computes the model (float64); the traced program derives the exponents of
examples/hyper_connections.tp, the same network written by hand (the weights' layer of fan-in
m·n and finite fan-out a readout, their bias and scale finite params). A mixing matrix across the
streams (DeepSeek-V4's comb) and a biased layer times its input's inverse RMS are refused at
their line."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

M = 2  # streams


def _inv_rms(flat):
    return torch.rsqrt(flat.square().mean(-1, keepdim=True) + 1e-6)


class HC(nn.Module):
    """HY v4's HYV4HyperConnection: pre and post weights per token from the streams flattened."""

    def __init__(self, n, how=""):
        super().__init__()
        self.how = how
        self.fn = nn.Parameter(torch.randn(2 * M, M * n) / (M * n))
        self.base = nn.Parameter(torch.zeros(2 * M))
        self.scale = nn.Parameter(torch.ones(2))
        self.bias = nn.Parameter(torch.zeros(2 * M)) if how == "biased" else None

    def forward(self, hs):
        flat = hs.flatten(2)
        mixes = F.linear(flat, self.fn, self.bias) * _inv_rms(flat)
        pre_b, post_b = self.base.split(M, dim=-1)
        pre_s, post_s = self.scale.unbind(0)
        pre_l, post_l = mixes.split(M, dim=-1)
        pre = torch.sigmoid(pre_l * pre_s + pre_b) + 1e-6
        post = 2.0 * torch.sigmoid(post_l * post_s + post_b) + 1e-6
        return post, torch.sum(pre.unsqueeze(-1) * hs, dim=2)


class Block(nn.Module):
    def __init__(self, n, how=""):
        super().__init__()
        self.how = how
        self.hc = HC(n, how)
        self.norm = nn.RMSNorm(n, eps=1e-6)
        self.up = nn.Linear(n, 2 * n, bias=False)
        self.down = nn.Linear(2 * n, n, bias=False)
        self.comb = nn.Parameter(torch.eye(M)) if how == "comb" else None

    def forward(self, hs):
        post, h = self.hc(hs)
        h = self.down(torch.relu(self.up(self.norm(h))))
        if self.how == "comb":  # a matrix mixing the streams (hyper-connections' static comb)
            return post.unsqueeze(-1) * h.unsqueeze(-2) + torch.matmul(self.comb, hs)
        return post.unsqueeze(-1) * h.unsqueeze(-2) + hs


class HCNet(nn.Module):
    """2 streams, 2 blocks, and HY's head mixing the streams into one vector for the readout."""

    def __init__(self, n, how=""):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.blocks = nn.ModuleList(Block(n, how) for _ in range(2))
        self.head_fn = nn.Parameter(torch.randn(M, M * n) / (M * n))
        self.head_base = nn.Parameter(torch.zeros(M))
        self.norm = nn.RMSNorm(n, eps=1e-6)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        hs = self.e(idx).unsqueeze(2).expand(-1, -1, M, -1).contiguous()
        for b in self.blocks:
            hs = b(hs)
        flat = hs.flatten(2)
        pre = torch.sigmoid(F.linear(flat, self.head_fn) * _inv_rms(flat) + self.head_base)
        return self.out(self.norm((pre.unsqueeze(-1) * hs).sum(dim=2)))


def inputs(model=None):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(HCNet, (16, 32), inputs)


def test_the_streams_trace_as_one_vector_each_and_compute_the_model(traced):
    body = traced.source
    # each hyper-connection reads the streams flattened and normalised together, and each
    # weight is one number per token over a stream's coordinates; the eps added to the weights
    # is c times each stream, exactly
    assert body.count("rmsnorm(flatten") == 3 and body.count("= cat(") == 3, body
    assert body.count("spread(pick(") == 10 and "1e-06 * " in body, body
    traced_computes_the_model(traced, HCNet, inputs)


def test_the_traced_streams_derive_the_hand_written_programs_exponents(traced):
    got = abc_by_target(traced)
    want = tp.derive(tp.parse_file(ROOT / "examples" / "hyper_connections.tp"), "adam").abc
    names = {"e.weight": "E", "out.weight": "U", "head_fn": "G", "head_base": "g"}
    for k in (0, 1):
        names |= {
            f"blocks.{k}.hc.fn": f"F{k + 1}",
            f"blocks.{k}.hc.base": f"b{k + 1}",
            f"blocks.{k}.hc.scale": f"s{k + 1}",
            f"blocks.{k}.up.weight": f"A{k + 1}",
            f"blocks.{k}.down.weight": f"B{k + 1}",
        }
    for target, name in names.items():
        assert got[target] == (want[name].a, want[name].b, want[name].c), target
    assert got["blocks.0.hc.fn"] == (0, 1, 1)  # fan-in m·n, finite fan-out: a readout's


@pytest.mark.parametrize(
    "how, said",
    [
        ("comb", r"matmul of a stack of per-token residual streams"),
        pytest.param(
            "biased", r"a product with another vector's inverse RMS", marks=pytest.mark.slow
        ),
    ],
)
def test_a_mixing_matrix_across_the_streams_or_a_biased_layer_times_the_norm_is_refused(how, said):
    with pytest.raises(TensorProgError, match=said) as err:
        from_torch(lambda n: HCNet(n, how), (16, 32), inputs)
    assert "test_hyper_connections.py:" in str(err.value)


class AltUp(nn.Module):
    """Gemma 3n's AltUp, small: 3 streams stacked first ([m, B, T, n]), each block predicting
    every stream from all of them by a per-token m x m matrix, running a layer on the active
    stream, correcting every stream by the innovation (weights + 1), and adding a vector to all
    but the first in place; the output reads the streams' mean."""

    m = 3

    def __init__(self, n):
        super().__init__()
        m = self.m
        self.e = nn.Embedding(13, n)
        self.proj = nn.ModuleList(nn.Linear(n, n, bias=False) for _ in range(m - 1))
        self.router = nn.Linear(n, m, bias=False)
        self.predict = nn.Linear(m, m * m, bias=False)
        self.correct = nn.Linear(m, m, bias=False)
        self.up = nn.Linear(n, 2 * n, bias=False)
        self.down = nn.Linear(2 * n, n, bias=False)
        self.side = nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        m, h0 = self.m, self.e(idx)
        hs = torch.stack([h0] + [p(h0) for p in self.proj], dim=0)
        # (Gemma 3n's is a tanh, 0 at init under the router's readout init: derive then
        # refuses the predictions' mixed terms, which vanish at init; a sigmoid is 1/2 there)
        mod = torch.sigmoid(self.router(hs[0]))
        coefs = self.predict(mod).reshape(*mod.shape[:-1], m, m).permute(0, 1, 3, 2)
        pred = torch.matmul(hs.permute(1, 2, 3, 0), coefs).permute(3, 0, 1, 2)
        pred += hs
        active = pred[0]
        y = active + self.down(torch.relu(self.up(active)))
        innovation = (y - pred[0]).repeat(m, 1, 1, 1)
        weights = (self.correct(torch.sigmoid(self.router(y))) + 1.0).permute(2, 0, 1).unsqueeze(-1)
        corrected = torch.mul(innovation, weights)
        corrected += pred
        first = corrected[0].clone()
        corrected[1:] += self.side(first)
        return self.out(torch.mean(corrected, dim=0))


@pytest.mark.slow  # ~2 s: the streams' oracle above runs by default
def test_altups_stacked_streams_trace_and_compute_the_model():
    traced = from_torch(AltUp, (16, 32), inputs)
    # 3 predicted streams of 3 terms each, and 3 corrected ones
    assert traced.source.count("spread(pick(") == 3 * 3 + 3, traced.source
    traced_computes_the_model(traced, AltUp, inputs)
    got = abc_by_target(traced)
    # the m x m coefficients: a layer of finite fan-in and fan-out (m -> m²), finite params;
    # the router (fan-out m) a readout's; the streams' projections hidden weights
    assert got["predict.weight"] == got["correct.weight"] == (0, 0, 0)
    assert got["router.weight"] == got["out.weight"] == (0, 1, 1)
    assert got["proj.0.weight"] == got["side.weight"] == (0, Fraction(1, 2), 1)


class NearMiss(nn.Module):
    """Forms next to the traced ones that compute something else: each must be refused at its
    line, not traced as the streams' sum, flatten or write."""

    def __init__(self, n, how):
        super().__init__()
        self.how = how
        self.e = nn.Embedding(13, n)
        self.a = nn.Linear(n, n, bias=False)
        self.r = nn.Linear(2 * n, n, bias=False)
        self.g = nn.Linear(n, 1, bias=False)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h, how = self.e(idx), self.how
        if how == "interleaved":  # [B, T, n, m] flattened: the streams' coordinates interleaved
            hs = torch.stack([h, self.a(h)], dim=2)
            return self.out(self.r(hs.permute(0, 1, 3, 2).flatten(2)))
        if how == "tokens mixed":  # [m, B, T, n] viewed (B, T, m·n)
            hs = torch.stack([h, self.a(h)], dim=0)
            return self.out(self.r(hs.reshape(idx.shape[0], idx.shape[1], -1)))
        if how == "tokens summed":  # [m, B, T, n].sum(-2) sums the tokens, not the streams
            hs = torch.stack([h, self.a(h)], dim=0)
            return self.out(hs.sum(dim=-2)[0]).unsqueeze(1).expand(-1, idx.shape[1], -1)
        if how == "one to m":  # a stack of one stream added to two broadcasts it
            one = torch.sigmoid(self.g(h)).unsqueeze(-1) * h.unsqueeze(-2)
            return self.out((one + torch.stack([h, self.a(h)], dim=2)).sum(2))
        if how == "chunked":  # several results of the stack: each refused but unbind's
            a, b = torch.stack([h, self.a(h)], dim=2).chunk(2, dim=2)
            return self.out((a + b).squeeze(2))
        hs = torch.stack([h, self.a(h), h], dim=0)
        if how == "view of a view":  # taken before the write, read after it: sees the write
            later = hs[1:][0]
            hs[1:] += self.a(h)
            return self.out(later)
        # a write through a view of the stack, read through the stack itself
        part = hs[0:3]
        part[1:] += self.a(h)
        return self.out(hs.mean(0))


@pytest.mark.parametrize(
    "how, said",
    [
        ("interleaved", "flatten of a stack"),
        pytest.param("tokens mixed", "reshape of a stack", marks=pytest.mark.slow),
        ("tokens summed", "sum of a stack"),
        ("one to m", "add of a stack"),
        pytest.param("chunked", "chunk of a stack .* into several tensors", marks=pytest.mark.slow),
        ("view of a view", "read after it through another tensor sharing its memory"),
        ("through a view", "read after it through another tensor sharing its memory"),
    ],
)
def test_near_misses_of_the_streams_forms_are_refused_at_their_line(how, said):
    with pytest.raises(TensorProgError, match=said) as err:
        from_torch(lambda n: NearMiss(n, how), (16, 32), inputs)
    assert "test_hyper_connections.py:" in str(err.value)


class Unbound(nn.Module):
    """The streams unbound along their axis: each stream its vector."""

    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.a = nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        first, second = torch.stack([h, self.a(h)], dim=2).unbind(2)
        return self.out(first + 2 * second)


@pytest.mark.slow
def test_the_streams_unbound_along_their_axis_compute_the_model():
    traced = from_torch(Unbound, (16, 32), inputs)
    traced_computes_the_model(traced, Unbound, inputs)
