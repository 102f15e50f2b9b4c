"""Attention with a sink (``causal_softmax(s, z)``: gpt-oss's, MiMo-V2-Flash's and Granite's
per-head sink logit): derived as one more logit of every row, emitted as the models compute
it, checked numerically."""

import warnings

import pytest
from conftest import emit_program, import_file

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.coordcheck import coord_check


def _program(dh: str, heads: str, sink: bool = True) -> tp.Program:
    program = f"""width n = 32
dim dh = {dh}
dim H = {heads}
dim T = 4
dim V = 16
input tok : tokens[T, V]
param E : [n, V]
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param Wo : [n, n]
param z : [H]
scale attn = 0.125
param U : [V, n]
h = E @ tok
a = mix(causal_softmax(attn * dot(Wq @ h, Wk @ h, dh), z), Wv @ h)
output y = U @ (h + Wo @ a)
"""
    return tp.parse(program if sink else program.replace(", z)", ")").replace("param z : [H]\n",
                                                                                  ""))


def _abc(program, optimizer):
    d = tp.derive(program, optimizer)
    return {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c, d.eps.get(p)) for p in d.abc}


@pytest.mark.parametrize("dh, heads", [("n / 4", "4"), ("8", "n / 8")])
def test_the_sink_derives_as_a_logit_of_its_head(dh, heads):
    # oracle, by hand: z is one more of a row's finitely many logits, so it must be Θ(1) at init
    # (b = 0) and move by Θ(1) (maximal: its change moves p by Θ(1)). Its gradient is its own
    # head's dp summed over finitely many tokens: as large as a logit's, dp = do·v summed over
    # the head dim, Θ(1) when dh ∝ n (do Θ(1/n), an LLN sum over n) and Θ(1/n) per head when dh
    # is fixed (n/dh heads, a finite sum each). Adam's update ignores the gradient's size: c = 0,
    # ε as the gradient, n^0 or n^-1; SGD's LR is the inverse of the gradient, c = 0 or -1 (a
    # bias of n/dh coordinates, as TP5 Table 3's "biases": LR η·fan_out).
    grows = dh == "8"
    program = _program(dh, heads)
    assert _abc(program, "adam")["z"] == (0, 0, 0, 1 if grows else 0)
    assert _abc(program, "sgd")["z"][:3] == (0, 0, -1 if grows else 0)
    # the sink changes nothing else: every other param derives as without it
    plain = _program(dh, heads, sink=False)
    for opt in ("adam", "sgd"):
        with_sink = _abc(program, opt)
        del with_sink["z"]
        assert with_sink == _abc(plain, opt)


def test_the_ir_text_of_a_sink_parses_back():
    program = _program("n / 4", "4")
    assert "causal_softmax(a_4, z)" in tp.to_text(program)
    assert tp.parse(tp.to_text(program)) == program


def test_the_emitted_sink_is_one_more_logit_per_head(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "sink_mup.py"
    path.write_text(emit_program(_program("n / 4", "4")).source)
    model = import_file(path).Model(32, dtype=torch.float64)
    with torch.no_grad():
        model.z.normal_(generator=torch.Generator().manual_seed(0))
    inputs = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    v = model.vectors(*inputs)
    s = v["a_4"]  # (batch, heads, tokens, tokens)
    future = torch.ones(4, 4, dtype=torch.bool).triu(1)
    e = s.masked_fill(future, float("-inf")).exp()
    want = e / (e.sum(-1, keepdim=True) + model.z.exp().view(-1, 1, 1))
    assert torch.allclose(v["a_5"], want, atol=1e-12)
    assert bool((v["a_5"].sum(-1) < 1).all())  # the sink took its share of every row


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_sink_passes_its_coordinate_check(optimizer):
    # widths 32..128, 2 seeds, 3 steps: the sink's share of each row moves with its LR, so a
    # wrong c would move the weights p (a_5) and the attention output by a power of the width
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        result = coord_check(_program("8", "n / 8"), OPTIMIZERS[optimizer],
                             widths=(32, 64, 128), steps=3, seeds=2, device="cpu",
                             tolerance=0.25)
    assert result.passed, str(result)


def _sink_change(module, width: int, scaled: bool) -> float:
    """RMS of the sink's change after 3 SGD steps (lr 0.002, a fixed linear loss) of the module
    emitted for SGD; ``scaled`` False: the sink's LR left at the base width's."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = module.Model(width, dtype=torch.float64)
    inputs = model.example_inputs(4, generator=torch.Generator().manual_seed(1))
    groups = module.param_groups(model, 0.002)
    for g in groups:
        if not scaled and any(p is model.z for p in g["params"]):
            g["lr"] = 0.002
    opt = torch.optim.SGD(groups, lr=0.002)
    z0 = model.z.detach().clone()
    w = torch.randn(model(*inputs).shape, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        (model(*inputs) * w).sum().backward()
        opt.step()
    return (model.z.detach() - z0).pow(2).mean().sqrt().item()


def test_the_sinks_sgd_lr_keeps_its_change_flat_with_a_fixed_head_dim(tmp_path):
    # n/8 heads: each sink's gradient is Θ(1/n), so µP's SGD LR ∝ n keeps Δz Θ(1). Measured at
    # widths 32 and 256 (seeds fixed): slope -0.04 with it, -1.04 with the base width's LR
    import math

    path = tmp_path / "sink_sgd.py"
    path.write_text(emit_program(_program("8", "n / 8"), optimizer="sgd").source)
    module = import_file(path)
    for scaled, want in ((True, 0.0), (False, -1.0)):
        a, b = (_sink_change(module, w, scaled) for w in (32, 256))
        assert math.log(b / a) / math.log(8) == pytest.approx(want, abs=0.15), scaled
