"""RWKV's time mixing (transformers' ``rwkv_linear_attention``) traces as the language's
``wkv(-exp(time_decay), time_first, k, v)``, its token shift (``nn.ZeroPad2d((0, 0, 1, -1))``)
as ``shift(x, 1)`` mixed in by the gains m and ``1 - m``. Oracle: the traced program computes
the model (transformers' loop runs its keys in float32: compared at 1e-5 of the output). A
cache's state in or out is refused at the model's line."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
modeling = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class WkvLayer(nn.Module):
    """RWKV's time mixing between an embedding and a readout: the token shift mixed in per
    channel, keys, values and the receptance gate, the WKV with a decay and a bonus per
    channel, drawn as transformers draws them (time_decay from -5 to 3 over the channels)."""

    def __init__(self, n, state=False, decay_per_token=False):
        super().__init__()
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.mix = nn.Parameter(torch.rand(1, 1, n))
        self.key, self.value, self.gate = (nn.Linear(n, n, bias=False) for _ in range(3))
        self.time_decay = nn.Parameter(torch.linspace(-5, 3, n))
        self.time_first = nn.Parameter(torch.randn(n))
        self.state, self.decay_per_token = state, decay_per_token

    def forward(self, ids):
        e = self.emb(ids)
        x = e * self.mix + self.shift(e) * (1 - self.mix)
        # a decay computed from each token (a near miss: wkv's is one number per channel)
        decay = self.gate(x) if self.decay_per_token else self.time_decay
        out, _ = modeling.rwkv_linear_attention(
            decay, self.time_first, self.key(x), self.value(x), return_state=self.state
        )
        return self.ro(e + torch.sigmoid(self.gate(x)) * out)


def ids(model=None):
    return (torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(WkvLayer, (64, 128), ids)


def test_the_wkv_traces_as_wkv_and_computes_the_model(traced):
    src = traced.source
    assert "= wkv(-(exp(time_decay)), time_first, " in src, src
    # (the param mix is named v_mix in the program: mix is a function of the language)
    assert "= shift(embedding, 1)" in src and "(1.0 - 1.0 * (v_mix)) * " in src
    traced_computes_the_model(traced, WkvLayer, ids, tol=1e-5)


def test_the_layer_derives_with_hidden_projections_and_gains(traced):
    """The WKV averages the values with Θ(1) weights: key, value and gate are hidden weights,
    the mix, the decay and the bonus gains."""
    table = {
        p: (str(x.a + x.b), str(x.c)) for p, x in tp.derive(traced.program, "adam").abc.items()
    }
    for w in ("key", "value", "gate"):
        assert table[f"{w}_weight"] == ("1/2", "1"), (w, table[f"{w}_weight"])
    assert table["v_mix"] == table["time_decay"] == table["time_first"] == ("0", "0")


def test_a_cache_state_asked_for_is_refused_at_the_models_line():
    with pytest.raises(
        TraceError, match=r"the WKV's final state \(asked for by use_cache\)"
    ) as err:
        tp.from_torch(lambda n: WkvLayer(n, state=True), (64, 128), ids)
    assert "test_rwkv_trace.py" in str(err.value) and "rwkv_linear_attention(" in str(err.value)


def test_a_decay_computed_per_token_is_refused_at_the_models_line():
    """A decay that varies over the tokens is no longer RWKV's (one rate per channel): the
    language's wkv has no such decay, so the trace refuses it where the model calls the WKV."""
    with pytest.raises(
        TraceError,
        match=r"the WKV of a decay that is not a param or a function "
        "of one param alone",
    ) as err:
        tp.from_torch(lambda n: WkvLayer(n, decay_per_token=True), (64, 128), ids)
    assert "test_rwkv_trace.py" in str(err.value)


@pytest.mark.slow
def test_transformers_rwkv_traces_and_computes_the_model():
    """A tiny RwkvForCausalLM (2 blocks, the channel mixing's squared ReLU, the token shifts):
    traced whole, it computes the model."""
    import transformers

    def build(n):
        return transformers.RwkvForCausalLM(
            transformers.RwkvConfig(
                vocab_size=13,
                hidden_size=n,
                num_hidden_layers=2,
                context_length=32,
                intermediate_size=2 * n,
                use_cache=False,
            )
        )

    traced = tp.from_torch(build, (64, 128), ids)
    assert traced.source.count("= wkv(") == 2
    traced_computes_the_model(traced, build, ids, tol=1e-5)
