"""QK-norm with a fixed head count (the head dim grows with the width): µP's attention factor
(n/base)^-1/2 against the model's own 1/sqrt(dh) folds into the query's norm gain, its init and
LR. The oracle is the language's own QK-norm decoder (examples/qknorm.tp with dh = n / 4): the
traced HF Qwen3 derives its exponents, the engine confirms that the fold keeps µP (only the query
vector itself carries the factor), and the applied model computes what the model with µP's
attention scale computes."""

import pytest
from conftest import ROOT
from sympy import Rational

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tensorprog as tp  # noqa: E402
from tensorprog.engine.exponents import ABC  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

HALF = Rational(1, 2)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def _qwen3(n):
    cfg = transformers.Qwen3Config(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, head_dim=n // 4, vocab_size=64, max_position_embeddings=8,
        use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.Qwen3ForCausalLM(cfg)


@pytest.fixture(scope="module")
def traced():
    return from_torch(_qwen3, (32, 64), _tokens)


def _growing_example():
    text = (ROOT / "examples" / "qknorm.tp").read_text()
    fixed = "dim dh = 16                 # fixed head dim: n / 16 heads"
    assert fixed in text
    return tp.parse(text.replace(fixed, "dim dh = n / 4"), "qknorm_grow.tp")


def test_qwen3_query_gain_takes_the_factor_the_language_derives(traced):
    example = _growing_example()
    names = {"Wq": "q_proj", "Wk": "k_proj", "gq": "q_norm", "gk": "k_norm"}
    for optimizer, k in (("adam", 1), ("sgd", 2)):
        ours = tp.derive(example, optimizer).abc
        mup = MuP(traced, optimizer)
        theirs = mup.derivation.abc
        by_module = {next(p for p in theirs if f"_{m}_" in p): e for e, m in names.items()}
        for p, e in by_module.items():  # the traced model derives as the language's
            assert theirs[p] == ours[e], (optimizer, p)
        scale = next(s for s in traced.scales if s.startswith("attn"))
        assert ours["attn"].a == theirs[scale].a == 1 and traced.scales[scale]["model_a"] == HALF
        # the model's 1/sqrt(dh) needs (n/base)^-1/2 more: on the query's gain, init and LR
        q_gain = next(p for p in by_module if "_q_norm_" in p)
        assert mup.init_exp[q_gain] == HALF
        assert mup.lr_exp[q_gain] == ours["gq"].c + k * HALF
        assert mup.lr_exp[next(p for p in by_module if "_k_norm_" in p)] == ours["gk"].c
        # the engine on the fold: attn at the model's 1/2, gq's init and LR moved by the
        # symmetry. Only q itself is off µP (it carries the factor now): no logit, no update
        folded = {"attn": ABC(HALF, 0, ours["attn"].c), "gq": ABC(0, HALF, ours["gq"].c + k * HALF)}
        judged = tp.classify(example, optimizer, abc={**ours, **folded})
        assert [(v.condition, v.tensor) for v in judged.violations] == [("vanishing_init", "q")]
        # without the LR's part (Adam): the logits' input blows up in training
        if optimizer == "adam":
            half = tp.classify(example, optimizer, abc={**ours, **folded,
                                                       "gq": ABC(0, HALF, ours["gq"].c)})
            assert any(v.condition == "stability_training" for v in half.violations)


def test_applied_qwen3_computes_what_mups_attention_scale_computes(traced):
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    base, given = _qwen3(32), _tokens(None)
    before, state = base(*given).logits, {k: v.clone() for k, v in base.state_dict().items()}
    mup.apply(base)  # at the base width the model is left alone, bit for bit
    assert all(torch.equal(v, state[k]) for k, v in base.state_dict().items())
    assert torch.equal(base(*given).logits, before)
    torch.manual_seed(0)
    model = _qwen3(128)
    torch.manual_seed(0)
    plain = _qwen3(128)
    report = mup.apply(model)
    assert "init model.layers.0.self_attn.q_norm.weight: constant 1 -> 0.5 " in str(report)
    assert float(model.model.layers[0].self_attn.q_norm.weight.detach().max()) == 0.5
    lrs = mup.lr_multipliers(model)
    assert lrs["model.layers.0.self_attn.q_norm.weight"] == pytest.approx(0.5)
    assert lrs["model.layers.0.self_attn.k_norm.weight"] == 1.0
    # the oracle: the same params with the query gain at 1 and the logits times (n/base)^-1/2 = 1/2
    # in the attention's own scale (µP's 1/dh, not the model's 1/sqrt(dh))
    with torch.no_grad():
        for p, q in zip(plain.parameters(), model.parameters(), strict=True):
            p.copy_(q)
        plain.model.layers[0].self_attn.q_norm.weight.fill_(1.0)
    plain.model.layers[0].self_attn.scaling *= 0.5
    torch.testing.assert_close(model(*given).logits, plain(*given).logits, rtol=1e-5, atol=1e-6)


def _persimmon(n):
    cfg = transformers.PersimmonConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=1, num_attention_heads=4,
        vocab_size=64, max_position_embeddings=8, qk_layernorm=True, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.PersimmonForCausalLM(cfg)


def test_persimmons_qk_layernorm_bias_is_a_head_dims_bias_taking_the_factor_with_its_gain():
    # before: refused as "a layernorm over each head with a bias"; now g * layernorm(q, dh) + b
    # with b : [dh] added to every head, and the query linear in (g, b) takes µP's factor
    traced = from_torch(_persimmon, (32, 64), _tokens)
    bias = next(p for p in traced.params if "q_layernorm_bias" in p)
    assert f"param {bias} : [" in traced.source and f" + {bias}\n" in traced.source
    mup = MuP(traced, "adam")
    assert any("q_layernorm.weight and model.layers.0.self_attn.q_layernorm.bias" in f
               for f in mup.folded)
    torch.manual_seed(0)
    model, given = _persimmon(32), _tokens(None)
    before = model(*given).logits
    mup.apply(model)  # at the base width: the model as it comes
    assert torch.equal(model(*given).logits, before)
    model = _persimmon(128)
    mup.apply(model)
    assert torch.equal(model.model.layers[0].self_attn.q_layernorm.weight.detach(),
                       torch.full((32,), 0.5))
    lr = mup.lr_multipliers(model)
    assert lr["model.layers.0.self_attn.q_layernorm.bias"] == lr[
        "model.layers.0.self_attn.q_layernorm.weight"] == 0.5
