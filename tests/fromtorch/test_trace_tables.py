"""from_torch on fixed tables read at the positions (fromtorch/ops_tables.py): a sinusoidal
position table held in a float buffer and added to the tokens (XGLM's, CTRL's, M2M-100's), and a
sin/cos table, in a buffer (GPT-J's) or in a param that never trains (RoFormer's), turning the
queries and keys. Oracles: the added table derives every other param's µP as a trained position
table does, and is itself no param apply or param_groups touches; the rotary derives as the
network without it; apply is bit-identical at the base width; a table whose entries scale with
the width, and a "rotary" whose tables are no rotation, are refused."""

import math

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
HEADS = 4
T = 8


def _tokens(model):
    return (torch.arange(2 * T).remainder(13).view(2, T),)


def sinusoid(rows: int, d: int) -> torch.Tensor:
    """XGLM's table: sin of every frequency, then cos; entries of RMS 1/√2 at every width."""
    inv = torch.exp(torch.arange(d // 2).float() * -(math.log(10000) / (d // 2 - 1)))
    angle = torch.arange(rows).float()[:, None] * inv
    return torch.cat([angle.sin(), angle.cos()], 1)


class Added(nn.Module):
    """Token embedding plus positions: ``table`` "buffer" (a sinusoidal float buffer read at the
    positions 2..T+1 by index_select, as XGLM's), "learned" (a trained nn.Embedding: the
    oracle), "scaled" (the buffer times 1/√n: entries that shrink with the width), or "ids"
    (the buffer read at positions computed from the ids, 2..T+1 where none is the padding id 0,
    SeamlessM4T's; "pad5": padding id 5)."""

    def __init__(self, n, table="buffer"):
        super().__init__()
        self.table = table
        self.e = nn.Embedding(13, n)
        if table == "learned":
            self.p = nn.Embedding(T + 2, n)
        else:
            scale = n**-0.5 if table == "scaled" else 1.0
            self.register_buffer("weights", sinusoid(T + 2, n) * scale, persistent=False)
        self.up, self.down = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device) + 2
        if self.table in ("ids", "pad5"):  # SeamlessM4T's: from the ids, padding id 0 (or 5)
            mask = idx.ne(0 if self.table == "ids" else 5).int()
            pos = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long().view(-1) + 1
        if self.table == "learned":
            rows = self.p(pos)
        else:
            rows = self.weights.index_select(0, pos).view(-1, idx.shape[1], self.weights.shape[
                -1]).detach()
        x = self.e(idx) + rows
        x = x + self.down(torch.relu(self.up(x)))
        return self.out(x)


def test_a_sinusoidal_buffer_added_is_a_fixed_table_and_no_param():
    traced = from_torch(Added, WIDTHS, _tokens)
    fixed = {p: u for p, u in traced.params.items() if u.fixed is not None}
    assert [u.target for u in fixed.values()] == ["weights"]
    (name, use), = fixed.items()
    assert use.fixed == pytest.approx(2**-0.5)  # the RMS of the rows read
    assert f"param {name} : [n, T]  # a fixed table, weights" in traced.source
    assert f"= {name} @ pos" in traced.source
    # every other param derives as with a trained position table; the table is not applied
    learned = abc_by_target(from_torch(lambda n: Added(n, "learned"), WIDTHS, _tokens))
    derived = abc_by_target(traced)
    assert derived.pop("weights") == learned.pop("p.weight")  # an input weight's, unused
    assert derived == learned
    mup = apply_is_bit_identical_at_base(traced, Added, _tokens)
    model = Added(128)
    table = model.weights.clone()
    report = mup.apply(model)
    assert torch.equal(model.weights, table)
    assert "fixed table weights: never trained, left as it is (no init, no LR)" in str(report)
    assert "weights" not in mup.lr_multipliers(model)
    assert not mup.uncovered(model)


def test_a_table_whose_entries_scale_with_the_width_is_refused():
    with pytest.raises(TensorProgError, match=r"fixed table weights .* scale as n\^-0.50 between"):
        from_torch(lambda n: Added(n, "scaled"), WIDTHS, _tokens)


def rotate_every_two(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class Attention(nn.Module):
    """``rotary``: None; "buffer", GPT-J's: a buffer [positions, dh] of sin | cos looked up at
    the positions, split, each repeated for its pair, rotate_every_two; "frozen", RoFormer's:
    the same table in an nn.Embedding that never trains, read with [None, None], its halves
    stacked with themselves; "bad": the buffer's cos half halved, which turns no pair."""

    def __init__(self, n, rotary=None):
        super().__init__()
        self.rotary, self.dh = rotary, n // HEADS
        inv = 1.0 / 10000 ** (torch.arange(0, self.dh, 2).float() / self.dh)
        angle = torch.outer(torch.arange(T).float(), inv)
        table = torch.cat((angle.sin(), angle.cos() * (0.5 if rotary == "bad" else 1)), -1)
        if rotary == "frozen":
            self.table = nn.Embedding(T, self.dh, _freeze=True)
            with torch.no_grad():
                self.table.weight.copy_(table)
        else:
            self.register_buffer("table", table, persistent=False)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))

    def _rope(self, x, sincos):
        sin, cos = sincos.chunk(2, dim=-1)
        if self.rotary == "frozen":
            sin = torch.stack([sin, sin], dim=-1).reshape_as(sincos)
            cos = torch.stack([cos, cos], dim=-1).reshape_as(sincos)
        else:
            sin, cos = (t[:, None].repeat_interleave(2, -1) for t in (sin, cos))
        return x * cos + rotate_every_two(x) * sin

    def forward(self, x):
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, HEADS, self.dh) for f in (self.q, self.k, self.v))
        pos = torch.arange(t, device=x.device)
        if self.rotary == "frozen":
            sincos = self.table(pos)[:, None, :]
            q, k = self._rope(q, sincos), self._rope(k, sincos)
        elif self.rotary:
            sincos = self.table[pos]
            q, k = self._rope(q, sincos), self._rope(k, sincos)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, n))


