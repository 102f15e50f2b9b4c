"""from_torch on ids the model makes itself: position ids read from a registered arange buffer
(``self.position_ids[:, :T]``, BERT's and BART's, with or without an offset) and constant ids
(BERT's token-type ids, a buffer of zeros). Each model is traced at widths 32 and 64, derived,
applied (bit-identical at the base width) and compared with the same model written without the
buffer (the oracle: positions from ``torch.arange``, the constant row as a bias)."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch, probe  # noqa: E402

WIDTHS = (32, 64)
T = 8


def _tokens(model):
    return (torch.arange(2 * T).remainder(13).view(2, T),)


def _bit_identical_at_base(traced, build):
    return apply_is_bit_identical_at_base(traced, build, _tokens)


class Positions(nn.Module):
    """Token and position embeddings, one MLP, a readout; the position ids from a buffer
    (``form`` "buffer": BERT's ``position_ids[:, :T]``; "offset": plus 2, BART's), or from
    ``torch.arange`` ("plain", the oracle); "ids": computed from the token ids as RoBERTa's,
    the non-padding mask's cumsum past the padding id 1 (positions 2.., where no id is 1)."""

    def __init__(self, n, form="buffer"):
        super().__init__()
        self.form, self.offset = form, 2 if form in ("offset", "ids") else 0
        self.e, self.p = nn.Embedding(13, n), nn.Embedding(16 + self.offset, n)
        self.register_buffer("position_ids", torch.arange(16).expand((1, -1)), persistent=False)
        self.up, self.down, self.out = nn.Linear(n, 2 * n), nn.Linear(2 * n, n), nn.Linear(n, 13)

    def forward(self, idx):
        t = idx.shape[1]
        pos = torch.arange(t) if self.form == "plain" else self.position_ids[:, :t]
        if self.form == "ids":
            mask = idx.ne(1).int()
            x = self.e(idx) + self.p(torch.cumsum(mask, dim=1) * mask + 1)
            return self.out(x + self.down(torch.relu(self.up(x))))
        x = self.e(idx) + self.p(pos + self.offset)
        return self.out(x + self.down(torch.relu(self.up(x))))


@pytest.mark.parametrize("form", ["buffer", "offset", "ids"])
def test_position_ids_from_a_buffer_are_positions(form):
    traced = from_torch(lambda n: Positions(n, form), WIDTHS, _tokens)
    assert "p_weight @ pos" in traced.source
    plain = from_torch(lambda n: Positions(n, "plain"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)
    _bit_identical_at_base(traced, lambda n: Positions(n, form))


class TokenType(nn.Module):
    """BERT's embeddings: tokens, positions and a token type from a buffer of zeros (``row``
    the constant id; "plain": the oracle, the same row as a bias param of its own)."""

    def __init__(self, n, row=0):
        super().__init__()
        self.row = row
        self.e, self.p = nn.Embedding(13, n), nn.Embedding(8, n)
        if row == "plain":
            self.tt = nn.Parameter(torch.randn(n) * 0.02)
        else:
            self.tt = nn.Embedding(2, n)
            nn.init.normal_(self.tt.weight, std=0.02)
            self.register_buffer("token_type_ids", torch.full((1, 8), row), persistent=False)
        self.norm, self.out = nn.LayerNorm(n), nn.Linear(n, 13)

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx) + self.p(torch.arange(t))
        if self.row == "plain":
            x = x + self.tt
        else:
            x = x + self.tt(self.token_type_ids[:, :t].expand(b, t))
        return self.out(self.norm(x))


@pytest.mark.parametrize("row", [0, 1])
def test_a_lookup_of_one_constant_id_is_a_bias_the_tables_row_maps_to(row):
    traced = from_torch(lambda n: TokenType(n, row), WIDTHS, _tokens)
    (name,) = (p for p, u in traced.params.items() if u.index is not None)
    assert traced.params[name].target == "tt.weight" and traced.params[name].index == row
    assert f"param tt_weight_row{row} : [n]" in traced.source
    oracle = abc_by_target(from_torch(lambda n: TokenType(n, "plain"), WIDTHS, _tokens))
    assert abc_by_target(traced) == {("tt.weight" if k == "tt" else k): v
                                     for k, v in oracle.items()}
    mup = _bit_identical_at_base(traced, lambda n: TokenType(n, row))
    # at 4x the base width apply rescales the row read (to the table's std at the base
    # times 4^-b, b = 0 for a bias) and leaves the other row as it was; the table takes the
    # row's LR
    torch.manual_seed(2)
    model = TokenType(4 * WIDTHS[0], row)
    other = model.tt.weight[1 - row].detach().clone()
    mup.apply(model)
    assert torch.equal(model.tt.weight[1 - row], other)
    sigma = traced.base["tt.weight"][1]
    assert abs(float(model.tt.weight[row].detach().std()) / sigma - 1) < 1e-6
    lr = mup.lr_multipliers(model)
    assert lr["tt.weight"] == lr["e.weight"]
    # the probe (coord_check's) reads the buffer from the built model's own graph
    (vec,) = (s.split(" = ")[0] for s in traced.source.splitlines() if s.endswith(f"_row{row}"))
    got = probe(mup, model, _tokens(model))()[vec]
    assert torch.equal(got, model.tt.weight[row].expand_as(got))



