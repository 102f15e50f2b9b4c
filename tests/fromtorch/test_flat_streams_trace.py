"""Hyper-connections whose m streams lie side by side in the features (Qwen4-exp's
``GatedResidual``: ``h.repeat(1, 1, m)``, a norm over each stream's block, a low-rank mix of the
m·n features gating each stream, their mean read by the block, whose output goes back into
stream k times one of m weights per token), traced as one vector of m·n features with the
language's ``cat``, ``rmsnorm(x, n)``, ``part`` and ``spread`` (ops_flatstreams.py). Oracles: the
emitted module computes the model (float64), apply leaves it bit-identical at the base width,
the traced program derives the exponents of STREAM_BY_STREAM, the same network written by hand
stream by stream (each layer on m·n features the sum of one layer per stream), and the model
under them passes the coordinate check (slow). A fixed low rank is refused by derive,
positioned (a bottleneck of fixed size inside the network); a stream-tiled vector added to the
weights, a mean over the streams kept as an axis, a dot of two vectors over each stream (one
number per stream per token, which the language has no form for), a mean over a number of
parts that grows with the width and the injection laid out (n, m), n copies of the weights, are
refused at their line."""

from __future__ import annotations

import pytest
from conftest import (
    abc_by_target,
    apply_is_bit_identical_at_base,
    traced_computes_the_model,
)

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

M = 2  # streams


class GroupNorm(nn.Module):
    """Qwen4-exp's RMSNorm over each stream's block of n features, its gain 1 + w."""

    def __init__(self, size, group):
        super().__init__()
        self.weight, self.group = nn.Parameter(torch.zeros(size)), group

    def forward(self, x):
        y = x.reshape(*x.shape[:-1], -1, self.group)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y.flatten(-2) * (1.0 + self.weight)).type_as(x)


class Mix(nn.Module):
    """The streams mixed for a block (and the weights its output goes back in with)."""

    def __init__(self, n, rank, combine=True, how=""):
        super().__init__()
        self.n, self.how = n, how
        self.norm = GroupNorm(M * n, n)
        self.down = nn.Linear(M * n, rank, bias=False)
        self.up = nn.Linear(rank, M * n, bias=False)
        self.inject = nn.Linear(M * n, M, bias=False) if combine else None

    def forward(self, h):
        hn = self.norm(h)
        w = torch.sigmoid(self.up(F.silu(self.down(hn) / M))).unflatten(-1, (M, self.n))
        gated = w * hn.unflatten(-1, (M, self.n))
        mixed = (
            gated.mean(-2, keepdim=True).squeeze(-2) if self.how == "kept" else gated.mean(dim=-2)
        )
        if self.inject is None:
            return mixed
        return mixed, h, 2 * torch.sigmoid(self.inject(hn) / M)


