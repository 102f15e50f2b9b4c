"""Attention over depth (Inkling 2's block attention residuals): a stack of the earlier blocks'
outputs per token, grown from empty (``new_zeros(B, T, 0, n)``, then ``cat`` at each block's
boundary), read by a softmax over it with a learnt query, traced as one vector per block
(ops_depthres.py). Oracles: the emitted module computes the model (float64), and the exponents
derived, the query a layer of fan-in n and finite fan-out (a readout's)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402


class Read(nn.Module):
    """Inkling2BlockAttentionResidual: Q learnt queries against the RMS-normed stack of the
    block outputs and the current partial block, a softmax over the stack, times the stack."""

    def __init__(self, n, q=1, how=""):
        super().__init__()
        self.how = how
        shape = (n,) if q == 1 else (q * n,) if how == "flat" else (q, n)
        self.query = nn.Parameter(torch.randn(*shape) / n)

    def forward(self, block_states, partial):
        # (Inkling 2 casts the stack and the query to float32; the oracle runs in float64)
        x = torch.cat([block_states, partial.unsqueeze(-2)], dim=-2).to(partial.dtype)
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)
        n = x.shape[-1]
        q = self.query.to(x.dtype).view(-1, n).expand(*x.shape[:-2], -1, -1)
        logits = torch.matmul(q, x.transpose(2, 3)) * n**-0.5
        if self.how == "sigmoid":  # per-vector gates, not a softmax over the stack
            w = torch.sigmoid(logits)
        else:
            w = torch.softmax(logits, dim=-1)
        return torch.matmul(w, x).transpose(1, 2).transpose(1, 2).unbind(-2)


class Layer(nn.Module):
    def __init__(self, n, first, how=""):
        super().__init__()
        self.attention_input = None if first else Read(n, 3, how)
        self.mlp_input = Read(n, 1, how)
        self.a = nn.Linear(n, n, bias=False)
        self.b = nn.Linear(n, n, bias=False)
        self.c = nn.Linear(n, n, bias=False)
        self.up = nn.Linear(n, 2 * n, bias=False)
        self.down = nn.Linear(2 * n, n, bias=False)

    def forward(self, h, block_states):
        block_residual = h
        if self.attention_input is None:
            q = k = v = h
        else:
            q, k, v = self.attention_input(block_states, h)
        h = self.a(torch.relu(self.b(q) + self.c(k) * v))
        block_states = torch.cat([block_states, block_residual.unsqueeze(-2)], dim=-2)
        h = self.mlp_input(block_states, h)[0]
        return self.down(torch.relu(self.up(h)))


class DepthNet(nn.Module):
    """2 layers, each a block boundary; the output reads the stack once more."""

    def __init__(self, n, how=""):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.layers = nn.ModuleList(Layer(n, i == 0, how) for i in range(2))
        self.final = Read(n, 1, how)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        block_states = h.new_zeros(*h.shape[:-1], 0, h.shape[-1])
        for layer in self.layers:
            new = layer(h, block_states)
            block_states = torch.cat([block_states, h.unsqueeze(-2)], dim=-2)
            h = new
        return self.out(self.final(block_states, h)[0])


def inputs(model=None):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(DepthNet, (16, 32), inputs)


def test_the_block_states_trace_one_vector_per_block_and_compute_the_model(traced):
    body = traced.source
    # every read normalises each vector of the stack; the 3 queries of a layer's attention
    # input each take a softmax over their picks of the stack's logits
    assert body.count("softmax(") == 1 + 3 + 1 + 1, body
    assert "spread(pick(" in body and "rmsnorm(" in body, body
    traced_computes_the_model(traced, DepthNet, inputs)


def test_the_queries_derive_as_readouts(traced):
    got = abc_by_target(traced)
    # q @ N_k: a layer of fan-in n and finite fan-out (1 or 3 logits per vector) read by a
    # softmax, a readout's exponents under Adam (init 1/fan_in², LR 1/fan_in), the model's
    # own n^-1/2 on the logits folded into them; the layers between hidden weights
    for q in ("layers.0.mlp_input.query", "layers.1.attention_input.query", "final.query"):
        assert got[q] == got["out.weight"] == (0, 1, 1), q
    assert got["layers.1.up.weight"] == got["layers.1.a.weight"] == (0, Fraction(1, 2), 1)


def test_apply_keeps_the_base_and_folds_the_models_constant_into_the_query(traced):
    # at the base width nothing moves; at 4x the query's logits carry the model's n^-1/2, so
    # the query (a readout's law on n^-1/2 q) takes (n/base)^-1/2 on its LR, the readout the
    # full (n/base)^-1, its init std likewise
    mup = apply_is_bit_identical_at_base(traced, DepthNet, inputs)
    torch.manual_seed(0)
    model = DepthNet(64)
    mup.apply(model)
    lrs = {
        n: g["lr"]
        for g in mup.param_groups(model, lr=1.0)
        for n, p in model.named_parameters()
        for q in g["params"]
        if p is q
    }
    assert lrs["final.query"] == pytest.approx(0.5) and lrs["out.weight"] == pytest.approx(0.25)
    assert lrs["layers.1.attention_input.query"] == pytest.approx(0.5)
    # (init std (n/base)^-init_exp: the query's half the readout's exponent)
    assert mup.init_exp["final_query"] == Fraction(1, 2) and mup.init_exp["out_weight"] == 1


# the read written by hand: 3 queries against a stack of 2 normalised vectors, query 1's softmax
# over its 2 logits, its weighted sum of the stack
_BY_HAND = """width n = 64
dim V = 13
dim T = 8
dim M = 2
dim one = 1
dim three = 3
input tok : tokens[T, V]
param E : [n, V]
param Q : [three, n]
param A : [n, n]
param U : [V, n]
e = E @ tok
n0 = rmsnorm(e)
n1 = rmsnorm(A @ e)
w = softmax(cat(pick(Q @ n0, one, 1), pick(Q @ n1, one, 1), M))
h = spread(pick(w, one, 0), n) * n0 + spread(pick(w, one, 1), n) * n1
output logits = U @ rmsnorm(h)
"""


def test_the_hand_written_read_derives_the_traced_querys_exponents(traced):
    import tensorprog as tp

    want = tp.derive(tp.parse(_BY_HAND), "adam").abc
    got = abc_by_target(traced)
    assert got["layers.1.attention_input.query"] == (want["Q"].a, want["Q"].b, want["Q"].c)
    assert got["layers.1.up.weight"] == (want["A"].a, want["A"].b, want["A"].c)


def test_per_vector_gates_over_the_stack_are_refused_at_their_line():
    with pytest.raises(TensorProgError, match=r"sigmoid of a read of a stack") as err:
        from_torch(lambda n: DepthNet(n, "sigmoid"), (16, 32), inputs)
    assert "test_depth_attention.py:" in str(err.value)


def test_a_flat_param_of_several_queries_is_refused_at_its_view():
    # [Q·n] viewed as Q rows computes the same, but apply reads a param's width from its own
    # last axis (Q·n there): refused, not accepted for apply to fail on
    with pytest.raises(TensorProgError, match=r"query param of shape \[48\] viewed as") as err:
        from_torch(lambda n: DepthNet(n, "flat"), (16, 32), inputs)
    assert "test_depth_attention.py:" in str(err.value)


class Joined(nn.Module):
    """A stack grown at its front and joined to itself: its vectors in the cat's order."""

    def __init__(self, n, how=""):
        super().__init__()
        self.how = how
        self.e = nn.Embedding(13, n)
        self.a = nn.Linear(n, n, bias=False)
        self.out = nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        h1 = self.a(h)
        one = h1.view(*h1.shape[:-1], 1, h1.shape[-1]) if self.how else h1.unsqueeze(-2)
        stack = h.new_zeros(*h.shape[:-1], 0, h.shape[-1])
        stack = torch.cat([one, stack, h.unsqueeze(-2)], dim=-2)  # (h1, h)
        stack = torch.cat([stack, stack], dim=-2)  # (h1, h, h1, h)
        return self.out(stack[..., 1, :] + 2 * stack[..., 2, :])


