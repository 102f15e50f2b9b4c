"""from_torch on a fused layer whose row blocks are not the same share of its rows at every
width: a block of a fixed number of rows beside one that grows (rows.py).

Multi-query attention with heads of a fixed dim (Falcon's ``query_key_value``: n query rows, one
key and one value head of 16) traces as three params, the query's [n, n] and the key's and
value's [16, n], with bounds read from the two widths (rows 0..S-32, S-32..S-16, S-16..S of the
S rows); derive then refuses the program for its own reason (keys of a finite dim serving a
growing number of query heads: docs/theory.md). An MLP whose first layer also gives 13 logits
(a readout's block beside a hidden one) derives each block as the separate layer it stands for
(the oracle: the same model written with two layers, as a program), and MuP refuses the one
tensor their different LRs (tests/test_error_catalogue.py)."""

from fractions import Fraction

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")

from tensorprog import derive  # noqa: E402
from tensorprog.errors import EngineError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.patches import scale_rows  # noqa: E402
from tensorprog.fromtorch.rows import row_range  # noqa: E402
from tensorprog.lang.parse import parse  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class MultiQuery(torch.nn.Module):
    """Falcon's multi-query attention: one fused layer viewed as n/16 + 2 heads of 16, split
    over the heads into the queries, one key head and one value head."""

    def __init__(self, n, dh=16):
        super().__init__()
        self.h, self.dh = n // dh, dh
        self.e, self.head = torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        self.qkv = torch.nn.Linear(n, n + 2 * dh)

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx)
        q, k, v = self.qkv(x).view(b, t, self.h + 2, self.dh).split([self.h, 1, 1], dim=2)
        a = torch.nn.functional.scaled_dot_product_attention(
            *(y.transpose(1, 2) for y in (q, k, v)), is_causal=True, enable_gqa=True)
        return self.head(x + a.transpose(1, 2).reshape(b, t, -1))


class Skip(torch.nn.Module):
    """An MLP whose first layer's last 13 rows are logits added to the readout's."""

    def __init__(self, n, sliced=False):
        super().__init__()
        self.n, self.e, self.head = n, torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        self.fc, self.sliced = torch.nn.Linear(n, n + 13), sliced

    def forward(self, idx):
        y = self.fc(self.e(idx))
        h, skip = (y[..., :self.n], y[..., self.n:]) if self.sliced else y.split([self.n, 13], -1)
        return self.head(torch.relu(h)) + skip


# Skip written with one layer per block: fc (the hidden block) and skip (the logits' block)
SEPARATE = """width n = 32
dim V = 13
dim T = 8
input tok : tokens[T, V]
param e_weight : [n, V]
param fc_weight : [n, n]
param fc_bias : [n]
param skip_weight : [V, n]
param skip_bias : [V]
param head_weight : [V, n]
param head_bias : [V]
x = e_weight @ tok
h = relu(fc_weight @ x + fc_bias)
out = head_weight @ h + head_bias + (skip_weight @ x + skip_bias)
output out
"""


@pytest.fixture(scope="module")
def mqa():
    return from_torch(MultiQuery, WIDTHS, _tokens)


def test_a_key_and_value_head_of_a_fixed_dim_beside_the_query_trace_as_bounds(mqa):
    # before: refused as "a block of a fused layer that is not the same share of its rows at
    # every width" (2/3 of the rows at 32, 4/5 at 64)
    src = mqa.source
    for part, dims in ((0, "n, n"), (1, "f16, n"), (2, "f16, n")):
        assert f"param qkv_weight_part{part} : [{dims}]" in src, src
    # read off the two widths, the bounds hold at any other: rows of qkv.weight at width 128
    got = [row_range(mqa.params[f"qkv_weight_part{i}"].rows,
                     mqa.params[f"qkv_weight_part{i}"].row_consts, 128 + 32) for i in range(3)]
    assert got == [(0, 128), (128, 144), (144, 160)]


def test_derive_refuses_the_fixed_key_dim_for_its_own_reason(mqa):
    with pytest.raises(EngineError, match=r"the keys \w+ have the finite dim f16 but serve "
                       "query heads whose number grows"):
        MuP(mqa, "adam")


