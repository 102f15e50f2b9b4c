"""A learned array of its own: a param [R, n] expanded over the batch alone
(``latents.expand(B, -1, -1)``, Perceiver's latent array and its decoder's queries), traced as a
position table read at all R positions of a sequence of its own, ``latents @ pos_arr1`` with
``input pos_arr1 : positions[T_arr1]``; and Perceiver's decoder, whose queries and keys have
channels of their own (fixed: 4 heads of 8) and its values the width in the same heads,
``mix(p, v, dv)``. Oracles: the emitted program computes the model's output at the base width
(cross-attention from the latents to the tokens, self-attention over the latents, a decoder
whose queries are a second array, a tied readout); the latents derive what a position table
derives; the Perceiver in miniature derives the exponents of examples/perceiver.tp, written by
hand; every other expand of a param is refused at its line."""

from __future__ import annotations

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class Perceiver(nn.Module):
    """examples/perceiver.tp in torch: the decoder's queries and keys in 4 heads of 8 (32
    channels at every width), its values the width in the same 4 heads."""

    def __init__(self, n, form="array"):
        super().__init__()
        self.form = form  # the latents expanded otherwise: each refused
        self.emb, self.pos = nn.Embedding(32, n), nn.Embedding(8, n)
        self.latents = nn.Parameter(torch.randn(6, 1 if form == "column" else n))
        self.queries = nn.Parameter(torch.randn(8, n))
        lin = [nn.Linear(n, 32 if i in (8, 9) else n, bias=False) for i in range(12)]
        self.lin = nn.ModuleList(lin)
        self.bias = nn.Parameter(torch.zeros(32))

    def attend(self, i, h, x, heads=4):
        (b, r, n), t = h.shape, x.shape[1]
        q = self.lin[i](h).view(b, r, heads, -1).transpose(1, 2)
        k = self.lin[i + 1](x).view(b, t, heads, -1).transpose(1, 2)
        v = self.lin[i + 2](x).view(b, t, heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, r, n)
        return self.lin[i + 3](a)

    def forward(self, ids):
        b, t = ids.shape
        x = self.emb(ids) + self.pos(torch.arange(t))
        a = F.layer_norm(x, x.shape[-1:])
        if self.form == "column":  # one number per latent, broadcast over the features
            z0 = self.latents.expand(b, -1, x.shape[-1])
        elif self.form == "unsqueezed":
            z0 = self.latents[None].expand(b, -1, -1)
        else:
            z0 = self.latents.expand(b, -1, -1)
        z1 = z0 + self.attend(0, F.layer_norm(z0, z0.shape[-1:]), a)
        u = F.layer_norm(z1, z1.shape[-1:])
        z2 = z1 + self.attend(4, u, u)
        w = F.layer_norm(z2, z2.shape[-1:])
        q0 = self.queries.expand(b, -1, -1)
        o = q0 + self.attend(8, F.layer_norm(q0, q0.shape[-1:]), w)
        return o @ self.emb.weight.t() + self.bias


# examples/perceiver.tp's param of each torch one
NAMES = {"emb.weight": "E", "pos.weight": "P", "latents": "L", "queries": "D", "bias": "bU",
         **{f"lin.{i}.weight": f"W{'qkvo'[i % 4]}{i // 4 + 1}" for i in range(12)}}


