"""Mixtures of experts whose gates multiply the experts' inputs (Llama 4's), traced into the
language's ``route_in`` (fromtorch/ops_gatedin.py): the traced program computes the model, derives
what examples/moe_gated_input.tp derives, and what it does not follow is refused at its line."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from conftest import ROOT, the_check_reads_the_program, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive, parse, parse_file, to_text  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

VOCAB, SEQ, E, K = 32, 6, 4, 2


class GatedInputMoE(nn.Module):
    """Llama 4's layer as its modeling file writes it: the top-k logits scattered into a table
    of -inf and a sigmoid taken (``form="zeros"``: a softmax's k largest gates scattered into
    zeros), every expert run on every token times its gate, experts in 3-D params [E, in, out]
    applied by bmm (a SwiGLU: the gate's nonlinearity makes gating the input differ from gating
    the output), the E results summed, plus a shared expert. ``form`` names the variants that
    are refused."""

    def __init__(self, n, form="llama4"):
        super().__init__()
        self.form = form
        self.embed = nn.Embedding(VOCAB, n)
        self.router = nn.Linear(n, E, bias=False)
        self.gate_up = nn.Parameter(torch.randn(E, n, 4 * n) / n**0.5)
        self.down = nn.Parameter(torch.randn(E, 2 * n, n) / (2 * n) ** 0.5)
        if form == "stored_out_in":  # [E, out, in], transposed for the product
            self.down = nn.Parameter(torch.randn(E, n, 2 * n) / (2 * n) ** 0.5)
        self.shared_in = nn.Linear(n, 2 * n, bias=False)
        self.shared_out = nn.Linear(2 * n, n, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def scores(self, x):
        logits = self.router(x)
        if self.form == "zeros":
            gates = torch.softmax(logits, dim=-1)
            top, ids = torch.topk(gates, K, dim=1)
            return torch.zeros_like(gates).scatter(1, ids, top)
        top, ids = torch.topk(logits, K, dim=1)
        fill = 0.0 if self.form == "fill0" else float("-inf")
        return torch.sigmoid(torch.full_like(logits, fill).scatter_(1, ids, top))

    def forward(self, idx):
        h = self.embed(idx)
        x = h.reshape(-1, h.shape[-1])
        scores = self.scores(x)
        routed = x.repeat(E, 1) * scores.transpose(0, 1).reshape(-1, 1)
        if self.form == "outputs":  # the gates multiply the experts' outputs: refused
            routed = x.repeat(E, 1)
        gate_up = torch.bmm(routed.view(E, -1, x.shape[-1]), self.gate_up)
        if self.form == "across":  # the experts' values reordered: each reads another's
            gate_up = gate_up.flip(0)
        gate, up = gate_up.chunk(2, dim=-1)
        down = self.down.transpose(1, 2) if self.form == "stored_out_in" else self.down
        y = torch.bmm(up * F.silu(gate), down).view(-1, x.shape[-1])
        if self.form == "outputs":
            y = y * scores.transpose(0, 1).reshape(-1, 1)
        out = y.reshape(E, -1, x.shape[-1]).sum(dim=0)
        out = out + self.shared_out(F.silu(self.shared_in(x)))
        return self.head(h + out.reshape(h.shape))


def _tokens(model):
    # distinct tokens, so that the routers' top-k differ from token to token
    return (torch.arange(2 * SEQ).reshape(2, SEQ) % VOCAB,)


@pytest.fixture(scope="module")
def llama4():
    return from_torch(GatedInputMoE, (32, 64), _tokens)


def test_each_experts_input_is_traced_into_route_in_and_the_experts_summed(llama4):
    src = llama4.source
    assert "sigmoid_gates = sigmoid(linear)" in src
    for e in range(E):
        assert re.search(rf"= route_in\(sigmoid_gates, {K}, {e}, embedding\)", src), src
    assert re.search(r"= bmm_1_e0 \+ bmm_1_e1 \+ bmm_1_e2 \+ bmm_1_e3\n", src), src
    assert llama4.params["gate_up_part1_e3"].expert == 3


@pytest.mark.parametrize("form", ["llama4", pytest.param("zeros", marks=pytest.mark.slow),
                                  pytest.param("stored_out_in", marks=pytest.mark.slow)])
def test_the_traced_program_computes_the_model(llama4, form):
    # oracle: the emitted module, the model's params copied in, the model's logits in float64;
    # a gate on the experts' outputs instead, or a dropped f(0) of an unselected expert, fails
    traced = llama4 if form == "llama4" else from_torch(
        lambda n: GatedInputMoE(n, form), (32, 64), _tokens)
    traced_computes_the_model(traced, lambda n: GatedInputMoE(n, form), _tokens)


def test_the_check_reads_each_vector_where_the_model_holds_it(llama4):
    # the model's sigmoid holds the table (0 for the experts not selected), not the program's
    # gates sigmoid(logits): before, the check read that table as the gates; every vector it
    # reads must be the program's value, the gates where the model holds them whole (zeros)
    for traced, form in ((llama4, "llama4"), (None, "zeros")):
        traced = traced or from_torch(lambda n, f=form: GatedInputMoE(n, f), (32, 64), _tokens)
        found = the_check_reads_the_program(traced, lambda n, f=form: GatedInputMoE(n, f),
                                            _tokens)
        gates, = [s.split(" = ")[0] for s in traced.source.splitlines()
                  if re.search(r"= (sigmoid|softmax)\(linear\)", s)]
        assert (gates in found) == (form == "zeros")


def _exponents(abc, name):
    return (abc[name].a, abc[name].b, abc[name].c)


@pytest.mark.parametrize("optimizer", ["adam", pytest.param("sgd", marks=pytest.mark.slow)])
def test_the_traced_layer_derives_what_the_language_layer_derives(llama4, optimizer):
    # oracle: examples/moe_gated_input.tp writes the same layer (router R, experts A_e, B_e)
    ours = derive(llama4.program, optimizer).abc
    theirs = derive(parse_file(ROOT / "examples" / "moe_gated_input.tp"), optimizer).abc
    assert _exponents(ours, "router_weight") == _exponents(theirs, "R")
    for e in range(E):
        for part in ("part0", "part1"):
            assert _exponents(ours, f"gate_up_{part}_e{e}") == _exponents(theirs, f"A{e}")
        assert _exponents(ours, f"down_e{e}") == _exponents(theirs, f"B{e}")
    if optimizer == "adam":  # the router a readout, the experts hidden matrices (TP5 Table 3)
        assert _exponents(ours, "router_weight") == (0, 1, 1)
        assert _exponents(ours, "down_e1") == (0, Fraction(1, 2), 1)


@pytest.mark.parametrize(("form", "message"), [
    # a table of 0 with the logits in: sigmoid gives the unselected experts 1/2, not 0
    ("fill0", r"a sigmoid of a router's table whose entries not selected are not -inf"),
    pytest.param("outputs", r"the op view on the tokens' copies for the experts "
                 r"\(x.repeat\(E, 1\)\) before the router's table of gates multiplies them",
                 marks=pytest.mark.slow),
    pytest.param("across", r"the op flip on the experts' values \[E, tokens, ...\]",
                 marks=pytest.mark.slow),
])
def test_what_is_not_each_experts_gated_input_is_refused_at_its_line(form, message):
    with pytest.raises(TraceError, match=message) as err:
        from_torch(lambda n: GatedInputMoE(n, form), (32, 64), _tokens)
    assert "test_moe_gated_input.py" in str(err.value)


SOURCE = """\
width n = 64
dim E = 3
input x : [n]
param R : [E, n]
param A : [n, n]
g = sigmoid(R @ x)
output y = A @ route_in(g, {k}, {i}, x)
"""


def test_route_in_prints_and_parses_back_to_the_same_ir():
    program = parse(SOURCE.format(k=2, i=1))
    assert "route_in(g, 2, 1, x)" in to_text(program)
    assert parse(to_text(program)) == program


class IdentityExperts(nn.Module):
    """Transformers' LongCat-Flash MoE layer between an embedding and a head: a softmax router
    over 4 experts with matrices and 2 zero-computation (identity) experts, its selection by
    the gates plus a buffer under torch.no_grad, the k gates times a routed scaling factor, the
    identity slots' gates times the token added to the grouped-matmul dispatch of the others."""

    def __init__(self, n, experts="grouped_mm"):
        super().__init__()
        from transformers.models.longcat_flash.configuration_longcat_flash import (
            LongcatFlashConfig,
        )
        from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

        config = LongcatFlashConfig(hidden_size=n, expert_ffn_hidden_size=2 * n,
                                    n_routed_experts=4, zero_expert_num=2,
                                    num_experts_per_tok=K, routed_scaling_factor=6.0)
        config._experts_implementation = experts  # a model's default is grouped_mm
        self.embed = nn.Embedding(VOCAB, n)
        self.moe = LongcatFlashMoE(config)
        for p in self.moe.parameters():  # the experts' 3-D params are made empty
            nn.init.normal_(p, std=n**-0.5)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        return self.head(h + self.moe(h))


