"""Attention sinks traced (fromtorch/ops_sink.py): gpt-oss's sinks concatenated to the logits
and sliced off after the softmax (stabilised by hand with the row max, as gpt-oss and
MiMo-V2-Flash do), and Granite's ``softmax(s) @ v * sigmoid(logsumexp(s) - sinks)``: both are
``causal_softmax(s, sinks)``, so they trace to the same program, derive the sink as one more
logit per head (tests/engine/test_sink.py), stay bit-identical under ``apply`` at the base
width and pass their coordinate check."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Sink(nn.Module):
    """One causal attention layer with a learned sink per head, written as ``form``: cat
    (gpt-oss), lse (Granite), or max (no sink, a softmax stabilised by hand)."""

    def __init__(self, n, form="cat"):
        super().__init__()
        self.form, self.h, self.dh = form, 4, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        self.sinks = nn.Parameter(torch.randn(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (z(x).view(b, t, self.h, self.dh).transpose(1, 2) for z in (self.q, self.k,
                                                                               self.v))
        s = torch.matmul(q, k.transpose(2, 3)) * self.dh ** -0.5
        s = s + torch.full((t, t), float("-inf"), device=x.device).triu(1)
        if self.form == "cat":
            sinks = self.sinks.reshape(1, -1, 1, 1).expand(b, -1, t, -1)
            s = torch.cat([s, sinks], dim=-1)
            s = s - s.max(dim=-1, keepdim=True).values
            y = torch.matmul(F.softmax(s, dim=-1)[..., :-1], v)
        elif self.form == "max":
            s = s - s.max(dim=-1, keepdim=True).values
            y = torch.matmul(F.softmax(s, dim=-1), v)
        else:
            gate = (torch.logsumexp(s, dim=-1) - self.sinks.view(1, -1, 1)).sigmoid()
            y = torch.matmul(F.softmax(s, dim=-1), v) * gate.unsqueeze(-1)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, c)))


@pytest.fixture(scope="module")
def traced():
    return {form: from_torch(lambda n, f=form: Sink(n, f), WIDTHS, _tokens)
            for form in ("cat", "lse")}


@pytest.mark.parametrize("form", ["cat", "lse"])
def test_a_sink_traces_derives_and_applies_bit_identically(form, traced):
    tr = traced[form]
    assert "causal_softmax(mul, sinks)" in tr.source
    d = derive(tr.program, "adam")
    assert (d.abc["sinks"].a, d.abc["sinks"].b, d.abc["sinks"].c) == (0, 0, 0)
    assert d.abc["sinks"].c == d.abc["q_bias"].c  # a logit per head, Θ(1) as a bias is
    torch.manual_seed(0)
    model, given = Sink(32, form), _tokens(None)
    before = model(*given)
    MuP(tr, "adam").apply(model)
    assert torch.equal(model(*given), before)


def test_both_forms_are_one_program_and_the_max_shift_is_the_softmax(traced):
    assert traced["cat"].source == traced["lse"].source
    plain = from_torch(lambda n: Sink(n, "max"), WIDTHS, _tokens)
    assert "causal_softmax(mul)" in plain.source


@pytest.mark.slow  # a coordinate check over widths (README, Tests)
def test_a_traced_sink_passes_its_coordinate_check(traced):
    # widths 64..256, 2 seeds, 3 Adam steps, the tolerance of the other traced checks (0.25)
    result = coord_check(MuP(traced["cat"], "adam"), (64, 128, 256), tolerance=0.25)
    assert result.passed, list(result.failures)
