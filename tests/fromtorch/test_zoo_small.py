"""The zoo's per-family function (benchmarks/zoo.py) on tiny models, and what the user-model
coordinate check says about a run: module paths for its vectors, and the small-update regime."""

import pytest
from conftest import ROOT, import_file

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    pytest.importorskip("transformers")
    return import_file(ROOT / "benchmarks" / "zoo.py", "zoo")


def test_zoo_llama_passes_derives_and_applies_bit_identically(zoo):
    # HF Llama, 4 heads (head dim n/4), built by the zoo's config plumbing, traced at 32/64 and
    # checked at 128/256 with one seed (128..512 is the smallest range the zoo trusts; at
    # 64..256 the second block's logits read -0.27, docs/torch.md)
    r = zoo.run_scaling("llama", "heads", widths=(128, 256), trace_widths=(32, 64), seeds=(0,))
    assert r["status"] == "pass", r
    assert r["bit_identical"] and r["notes"] == []
    assert r["sp"].startswith("fails") and "model.layers." in r["sp"]  # named by module path


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_zoo_gpt2_derives_and_applies_bit_identically(zoo):
    # GPT-2's fused qkv and tied unembedding are forward patches: at the base width their
    # factor is exactly 1, so params and logits are bit-identical
    r = zoo.run_scaling("gpt2", "head_dim", trace_widths=(32, 64), check=False)
    assert r["status"] == "applied" and r["bit_identical"], r


def test_zoo_build_failure_and_config_plumbing(zoo):
    kw = zoo.config_kwargs(__import__("transformers").GPT2Config, 128, "head_dim")
    # GPT-2 spells the fields n_embd, n_head, n_layer, n_inner: reached through attribute_map
    # and the zoo's table of other spellings
    assert (kw["n_embd"], kw["n_head"], kw["n_layer"], kw["n_inner"]) == (128, 8, 2, 512)
    assert kw["resid_pdrop"] == 0.0 and kw["vocab_size"] == 256
    r = zoo.run_scaling("no_such_family", "heads")
    assert r["status"] == "build"


def test_zoo_sizes_a_config_fixes_follow_the_head_dim_and_the_width(zoo):
    t = __import__("transformers")
    # GPT-J's rotary_dim 64 turns a quarter of its heads of 256
    assert zoo.config_kwargs(t.GPTJConfig, 64, "heads")["rotary_dim"] == 4
    kw = zoo.config_kwargs(t.DeepseekV3Config, 128, "head_dim")
    assert (kw["qk_rope_head_dim"], kw["qk_nope_head_dim"], kw["v_head_dim"]) == (16, 32, 32)
    # low ranks 1536 and 512 of a width of 7168: about 1/4 and 1/16 of the width
    assert (kw["q_lora_rank"], kw["kv_lora_rank"]) == (32, 8)
    # Qwen4-exp's hyper-connection mix rank, 320 of 2048: about 1/8 of the width (fixed, a
    # bottleneck between layers of the width, which derive refuses)
    assert zoo.config_kwargs(t.Qwen4ExpTextConfig, 128, "head_dim")["hc_lowrank"] == 16
    assert zoo.config_kwargs(t.XLMConfig, 64, "heads")["causal"] is True


def test_zoo_gives_every_mamba2_head_its_own_group(zoo):
    """Mamba-2's fields under each family's names: heads over expand·n (head dim · heads =
    2n), n_groups = heads (a group of B and C per head, as a key/value head per query head),
    a state size of 16 per group."""
    t = __import__("transformers")
    kw = zoo.config_kwargs(t.Mamba2Config, 128, "head_dim")
    assert [kw[f] for f in ("num_heads", "head_dim", "n_groups", "state_size")] == [16, 16, 16, 16]
    kw = zoo.config_kwargs(t.BambaConfig, 64, "heads")
    assert [kw[f] for f in ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state")
            ] == [4, 32, 4, 16]
    kw = zoo.config_kwargs(t.NemotronHConfig, 64, "head_dim")
    assert [kw[f] for f in ("mamba_num_heads", "mamba_head_dim", "n_groups")] == [8, 16, 8]
    assert kw["moe_shared_expert_intermediate_size"] == 256
    kw = zoo.config_kwargs(t.Zamba2Config, 64, "head_dim")
    assert [kw[f] for f in ("n_mamba_heads", "mamba_headdim", "mamba_ngroups")] == [8, 16, 8]


def test_zoo_cuts_a_conformers_blocks_to_two_never_adds_any(zoo):
    t = __import__("transformers")
    # Phi-4-multimodal's audio encoder: 24 conformer blocks, 900M params at width 1024 (the
    # family timed out building it); Perceiver's one block stays one
    kw = zoo.config_kwargs(t.Phi4MultimodalConfig, 64, "heads")
    assert kw["audio_config"].num_blocks == 2
    assert zoo.config_kwargs(t.PerceiverConfig, 64, "heads")["num_blocks"] == 1


