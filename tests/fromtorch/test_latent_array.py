"""A learned array of its own: a param [R, n] expanded over the batch alone
(``latents.expand(B, -1, -1)``, Perceiver's latent array and its decoder's queries), traced as a
position table read at all R positions of a sequence of its own, ``latents @ pos_arr1`` with
``input pos_arr1 : positions[T_arr1]``. Oracles: the emitted program computes the model's output
at the base width (cross-attention from the latents to the tokens, self-attention over the
latents, a decoder whose queries are a second array, a tied readout); the latents derive what a
position table derives (a lookup of finite fan-in, whatever sequence it runs over); every other
expand of a param is refused at its line."""

from __future__ import annotations

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class Attend(nn.Module):
    """Pre-norm attention of h's tokens to x's (h itself: self-attention), 4 heads."""

    def __init__(self, n):
        super().__init__()
        self.lnq, self.lnk = nn.LayerNorm(n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))

    def forward(self, h, x):
        (b, r, n), t = h.shape, x.shape[1]
        u, w = self.lnq(h), self.lnk(x)
        q = self.q(u).view(b, r, 4, -1).transpose(1, 2)
        k, v = (f(w).view(b, t, 4, -1).transpose(1, 2) for f in (self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, r, n)
        return h + self.o(a)


class Latents(nn.Module):
    """A Perceiver in miniature: 8 tokens embedded with positions, 6 latents attending to them,
    one self-attention over the latents, 8 learned queries attending to the latents, a readout
    tied to the embedding. ``form`` expands the latents otherwise (each refused)."""

    def __init__(self, n, form="array"):
        super().__init__()
        self.form = form
        self.emb, self.pos = nn.Embedding(32, n), nn.Embedding(8, n)
        self.latents = nn.Parameter(torch.randn(6, 1 if form == "column" else n))
        self.queries = nn.Parameter(torch.randn(8, n))
        self.cross, self.selfs, self.dec = Attend(n), Attend(n), Attend(n)
        self.bias = nn.Parameter(torch.zeros(32))

    def forward(self, ids):
        b, t = ids.shape
        x = self.emb(ids) + self.pos(torch.arange(t))
        if self.form == "column":  # one number per latent, broadcast over the features
            z = self.latents.expand(b, -1, x.shape[-1])
        elif self.form == "unsqueezed":
            z = self.latents[None].expand(b, -1, -1)
        else:
            z = self.latents.expand(b, -1, -1)
        z = self.selfs(*(2 * (self.cross(z, x),)))
        o = self.dec(self.queries.expand(b, -1, -1), z)
        return o @ self.emb.weight.t() + self.bias


def ids(model=None):
    return (torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Latents, (64, 128), ids)


def test_each_array_is_a_position_table_over_a_sequence_of_its_own(traced):
    src = traced.source
    assert "dim T_arr1 = 6" in src and "input pos_arr1 : positions[T_arr1]" in src
    assert "param latents : [n, T_arr1]" in src and "= latents @ pos_arr1" in src
    # the queries have as many rows as the tokens, but never meet them: a sequence apart
    assert "dim T_arr2 = 8" in src and "param queries : [n, T_arr2]" in src


def test_the_traced_latents_compute_the_model(traced):
    traced_computes_the_model(traced, Latents, ids)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_arrays_derive_what_the_position_table_derives(traced, optimizer):
    abc = abc_by_target(traced, optimizer)
    assert abc["latents"] == abc["queries"] == abc["pos.weight"]


@pytest.mark.parametrize("form, match", [
    ("column", r"a param \(latents\) of shape \[6, 1\] expanded to \[2, 6, 64\]"),
    ("unsqueezed", "an added axis on a param"),
])
def test_any_other_expand_of_a_param_is_refused_at_its_line(form, match):
    with pytest.raises(TraceError, match=match) as err:
        tp.from_torch(lambda n: Latents(n, form), (64, 128), ids)
    assert "test_latent_array.py" in str(err.value)
