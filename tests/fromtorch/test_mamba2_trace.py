"""Transformers' Mamba-2 scan (``mamba2_chunk_scan``, reached from Mamba2Mixer's
``mamba2_scan_forward``) traces as the language's ``ssd`` read by ``mix``: dt = softplus(dt +
dt_bias), cb = dot(C, B, N) per group, p = ssd(cb, dt, -exp(A_log), P), y = mix(p, x, P) +
spread(D, P) * x, then the gated RMSNorm over groups and out_proj. Oracle: the traced program
computes the model (the scan computes in float32: compared at 1e-5 of the output; the norms'
eps 1e-6, the emitted rmsnorm's, as the values at init are small enough for it to show). A cache's
state, a dt clamped above (time_step_limit (lo, hi), hi finite) and the decode step are refused
at their line; a dt clamped from below, (lo, inf), is lo * atleast(dt / lo)."""

from __future__ import annotations

import math

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
m2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import ssd_kernel  # noqa: E402


def mamba2(limit=(0.0, math.inf), heads_per_group=2):
    def build(n):
        heads = n // 8  # heads of P = 16 (expand 2), a group of B and C per 2 heads
        cfg = m2.Mamba2Config(hidden_size=n, num_hidden_layers=1, num_heads=heads, head_dim=16,
                              n_groups=heads // heads_per_group, state_size=8, expand=2,
                              vocab_size=13, use_cache=False, chunk_size=4,
                              time_step_limit=limit, layer_norm_epsilon=1e-6)
        model = m2.Mamba2ForCausalLM(cfg)
        with torch.no_grad():  # a skip of its own per head (D inits at 1)
            model.backbone.layers[0].mixer.D.uniform_(-1, 1)
        return model
    return build


def ids(model=None):
    return (torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(mamba2(), (64, 128), ids)


def test_the_scan_traces_as_ssd_and_computes_the_model(traced):
    src = traced.source
    assert "ssd_scan_p = ssd(ssd_scan_cb, v_softplus, -(exp(backbone_layers_0_mixer_A_log))" \
        in src, src
    assert "spread(backbone_layers_0_mixer_D, f16) * " in src
    traced_computes_the_model(traced, mamba2(), ids, tol=1e-5)


def test_apply_keeps_the_base_width_law_of_rates_set_by_hand(traced):
    """Mamba2Mixer sets A = 1..H over its H heads (A_log = log A, the same numbers at every
    seed): a law that changes with the width, whose largest rate grows with the heads. Kept,
    most heads' decay exp(-dt·A) would forget within a token as the width grows, and A's
    updates reach nothing there. apply gives A_log the base width's law instead, its 8 rates
    each over 4 of the 32 heads at width 256; dt_bias, a draw of one law at every width, stays
    the model's own, as A_log at the base width itself."""
    torch.manual_seed(0)
    model = mamba2()(256)
    mixer = model.backbone.layers[0].mixer
    dt = mixer.dt_bias.detach().clone()
    report = str(tp.MuP(traced, "adam").apply(model))
    assert torch.equal(mixer.A_log.detach(), torch.log(torch.arange(1, 9.0)).repeat_interleave(4))
    assert torch.equal(mixer.dt_bias.detach(), dt)
    assert "init backbone.layers.0.mixer.A_log: the base width's 8 entries" in report, report
    base = mamba2()(64)
    before = base.backbone.layers[0].mixer.A_log.detach().clone()
    tp.MuP(traced, "adam").apply(base)
    assert torch.equal(base.backbone.layers[0].mixer.A_log.detach(), before)


def test_numbers_set_by_hand_that_repeat_the_base_keep_the_model_own():
    from tensorprog.fromtorch.hand_set import base_law

    same = torch.tensor([1.0, 2.0] * 4)  # the base's 2 entries repeated: one law
    assert base_law([1.0, 2.0], same) is None and base_law([1.0, 2.0], same[:2]) is None
    grown = torch.arange(1, 7.0)  # 1..6 where the base had 1, 2: spread as 1, 1, 1, 2, 2, 2
    assert base_law([1.0, 2.0], grown).tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    # a function of the entry's place i/n (RWKV's decays, over its channels): a finer sample
    # of one law, kept; 1/(i+1) reaches below the base's least entry by more than a step
    place = lambda n: (-5 + 8 * (torch.arange(n) / (n - 1)) ** 1.5).tolist()  # noqa: E731
    assert base_law(place(8), torch.tensor(place(64))) is None
    assert base_law((1 / torch.arange(1, 9.0)).tolist(), 1 / torch.arange(1, 33.0)) is not None


def test_the_reference_is_the_chunked_scan():
    """The custom op's eager value (the unrolled mixing) plus the skip is transformers' chunked
    scan, over several chunks and groups serving two heads each."""
    g = torch.Generator().manual_seed(1)
    x, dt = torch.randn(2, 7, 4, 3, generator=g), torch.rand(2, 7, 4, generator=g)
    b, c = torch.randn(2, 7, 2, 5, generator=g), torch.randn(2, 7, 2, 5, generator=g)
    a, d, bias = -torch.rand(4, generator=g), torch.randn(4, generator=g), torch.randn(4)
    want = m2.mamba2_chunk_scan(x, dt, a, b, c, chunk_size=3, D=d, dt_bias=bias,
                                dt_softplus=True)
    got = ssd_kernel._chunked(x, dt, a, b, c, chunk_size=3, D=d, dt_bias=bias,
                              dt_softplus=True)
    assert (got - want).abs().max().item() < 1e-5


def test_a_step_clamped_from_below_traces_as_atleast_and_computes_the_model():
    """time_step_limit (lo, inf) (Zamba2's (0.001, inf)): dt = max(softplus(dt + dt_bias), lo)
    is lo * atleast(dt / lo). At lo = 0.05 the clamp bites (the model's output moves by far
    more than the tolerance without it), so a program that dropped it would fail the oracle."""
    clamped = mamba2(limit=(0.05, math.inf))
    traced = tp.from_torch(clamped, (64, 128), ids)
    assert "* atleast(v_softplus / " in traced.source, traced.source
    traced_computes_the_model(traced, clamped, ids, tol=1e-5)
    torch.manual_seed(3)
    free = mamba2()(64).double()
    torch.manual_seed(3)
    held = clamped(64).double()
    assert (free(*ids()).logits - held(*ids()).logits).abs().max().item() > 1e-3


def test_a_step_clamped_above_is_refused_at_its_line():
    with pytest.raises(TraceError, match="bounded above") as err:
        tp.from_torch(mamba2(limit=(0.001, 0.1)), (64, 128), ids)
    assert "modeling_mamba2.py" in str(err.value)


def test_a_state_and_the_decode_step_are_refused():
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(TraceError, match="initial state"):
        ssd_kernel._chunked(x, x[..., 0], x[0, 0, :, 0], x, x, initial_states=x)
    with pytest.raises(TraceError, match="final state"):
        ssd_kernel._chunked(x, x[..., 0], x[0, 0, :, 0], x, x, return_final_states=True)
    with pytest.raises(TraceError, match="token-by-token step"):
        ssd_kernel._step()
