"""Encoder-decoders: a second sequence, cross-attention over it and T5's relative position bias
(examples/t5.tp). Oracles: the encoder's params derive exactly as the decoder's counterparts
(each is the same matmul, norm or gain on a stream of the same sizes, and the decoder's loss
reaches the encoder through cross-attention's keys and values), and the relative bias table
derives as what it is to the rules, a lookup of one bucket: an embedding's exponents when its
head axis grows with the width, a finite matrix's when the head count is fixed."""

from __future__ import annotations

import pytest
from conftest import ROOT

import tensorprog as tp

T5 = (ROOT / "examples" / "t5.tp").read_text()
# the same network with a fixed head count (4 heads whose dim grows): a finite bias table
T5_FIXED_HEADS = T5.replace("dim dh = 16 ", "dim dh = n / 4").replace("dim H = n / 16", "dim H = 4")

ENCODER = ["ea1", "eWq1", "eWk1", "eWv1", "eWo1", "em1", "eWi1", "eWp1", "ea2", "eWq2", "eWk2",
           "eWv2", "eWo2", "em2", "eWi2", "eWp2", "ef"]


def _decoder_twin(name: str) -> str:
    """The decoder's param doing the encoder param's job (self-attention, MLP, norms)."""
    return {"ea": "da", "eW": "dW", "em": "dm", "ef": "df"}[name[:2]] + name[2:]


@pytest.mark.parametrize("source", [T5, T5_FIXED_HEADS], ids=["fixed-head-dim", "fixed-heads"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_encoder_derives_as_the_decoder(source, optimizer):
    d = tp.derive(tp.parse(source, "t5.tp"), optimizer)
    for name in ENCODER:
        assert d.abc[name] == d.abc[_decoder_twin(name)], name
    for w in "qkvo":  # cross-attention's weights: hidden, as self-attention's
        assert d.abc[f"cW{w}1"] == d.abc[f"dW{w}1"]
    if optimizer == "adam":  # and Adam's ε
        assert d.eps["eWq1"] == d.eps["dWq1"] and d.eps["cWk2"] == d.eps["dWk2"]
    # the decoder's loss reaches the encoder's output through the keys and values, at the size
    # of every hidden vector's gradient under µP
    vectors = d.as_dict()["vectors"]
    assert vectors["enc"]["grad"] == vectors["g1"]["grad"] == "-1"


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_relative_bias_table_derives_as_a_lookup(optimizer):
    grown = tp.derive(tp.parse(T5, "t5.tp"), optimizer)
    fixed = tp.derive(tp.parse(T5_FIXED_HEADS, "t5.tp"), optimizer)
    # n / 16 heads: one row per head, a lookup of one of B buckets, as the embedding E is
    assert grown.abc["Re"] == grown.abc["Rd"] == grown.abc["E"]
    assert grown.abc["attn"].a == 0  # a fixed head dim: the logits' scale keeps its base
    # 4 heads: no infinite dim at all; init and multiplier as E's (Θ(1) entries), and under SGD
    # an LR of Θ(1) where E's grows as n (its fan-out is infinite: TP5 Table 3, η·fan_out)
    r, e = fixed.abc["Re"], fixed.abc["E"]
    assert (r.a, r.b) == (e.a, e.b) == (0, 0)
    assert r.c == 0 and e.c == (-1 if optimizer == "sgd" else 0)
    assert fixed.abc["attn"].a == 1  # a head dim ∝ n: the logits' scale 1/n (µP's 1/d)


# a decoder block repeated over the depth whose cross-attention reads the encoder's output
DEEP = """\
width n = 32
depth L = 2
dim V = 8
dim S = 5
dim T = 3
dim dh = 8
input src : tokens[S, V]
input tgt : tokens[T, V]
param E : [n, V]
param Ws : [n, n]
param U : [V, n]
block dec(h) {
    param Wq : [n, n]
    param Wk : [n, n]
    param Wv : [n, n]
    param Wo : [n, n]
    a = rmsnorm(h)
    return h + Wo @ mix(softmax(dot(Wq @ a, Wk @ e, dh)), Wv @ e)
}
e = rmsnorm(Ws @ (E @ src))
y = repeat L dec(E @ tgt)
output logits = U @ rmsnorm(y)
"""


def test_params_feeding_what_every_repetition_reads_get_no_depth_eps():
    d = tp.derive(tp.parse(DEEP, "deep.tp"), "adam")
    # e's gradient sums over the L repetitions that read it, which the depth pass does not
    # track (as for a param shared by the repetitions): Ws and E keep a fixed ε in L, saying so
    assert set(d.eps_depth_refused) == {"E", "Ws"}
    assert "Ws feeds e, which every repetition of dec reads" in d.eps_depth_refused["Ws"]
    assert "Ws" not in d.eps_depth and "E" not in d.eps_depth
    assert {"dec.Wq", "dec.Wo", "U"} <= set(d.eps_depth)  # the block's own still derive
