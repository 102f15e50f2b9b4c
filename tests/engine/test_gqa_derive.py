"""Grouped-query and multi-query attention: keys and values with fewer heads than the queries,
each key/value head serving a group of consecutive query heads. Oracle: every param derives
MHA's exponents (init, multiplier, LR, Adam's ε), for Adam and SGD, whether the head dim or
the head count grows with the width, because each logit is still one query head against one key
head and a group of finitely many query heads adds a finite sum to the keys' gradient."""

from __future__ import annotations

import pytest
from conftest import ROOT

import tensorprog as tp


def decoder(dh: str, kv: str) -> tp.Program:
    """A one-block decoder (RMSNorm, attention, ReLU MLP, untied readout) whose queries have
    dim n and whose keys and values have dim ``kv``, in heads of dim ``dh``."""
    return tp.parse(f"""\
width n = 64
dim V = 16
dim T = 3
dim dh = {dh}
dim kv = {kv}
dim ff = 2 * n
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
scale attn = 0.25
param g : [n] = 1
param Wq : [n, n]
param Wk : [kv, n]
param Wv : [kv, n]
param Wo : [n, n]
param Wu : [ff, n]
param Wd : [n, ff]
h0 = E @ tok
a = g * rmsnorm(h0)
s = attn * dot(Wq @ a, Wk @ a, dh)
h1 = h0 + Wo @ mix(causal_softmax(s), Wv @ a)
h2 = h1 + Wd @ relu(Wu @ h1)
output logits = U @ rmsnorm(h2)
""", "gqa.tp")


# (name, head dim, kv dim, the MHA it must equal: same head dim, kv = n)
GROUPED = [
    ("gqa, 2 kv heads of a growing dim", "n / 8", "n / 4", "n / 8"),
    ("mqa, 1 kv head of a growing dim", "n / 4", "n / 4", "n / 4"),
    ("gqa, kv heads of a fixed dim growing in number", "8", "n / 2", "8"),
]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize(("dh", "kv", "mha"), [g[1:] for g in GROUPED],
                         ids=[g[0] for g in GROUPED])
def test_grouped_attention_derives_mhas_exponents_for_every_param(optimizer, dh, kv, mha):
    grouped, reference = tp.derive(decoder(dh, kv), optimizer), tp.derive(decoder(mha, "n"),
                                                                          optimizer)
    assert grouped.abc == reference.abc
    assert grouped.eps == reference.eps
    assert grouped.check.regime == "feature_learning" and grouped.check.all_maximal
    an, ref = grouped.check.analysis, reference.check.analysis
    assert an.grad_ == ref.grad_  # the keys' and values' gradients too: a finite group


def test_a_group_growing_with_the_width_adds_an_lln_sum_to_the_keys_and_values_gradients():
    """With a finite kv dim (here 2 heads of dim 4) the n/8 query heads sharing each key head
    grow with the width; their terms in the key's gradient move together after training, so
    it gains a factor n over MHA's (derive refuses this program; classify judges it)."""
    fixed, mha = decoder("4", "8"), decoder("4", "n")
    sp = {p: tp.classify(prog, "adam", preset="sp").analysis.grad_ for p, prog in
          (("gqa", fixed), ("mha", mha))}
    assert sp["gqa"]["s_2"] == sp["mha"]["s_2"] + 1  # keys: Wk @ a
    assert sp["gqa"]["h1_2"] == sp["mha"]["h1_2"] + 1  # values: Wv @ a
    assert sp["gqa"]["s_1"] == sp["mha"]["s_1"]  # queries: one key head each


def test_the_example_derives_the_exponents_of_its_mha_twin():
    source = (ROOT / "examples" / "llama_gqa.tp").read_text()
    mha = source.replace("param Wk1 : [kv, n]", "param Wk1 : [n, n]").replace(
        "param Wv1 : [kv, n]", "param Wv1 : [n, n]")
    for optimizer in ("adam", "sgd"):
        assert (tp.derive(tp.parse(source), optimizer).abc
                == tp.derive(tp.parse(mha), optimizer).abc)
