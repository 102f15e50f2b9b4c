"""Experts that norm each route's result with their own gain before the routes' sum (Ergo's
experts, fromtorch/ops_routerows.py): traced into a route whose experts each end in an RMSNorm
and a gain of their own, and the near misses that are not that form, refused."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sympy import Rational  # noqa: E402

from tensorprog import derive  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

VOCAB, SEQ, E, K = 32, 8, 4, 2
IDS = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


def _experts_class():
    from transformers.integrations.moe import use_experts_implementation

    @use_experts_implementation(has_gate=False, is_transposed=True)
    class Projections(torch.nn.Module):
        """Each expert's relu² MLP, stacked [E, in, out] (transformers' experts dispatch)."""

        def __init__(self, config):
            super().__init__()
            n = config.hidden_size
            self.num_experts = E
            self.up_proj = torch.nn.Parameter(torch.randn(E, n, 2 * n) * n**-0.5)
            self.down_proj = torch.nn.Parameter(torch.randn(E, 2 * n, n) * (2 * n) ** -0.5)
            self.act_fn = transformers.activations.ACT2FN["relu2"]

        def forward(self, x, ids, w):  # (the eager loop: only the oracle's model runs it)
            out = torch.zeros_like(x)
            for e in range(E):
                hit = ids.squeeze(-1) == e
                out[hit] = self.act_fn(x[hit] @ self.up_proj[e]) @ self.down_proj[e]
            return out

    return Projections


class Experts(torch.nn.Module):
    """Ergo's experts: each route its own row, normed with its expert's gain, then weighted and
    summed; ``miss``: one gain shared by all routes (the same route, each expert times it), or
    a near miss (the gains indexed by the rows' order, the routes' weights not applied), or
    the gains read through the ids' column, a form left to the stock dispatch (refused)."""

    def __init__(self, config, miss: str = ""):
        super().__init__()
        self.proj = _experts_class()(config)
        self.gain = torch.nn.Parameter(torch.rand(E, config.hidden_size) + 0.5)
        self.miss = miss

    def forward(self, x, ids, w):
        x = x.repeat_interleave(ids.size(1), dim=0)
        flat = ids.reshape(-1, 1)
        y = self.proj(x, flat, x.new_ones(flat.shape))
        y = torch.nn.functional.rms_norm(y, (y.shape[-1],), eps=1e-6)
        if self.miss == "shared":
            y = y * self.gain[0]
        elif self.miss == "column":  # the same gains, read through the ids' column: not followed
            y = y * self.gain[flat].squeeze(1)
        elif self.miss == "order":
            y = y * self.gain[torch.arange(y.shape[0]) % E]
        else:
            y = y * self.gain[flat.flatten().clamp_max(E - 1)]
        y = y.view(*ids.shape, y.shape[-1])
        if self.miss == "unweighted":
            return y.sum(1)
        return (y * w.unsqueeze(-1)).sum(1)


