"""Tracing multi-head latent attention: HF DeepSeek-V3's MLA (a low-rank query, a compressed
key/value, each head's query and key concatenated from a no-rotary part and a rotary part, the
rotary key one head shared by all) into logits that are a sum of two per-head dots, each under
a scale of its own that is the model's one factor at the base width,
``attn * dot(q_nope, k_nope, dn) + attn_part1 * dot(q_pe, k_pe, dr)``."""

import re

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tensorprog import TensorProgError, derive, parse  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _deepseek(n, interleave=True, rope=None, attention="sdpa"):
    """One layer of DeepSeek-V3 (dense MLP), 4 heads; every MLA size a fixed share of the width
    (``rope``: a fixed rotary head dim instead)."""
    cfg = transformers.DeepseekV3Config(
        hidden_size=n, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
        vocab_size=64, intermediate_size=2 * n, max_position_embeddings=32, q_lora_rank=n // 2,
        kv_lora_rank=n // 4, qk_nope_head_dim=n // 2, qk_rope_head_dim=rope or n // 4,
        v_head_dim=n // 2, first_k_dense_replace=1, rope_interleave=interleave,
        use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        attn_implementation=attention)
    return transformers.DeepseekV3ForCausalLM(cfg)


def _tokens(model):
    return (torch.zeros(2, 8, dtype=torch.long),)


@pytest.fixture(scope="module")
def mla():
    return from_torch(_deepseek, WIDTHS, _tokens)


# the same attention written by hand in the language: what the traced program's MLA must derive
HAND = """
width n = 32
dim V = 64
dim T = 8
dim qr = n / 2             # q_lora_rank
dim kr = n / 4             # kv_lora_rank
dim dn = n / 2             # each head's no-rotary part (4 heads)
dim dr = n / 4             # each head's rotary part
dim qn = 2 * n             # 4 heads of dn (and the values: 4 heads of dn)
dim qp = n                 # 4 heads of dr
input tok : tokens[T, V]
param E : [n, V]
param g : [n] = 1
param Wqa : [qr, n]
param gq : [qr] = 1
param Wqn : [qn, qr]
param Wqp : [qp, qr]
param Wc : [kr, n]
param gc : [kr] = 1
param Wkp : [dr, n]        # the rotary key: one head, shared by the 4 query heads
param Wkn : [qn, kr]
param Wv : [qn, kr]
param Wo : [n, qn]
param U : [V, n]
scale attn = 0.2
scale attn2 = 0.2
h = g * rmsnorm(E @ tok)
cq = gq * rmsnorm(Wqa @ h)
c = gc * rmsnorm(Wc @ h)
s = attn * dot(Wqn @ cq, Wkn @ c, dn) + attn2 * dot(Wqp @ cq, Wkp @ h, dr)
o = E @ tok + Wo @ mix(causal_softmax(s), Wv @ c)
output y = U @ o
"""
NAMES = {  # the hand-written params, as the trace names them
    "Wqa": "q_a_proj_weight", "Wqn": "q_b_proj_weight_part0", "Wqp": "q_b_proj_weight_part1",
    "Wc": "kv_a_proj_with_mqa_weight_part0", "Wkp": "kv_a_proj_with_mqa_weight_part1",
    "Wkn": "kv_b_proj_weight_part0", "Wv": "kv_b_proj_weight_part1", "Wo": "o_proj_weight",
    "attn": "", "attn2": "_part1", "gq": "q_a_layernorm_weight", "gc": "kv_a_layernorm_weight",
}


def _traced(name):
    return f"attn_scaled_dot_product_attention{name}" if name in ("", "_part1") else \
        f"model_layers_0_self_attn_{name}"


