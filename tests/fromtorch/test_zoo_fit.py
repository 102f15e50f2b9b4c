"""The zoo's config plumbing for configs of an unusual shape (benchmarks/zoo_fit.py): each rule
pinned on the family it was found on, by the fields it sets, and the models that needed their
own forward fixed (a field their modeling reads and their config lacks) built and run."""

import pytest
from conftest import ROOT, import_file

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def zoo():
    pytest.importorskip("transformers")
    return import_file(ROOT / "benchmarks" / "zoo.py", "zoo")


@pytest.fixture(scope="module")
def t():
    return pytest.importorskip("transformers")


def test_a_model_class_taking_one_part_of_a_composite_config_is_built_from_that_part(zoo, t):
    # Emu3ForCausalLM takes Emu3Config's text part: built from the whole, it read the part's
    # fields off the whole (pad_token_id); a class taking the whole keeps it
    assert zoo._fit.model_config(t.Emu3Config, t.Emu3ForCausalLM) is t.Emu3TextConfig
    assert zoo._fit.model_config(t.MusicgenConfig, t.MusicgenForCausalLM) is \
        t.MusicgenDecoderConfig
    assert zoo._fit.model_config(t.LlamaConfig, t.LlamaForCausalLM) is t.LlamaConfig


def test_layer_patterns_are_cut_to_the_zoos_first_layers(zoo, t):
    # GPT-Neo's runs of (kinds, repeats): its first two layers as one run
    assert zoo.config_kwargs(t.GPTNeoConfig, 64, "heads")["attention_types"] == [
        [["global", "local"], 1]]
    # Zamba's layer types under their alias, layers_block_type: its first two
    assert zoo.config_kwargs(t.ZambaConfig, 64, "heads")["layers_block_type"] == [
        "linear_attention", "linear_attention"]
    # OLMo-Hybrid refuses two linear-attention layers (it needs an attention layer): its first
    # layer of each kind; Gemma-2's first two, which it takes, stay
    assert zoo.config_kwargs(t.OlmoHybridConfig, 64, "heads")["layer_types"] == [
        "linear_attention", "full_attention"]
    assert zoo.config_kwargs(t.Gemma3TextConfig, 64, "heads")["layer_types"] == [
        "sliding_attention", "sliding_attention"]
    # Gemma-3n's last 15 of 35 layers share keys and values: none of its first two
    assert zoo.config_kwargs(t.Gemma3nTextConfig, 64, "heads")["num_kv_shared_layers"] == 0
    # LFM2-MoE leaves its layer types unset: LFM2's default, attention everywhere
    assert zoo.config_kwargs(t.Lfm2MoeConfig, 64, "heads")["layer_types"] == [
        "full_attention"] * 2
    # ProphetNet's and Funnel's layer counts are computed: set through their parts and blocks
    kw = zoo.config_kwargs(t.ProphetNetConfig, 64, "heads", zoo.MAPPINGS["seq2seq"])
    assert "num_hidden_layers" not in kw
    assert (kw["num_encoder_layers"], kw["num_decoder_layers"]) == (2, 2)
    assert (kw["num_encoder_attention_heads"], kw["num_decoder_attention_heads"]) == (4, 4)
    kw = zoo.config_kwargs(t.FunnelConfig, 64, "heads", zoo.MAPPINGS["masked"])
    assert (kw["block_sizes"], kw["block_repeats"]) == ([2], [1])
    assert "num_hidden_layers" not in kw


def test_sizes_follow_the_width_and_the_heads(zoo, t):
    # Mamba-2's heads span 2 x the width: 4 of n/2 at 4 heads, heads of 16 (2n/16 of them)
    # with heads of 16, and a group of B and C per head (as each query head its own key head)
    kw = zoo.config_kwargs(t.Mamba2Config, 128, "heads")
    assert (kw["num_heads"], kw["head_dim"], kw["n_groups"]) == (4, 64, 4)
    kw = zoo.config_kwargs(t.Mamba2Config, 256, "head_dim")
    assert (kw["num_heads"], kw["head_dim"], kw["n_groups"]) == (32, 16, 32)
    # Reformer's axial position dims sum to the width (1/4 and 3/4 of it), its shape the
    # sequence's 8 tokens, its chunks at most the sequence
    kw = zoo.config_kwargs(t.ReformerConfig, 128, "heads")
    assert (kw["axial_pos_embds_dim"], kw["axial_pos_shape"]) == ([32, 96], [2, 4])
    assert (kw["attn_layers"], kw["local_attn_chunk_length"]) == (["local", "lsh"], 8)
    # the vocabularies besides the tokens' are the zoo's tiny one; Gemma-4's per-layer inputs
    # n/8 (256 of 2304, about 1/9)
    kw = zoo.config_kwargs(t.Gemma4TextConfig, 128, "heads")
    assert (kw["vocab_size_per_layer_input"], kw["hidden_size_per_layer_input"]) == (256, 16)
    assert zoo.config_kwargs(t.LukeConfig, 64, "heads", zoo.MAPPINGS["masked"])[
        "entity_vocab_size"] == 256
    # Kolibri-1.1's indexer heads at most the query heads of a key head (1), its dense MLP 4n
    kw = zoo.config_kwargs(t.Kolibri1_1Config, 64, "heads")
    assert (kw["index_num_heads"], kw["mlp_only_intermediate_size"]) == (1, 256)
    # Perceiver's latents are its width, their self-attentions its layers (26 by default)
    kw = zoo.config_kwargs(t.PerceiverConfig, 64, "head_dim", zoo.MAPPINGS["masked"])
    assert (kw["d_latents"], kw["num_self_attends_per_block"]) == (64, 2)
    assert (kw["num_self_attention_heads"], kw["num_cross_attention_heads"]) == (4, 4)
    # MobileBERT's blocks run at its bottleneck, a quarter of the width (128 of 512), which its
    # attention and stacked FFNs read (true_hidden_size); its embedding the width's
    kw = zoo.config_kwargs(t.MobileBertConfig, 128, "heads", zoo.MAPPINGS["masked"])
    assert (kw["intra_bottleneck_size"], kw["embedding_size"]) == (32, 128)
    assert t.MobileBertConfig(**kw).true_hidden_size == 32
    # Dots1's shared experts, unset beside the zoo's routed ones: one
    assert zoo.config_kwargs(t.Dots1Config, 64, "heads")["n_shared_experts"] == 1
    # Dots.llm3's shared experts' MLP (1536 by default), 4n as every expert's
    kw = zoo.config_kwargs(t.Dots3NoteTextConfig, 64, "heads")
    assert kw["shared_experts_intermediate_size"] == kw["moe_intermediate_size"] == 256