class LM(torch.nn.Module):
    """Embedding, a residual top-2 of 4 experts' layer (softmax router, gates normalised) and a
    readout; ``impl``: the experts' dispatch (the trace's grouped_mm; the oracle's eager)."""

    def __init__(self, n, impl="grouped_mm", miss=""):
        super().__init__()
        config = transformers.PretrainedConfig(hidden_size=n)
        config._experts_implementation = impl
        self.embed = torch.nn.Embedding(VOCAB, n)
        self.router = torch.nn.Linear(n, E, bias=False)
        self.experts = Experts(config, miss)
        self.head = torch.nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        x = h.view(-1, h.shape[-1])
        w, ids = torch.topk(torch.softmax(self.router(x), dim=-1), K, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        return self.head(h + self.experts(x, ids, w).view(h.shape))


def _ids(model):
    return (IDS,)


def test_each_route_normed_with_its_experts_gain_traces_into_a_route():
    # oracle: the program computes the model's own forward (its experts' eager loop) in float64;
    # each expert's gain row is a param of its own, derived as a gain (init 1, Adam LR 1, as a
    # bias), the experts' matrices as examples/moe.tp's, the router as a readout
    traced = from_torch(LM, (32, 64), _ids, blocks=False)
    src = traced.source
    assert "= route_norm(v_softmax, 2, mul_1_e0, mul_1_e1, mul_1_e2, mul_1_e3)" in src
    assert "mul_1_e1 = experts_gain_e1 * rms_norm_e1" in src
    assert "param experts_gain_e3 : [n]" in src
    traced_computes_the_model(traced, lambda n: LM(n, "eager"), _ids)
    apply_is_bit_identical_at_base(traced, LM, _ids)  # the gain's rows: the model's own draw
    abc = derive(traced.program, "adam").abc
    for e in range(E):  # Adam, all multipliers 1: a gain (0, 0, 0), a hidden matrix (0, ½, 1)
        assert (
            abc[f"experts_gain_e{e}"].a,
            abc[f"experts_gain_e{e}"].b,
            abc[f"experts_gain_e{e}"].c,
        ) == (0, 0, 0)
        for m in ("up_proj", "down_proj"):
            got = abc[f"experts_proj_{m}_e{e}"]
            assert (got.a, got.b, got.c) == (0, Rational(1, 2), 1)
    got = abc["router_weight"]
    assert (got.a, got.b, got.c) == (0, 1, 1)  # a readout of E gates


@pytest.mark.slow
def test_one_gain_shared_by_every_route_is_each_experts_product_with_it():
    traced = from_torch(lambda n: LM(n, miss="shared"), (32, 64), _ids, blocks=False)
    assert "mul_1_e2 = rms_norm_e2 * select" in traced.source  # select: gain row 0
    traced_computes_the_model(traced, lambda n: LM(n, "eager", miss="shared"), _ids)


@pytest.mark.parametrize(
    "miss, match",
    [
        ("order", r"an embedding lookup of ids that are neither"),
        ("column", r"the op index on the ids of route rows"),
        ("unweighted", r"router's selection"),
    ],
)
def test_a_gain_not_of_the_routes_expert_or_routes_left_unweighted_are_refused(miss, match):
    with pytest.raises(TraceError, match=r"test_moe_route_rows.py:\d+:\d+: error: .*" + match):
        from_torch(lambda n: LM(n, miss=miss), (32, 64), _ids, blocks=False)


@pytest.mark.slow
def test_transformers_ergo_moe_traces_into_the_route_of_normed_experts():
    # transformers' own Ergo layer (sigmoid router selecting on its gates plus a bias, routed
    # scaling factor, shared expert): the program computes it to 1e-5, the model's router and
    # norms computing in float32 (with those casts removed, measured 1e-15); gains drawn apart
    from transformers.models.ergo.modeling_ergo import ErgoMoE

    class ErgoLM(torch.nn.Module):
        def __init__(self, n, impl="grouped_mm"):
            super().__init__()
            config = transformers.ErgoConfig(
                hidden_size=n,
                moe_intermediate_size=2 * n,
                shared_intermediate_size=n,
                num_experts=E,
                num_experts_per_tok=K,
                vocab_size=VOCAB,
                rms_norm_eps=1e-6,
            )
            config._experts_implementation = impl
            self.embed = torch.nn.Embedding(VOCAB, n)
            self.moe = ErgoMoE(config)
            for w in (self.moe.experts.up_proj, self.moe.experts.down_proj):
                torch.nn.init.normal_(w, std=n**-0.5)
            with torch.no_grad():
                self.moe.experts.post_expert_norm.weight.uniform_(0.5, 1.5)
            self.head = torch.nn.Linear(n, VOCAB, bias=False)

        def forward(self, idx):
            h = self.embed(idx)
            return self.head(h + self.moe(h))

    traced = from_torch(ErgoLM, (32, 64), _ids, blocks=False)
    assert "param moe_experts_post_expert_norm_weight_e3 : [n]" in traced.source
    assert "= route_norm(v_sigmoid, 2, mul_2_e0, mul_2_e1, mul_2_e2, mul_2_e3)" in traced.source
    traced_computes_the_model(traced, lambda n: ErgoLM(n, "eager"), _ids, tol=1e-5)


class WrittenOut(torch.nn.Module):
    """transformers' grouped_mm dispatch of route rows written out, with a near miss: ``pairs``,
    its last view pairs the route rows, (S/2, 1, 2n), so that the norm after it is over two
    routes' rows at once; ``inverse``, the sort undone by the order of another router's sort
    (each was traced as the stock form, a program that computes something else)."""

    def __init__(self, n, miss):
        super().__init__()
        self.up_proj = torch.nn.Parameter(torch.randn(E, n, 2 * n) * n**-0.5)
        self.down_proj = torch.nn.Parameter(torch.randn(E, 2 * n, n) * (2 * n) ** -0.5)
        self.gain = torch.nn.Parameter(torch.rand(E, n) + 0.5)
        self.other = torch.nn.Linear(n, E, bias=False)
        self.miss = miss

    def forward(self, x, ids, w):
        from transformers.integrations.moe import _grouped_linear

        h, x = x, x.repeat_interleave(ids.size(1), dim=0)
        flat = ids.reshape(-1, 1)
        ones = x.new_ones(flat.shape).reshape(-1)
        sorted_ids, perm = torch.sort(flat.reshape(-1))
        xs, ones = x[perm // 1], ones[perm]
        counts = torch.histc(sorted_ids.float(), bins=E, min=0, max=E - 1)
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
        y = torch.relu(_grouped_linear(xs, self.up_proj, offsets, is_transposed=True))
        y = _grouped_linear(y, self.down_proj, offsets, is_transposed=True) * ones.unsqueeze(-1)
        if self.miss == "inverse":
            _, other = torch.topk(self.other(h), ids.size(1), dim=-1)
            _, perm = torch.sort(other.reshape(-1))
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.size(0), device=x.device)
        rows = (x.size(0) // 2, 1, 2 * x.size(-1)) if self.miss == "pairs" else (x.size(0), 1, -1)
        y = y[inverse].view(*rows).sum(1)
        y = torch.nn.functional.rms_norm(y, (y.shape[-1],), eps=1e-6)
        return (y.view(*ids.shape, -1) * w.unsqueeze(-1)).sum(1)


@pytest.mark.parametrize(
    "miss, match",
    [("pairs", "the op view on a mixture"), ("inverse", "the op index on the experts' values")],
)
def test_route_rows_paired_or_unsorted_by_another_router_are_refused(miss, match):
    def build(n):
        model = LM(n)
        model.experts = WrittenOut(n, miss)
        return model

    with pytest.raises(
        TraceError, match=r"test_moe_route_rows.py:\d+:\d+: error: cannot trace " + match
    ):
        from_torch(build, (32, 64), _ids, blocks=False)
