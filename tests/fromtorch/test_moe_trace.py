"""Tracing mixture-of-experts layers into the language's ``route`` (fromtorch/ops_moe.py): a
hand-written MoE (top-k router, experts in 3-D params, a shared expert), Hugging Face's families
small, and what is refused."""

from __future__ import annotations

import re
import warnings
from fractions import Fraction

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base, the_check_reads_the_program

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive, parse_file  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

VOCAB, SEQ = 32, 8


class MoE(nn.Module):
    """A top-k MoE feed-forward layer as one writes it by hand: softmax gates, the k largest
    normalised, each token's slots gathering their experts' matrices from 3-D params
    [E, out, in] (``W[ids]``) for a batched matmul, and the k results summed."""

    def __init__(self, n, experts=4, k=2, form="batched"):
        super().__init__()
        self.k, self.experts, self.form = k, experts, form
        # form "norm": the k largest divided by their L1 norm (DBRX's), p and sign its variants
        self.p, self.sign = 1, 1.0
        # with a bias: a token's experts at init are the bias's choice, the same at every
        # width (R @ x alone starts at the readout's n^-1/2 and picks them by noise)
        self.router = nn.Linear(n, experts)
        self.w_in = nn.Parameter(torch.randn(experts, 2 * n, n) / n**0.5)
        self.w_out = nn.Parameter(torch.randn(experts, n, 2 * n) / (2 * n) ** 0.5)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.form == "statics":  # Ernie-4.5's: softmax gates, a fixed param's bias, clamp
            gates = torch.softmax(self.router(x), dim=-1)
            ids = torch.topk(gates + self.statics.squeeze(), self.k, dim=-1)[1]
            top = torch.gather(gates, -1, ids)
            top = top / torch.clamp(top.sum(dim=-1, keepdim=True), min=1e-12)
            return self.dispatch(x, ids, top, shape)
        if self.form == "logits":  # GraniteMoE's: the top k logits, then their softmax
            top, ids = torch.topk(self.router(x), self.k, dim=-1)
            top = torch.softmax(top, dim=-1)
        else:
            gates = torch.softmax(self.router(x), dim=-1)
            top, ids = torch.topk(gates, self.k, dim=-1)
            top = top / top.sum(dim=-1, keepdim=True) if not self.form.startswith("norm") \
                else top / torch.norm(top * self.sign, p=self.p, dim=-1, keepdim=True)
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
    """Embedding, a residual MoE layer with a shared expert, and a readout; ``form="logits"``:
    the router's softmax taken of its top k logits, and the shared expert gated per token by
    ``sigmoid(W_g @ h)``, W_g : [1, n] (Qwen2-MoE's)."""

    def __init__(self, n, form="batched"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, n)
        self.moe = MoE(n, form=form)
        self.shared_in = nn.Linear(n, 2 * n, bias=False)
        self.shared_out = nn.Linear(2 * n, n, bias=False)
        self.shared_gate = nn.Linear(n, 1, bias=False) if form == "logits" else None
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = torch.relu(self.embed(idx))
        shared = self.shared_out(torch.relu(self.shared_in(h)))
        if self.shared_gate is not None:
            shared = torch.sigmoid(self.shared_gate(h)) * shared
        return self.head(h + self.moe(h) + shared)


def _tokens(model):
    return (torch.zeros(2, SEQ, dtype=torch.long),)


@pytest.fixture(scope="module")
def handwritten():
    return from_torch(MoELM, (32, 64), _tokens)


def test_a_handwritten_moe_traces_into_route_norm(handwritten):
    src = handwritten.source
    assert "linear_2 = moe_router_weight @ reshape + moe_router_bias" in src
    assert "v_softmax = softmax(linear_2)" in src
    assert "sum_2 = route_norm(v_softmax, 2, bmm_1_e0, bmm_1_e1, bmm_1_e2, bmm_1_e3)" in src
    assert "bmm_1_e3 = moe_w_out_e3 @ relu_2_e3" in src
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


