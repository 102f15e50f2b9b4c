"""A sequence's token vectors moved by k tokens (``shift(h, k)``; examples/trigram.tp): the
emitted module computes torch's own pad of a slice of the tokens, at the program's length and
at a shorter one, and the engine derives every param as it does with the shifts taken out (a
shift changes no exponent), under every optimizer."""

import re

import pytest
from conftest import ROOT, emit_program

torch = pytest.importorskip("torch")
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim T = 5
dim P = 6
dim K = 3
input x : patches[T, P]
param E : [n, P]
param W : [K, n]
h = relu(E @ x)
a = shift(h, 1)
b = shift(h, -2)
c = shift(h, 4)
output y = W @ (a + b + c)
"""


def test_shift_is_torchs_pad_of_the_tokens_kept():
    module = load_module(emit_program(tp.parse(SMALL)), "small_shift")
    model = module.Model(16, dtype=torch.float64)
    for tokens in (5, 3):  # the program's sequence, and a shorter one fed to it
        (x,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
        v = model.vectors(x[:, :tokens])
        h = v["h"]
        assert torch.equal(v["a"], F.pad(h[:, :-1], (0, 0, 1, 0)))
        assert torch.equal(v["b"], F.pad(h[:, 2:], (0, 0, 0, 2)))
        assert torch.equal(v["c"], F.pad(h[:, :max(0, tokens - 4)], (0, 0, min(4, tokens), 0)))
        assert v["a"].shape == h.shape == v["c"].shape


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_trigram_input_derives_as_three_reads_of_the_token_itself(optimizer):
    text = (ROOT / "examples" / "trigram.tp").read_text()
    shifted = tp.derive(tp.parse(text), optimizer).abc
    plain = tp.derive(tp.parse(re.sub(r"shift\(e, -?1\)", "e", text)), optimizer).abc
    assert shifted == plain


def test_the_shift_round_trips_through_the_text_form():
    text = tp.to_text(tp.parse(SMALL))
    assert "shift(h, 1)" in text and "shift(h, -2)" in text
    assert tp.to_text(tp.parse(text)) == text
