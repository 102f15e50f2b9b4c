"""A pad of a sequence's tokens to a whole number of blocks read by anything but block-local
attention is refused as what it is: a pad of the token vectors themselves (PEGASUS-X's encoder)
at the pad, the language's sequences keeping their length; a pad of each head's tokens (LongT5's
``_split_into_blocks``, whose attention test_block_local.py traces) at the first op that is not
LongT5's (here each block's mean)."""

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


@pytest.mark.slow
def test_a_pad_of_the_token_vectors_to_whole_blocks_is_refused_as_such():
    with pytest.raises(
        TensorProgError,
        match=r"test_block_pad.py:\d+:\d+: error: cannot trace a "
        r"pad of a sequence's 6 tokens by 0 before and 2 after \(to 8\): the language's "
        r"sequences keep their length. \(PEGASUS-X pads its encoder's token vectors",
    ):
        from_torch(lambda n: Blocked(n, False), WIDTHS, _tokens)


def test_each_heads_tokens_padded_to_whole_blocks_and_read_otherwise_is_refused_there():
    with pytest.raises(
        TensorProgError,
        match=r"test_block_pad.py:\d+:\d+: error: cannot trace the op mean of a sequence's 6 "
        r"tokens padded by 2 zero tokens to 8 \(whole blocks, as LongT5's block-local "
        r"attention pads them\)",
    ):
        from_torch(lambda n: Blocked(n, True), WIDTHS, _tokens)