@pytest.mark.slow  # about 10 s; the default run checks NormedMoELM's router by its parts (below)
def test_the_coordinate_check_passes_mup_and_fails_sp(handwritten):
    # widths 64..256, 6 seeds, 3 Adam steps at the check's lr, ±0.25 as for HF models; the
    # experts' own values are not read (the model computes expert e only for its tokens), the
    # gates and the layer's output are (without the router's bias the logits read -0.25: which
    # experts a token takes at init is then noise of the readout's init, docs/check.md). apply
    # draws the router's bias, a param of fixed size, anew at each width, so which experts a
    # token takes differs from width to width: over seeds 0 and 1 alone the layer's output and
    # the routed sum read +0.28 and +0.29, over seeds 2 and 3 they pass, over 6 seeds they pass.
    # SP: the router logits, the gates and the output blow up
    mup = MuP(handwritten, "adam")
    good = coord_check(mup, (64, 128, 256), tolerance=0.25, seeds=tuple(range(6)))
    assert good.passed, {k: [round(r.slope, 2) for r in v] for k, v in good.failures.items()}
    bad = coord_check(mup, (64, 128), apply=False, tolerance=0.25, seeds=(0,))
    assert {"linear_2", "v_softmax", "linear_3"} <= set(bad.failures)


class BiasedRouterMoE(MoE):
    """DeepSeek-V3's router (GLM-4-MoE's, EXAONE-MoE's): sigmoid gates; each token's experts
    selected by the gates plus a per-expert bias (a buffer its load balancing sets) among the
    experts of its best group of 2; the selected gates gathered, normalised and scaled by 2.5.
    ``form="choice"``: the selection scores gathered instead of the gates (refused);
    ``form="logits"`` (Kolibri's): the logits plus the bias select, and the selected logits'
    sigmoid, normalised, weights the experts; ``form="statics"`` (Ernie-4.5's): softmax gates
    plus a fixed param [1, E], squeezed, select, and their clamped sum normalises them;
    ``form="frozen"`` (AFMoE's): the bias a param [E] the model does not train, read as it is."""

    def __init__(self, n, form="gates"):
        super().__init__(n)
        self.router = nn.Linear(n, 4, bias=False)
        self.register_buffer("correction", torch.zeros(4))
        self.statics = nn.Parameter(torch.zeros(1, 4), requires_grad=False)
        if form in ("frozen", "trained"):
            self.frozen = nn.Parameter(torch.zeros(4), requires_grad=form == "trained")
        self.form = form

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.form == "statics":  # Ernie-4.5's: softmax gates, a fixed param's bias, clamp
            gates = torch.softmax(self.router(x), dim=-1)
            ids = torch.topk(gates + self.statics.squeeze(), self.k, dim=-1)[1]
            top = torch.gather(gates, -1, ids)
            top = top / torch.clamp(top.sum(dim=-1, keepdim=True), min=1e-12)
            return self.dispatch(x, ids, top, shape)
        if self.form == "logits":
            logits = self.router(x)
            ids = torch.topk(logits + self.correction, self.k, dim=-1)[1]
            top = logits.gather(1, ids).sigmoid()
            return self.dispatch(x, ids, top / top.sum(dim=-1, keepdim=True), shape)
        scores = self.router(x).sigmoid()
        if self.form in ("frozen", "trained"):  # AFMoE's: no groups
            ids = torch.topk(scores + self.frozen, k=self.k, dim=1)[1]
            top = scores.gather(dim=1, index=ids)
            return self.dispatch(x, ids, top / (top.sum(dim=-1, keepdim=True) + 1e-20), shape)
        choice = scores + self.correction
        groups = choice.view(-1, 2, 2).topk(2, dim=-1)[0].sum(dim=-1)
        best = torch.topk(groups, k=1, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(groups)
        mask.scatter_(1, best, 1)
        mask = mask.unsqueeze(-1).expand(-1, 2, 2).reshape(-1, 4)
        choice = choice.masked_fill(~mask.bool(), float("-inf"))
        ids = torch.topk(choice, k=self.k, dim=-1, sorted=False)[1]
        top = (choice if self.form == "choice" else scores).gather(1, ids)
        top = top / (top.sum(dim=-1, keepdim=True) + 1e-20) * 2.5
        return self.dispatch(x, ids, top, shape)

    def dispatch(self, x, ids, top, shape):
        ids = ids.reshape(-1)
        xs = x.repeat_interleave(self.k, dim=0)
        h = F.relu(torch.bmm(self.w_in[ids], xs.unsqueeze(-1)).squeeze(-1))
        y = torch.bmm(self.w_out[ids], h.unsqueeze(-1)).squeeze(-1) * top.reshape(-1, 1)
        return y.view(-1, self.k, shape[-1]).sum(dim=1).reshape(shape)


class BiasedMoELM(MoELM):
    def __init__(self, n, form="gates"):
        super().__init__(n)
        self.moe = BiasedRouterMoE(n, form)


def test_a_selection_by_the_gates_plus_a_bias_in_groups_traces_into_route_norm():
    # the selection scores (gates + bias, masked to the best group) only choose the ids; the
    # gates gathered by them weight the experts: route_norm of the gates, which derives as
    # examples/moe.tp (which k are selected enters no exponent), the line saying how the model
    # selects; apply leaves the model bit-identical at the base width (the bias is no param)
    traced = from_torch(BiasedMoELM, (32, 64), _tokens)
    route, = _routes(traced)
    assert route == ("sum_3_unscaled = route_norm(v_sigmoid, 2, bmm_1_e0, bmm_1_e1, bmm_1_e2, "
                     "bmm_1_e3)  # selected by v_sigmoid + a per-expert bias, in its best groups")
    assert "reshape_4 = 2.5 * sum_3_unscaled" in traced.source
    # the model's sum holds the route times 2.5 (the factor is in its gates): the check reads
    # the layer's output after it, not the route alone under the sum's name
    assert traced.vectors["sum_3_unscaled"] == ("sum_3", "expert")
    assert traced.vectors["reshape_4"] == ("reshape_4", "out")
    ours = derive(traced.program, "adam").abc
    theirs = derive(parse_file(ROOT / "examples" / "moe.tp"), "adam").abc
    assert _exponents(ours, "moe_router_weight") == _exponents(theirs, "R") == (0, 1, 1)
    assert _exponents(ours, "moe_w_out_e3") == _exponents(theirs, "B4")
    apply_is_bit_identical_at_base(traced, BiasedMoELM, _tokens)
    # Kolibri's: the selected logits' sigmoid is the sigmoid's selected entries
    traced = from_torch(lambda n: BiasedMoELM(n, "logits"), (32, 64), _tokens)
    route, = _routes(traced)
    assert route.startswith("sum_2 = route_norm(sigmoid_gates, 2, bmm_1_e0, ") and "# selected" \
        in route
    assert "sigmoid_gates = sigmoid(linear_2)" in traced.source
    # the model's sigmoid holds the k selected logits' alone, not the gates: the check reads none
    assert traced.vectors["sigmoid_gates"] == ("sigmoid", "expert")
    assert _exponents(derive(traced.program, "adam").abc, "moe_router_weight") == (0, 1, 1)
    # Ernie-4.5's: softmax gates, the bias a fixed param [1, E] squeezed (no gradient reaches
    # it through the ids: it stays out of the program, and apply says so), a clamped sum
    build = lambda n: BiasedMoELM(n, "statics")  # noqa: E731
    traced = from_torch(build, (32, 64), _tokens)
    route, = _routes(traced)
    assert route.startswith("sum_2 = route_norm(v_softmax, 2, bmm_1_e0, ") and "# selected" in route
    mup = apply_is_bit_identical_at_base(traced, build, _tokens)
    assert mup.uncovered(build(32)) == ["moe.statics"]
    # the selection scores weighting the experts are no gates: refused at the gather
    with pytest.raises(TraceError, match=r"cannot trace the op gather on a router's selection "
                                         r"scores(.|\n)*DeepSeek-V3's e_score_correction_bias"):
        from_torch(lambda n: BiasedMoELM(n, "choice"), (32, 64), _tokens)


def test_a_selection_bias_the_model_does_not_train_is_read_as_a_buffer_is():
    # AFMoE's expert_bias: a param with requires_grad=False added to the gates where only the
    # top-k reads the sum; it stays out of the program, and apply names it without warning
    build = lambda n: BiasedMoELM(n, "frozen")  # noqa: E731
    traced = from_torch(build, (32, 64), _tokens)
    route, = _routes(traced)
    assert route.startswith("sum_2 = route_norm(v_sigmoid, 2, bmm_1_e0, ") and "# selected" in route
    mup = apply_is_bit_identical_at_base(traced, build, _tokens)
    assert mup.uncovered(build(32)) == ["moe.statics", "moe.frozen"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mup.param_groups(build(32), 1e-3)
    # a trained one is a bias of the scores: their sum is no gates, refused at the gather
    with pytest.raises(TraceError, match=r"cannot trace the op gather"):
        from_torch(lambda n: BiasedMoELM(n, "trained"), (32, 64), _tokens)


# --- Hugging Face's families, built small (one layer, 4 experts, top-2, vocabulary 32) ----------


def _hf(family: str, impl: str = "grouped_mm", **config):
    transformers = pytest.importorskip("transformers")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = transformers.AutoConfig.for_model(family).__class__
    model_cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])

    def build(n):
        cfg = cls(hidden_size=n, intermediate_size=2 * n, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=n // 2,
                  vocab_size=VOCAB, max_position_embeddings=SEQ, use_cache=False, **config)
        model = model_cls(cfg)
        model.set_experts_implementation(impl)
        return model

    return build


