"""A vector per sequence times a vector per token (examples/additive_attention.tp): the emitted
module scales every token alike (the per-sequence factor given the token axis), and a sum of
the two is still refused at its line."""

import pytest
from conftest import ROOT, emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
from tensorprog.errors import SemanticError  # noqa: E402


def test_a_vector_per_sequence_scales_every_token_alike():
    program = tp.parse_file(ROOT / "examples" / "additive_attention.tp")
    model = load_module(emit_program(program), "additive").Model(64, dtype=torch.float64)
    (img,) = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = model.vectors(img)
    assert v["g"].shape == (3, 64) and v["a_1"].shape == v["a_2"].shape == (3, 16, 64)
    torch.testing.assert_close(v["a_2"], v["a_1"] * v["g"][:, None, :], rtol=0, atol=0)
    torch.testing.assert_close(v["g"], 16 * v["q"].mean(1), rtol=0, atol=1e-12)

def test_a_sum_of_a_vector_per_sequence_and_one_per_token_is_refused():
    text = (ROOT / "examples" / "additive_attention.tp").read_text().replace(
        "(Wk @ t) * g", "(Wk @ t) + g")
    with pytest.raises(SemanticError, match="one vector per sequence.*combined only in a product"):
        tp.parse(text)
