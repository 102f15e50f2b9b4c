"""Tracing mixture-of-experts layers into the language's ``route`` (fromtorch/ops_moe.py): a
hand-written MoE (top-k router, experts in 3-D params, a shared expert), Hugging Face's families
small, and what is refused."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive, parse_file  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

VOCAB, SEQ = 32, 8


class MoE(nn.Module):
    """A top-k MoE feed-forward layer as one writes it by hand: softmax gates, the k largest
    normalised, each token's slots gathering their experts' matrices from 3-D params
    [E, out, in] (``W[ids]``) for a batched matmul, and the k results summed."""

    def __init__(self, n, experts=4, k=2, form="batched"):
        super().__init__()
        self.k, self.experts, self.form = k, experts, form
        # with a bias: a token's experts at init are the bias's choice, the same at every
        # width (R @ x alone starts at the readout's n^-1/2 and picks them by noise)
        self.router = nn.Linear(n, experts)
        self.w_in = nn.Parameter(torch.randn(experts, 2 * n, n) / n**0.5)
        self.w_out = nn.Parameter(torch.randn(experts, n, 2 * n) / (2 * n) ** 0.5)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gates = torch.softmax(self.router(x), dim=-1)
        top, ids = torch.topk(gates, self.k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        if self.form == "dense":  # every expert on every token, the gates scattered to E
            mask = torch.zeros_like(gates).scatter(-1, ids, top)
            h = F.relu(torch.einsum("tn,efn->tef", x, self.w_in))
            y = torch.einsum("tef,enf->ten", h, self.w_out)
            return torch.einsum("te,ten->tn", mask, y).reshape(shape)
        ids = ids.reshape(-1)
        xs = x.repeat_interleave(self.k, dim=0)  # each token once per slot
        h = F.relu(torch.bmm(self.w_in[ids], xs.unsqueeze(-1)).squeeze(-1))
        y = torch.bmm(self.w_out[ids], h.unsqueeze(-1)).squeeze(-1)
        y = y * top.reshape(-1, 1)
        return y.view(-1, self.k, shape[-1]).sum(dim=1).reshape(shape)


class MoELM(nn.Module):
    """Embedding, a residual MoE layer with a shared expert, and a readout."""

    def __init__(self, n, form="batched"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, n)
        self.moe = MoE(n, form=form)
        self.shared_in = nn.Linear(n, 2 * n, bias=False)
        self.shared_out = nn.Linear(2 * n, n, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = torch.relu(self.embed(idx))
        h = h + self.moe(h) + self.shared_out(torch.relu(self.shared_in(h)))
        return self.head(h)


def _tokens(model):
    return (torch.zeros(2, SEQ, dtype=torch.long),)


@pytest.fixture(scope="module")
def handwritten():
    return from_torch(MoELM, (32, 64), _tokens)


def test_a_handwritten_moe_traces_into_route_norm(handwritten):
    src = handwritten.source
    assert "linear = moe_router_weight @ reshape + moe_router_bias" in src
    assert "v_softmax = softmax(linear)" in src
    assert "sum_2 = route_norm(v_softmax, 2, bmm_1_e0, bmm_1_e1, bmm_1_e2, bmm_1_e3)" in src
    assert "bmm_1_e3 = moe_w_out_e3 @ relu_1_e3" in src
    # each expert's slice of a 3-D param is a param of its own, mapped back to its slice
    assert handwritten.params["moe_w_in_e2"].expert == 2
    assert handwritten.params["moe_w_in_e2"].target == "moe.w_in"


def _exponents(abc, name):
    return (abc[name].a, abc[name].b, abc[name].c)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_moe_derives_what_the_language_moe_derives(handwritten, optimizer):
    # oracle: examples/moe.tp writes the same layer in the language (router R, experts A_e, B_e)
    ours = derive(handwritten.program, optimizer).abc
    theirs = derive(parse_file(ROOT / "examples" / "moe.tp"), optimizer).abc
    assert _exponents(ours, "moe_router_weight") == _exponents(theirs, "R")
    for e in range(4):
        assert _exponents(ours, f"moe_w_in_e{e}") == _exponents(theirs, f"A{e + 1}")
        assert _exponents(ours, f"moe_w_out_e{e}") == _exponents(theirs, f"B{e + 1}")
    assert _exponents(ours, "shared_in_weight") == _exponents(theirs, "As")
    if optimizer == "adam":  # the router a readout, the experts hidden matrices (TP5 Table 3)
        assert _exponents(ours, "moe_router_weight") == (0, 1, 1)
        assert _exponents(ours, "moe_w_out_e1") == (0, Fraction(1, 2), 1)


def test_apply_scales_each_experts_slice_and_the_3d_params_lr(handwritten):
    mup = apply_is_bit_identical_at_base(handwritten, MoELM, _tokens)
    torch.manual_seed(0)
    model = MoELM(128)
    mup.apply(model)
    # at 4x the base width: each expert's slice its own std, the base's x (n/base)^-(a+b),
    # a hidden matrix's 4^-1/2 and the router's (a readout's) 4^-1
    base = {k: std for k, (_, std) in handwritten.base.items()}
    with torch.no_grad():
        for e in range(4):
            assert float(model.moe.w_in[e].std()) == pytest.approx(base["moe.w_in"] / 2, 1e-6)
            assert float(model.moe.w_out[e].std()) == pytest.approx(base["moe.w_out"] / 2, 1e-6)
        assert float(model.moe.router.weight.std()) == pytest.approx(
            base["moe.router.weight"] / 4, 1e-6)
    lrs = mup.lr_multipliers(model)
    assert lrs["moe.w_in"] == pytest.approx(1 / 4)  # Adam: a hidden matrix's LR 1/n
    assert lrs["moe.router.weight"] == pytest.approx(1 / 4)


def test_the_coordinate_check_passes_mup_and_fails_sp(handwritten):
    # widths 64..256, 2 seeds, 3 Adam steps at the check's lr, ±0.25 as for HF models; the
    # experts' own values are not read (the model computes expert e only for its tokens), the
    # gates and the layer's output are. Measured after step 3: router logits +0.04 ± 0.12,
    # gates +0.06, layer +0.13, output logits -0.04 (without the router's bias the logits read
    # -0.25: which experts a token takes at init is then noise of the readout's init,
    # docs/check.md); SP: the router logits, the gates and the output blow up
    mup = MuP(handwritten, "adam")
    good = coord_check(mup, (64, 128, 256), tolerance=0.25)
    assert good.passed, {k: [round(r.slope, 2) for r in v] for k, v in good.failures.items()}
    bad = coord_check(mup, (64, 128), apply=False, tolerance=0.25, seeds=(0,))
    assert {"linear", "v_softmax", "linear_3"} <= set(bad.failures)