def _routes(traced) -> list[str]:
    return [s.strip() for s in traced.source.splitlines()
            if re.search(r"= route(_norm)?\(", s)]


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_hf_mixtral_derives_what_the_language_moe_derives():
    # oracle: the router and every expert's three matrices (SwiGLU: gate, up, down) get the
    # exponents of examples/moe.tp's router R and expert matrices A_e (in) and B_e (out);
    # transformers' default dispatch, the tokens sorted by expert and a grouped matmul (the
    # batched one is the hand-written model's above)
    build = _hf("mixtral", num_local_experts=4, num_experts_per_tok=2)
    traced = from_torch(build, (32, 64), _tokens, blocks=False)
    route, = _routes(traced)
    assert route.startswith("sum_2 = route_norm(v_softmax, 2, ") and route.count("_e") == 4
    ours = derive(traced.program, "adam").abc
    theirs = derive(parse_file(ROOT / "examples" / "moe.tp"), "adam").abc
    assert _exponents(ours, "model_layers_0_mlp_gate_weight") == _exponents(theirs, "R")
    for e in range(4):
        for part in ("part0", "part1"):  # the fused gate/up projection's two halves
            name = f"model_layers_0_mlp_experts_gate_up_proj_{part}_e{e}"
            assert _exponents(ours, name) == _exponents(theirs, "A1")
        name = f"model_layers_0_mlp_experts_down_proj_e{e}"
        assert _exponents(ours, name) == _exponents(theirs, "B1")
    mup = MuP(traced, "adam")
    torch.manual_seed(1)
    model = build(32)
    torch.manual_seed(1)
    plain = build(32)
    mup.apply(model)  # at the base width: bit-identical params and logits
    pairs = zip(model.parameters(), plain.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    x = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x).logits, plain(x).logits)
    assert not mup.uncovered(model)  # every param of the model is in the program