def test_zoo_plumbing_of_the_other_mappings(zoo):
    import transformers

    image, seq2seq = zoo.MAPPINGS["image"], zoo.MAPPINGS["seq2seq"]
    # a staged convnet keeps two stages of one layer, channels [n, 2n], its stem at n
    kw = zoo.config_kwargs(transformers.ResNetConfig, 64, "heads", image)
    assert (kw["hidden_sizes"], kw["depths"], kw["embedding_size"]) == ([64, 128], [1, 1], 64)
    assert kw["stage_names"] == ["stem", "stage1", "stage2"] and not zoo._has_heads(
        transformers.ResNetConfig)
    # HGNetV2's stem scales with its stages (32 and 48 of 128: n/4, n/2), its first stage
    # reading the stem's last; RegNet's groups stay 2 and 4 (groups_width n/2)
    kw = zoo.config_kwargs(transformers.HGNetV2Config, 64, "heads", image)
    assert (kw["stem_channels"], kw["stage_in_channels"]) == ([3, 16, 32], [32, 64])
    assert zoo.config_kwargs(transformers.RegNetConfig, 64, "heads", image)["groups_width"] == 32
    # MobileNet's width is its depth_multiplier, n/512, with nothing rounding channels off it
    kw = zoo.config_kwargs(transformers.MobileNetV2Config, 128, "heads", image)
    assert (kw["depth_multiplier"], kw["min_depth"], kw["depth_divisible_by"]) == (0.25, 1, 1)
    assert kw["finegrained_output"] is False
    assert zoo.config_kwargs(transformers.MobileNetV1Config, 64, "heads", image)[
        "depth_multiplier"] == 0.125
    # a ViT reads 32 x 32 images in patches of 8; T5 spells heads num_heads and head dim d_kv
    kw = zoo.config_kwargs(transformers.ViTConfig, 64, "head_dim", image)
    assert (kw["image_size"], kw["patch_size"], kw["num_attention_heads"]) == (32, 8, 4)
    kw = zoo.config_kwargs(transformers.T5Config, 64, "heads", seq2seq)
    assert (kw["num_heads"], kw["d_kv"], kw["num_decoder_layers"], kw["d_ff"]) == (4, 16, 2, 256)
    assert "is_decoder" not in kw
    # a seq2seq forward's target ids go at their own position, None for the optional inputs
    # between (as BART's and T5's: input_ids, attention_mask, decoder_input_ids)

    class Seq2Seq(nn.Module):
        def forward(self, input_ids, attention_mask=None, decoder_input_ids=None):
            return input_ids

    ids, mask, target = zoo.example_inputs(seq2seq)(Seq2Seq())
    assert mask is None and ids.shape == target.shape == (2, zoo.SEQ)
    # the target ids vary even in the trace (ids of one value given as an input are one row
    # of their table: EncoderDecoderModel's decoder, whose table is its own, lost its tokens)
    assert len(set(target.flatten().tolist())) > 1


def test_zoo_config_plumbing_of_families_that_crashed_or_were_refused(zoo):
    import transformers as t

    # EncoderDecoderModel's decoder reads the encoder (before: a decoder alone, the encoder
    # unused, and apply's KeyError on its attention scale)
    kw = zoo.config_kwargs(t.EncoderDecoderConfig, 64, "heads", zoo.MAPPINGS["seq2seq"])
    assert kw["decoder"].is_decoder and kw["decoder"].add_cross_attention
    assert not kw["encoder"].is_decoder and not kw["encoder"].add_cross_attention
    # HunYuan-MoE's default of one expert is a placeholder: the zoo's 4; so is its one expert
    # per token, its gate divided by the gates' sum (1 for every token: the trace refuses it),
    # as DBRX's: the zoo's top-2 (ZAYA's 1 per token stays the config's own)
    kw = zoo.config_kwargs(t.HunYuanMoEV1Config, 64, "heads")
    assert (kw["num_experts"], kw["moe_topk"]) == (4, 2)
    assert zoo.config_kwargs(t.DbrxConfig, 64, "heads")["ffn_config"].moe_top_k == 2
    # ESM needs a pad id (its positions count the tokens that are not padding)
    assert zoo.config_kwargs(t.EsmConfig, 64, "heads", zoo.MAPPINGS["masked"])[
        "pad_token_id"] == 1
    # LFM2's MLP at intermediate_size (4n), not rounded up to a multiple of 256
    assert zoo.config_kwargs(t.Lfm2Config, 64, "heads")["block_auto_adjust_ff_dim"] is False
    # MiniMax-M3's dense and shared-expert MLPs grow with the width (before: fixed at 12288
    # and 3072, a layer between two widths that µP reads as a readout and an input layer)
    from transformers.models.minimax_m3_vl.configuration_minimax_m3_vl import (
        MiniMaxM3VLTextConfig,
    )
    kw = zoo.config_kwargs(MiniMaxM3VLTextConfig, 64, "heads")
    assert (kw["dense_intermediate_size"], kw["shared_intermediate_size"]) == (256, 256)
    # DeepSeek-V3.2's indexer heads follow the head dim, as its rope and nope parts do (its
    # default 128 of a head of 192, 2/3 rounded to a power of two: 32 of 16 + 32)
    kw = zoo.config_kwargs(t.DeepseekV32Config, 128, "head_dim")
    assert (kw["qk_rope_head_dim"], kw["qk_nope_head_dim"], kw["index_head_dim"]) == (16, 32, 32)