@pytest.fixture(scope="module")
def skip():
    return from_torch(Skip, WIDTHS, _tokens)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_readout_block_beside_a_hidden_block_derives_as_separate_layers(skip, optimizer):
    d, oracle = derive(skip.program, optimizer), derive(parse(SEPARATE), optimizer)
    same = {"fc_weight_part0": "fc_weight", "fc_bias_part0": "fc_bias",
            "fc_weight_part1": "skip_weight", "fc_bias_part1": "skip_bias"}
    got = {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in skip.params}
    want = {p: (oracle.abc[q].a, oracle.abc[q].b, oracle.abc[q].c)
            for p, q in ((p, same.get(p, p)) for p in skip.params)}
    assert got == want
    init = {p: Fraction(str(d.abc[p].a + d.abc[p].b)) for p in same}
    # the hidden block starts at 1/√n, the logits' block at 1/n, as a readout
    assert (init["fc_weight_part0"], init["fc_weight_part1"]) == (Fraction(1, 2), 1)


def test_a_forward_patch_scales_the_rows_the_bounds_give():
    # attention's factor on a query of fixed-size neighbours: a patch on the fused layer's
    # output multiplies rows 0..S-32 of its S features at any width
    out = scale_rows(torch.ones(2, 160), 2.0, (0, 1, None, None, (0, -32)))
    assert out[:, :128].eq(2).all() and out[:, 128:].eq(1).all()


def test_a_slice_of_the_rows_at_a_place_that_moves_traces_as_the_split(skip):
    # y[..., n:] is named by its place, rows n.. in blocks of 13 (part 2 at 32, part 4 at 64):
    # before, refused as a graph that differs between widths
    sliced = from_torch(lambda n: Skip(n, sliced=True), WIDTHS, _tokens)
    assert "param fc_weight_part2 : [f13, n]" in sliced.source, sliced.source
    use = sliced.params["fc_weight_part2"]
    assert (use.rows, use.row_consts) == (skip.params["fc_weight_part1"].rows,
                                          skip.params["fc_weight_part1"].row_consts)


class Part(torch.nn.Module):
    """A fused layer of n + 13 rows whose last 13 rows are never read."""

    def __init__(self, n):
        super().__init__()
        self.n, self.e, self.head = n, torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        self.fc = torch.nn.Linear(n, n + 13)

    def forward(self, idx):
        h, _ = self.fc(self.e(idx)).split([self.n, 13], -1)
        return self.head(torch.relu(h))


