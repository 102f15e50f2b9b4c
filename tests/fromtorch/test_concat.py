"""from_torch on a concatenation of vectors along their features fed to one linear layer.

``W @ cat(a, b) + bias`` traces as ``W_cols0 @ a + W_cols1 @ b + bias``, the column blocks of W
params of their own. The oracle is the same model written with one linear layer per part
(``mix_a(x) + mix_b(u)``): its params must derive the blocks' exponents exactly. Apply leaves the
model bit-identical at the base width and, at twice it, scales each block of the one torch tensor
to its own derived std; a tensor has one LR, which the blocks share here. Also: row blocks of the
column blocks (a chunk of the layer's output), attention's factor on such a query (a patch), a
cat in every layer of a stack, and per-head parts times a constant (LongCat-Flash's)."""

import math
import re
from fractions import Fraction

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")

from tensorprog import derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Cat(torch.nn.Module):
    """An embedding x, an MLP's hidden u = relu(fc(x)), and one linear layer on cat(x, u) (or,
    ``nested``, on cat(cat(x, u), x), RoCBert's embeddings' way); ``split`` writes the same
    with one layer per part."""

    def __init__(self, n, split=False, nested=False, gated=False):
        super().__init__()
        self.split, self.nested, self.gated = split, nested, gated
        self.e = torch.nn.Embedding(13, n)
        self.fc = torch.nn.Linear(n, 2 * n)
        if split:
            self.mix_a = torch.nn.Linear(n, n, bias=False)
            self.mix_b = torch.nn.Linear(2 * n, n)
        else:  # gated: two row blocks, a value and its gate (AXK2's query and gate)
            self.mix = torch.nn.Linear((4 if nested else 3) * n, (2 if gated else 1) * n)
        self.head = torch.nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        u = torch.relu(self.fc(x))
        if self.split:
            h = self.mix_a(x) + self.mix_b(u)
        elif self.gated:
            v, g = self.mix(torch.cat([x, u], dim=-1)).chunk(2, dim=-1)
            h = v * torch.sigmoid(g)
        elif self.nested:
            h = self.mix(torch.cat([torch.cat([x, u], dim=-1), x], dim=-1))
        else:
            h = self.mix(torch.cat([x, u], dim=-1))
        return self.head(h)


@pytest.fixture(scope="module")
def joined():
    return from_torch(Cat, WIDTHS, _tokens)


@pytest.fixture(scope="module")
def split():
    return from_torch(lambda n: Cat(n, split=True), WIDTHS, _tokens)


def test_a_concatenation_into_a_linear_layer_traces_as_its_column_blocks(joined):
    src = joined.source
    assert re.search(r"^param mix_weight_cols0 : \[n, n\]$", src, re.M), src
    assert re.search(r"^param mix_weight_cols1 : \[n, n_x2\]$", src, re.M), src
    assert re.search(r"^\w+ = mix_weight_cols0 @ (\w+) \+ mix_weight_cols1 @ \w+ \+ mix_bias$",
                     src, re.M), src
    nested = from_torch(lambda n: Cat(n, nested=True), WIDTHS, _tokens)
    assert re.search(r"^\w+ = mix_weight_cols0 @ (\w+) \+ mix_weight_cols1 @ \w+ \+ "
                     r"mix_weight_cols2 @ \1 \+ mix_bias$", nested.source, re.M), nested.source


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_column_blocks_derive_as_one_layer_per_part(joined, split, optimizer):
    same = {"mix_weight_cols0": "mix_a_weight", "mix_weight_cols1": "mix_b_weight",
            "mix_bias": "mix_b_bias"}
    d, oracle = derive(joined.program, optimizer), derive(split.program, optimizer)
    got = {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in joined.params}
    want = {p: (oracle.abc[q].a, oracle.abc[q].b, oracle.abc[q].c)
            for p, q in ((p, same.get(p, p)) for p in joined.params)}
    assert got == want


def test_apply_scales_each_block_of_the_tensor_to_its_own_std(joined):
    apply_is_bit_identical_at_base(joined, Cat, _tokens)
    mup = MuP(joined, "adam")
    torch.manual_seed(0)
    model = Cat(64)  # twice the base width
    with torch.no_grad():  # blocks far apart: each must be scaled on its own
        model.mix.weight[:, :64].normal_(0, 0.01)
        model.mix.weight[:, 64:].normal_(0, 1.0)
    mup.apply(model)
    sigma = joined.base["mix.weight"][1]
    for name, block in (("mix_weight_cols0", model.mix.weight[:, :64]),
                        ("mix_weight_cols1", model.mix.weight[:, 64:])):
        want = sigma * 2 ** -float(mup.init_exp[name])  # to float32's rounding
        assert math.isclose(float(block.detach().double().std()), want, rel_tol=1e-6), name
    assert mup.lr_multipliers(model)["mix.weight"] == 2 ** -float(mup.lr_exp["mix_weight_cols0"])