def test_a_softmax_of_the_top_logits_and_a_gated_shared_expert():
    # GraniteMoE's router: softmax of the k largest logits = the k largest of softmax(logits)
    # over their sum; Qwen2-MoE's shared expert times sigmoid(W_g @ h), W_g : [1, n]: a route
    # over one gate is that product exactly, and W_g derives as the readout it is
    traced = from_torch(lambda n: MoELM(n, "logits"), (32, 64), _tokens)
    shared, routed = _routes(traced)
    assert routed.startswith("sum_1 = route_norm(softmax_gates, 2, bmm_1_e0, ")
    assert "softmax_gates = softmax(linear_3)" in traced.source
    # the model's softmax holds the k selected gates alone: the check reads the program's
    # values, never that softmax as the gates over every expert (it did before)
    found = the_check_reads_the_program(traced, lambda n: MoELM(n, "logits"), _tokens)
    assert "softmax_gates" not in found and "sum_1" in found
    assert shared == "mul = route(v_sigmoid, 1, linear_1)"
    abc = derive(traced.program, "adam").abc
    assert _exponents(abc, "shared_gate_weight") == _exponents(abc, "moe_router_weight") \
        == (0, 1, 1)
    apply_is_bit_identical_at_base(traced, lambda n: MoELM(n, "logits"), _tokens)


