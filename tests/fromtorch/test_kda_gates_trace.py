"""Kimi Delta Attention's gates (Kimi Linear's and Bailing hybrid's forget gate) trace exactly:
a 1-D param viewed (1, 1, n) or (1, 1, H, dh) and added is the program's ``x + b`` (entry i on
flattened feature i: a view keeps the entries' order); exp of a per-head param laid out (1, 1,
H, 1) times a vector viewed (..., H, dh) is ``spread(exp(A), dh) * x``; softplus written out
with a where at its threshold, ``where(g > 20, g, log(1 + exp(g)))``, is softplus. Oracle: the
traced program computes the model; the params derive as µP's hidden weight (f), biases (dt,
A_log: one number per feature or per head, fed the constant 1). The kernel that reads the
gate, a decay per key channel, traces as the delta rule of decayed dots (``ddot``)."""

from __future__ import annotations

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model
from sympy import Rational

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402

kda = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")

DH = 16


class Gate(nn.Module):
    """An embedding, a forget gate of n/16 heads of 16 (``kimi``: (f(e) + dt.view(1, 1, -1))
    .view(B, T, H, dh), decay exp(A_log) of shape (1, 1, H, 1), softplus written out;
    ``bailing``: f(e).view(B, T, H, dh) + dt.view(1, 1, H, dh), decay exp(A_log).view(1, 1, H,
    1) inside a sigmoid), added back to the stream, and a readout. ``threshold``: the written
    softplus's switch, ``piece`` its branch below it (log(1 + exp(g)) unless given);
    ``permuted``: Bailing's dt laid out (dh, H) and transposed."""

    def __init__(self, n, form="kimi", threshold=20.0, permuted=False, piece=None):
        super().__init__()
        self.h, self.form, self.threshold, self.permuted = n // DH, form, threshold, permuted
        self.piece = piece or (lambda g: torch.log(1.0 + torch.exp(g)))
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.f = nn.Linear(n, n, bias=False)
        self.dt = nn.Parameter(torch.empty(n).uniform_(-1, 1))
        shape = (1, 1, self.h, 1) if form == "kimi" else (self.h,)
        self.A_log = nn.Parameter(torch.empty(shape).uniform_(1, 16).log())

    def forward(self, ids):
        e = self.emb(ids)
        b, t = ids.shape
        if self.form == "kimi":
            g = (self.f(e).float() + self.dt.float().view(1, 1, -1)).view(b, t, -1, DH)
            sp = torch.where(g > self.threshold, g, self.piece(g))
            g = -torch.exp(self.A_log.float()) * sp
        else:
            dt = (
                self.dt.view(1, 1, DH, self.h).transpose(-1, -2)
                if self.permuted
                else self.dt.view(1, 1, self.h, DH)
            )
            gi = self.f(e).float().view(b, t, self.h, DH) + dt
            decay = self.A_log.exp().view(1, 1, self.h, 1)
            g = -5.0 * torch.sigmoid(decay * gi)
        return self.ro(e + g.reshape(b, t, -1))