@pytest.mark.slow
def test_identity_experts_trace_into_one_route_over_every_expert():
    pytest.importorskip("transformers.models.longcat_flash")
    traced = from_torch(IdentityExperts, (32, 64), _tokens)
    route, = [s for s in traced.source.splitlines() if "route(" in s]
    experts = ", ".join(f"grouped_mm_fallback_1_e{e}" for e in range(4))
    assert f"route(v_softmax, {K}, {experts}, embedding, embedding)" in route
    # oracle: the model's logits, where some tokens pick an identity expert and some do not,
    # computed by transformers' reference loop over the experts (grouped_mm has no float64);
    # its router computes in float32 whatever the model's dtype, hence float32's tolerance
    torch.manual_seed(3)
    model = IdentityExperts(32)
    with torch.no_grad():
        ids = model.moe.router(model.embed(*_tokens(model)))[2]
    assert (ids >= 4).any() and (ids < 4).any()
    traced_computes_the_model(traced, lambda n: IdentityExperts(n, "eager"), _tokens, tol=1e-5)
    # the check reads the program's values: before, it read the route times the routed
    # scaling factor (the model's sum) as the route alone
    the_check_reads_the_program(traced, IdentityExperts, _tokens, tol=1e-5, dtype=torch.float32)


class WrongIdentityMask(IdentityExperts):
    """The identity experts' output weighted by the other slots' gates (the mask negated where
    it should not be): no route's, refused at the sum."""

    def __init__(self, n):
        super().__init__(n)
        moe = self.moe

        def forward(x):
            shape, x = x.shape, x.reshape(-1, x.shape[-1])
            _, w, ids = moe.router(x)
            mask = ids >= moe.num_routed_experts
            identity = x * w.masked_fill(mask, 0.0).sum(dim=-1, keepdim=True)
            ids = torch.where(mask, (ids - 4) * 4 // 2, ids)
            y = moe.experts(x, ids, w.masked_fill(mask, 0.0))
            return (y + identity).reshape(shape)

        moe.forward = forward


@pytest.mark.slow
def test_identity_experts_weighted_by_other_gates_are_refused_at_the_sum():
    pytest.importorskip("transformers.models.longcat_flash")
    with pytest.raises(TraceError, match=r"the op sum on the gates or ids of a router's experts "
                       r"with matrices once its identity experts are split off") as err:
        from_torch(WrongIdentityMask, (32, 64), _tokens)
    assert "test_moe_gated_input.py" in str(err.value)


class RepeatedPositions(nn.Module):
    """Whisper's decoder positions: ``arange(T).unsqueeze(0).repeat(B, 1)``, a constant repeated
    over the batch and looked up in a table: the walk's, not the experts' copies of the tokens
    (x.repeat(E, 1) of a traced vector), which had taken and refused it."""

    def __init__(self, n):
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, n), nn.Embedding(SEQ, n)
        self.out = nn.Linear(n, VOCAB, bias=False)

    def forward(self, ids):
        b, t = ids.shape
        positions = torch.arange(t, device=ids.device).unsqueeze(0).repeat(b, 1)
        return self.out(self.embed(ids) + self.pos(positions))


def test_a_repeated_constant_is_no_experts_copy_of_the_tokens():
    traced_computes_the_model(from_torch(RepeatedPositions, (32, 64), _tokens), RepeatedPositions,
                              _tokens)