# --- the router's finite-width drift ----------------------------------------------------------


class NormedMoELM(nn.Module):
    """An MoE layer on an RMS-normed embedding of HF's small init (std 0.02), with a router of
    no bias whose init (std 0.2 at the base width) is large beside the check's learning rate:
    the router logits' change R₀·Δx then holds a CLT part (n^-1/2, from the embedding's change)
    that outweighs the router's own Θ(1) update at widths 64..256, as HF Mixtral's second
    router's does at 256..1024 (docs/torch.md)."""

    def __init__(self, n):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, n)
        self.moe = MoE(n)
        self.moe.router = nn.Linear(n, 4, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.moe.router.weight, std=0.2)

    def forward(self, idx):
        e = self.embed(idx)
        h = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.head(h + self.moe(h))


@pytest.mark.slow  # a coordinate check over widths (README, Tests)
def test_a_routers_finite_width_drift_passes_by_its_parts_and_sp_still_fails():
    # the router logits (linear) read -0.31 after step 2, -0.29 after step 3 at widths 64..256
    # (2 seeds, ±0.15). Split, their change is the router's own update ΔR·x, which scales as
    # µP requires (-0.03, -0.08), plus R₀·Δx, which shrinks (-0.35, -0.32): a CLT part that
    # vanishes in the limit, so the logits and the gates (their softmax) pass by their parts,
    # said in their verdicts and result.drift. Under SP the logits blow up (own update n^1):
    # they fail, and no drift is claimed
    traced = from_torch(NormedMoELM, (32, 64), _tokens)
    mup = MuP(traced, "adam")
    good = coord_check(mup, (64, 128, 256))
    assert good.passed, str(good)
    assert set(good.drift) == {"linear", "v_softmax"}
    router = [r for r in good.results if r.name == "linear" and r.step >= 2]
    assert all(r.ok and r.slope < -0.15 for r in router)  # the total alone would fail
    assert "passes by its parts" in good.drift["linear"]
    assert "its own update ΔW·x scales as µP requires" in good.drift["linear"]
    assert "follows moe.router (linear)'s finite-width drift" in good.drift["v_softmax"]
    assert "by their parts" in str(good)
    bad = coord_check(mup, (64, 128), apply=False, seeds=(0,))
    assert "linear" in bad.failures and bad.slope("linear", 3) > 0.5 and not bad.drift


class FrozenRouterLM(NormedMoELM):
    """NormedMoELM with its router never trained: its logits change only by R₀·Δx."""

    def __init__(self, n):
        super().__init__(n)
        self.moe.router.weight.requires_grad_(False)


def test_a_router_whose_own_update_does_not_scale_fails_whatever_its_input_does():
    # the router's own update is exactly 0 (slope -inf, µP requires 0): its logits' change is
    # all R₀·Δx, which shrinks (-0.3), and the split must not pass that as drift
    traced = from_torch(FrozenRouterLM, (32, 64), _tokens)
    result = coord_check(MuP(traced, "adam"), (64, 128), steps=2, seeds=(0,))
    assert "linear" in result.failures and "linear" not in result.drift, str(result)