def test_mla_traces_to_two_dots_each_under_its_scale(mla):
    src = mla.source
    # the fused rows become the params they stand for: q_b's nope and rope rows of each head,
    # kv_a's compressed and rotary rows (one head of n/4), kv_b's key and value rows per head
    for part, shape in (("q_b_proj_weight_part0", "n_x2, n_by2"),
                        ("q_b_proj_weight_part1", "n, n_by2"),
                        ("kv_a_proj_with_mqa_weight_part1", "n_by4, n"),
                        ("kv_b_proj_weight_part1", "n_x2, n_by4")):
        assert f"param model_layers_0_self_attn_{part} : [{shape}]" in src
    assert re.search(r"_logits = (attn_\w+) \* dot\(getitem, getitem_4, n_by2\) \+ \1_part1 \* "
                     r"dot\(getitem_1, getitem_3, n_by4\)$", src, re.M)
    assert re.search(r"= mix\(causal_softmax\(\w+_logits\), getitem_5\)$", src, re.M)
    assert "getitem_3: rotary embedding" in src  # the shared key, rotated in place


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mla_derives_the_hand_written_attention(mla, optimizer):
    got = derive(mla.program, optimizer).abc
    want = derive(parse(HAND), optimizer).abc
    for hand, traced in NAMES.items():
        assert got[_traced(traced)] == want[hand], hand
    # µP's 1/d on the logits, both dots' head dims growing with the width
    assert want["attn"].a == want["attn2"].a == 1


def test_rotate_half_and_eager_attention_trace_to_the_same_dots(mla):
    # HF's rotate_half (MiniCPM3's, DeepSeek-V3's without rope_interleave) and DeepSeek's
    # interleaved pairs, sdpa and eager attention (q @ k.transpose(2, 3) of the key built in
    # place): the same program, but for the names of the ops between
    traced = from_torch(lambda n: _deepseek(n, interleave=False, attention="eager"), WIDTHS,
                        _tokens)
    dots = [re.findall(r"dot\(\w+, \w+, \w+\)|mix\(causal_softmax\(\w+\), \w+\)", t.source)
            for t in (traced, mla)]
    assert [re.sub(r"softmax\(\w+\)", "", d) for d in dots[0]] == \
        [re.sub(r"softmax\(\w+\)", "", d) for d in dots[1]] and len(dots[0]) == 3
    got, want = (derive(t.program, "adam").abc for t in (traced, mla))
    assert {p: x for p, x in got.items() if "weight" in p} == \
        {p: x for p, x in want.items() if "weight" in p}
    assert sorted(x.a for p, x in got.items() if p.startswith("attn_")) == [1, 1]


def test_apply_is_bit_identical_at_the_base_width(mla):
    mup = MuP(mla, "adam")
    torch.manual_seed(0)
    model = _deepseek(WIDTHS[0])
    x = (torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1)),)
    with torch.no_grad():
        before, y0 = ({k: v.clone() for k, v in model.state_dict().items()},
                      model(*x).logits)
        mup.apply(model)
        y1 = model(*x).logits
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(y0, y1)


def test_apply_gives_both_query_parts_the_attention_factor(mla):
    # the logits' scale goes from the model's 1/sqrt(d) to µP's 1/d: (64/32)^-1/2 on the
    # output of q_b, folded into the rows of each part of every head (the no-rotary and the
    # rotary ones: the model's one factor multiplies both dots)
    model = _deepseek(64)
    MuP(mla, "adam").apply(model)
    q_b, seen = model.model.layers[0].self_attn.q_b_proj, {}
    q_b.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model(*_tokens(model))
        plain = torch.nn.functional.linear(seen["x"], q_b.weight)
    torch.testing.assert_close(seen["out"], plain * 2 ** -0.5)


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_a_fixed_rotary_head_dim_is_refused():
    # the rotary rows of kv_a keep 16 rows while the compressed ones grow, and so do each
    # head's rotary rows of q_b beside its growing no-rotary ones: the trace reads them as
    # blocks of a fixed size (rows.py). Over 4 heads the rotary query is a finite vector, a
    # readout's block of q_b beside a hidden one: under SGD their LRs differ, and one tensor
    # has one LR; under Adam only their eps differ, which a scale of each head's rotary rows'
    # gradient gives them (gradscale.py): e_query / e_rotary = (n/base)^-1
    traced = from_torch(lambda n: _deepseek(n, rope=16), WIDTHS, _tokens)
    rotary = next(u for p, u in traced.params.items() if "kv_a_proj_with_mqa_weight_part1" in p)
    assert rotary.rows == (1, 1) and rotary.row_consts == (-16, 0)  # the last 16 rows
    with pytest.raises(TensorProgError, match=r"q_b_proj.weight is split into row blocks, and "
                       r"µP gives them different LRs: \S+_part0 \(n/base\)\^-0, "
                       r"\S+_part1 \(n/base\)\^-1"):
        MuP(traced, "sgd")
    scales = MuP(traced, "adam").grad_scales(_deepseek(4 * WIDTHS[0], rope=16))
    q_b = scales["model.layers.0.self_attn.q_b_proj.weight"].unflatten(0, (4, -1))
    assert (q_b[:, -16:] == 0.25).all() and (q_b[:, :-16] == 1).all()  # each head's rotary rows
    # with heads of 16 growing in number (the zoo's head_dim scaling), one rotary key head
    # serves them all: derive refuses the finite key dim, as it does the program written so
    fixed = HAND  # heads of 16 + 8 features, n / 16 of them: the zoo's head_dim scaling
    for old, new in (("dn = n / 2", "dn = 16"), ("dr = n / 4", "dr = 8"),
                     ("qn = 2 * n", "qn = n"), ("qp = n ", "qp = n / 2 ")):
        fixed = fixed.replace(f"dim {old}", f"dim {new}")
    with pytest.raises(TensorProgError, match="keys .* have the finite dim dr"):
        derive(parse(fixed), "adam")