def test_a_stack_grown_at_its_front_or_joined_keeps_its_order():
    traced = from_torch(Joined, (16, 32), inputs)
    traced_computes_the_model(traced, Joined, inputs)
    with pytest.raises(TensorProgError, match=r"concatenation of a stack") as err:
        from_torch(lambda n: Joined(n, "view"), (16, 32), inputs)
    assert "test_depth_attention.py:" in str(err.value)


class GatheredBias(nn.Module):
    """Inkling's relative logits: each query token's numbers per distance, r_proj(h) @ P,
    gathered at each key's distance and added to the attention logits."""

    def __init__(self, n, extent=4):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.qkv = nn.Linear(n, 3 * n, bias=False)
        self.r = nn.Linear(n, 2 * 3, bias=False)
        self.proj = nn.Parameter(torch.randn(3, extent))
        self.out = nn.Linear(n, 13, bias=False)
        self.extent = extent

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        q, k, v = (x.view(b, t, 2, n // 2).transpose(1, 2) for x in self.qkv(h).split(n, -1))
        rel_logits = (self.r(h).view(b, t, 2, 3) @ self.proj).transpose(1, 2)
        pos = torch.arange(t, device=h.device)
        distance = (pos[:, None] - pos[None, :])[None, None]
        index = distance.clamp(0, self.extent - 1).expand(b, 2, -1, -1)
        bias = rel_logits.gather(-1, index)
        bias = bias.masked_fill((distance < 0) | (distance >= self.extent), 0.0)
        w = torch.softmax(q @ k.transpose(-1, -2) / (n // 2) + bias, dim=-1)
        return self.out((w @ v).transpose(1, 2).reshape(b, t, n))


def test_a_bias_gathered_per_query_token_at_each_distance_is_refused_as_what_it_is():
    with pytest.raises(TensorProgError, match=r"relative position bias gathered") as err:
        from_torch(GatheredBias, (16, 32), inputs)
    assert "test_depth_attention.py:" in str(err.value) and "R @ rel" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_inkling2s_own_block_attention_residual_traces_and_computes_the_model(attn):
    mi = pytest.importorskip("transformers.models.inkling2.modeling_inkling2")
    from transformers import Inkling2TextConfig

    class Net(nn.Module):
        def __init__(self, n):
            super().__init__()
            cfg = Inkling2TextConfig(hidden_size=n)
            cfg._attn_implementation = attn
            self.e = nn.Embedding(13, n)
            self.reads = nn.ModuleList(mi.Inkling2BlockAttentionResidual(cfg, q) for q in (1, 3, 1))
            for r in self.reads:  # (the model's init is zeros)
                nn.init.normal_(r.query, std=1 / n)
            self.up = nn.Linear(n, n, bias=False)
            self.out = nn.Linear(n, 13, bias=False)

        def forward(self, idx):
            h = self.e(idx)
            stack = h.new_zeros(*h.shape[:-1], 0, h.shape[-1])
            h = self.reads[0](stack, h)[0].to(h.dtype)
            stack = torch.cat([stack, h.unsqueeze(-2)], dim=-2)
            h2 = self.up(h)
            a, b, c = (x.to(h.dtype) for x in self.reads[1](stack, h2))
            stack = torch.cat([stack, self.up(a + b + c).unsqueeze(-2)], dim=-2)
            return self.out(self.reads[2](stack, h2)[0].to(h.dtype))

    traced = from_torch(Net, (16, 32), inputs)
    # (the module computes in float32 whatever its input's dtype)
    traced_computes_the_model(traced, Net, inputs, tol=1e-6)
    got = abc_by_target(traced)
    assert got["reads.1.query"] == got["reads.2.query"] == got["out.weight"] == (0, 1, 1)
    # a softmax over a stack of one vector is 1: the first read's query is read by nothing
    assert "reads.0.query" not in got


@pytest.mark.slow
def test_inkling2_loops_messages_read_one_set_of_queries_of_its_param():
    mi = pytest.importorskip("transformers.models.inkling2_loop.modeling_inkling2_loop")
    from transformers import Inkling2LoopTextConfig

    class Net(nn.Module):
        def __init__(self, n):
            super().__init__()
            cfg = Inkling2LoopTextConfig(
                hidden_size=n,
                loop_layer_index_start=6,
                loop_layer_index_end=12,
                num_hidden_layers=18,
            )
            cfg._attn_implementation = "sdpa"
            self.e = nn.Embedding(13, n)
            self.msg = mi.Inkling2LoopMessageAttentionResidual(cfg)  # query: [6, 4, n]
            nn.init.normal_(self.msg.query, std=1 / n)
            self.up = nn.Linear(n, n, bias=False)
            self.out = nn.Linear(n, 13, bias=False)

        def forward(self, idx):
            h = self.e(idx)
            stack = h.new_zeros(*h.shape[:-1], 0, h.shape[-1])
            stack = torch.cat([stack, h.unsqueeze(-2)], dim=-2)
            h2 = self.up(h)
            stack = torch.cat([stack, h2.unsqueeze(-2)], dim=-2)
            messages = self.msg(stack[..., 1:, :], self.up(h2), 1).to(h.dtype)
            return self.out(messages[..., 0, :] + messages[..., 3, :])

    traced = from_torch(Net, (16, 32), inputs)
    traced_computes_the_model(traced, Net, inputs, tol=1e-6)
    assert abc_by_target(traced)["msg.query"] == (0, 1, 1)