@pytest.mark.slow
def test_hf_gpt_oss_experts_with_biases_and_interleaved_gate_and_up():
    # gpt-oss's experts: a bias per expert (b[ids sorted], added in place to the grouped
    # matmul), the gate and up projections interleaved (gate_up[..., ::2], [..., 1::2]: every
    # other row, a param each), each clamped (gate at 7 from above, up to [-7, 7]) and
    # (up + 1) * gate·σ(1.702 gate); its rotary by halves with YaRN's scaled tables. Oracle:
    # each expert's gate and up rows and biases derive as examples/moe.tp's expert input A1,
    # and apply is bit-identical at the base width with every param in the program
    build = _hf("gpt_oss", num_local_experts=4, num_experts_per_tok=2, layer_types=None)
    traced = from_torch(build, (32, 64), _tokens, blocks=False)
    src = traced.source
    assert "cap(" in src and "hardtanh(" in src and "rotary embedding" in src
    ours = derive(traced.program, "adam").abc
    theirs = derive(parse_file(ROOT / "examples" / "moe.tp"), "adam").abc
    for e in range(4):
        for part in ("part0", "part1"):  # the gate's rows and the up's, every other one
            name = f"model_layers_0_mlp_experts_gate_up_proj_{part}_e{e}"
            assert _exponents(ours, name) == _exponents(theirs, "A1")
            bias = traced.params[f"model_layers_0_mlp_experts_gate_up_proj_bias_{part}_e{e}"]
            # row 0 (the gate) or 1 (the up) of every pair, of expert e's row of the bias
            assert (bias.expert, bias.rows, bias.group_rows) == (
                e, (Fraction(int(part[-1]), 2), Fraction(int(part[-1]) + 1, 2)), 2)
    mup = MuP(traced, "adam")
    torch.manual_seed(1)
    model = build(32)
    torch.manual_seed(1)
    plain = build(32)
    mup.apply(model)  # at the base width: bit-identical params and logits
    pairs = zip(model.parameters(), plain.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    x = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x).logits, plain(x).logits)
    assert not mup.uncovered(model)


@pytest.mark.parametrize("p, sign", [(1, 1.0), (2, 1.0), (1, -1.0)])
def test_gates_divided_by_their_l1_norm_are_route_norm_other_norms_refused(p, sign):
    # oracle: the emitted program computes the model (top / |top|_1 is top / sum(top) for
    # the positive softmax gates); an L2 norm, or the L1 norm of negated gates (whose quotient
    # is the normalised gates negated), is refused at its line
    from conftest import traced_computes_the_model

    def build(n):
        model = MoELM(n, form="norm")
        model.moe.p, model.moe.sign = p, sign
        return model

    if (p, sign) != (1, 1.0):
        with pytest.raises(TraceError, match="router's selection"):
            from_torch(build, (32, 64), _tokens, blocks=False)
        return
    traced = from_torch(build, (32, 64), _tokens, blocks=False)
    assert "route_norm(v_softmax, 2, " in traced.source
    ids = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    traced_computes_the_model(traced, build, lambda model: (ids,))  # tokens routed apart


class TopOneLM(MoELM):
    """MoELM whose MoE takes one expert per token, its gate divided by the gates' sum (DBRX's and
    HunYuan-MoE's default configs), or kept as its softmax probability (Switch Transformer's)."""

    def __init__(self, n, form="batched"):
        super().__init__(n, form="batched")
        self.moe = MoE(n, k=1, form=form)


def test_one_expert_per_token_with_its_gate_normalised_to_1_is_refused():
    # that gate is 1 for every token: the router gets no gradient but rounding noise (DBRX's
    # zoo row passed or failed by the rounding), where a route derives its gates trained
    with pytest.raises(TraceError, match=r"one expert per token whose gate is divided by the sum "
                       r"of the gates taken: that gate is 1 for every token") as err:
        from_torch(TopOneLM, (32, 64), _tokens)
    assert err.value.span is not None