@pytest.mark.parametrize(("family", "mapping"), [
    # before, each failed in its own forward (torch.export reported it): Swin's and Donut's
    # window of 7 on grids of 8 and 4, PVT's last stage pooled with its class token, HGNetV2's
    # classifier wider than its last stage, MobileViTV2's 1 x 1 grid, SigLIP2 fed an image
    # where it takes patches, ImageGPT and ShieldGemma-2 fed floats for ids (ShieldGemma-2's
    # image tokens pooled to a grid of 0), MiMo-V2-Flash's sliding layers with 0 key/value
    # heads per query head, Voxtral-Realtime and Gemma-4's assistant without their audio or
    # the states they draft from
    ("swin", "image"), ("donut-swin", "image"), ("pvt", "image"), ("hgnet_v2", "image"),
    ("mobilevitv2", "image"), ("siglip2", "image"), ("imagegpt", "image"),
    ("shieldgemma2", "image"), ("mimo_v2_flash", "causal"), ("voxtral_realtime", "seq2seq"),
    ("gemma4_unified_assistant", "causal"),
])
def test_zoo_builds_and_feeds_a_family_as_its_authors_do(zoo, family, mapping):
    torch.manual_seed(0)
    model = zoo.builder(family, "heads", mapping=zoo.MAPPINGS[mapping])(64).eval()
    x = zoo.example_inputs(zoo.MAPPINGS[mapping], real=True)(model)
    with torch.no_grad():
        y = zoo._logits(model(**x) if isinstance(x, dict) else model(*x))
    assert y.shape[0] == 2 and torch.isfinite(y).all()


def test_zoo_feeds_an_audio_lm_its_text_alone(zoo):
    # the audio features went to every forward taking input_features (GLM-ASR's, Audio
    # Flamingo 3's, Granite Speech's), which then failed on their masks left out; their text
    # decoders are what is traced, as before Voxtral-Realtime took its features
    model = zoo.builder("glmasr", "heads", mapping=zoo.MAPPINGS["seq2seq"])(64).eval()
    x = zoo.example_inputs(zoo.MAPPINGS["seq2seq"], real=True)(model)
    assert not isinstance(x, dict) or "input_features" not in x
    with torch.no_grad():
        y = zoo._logits(model(**x) if isinstance(x, dict) else model(*x))
    assert y.shape[0] == 2 and torch.isfinite(y).all()


def test_zoo_gives_switch_transformers_the_mask_export_needs(zoo):
    # its encoder makes a mask of ones from None only outside torch.export
    model = zoo.builder("switch_transformers", "heads", mapping=zoo.MAPPINGS["seq2seq"])(64)
    ids, mask, target = zoo.example_inputs(zoo.MAPPINGS["seq2seq"])(model)[:3]
    assert mask.dtype == torch.long and bool((mask == 1).all()) and mask.shape == ids.shape


class Tiny(nn.Module):
    """Embedding, a two-layer MLP block and a readout: the smallest model with hidden weights."""

    def __init__(self, n, vocab=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, n)
        self.mlp = nn.Sequential(nn.Linear(n, 2 * n), nn.ReLU(), nn.Linear(2 * n, n))
        self.head = nn.Linear(n, vocab)

    def forward(self, idx):
        h = self.emb(idx)
        return self.head(h + self.mlp(h))


def _tokens(model):
    return (torch.zeros(2, 8, dtype=torch.long),)


@pytest.fixture(scope="module")
def tiny():
    return MuP(from_torch(Tiny, (32, 64), _tokens), "adam")


def test_failing_vectors_are_named_by_module_path(tiny):
    bad = coord_check(tiny, (64, 128, 256), seeds=(0,), apply=False, tolerance=0.25)
    assert not bad.passed
    assert {"emb", "mlp.0", "mlp.2", "head"} <= set(bad.names.values()), bad.names
    # the verdict lines name the module, then the program's vector
    head = next(v for v, m in bad.names.items() if m == "head")
    assert f"head ({head}): blows up" in str(bad), str(bad)