def test_a_block_beside_a_fixed_one_is_rescaled_at_another_width():
    # before: MuP.apply at any width but the base raised a TypeError on Python < 3.12, writing
    # the block's bounds f·S + c (a Fraction has no format "+" there)
    traced = from_torch(Part, WIDTHS, _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Part(128)
    torch.nn.init.normal_(model.fc.weight, std=1.0)  # far from µP's std, which apply sets
    before = model.fc.weight.detach().clone()
    report = mup.apply(model)
    assert any(line.startswith("init fc.weight[0·S+0:1·S-13 of the S rows]: std ")
               for line in report.lines), report.lines
    w = model.fc.weight.detach()
    # the hidden block's std: the base's (width 32) times (128/32)^-1/2; the unread rows kept
    assert w[:128].std().item() == pytest.approx(traced.base["fc.weight"][1] / 2, rel=1e-4)
    assert torch.equal(w[128:], before[128:])
    # Adam's LR of a hidden layer: the base's times 32/128
    lr = next(g["lr"] for g in mup.param_groups(model, 1e-3)
              if any(p is model.fc.weight for p in g["params"]))
    assert lr == pytest.approx(1e-3 / 4)


class Blocked(torch.nn.Module):
    """CodeGen's attention: the fused qkv laid out in mp = 2 blocks, each holding its heads'
    query, value and key (in that order), viewed [mp, 3n/mp], split, and each part viewed into
    heads of 4 (finer than its block): heads n/4 grow with the width, head dim fixed. Separate:
    the same attention with a query, key and value layer of its own."""

    def __init__(self, n, separate=False, mp=2, dh=4):
        super().__init__()
        self.n, self.mp, self.dh, self.separate = n, mp, dh, separate
        self.e, self.head = torch.nn.Embedding(13, n), torch.nn.Linear(n, 13, bias=False)
        self.qkv = torch.nn.Linear(n, 3 * n, bias=False)
        self.o = torch.nn.Linear(n, n, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx)
        if self.separate:  # the same rows, sliced out of the blocks by hand
            w = self.qkv.weight.view(self.mp, 3, -1, self.n)
            q, v, k = (x @ w[:, i].reshape(self.n, self.n).T for i in range(3))
        else:
            q, v, k = self.qkv(x).view(b, t, self.mp, -1).split(self.n // self.mp, dim=-1)
        q, k, v = (y.reshape(b, t, -1, self.dh).transpose(1, 2) for y in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.o(a.transpose(1, 2).reshape(b, t, self.n)))


def test_blocks_of_heads_viewed_into_finer_heads_trace_as_the_blocks_rows():
    traced = from_torch(Blocked, (16, 32), _tokens)
    parts = {p: u for p, u in traced.params.items() if u.target == "qkv.weight"}
    # each part is a third of every block's rows: query, value, key, in CodeGen's order
    assert sorted((u.rows, u.groups) for u in parts.values()) == [
        ((Fraction(i, 3), Fraction(i + 1, 3)), 2) for i in range(3)]
    assert "dot(getitem, getitem_2, f4)" in traced.source  # heads of 4, not of a block
    model = Blocked(16)
    x = _tokens(model)[0]
    for sep in (False, True):  # the oracle: the rows sliced out by hand give the same output
        other = Blocked(16, separate=sep)
        other.load_state_dict(model.state_dict())
        assert torch.allclose(other(x), model(x), atol=1e-6)
    w = model.qkv.weight.detach()
    q = model.e(x) @ w.view(2, 3, -1, 16)[:, 0].reshape(16, 16).T
    lo, hi = (int(r * 24) for r in parts["qkv_weight_part0"].rows)  # of each group's 24 rows
    rows = torch.cat([w[g * 24 + lo:g * 24 + hi] for g in range(2)])
    assert torch.allclose(model.e(x) @ rows.T, q)
    for optimizer in ("adam", "sgd"):
        d = derive(traced.program, optimizer)
        assert {(d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in parts} == {
            (d.abc["o_weight"].a, d.abc["o_weight"].b, d.abc["o_weight"].c)}  # hidden, as o's


class Interleaved(torch.nn.Module):
    """A gated MLP whose gate and up rows alternate in one layer (gpt-oss's gate_up[..., ::2],
    [..., 1::2]); separate: the same with a layer each."""

    def __init__(self, n, separate=False):
        super().__init__()
        self.separate = separate
        self.e, self.head = torch.nn.Embedding(13, n), torch.nn.Linear(n, 13)
        if separate:
            self.g, self.u = torch.nn.Linear(n, n), torch.nn.Linear(n, n)
        else:
            self.fc = torch.nn.Linear(n, 2 * n)

    def forward(self, idx):
        x = self.e(idx)
        if self.separate:
            g, u = self.g(x), self.u(x)
        else:
            y = self.fc(x)
            g, u = y[..., ::2], y[..., 1::2]
        return self.head(x + torch.nn.functional.silu(g) * u)


def test_every_other_row_traces_as_a_layer_of_its_own():
    traced = from_torch(Interleaved, WIDTHS, _tokens)
    rows = {p: (u.rows, u.group_rows) for p, u in traced.params.items() if u.target == "fc.weight"}
    assert rows == {"fc_weight_part0": ((0, Fraction(1, 2)), 2),
                    "fc_weight_part1": ((Fraction(1, 2), 1), 2)}
    oracle = from_torch(lambda n: Interleaved(n, True), WIDTHS, _tokens)
    got, want = abc_by_target(traced, rows=True), abc_by_target(oracle)
    assert got[("fc.weight", (0, Fraction(1, 2)))] == want["g.weight"]
    assert got[("fc.bias", (Fraction(1, 2), 1))] == want["u.bias"]
    apply_is_bit_identical_at_base(traced, Interleaved, _tokens)


class EmptyPart(torch.nn.Module):
    """A fused layer split into [n, 0, n] (a config that gives one part no features)."""

    def __init__(self, n, read_empty=True):
        super().__init__()
        self.n, self.read_empty = n, read_empty
        self.emb, self.fc = torch.nn.Embedding(13, n), torch.nn.Linear(n, 2 * n)
        self.out = torch.nn.Linear(n, 13)

    def forward(self, ids):
        a, empty, c = torch.split(self.fc(self.emb(ids)), [self.n, 0, self.n], dim=-1)
        a = torch.cat([torch.relu(a), empty], -1) if self.read_empty else torch.relu(a)
        return self.out(a * c)


def test_an_empty_part_of_a_split_is_refused_where_read_and_ignored_where_not():
    from tensorprog.errors import TraceError

    with pytest.raises(TraceError, match="a part of size 0 of the rows of fc.weight") as err:
        from_torch(EmptyPart, WIDTHS, _tokens)
    assert err.value.span is not None and "torch.split" in str(err.value)
    traced = from_torch(lambda n: EmptyPart(n, read_empty=False), WIDTHS, _tokens)
    assert sorted(p for p in traced.params if p.startswith("fc_weight")) == [
        "fc_weight_part0", "fc_weight_part2"]