def ids(model=None):
    return (torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def perceiver():
    return tp.from_torch(Perceiver, (64, 128), ids)


def test_each_array_is_a_position_table_over_a_sequence_of_its_own(perceiver):
    src = perceiver.source
    assert "dim T_arr1 = 6" in src and "input pos_arr1 : positions[T_arr1]" in src
    assert "param latents : [n, T_arr1]" in src and "= latents @ pos_arr1" in src
    # the queries have as many rows as the tokens, but never meet them: a sequence apart
    assert "dim T_arr2 = 8" in src and "param queries : [n, T_arr2]" in src


def test_the_traced_perceiver_computes_the_model(perceiver):
    traced_computes_the_model(perceiver, Perceiver, ids)


def test_the_decoder_values_take_their_own_head_dim(perceiver):
    mixes = [s for s in perceiver.source.splitlines() if "= mix(" in s]
    assert len(mixes) == 3 and mixes[2].endswith(", n_by4)") and "dim f8 = 8" in perceiver.source


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_perceiver_derives_what_examples_perceiver_tp_derives(perceiver, optimizer):
    got = {NAMES[t]: abc for t, abc in abc_by_target(perceiver, optimizer).items()}
    d = tp.derive(tp.parse_file(ROOT / "examples" / "perceiver.tp"), optimizer)
    want = {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in NAMES.values()}
    assert got == want
    assert got["L"] == got["D"] == got["P"]  # the arrays derive as the position table


@pytest.mark.parametrize("form, match", [
    ("column", r"a param \(latents\) of shape \[6, 1\] expanded to \[2, 6, 64\]"),
    pytest.param("unsqueezed", "an added axis on a param", marks=pytest.mark.slow),
])
def test_any_other_expand_of_a_param_is_refused_at_its_line(form, match):
    with pytest.raises(TraceError, match=match) as err:
        tp.from_torch(lambda n: Perceiver(n, form), (64, 128), ids)
    assert "test_latent_array.py" in str(err.value)


def test_the_check_reads_the_model_where_the_head_dims_meet(perceiver):
    """The check's probe converts the model's graph at its width, 32 here (n/4 = 8, the
    queries' head dim): written as the traced program's mix(p, v, dv), it matches it."""
    from tensorprog.fromtorch import MuP
    from tensorprog.fromtorch.check import probe

    model = Perceiver(32)
    read = probe(MuP(perceiver, "adam"), model, ids(model))
    assert read()["matmul"].shape == (2, 8, 32)


@pytest.mark.slow  # the check's probe above reads such a width by default
def test_where_the_head_dims_meet_the_values_keep_their_own():
    """Traced at 32 and 64, the values' head dim n/4 is the queries' 8 at 32: mix(p, v) would
    compute the same there, and the program is written as at 64, mix(p, v, dv)."""
    traced = tp.from_torch(Perceiver, (32, 64), ids)
    assert sum(", n_by4)" in s for s in traced.source.splitlines() if "= mix(" in s) == 1
    traced_computes_the_model(traced, Perceiver, ids)


class Tokens(nn.Module):
    """A param [2, n] expanded over the batch and put before the tokens by torch.cat: two
    learned tokens (as a param [1, 2, n] is), not an array of its own."""

    def __init__(self, n):
        super().__init__()
        self.emb = nn.Embedding(32, n)
        self.reg = nn.Parameter(torch.randn(2, n))
        self.o = nn.Linear(n, 5)

    def forward(self, ids):
        x = self.emb(ids)
        return self.o(torch.cat([self.reg.expand(x.shape[0], -1, -1), x], dim=1))


def test_an_array_put_before_the_tokens_is_learned_tokens():
    traced = tp.from_torch(Tokens, (64, 128), ids)
    assert "prepend(reg_row1, " in traced.source and "prepend(reg_row0, " in traced.source
    assert "positions" not in traced.source
    traced_computes_the_model(traced, Tokens, ids)


class OneQuery(nn.Module):
    """Perceiver's classification decoder in miniature: latents attend to the tokens, one
    learned query (a param [1, n]) attends to the latents, the classes read its token,
    ``logits[:, 0]``."""

    def __init__(self, n):
        super().__init__()
        self.emb = nn.Embedding(32, n)
        self.latents, self.query = nn.Parameter(torch.randn(6, n)), nn.Parameter(torch.randn(1, n))
        self.lin = nn.ModuleList(nn.Linear(n, n) for _ in range(8))
        self.head = nn.Linear(n, 3)

    attend = Perceiver.attend

    def forward(self, ids):
        x = self.emb(ids)
        z = self.latents.expand(x.shape[0], -1, -1)
        z = z + self.attend(0, z, x)
        q = self.query.expand(x.shape[0], -1, -1)
        return self.head(q + self.attend(4, q, z))[:, 0, :]


def test_one_learned_query_is_an_array_of_one_token_read_with_first():
    traced = tp.from_torch(OneQuery, (64, 128), ids)
    assert "dim T_arr1 = 1" in traced.source and "= first(" in traced.source
    traced_computes_the_model(traced, OneQuery, ids)


@pytest.mark.slow
def test_hugging_faces_perceiver_masked_lm_traces_to_what_it_computes():
    """transformers' PerceiverForMaskedLM, small: its latents and decoder queries as arrays,
    its decoder's values in its 8 heads of 32-channel queries (fixed in its code) as
    mix(p, v, dv); the traced program computes the model."""
    t = pytest.importorskip("transformers")

    def build(n):
        cfg = t.PerceiverConfig(d_latents=n, d_model=n, num_latents=16, vocab_size=32,
                                num_self_attends_per_block=1, num_self_attention_heads=4,
                                num_cross_attention_heads=4, max_position_embeddings=8,
                                attention_probs_dropout_prob=0.0)
        return t.PerceiverForMaskedLM(cfg).eval()

    traced = tp.from_torch(build, (64, 128), ids)
    assert "dim T_arr1 = 16" in traced.source and ", n_by8)" in traced.source
    traced_computes_the_model(traced, build, ids)
