"""A layer's output viewed per head, moved to (batch, heads, tokens, head dim) and split along
its heads (a fused key/value layer halved after its transpose; DiffLlama's values, halved the
same way): each part is whole heads, the layer's contiguous rows, as the same split before the
transpose gives (Falcon's). Oracle: the emitted program computes the model's output. Heads then
tiled by torch's repeat (DiffLlama's ``v.repeat(1, 2, 1, 1)``: query head i reads head
(i // g) mod h) are copies of the whole vector side by side, ``cat(v, v, D)``; heads repeated
in place before they are tiled have no form, and are refused at their line."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class HalvedHeads(nn.Module):
    """Attention whose keys and values are the two halves of one layer's 2n features viewed as
    8 heads and transposed (``permute``: moved by a permute instead; ``tiled``: the values of a
    layer of their own, halved and each half tiled over the heads, DiffLlama's)."""

    def __init__(self, n, tiled=False, permute=False):
        super().__init__()
        self.tiled, self.permute = tiled, permute
        self.emb = nn.Embedding(64, n)
        self.q, self.v = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.kv = nn.Linear(n, 2 * n, bias=False)
        self.o, self.u = nn.Linear(n, n, bias=False), nn.Linear(n, 64, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        b, t, n = h.shape
        q = self.q(h).view(b, t, 4, -1).transpose(1, 2)
        kv = self.kv(h).view(b, t, 8, -1)
        # the heads moved by a permute that keeps the head dim last (DeBERTa's), or a transpose
        kv = kv.permute(0, 2, 1, 3) if self.permute else kv.transpose(1, 2)
        k, v = kv.chunk(2, dim=1)
        if self.tiled == "untransposed":  # tiled while laid out (batch, tokens, heads, dh)
            half = torch.chunk(self.v(h).view(b, t, 4, -1), 2, dim=2)[0]
            v = half.repeat(1, 1, 2, 1).transpose(1, 2)
        elif self.tiled:
            grouped = self.tiled == "grouped"  # a head repeated in place, then tiled
            parts = torch.chunk(self.v(h).view(b, t, 4, -1).transpose(1, 2), 2 + 2 * grouped,
                                dim=1)
            first = torch.repeat_interleave(parts[0], 2, dim=1) if grouped else parts[0]
            v = first.repeat(1, 2, 1, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.u(h + self.o(o.transpose(1, 2).reshape(b, t, n)))


def ids(model=None):
    return (torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0)),)


def test_heads_halved_after_the_transpose_are_the_layers_row_blocks():
    traced = tp.from_torch(HalvedHeads, (64, 128), ids)
    assert "kv_weight_part0 @ embedding" in traced.source
    assert "kv_weight_part1 @ embedding" in traced.source
    traced_computes_the_model(traced, HalvedHeads, ids)


def test_heads_halved_after_a_permute_are_the_layers_row_blocks():
    def build(n):
        return HalvedHeads(n, permute=True)

    traced = tp.from_torch(build, (64, 128), ids)
    assert "kv_weight_part1 @ embedding" in traced.source
    traced_computes_the_model(traced, build, ids)


def test_heads_tiled_by_repeat_are_copies_of_the_values_side_by_side():
    # torch's repeat lays head j again at j + h: the features of h heads, copied whole, which
    # grouped attention then pairs with the query heads as the model's own repeat_kv does
    traced = tp.from_torch(lambda n: HalvedHeads(n, tiled=True), (64, 128), ids)
    assert "v_repeat = cat(getitem_2, getitem_2, n)" in traced.source
    assert "mix(causal_softmax(scaled_dot_product_attention_logits), v_repeat)" in traced.source
    traced_computes_the_model(traced, lambda n: HalvedHeads(n, tiled=True), ids)
    # the halved value layer is a hidden weight, as the query's (n -> n) is: the copies' sum
    # is of a fixed number of terms, so no exponent differs from an untiled layer's
    for optimizer in ("adam", "sgd"):
        abc = tp.derive(traced.program, optimizer).abc
        assert abc["v_weight_part0"] == abc["q_weight"]


def test_heads_repeated_in_place_then_tiled_are_refused_at_their_line():
    # query head i would read head (i // 2) mod 2 of heads already grouped: no vector of
    # whole heads to copy, and the language groups a value head's query heads once, in mix
    with pytest.raises(TraceError, match=r"attention heads tiled 2 times after") as e:
        tp.from_torch(lambda n: HalvedHeads(n, tiled="grouped"), (64, 128), ids)
    assert "v = first.repeat(1, 2, 1, 1)" in str(e.value)


def test_heads_tiled_before_their_transpose_are_refused_at_their_line():
    # the same copies as after it, but the rule reads v.repeat(1, r, 1, 1) of (batch, heads,
    # tokens, head dim) heads only, and says so (nothing was repeated in place here)
    with pytest.raises(TraceError, match=r"attention heads tiled 2 times in a value laid out "
                       r"\(tokens, tokens, heads, head dim\) \(repeat\(1, 1, 2, 1\)\)") as e:
        tp.from_torch(lambda n: HalvedHeads(n, tiled="untransposed"), (64, 128), ids)
    assert "v = half.repeat(1, 1, 2, 1).transpose(1, 2)" in str(e.value)
