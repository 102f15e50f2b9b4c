"""A block of a fused layer laid out per head, split again along each head (AXK2's query split
off its gate, then into its rotary and other parts): each part is rows of the layer, a param of
its own (fromtorch/ops_heads.py's head_part keeps the block a block of rows)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")

from tensorprog import derive  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

IDS = torch.randint(13, (2, 8), generator=torch.Generator().manual_seed(0))


class Twice(torch.nn.Module):
    """Heads of 16: one layer's (q·k, v) per head, q·k split after the heads' transpose into
    the query and the key (``form`` "slice": by slices, which no rule reads as rows; "whole":
    q·k a block of whole heads, whose halves of each head no one range of rows is)."""

    def __init__(self, n, form="split"):
        super().__init__()
        self.e, self.qkv = torch.nn.Embedding(13, n), torch.nn.Linear(n, 2 * n)
        self.out = torch.nn.Linear(n, 13)
        self.form = form

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        if self.form == "whole":  # whole heads: every q·k head, then every value head
            qk, v = self.qkv(x).view(b, t, n // 8, 16).split([n // 16, n // 16], dim=2)
        else:
            qk, v = self.qkv(x).view(b, t, n // 16, 32).split([16, 16], dim=-1)
        qk, v = qk.transpose(1, 2), v.transpose(1, 2)
        if self.form == "slice":
            q, k = qk[..., :8], qk[..., 8:]
        else:
            q, k = qk.split([8, 8], dim=-1)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + a.transpose(1, 2).reshape(b, t, n))


def _ids(model):
    return (IDS,)


def test_a_block_split_again_is_rows_of_the_layer():
    # oracle: the emitted program computes the model in float64; the query, key and value are
    # each hidden layers of their own (Adam: init n^-1/2, LR 1/n)
    traced = from_torch(Twice, (32, 64), _ids, blocks=False)
    traced_computes_the_model(traced, Twice, _ids)
    d = derive(traced.program, "adam")
    parts = [p for p in traced.params if p.startswith("qkv_weight")]
    assert len(parts) == 3, traced.params
    for p in parts:
        assert (d.abc[p].a, d.abc[p].b, d.abc[p].c) == (0, Fraction(1, 2), 1), p


@pytest.mark.slow
def test_a_block_sliced_again_is_still_refused():
    # slices of a head are read only inside a rotary (then put back with cat): parts of a head,
    # no vectors, where attention reads them
    with pytest.raises(
        TraceError,
        match=r"test_block_split_again.py:\d+:\d+: error: cannot "
        r"trace .*scaled_dot_product_attention.* on a value that is not a "
        r"per-token vector",
    ):
        from_torch(lambda n: Twice(n, "slice"), (32, 64), _ids, blocks=False)


def test_a_block_of_whole_heads_split_again_is_refused_at_the_split():
    # each head's half of a block of whole heads is rows of each head, not the one range a
    # split of the block would take (refused at the attention, or as a program that does not
    # read back, further on)
    with pytest.raises(
        TraceError,
        match=r"test_block_split_again.py:\d+:\d+: error: cannot trace a split of each "
        r"head's features into parts of 8, 8 of a value that is not a linear layer's output",
    ):
        from_torch(lambda n: Twice(n, "whole"), (32, 64), _ids, blocks=False)
