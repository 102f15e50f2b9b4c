"""One softmax over two sets of keys (``softmax(a, b)``: T5Gemma 2's merged attention, a
decoder's queries against its own keys and the encoder's): derived as the two attentions apart,
since each weight stays Θ(1) over finitely many logits and moves through Θ(1) derivatives;
emitted as torch's softmax over the concatenated keys."""

import pytest
from conftest import ROOT, emit_program, import_file

import tensorprog as tp

EXAMPLE = ROOT / "examples" / "merged_attention.tp"


def _abc(program, optimizer):
    d = tp.derive(program, optimizer)
    return {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c, d.eps.get(p)) for p in d.abc}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_merged_attention_derives_as_the_two_attentions_apart(optimizer):
    # oracle, by hand: p and π are Θ(1) (T + S logits per row), move by the larger change of
    # s and c (capped at Θ(1)) and send g(p) back to both: exactly what causal_softmax(s) and
    # softmax(c) do apart. So every param, tau included (heads of a fixed dim: exponent 0; 1/dh,
    # exponent -1, with 4 heads of dh = n / 4), derives as in the program with the two
    # softmaxes normalised each on its own
    fixed = EXAMPLE.read_text()
    assert "dim dh = 16 " in fixed
    for source, tau in ((fixed, 0), (fixed.replace("dim dh = 16 ", "dim dh = n / 4 "), 1)):
        apart = source
        for i in "12":
            apart = apart.replace(f"causal_softmax(s{i}, c{i})", f"causal_softmax(s{i})").replace(
                f"causal_softmax(c{i}, s{i})", f"softmax(c{i})"
            )
        assert apart.count("softmax(") == source.count("softmax(")
        merged, plain = _abc(tp.parse(source), optimizer), _abc(tp.parse(apart), optimizer)
        assert merged == plain
        assert merged["tau"][0] == tau


def test_the_ir_text_of_merged_attention_parses_back():
    program = tp.parse_file(EXAMPLE)
    text = tp.to_text(program)
    assert "causal_softmax(s1, c1)" in text and "causal_softmax(c1, s1)" in text
    assert tp.parse(text) == program


def test_the_emitted_weights_are_one_softmax_over_the_concatenated_keys(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "merged_mup.py"
    path.write_text(emit_program(tp.parse_file(EXAMPLE)).source)
    model = import_file(path).Model(64, dtype=torch.float64)
    inputs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(*inputs)
    s, c = v["s1"], v["c1"]  # (batch, heads, T, T) and (batch, heads, T, S)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    want = torch.softmax(torch.cat([s.masked_fill(future, float("-inf")), c], -1), -1)
    # h1_1 = causal_softmax(s1, c1) on the decoder's keys, h1_4 = causal_softmax(c1, s1) on
    # the encoder's: together, the softmax over both, each row summing to 1
    text = tp.to_text(tp.parse_file(EXAMPLE))
    assert "h1_1 = causal_softmax(s1, c1)" in text and "h1_4 = causal_softmax(c1, s1)" in text
    got = torch.cat([v["h1_1"], v["h1_4"]], -1)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-12)
