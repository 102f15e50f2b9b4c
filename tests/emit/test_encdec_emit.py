"""Emitted encoder-decoders: examples/t5.tp's module computes what transformers' T5 computes
(relative position buckets, the bias shared by a stack's blocks, cross-attention over the
encoder's output), and the decoder's loss trains the encoder through cross-attention."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
t5 = pytest.importorskip("transformers.models.t5.modeling_t5")

from conftest import ROOT, emit_program  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

T5 = ROOT / "examples" / "t5.tp"


@pytest.fixture(scope="module", autouse=True)
def _torch_module_untouched():
    """transformers adds ``smart_apply`` to torch.nn.Module when it first builds a model (and
    again whenever it is missing); tests/emit/test_names.py checks nn.Module's attributes, so
    what this file's T5 adds is taken away after it."""
    before = set(vars(torch.nn.Module))
    yield
    for name in set(vars(torch.nn.Module)) - before:
        delattr(torch.nn.Module, name)


@pytest.fixture(scope="module")
def module():
    return load_module(emit_program(tp.parse_file(T5)), "t5")


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets", [8, 32])
def test_relative_buckets_are_t5s(module, bidirectional, buckets):
    for length in (1, 6, 40, 300):  # exact, logarithmic and past the 128-token max distance
        position = torch.arange(length)
        expected = t5.T5Attention._relative_position_bucket(
            position[None, :] - position[:, None], bidirectional=bidirectional,
            num_buckets=buckets, max_distance=128)
        got = module._relative_buckets(length, buckets, bidirectional, None)
        assert torch.equal(got, expected), (length, buckets, bidirectional)


def _hf_t5(m):
    """A transformers T5 of m's sizes holding m's weights (every multiplier is 1 at the base)."""
    n = m.width
    config = t5.T5Config(vocab_size=64, d_model=n, d_kv=16, d_ff=2 * n, num_layers=2,
                         num_decoder_layers=2, num_heads=n // 16, relative_attention_num_buckets=8,
                         dropout_rate=0.0, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
                         decoder_start_token_id=0, pad_token_id=0)
    config.tie_word_embeddings = False  # an untied head (T5 v1.1's; the argument is not kept)
    config.scale_decoder_outputs = False  # no d_model**-0.5 before it (that goes with tying)
    hf = t5.T5ForConditionalGeneration(config).double().eval()
    pairs = {"shared.weight": m.E.t(), "lm_head.weight": m.U,
             "encoder.final_layer_norm.weight": m.ef, "decoder.final_layer_norm.weight": m.df,
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": m.Re.t(),
             "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": m.Rd.t()}
    for i in (0, 1):
        e, d, k = f"encoder.block.{i}.layer", f"decoder.block.{i}.layer", i + 1
        for w in "qkvo":
            pairs[f"{e}.0.SelfAttention.{w}.weight"] = getattr(m, f"eW{w}{k}")
            pairs[f"{d}.0.SelfAttention.{w}.weight"] = getattr(m, f"dW{w}{k}")
            pairs[f"{d}.1.EncDecAttention.{w}.weight"] = getattr(m, f"cW{w}{k}")
        pairs.update({f"{e}.0.layer_norm.weight": getattr(m, f"ea{k}"),
                      f"{e}.1.layer_norm.weight": getattr(m, f"em{k}"),
                      f"{e}.1.DenseReluDense.wi.weight": getattr(m, f"eWi{k}"),
                      f"{e}.1.DenseReluDense.wo.weight": getattr(m, f"eWp{k}"),
                      f"{d}.0.layer_norm.weight": getattr(m, f"da{k}"),
                      f"{d}.1.layer_norm.weight": getattr(m, f"dc{k}"),
                      f"{d}.2.layer_norm.weight": getattr(m, f"dm{k}"),
                      f"{d}.2.DenseReluDense.wi.weight": getattr(m, f"dWi{k}"),
                      f"{d}.2.DenseReluDense.wo.weight": getattr(m, f"dWp{k}")})
    params = dict(hf.named_parameters())
    for stack in ("encoder", "decoder"):  # untied, each stack has its own copy of the table
        if f"{stack}.embed_tokens.weight" in params:
            pairs[f"{stack}.embed_tokens.weight"] = m.E.t()
    assert set(params) == set(pairs)  # every T5 weight has its program param
    with torch.no_grad():
        for name, value in pairs.items():
            params[name].copy_(value)
    return hf


def test_emitted_t5_equals_transformers_t5_at_the_base_width(module):
    torch.manual_seed(0)
    m = module.Model(64, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():  # gains away from 1 and a bias that matters
            p.add_(torch.randn_like(p) * 0.3)
    hf = _hf_t5(m)
    src, tgt = torch.randint(0, 64, (3, 8)), torch.randint(0, 64, (3, 6))
    expected = hf(input_ids=src, decoder_input_ids=tgt).logits
    # fused (sdpa for cross-attention) and explicit (dot, softmax, mix); T5's RMSNorm takes its
    # variance in float32 (measured: logits up to 9.6 differ by up to 9.4e-5, a relative 1e-5;
    # a wrong bucket, bias or pairing of heads moves them by O(1))
    torch.testing.assert_close(m(src, tgt), expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(m.vectors(src, tgt)["logits"], expected, rtol=0, atol=1e-3)
    # shorter sequences than the dims: the buckets follow each input's own length
    torch.testing.assert_close(m(src[:, :5], tgt[:, :2]),
                               hf(input_ids=src[:, :5], decoder_input_ids=tgt[:, :2]).logits,
                               rtol=0, atol=1e-3)


def test_the_decoders_loss_reaches_the_encoder_through_cross_attention(module):
    torch.manual_seed(0)
    m = module.Model(64)
    src, tgt = m.example_inputs(2)
    m(src, tgt).square().mean().backward()
    # the encoder feeds the loss only through the cross-attention's keys and values
    for name in ("E", "Re", "eWq1", "eWp2", "ef", "cWk1", "cWv2", "Rd"):
        assert getattr(m, name).grad.abs().sum() > 0, name
