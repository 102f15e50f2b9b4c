"""Entries of a 1-D param read one by one as numbers (NeoMME's ``self.lambdas[0] * h +
self.lambdas[1] * h0``): each entry read is a one-entry gain of the program (``lam_0 : [f1] =
1``), mapped back to its entry, so apply acts on the whole tensor in place. Oracles: the traced
program computes the model; it derives what the same model with one-entry params derives; apply
leaves the model bit-identical at the base width and keeps each entry's constant init at twice
it. Every other use of an entry is refused at its line."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402


class Block(nn.Module):
    def __init__(self, n, entries: bool, init=(1.0, 0.5)):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        if entries:
            self.lam = nn.Parameter(torch.tensor(init))
        else:  # the same numbers as one-entry params
            self.a, self.b = (nn.Parameter(torch.tensor([x])) for x in init)
        self.entries = entries

    def forward(self, h, h0):
        a, b = (self.lam[0], self.lam[-1]) if self.entries else (self.a, self.b)
        x = a * h + h0 * b
        return h + self.fc2(torch.relu(self.fc1(x)))


class Mixed(nn.Module):
    """Two blocks, each mixing the stream with the embeddings by two learned numbers."""

    def __init__(self, n, entries=True, form=None):
        super().__init__()
        self.emb, self.out = nn.Embedding(32, n), nn.Linear(n, 8)
        self.layers = nn.ModuleList(Block(n, entries) for _ in range(2))
        self.form = form  # another use of an entry, refused

    def forward(self, ids):
        h0 = self.emb(ids)
        h = h0
        for layer in self.layers:
            h = layer(h, h0)
        if self.form is not None:
            h = self.form(self, h)
        return self.out(h)


def ids(model=None):
    return (torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Mixed, (64, 128), ids)


def test_each_entry_read_is_a_one_entry_gain_of_its_constant_init(traced):
    src = traced.source
    assert "param layers_0_lam_0 : [f1] = 1" in src and "param layers_0_lam_1 : [f1] = 0.5" in src
    assert "layers_0_lam_0 * " in src and "layers_0_lam_1 * " in src
    uses = {(u.target, u.index, u.entries) for u in traced.params.values() if u.entries}
    assert uses == {(f"layers.{i}.lam", k, 2) for i in range(2) for k in range(2)}


def test_the_traced_entries_compute_the_model(traced):
    traced_computes_the_model(traced, Mixed, ids)


@pytest.fixture(scope="module")
def own():
    return tp.from_torch(lambda n: Mixed(n, entries=False), (64, 128), ids)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_entries_derive_what_one_entry_params_derive(traced, own, optimizer):
    got = tp.derive(traced.program, optimizer).abc
    want = tp.derive(own.program, optimizer).abc
    names = {p: p.replace("lam_0", "a").replace("lam_1", "b") for p in got}
    assert {p: got[p] for p in names} == {p: want[q] for p, q in names.items()}
    assert any("lam" in p for p in got)


def test_apply_keeps_the_entries_in_place(traced):
    mup = apply_is_bit_identical_at_base(traced, Mixed, ids)
    model = Mixed(256)
    mup.apply(model)
    assert torch.equal(model.layers[1].lam, torch.tensor([1.0, 0.5]))
    assert mup.lr_multipliers(model)["layers.1.lam"] == 1.0  # Adam: a gain's LR is Θ(1)


def _sum(m, h):
    return h + m.layers[0].lam[0]


def _of_product(m, h):
    return m.layers[0].lam[0] * m.layers[0].lam[1] * h


def _function(m, h):
    return torch.sigmoid(m.layers[0].lam[0]) * h


SLOW = pytest.mark.slow  # each a trace of its own; the sum runs by default


@pytest.mark.parametrize("form, match", [
    (_sum, "cannot trace a sum with one entry of a param: an entry is traced only as a number"),
    pytest.param(_of_product, "cannot trace a product of a number or another entry with one "
                 "entry of a param", marks=SLOW),
    pytest.param(_function, "cannot trace sigmoid of one entry of a param", marks=SLOW),
])
def test_other_uses_of_an_entry_are_refused_at_their_line(form, match):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        tp.from_torch(lambda n: Mixed(n, form=form), (64, 128), ids)
    assert "test_param_entries.py" in str(err.value)


class Drawn(Mixed):
    def __init__(self, n):
        super().__init__(n)
        self.layers[0].lam = nn.Parameter(torch.randn(2))


class Growing(Mixed):
    def __init__(self, n):
        super().__init__(n)
        self.layers[0].lam = nn.Parameter(torch.ones(n))


@pytest.mark.slow  # two traces of their own
@pytest.mark.parametrize("build, match", [
    (Drawn, "entry 0 of the param layers.0.lam read as a number, whose init is a random draw"),
    (Growing, "the param has 64 entries at width 64 and 128 at 128"),
])
def test_entries_without_a_constant_init_or_of_a_growing_param_are_refused(build, match):
    with pytest.raises(tp.TensorProgError, match=match) as err:
        tp.from_torch(build, (64, 128), ids)
    assert "test_param_entries.py" in str(err.value)


def test_entries_whose_lrs_differ_are_refused_at_their_line(traced):
    mup = MuP(traced, "adam")
    first = next(p for p, u in traced.params.items() if u.entries and "lam" in u.target)
    mup.lr_exp[first] += 1
    with pytest.raises(tp.TensorProgError, match="its entries read as numbers need different "
                       "LRs") as err:
        mup.lr_multipliers(Mixed(64))
    assert "test_param_entries.py" in str(err.value)


class Rows(nn.Module):
    """Rows of a table read directly (ProphetNet's ``ngram_embeddings.weight[i]``), added to
    every token (``sum``: rows 1 and -2, row 0 again) or multiplying it (``product``), or
    row 0 of a linear layer's weight beside the layer (``matrix``)."""

    def __init__(self, n, form):
        super().__init__()
        self.form = form
        self.e, self.g, self.lin = nn.Embedding(32, n), nn.Embedding(2, n), nn.Linear(n, n)
        self.out = nn.Linear(n, 8)

    def forward(self, idx):
        h, w = self.e(idx), self.g.weight
        if self.form == "sum":  # (the row first: the sum is per token all the same)
            h = w[1] + h + w[-2]
        elif self.form == "product":
            h = h * w[0]
        else:
            h = self.lin(h) + self.lin.weight[0] + w[0]
        return self.out(torch.relu(h))[:, 0]


@pytest.mark.parametrize("form", ["sum", pytest.param("product", marks=SLOW)])
def test_a_row_read_directly_is_that_rows_vector_param(form):
    traced = tp.from_torch(lambda n: Rows(n, form), (64, 128), ids)
    rows = {u.index for p, u in traced.params.items() if u.target == "g.weight"}
    assert rows == ({0, 1} if form == "sum" else {0})
    traced_computes_the_model(traced, lambda n: Rows(n, form), ids)
    abc = tp.derive(traced.program, "adam").abc  # a bias's (a gain's), as the lookup's row
    assert all((abc[p].a, abc[p].b, abc[p].c) == (0, 0, 0) for p, u in traced.params.items()
               if u.target == "g.weight")


@SLOW
def test_a_row_read_beside_the_matrix_is_refused_where_their_lrs_differ():
    traced = tp.from_torch(lambda n: Rows(n, "matrix"), (64, 128), ids)
    with pytest.raises(tp.TensorProgError, match=r"test_param_entries.py:\d+:\d+: error: "
                       r"lin.weight: a row of it read as a vector of its own"):
        MuP(traced, "adam").param_groups(Rows(128, "matrix"), lr=1e-3)
