"""A coordinatewise map of a fused linear layer's output, viewed per head and split into each
head's q, k and v (MiniMax's ``act(qkv_proj(x))``, LeViT's linear layer and batch norm): each
block of the layer's rows mapped on its own (fromtorch/ops_mapped.py)."""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")

from tensorprog import derive  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

VOCAB, SEQ = 32, 8
IDS = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


class LM(torch.nn.Module):
    """Causal attention of heads of 16 whose fused q, k, v, laid out per head, are ``form``:
    "silu" (MiniMax's), "bn" (a batch norm of the channels over the batch and tokens, LeViT's),
    "silu bn" (both), or the near misses "ln" (a layer norm, which mixes the features), "silu
    other" (the mapped whole also read), "silu tb" (viewed into heads with the batch and tokens
    swapped, (T, B, H, 48): the tokens reordered), "silu chunk" (the mapped whole split before
    its view into heads), "bn slice" (each head sliced: no rows of the batch norm's gain)."""

    def __init__(self, n, form="silu"):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, n)
        self.qkv = torch.nn.Linear(n, 3 * n, bias=False)
        self.bn = torch.nn.BatchNorm1d(3 * n)
        self.ln = torch.nn.LayerNorm(3 * n)
        self.out = torch.nn.Linear(n, n, bias=False)
        self.head = torch.nn.Linear(n, VOCAB, bias=False)
        self.form = form
        with torch.no_grad():  # gains and biases away from 1 and 0: each block reads its own
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, idx):
        h = self.embed(idx)
        b, t, n = h.shape
        qkv = self.qkv(h)
        if "silu" in self.form:
            qkv = torch.nn.functional.silu(qkv)
        if "bn" in self.form:  # LeViT's MLPLayerWithBN
            qkv = self.bn(qkv.flatten(0, 1)).reshape_as(qkv)
        if self.form == "ln":
            qkv = self.ln(qkv)
        heads = n // 16
        if "chunk" in self.form:
            q, k, v = (x.view(b, t, heads, 16) for x in qkv.chunk(3, dim=-1))
        elif "slice" in self.form:
            x = qkv.view(b, t, heads, 48)
            q, k, v = x[..., :16], x[..., 16:32], x[..., 32:]
        elif "tb" in self.form:
            q, k, v = qkv.view(t, b, heads, 48).split([16, 16, 16], dim=3)
        else:
            q, k, v = qkv.view(b, t, heads, 48).split([16, 16, 16], dim=3)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = h + self.out(a.transpose(1, 2).reshape(b, t, n))
        if "other" in self.form:
            out = out + qkv[..., :n]
        return self.head(out)


def _ids(model):
    return (IDS,)


def _build(form):
    return lambda n: LM(n, form)


@functools.cache
def _traced(form):
    return from_torch(_build(form), (32, 64), _ids, blocks=False)


@pytest.mark.parametrize(
    "form, made",
    [
        ("silu bn", "batchnorm(silu_part{i})"),
        pytest.param("silu", "silu(split_with_sizes_part{i})", marks=pytest.mark.slow),
    ],
)
def test_a_mapped_fused_layer_split_per_head_is_each_block_mapped(form, made):
    # oracle: the emitted program computes the model in float64, each head's q, k, v the map
    # of its own rows of the layer (a batch norm's gain and bias their rows too)
    traced = _traced(form)
    for i in range(3):
        assert made.format(i=i) in traced.source, traced.source
    traced_computes_the_model(traced, _build(form), _ids)


@pytest.mark.parametrize(
    "optimizer, hidden",
    [
        ("adam", (0, Fraction(1, 2), 1)),
        pytest.param("sgd", (0, Fraction(1, 2), 0), marks=pytest.mark.slow),
    ],
)
def test_each_mapped_block_derives_as_its_own_layer_and_norm(optimizer, hidden):
    # q, k and v of each head are hidden layers of their own, each batch norm's rows a gain and
    # a bias of the width (µP: init Θ(1), Adam LR Θ(1), SGD LR ∝ n)
    traced = _traced("silu bn")
    d = derive(traced.program, optimizer)
    norm = (0, 0, 0) if optimizer == "adam" else (0, 0, -1)
    for i in range(3):
        w = d.abc[f"qkv_weight_part{i}"]
        assert (w.a, w.b, w.c) == hidden
        for p in (f"bn_weight_part{i}", f"bn_bias_part{i}"):
            assert (d.abc[p].a, d.abc[p].b, d.abc[p].c) == norm, p


# positioned at the split: a layer norm mixes each token's features, and a map also read whole
# is no map held for the split alone
@pytest.mark.parametrize("form", ["ln", pytest.param("silu other", marks=pytest.mark.slow)])
def test_a_map_that_mixes_features_or_is_read_whole_is_refused(form):
    with pytest.raises(
        TraceError,
        match=r"test_mapped_split.py:\d+:\d+: error: cannot trace a "
        r"split of each head's features into parts of 16, 16, 16 of a value "
        r"that is not a linear layer's output",
    ):
        from_torch(_build(form), (32, 64), _ids, blocks=False)


# the batch and tokens swapped by the view into heads, which the layer's rows cannot say (a
# traced program that attends over the wrong tokens), a split of the mapped whole (a crash
# reading a split's shape) refused where the model views or splits, and a batch norm's gain
# at a slice of each head refused as such (not as a gain that is no param)
@pytest.mark.parametrize(
    "form, message",
    [
        ("silu tb", r"view from \[2, 8, 96\] to \[8, 2, 2, 48\]"),
        ("silu chunk", r"split of anything but a linear layer's output features"),
        pytest.param(
            "bn slice",
            r"batch norm with a gain or bias of a linear layer's output sliced per head",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_map_viewed_with_its_tokens_reordered_or_split_whole_is_refused(form, message):
    with pytest.raises(
        TraceError, match=r"test_mapped_split.py:\d+:\d+: error: cannot trace a " + message
    ):
        from_torch(_build(form), (32, 64), _ids, blocks=False)
