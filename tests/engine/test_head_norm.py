"""A norm over each head's coordinates (QK-norm: ``rmsnorm(q, dh)``) and its gain of the head
dim: derived by the whole-dim norm's rule over a group of dh coordinates, the gain's gradient
summing over the heads that share it; emitted as torch computes it."""

from fractions import Fraction

import pytest
from conftest import ROOT, emit_program, import_file

import tensorprog as tp


def _program(dh: str, per_head: bool) -> tp.Program:
    """One attention block with QK-norm; per_head: rmsnorm(q, dh) with [dh] gains, else the
    whole-dim rmsnorm(q) with [n] gains."""
    g, norm = ("dh", ", dh") if per_head else ("n", "")
    return tp.parse(f"""width n = 64
dim dh = {dh}
dim T = 4
dim V = 32
input tok : tokens[T, V]
param E : [n, V]
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param gq : [{g}] = 1
param gk : [{g}] = 1
scale attn = 0.25
param U : [V, n]
h = E @ tok
q = gq * rmsnorm(Wq @ h{norm})
k = gk * rmsnorm(Wk @ h{norm})
a = mix(causal_softmax(attn * dot(q, k, dh)), Wv @ h)
output y = U @ (h + a)
""")


def _exponents(program, optimizer):
    d = tp.derive(program, optimizer)
    return {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c, d.eps.get(p)) for p in d.abc}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_norm_per_head_derives_as_the_whole_dim_norm(optimizer):
    # Θ(1) out whatever its input, a change relative to its input's size, a gradient divided
    # by it: per group of dh coordinates as over the whole dim. With a head dim ∝ n (finitely
    # many heads) even the gains' exponents are the whole-dim ones.
    assert _exponents(_program("n / 4", True), optimizer) == _exponents(
        _program("n / 4", False), optimizer)


def test_a_gain_shared_by_infinitely_many_heads_sums_its_gradient_over_them():
    # a fixed head dim: n/16 heads share gq, so its gradient entry is an LLN sum over them,
    # Θ(1) where a whole-dim gain's is Θ(1/n): SGD's LR Θ(1) instead of n, Adam's ε Θ(1)
    per_head, whole = _program("16", True), _program("16", False)
    sgd, sgd_whole = _exponents(per_head, "sgd"), _exponents(whole, "sgd")
    assert sgd["gq"][2] == 0 and sgd_whole["gq"][2] == -1
    adam, adam_whole = _exponents(per_head, "adam"), _exponents(whole, "adam")
    assert adam["gq"][3] == 0 and adam_whole["gq"][3] == 1
    # every other param derives as with the whole-dim norm
    for name in ("E", "Wq", "Wk", "Wv", "U", "attn"):
        assert sgd[name] == sgd_whole[name] and adam[name] == adam_whole[name], name
    assert tp.derive(per_head, "adam").abc["Wq"].b == Fraction(1, 2)


def test_the_ir_text_of_a_head_norm_parses_back():
    program = _program("16", True)
    assert "rmsnorm(q_1, dh)" in tp.to_text(program)
    assert tp.parse(tp.to_text(program)) == program


def test_the_emitted_head_norm_and_gain_are_torchs(tmp_path):
    torch = pytest.importorskip("torch")
    program = tp.parse_file(ROOT / "examples" / "qknorm.tp")
    path = tmp_path / "qknorm_mup.py"
    path.write_text(emit_program(program).source)
    model = import_file(path).Model(256, dtype=torch.float64)
    with torch.no_grad():
        model.gq.normal_(generator=torch.Generator().manual_seed(0))
    inputs = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = model.vectors(*inputs)
    heads = v["q_1"].unflatten(-1, (16, 16))  # 256 = 16 heads of 16
    rms = torch.nn.functional.rms_norm(heads, (16,), eps=1e-6)
    assert torch.allclose(v["q_2"], rms.flatten(-2), atol=1e-12)
    assert torch.allclose(v["q"], (rms * model.gq).flatten(-2), atol=1e-12)


def _biased(dh: str, per_head: bool) -> tp.Program:
    """Persimmon's QK-layernorm: layernorm(q, dh) with a gain and a bias of the head dim (else
    the whole-dim layernorm(q) with [n] ones)."""
    g, norm = ("dh", ", dh") if per_head else ("n", "")
    return tp.parse(f"""width n = 64
dim dh = {dh}
dim T = 4
dim V = 32
input tok : tokens[T, V]
param E : [n, V]
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param gq : [{g}] = 1
param bq : [{g}]
scale attn = 0.25
param U : [V, n]
h = E @ tok
q = gq * layernorm(Wq @ h{norm}) + bq
a = mix(causal_softmax(attn * dot(q, Wk @ h, dh)), Wv @ h)
output y = U @ (h + a)
""")


def test_a_bias_shared_by_infinitely_many_heads_sums_its_gradient_over_them():
    # as the gain: n/16 heads share bq, its gradient entry an LLN sum over them (SGD's LR Θ(1)
    # instead of n); with finitely many heads (dh ∝ n) it is the whole-dim bias
    for optimizer in ("sgd", "adam"):
        assert _exponents(_biased("n / 4", True), optimizer) == _exponents(
            _biased("n / 4", False), optimizer)
    sgd, sgd_whole = _exponents(_biased("16", True), "sgd"), _exponents(_biased("16", False),
                                                                         "sgd")
    assert sgd["bq"][2] == 0 and sgd_whole["bq"][2] == -1
    assert {k: v for k, v in sgd.items() if k not in ("gq", "bq")} == {
        k: v for k, v in sgd_whole.items() if k not in ("gq", "bq")}
    program = _biased("16", True)
    assert "+ bq" in tp.to_text(program) and tp.parse(tp.to_text(program)) == program


def test_the_emitted_head_bias_is_torchs(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "biased_mup.py"
    path.write_text(emit_program(_biased("16", True)).source)
    model = import_file(path).Model(64, dtype=torch.float64)
    with torch.no_grad():
        for p in (model.gq, model.bq):
            p.normal_(generator=torch.Generator().manual_seed(0))
    inputs = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = model.vectors(*inputs)
    heads = v["q_1"].unflatten(-1, (4, 16))  # 64 = 4 heads of 16
    want = torch.nn.functional.layer_norm(heads, (16,), model.gq, model.bq, eps=1e-5)
    assert torch.allclose(v["q"], want.flatten(-2), atol=1e-12)
