"""A pad of a sequence's tokens to a whole number of blocks (LongT5's ``_split_into_blocks``,
PEGASUS-X's encoder, before block-local attention) is refused at its line as what it is: the
language's sequences keep their length, and the trace has no form for a sequence cut into
blocks, though attention within blocks is attention over the sequence under a fixed mask."""

import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(12).remainder(VOCAB).view(2, 6),)


class Blocked(nn.Module):
    """An embedding, its tokens padded to whole blocks of 4 (per head, ``heads``, as LongT5's
    queries [B, T, H, dh]), each block's mean added back to its tokens, and a readout."""

    def __init__(self, n, heads=False):
        super().__init__()
        self.heads = heads
        self.e, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        x = h.view(b, t, 2, n // 2) if self.heads else h
        pad = [0, 0] * (x.dim() - 2) + [0, -t % 4]
        blocks = F.pad(x, pad).view(b, -1, 4, *x.shape[2:])
        y = (blocks + blocks.mean(2, keepdim=True)).view(b, -1, *x.shape[2:])[:, :t]
        return self.head(y.reshape(b, t, n))


@pytest.mark.parametrize("heads", [pytest.param(False, marks=pytest.mark.slow), True])
def test_a_pad_of_the_tokens_to_whole_blocks_is_refused_as_such(heads):
    with pytest.raises(
        TensorProgError,
        match=r"test_block_pad.py:\d+:\d+: error: cannot trace a "
        r"pad of a sequence's 6 tokens by 0 before and 2 after \(to 8\): the language's "
        r"sequences keep their length. \(LongT5 and PEGASUS-X pad to whole blocks",
    ):
        from_torch(lambda n: Blocked(n, heads), WIDTHS, _tokens)