class Streams(nn.Module):
    """Two streams, two blocks (an MLP layer each, ``layers``), a last mix before the
    readout. ``rank``: the mix's low rank, n/4 unless fixed."""

    def __init__(self, n, rank=None, how="", layers=2):
        super().__init__()
        self.how = how
        self.e = nn.Embedding(13, n)
        self.mixes = nn.ModuleList(Mix(n, rank or n // 4, how=how) for _ in range(layers))
        self.blocks = nn.ModuleList(nn.Linear(n, n) for _ in range(layers))
        self.final = Mix(n, rank or n // 4, combine=False, how=how)
        self.head = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h = self.e(idx).repeat(1, 1, M)
        if self.how == "dot":  # one number per stream per token (Qwen4-exp's per-layer input)
            key = self.e(idx).repeat(1, 1, M).unflatten(-1, (M, -1))
            h = h + (key * h.unflatten(-1, (M, -1))).sum(-1).sum(-1, keepdim=True)
        for mix, block in zip(self.mixes, self.blocks, strict=True):
            x, h, w = mix(h)
            x = torch.relu(block(x))
            if self.how == "added":
                h = h + (x.unsqueeze(-2) + w.unsqueeze(-1)).flatten(-2)
            elif self.how == "swapped":  # (n, m): x_i w_k at i m + k, n copies of w interleaved
                h = h + (x.unsqueeze(-1) * w.unsqueeze(-2)).flatten(-2)
            else:
                h = h + (x.unsqueeze(-2) * w.unsqueeze(-1)).flatten(-2)
        return self.head(self.final(h))


# The network above with one block, written stream by stream: both streams start as the
# embedding; before a block each is normed (its own gain's block), a low-rank mix reads both
# (down: one layer per stream, summed; silu of it over m) and gives each stream a gate of n
# coordinates (up, sigmoid); the block reads the gated streams' mean, and its output goes back
# into stream k times w_k, one of m = 2 weights per token (2 sigmoid(J @ streams / m)), taken
# by part(w, one, k) and laid over the stream's n coordinates by spread. What the engine
# derives, and why:
# - D, U (n -> r, r -> n) are hidden weights, r = n/4 growing with the width: init σ/√n, Adam
#   LR η/n. (At a fixed r, D would be readout-like and U an input layer: the low rank a
#   bottleneck of fixed size inside the network, which derive refuses.)
# - J (n -> m = 2) has a finite fan-out: readout-like, as a router (init σ/n, Adam LR η/n).
#   Each weight w_k reaches its stream through spread(w_k, n), an LLN sum of its gradient over
#   n coordinates after training (docs/language.md, spread): w's gradient is Θ(1), as a
#   readout's output.
# - The gains G, F (= 1) are bias-like (init Θ(1), Adam LR Θ(1)); E an input weight; O the
#   readout. Each stream's block of a layer on the m·n features derives as the whole layer.
STREAM_BY_STREAM = """\
width n = 64                # the base width
dim r = n / 4               # the mix's low rank
dim m = 2                   # streams: one injection weight each
dim one = 1
dim V = 13                  # vocabulary
dim T = 8                   # sequence length

input tok : tokens[T, V]
param E : [n, V]            # the embedding
param G1 : [n] = 1          # the norm's gain, stream 1's block (1 + w)
param G2 : [n] = 1
param D1 : [r, n]           # the mix's down layer, stream 1's columns
param D2 : [r, n]
param U1 : [n, r]           # the mix's up layer, stream 1's rows
param U2 : [n, r]
param J1 : [m, n]           # the injection weights' layer, stream 1's columns
param J2 : [m, n]
param W : [n, n]            # the block
param b : [n]
param F1 : [n] = 1          # the last mix's
param F2 : [n] = 1
param K1 : [r, n]
param K2 : [r, n]
param L1 : [n, r]
param L2 : [n, r]
param O : [V, n]            # the readout

e = E @ tok
x1 = G1 * rmsnorm(e)
x2 = G2 * rmsnorm(e)
z = silu((D1 @ x1 + D2 @ x2) / 2)
mixed = 0.5 * (sigmoid(U1 @ z) * x1 + sigmoid(U2 @ z) * x2)
w = 2 * sigmoid((J1 @ x1 + J2 @ x2) / 2)
f = relu(W @ mixed + b)
s1 = e + spread(part(w, one, 0), n) * f
s2 = e + spread(part(w, one, 1), n) * f
y1 = F1 * rmsnorm(s1)
y2 = F2 * rmsnorm(s2)
u = silu((K1 @ y1 + K2 @ y2) / 2)
final = 0.5 * (sigmoid(L1 @ u) * y1 + sigmoid(L2 @ u) * y2)
output logits = O @ final
"""


def inputs(model=None):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(Streams, (16, 32), inputs)


def test_streams_side_by_side_trace_to_one_vector_of_their_features(traced):
    body = traced.source
    assert "cat(embedding, embedding, n_x2)" in body, body  # the repeat: m copies
    assert "rmsnorm(v_repeat, n)" in body, body  # each stream's block normed on its own
    # the injection, a block's output times a weight per stream laid back into the features:
    # stream by stream (ops_streams.py, which reads the product on its streams' axis first)
    assert body.count("part(") == 6 and body.count("spread(pick(") == 4, body
    assert "cat(mul_4_stream, v_mul_4_stream, n_x2)" in body, body
    assert "2.0 * sigmoid(" in body and "/ 2.0)" in body, body  # 2 sigmoid(J @ h / m)
    traced_computes_the_model(traced, Streams, inputs)
    apply_is_bit_identical_at_base(traced, Streams, inputs)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_streams_derive_the_exponents_of_the_network_written_stream_by_stream(
    traced, optimizer
):
    got = abc_by_target(traced, optimizer)
    want = tp.derive(tp.parse(STREAM_BY_STREAM, "streams.tp"), optimizer).abc
    names = {
        "e.weight": "E",
        "norm.weight": "G1",
        "down.weight": "D1",
        "up.weight": "U1",
        "inject.weight": "J1",
        "blocks.weight": "W",
        "blocks.bias": "b",
        "head.weight": "O",
    }
    last = {"G1": "F1", "D1": "K1", "U1": "L1"}  # the last mix's
    for target, abc in got.items():
        name = names[".".join([p for p in target.split(".") if not p.isdigit()][-2:])]
        name = last.get(name, name) if target.startswith("final.") else name
        assert abc == (want[name].a, want[name].b, want[name].c), target
    # the injection weights' layer (fan-out m) is readout-like, the mix's layers hidden ones
    assert got["mixes.0.inject.weight"] == got["head.weight"] != got["mixes.0.down.weight"]


@pytest.mark.slow
def test_the_streams_under_the_derived_mup_pass_the_coordinate_check():
    # the derivation against numbers: every vector's change flat in the width (widths 128..512)
    traced = from_torch(Streams, (64, 128), inputs)
    mup = MuP(traced, "adam")
    result = coord_check(mup, (128, 256, 512), steps=3, seeds=(0, 1))
    assert result.passed, str(result)
    # the contrast: the model as it comes (SP) moves the mix's layers' outputs as n^+1
    sp = coord_check(mup, (128, 256, 512), steps=3, seeds=(0, 1), apply=False)
    assert not sp.passed and "mixes.0.down (linear): blows up" in str(sp), str(sp)


@pytest.mark.slow
def test_a_fixed_low_rank_is_refused_by_derive_as_a_bottleneck_at_its_line():
    traced = from_torch(lambda n: Streams(n, rank=8, layers=1), (16, 32), inputs)
    with pytest.raises(
        TensorProgError,
        match=r"narrows the width to the finite dim f8 inside "
        "the network",
    ):
        tp.derive(traced.program, "adam")


@pytest.mark.parametrize(
    "how,said",
    [
        ("added", r"a per-token vector given a stream axis \(x.unsqueeze\(-2\)\) read by add"),
        pytest.param(
            "swapped",
            r"a concatenation \(or repeat\) of 16 parts at width 16 and 32 at 32",
            marks=pytest.mark.slow,
        ),
        pytest.param("kept", r"a mean over axis 2 \(the heads\)", marks=pytest.mark.slow),
        # the dot over each stream of one token is hdot(key, h, n) (ops_headdot.py); the sum
        # of the m numbers into one per token has no form
        pytest.param("dot", r"a sum over axes of a traced value", marks=pytest.mark.slow),
    ],
)
def test_a_stream_layout_the_language_has_no_form_for_is_refused_at_its_line(how, said):
    with pytest.raises(
        TensorProgError,
        match=rf"test_flat_streams_trace.py:\d+:\d+: error: (cannot trace )?{said}",
    ):
        from_torch(lambda n: Streams(n, how=how, layers=1), (16, 32), inputs)


class HeadMean(nn.Module):
    """A mean over the heads of a fixed dim (4), n/4 of them: a growing number of parts."""

    def __init__(self, n):
        super().__init__()
        self.n, self.e, self.p = n, nn.Embedding(13, n), nn.Linear(n, n)
        self.head = nn.Linear(4, 13)

    def forward(self, idx):
        return self.head(self.p(self.e(idx)).unflatten(-1, (self.n // 4, 4)).mean(-2))


@pytest.mark.slow
def test_a_mean_over_parts_that_grow_with_the_width_is_refused_at_its_line():
    with pytest.raises(
        TensorProgError,
        match=r"test_flat_streams_trace.py:\d+:\d+: error: a sum or "
        r"mean over 4 parts of a vector at width 16 and 8 at 32",
    ):
        from_torch(HeadMean, (16, 32), inputs)
