"""Encoder-decoders traced: HF T5 (relative position bias, cross-attention, a second sequence)
derives, param by param, the exponents of examples/t5.tp written by hand, and `apply` leaves it
bit-identical at the base width; HF BART (learned positions offset by 2, computed from each
input's shape) traces with its encoder, decoder and cross-attention."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tensorprog as tp
from tensorprog import TensorProgError
from tensorprog.fromtorch import MuP, from_torch

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = (64, 128)
SRC, TGT = 8, 6


def _t5(n, heads=None, layers=1):
    """T5 v1.1's layout (an untied head, no d_model**-0.5 before it) at examples/t5.tp's sizes:
    heads of 16 (n / 16 of them) unless ``heads`` fixes their count, 8 buckets, ``layers`` +
    ``layers`` blocks (examples/t5.tp has 2 + 2; the second derives as the first)."""
    h = heads or n // 16
    config = transformers.T5Config(
        vocab_size=256, d_model=n, d_ff=4 * n, num_heads=h, d_kv=n // h, num_layers=layers,
        num_decoder_layers=layers, relative_attention_num_buckets=8, dropout_rate=0.0,
        feed_forward_proj="relu", decoder_start_token_id=0, use_cache=False)
    config.tie_word_embeddings = False  # T5Config sets it True whatever it is given
    config.scale_decoder_outputs = False
    return transformers.T5ForConditionalGeneration(config)


def _inputs(m):
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(256, (2, SRC), generator=g),
            "decoder_input_ids": torch.randint(256, (2, TGT), generator=g)}


def _t5_role(target: str) -> str:
    """The name in examples/t5.tp of a T5 param."""
    # untied, transformers gives each stack its own copy of the token table: both are E
    fixed = {"encoder.embed_tokens.weight": "E", "decoder.embed_tokens.weight": "E",
             "lm_head.weight": "U", "encoder.final_layer_norm.weight": "ef",
             "decoder.final_layer_norm.weight": "df",
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "Re",
             "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "Rd"}
    if target in fixed:
        return fixed[target]
    stack, i, layer, rest = re.fullmatch(r"(\w+)\.block\.(\d)\.layer\.(\d)\.(.+)\.weight",
                                         target).groups()
    k = int(i) + 1
    e = stack == "encoder"
    if rest == "layer_norm":  # before attention, cross-attention (the decoder's), the MLP
        norms = {"0": "a", "1": "m"} if e else {"0": "a", "1": "c", "2": "m"}
        return f"{'e' if e else 'd'}{norms[layer]}{k}"
    if rest.startswith("DenseReluDense"):
        return f"{'e' if e else 'd'}W{'i' if rest.endswith('wi') else 'p'}{k}"
    prefix = "c" if "EncDec" in rest else "e" if e else "d"
    return f"{prefix}W{rest[-1]}{k}"


def _abc(program, optimizer):
    return tp.derive(program, optimizer).abc


@pytest.fixture(scope="module")
def t5():
    return from_torch(_t5, WIDTHS, _inputs)


def _same_exponents(t5, roles: int):
    """The traced T5's params derive, under Adam and SGD, what their roles in examples/t5.tp
    derive (``roles`` of them)."""
    source = t5.source
    # the buckets recognised by their values, each stack's over its own sequence
    assert "input rel : relative[T, f8]" in source
    assert "causal_relative[T_decoder_input_ids, f8]" in source
    assert "input decoder_input_ids : tokens[T_decoder_input_ids, V]" in source
    example = tp.parse_file(ROOT / "examples" / "t5.tp")
    for optimizer in ("adam", "sgd"):
        mine, got = _abc(example, optimizer), _abc(t5.program, optimizer)
        assert len({_t5_role(u.target) for u in t5.params.values()}) == roles
        for name, use in t5.params.items():
            role = _t5_role(use.target)
            assert (got[name].a, got[name].b, got[name].c) == (
                mine[role].a, mine[role].b, mine[role].c), (optimizer, use.target)
        for name in got:
            if name.startswith("attn_"):  # T5's scale 1 with a fixed head dim: exponent 0
                assert got[name].a == mine["attn"].a, (optimizer, name)


def test_hf_t5_derives_the_exponents_of_examples_t5(t5):
    # 1 + 1 blocks: every role of examples/t5.tp's first blocks (27 of its 48 params)
    _same_exponents(t5, 27)


@pytest.mark.slow
def test_hf_t5_of_two_and_two_blocks_derives_every_param_of_examples_t5():
    _same_exponents(from_torch(lambda n: _t5(n, layers=2), WIDTHS, _inputs), 48)


def test_apply_leaves_t5_bit_identical_at_the_base_width(t5):
    mup = MuP(t5, "adam")
    torch.manual_seed(1)
    model = _t5(WIDTHS[0])
    torch.manual_seed(1)
    plain = _t5(WIDTHS[0])
    mup.apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    x = _inputs(model)
    assert torch.equal(model.eval()(**x).logits, plain.eval()(**x).logits)


def test_a_relative_bias_reads_the_buckets_of_its_own_sequence(t5):
    # each stack's bias table is a lookup of one bucket: an embedding's exponents, and the
    # decoder's buckets are causal, over the decoder's ids (6 tokens), not the encoder's (8)
    program = t5.program
    assert program.dim_table["T"].size == SRC
    assert program.dim_table["T_decoder_input_ids"].size == TGT
    kinds = {i.name: i.kind for i in program.inputs}
    assert kinds == {"tok": "tokens", "decoder_input_ids": "tokens", "rel": "relative",
                     "rel_causal_decoder_input_ids": "causal_relative"}


def _bart(n):
    config = transformers.BartConfig(
        vocab_size=256, d_model=n, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=4 * n, decoder_ffn_dim=4 * n,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        use_cache=False)
    return transformers.BartForConditionalGeneration(config)


@pytest.mark.slow  # two more exports of an encoder-decoder: about 12 s
def test_hf_bart_traces_its_positions_per_sequence_and_cross_attention():
    # BART's learned positions (offset 2, from each input's shape): one positions input per
    # sequence; the decoder's cross-attention reads the encoder's output; the zeros of
    # final_logits_bias (a buffer) added to the logits change nothing
    traced = from_torch(_bart, (32, 64), _inputs)
    source = traced.source
    for line in ("input tok : tokens[T, V]", "input pos : positions[T]",
                 "input decoder_input_ids : tokens[T_decoder_input_ids, V]",
                 "input pos_decoder_input_ids : positions[T_decoder_input_ids]"):
        assert line in source
    assert re.search(r"= \w*encoder_attn_k_proj_weight @ layer_norm_2 ", source)
    d = tp.derive(traced.program, "adam").abc
    enc, dec = (next(p for p, u in traced.params.items() if u.target == t)
                for t in ("model.encoder.embed_positions.weight",
                          "model.decoder.embed_positions.weight"))
    assert (d[enc].a, d[enc].b, d[enc].c) == (d[dec].a, d[dec].b, d[dec].c) == (0, 0, 0)
    mup = MuP(traced, "adam")
    torch.manual_seed(1)
    model, x = _bart(32), _inputs(None)
    torch.manual_seed(1)
    plain = _bart(32)
    mup.apply(model)
    assert torch.equal(model.eval()(**x).logits, plain.eval()(**x).logits)


class _Biased(torch.nn.Module):
    """Two heads of attention by hand with T5's bias (8 buckets, both ways) added to the
    logits, out of place or in place (MPNet's ``scores += bias``)."""

    def __init__(self, n, in_place=False):
        super().__init__()
        self.e, self.o = torch.nn.Embedding(16, n), torch.nn.Linear(n, 16)
        self.q, self.k = torch.nn.Linear(n, n), torch.nn.Linear(n, n)
        self.r = torch.nn.Embedding(8, 2)  # [buckets, heads]
        self.in_place = in_place

    def forward(self, idx):
        from tensorprog.fromtorch.ops_relative import t5_buckets

        b, t = idx.shape
        x = self.e(idx)
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in (self.q(x), self.k(x), x))
        ids = t5_buckets(t, t, 8, True, torch).to(idx.device)
        bias = self.r(ids).permute(2, 0, 1).unsqueeze(0)
        s = q @ k.transpose(-1, -2)
        if self.in_place:
            s += bias
        else:
            s = s + bias
        y = torch.softmax(s, -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_a_bias_added_in_place_traces_as_added():
    tokens = lambda m: (torch.zeros(2, 8, dtype=torch.long),)  # noqa: E731
    plain = from_torch(_Biased, (16, 32), tokens)
    in_place = from_torch(lambda n: _Biased(n, in_place=True), (16, 32), tokens)
    assert "input rel : relative[T, f8]" in plain.source
    assert re.search(r"= attn_\w+ \* dot\(\w+, \w+, n_by2\) \+ \w+\n", plain.source)
    assert in_place.source == plain.source


class _BucketsGiven(_Biased):
    """_Biased whose bucket ids the forward is given: at the example, T5's own."""

    def forward(self, idx, buckets):
        b, t = idx.shape
        x = self.e(idx)
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in (self.q(x), self.k(x), x))
        s = q @ k.transpose(-1, -2) + self.r(buckets).permute(2, 0, 1).unsqueeze(0)
        return self.o((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, t, -1))


def test_buckets_given_to_the_forward_are_refused_though_the_example_is_t5s():
    # the emitted module builds T5's buckets itself: ids fed at each call would be dropped
    from tensorprog.fromtorch.ops_relative import t5_buckets

    def inputs(m):
        return torch.zeros(2, 8, dtype=torch.long), t5_buckets(8, 8, 8, True, torch)

    with pytest.raises(TensorProgError, match=r"test_encdec_trace.py:\d+:\d+: error: cannot "
                       r"trace a lookup of ids given to the forward or computed from its input "
                       r"buckets, whose example values are T5's relative position buckets"
                       ) as err:
        from_torch(_BucketsGiven, (16, 32), inputs)
    assert "self.r(buckets)" in str(err.value)