def test_row_blocks_of_a_layer_on_a_concatenation_are_blocks_of_its_column_blocks():
    # a chunk of the layer's output features makes row blocks, each of both column blocks
    traced = from_torch(lambda n: Cat(n, gated=True), WIDTHS, _tokens)
    for part in (0, 1):
        assert re.search(rf"^\w+ = mix_weight_part{part}_cols0 @ \w+ \+ "
                         rf"mix_weight_part{part}_cols1 @ \w+ \+ mix_bias_part{part}$",
                         traced.source, re.M), traced.source
    apply_is_bit_identical_at_base(traced, lambda n: Cat(n, gated=True), _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Cat(64, gated=True)
    with torch.no_grad():  # four blocks far apart: each must be scaled on its own
        for i, (rows, cols) in enumerate([(r, c) for r in (0, 64) for c in (0, 64)]):
            model.mix.weight[rows:rows + 64, cols:cols + (64 if cols == 0 else 128)] \
                .normal_(0, 10.0 ** -i)
    mup.apply(model)
    sigma = traced.base["mix.weight"][1]
    for part, rows in ((0, slice(0, 64)), (1, slice(64, 128))):
        for k, cols in ((0, slice(0, 64)), (1, slice(64, 192))):
            name = f"mix_weight_part{part}_cols{k}"
            block = model.mix.weight[rows, cols].detach().double()
            want = sigma * 2 ** -float(mup.init_exp[name])
            assert math.isclose(float(block.std()), want, rel_tol=1e-6), name


class Attention(torch.nn.Module):
    """Causal attention over 4 heads (the head dim grows) whose query is a linear layer on
    cat(x, u): attention's 1/dh against the model's 1/sqrt(dh) is a multiplier on the query."""

    def __init__(self, n):
        super().__init__()
        self.e, self.fc = torch.nn.Embedding(13, n), torch.nn.Linear(n, n)
        self.q = torch.nn.Linear(2 * n, n)
        self.k, self.v, self.o = (torch.nn.Linear(n, n) for _ in range(3))
        self.head = torch.nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        u = torch.relu(self.fc(x))
        b, t = idx.shape

        def heads(y):
            return y.view(b, t, 4, -1).transpose(1, 2)

        q = heads(self.q(torch.cat([x, u], dim=-1)))
        a = torch.nn.functional.scaled_dot_product_attention(q, heads(self.k(x)),
                                                             heads(self.v(x)), is_causal=True)
        return self.head(x + self.o(a.transpose(1, 2).reshape(b, t, -1)))


def test_a_query_on_a_concatenation_takes_attentions_factor_as_a_patch_of_its_output():
    # no one column block's init and LR can take the factor of the whole query: the layer's
    # output is multiplied instead, exactly the program's query times it
    traced = from_torch(Attention, WIDTHS, _tokens)
    mup = apply_is_bit_identical_at_base(traced, Attention, _tokens)
    assert not mup.folded
    [patch] = mup.patches
    assert (patch.module, patch.rows, patch.exponent) == ("q", None, Fraction(1, 2))
    assert "column blocks, a concatenation's" in patch.why


class HeadParts(torch.nn.Module):
    """Attention of 4 heads, each head's query and key a no-rotary part and a rotary part
    concatenated back (MLA's, ops_mla.py); ``c``: LongCat-Flash's constant on the parts."""

    def __init__(self, n, c=None):
        super().__init__()
        self.c, self.dn, self.dr = c, n // 4, n // 8
        self.e, self.head = torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        self.q, self.k = (torch.nn.Linear(n, 4 * (self.dn + self.dr)) for _ in range(2))
        self.v, self.o = torch.nn.Linear(n, n), torch.nn.Linear(n, n)

    def forward(self, idx):
        x = self.e(idx)
        b, t = idx.shape

        def heads(y):
            return y.view(b, t, 4, -1).transpose(1, 2)

        q, k = (torch.split(heads(f(x)), [self.dn, self.dr], dim=-1) for f in (self.q, self.k))
        if self.c is not None:
            q = [part * self.c for part in q]
        a = torch.nn.functional.scaled_dot_product_attention(
            torch.cat(q, dim=-1), torch.cat(k, dim=-1), heads(self.v(x)), is_causal=True)
        return self.head(x + self.o(a.transpose(1, 2).reshape(b, t, -1)))


def test_per_head_parts_times_a_constant_concatenate_as_the_parts():
    # before: refused as "a concatenation of vectors" (LongCat-Flash's q_pass * s, q_rot * s)
    scaled = from_torch(lambda n: HeadParts(n, 0.5), WIDTHS, _tokens)
    plain = from_torch(HeadParts, WIDTHS, _tokens)
    assert re.search(r"^\w+ = 0\.5 \* \w+$", scaled.source, re.M), scaled.source
    for optimizer in ("adam", "sgd"):
        assert abc_by_target(scaled, optimizer) == abc_by_target(plain, optimizer)


class Block(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc, self.mix = torch.nn.Linear(n, n), torch.nn.Linear(2 * n, n)

    def forward(self, x):
        return x + self.mix(torch.cat([x, torch.relu(self.fc(x))], dim=-1))


class Deep(torch.nn.Module):
    def __init__(self, n, depth=2):
        super().__init__()
        self.e, self.head = torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        self.layers = torch.nn.ModuleList(Block(n) for _ in range(depth))

    def forward(self, idx):
        x = self.e(idx)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_a_concatenation_in_every_layer_rolls_into_the_block_and_applies_at_any_depth():
    traced = from_torch(Deep, WIDTHS, _tokens)
    assert "repeat L layers" in traced.source and "mix_weight_cols1 @" in traced.source
    mup = MuP(traced, "adam")
    model = Deep(64, depth=4)  # twice the width and the depth
    mup.apply(model)
    sigma = traced.base["layers.0.mix.weight"][1]
    for k, cols in ((0, slice(0, 64)), (1, slice(64, 128))):
        name = f"layers.mix_weight_cols{k}"
        want = sigma * 2 ** -float(mup.init_exp[name]) * 2 ** -float(mup.init_exp_L[name])
        block = model.layers[3].mix.weight[:, cols].detach().double()
        assert math.isclose(float(block.std()), want, rel_tol=1e-6), name