def test_a_large_learning_rate_is_said_to_leave_the_small_update_regime(tiny):
    calm = coord_check(tiny, (64, 128, 256), seeds=(0,), tolerance=0.25)
    assert calm.small_updates and calm.regime_warning() == "", calm
    # under SGD at lr 4 the first MLP layer's change grows 3.9x faster than linearly from step
    # 2 to 3 at width 128 (none grows 8-fold: no divergence). Adam at lr 2 did it by 2.25, just
    # past the 2.2 threshold, with the readout's bias at one draw; at another (apply draws a
    # fixed-size bias anew) none of the Adam lrs tried (0.03 to 100) compounds in 3 steps
    wild = coord_check(MuP(tiny.traced, "sgd"), (64, 128, 256), seeds=(0,), lr=4.0,
                       tolerance=0.25)
    assert not wild.small_updates and wild.accelerating[0][:3] == ("linear", 128, 3)
    warning = wild.regime_warning()
    assert "not in the small-update regime" in warning and "(e.g. lr 1.3)" in warning, warning
    assert "mlp.0 (linear) grew 3.9x faster than linearly" in warning, warning
    assert "warning: not in the small-update regime" in str(wild)


class Bottleneck(Tiny):
    """An MLP whose inner size stays 48 at every width (an intermediate_size a config fixes)."""

    def __init__(self, n, vocab=32):
        super().__init__(n, vocab)
        self.mlp = nn.Sequential(nn.Linear(n, 48), nn.ReLU(), nn.Linear(48, n))


def test_a_width_dim_the_config_fixes_is_named_at_trace_time():
    traced = from_torch(Bottleneck, (32, 64), _tokens)
    assert len(traced.notes) == 1
    note = traced.notes[0]
    assert "dim f48 stays 48" in note and "mlp.0 maps the width to 48" in note
    assert "mlp.2 maps it back" in note and f"# note: {note}" in traced.source
    # with biases this one derives (the note says "may have none"); derive's refusal of a
    # bias-free gated one names the note too: tests/test_error_catalogue.py
    MuP(traced, "adam")
    # a dim that grows with the width is no bottleneck: the same model at 2n has no note
    assert from_torch(Tiny, (32, 64), _tokens).notes == []


def test_zoo_totals_count_the_families_that_pass_by_the_split(zoo):
    # a pass whose router logits passed by their parts (finite-width drift) is a pass, counted
    # apart in the totals line and named in its row
    def row(family, status, drift=()):
        detail = f"passed by the split: {', '.join(drift)}" if drift else ""
        return {s: {"family": family, "scaling": s, "status": status, "detail": detail,
                    "drift": list(drift), "time": 1, "sp": "fails"} for s in zoo.SCALINGS}

    results = {"a": row("a", "pass", ["gate"]), "b": row("b", "pass"), "c": row("c", "fail")}
    text = "\n".join(zoo._section(zoo.MAPPINGS["causal"], results))
    assert ("Totals: 2 pass (1 by the split of a vector's change: finite-width drift; 0 at "
            "the lower lr the check suggested), 1 fail") in text
    assert "| a | pass | fails | 1 | passed by the split: gate |" in text
    # a failing row whose check warned that its run left the small-update regime says so
    results["c"]["heads"].update(detail="1 vectors: decoder -0.75", regime="not in the "
                                 "small-update regime: the normalised head turns")
    text = "\n".join(zoo._section(zoo.MAPPINGS["causal"], results))
    assert "| c | fail | fails | 1 | 1 vectors: decoder -0.75; the check warns: not in the " \
        "small-update regime: the normalised head turns |" in text


def test_zoo_runs_a_composite_configs_family_in_both_scalings(zoo, monkeypatch):
    import transformers

    # CLIP's config keeps its heads in its parts (vision_config, text_config): read from the top
    # level alone it looked headless, ran once in the 4-head scaling, and that row stood in the
    # head-dim table as a fail "with heads of 16"
    ran = []
    monkeypatch.setattr(zoo, "run_scaling", lambda family, s, **kw: ran.append(s) or {})
    zoo.run_family("clip", zoo.MAPPINGS["image"])
    assert ran == list(zoo.SCALINGS)
    assert zoo._has_heads(transformers.SiglipConfig) and not zoo._has_heads(
        transformers.ResNetConfig)
    # and the head-dim scaling reaches the vision part: 8 heads of 16 at width 128
    kw = zoo.config_kwargs(transformers.CLIPConfig, 128, "head_dim", zoo.MAPPINGS["image"])
    assert kw["vision_config"].num_attention_heads == 8
