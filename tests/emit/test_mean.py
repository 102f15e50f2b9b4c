"""The mean over a sequence's tokens (``mean(h)``, ``mean(h, k)``; examples/vit_mean.tp): the
emitted module computes torch's own ``h[:, k:].mean(1)``, and the engine derives for a
mean-pooled vision transformer exactly what it derives for one read at its class token (a mean
of finitely many tokens scales as one token), under every optimizer."""

import pytest
from conftest import ROOT, emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim T = 4
dim P = 6
dim K = 3
input x : patches[T, P]
param E : [n, P]
param W : [K, n]
h = relu(E @ x)
a = mean(h)
b = mean(h, 2)
output y = W @ (a + b)
"""


def test_mean_is_torchs_mean_over_the_tokens_read():
    module = load_module(emit_program(tp.parse(SMALL)), "small_mean")
    model = module.Model(16, dtype=torch.float64)
    (x,) = model.example_inputs(5, generator=torch.Generator().manual_seed(0))
    v = model.vectors(x)
    assert v["a"].shape == (5, 16)
    torch.testing.assert_close(v["a"], v["h"].mean(1), rtol=0, atol=1e-15)
    torch.testing.assert_close(v["b"], v["h"][:, 2:].mean(1), rtol=0, atol=1e-15)
    assert model(x).shape == (5, 3)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_mean_pooled_vit_derives_as_one_read_at_its_class_token(optimizer):
    mean = tp.derive(tp.parse_file(ROOT / "examples" / "vit_mean.tp"), optimizer).abc
    first = tp.derive(tp.parse_file(ROOT / "examples" / "vit.tp"), optimizer).abc
    assert mean == first


def test_the_mean_round_trips_through_the_text_form():
    program = tp.parse(SMALL)
    text = tp.to_text(program)
    assert "mean(h)" in text and "mean(h, 2)" in text
    assert tp.to_text(tp.parse(text)) == text
