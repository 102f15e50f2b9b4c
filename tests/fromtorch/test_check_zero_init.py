"""Which traced params the check holds to exactly 0 at init: a matrix the model initialises to
0 (Swin's relative position bias table) is zero-initialised (b = oo), a vector param at 0 is
not. Gemma's norm gain, written (1 + w) with w at 0, computes the norm's output, and judging
it as zero failed Gemma's and Gemma 3's checks on every vector after it."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.engine.derive import derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.check import _zero_matrices  # noqa: E402

VOCAB, SEQ = 16, 6


class GemmaLike(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, n)
        self.gain = nn.Parameter(torch.zeros(n))  # Gemma's RMSNorm: x * (1 + w), w at 0
        self.zero = nn.Linear(n, n, bias=False)
        nn.init.zeros_(self.zero.weight)  # a branch that starts at exactly 0
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.gain)
        return self.head(h + self.zero(h))


def test_only_a_matrix_at_zero_is_judged_zero_initialised():
    traced = from_torch(GemmaLike, (32, 64),
                        lambda m: (torch.arange(2 * SEQ).remainder(VOCAB).view(2, SEQ),))
    mup = MuP(traced, "adam")
    abc = derive(mup.program, mup.derivation.optimizer).abc
    held = _zero_matrices(mup, abc)
    by_target = {u.target: name for name, u in traced.params.items()}
    assert str(held[by_target["zero.weight"]].b) == "oo"
    gain = by_target["gain"]
    assert held[gain] == abc[gain] and str(abc[gain].b) != "oo"
    assert {p for p in abc if held[p] != abc[p]} == {by_target["zero.weight"]}