def test_attention_channels_that_default_to_their_inputs_grow_with_the_width(zoo, t):
    # Perceiver's cross-attention takes its inputs' channels by default: the image
    # classifier's preprocessor fixes them at 512, so the zoo gives them the width
    for width in (64, 128):
        kw = zoo.config_kwargs(t.PerceiverConfig, width, "heads", zoo.MAPPINGS["image"])
        assert kw["qk_channels"] == kw["v_channels"] == kw["d_latents"] == width


def test_image_configs_keep_their_structure(zoo, t):
    image = zoo.MAPPINGS["image"]
    # BiT's group norms: 16 groups at every width (its 32 do not divide a bottleneck's 16)
    assert zoo.config_kwargs(t.BitConfig, 128, "heads", image)["num_groups"] == 16
    # LeViT: key dims half the head dim, one subsampling between its two stages, its stem's
    # stride of 16 and an image of 4 x 4 patches
    kw = zoo.config_kwargs(t.LevitConfig, 128, "head_dim", image)
    assert (kw["key_dim"], kw["down_ops"]) == ([8, 8], [["Subsample", 8, 16, 4, 2, 2]])
    assert (kw["patch_size"], kw["image_size"]) == (16, 64)
    # CvT's stage i reads i + 1 layers' drop-path rates; its classifier the last class token
    kw = zoo.config_kwargs(t.CvtConfig, 64, "heads", image)
    assert (kw["depth"], kw["cls_token"]) == ([1, 2], [False, True])
    # EfficientNet's and PP-LCNet's widths are their multipliers, nothing rounded
    kw = zoo.config_kwargs(t.EfficientNetConfig, 256, "heads", image)
    assert (kw["width_coefficient"], kw["depth_divisor"], kw["hidden_dim"]) == (2.0, 1, 2560)
    assert (kw["in_channels"], kw["num_block_repeats"]) == ([32, 16], [1, 1])
    kw = zoo.config_kwargs(t.PPLCNetConfig, 128, "heads", image)
    assert (kw["scale"], kw["divisor"], kw["class_expand"]) == (0.25, 1, 320)
    assert kw["depths"] == [1] * 5 and all(len(stage) == 1 for stage in kw["block_configs"])
    # Hiera pools its queries entering its second stage, the zoo's last
    assert zoo.config_kwargs(t.HieraConfig, 64, "heads", image)["num_query_pool"] == 1


def test_a_batch_norms_gain_drawn_at_random_is_set_to_one(zoo):
    # HF's EfficientNet draws its batch norms' gains from N(0, 0.02): the signal fell to 1e-13
    # at its classifier and the check's gradients below Adam's eps (no slope to fit)
    torch.manual_seed(0)
    model = zoo.builder("efficientnet", "heads", mapping=zoo.MAPPINGS["image"])(64)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    x = zoo.example_inputs(zoo.MAPPINGS["image"], real=True)(model)
    with torch.no_grad():
        assert zoo._logits(model(*x)).pow(2).mean().sqrt() > 1e-4
    # a gain set to a constant stays (a residual branch's closing 0); other weights stay
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        net[1].weight.zero_()
        net[2].weight.normal_(0, 0.02)
    linear = net[0].weight.clone()
    zoo._fit.fit_init(net)
    assert torch.equal(net[1].weight, torch.zeros(4)) and torch.equal(net[2].weight, torch.ones(4))
    assert torch.equal(net[0].weight, linear)


@pytest.mark.parametrize(("family", "mapping"), [
    # DBRX's attention reads a rope_theta its config lacks and clamps by clip_qkv (None by
    # default: torch's clamp raises); CvT's and LeViT's stages read past their lists; MusicGen
    # reads a row of tokens per codebook; PP-LCNet returns its logits as last_hidden_state
    ("dbrx", "causal"), ("cvt", "image"), ("levit", "image"), ("musicgen", "causal"),
    ("pp_lcnet", "image"),
])
def test_zoo_builds_and_runs_families_whose_own_code_needed_a_field(zoo, family, mapping):
    torch.manual_seed(0)
    model = zoo.builder(family, "heads", mapping=zoo.MAPPINGS[mapping])(64).eval()
    x = zoo.example_inputs(zoo.MAPPINGS[mapping], real=True)(model)
    with torch.no_grad():
        y = zoo._logits(model(*x))
    assert torch.isfinite(y).all()
    if family == "musicgen":  # 4 codebooks of 2 sequences, one row each
        assert x[0].shape == (8, zoo.SEQ) and y.shape[:2] == (8, zoo.SEQ)
    else:
        assert y.shape[0] == 2
