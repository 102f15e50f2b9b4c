"""Axial position embeddings (Reformer's): a table per axis of a grid of the positions, each
broadcast over the other axes, read out as one row per token and concatenated along the
features, traced as lookups of each position's grid coordinate, ``Pa @ r`` with ``input r :
axial[T, A, s]``, side by side, ``cat(Pa @ r, Pb @ c, n)``. Oracles: the emitted program
computes the model's output at the base width, for the grid read row-major (Reformer's training
forward) or column-major, for the tables concatenated before they are read out and then each
example's positions selected (Reformer's eval forward), and for a grid of three axes; the torch
model of examples/axial_positions.tp derives the example's exponents, written by hand. A table
read in any other order of the positions is refused, as before."""

from __future__ import annotations

import pytest
from conftest import ROOT, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class Axial(nn.Module):
    """Token embeddings plus axial positions over a ``grid`` of the 8 tokens, a table of n/4
    features for the first axis and 3n/4 for the second (``dims``: one per axis, summing to
    n), then a norm and a readout. ``form``: how the grid is read out per token."""

    def __init__(self, n, grid=(2, 4), form="train", dims=None):
        super().__init__()
        self.grid, self.form = grid, form
        dims = dims or [n // 4, n - n // 4]
        self.e = nn.Embedding(32, n)
        self.w = nn.ParameterList()
        for axis, d in enumerate(dims):
            shape = [1] * len(grid)
            shape[axis] = grid[axis]
            self.w.append(nn.Parameter(torch.randn(*shape, d)))
        self.norm = nn.LayerNorm(n)
        self.out = nn.Linear(n, 32)

    def positions(self, b, t):
        parts = [w.expand((b, *self.grid, w.shape[-1])) for w in self.w]
        if self.form == "columns":  # the grid read column by column
            parts = [p.transpose(1, 2) for p in parts]
        if self.form == "reversed":  # the positions in reverse: no grid axis's coordinate
            parts = [p.flip(1) for p in parts]
        if self.form in ("eval", "per_example"):  # Reformer's eval forward: joined, then
            ids = torch.arange(t, device=self.e.weight.device)  # each example's positions
            # (per_example: the second example's reversed, no position's one row)
            ids = torch.stack([ids, ids.flip(0) if self.form == "per_example" else ids])
            cols = (ids.max().item() + self.grid[1]) // self.grid[1]
            joined = torch.cat([p[:, :cols] for p in parts], dim=-1).reshape(b, -1, self.d)
            return torch.cat([torch.index_select(joined[i], 0, ids[i]).unsqueeze(0)
                              for i in range(b)], dim=0)
        return torch.cat([p.reshape(b, t, -1) for p in parts], dim=-1)

    @property
    def d(self):
        return self.e.weight.shape[1]

    def forward(self, idx):
        h = self.e(idx) + self.positions(*idx.shape)
        return self.out(self.norm(h))


def ids(model=None):
    return (torch.randint(32, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("kw", [{}, pytest.param({"form": "columns"}, marks=pytest.mark.slow),
                                {"form": "eval"}], ids=["rows", "columns", "eval"])
def test_axial_positions_compute_the_model(kw):
    build = lambda n: Axial(n, **kw)  # noqa: E731
    traced = tp.from_torch(build, (16, 32), ids)
    strides = ("4", "1") if kw.get("form") != "columns" else ("1", "2")
    assert f"axial[T, f2, {strides[0]}]" in traced.source, traced.source
    assert f"axial[T, f4, {strides[1]}]" in traced.source
    assert " = cat(" in traced.source
    traced_computes_the_model(traced, build, ids)
    # the tables are lookups, input weights as the token table: Adam (0, 0, 0)
    d = tp.derive(traced.program, "adam")
    tables = [p for p, u in traced.params.items() if u.target.startswith("w.")]
    assert len(tables) == 2 and all((d.abc[p].a, d.abc[p].b, d.abc[p].c) == (0, 0, 0)
                                    for p in tables)


@pytest.mark.slow
def test_a_grid_of_three_axes_computes_the_model():
    def build(n):
        return Axial(n, grid=(2, 2, 2), dims=[n // 4, n // 4, n // 2])

    traced = tp.from_torch(build, (16, 32), ids)
    for line in ("axial[T, f2, 4]", "axial[T, f2, 2]", "axial[T, f2, 1]"):
        assert line in traced.source
    traced_computes_the_model(traced, build, ids)


@pytest.mark.parametrize("form", ["reversed", pytest.param("per_example", marks=pytest.mark.slow)])
def test_positions_in_another_order_are_refused(form):
    with pytest.raises(TraceError, match=r"test_axial_positions.py:\d+:\d+: error: cannot trace "
                       r"the op add on a reshaped param") as err:
        tp.from_torch(lambda n: Axial(n, form=form), (16, 32), ids)
    assert "Reformer's axial positions" in str(err.value)


class AxialGPT(nn.Module):
    """examples/axial_positions.tp in torch: Reformer's axial positions (its training
    forward) under a one-block pre-LN GPT of 4 heads, causal, and a readout."""

    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(32, n)
        self.pa = nn.Parameter(torch.randn(2, 1, n // 4))
        self.pb = nn.Parameter(torch.randn(1, 4, 3 * n // 4))
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(n), nn.LayerNorm(n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(n, 4 * n, bias=False), nn.Linear(4 * n, n, bias=False)
        self.u = nn.Linear(n, 32, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        pos = torch.cat([w.expand(b, 2, 4, -1).reshape(b, t, -1) for w in (self.pa, self.pb)],
                        dim=-1)
        h = self.e(idx) + pos
        a = self.ln1(h)
        q, k, v = (f(a).view(b, t, 4, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(y.transpose(1, 2).reshape(b, t, -1))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.u(self.lnf(h))


NAMES = {"e.weight": "E", "pa": "Pa", "pb": "Pb", "ln1.weight": "ga", "ln1.bias": "ba",
         "q.weight": "Wq", "k.weight": "Wk", "v.weight": "Wv", "o.weight": "Wo",
         "ln2.weight": "gm", "ln2.bias": "bm", "fc1.weight": "Wi", "fc2.weight": "Wp",
         "lnf.weight": "gf", "lnf.bias": "bf", "u.weight": "U"}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_example_in_torch_derives_its_exponents(optimizer):
    traced = tp.from_torch(AxialGPT, (64, 128), ids)
    traced_computes_the_model(traced, AxialGPT, ids)
    got = tp.derive(traced.program, optimizer)
    want = tp.derive(tp.parse_file(ROOT / "examples" / "axial_positions.tp"), optimizer)
    for p, use in traced.params.items():
        w = want.abc[NAMES[use.target]]
        assert (got.abc[p].a, got.abc[p].b, got.abc[p].c) == (w.a, w.b, w.c), use.target
