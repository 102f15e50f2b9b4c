"""from_torch on a sequence's token vectors moved by k tokens: MobileBERT's trigram input
(``F.pad(e[:, 1:], [0, 0, 0, 1])``, ``e``, ``F.pad(e[:, :-1], [0, 0, 1, 0])`` concatenated into
one Linear) and RWKV's token shift (``nn.ZeroPad2d((0, 0, 1, -1))``), traced as the language's
``shift(h, k)``. Oracles: the emitted program computes the model (float64), and the trigram
model derives the exponents of examples/trigram.tp, the same network written by hand. A pad of
the tokens that is no such move (a token zeroed in place, the tokens moved and one zeroed, a pad
by another value) is refused at its line."""

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (64, 128)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class NoNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * self.weight + self.bias


class Trigram(nn.Module):
    """MobileBERT's embeddings in small (HF's MobileBertEmbeddings with trigram_input and
    NoNorm), then an MLP and a readout; ``moves`` says how each neighbour is read."""

    def __init__(self, n, moves="hf"):
        super().__init__()
        self.moves = moves
        self.e = nn.Embedding(13, n)
        self.t = nn.Linear(3 * n, n)
        self.norm = NoNorm(n)
        self.fc, self.head = nn.Linear(n, n), nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        e = self.e(idx)
        if self.moves == "hf":
            after = F.pad(e[:, 1:], [0, 0, 0, 1, 0, 0], value=0.0)
            before = F.pad(e[:, :-1], [0, 0, 1, 0, 0, 0], value=0.0)
        elif self.moves == "crop":  # RWKV's time shift, one and two tokens
            after, before = nn.ZeroPad2d((0, 0, -2, 2))(e), nn.ZeroPad2d((0, 0, 1, -1))(e)
        elif self.moves == "zeroed":  # token 0 zeroed in place: no move
            after, before = F.pad(e[:, 1:], [0, 0, 1, 0]), e
        elif self.moves == "cut_and_padded":  # token 0 zeroed, the others moved
            after, before = F.pad(e[:, 2:], [0, 0, 1, 1]), e
        else:  # "ones": the end padded by ones
            after, before = F.pad(e[:, 1:], [0, 0, 0, 1], value=1.0), e
        h = self.norm(self.t(torch.cat([after, e, before], dim=2)))
        return self.head(torch.relu(self.fc(h)))


def _build(moves):
    return lambda n: Trigram(n, moves)


@pytest.fixture(scope="module")
def traced():
    return from_torch(_build("hf"), WIDTHS, _tokens)


def test_the_trigram_input_traces_as_shifts_and_computes_the_model(traced):
    # before: refused as "a slice of a sequence's tokens, ... read by the op pad"
    assert "shift(embedding, -1)" in traced.source and "shift(embedding, 1)" in traced.source
    traced_computes_the_model(traced, _build("hf"), _tokens)


def test_a_crop_and_pad_of_the_tokens_traces_as_a_shift_and_computes_the_model():
    traced = from_torch(_build("crop"), WIDTHS, _tokens)
    assert "shift(embedding, -2)" in traced.source and "shift(embedding, 1)" in traced.source
    traced_computes_the_model(traced, _build("crop"), _tokens)


def test_the_traced_trigram_derives_the_hand_written_programs_exponents(traced):
    want = tp.derive(tp.parse_file(ROOT / "examples" / "trigram.tp"), "adam").abc
    got = abc_by_target(traced)
    same = {"e.weight": "E", "t.bias": "b", "norm.weight": "g", "norm.bias": "c",
            "fc.weight": "W1", "fc.bias": "b1", "head.weight": "U"}
    for target, name in same.items():
        abc = want[name]
        assert got[target] == (abc.a, abc.b, abc.c), target
    blocks = {p: traced.program.param_table[p] for p, u in traced.params.items()
              if u.target == "t.weight"}
    assert len(blocks) == 3  # its three column blocks, each as Wn, Wc, Wp
    d = tp.derive(traced.program, "adam").abc
    for p in blocks:
        assert (d[p].a, d[p].b, d[p].c) == (want["Wc"].a, want["Wc"].b, want["Wc"].c)


@pytest.mark.parametrize(("moves", "pads"), [("zeroed", r"\[0, 0, 1, 0\]"),
                                             ("cut_and_padded", r"\[0, 0, 1, 1\]"),
                                             ("ones", r"\[0, 0, 0, 1\] \(constant, value 1")])
def test_a_pad_of_the_tokens_that_moves_none_of_them_is_refused_at_its_line(moves, pads):
    with pytest.raises(TensorProgError, match=r"test_shift_trace.py:\d+:\d+: error: cannot trace a "
                       rf"pad by {pads}(.|\n)*the language's shift\(h, k\)"):
        from_torch(_build(moves), WIDTHS, _tokens)


class Folded(Trigram):
    """The batch folded into the tokens, then shifted: the model's move crosses from one
    sequence (or half of one) into the next, which shift(h, k) does not."""

    def forward(self, idx):
        e = self.e(idx)
        B, T, n = e.shape
        if self.moves == "flat":
            s = nn.ZeroPad2d((0, 0, 1, -1))(e.reshape(1, B * T, n)).reshape(B, T, n)
        elif self.moves == "slice":
            s = F.pad(e.reshape(1, B * T, n)[:, :-1], (0, 0, 1, 0)).reshape(B, T, n)
        elif self.moves == "halves":
            s = nn.ZeroPad2d((0, 0, 1, -1))(e.reshape(2 * B, T // 2, n)).reshape(B, T, n)
        else:  # "mean": a mean over the tokens of each half sequence
            return self.head(torch.relu(self.fc(e.reshape(2 * B, T // 2, n).mean(1))))
        return self.head(torch.relu(self.fc(s)))


@pytest.mark.parametrize("moves", ["flat", "slice", "halves", "mean"])
def test_a_view_that_folds_the_batch_into_the_tokens_is_refused_at_its_line(moves):
    # before: traced as shift(embedding, 1) (a mean over each sequence's tokens), which moves
    # (averages) within each sequence: the program computed something other than the model
    with pytest.raises(TensorProgError, match=r"test_shift_trace.py:\d+:\d+: error: cannot trace a "
                       r"view from \[2, 8, \d+\] to \[(1, 16|4, 4), \d+\] of a per-token vector, "
                       r"which regroups the batch of 2 sequences and their tokens"):
        from_torch(lambda n: Folded(n, moves), WIDTHS, _tokens)


def test_a_slice_of_the_tokens_read_by_another_op_is_refused_in_the_users_words():
    class Viewed(Trigram):
        def forward(self, idx):
            e = self.e(idx)
            return self.head(torch.relu(self.fc(e[:, 1:].reshape(-1, e.shape[-1]))))

    with pytest.raises(TensorProgError, match=r"cannot trace a (reshape|view) of a slice of a "
                       r"sequence's tokens \(h\[:, k:\]"):
        from_torch(Viewed, WIDTHS, _tokens)
