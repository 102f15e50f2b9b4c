"""Per-head keys and values of one sequence's tokens, two sets of them concatenated along the
tokens under one softmax, are refused: the language's merged softmax (T5Gemma 2's, ops_merged.py)
reads two sets of keys of two sequences, and both sets here run over the queries' own tokens."""

import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class Merged(nn.Module):
    """Two heads attending to the keys of the tokens and of a second sequence (a layer of the
    same embeddings), side by side along the tokens, and a readout."""

    def __init__(self, n):
        super().__init__()
        self.e, self.other = nn.Embedding(VOCAB, n), nn.Linear(n, n, bias=False)
        self.qkv = nn.Linear(n, 3 * n, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape

        def heads(x):
            return x.view(b, t, 2, n // 2).transpose(1, 2)

        q, k, v = (heads(x) for x in self.qkv(h).chunk(3, -1))
        ck = heads(self.other(h))
        y = F.scaled_dot_product_attention(q, torch.cat([k, ck], 2), torch.cat([v, ck], 2))
        return self.head(h + y.transpose(1, 2).reshape(b, t, n))


def test_two_key_sets_of_one_sequence_under_one_softmax_are_refused():
    # before: "a concatenation of vectors (other than rotary's rotate_half, ...)"
    with pytest.raises(
        TensorProgError,
        match=r"test_merged_keys.py:\d+:\d+: error: cannot trace .*softmax\(a, b\) is one "
        r"softmax over the keys of a and of b for the same queries, but a runs over the token "
        r"pairs \(T, T\) and b over the token pairs \(T, T\)",
    ):
        from_torch(Merged, WIDTHS, _tokens)