def ids(model=None):
    return (torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("form", ["kimi", "bailing"])
def test_the_gate_traces_and_computes_the_model(form):
    build = lambda n: Gate(n, form)  # noqa: E731
    traced = tp.from_torch(build, (32, 64), ids)
    src = traced.source
    assert "exp(A_log)" in src and ", f16)) * " in src, src
    assert ("softplus(" in src) == (form == "kimi"), src
    traced_computes_the_model(traced, build, ids, tol=1e-6)  # the model's .float(): float32
    abc = abc_by_target(traced, "adam")
    # µP under Adam (TP5 Table 3): the hidden weight's LR 1/n, the biases' (dt one per feature,
    # A_log one per head) and the embedding's Θ(1), all with the init an input weight has
    assert abc["f.weight"] == (0, Rational(1, 2), 1), abc
    assert abc["dt"] == abc["A_log"] == abc["emb.weight"] == (0, 0, 0), abc
    # under SGD the biases' LR is n: gradients of 1/n per coordinate, A_log's summed over its
    # head's 16 (a finite number), so of 1/n too
    abc = abc_by_target(traced, "sgd")
    assert abc["dt"] == abc["A_log"] == (0, 0, -1), abc
    apply_is_bit_identical_at_base(traced, build, ids)  # A_log (1, 1, H, 1) read in its layout


def test_a_written_softplus_switching_early_is_refused_at_its_line():
    """where(g > 5, g, log(1 + exp(g))) differs from softplus by up to log(1 + e^-5) = 7e-3
    between 5 and 20: no function of the language, refused as any other comparison."""
    with pytest.raises(TraceError, match=r"a comparison of a traced value \(x > 5.0\)") as err:
        tp.from_torch(lambda n: Gate(n, threshold=5.0), (32, 64), ids)
    assert "torch.where(g > self.threshold" in str(err.value)


@pytest.mark.parametrize(
    "threshold, piece",
    [  # softplus on [-30, 20] but g + 1 below -31: a kink no grid over [-30, c] sees
        (20.0, lambda g: torch.log(1.0 + torch.exp(g)) + torch.relu(-g - 31.0)),
        # softplus in float64, but exp(g) is inf in float32 from 88.7 on: the model's g of
        # (88.7, 100] goes to inf, where softplus gives g
        (100.0, None),
    ],
    ids=["a-kink-below-the-grid", "inf-in-float32"],
)
def test_a_written_softplus_that_is_not_one_everywhere_is_refused(threshold, piece):
    with pytest.raises(TraceError, match=r"a comparison of a traced value \(x > ") as err:
        tp.from_torch(lambda n: Gate(n, threshold=threshold, piece=piece), (32, 64), ids)
    assert "torch.where(g > self.threshold" in str(err.value)


def test_a_bias_whose_entries_a_permute_moved_is_refused_at_its_line():
    """dt.view(1, 1, dh, H).transpose(-1, -2): entry i no longer meets flattened feature i, so
    it is no ``x + dt`` (nor any form of the language): refused where it is added."""
    with pytest.raises(TraceError, match=r"the op add on a reshaped param") as err:
        tp.from_torch(lambda n: Gate(n, "bailing", permuted=True), (32, 64), ids)
    assert "gi = self.f(e).float().view(b, t, self.h, DH) + dt" in str(err.value)


class KDA(nn.Module):
    """Kimi Linear's kernel call on a gate of one decay per key channel."""

    def __init__(self, n):
        super().__init__()
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.qkv, self.gb = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n // DH + n)

    def forward(self, ids):
        e = self.emb(ids)
        b, t = ids.shape
        q, k, v = (x.view(b, t, -1, DH) for x in self.qkv(e).chunk(3, -1))
        beta, g = self.gb(e).split([q.shape[2], e.shape[-1]], -1)
        g = -F.softplus(g).view(b, t, -1, DH)
        o, _ = kda.chunk_kimi_delta_attention(
            q, k, v, g=g, beta=beta.sigmoid(), use_qk_l2norm_in_kernel=True
        )
        return self.ro(e + o.reshape(b, t, -1))


@pytest.mark.slow  # a trace of its own; tests/fromtorch/test_kda_trace.py has the default one
def test_a_decay_per_key_channel_traces_as_decayed_dots():
    """The kernel on this gate traces as delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, g,
    dk), b) (ir/ddot.py) and computes the model (its kernel in float32: 1e-5)."""
    traced = tp.from_torch(KDA, (32, 64), ids)
    assert "ddot(" in traced.source and "delta(" in traced.source, traced.source
    traced_computes_the_model(traced, KDA, ids, tol=1e-5)


def kimi_or_bailing(family):
    """transformers' Kimi Linear or Bailing hybrid of two KDA layers, n/16 heads of 16."""
    import transformers as hf

    name = {"kimi": "KimiLinear", "bailing": "BailingHybrid"}[family]
    cfg_cls, model_cls = getattr(hf, f"{name}Config"), getattr(hf, f"{name}ForCausalLM")

    def build(n):
        torch.manual_seed(0)
        return model_cls(
            cfg_cls(
                vocab_size=13,
                hidden_size=n,
                intermediate_size=2 * n,
                num_hidden_layers=2,
                num_attention_heads=n // DH,
                num_key_value_heads=n // DH,
                linear_num_heads=n // DH,
                linear_head_dim=DH,
                layer_types=["linear_attention"] * 2,
                use_cache=False,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                # the config's own init (std 0.02): keys short enough that the kernel's eps,
                # 1e-6 on their sum of squares, shows; traced exactly (ops_delta._unit)
                # Kimi Linear's default 256 experts of 1024 would not fit a small test
                **(
                    {
                        "num_local_experts": 4,
                        "num_experts_per_tok": 2,
                        "moe_intermediate_size": 2 * n,
                    }
                    if family == "kimi"
                    else {}
                ),
            )
        )

    return build


@pytest.mark.slow  # two whole models' exports
@pytest.mark.parametrize("family", ["kimi", "bailing"])
def test_the_models_trace_through_the_kernel(family):
    """Everything traces (the dt_bias views, exp(A_log) per head, the written softplus, Kimi's
    low-rank f_a/f_b, the kernel as decayed dots). Bailing's layers then derive, and the traced
    program computes the model; Kimi Linear's low-rank gates (n -> linear_head_dim -> n, a
    finite dim inside the network at a fixed head dim) are refused by derive, as any finite
    bottleneck is."""
    build = kimi_or_bailing(family)
    traced = tp.from_torch(build, (64, 128), ids)
    assert "ddot(" in traced.source
    if family == "bailing":  # the oracle reads the params as MuP lays them out: derived
        traced_computes_the_model(traced, build, ids, tol=1e-4)  # the kernel's float32
        return
    with pytest.raises(tp.TensorProgError, match=r"narrows the width to the finite dim") as err:
        tp.MuP(traced, "adam")
    assert "f_b_proj(self.f_a_proj(" in str(err.value)