class InPlace(nn.Module):
    """BERT's ``embeddings += position_embeddings`` and CTRL's ``x *= 2``, in place, or
    ("plain", the oracle) out of place."""

    def __init__(self, n, plain=False):
        super().__init__()
        self.plain = plain
        self.e, self.p, self.out = nn.Embedding(13, n), nn.Embedding(8, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx) * 1.0
        pos = self.p(torch.arange(idx.shape[1]))
        if self.plain:
            x = (x + pos) * 2.0
        else:
            x += pos
            x *= 2.0
        return self.out(torch.relu(x))


def test_an_in_place_op_on_a_value_nothing_else_reads_is_the_op():
    traced = from_torch(InPlace, WIDTHS, _tokens)
    plain = from_torch(lambda n: InPlace(n, plain=True), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)
    _bit_identical_at_base(traced, InPlace)


def test_the_whole_of_the_token_ids_sliced_is_still_the_token_input():
    class Sliced(nn.Module):  # XLM's input_ids[:, -slen:]
        def __init__(self, n):
            super().__init__()
            self.e, self.o = nn.Embedding(13, n), nn.Linear(n, 13)

        def forward(self, idx):
            return self.o(self.e(idx[:, -idx.shape[1]:]))

    traced = from_torch(Sliced, WIDTHS, _tokens)
    # before: a constant computed from the zeros the trace stands in for the ids, read as a
    # lookup of the constant id 0 (a bias), with no token input at all
    assert "embedding = e_weight @ tok" in traced.source.splitlines(), traced.source


class SeqFirst(nn.Module):  # XLNet's input_ids.transpose(0, 1): [T, B] ids, looked up
    def __init__(self, n, pooled=False):
        super().__init__()
        self.pooled = pooled
        self.e, self.o = nn.Embedding(13, n), nn.Linear(n, 13)

    def forward(self, idx):
        if self.pooled == "viewed":  # [B, T] ids viewed [T, B]: dealt out anew, no layout
            return self.o(self.e(idx.view(idx.shape[1], -1)).transpose(0, 1))
        h = self.e(idx.transpose(0, 1))
        if self.pooled:  # a mean over axis 1 of [T, B, n]: over the batch, not the tokens
            h = h + h.mean(1, keepdim=True)
        return self.o(h.transpose(0, 1))


def test_the_token_ids_transposed_are_looked_up_tokens_first():
    # each entry is still a token id, so the lookup traces (it was refused as "ids computed
    # from the token ids"), laid out [T, B, n] as they are (ops_timemajor.py): the swap back
    # is the model, and an op over the tokens between the two, which would read the batch, is
    # refused
    traced = from_torch(SeqFirst, WIDTHS, _zeros)
    assert traced_computes_the_model(traced, SeqFirst, _tokens) <= 1e-10
    with pytest.raises(TensorProgError, match=r"test_trace_ids.py:\d+:\d+: error: cannot trace "
                       "the op mean on a time-major value"):
        from_torch(lambda n: SeqFirst(n, pooled=True), WIDTHS, _zeros)
    with pytest.raises(TensorProgError, match=r"test_trace_ids.py:\d+:\d+: error: cannot trace "
                       r"a view of the token ids from \[2, 8\] to \[8, 2\]"):
        from_torch(lambda n: SeqFirst(n, pooled="viewed"), WIDTHS, _zeros)


def _zeros(model):  # the ids a trace is usually given (the zoo's): all zeros
    return (torch.zeros(2, T, dtype=torch.long),)


