"""from_torch on TAPAS's positions, reset in each table cell: each token's position less the first
position of its cell (the cells from the token types' column and row ids: a scatter of the
minimum, gathered back), bounded by ``torch.min(torch.as_tensor(max_positions - 1), ...)``, a
one-entry integer constant that the meta device holds no value of (read from a CPU export, as a
``where``'s numbers). With the token types the model makes itself (zeros: one cell), the
positions are 0..T-1 for every input, and the lookup is the program's positions: oracle, the
emitted program computes the model (float64). Cells that vary (token types given), or a bound
below T - 1, make other ids, refused at the lookup's line. Two such constants (a clamp to
[0, max - 1]) are each paired with its value by the op that reads it."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB, T, CELLS = 13, 8, 4


def _tokens(model):
    return (torch.arange(2 * T).remainder(VOCAB).view(2, T),)


class CellPositions(nn.Module):
    """modeling_tapas.py's TapasEmbeddings in small: positions reset per cell, two token-type
    tables (the segment and the column)."""

    def __init__(self, n, max_positions=T):
        super().__init__()
        self.max_positions = max_positions
        self.e, self.p = nn.Embedding(VOCAB, n), nn.Embedding(max_positions, n)
        self.types = nn.ModuleList(nn.Embedding(CELLS, n) for _ in range(2))
        self.ln, self.head = nn.LayerNorm(n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx, token_type_ids=None):
        b, t = idx.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, t, 2, dtype=torch.long, device=idx.device)
        cell = token_type_ids[:, :, 1] + CELLS * torch.arange(b, device=idx.device)[:, None]
        positions = torch.arange(t, device=idx.device).expand(b, t)
        first = torch.zeros(b * CELLS, device=idx.device).scatter_reduce(
            0, cell.reshape(-1), positions.reshape(-1).float(), "amin", include_self=False)
        first = first.long().gather(0, cell.reshape(-1)).view(b, t)
        bound = torch.as_tensor(self.max_positions - 1, device=idx.device)
        positions = torch.min(bound, torch.arange(t, device=idx.device)[None] - first)
        h = self.e(idx) + self.p(positions)
        for i, table in enumerate(self.types):
            h = h + table(token_type_ids[:, :, i])
        return self.head(self.ln(h))


def test_positions_reset_in_one_cell_are_the_positions():
    # before: refused at the lookup, the bound an unknown value on the meta device
    traced = from_torch(CellPositions, WIDTHS, _tokens)
    assert "p_weight @ pos" in traced.source, traced.source
    traced_computes_the_model(traced, CellPositions, _tokens)


_AT_POSITIONS = r"embedding lookup of ids(.|\n)*self.p\(positions\)"


def _refused(build, inputs, match):
    with pytest.raises(TensorProgError, match=r"test_cell_positions.py:\d+:\d+: error: (.|\n)*"
                       + match):
        from_torch(build, WIDTHS, inputs)


def test_positions_reset_in_cells_that_vary_are_refused():
    types = torch.zeros(2, T, 2, dtype=torch.long)
    types[:, T // 2:, 1] = 1  # the second half of each sequence a second cell: 0..3, 0..3
    _refused(CellPositions, lambda m: (_tokens(m)[0], types), r"embedding lookup of ids "
             r"computed from the input token_type_ids(.|\n)*self.p\(positions\)(.|\n)*"
             r"or trace the model with token_type_ids left out")


def test_positions_bounded_below_the_sequence_are_refused():
    _refused(lambda n: CellPositions(n, max_positions=T - 2), _tokens, _AT_POSITIONS)


class Clamped(nn.Module):
    """Positions clamped to [0, max - 1] by two one-entry constants, the bound made before the
    zero: the meta export lifts them in the order they are read, the CPU export in the order
    they are made."""

    def __init__(self, n, max_positions=T + 1, clamp=False, shift=False):
        super().__init__()
        self.max_positions, self.clamp, self.shift = max_positions, clamp, shift
        self.e, self.p = nn.Embedding(VOCAB, n), nn.Embedding(T + 4 * shift, n)
        self.ln, self.head = nn.LayerNorm(n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        raw = torch.arange(t, device=idx.device)[None].expand(b, t)
        bound = torch.as_tensor(self.max_positions - 1, device=idx.device)
        zero = torch.as_tensor(0, device=idx.device)
        if self.shift:  # one constant read twice: rows 2..T+1, clamped at 2
            two = torch.as_tensor(2, device=idx.device)
            return self.head(self.ln(self.e(idx) + self.p(torch.clamp(raw + two, two, bound))))
        positions = torch.clamp(raw, zero, bound) if self.clamp else torch.min(
            bound, torch.max(zero, raw))
        return self.head(self.ln(self.e(idx) + self.p(positions)))


@pytest.mark.parametrize("clamp", [False, True])
def test_two_bounds_are_each_read_where_the_graph_reads_it(clamp):
    # before: paired by their numbers, the bound read 0 and the zero 8: the positions were
    # traced as one constant id 0 (a row of p as a bias) while the model reads rows 0..T-1
    def build(n):
        return Clamped(n, clamp=clamp)

    traced = from_torch(build, WIDTHS, _tokens)
    assert "p_weight @ pos" in traced.source, traced.source
    traced_computes_the_model(traced, build, _tokens)


def test_a_constant_read_by_another_op_too_is_refused():
    # clamp(arange + c, c, 11): before, c was paired with the clamp alone and read as 0 by
    # the add, the positions traced as 0..T-1 while the model reads rows 2..T+1
    _refused(lambda n: Clamped(n, max_positions=T + 4, shift=True), _tokens,
             r"embedding lookup of ids")


@pytest.mark.slow
def test_hf_tapas_without_token_types_computes_the_model():
    transformers = pytest.importorskip("transformers")

    def build(n):  # the program's layer norms take torch's eps
        return transformers.TapasForMaskedLM(transformers.TapasConfig(
            vocab_size=VOCAB, hidden_size=n, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=4 * n, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=T, layer_norm_eps=1e-5))

    traced = from_torch(build, WIDTHS, _tokens)
    assert "position_embeddings_weight @ pos" in traced.source, traced.source
    rows = [f"token_type_embeddings_{i}_weight_row0 : [n]" for i in range(7)]
    assert all(r in traced.source for r in rows), traced.source
    traced_computes_the_model(traced, build, _tokens)