def test_deepseek_v2s_complex_rotary_derives_the_hand_written_attention():
    # DeepSeek-V2: V3's MLA with its rotary written with complex numbers (view_as_complex,
    # a product with torch.polar(1, angles), view_as_real: ops_complex.py), the same rotation
    # of the pairs (2i, 2i + 1) as V3's interleaved form; the rotated parts are their vectors
    def v2(n):
        cfg = transformers.DeepseekV2Config(
            hidden_size=n, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
            vocab_size=64, intermediate_size=2 * n, max_position_embeddings=32,
            q_lora_rank=n // 2, kv_lora_rank=n // 4, qk_nope_head_dim=n // 2,
            qk_rope_head_dim=n // 4, v_head_dim=n // 2, first_k_dense_replace=1,
            use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            attn_implementation="sdpa")
        return transformers.DeepseekV2ForCausalLM(cfg)

    traced = from_torch(v2, WIDTHS, _tokens)
    assert sum("rotary embedding, an exact rotation" in s for s in traced.source.splitlines()) \
        == 2, traced.source  # q_pe and the shared k_pe
    got, want = derive(traced.program, "adam").abc, derive(parse(HAND), "adam").abc
    for hand, name in NAMES.items():
        assert got[_traced(name)] == want[hand], hand


def _dots3(n, rotary=True):
    """One layer of Dots.llm3 (dense MLP), 4 heads: MLA whose latents are scaled by
    sqrt(n / rank) before their projections (the compressed kv kept (b, 1, t, r)), a norm of
    the rotary key, a per-head sigmoid gate, and DeepSeek-V3.2's indexer under no_grad (a top-k
    of every key: a constant mask). ``rotary=False``: the rotary tables' frequencies zeroed, a
    rotation by 0, as the program writes a rotary (an exact rotation: its vector itself)."""
    cfg = transformers.Dots3NoteTextConfig(
        hidden_size=n, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
        vocab_size=64, intermediate_size=2 * n, max_position_embeddings=32, q_lora_rank=n // 2,
        kv_lora_rank=n // 4, qk_nope_head_dim=n // 8, qk_rope_head_dim=n // 8,
        v_head_dim=n // 8, index_n_heads=2, index_head_dim=n // 4, head_dim=n // 4,
        rms_norm_eps=1e-6, use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    cfg._attn_implementation = "sdpa"
    model = transformers.Dots3NoteForCausalLM(cfg)
    for name, buf in model.named_buffers():
        if not rotary and "inv_freq" in name:
            buf.zero_()
    return model


@pytest.mark.slow
def test_dots3_traces_to_the_model():
    # the model's norms at the program's eps (1e-6) and its rotary at angle 0, the rest as it
    # comes: the emitted program computes it to the float32 its norms cast to
    traced = from_torch(_dots3, WIDTHS, _tokens)
    assert "spread(v_sigmoid" in traced.source and "indexer" not in traced.source
    traced_computes_the_model(traced, lambda n: _dots3(n, rotary=False), _tokens, tol=1e-6)
