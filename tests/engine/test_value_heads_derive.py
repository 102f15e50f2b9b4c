"""Values of a head dim of their own in fewer heads than the queries, ``mix(p, v, dv, D)``
(MiMo-V2-Flash's). Oracle: every param derives the exponents of the same decoder written with
ungrouped values (the queries' head count of the values' head dim, ``mix(p, v, dv)``), for Adam
and SGD, in both of the zoo's scalings: a fixed head count (dh, dv ∝ n) and a fixed head dim
(dh, dv fixed, the heads ∝ n); the value heads' groups are finite, so a value head's gradient
gains a finite sum (+0). Values of a finite dim under query heads that grow are refused by
derive, as grouped keys of a finite dim are."""

from __future__ import annotations

import pytest

import tensorprog as tp
from tensorprog.errors import EngineError


def decoder(dh: str, dv: str, vkv: str, vo: str) -> tp.Program:
    """A one-block decoder whose queries and keys have dim n in heads of ``dh``, its values dim
    ``vkv`` in heads of ``dv``, and the attention's output ``vo`` (``vkv == vo``: not grouped)."""
    mix = "mix(p, Wv @ a, dv)" if vkv == vo else "mix(p, Wv @ a, dv, vo)"
    return tp.parse(f"""\
width n = 64
dim V = 16
dim T = 3
dim dh = {dh}
dim dv = {dv}
dim vkv = {vkv}
dim vo = {vo}
dim ff = 2 * n
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
scale attn = 0.25
param g : [n] = 1
param Wq : [n, n]
param Wk : [n, n]
param Wv : [vkv, n]
param Wo : [n, vo]
param Wu : [ff, n]
param Wd : [n, ff]
h0 = E @ tok
a = g * rmsnorm(h0)
p = causal_softmax(attn * dot(Wq @ a, Wk @ a, dh))
h1 = h0 + Wo @ {mix}
h2 = h1 + Wd @ relu(Wu @ h1)
output logits = U @ rmsnorm(h2)
""")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("dh, dv, vkv, vo", [
    ("n / 4", "n / 8", "n / 4", "n / 2"),  # 4 query heads, 2 value heads of half the head dim
    ("n / 4", "n / 8", "n / 8", "n / 2"),  # one value head for all 4
    ("8", "16", "n / 2", "2 * n"),  # heads of 8 growing in number, values in heads of 16
    ("16", "8", "n / 4", "n / 2"),  # MiMo's proportions at a fixed head dim
])
def test_grouped_value_heads_derive_the_ungrouped_exponents(dh, dv, vkv, vo, optimizer):
    grouped = tp.derive(decoder(dh, dv, vkv, vo), optimizer)
    ungrouped = tp.derive(decoder(dh, dv, vo, vo), optimizer)
    assert grouped.abc == ungrouped.abc
    assert grouped.eps == ungrouped.eps


def test_value_heads_of_a_finite_dim_under_growing_query_heads_are_refused():
    with pytest.raises(EngineError, match=r"the values \S+ have the finite dim vkv but serve "
                                          r"query heads whose number grows"):
        tp.derive(decoder("16", "8", "16", "n / 2"), "adam")
