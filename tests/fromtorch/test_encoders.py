"""from_torch on encoders: bidirectional attention (sdpa without a mask, eager attention with an
additive mask of zeros, HF's bidirectional masks), the first token's vector read out (``h[:, 0]``,
BERT's pooler, traced as ``first(h)``), and keyword and None inputs (``attention_mask=``,
``token_type_ids=``, of one segment or two). The oracle: HF's BertForPreTraining traced
derives, param by param, the exponents of examples/bert.tp written by hand."""

import re

import pytest
import sympy as sp
from conftest import ROOT, abc_by_target, apply_is_bit_identical_at_base, emit_program

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

WIDTHS = (32, 64)
T = 8


def _tokens(model):
    return (torch.arange(2 * T).remainder(13).view(2, T),)


class Encoder(nn.Module):
    """Token and position embeddings (and token types, with ``types``), one post-LN bidirectional
    attention layer over 4 heads and an MLP, then the first token's vector pooled (tanh) and
    read into 3 classes. ``attn``: "sdpa" (no mask, or the attention mask as sdpa's boolean
    mask) or "eager" (q @ k.T, plus an additive mask of zeros, or of the attention mask)."""

    def __init__(self, n, attn="sdpa", types=False):
        super().__init__()
        self.attn, self.types = attn, types
        self.e, self.p = nn.Embedding(16, n), nn.Embedding(T, n)
        self.tt = nn.Embedding(2, n) if types else None
        self.qkv, self.o = nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.up, self.down = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.n1, self.n2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.pool, self.cls = nn.Linear(n, n), nn.Linear(n, 3)

    def forward(self, idx, attention_mask=None, token_type_ids=None):
        b, t = idx.shape
        x = self.e(idx) + self.p(torch.arange(t, device=idx.device))
        if token_type_ids is not None:  # "view": viewed to its own shape first (MVP's ids)
            ids = token_type_ids.view(-1, t) if self.types == "view" else token_type_ids
            x = x + self.tt(ids)
        q, k, v = (z.view(b, t, 4, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        keep = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        if self.attn == "sdpa":
            a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            mask = torch.zeros(t, t, device=idx.device)
            if keep is not None:
                mask = mask.masked_fill(~keep, torch.finfo(mask.dtype).min)
            a = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + mask).softmax(-1) @ v
        x = self.n1(x + self.o(a.transpose(1, 2).reshape(b, t, -1)))
        x = self.n2(x + self.down(torch.relu(self.up(x))))
        return self.cls(torch.tanh(self.pool(x[:, 0])))


@pytest.fixture(scope="module")
def encoder():
    return from_torch(Encoder, WIDTHS, _tokens)


@pytest.mark.slow  # a coordinate check over widths (README, Tests)
def test_bidirectional_attention_and_the_first_token_trace_and_pass_the_coordinate_check(
        encoder):
    assert "mix(softmax(" in encoder.source and "causal_softmax" not in encoder.source
    assert re.search(r"^select = first\(layer_norm_1\)$", encoder.source, re.M)
    # eager attention with an additive mask of zeros is the same attention
    eager = from_torch(lambda n: Encoder(n, "eager"), WIDTHS, _tokens)
    assert "mix(softmax(" in eager.source and abc_by_target(eager) == abc_by_target(encoder)
    # the readout after first(h) is an output weight, the pooler a hidden one
    abc = abc_by_target(encoder)
    assert abc["cls.weight"] == (0, 1, 1) and abc["pool.weight"] == (0, sp.Rational(1, 2), 1)
    mup = MuP(encoder, "adam")
    # 3 Adam steps at lr 3e-3, one seed: µP passes at widths 64..256 (±0.25), SP fails already
    # at 64..128 (its attention logits, MLP, first token and readout blow up)
    good = coord_check(mup, (64, 128, 256), seeds=(0,), tolerance=0.25)
    assert good.passed, list(good.failures)
    bad = coord_check(mup, (64, 128), seeds=(0,), apply=False, tolerance=0.25)
    assert {"scaled_dot_product_attention_logits", "select", "linear_5"} <= set(bad.failures)


def test_keyword_and_none_inputs(encoder):
    ones = torch.ones(2, T, dtype=torch.long)
    # an attention mask of ones (as a keyword, with None for the token types) keeps every key:
    # the same program as without it
    given = from_torch(Encoder, WIDTHS, lambda m: {
        "idx": _tokens(m)[0], "attention_mask": ones, "token_type_ids": None})
    assert given.source == encoder.source
    # token types of one id, given positionally after a None mask: one row of their table
    typed = from_torch(lambda n: Encoder(n, types=True), WIDTHS,
                       lambda m: (_tokens(m)[0], None, torch.zeros_like(ones)))
    assert "param tt_weight_row0 : [n]" in typed.source
    # token types that vary (two segments): a token input of the program of its own, named as
    # the forward names it, whose table derives as the token embedding
    segments = torch.zeros_like(ones)
    segments[:, T // 2:] = 1
    seg = from_torch(lambda n: Encoder(n, types=True), WIDTHS,
                     lambda m: {"idx": _tokens(m)[0], "token_type_ids": segments})
    assert "input token_type_ids : tokens[T, V_token_type_ids]" in seg.source
    assert "tt_weight @ token_type_ids" in seg.source
    # viewed to their own shape first (MVP's decoder_input_ids.view(-1, T)), still that input:
    # before, the view made them a constant of their values, and a lookup of it was refused (or,
    # of ids of one value, read as one constant row)
    viewed = from_torch(lambda n: Encoder(n, types="view"), WIDTHS,
                        lambda m: {"idx": _tokens(m)[0], "token_type_ids": segments})
    assert viewed.source == seg.source
    for optimizer in ("adam", "sgd"):
        abc = abc_by_target(seg, optimizer)
        assert abc["tt.weight"] == abc["e.weight"], optimizer
    apply_is_bit_identical_at_base(seg, lambda n: Encoder(n, types=True),
                                   lambda m: (_tokens(m)[0], None, segments))
    # coord_check feeds every token input of the program (before: the token ids alone, and a
    # model traced with segments was refused): the segment ids drawn at random too
    (looked,) = re.findall(r"(\w+) = tt_weight @ token_type_ids", seg.source)
    result = coord_check(MuP(seg, "adam"), (32, 64), seeds=(0,), steps=2)
    assert {r.name for r in result.results if r.step == 2} >= {looked}
    # a padding mask hides keys per example: refused at the attention, with what to do
    pad = ones.clone()
    pad[0, -2:] = 0
    with pytest.raises(tp.TensorProgError, match="neither the causal mask nor one that keeps "
                       "every key"):
        from_torch(Encoder, WIDTHS, lambda m: {"idx": _tokens(m)[0], "attention_mask": pad})


def _bert(n):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=n, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=4 * n, max_position_embeddings=T,
                                  vocab_size=64)
    return transformers.BertForPreTraining(cfg)


# HF BERT's params by their role in examples/bert.tp
_BERT_NAMES = {
    "cls.predictions.decoder.weight": "E", "bert.embeddings.position_embeddings.weight": "P",
    "bert.embeddings.token_type_embeddings.weight": "tt",
    "bert.embeddings.LayerNorm.weight": "ge", "bert.embeddings.LayerNorm.bias": "be",
    "attention.self.query.weight": "layer.Wq", "attention.self.query.bias": "layer.bq",
    "attention.self.key.weight": "layer.Wk", "attention.self.key.bias": "layer.bk",
    "attention.self.value.weight": "layer.Wv", "attention.self.value.bias": "layer.bv",
    "attention.output.dense.weight": "layer.Wo", "attention.output.dense.bias": "layer.bo",
    "attention.output.LayerNorm.weight": "layer.ga",
    "attention.output.LayerNorm.bias": "layer.ba",
    "intermediate.dense.weight": "layer.Wi", "intermediate.dense.bias": "layer.bi",
    "output.dense.weight": "layer.Wp", "output.dense.bias": "layer.bp",
    "output.LayerNorm.weight": "layer.gm", "output.LayerNorm.bias": "layer.bm",
    "cls.predictions.transform.dense.weight": "Wt", "cls.predictions.transform.dense.bias": "bt",
    "cls.predictions.transform.LayerNorm.weight": "gt",
    "cls.predictions.transform.LayerNorm.bias": "btn", "cls.predictions.decoder.bias": "dec_b",
    "bert.pooler.dense.weight": "Wpool", "bert.pooler.dense.bias": "bpool",
    "cls.seq_relationship.weight": "Wc", "cls.seq_relationship.bias": "bc",
}


def test_hf_bert_derives_the_exponents_of_examples_bert():
    # BertForPreTraining: the masked-LM head and the pooled next-sentence classifier, traced
    # with keyword inputs (an attention mask of ones, token types of one id)
    def inputs(m):
        ids = _tokens(m)[0]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids)}

    traced = from_torch(_bert, WIDTHS, inputs)
    example = tp.parse_file(ROOT / "examples" / "bert.tp")
    for optimizer in ("adam", "sgd"):
        mine = tp.derive(example, optimizer).abc
        got = abc_by_target(traced, optimizer)
        assert len(got) == len(_BERT_NAMES)
        for target, abc in got.items():
            role = _BERT_NAMES[re.sub(r"^bert\.encoder\.layer\.\d+\.", "", target)]
            assert abc == (mine[role].a, mine[role].b, mine[role].c), (optimizer, target)
        d = tp.derive(traced.program, optimizer).abc
        for scale, role in (("attn_", "attn"), ("tie_", "tie")):
            (name,) = (p for p in d if p.startswith(scale))
            assert d[name].a == mine[role].a, (optimizer, scale)
    # apply leaves it bit-identical at the base width, both heads
    mup = MuP(traced, "adam")
    torch.manual_seed(1)
    model = _bert(WIDTHS[0])
    torch.manual_seed(1)
    plain = _bert(WIDTHS[0])
    mup.apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    ids = _tokens(model)[0]
    got, want = model.eval()(ids), plain.eval()(ids)  # without dropout
    assert torch.equal(got.prediction_logits, want.prediction_logits)
    assert torch.equal(got.seq_relationship_logits, want.seq_relationship_logits)


def test_the_emitted_module_reads_the_first_token():
    from tensorprog.emit.load import load_module

    module = load_module(emit_program(tp.parse_file(ROOT / "examples" / "bert.tp")), "bert")
    model = module.Model(64, dtype=torch.float64)
    (tok,) = model.example_inputs(3, generator=torch.Generator().manual_seed(0))
    mlm, cls = model(tok)
    assert mlm.shape == (3, 4, 64) and cls.shape == (3, 2)
    # first(hL) is the first token's vector of the last block's output, one per sequence
    v = model.vectors(tok)
    assert v["pooled_1"].shape == (3, 64) and torch.equal(v["pooled_1"], v["hL"][:, 0])
    assert torch.allclose(v["cls"], cls)  # vectors() attends unfused: rounding apart