class Net(nn.Module):
    def __init__(self, n, rotary=None):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.attn = Attention(n, rotary)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        return self.out(x + self.attn(F.rms_norm(x, x.shape[-1:])))


@pytest.mark.parametrize("rotary", ["buffer", "frozen"])
def test_a_rotary_read_from_a_fixed_table_is_the_network_without_it(rotary):
    def build(n):
        return Net(n, rotary)

    traced = from_torch(build, WIDTHS, _tokens)
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    assert not any(u.fixed is not None for u in traced.params.values())  # values, no param
    assert abc_by_target(traced) == abc_by_target(from_torch(Net, WIDTHS, _tokens))
    apply_is_bit_identical_at_base(traced, build, _tokens)


def test_a_table_that_turns_no_pair_is_refused():
    with pytest.raises(TensorProgError, match="a sum of cos and sin terms that is not a rotation"):
        from_torch(lambda n: Net(n, "bad"), WIDTHS, _tokens)


def test_a_buffer_read_at_positions_computed_from_the_ids_is_the_fixed_table():
    # the trace's ids are zeros, SeamlessM4T's padding: read with the probe ids (no padding),
    # the positions are 2..T+1, and the buffer is the fixed table as read at arange(T) + 2
    traced = from_torch(lambda n: Added(n, "ids"), WIDTHS, _tokens)
    assert [u.target for u in traced.params.values() if u.fixed is not None] == ["weights"]
    assert abc_by_target(traced) == abc_by_target(from_torch(Added, WIDTHS, _tokens))
    apply_is_bit_identical_at_base(traced, lambda n: Added(n, "ids"), _tokens)


def test_a_buffer_read_at_positions_the_probe_ids_pad_is_refused():
    # padding id 5 is among the probe ids (3..9): their positions are no k..k+T-1 either
    with pytest.raises(TensorProgError, match=r"a sum with a value read from the buffer weights "
                       r"other than its rows at the positions k\.\.k\+T-1"):
        from_torch(lambda n: Added(n, "pad5"), WIDTHS, _tokens)
