"""An experts layer that loops over the experts its batch hits (transformers' DBRX), traced
through the loop-free stand-in of fromtorch/experts_loop.py: its 2-D params [E·ffn, n] read
as E experts' row blocks, its k gates divided by their L1 norm, and what is refused."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402
from tensorprog.fromtorch.experts_loop import expert_loops  # noqa: E402

VOCAB, SEQ = 32, 8
IDS = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


class LM(torch.nn.Module):
    """Embedding, a residual DBRX FFN (transformers' own router and looping experts), readout;
    ``view``: the experts' params also read through another view (refused)."""

    def __init__(self, n, k=2, experts=4, p=1.0, view=False):
        super().__init__()
        from transformers.models.dbrx.modeling_dbrx import DbrxFFN

        cfg = transformers.DbrxConfig(d_model=n, ffn_config={
            "hidden_size": n, "ffn_hidden_size": 2 * n, "moe_num_experts": experts,
            "moe_top_k": k, "moe_normalize_expert_weights": p})
        self.embed = torch.nn.Embedding(VOCAB, n)
        self.ffn = DbrxFFN(cfg)
        mlp = self.ffn.experts.mlp
        for w in (mlp.w1, mlp.v1, mlp.w2):  # (DBRX leaves them torch.empty)
            torch.nn.init.normal_(w, std=n ** -0.5)
        self.head = torch.nn.Linear(n, VOCAB, bias=False)
        self.view = view

    def forward(self, idx):
        h = self.embed(idx)
        out = h + self.ffn(h)
        if self.view:  # w1 viewed per expert, indexed by other ids than the router's
            w = self.ffn.experts.mlp.w1.view(4, -1, out.shape[-1])[torch.tensor([1, 2])]
            out = out + w.sum((0, 1))
        return self.head(out)


def _ids(model):
    return (IDS,)  # tokens routed apart


@pytest.mark.parametrize("k, p", [(2, 1.0), (1, None)])
def test_dbrx_experts_loop_traces_into_route_each_experts_rows_a_param(k, p):
    # oracle: the emitted program computes the model's own (looping) forward in float64;
    # each expert's matrices are its rows of w1, v1 (linear weights) and w2 (its input columns)
    def build(n):
        return LM(n, k=k, p=p)

    traced = from_torch(build, (32, 64), _ids, blocks=False)
    fn = "route_norm" if p else "route"
    assert f"= {fn}(v_softmax, {k}, bmm_2_e0, bmm_2_e1, bmm_2_e2, bmm_2_e3)" in traced.source
    assert "param ffn_experts_mlp_w2_cols3 : [n, n_x2]" in traced.source
    w1 = traced.params["ffn_experts_mlp_w1_part2"]
    assert (w1.target, tuple(w1.rows)) == ("ffn.experts.mlp.w1", (0.5, 0.75))
    traced_computes_the_model(traced, build, _ids)
    if k == 1:  # apply maps each block back to its rows (columns) of the 2-D params
        mup = apply_is_bit_identical_at_base(traced, build, _ids)
        assert not mup.uncovered(build(32))


def test_the_stand_in_computes_the_loop_and_is_undone_after():
    from transformers.models.dbrx.modeling_dbrx import DbrxExperts

    model = LM(16, k=3).double()
    x = model.embed(IDS).double()
    original = DbrxExperts.forward
    want = model.ffn(x)
    with expert_loops():
        assert DbrxExperts.forward is not original
        got = model.ffn(x)
    assert DbrxExperts.forward is original
    assert (got - want).abs().max().item() <= 1e-12 * want.abs().max().item()


@pytest.mark.parametrize("what, match", [
    ("l2", "op linalg_vector_norm on a mixture-of-experts router's selection"),
    ("view", "router's selection"),
])
def test_other_norms_and_other_reads_of_the_viewed_params_are_refused(what, match):
    def build(n):
        return LM(n, p=2.0) if what == "l2" else LM(n, view=True)

    with pytest.raises(TraceError, match=match):
        from_torch(build, (32, 64), _ids, blocks=False)


@pytest.mark.parametrize("how", ["hook", "pre_hook", "instance", "subclass"])
def test_a_hooked_or_replaced_expert_mlp_is_refused_at_its_line(how):
    # the loop calls self.mlp(...), which runs its hooks and a forward of the user's: the
    # stand-in, which would skip them, refuses (at the hook's or forward's line) rather than
    # trace the MLP without them
    from transformers.models.dbrx.modeling_dbrx import DbrxExpertGLU

    class Doubled(DbrxExpertGLU):
        def forward(self, *args):
            return 2 * super().forward(*args)

    def build(n):
        model = LM(n)
        mlp = model.ffn.experts.mlp
        if how == "hook":
            mlp.register_forward_hook(lambda m, args, out: 2 * out)
        elif how == "pre_hook":
            mlp.register_forward_pre_hook(lambda m, args: (2 * args[0], *args[1:]))
        elif how == "instance":
            mlp.forward = lambda *args: 3 * type(mlp).forward(mlp, *args)
        else:
            mlp.__class__ = Doubled
        return model

    with pytest.raises(TraceError, match=r"test_moe_loop.py:\d+:\d+: error: cannot trace DBRX's "
                       r"experts.*(a forward hook|a forward of its own)"):
        from_torch(build, (32, 64), _ids, blocks=False)
