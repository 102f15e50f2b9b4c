"""Which checked vectors are attention logits (``check.attention_logits``, which decides the
zoo's second, wider check): by their role in the traced program, the values from a ``dot``
over a growing head dim to the softmax over the keys, whatever op names them (Megatron-BERT's
``div``, a soft cap's ``mul``), and none of the values that only look alike (a readout's soft
cap, a value after the softmax)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.check import attention_logits  # noqa: E402


class Capped(nn.Module):
    """One causal attention layer whose logits are divided by the head dim (µP's 1/d written
    as Megatron-BERT writes its 1/√d) and soft-capped, c·tanh(s/c) (Gemma-2's), and a readout
    soft-capped alike."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.dh = n // 4

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = torch.matmul(q, k.transpose(-1, -2)) / self.dh
        s = torch.tanh(s / 50.0) * 50.0
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, n)
        return torch.tanh(self.out(x + self.o(y)) / 30.0) * 30.0


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def test_attention_logits_are_known_by_their_role_not_their_name():
    traced = from_torch(Capped, (32, 64), _tokens)
    program = traced.program
    # the chain from the dot to the softmax: the dot, its scale (1/d and 1/50 in one), the
    # cap's tanh and its 50·
    soft = next(i for i in program.body if getattr(i, "fn", None) == "causal_softmax")
    made = {i.out: i for i in program.body}
    chain, v = [], soft.args[0]
    while type(made[v]).__name__ != "Dot":
        chain.append(v)
        v = next(a for a in made[v].operands if a in made)
    chain.append(v)
    assert [getattr(made[v], "fn", None) for v in chain] == [None, "tanh", "mul", None]
    every = [i.out for i in program.body]
    # the capped logits, named by their op (``mul``), were missed: only the dot and its scale
    logits = attention_logits(MuP(traced, "adam"), every)
    assert logits == [v for v in every if v in chain]
    # the readout's cap, the softmax's weights and the attention's output are no logits
    assert program.outputs[0] not in logits and soft.out not in logits
