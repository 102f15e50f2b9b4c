"""Tracing grouped-query attention: HF Llama with fewer key/value heads than query heads, under
its eager attention (repeat_kv: unsqueeze, expand, reshape), its sdpa attention (repeat_kv, or
sdpa's enable_gqa), and torch.repeat_interleave, all into dot(q, k, dh) and mix(p, v) with keys
and values of the smaller dim."""

import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn, F = torch.nn, torch.nn.functional

from tensorprog import derive, parse  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _llama(n, attention="sdpa", layers=2):
    cfg = transformers.LlamaConfig(
        hidden_size=n, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=layers,
        vocab_size=64, intermediate_size=2 * n, max_position_embeddings=32, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attention)
    return transformers.LlamaForCausalLM(cfg)


def _tokens(model):
    return (torch.zeros(2, 8, dtype=torch.long),)


def _attention_lines(source):
    return [line for line in source.splitlines() if "dot(" in line or "mix(" in line]


@pytest.fixture(scope="module")
def llama():
    # unrolled, so that its names are those of the one-layer model below (rolling the stack into
    # a block is tests/fromtorch/test_trace_depth.py's)
    return from_torch(_llama, (32, 64), _tokens, blocks=False)


def _weights(program, optimizer="adam"):
    return {p: x for p, x in derive(program, optimizer).abc.items() if p.endswith("weight")}


def test_hf_llama_gqa_traces_to_keys_and_values_of_half_the_dim(llama):
    src = llama.source
    for proj in ("k_proj", "v_proj"):
        assert f"param model_layers_0_self_attn_{proj}_weight : [n_by2, n]" in src  # 2 kv heads
    assert "param model_layers_1_self_attn_q_proj_weight : [n, n]" in src  # 4 query heads
    assert "dot(linear, linear_1, n_by4)" in src  # rotated q and k, heads of n / 4
    # MHA's exponents for every param (the oracle of tests/engine/test_gqa_derive.py): the same
    # program with keys and values of the queries' dim
    mha = parse(re.sub(r"(_[kv]_proj_weight) : \[n_by2, n\]", r"\1 : [n, n]", src))
    for optimizer in ("adam", "sgd"):
        assert derive(llama.program, optimizer).abc == derive(mha, optimizer).abc


@pytest.mark.parametrize("attention", ["eager", "sdpa-enable-gqa"])
def test_eager_and_enable_gqa_trace_to_the_same_attention(llama, attention, monkeypatch):
    if attention == "sdpa-enable-gqa":  # HF calls sdpa with enable_gqa=True, no repeat_kv
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    traced = from_torch(lambda n: _llama(n, attention.split("-")[0], layers=1), (16, 32),
                        _tokens)
    dot, mix = _attention_lines(traced.source)
    assert re.search(r"= attn_\w+ \* dot\(linear, linear_1, n_by4\)$", dot)
    assert re.search(r"= mix\(causal_softmax\(\w+\), linear_2\)$", mix)
    ours, two_layers = _weights(traced.program), _weights(llama.program)
    assert ours == {p: two_layers[p] for p in ours}


def test_mup_apply_is_bit_identical_at_the_base_width_and_scales_the_kv_projections(llama):
    mup = MuP(llama, "adam")
    torch.manual_seed(0)
    model = _llama(32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mup.apply(model)  # the base width: nothing moves
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    wide = _llama(128)
    mup.apply(wide)
    k = wide.model.layers[0].self_attn.k_proj.weight
    assert k.shape == (64, 128)  # [kv, n]: a hidden weight, like MHA's
    # HF inits at std 0.02 at the base width 32; a hidden weight: over sqrt(128 / 32)
    assert float(k.detach().std()) == pytest.approx(0.02 / 2, rel=0.1)
    lr = next(g["lr"] for g in mup.param_groups(wide, lr=1.0)
              if any(p is k for p in g["params"]))
    assert lr == pytest.approx(1 / 4)  # Adam: η·(base/n)


class _Interleaved(nn.Module):
    """Attention with 2 key/value heads repeated by torch.repeat_interleave for 4 query heads."""

    def __init__(self, n, enable_gqa=False, output_size=False):
        super().__init__()
        self.enable_gqa = enable_gqa  # sdpa repeats the heads instead
        self.output_size = output_size  # torch's hint of the result's size (Mamba-2 gives it)
        self.emb, self.q, self.o = nn.Embedding(8, n), nn.Linear(n, n), nn.Linear(n, n)
        self.k, self.v, self.head = nn.Linear(n, n // 2), nn.Linear(n, n // 2), nn.Linear(n, 8)

    def forward(self, tok):
        x = self.emb(tok)
        b, t, n = x.shape
        q = self.q(x).view(b, t, 4, n // 4).transpose(1, 2)
        k, v = (z(x).view(b, t, 2, n // 4).transpose(1, 2) for z in (self.k, self.v))
        if not self.enable_gqa:
            hint = {"output_size": 4} if self.output_size else {}
            k, v = (z.repeat_interleave(2, dim=1, **hint) for z in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.enable_gqa)
        return self.head(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


@pytest.mark.parametrize("hint", [False, True])
def test_repeat_interleave_traces_as_grouped_query_attention(hint):
    # with output_size (torch's hint of the result's size) it was a TypeError in the tracer
    traced = from_torch(lambda n: _Interleaved(n, output_size=hint), (16, 32),
                        lambda m: (torch.zeros(2, 4, dtype=torch.long),))
    assert "param k_weight : [n_by2, n]" in traced.source
    dot, mix = _attention_lines(traced.source)
    assert dot.endswith("dot(linear, linear_1, n_by4)") and mix.endswith(", linear_2)")


def test_the_check_reads_the_logits_of_sdpa_enable_gqa():
    # before: the check's logits multiplied the queries by the keys of half their heads (a
    # traceback); sdpa serves each key head to its group of query heads in turn
    from tensorprog.fromtorch import probe

    build = lambda n: _Interleaved(n, enable_gqa=True)  # noqa: E731
    tokens = lambda m: (torch.arange(8).view(2, 4),)  # noqa: E731
    traced = from_torch(build, (16, 32), tokens)
    torch.manual_seed(0)
    model = build(16)
    found = probe(MuP(traced, "adam"), model, tokens(model))()
    logits, = [v for v, (_, kind) in traced.vectors.items() if kind == "sdpa_logits"]
    with torch.no_grad():
        x = model.emb(*tokens(model))
        q, k = (z(x).view(2, 4, -1, 4).transpose(1, 2) for z in (model.q, model.k))
        want = q @ k.repeat_interleave(2, dim=1).transpose(-2, -1) / 2
    torch.testing.assert_close(found[logits], want)


def test_an_op_called_with_a_keyword_its_rule_does_not_take_is_refused_at_its_node():
    # before, the rule's call raised the tracer's own TypeError (a crash, not a refusal)
    from tensorprog.errors import TraceError
    from tensorprog.fromtorch.where import refuse_keywords

    class Rules:
        def op_repeat(self, node, v, repeats, dim=None):
            return v

        def op_any(self, node, v, **kwargs):
            return v

    rules, node = Rules(), torch.fx.Graph().placeholder("x")
    refuse_keywords(node, "repeat", rules.op_repeat, {"dim": 1})
    refuse_keywords(node, "any", rules.op_any, {"output_size": 4})
    with pytest.raises(TraceError, match="the op repeat with the argument output_size"):
        refuse_keywords(node, "repeat", rules.op_repeat, {"dim": 1, "output_size": 4})