class MadeIds(nn.Module):
    """Ids the forward makes from the token ids: ``form`` "copy", a copy with a special id
    replaced (Gemma-3's image tokens, which it looks up as 0); "shift", the ids shifted right
    behind a start id (BART's decoder_input_ids from input_ids), looked up as well as the ids;
    "plain": the oracle, the ids themselves and (with ``prev`` given) the shifted ids given as
    an input of the forward."""

    def __init__(self, n, form="copy"):
        super().__init__()
        self.form = form
        self.e, self.up, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx, prev=None):
        if self.form == "copy":
            ids = idx.clone()
            ids[idx == 12] = 0
            x = self.e(ids)
        else:
            x = self.e(idx)
        if self.form == "shift":
            prev = torch.cat([torch.full_like(idx[:, :1], 2), idx[:, :-1]], dim=1)
        if prev is not None:
            x = x + self.e(prev)
        return self.out(torch.relu(self.up(x)))


def test_a_copy_of_the_token_ids_made_by_the_forward_is_the_token_input():
    traced = from_torch(MadeIds, WIDTHS, _zeros)
    # before: the copy of the trace's zeros read as the constant id 0, a bias param e_weight_row0
    # where the model looks up every token's row (and a width constant on it then refused)
    assert "e_weight @ tok" in traced.source and "_row0" not in traced.source, traced.source
    plain = from_torch(lambda n: MadeIds(n, "plain"), WIDTHS, _zeros)
    assert abc_by_target(traced) == abc_by_target(plain)
    _bit_identical_at_base(traced, MadeIds)


def test_token_ids_shifted_by_the_forward_are_a_token_input_of_their_own():
    traced = from_torch(lambda n: MadeIds(n, "shift"), WIDTHS, _zeros)
    assert "e_weight @ shifted_ids" in traced.source, traced.source

    def given(model):
        (idx,) = _zeros(model)
        return idx, torch.cat([torch.full_like(idx[:, :1], 2), idx[:, :-1]], dim=1)

    plain = from_torch(lambda n: MadeIds(n, "plain"), WIDTHS, given)
    assert abc_by_target(traced) == abc_by_target(plain)
    mup = _bit_identical_at_base(traced, lambda n: MadeIds(n, "shift"))
    # the probe (coord_check's) runs the model's own graph, which makes the shifted ids itself
    torch.manual_seed(0)
    model = MadeIds(WIDTHS[0], "shift")
    mup.apply(model)
    idx = torch.arange(2 * T).remainder(13).view(2, T)
    (vec,) = (s.split(" = ")[0] for s in traced.source.splitlines() if "@ shifted_ids" in s)
    got = probe(mup, model, (idx,))()[vec]
    shifted = torch.cat([torch.full_like(idx[:, :1], 2), idx[:, :-1]], dim=1)
    assert torch.equal(got, model.e(shifted).detach())


class GivenPositions(nn.Module):
    """Positions given to the forward (``position_ids=``), read as they are or plus 2."""

    def __init__(self, n, offset=0, fixed=False):
        super().__init__()
        self.offset, self.fixed = offset, fixed
        self.e, self.p = nn.Embedding(13, n), nn.Embedding(T + offset, n)
        self.up, self.out = nn.Linear(n, n), nn.Linear(n, 13)
        # a fixed table (sinusoidal): read at the positions, never trained
        self.register_buffer("table", torch.randn(T, n), persistent=False)

    def forward(self, idx, position_ids):
        at = position_ids + self.offset if self.offset else position_ids
        x = self.e(idx) + (self.table[at] if self.fixed else self.p(at))
        return self.out(torch.relu(self.up(x)))


def _positions_given(model):
    return (*_tokens(model), torch.arange(T).expand(2, T))


def test_position_ids_given_to_the_forward_are_read_as_fed():
    # the example's are 0..T-1: read as the program's positions, other ids fed would be dropped
    traced = from_torch(GivenPositions, WIDTHS, _positions_given)
    assert "input position_ids : tokens[T, " in traced.source, traced.source
    abc = abc_by_target(traced)
    assert abc["p.weight"] == abc["e.weight"]  # an input weight, as the token table
    fed = torch.tensor([[3, 1, 4, 1, 5, 0, 2, 6], [7, 6, 5, 4, 3, 2, 1, 0]])
    traced_computes_the_model(traced, GivenPositions, lambda m: (*_tokens(m), fed))


@pytest.mark.parametrize(("offset", "fixed", "line"), [(2, False, "self.p(at)"),
                                                      (0, True, "self.table[at]")])
def test_position_ids_given_plus_an_offset_or_at_a_fixed_table_are_refused(offset, fixed, line):
    # the program's positions (a fixed table's rows at them) would drop the ids fed
    with pytest.raises(TensorProgError, match=r"test_trace_ids.py:\d+:\d+: error: cannot trace "
                       r"a lookup of ids given to the forward or computed from its input "
                       r"position_ids, whose example values are the positions") as err:
        from_torch(lambda n: GivenPositions(n, offset, fixed), WIDTHS, _positions_given)
    assert line in str(err.value)
