"""A learned token prepended to a sequence (``prepend(cls, h, T1)``, examples/vit.tp): the emitted
module puts the class token first and the patch embeddings after it, counts the positions of the
longer sequence from the patches fed, and refuses more patches than the position table has rows
for. The engine derives the token as a bias, under every optimizer."""

import pytest
from conftest import ROOT, emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim T = 4
dim T1 = 5
dim P = 6
dim K = 3
input x : patches[T, P]
input pos : positions[T1]
param E : [n, P]
param b : [n] = 0
param cls : [n]
param Pos : [n, T1]
param W : [K, n]
h = prepend(cls, E @ x + b, T1) + Pos @ pos
output y = W @ first(relu(h))
"""


@pytest.fixture(scope="module")
def vit():
    module = load_module(emit_program(tp.parse_file(ROOT / "examples" / "vit.tp")), "vit")
    return module.Model(64, dtype=torch.float64)


def test_the_class_token_comes_first_then_the_patches(vit):
    (x,) = vit.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = vit.vectors(x)
    assert x.shape == (3, 16, 192) and v["h0_3"].shape == (3, 17, 64)
    assert torch.equal(v["h0_3"][:, 0], vit.cls.expand(3, -1))
    assert torch.equal(v["h0_3"][:, 1:], v["h0_2"])
    # the positions of T1: row t of the table added to token t, the class token's first
    assert torch.equal(v["h0"], v["h0_3"] + vit.Pos.t())
    assert vit(x).shape == (3, 10)


def test_positions_follow_the_patches_fed_and_more_are_refused(vit):
    (x,) = vit.example_inputs(2, generator=torch.Generator().manual_seed(1))
    v = vit.vectors(x[:, :5])  # 5 patches: 6 tokens, positions 0..5
    assert torch.equal(v["h0"], v["h0_3"] + vit.Pos.t()[:6])
    with pytest.raises(ValueError, match="the input has 18 tokens, more than the position "
                                         "table's 17 rows"):
        vit(torch.cat([x, x[:, :1]], dim=1))


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "muon"])
def test_the_prepended_token_derives_as_a_bias(optimizer):
    abc = tp.derive(tp.parse(SMALL, "small.tp"), optimizer).abc
    assert abc["cls"] == abc["b"] and str(abc["cls"].b) == "0"
    assert str(abc["cls"].c) == {"adam": "0", "sgd": "-1", "muon": "0"}[optimizer]


def test_tokens_inserted_after_the_class_token_go_between_it_and_the_patches():
    # examples/vit_registers.tp: prepend(r1, h0, T2, 1), prepend(r2, h1, T3, 2), DINOv2's
    # torch.cat([h[:, :1], reg, h[:, 1:]], dim=1); the positions stay those of T1
    program = tp.parse_file(ROOT / "examples" / "vit_registers.tp")
    assert "h1 = prepend(r1, h0, T2, 1)" in tp.to_text(program)
    model = load_module(emit_program(program), "vit_registers").Model(64, dtype=torch.float64)
    (x,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(x)
    reg = torch.stack([model.r1, model.r2]).expand(2, -1, -1)
    assert torch.equal(v["h2"], torch.cat([v["h0"][:, :1], reg, v["h0"][:, 1:]], dim=1))
    assert model(x).shape == (2, 10)


def test_an_insertion_past_the_sequences_end_is_refused():
    bad = SMALL.replace("output y", "dim T2 = 6\nparam r : [n]\nh2 = prepend(r, h, T2, 6)\n"
                        "output y")
    with pytest.raises(tp.SemanticError, match="the fourth argument of prepend must be a token "
                                               "index"):
        tp.parse(bad, "small.tp")
