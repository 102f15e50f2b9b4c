"""Two vectors side by side in each head (``cat(a, b, D, dv)``: DiffLlama's two attention
outputs, each head of dv = 2·dh a's head then b's): the emitted module computes torch's own
``torch.cat`` of the (..., heads, dh) views, the text form round-trips, and the engine derives
every param as for the plain cat (a permutation of its coordinates changes no exponent)."""

import pytest
from conftest import emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

SMALL = """\
width n = 16
dim dv = n / 2
dim D = 2 * n
dim T = 3
dim P = 6
dim K = 3
input x : patches[T, P]
param A : [n, P]
param B : [n, P]
param W : [K, D]
a = A @ x
b = B @ x
output y = W @ cat(a, b, D, dv)
"""


def test_each_head_is_the_parts_heads_in_turn():
    module = load_module(emit_program(tp.parse(SMALL)), "small_cat_heads")
    model = module.Model(16, dtype=torch.float64)
    (x,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(x)
    a, b = (v[k].unflatten(-1, (4, -1)) for k in ("a", "b"))  # 4 heads of dh = n / 4
    want = torch.cat([a, b], dim=-1).flatten(-2)
    got = next(t for k, t in v.items() if t.shape[-1] == 32)
    assert torch.equal(got, want)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_it_derives_as_the_plain_cat(optimizer):
    plain = SMALL.replace("cat(a, b, D, dv)", "cat(a, b, D)")
    assert tp.derive(tp.parse(SMALL), optimizer).abc == tp.derive(tp.parse(plain), optimizer).abc


def test_it_round_trips_through_the_text_form():
    text = tp.to_text(tp.parse(SMALL))
    assert "cat(a, b, D, dv)" in text
    assert tp.to_text(tp.parse(text)) == text


def test_parts_of_no_whole_share_of_each_head_at_the_base_width_are_refused():
    # D3 = 3n in 6 heads of n / 2: each part of n has n / 6 coordinates in each head, no
    # whole number at n = 16 (the emitted module could not lay it out)
    src = SMALL.replace("dim D = 2 * n", "dim D = 3 * n").replace(
        "cat(a, b, D, dv)", "cat(a, b, a, D, dv)")
    with pytest.raises(tp.SemanticError, match=r"cat\(\.\.\., D, dv\): a part is not a whole "
                       r"number of coordinates in each of 6 heads"):
        tp.parse(src)


def test_a_width_that_cuts_no_whole_heads_is_refused_by_the_module():
    # heads of dv = 8 in D = 2n: n / 4 of them, so a width of 10 would cut D = 20 into two
    # heads of 10 (torch's unflatten takes them), silently another layout than the program's
    module = load_module(emit_program(tp.parse(SMALL.replace("dim dv = n / 2", "dim dv = 8"))),
                         "small_cat_heads_8")
    with pytest.raises(ValueError, match=r"width 10: the heads D / dv of y_1 = 1 \* n / 4 must "
                       r"be a whole number"):
        module.Model(10)
    assert module.Model(12).width == 12
