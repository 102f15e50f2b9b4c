"""CvT's forms over an image's tokens: a learned class token before the tokens of an image read
by an overlapping convolution (no patches input: the program's only input is the image), so the
longer sequence is named by its length, ``prepend(cls, tokens(h, S), S17)``, and the head reads
``first(h)``; and CvT's attention, which splits the class token off (``torch.split(h, [1, 16],
1)``: ``first(h)`` and ``tail(h, S)``), computes its queries, keys and values by depthwise
convolutions and batch norms over the other tokens laid out as the image (keys and values at
stride 2: 4 tokens against 16), and puts the class token back before each
(``prepend(first(h), q, S17)``). Oracles: the emitted program computes the model's output at
the base width; the class token derives as a bias and the head as an output weight; the traced
CvT block derives what examples/cvt_attention.tp, written by hand, derives; other splits and
readers of the split-off token are refused at their line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


class Projection(nn.Module):
    """CvT's q, k or v projection: a depthwise convolution and a batch norm over the image."""

    def __init__(self, n, stride):
        super().__init__()
        self.conv = nn.Conv2d(n, n, 3, padding=1, stride=stride, bias=False, groups=n)
        self.bn = nn.BatchNorm2d(n)

    def forward(self, img):
        return self.bn(self.conv(img)).flatten(2).transpose(1, 2)


class CvtMini(nn.Module):
    """examples/cvt_attention.tp in torch: CvT's last stage in miniature (an overlapping
    convolution's 4x4 tokens, a class token, one layer of its convolutional attention in 2
    heads and its MLP), the head on the class token split off at the end, as CvT's."""

    def __init__(self, n, split=(1, 16), reader="cat"):
        super().__init__()
        self.split, self.reader = split, reader
        self.stem = nn.Conv2d(3, n, 3, stride=2, padding=1)
        self.cls = nn.Parameter(torch.randn(1, 1, n))
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(n), nn.LayerNorm(n), nn.LayerNorm(n)
        self.cq, self.ck, self.cv = Projection(n, 1), Projection(n, 2), Projection(n, 2)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.head = nn.Linear(n, 10)

    def heads(self, x):
        b, t, n = x.shape
        return x.view(b, t, 2, n // 2).permute(0, 2, 1, 3)

    def attention(self, x):
        b, _, n = x.shape
        cls, *rest = torch.split(x, list(self.split), 1)
        if self.reader == "linear":  # the split-off token read by a layer: refused
            return self.o(cls)
        (rest,) = rest
        img = rest.permute(0, 2, 1).view(b, n, 4, 4)
        q, k, v = (torch.cat((cls, f(img)), dim=1) for f in (self.cq, self.ck, self.cv))
        q, k, v = self.heads(self.q(q)), self.heads(self.k(k)), self.heads(self.v(v))
        s = torch.einsum("bhlk,bhtk->bhlt", [q, k]) * n ** -0.5
        o = torch.einsum("bhlt,bhtv->bhlv", [torch.softmax(s, dim=-1), v])
        return self.o(o.permute(0, 2, 1, 3).reshape(b, -1, n))

    def forward(self, img):
        t = self.stem(img).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        h = h + self.attention(self.ln1(h))
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(h))))
        cls, _ = torch.split(h, [1, 16], 1)
        return self.head(self.ln_f(cls).mean(dim=1))


@pytest.fixture(scope="module")
def cvt():
    return tp.from_torch(CvtMini, (32, 64), images)


def test_cvt_s_class_token_is_split_off_as_first_and_tail_and_put_back_by_prepend(cvt):
    src = cvt.source
    assert "dim S17 = 17" in src and "dim S5 = 5" in src
    assert "prepend(cls, flatten, S17)" in src  # before the stem's tokens: S17 named by its length
    assert " = first(layer_norm)" in src and "tail(layer_norm, " in src
    assert src.count("prepend(split_with_sizes, ") == 3  # before q's 16 tokens, k's and v's 4


def test_the_traced_cvt_attention_computes_the_model(cvt):
    traced_computes_the_model(cvt, CvtMini, images)


def test_the_class_token_derives_as_a_bias_and_the_head_as_an_output_weight(cvt):
    d = tp.derive(cvt.program, "adam")
    by = {u.target: d.abc[p] for p, u in cvt.params.items()}
    cls, head, fc1 = by["cls"], by["head.weight"], by["fc1.weight"]
    # a bias under Adam: init Θ(1), LR Θ(1); the head: init 1/n, LR 1/n; a hidden layer's LR 1/n
    assert (cls.a + cls.b, cls.a + cls.c) == (0, 0)
    assert (head.a + head.b, head.a + head.c) == (1, 1)
    assert fc1.a + fc1.c == 1


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_cvt_block_derives_what_examples_cvt_attention_tp_derives(cvt, optimizer):
    by_hand = tp.derive(tp.parse((EXAMPLES / "cvt_attention.tp").read_text()), optimizer).abc
    got = tp.derive(cvt.program, optimizer).abc
    names = {"stem.weight": "K0", "cls": "cls", "cq.conv.weight": "Dq", "ck.conv.weight": "Dk",
             "q.weight": "Wq", "k.weight": "Wk", "o.weight": "Wo", "fc1.weight": "W1",
             "fc2.weight": "W2", "head.weight": "Wout", "cq.bn.weight": "gq"}
    by_target = {u.target: p for p, u in cvt.params.items()}
    for target, mine in names.items():
        assert got[by_target[target]] == by_hand[mine], target


@pytest.mark.parametrize("split, reader, message", [
    ((1, 8, 8), "linear", "a split of a sequence's tokens into parts of 1, 8, 8"),
    ((1, 16), "linear", "the first token split off a sequence .* read by the op linear"),
])
def test_other_splits_and_readers_of_the_split_off_token_are_refused(split, reader, message):
    def build(n):
        return CvtMini(n, split, reader)

    with pytest.raises(tp.TensorProgError, match=r"test_cvt_tokens.py:\d+:\d+: error: cannot "
                       r"trace " + message):
        tp.from_torch(build, (32, 64), images)
