"""A depthwise conv1d over a channels-first sequence's tokens traces as the language's
``tconv(D, h, p)``, D the Conv1d weight [c, 1, K] as it is: causal (padding K - 1, the first T
tokens kept: LFM's short convolution, through nn.Conv1d or transformers' hub wrapper's
``F.conv1d(x, weight.squeeze(1).unsqueeze(1), bias, padding=K - 1, groups=c)[:, :, :T]``) or
same-padded (ConvBERT's padding K // 2). Oracles: the traced program computes the model, in
float64; it derives what examples/short_conv.tp derives; apply leaves the model bit-identical at
the base width. Any other stride, dilation, groups, padding or slice is refused at its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    abc_by_target,
    apply_is_bit_identical_at_base,
    the_check_reads_the_program,
    traced_computes_the_model,
)

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import tensorprog as tp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class ShortConv(nn.Module):
    """LFM's gated short convolution between an embedding and a readout: B, C, x = chunks of
    in_proj(rmsnorm(e)) channels-first, y = out_proj(C * conv(B * x)), added to e."""

    def __init__(self, n, k=3, bias=False, mode="causal", functional=False, conv=None, cut=None):
        super().__init__()
        self.emb, self.norm = nn.Embedding(13, n), nn.RMSNorm(n, eps=1e-6)
        self.inp, self.out = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n, bias=False)
        self.ro = nn.Linear(n, 13, bias=False)
        pad = k - 1 if mode in ("causal", "bare") else "same" if mode == "same" else k // 2
        self.conv = nn.Conv1d(n, n, k, **{"groups": n, "padding": pad, "bias": bias,
                                          **(conv or {})})
        self.mode, self.functional, self.cut = mode, functional, cut

    def forward(self, ids):
        e = self.emb(ids)
        b, c, x = self.inp(self.norm(e)).transpose(-1, -2).chunk(3, dim=-2)
        u, t = b * x, ids.shape[-1]
        if self.functional:  # transformers' causal_conv1d_forward and causal_conv1d_fn
            w = self.conv.weight.squeeze(1)
            y = F.conv1d(u, w.unsqueeze(1), self.conv.bias, padding=w.shape[-1] - 1,
                         groups=u.shape[1])[:, :, :t]
        elif self.mode == "bare":  # a conv of another length, for its refusal
            return self.ro(self.conv(u).mean(-1))
        else:
            y = self.conv(u)
            y = y[..., self.cut or slice(None, t)] if self.mode == "causal" else y
        gated = torch.multiply(c, y) if self.functional else c * y  # (ConvBERT's multiply)
        return self.ro(e + self.out(gated.transpose(-1, -2)))


def ids(model=None):
    return (torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(0)),)


def trace(**kw):
    return tp.from_torch(lambda n: ShortConv(n, **kw), (64, 128), ids)


@pytest.fixture(scope="module")
def causal():
    return trace()


def test_a_causal_short_conv_is_tconv_of_its_kernel(causal):
    src = causal.source
    assert "param conv_weight : [n, f1, f3]" in src
    assert "tconv(conv_weight, mul, 2)" in src


def test_the_traced_causal_conv_computes_the_model_and_applies(causal):
    traced_computes_the_model(causal, ShortConv, ids)
    assert "slice_1" in the_check_reads_the_program(causal, ShortConv, ids)  # conv(u)[..., :T]
    mup = apply_is_bit_identical_at_base(causal, ShortConv, ids)
    model = ShortConv(128)
    mup.apply(model)
    lr = mup.lr_multipliers(model)
    assert lr["conv.weight"] == 1 and lr["out.weight"] == pytest.approx(0.5)  # Adam: a gain's


def test_its_kernel_derives_as_the_examples_does(causal):
    """The traced twin of examples/short_conv.tp: the kernel a gain (init and Adam LR Θ(1),
    SGD LR ∝ n), the chunks of in_proj and out_proj hidden, as the example derives."""
    for optimizer in ("adam", "sgd"):
        abc = tp.derive(tp.parse_file(ROOT / "examples" / "short_conv.tp"), optimizer).abc
        mine = abc_by_target(causal, optimizer)
        for target, name in (("conv.weight", "D"), ("inp.weight", "Wb"), ("out.weight", "Wo"),
                             ("emb.weight", "E"), ("norm.weight", "g"), ("ro.weight", "U")):
            assert mine[target] == (abc[name].a, abc[name].b, abc[name].c), target
    assert mine["conv.weight"][2] == -1  # SGD LR ∝ n, a gain's


@pytest.mark.parametrize("kw", [
    {"functional": True, "bias": True},  # the hub wrapper's squeeze, unsqueeze and slice
    {"mode": "same", "k": 5, "bias": True},  # ConvBERT's padding K // 2
    pytest.param({"mode": "same", "k": 4}, marks=[pytest.mark.slow, pytest.mark.filterwarnings(
        "ignore:Using padding='same' with even")], id="same-even"),  # one more zero after
    # the first T of T + 2 tokens, counted from the end
    pytest.param({"cut": slice(None, -2), "bias": True}, marks=pytest.mark.slow,
                 id="causal-from-the-end"),
], ids=["hub", "same-odd", "same-even", "causal-from-the-end"])
def test_the_other_forms_compute_the_model(kw):
    traced_computes_the_model(trace(**kw), lambda n: ShortConv(n, **kw), ids)


@pytest.mark.parametrize("kw, match", [
    ({"conv": {"stride": 2}, "mode": "bare"}, "stride 2"),
    ({"conv": {"dilation": 2}, "mode": "bare"}, "dilation 2"),
    ({"conv": {"groups": 2}}, "only a depthwise one"),
    ({"conv": {"padding": 1}, "k": 4, "mode": "bare"}, "padding 1"),
    ({"cut": slice(2, None)}, "a slice of its tokens 2:"),
])
def test_other_token_convolutions_are_refused_at_their_line(kw, match):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        trace(**kw)
    assert "test_tconv_trace.py" in str(err.value)


class BlockGate(ShortConv):
    """RecurrentGemma's RG-LRU gate after its short convolution: each token's features cut into
    4 blocks, each through its own matrix by baddbmm (a block-diagonal layer)."""

    def __init__(self, n):
        super().__init__(n)
        self.gate = nn.Parameter(torch.randn(4, n // 4, n // 4) / (n // 4) ** 0.5)

    def forward(self, ids):
        e = self.emb(ids)
        b, t, n = e.shape
        x = self.conv(e.transpose(1, 2))[..., :t].transpose(1, 2)
        blocks = x.reshape(b * t, 4, n // 4).permute(1, 0, 2)
        g = torch.sigmoid(torch.bmm(blocks, self.gate).transpose(0, 1).reshape(b, t, n))
        return self.ro(e + x * g)


def test_a_block_diagonal_layer_through_bmm_after_it_is_refused_at_its_view():
    with pytest.raises(tp.TensorProgError, match=r"its features cut into 4 blocks of 16(.|\n)*"
                       r"help: write it as nn.Conv1d\(c, c, 1, groups=blocks\)") as err:
        tp.from_torch(BlockGate, (64, 128), ids)
    assert "x.reshape(b * t, 4, n // 4)" in str(err.value)


class DynamicKernel(ShortConv):
    """ConvBERT's dynamic convolution's kernel: 9 weights per token and head from a linear
    layer, viewed (batch·tokens·heads, 9, 1) for a softmax over the taps."""

    def __init__(self, n):
        super().__init__(n)
        self.kernel = nn.Linear(n, 2 * 9)

    def forward(self, ids):
        e = self.emb(ids)
        k = torch.softmax(torch.reshape(self.kernel(e), [-1, 9, 1]), dim=1)
        return self.ro(e + k.sum() * e)


def test_a_kernel_computed_per_token_is_refused_at_its_view():
    with pytest.raises(tp.TensorProgError, match=r"2 sets of 9 weights per token(.|\n)*"
                       r"convolves with trained kernels only") as err:
        tp.from_torch(DynamicKernel, (64, 128), ids)
    assert "torch.reshape(self.kernel(e), [-1, 9, 1])" in str(err.value)


class SplitAfter(ShortConv):
    """A split of the short convolution's output (as Mamba-2's x, B, C) of a value that is no
    linear layer's output (a norm's), whose parts are no row blocks of a layer."""

    def forward(self, ids):
        e, t = self.emb(ids), ids.shape[-1]
        y = F.silu(self.conv(self.norm(e).transpose(1, 2))[..., :t])
        a, b = y.transpose(1, 2).chunk(2, dim=-1)
        return self.ro(e + torch.cat([b, a], -1))


def test_a_split_of_its_output_is_refused_saying_what_it_splits():
    with pytest.raises(tp.TensorProgError, match=r"a split of anything but a linear layer's "
                       r"output features \(here of the conv1d conv's output(.|\n)*a depthwise "
                       r"nn.Conv1d of its own"):
        tp.from_torch(SplitAfter, (64, 128), ids)


class QKV(ShortConv):
    """Qwen3.5's linear attention's input: in_proj to q, k, v (of unequal sizes) transposed
    channels-first, one causal short convolution with silu (transformers' hub wrapper), then
    split back into q, k, v; ``mamba``: x, B, C split off a wider projection first (Mamba-2's)."""

    def __init__(self, n, mamba=False):
        super().__init__(n, bias=True)
        self.inp = nn.Linear(n, 3 * n // 2 + (n if mamba else 0), bias=False)
        self.conv = nn.Conv1d(3 * n // 2, 3 * n // 2, 4, groups=3 * n // 2, padding=3)
        self.mamba, self.n = mamba, n

    def forward(self, ids):
        e, t, n = self.emb(ids), ids.shape[-1], self.n
        qkv = self.inp(self.norm(e))
        if self.mamba:
            z, qkv = qkv.split([n, 3 * n // 2], dim=-1)
        w = self.conv.weight.squeeze(1)
        y = F.conv1d(qkv.transpose(1, 2).to(w.dtype), w.unsqueeze(1), self.conv.bias,
                     padding=3, groups=3 * n // 2)[:, :, :t]
        q, k, v = torch.split(F.silu(y).transpose(1, 2), [n // 2, n // 2, n // 2], dim=-1)
        o = q * k + v if not self.mamba else (q * k + v) * torch.sigmoid(z[..., : n // 2])
        return self.ro(e + self.out(torch.cat([o, o], -1)))


@pytest.mark.parametrize("mamba", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["qkv", "mamba"])  # (the default one splits a split's rows)
def test_a_split_of_a_layers_short_conv_is_the_conv_of_each_part(mamba):
    build = lambda n: QKV(n, mamba)  # noqa: E731
    traced = tp.from_torch(build, (64, 128), ids)
    assert "tconv(conv_weight_part0, " in traced.source
    traced_computes_the_model(traced, build, ids)
    the_check_reads_the_program(traced, build, ids)  # each part's silu at its getitem
    apply_is_bit_identical_at_base(traced, build, ids)


class Chunked(ShortConv):
    """A recurrence's input cut into its chunked and token-by-token steps after the short
    convolution (transformers' Mamba-2 and Gated DeltaNet torch paths)."""

    def forward(self, ids):
        e, t = self.emb(ids), ids.shape[-1]
        y = self.conv(self.inp(e)[..., :e.shape[-1]].transpose(1, 2))[..., :t].transpose(1, 2)
        first, rest = torch.tensor_split(y, [t - 2], dim=1)
        return self.ro(torch.cat([first.cumsum(1), rest], 1))


def test_a_split_of_the_tokens_after_it_is_refused_as_a_recurrence():
    with pytest.raises(tp.TensorProgError, match=r"a split of a sequence's tokens into pieces"
                       r"(.|\n)*the tracer reads no recurrence") as err:
        tp.from_torch(Chunked, (64, 128), ids)
    assert "torch.tensor_split(y, [t - 2], dim=1)" in str(err.value)


class CatQKV(QKV):
    """OLMo-hybrid's and Kimi-linear's q, k, v layers concatenated before the short
    convolution, split back at their bounds after it."""

    def __init__(self, n):
        super().__init__(n)
        self.q, self.k, self.v = (nn.Linear(n, n // 2, bias=False) for _ in range(3))

    def forward(self, ids):
        e, t, n = self.emb(ids), ids.shape[-1], self.n
        h = self.norm(e)
        qkv = torch.cat([self.q(h), self.k(h), self.v(h)], dim=-1).transpose(1, 2)
        w = self.conv.weight.squeeze(1)
        y = F.conv1d(qkv, w.unsqueeze(1), self.conv.bias, padding=3, groups=3 * n // 2)
        q, k, v = torch.split(F.silu(y[:, :, :t]).transpose(1, 2), [n // 2] * 3, dim=-1)
        return self.ro(e + self.out(torch.cat([q * k + v, v], -1)))


@pytest.mark.slow  # a trace of its own
def test_a_split_of_a_concatenations_short_conv_is_the_conv_of_each_part():
    traced = tp.from_torch(CatQKV, (64, 128), ids)
    assert "tconv(conv_weight_part2, " in traced.source
    traced_computes_the_model(traced, CatQKV, ids)
    the_check_reads_the_program(traced, CatQKV, ids)
    apply_is_bit_identical_at_base(traced, CatQKV, ids)


class CatReadTwice(ShortConv):
    """Two layers concatenated, transposed channels-first, read by a causal short convolution
    split back at their bounds and, transposed back, by a linear layer as well: the
    concatenation stays in the program for that layer."""

    def __init__(self, n):
        super().__init__(n)
        self.a, self.b = nn.Linear(n, n // 2, bias=False), nn.Linear(n, n // 2, bias=False)
        self.conv = nn.Conv1d(n, n, 3, groups=n, padding=2, bias=False)

    def forward(self, ids):
        e, t = self.emb(ids), ids.shape[-1]
        x = torch.cat([self.a(e), self.b(e)], -1).transpose(1, 2)
        p, q = self.conv(x)[..., :t].transpose(1, 2).split([self.out.in_features // 2] * 2, -1)
        return self.ro(e + self.out(torch.cat([p * q, q], -1) + x.transpose(1, 2)))


@pytest.mark.slow  # a trace of its own, as CatQKV's
def test_a_concatenation_split_after_its_conv_and_read_elsewhere_is_kept():
    traced = tp.from_torch(CatReadTwice, (64, 128), ids)
    assert "tconv(conv_weight_part1, " in traced.source and " = cat(" in traced.source
    traced_computes_the_model(traced, CatReadTwice, ids)


class TokenRMS(ShortConv):
    """x * rsqrt(mean(x², -1)) of LFM's channels-first chunk: a mean square over the tokens
    (the last axis there), no RMS norm of each token's vector."""

    def forward(self, ids):
        e = self.emb(ids)
        b, c, x = self.inp(e).transpose(-1, -2).chunk(3, dim=-2)
        b = b * torch.rsqrt(b.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.ro(e + self.out((c * b).transpose(-1, -2)))


def test_a_mean_square_over_the_tokens_is_refused_not_read_as_a_norm():
    with pytest.raises(tp.TensorProgError, match=r"a mean over axis 2 \(a token axis") as err:
        tp.from_torch(TokenRMS, (64, 128), ids)
    assert "b.pow(2).mean(-1, keepdim=True)" in str(err.value)


class TokenHalves(ShortConv):
    """LFM's channels-first chunks cut along their last axis, the tokens (not the features, as
    that axis of a per-token vector is): half of b's tokens times half of c's."""

    def __init__(self, n, how):
        super().__init__(n)
        self.how = how

    def forward(self, ids):
        e, t = self.emb(ids), ids.shape[-1]
        b, c, x = self.inp(e).transpose(-1, -2).chunk(3, dim=-2)
        if self.how == "slice":
            y = b[..., t // 2:] * c[..., : t // 2]
        else:
            y = b.split([t // 2, t - t // 2], -1)[1] * c.split([t // 2, t - t // 2], -1)[0]
        return self.ro(self.out(y.transpose(-1, -2)))


@pytest.mark.parametrize("how, match, line", [
    ("slice", r"a slice along axis 2 of a value laid out \['tok', 'F', 'tok'\]",
     "b[..., t // 2:]"),
    ("split", r"a split of anything but a linear layer's output features", "b.split("),
])
def test_a_cut_of_a_channels_first_chunks_tokens_is_refused_not_read_as_its_rows(how, match,
                                                                                   line):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        tp.from_torch(lambda n: TokenHalves(n, how), (64, 128), ids)
    assert line in str(err.value)
