"""The zoo's config plumbing for configs of an unusual shape (benchmarks/zoo.py builds every
family small; this fits what it sets to a config's own structure). Rules by structure, not by
family: a model class that takes one part of a composite config, per-layer lists kept as long
as the layers, a sub-config's heads and sizes set as its parent's. A family named here is one
whose config cannot be read for the rule (its reason in a comment)."""

from __future__ import annotations

from typing import NamedTuple


def model_config(cls, model_cls):
    """The config class ``model_cls`` is built from: ``cls``, or the part of the composite
    ``cls`` it takes (Emu3ForCausalLM takes Emu3Config's text_config, an Emu3TextConfig, as a
    user builds the text model alone): built from the whole, it read the part's fields off the
    whole, which has none of them (pad_token_id, dropout)."""
    part = getattr(model_cls, "config_class", None)
    if part is not cls and part in (getattr(cls, "sub_configs", None) or {}).values():
        return part
    return cls


def computed(cls, name: str) -> bool:
    """Whether config ``cls`` computes its field ``name`` from others and will not take it:
    a property with no setter, or one that raises NotImplementedError (ProphetNet's and
    Funnel's num_hidden_layers, the sum of their parts' or blocks'; LongCat-Flash's, twice its
    num_layers, takes it)."""
    prop = getattr(cls, name, None)
    if not isinstance(prop, property):
        return False
    if prop.fset is None:
        return True
    try:
        prop.fset(None, 0)
    except NotImplementedError:
        return True
    except Exception:  # noqa: BLE001 - a setter that sets something: it takes the field
        return False
    return False


def fit_init(model) -> None:
    """Each batch norm's gain that the model's init drew at random set to 1, torch's default
    and the one the convolutional papers train from (a gain set to a constant, 1 or a
    residual branch's closing 0, stays). HF's EfficientNet draws every Linear, Conv2d and
    BatchNorm2d weight from N(0, initializer_range = 0.02) (MobileViT's two versions draw their
    batch norms' gains so too; the trace refuses them before their init matters): each batch
    norm then scales its
    channels by about 0.02, and where its input's variance is below the norm's eps (1e-3) it
    no longer normalises, so the image's signal falls to about 1e-13 at the classifier. In a
    seed whose two images have one class the batch norms, which take off the mean of their
    gradient over the batch (the part the two images share), leave a gradient of about 1e-35
    to every layer before the last block: far below Adam's eps, nothing there moved, and the
    check had no slope to fit for 16 vectors ("exactly zero in its change in seed 1")."""
    import torch  # heavy: imported only when a model is built

    for m in model.modules():
        w = getattr(m, "weight", None)
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or w is None \
                or w.is_meta or w.numel() < 2:
            continue
        with torch.no_grad():
            if bool((w != w.flatten()[0]).any()):
                w.fill_(1.0)


class Sizes(NamedTuple):
    """The zoo's sizes a rule reads: the width of the model built, its layers and a staged
    model's stages, the narrowest width the zoo builds and its heads there, and the tokens of
    its inputs."""

    width: int
    layers: int
    stages: int
    narrowest: int
    narrowest_heads: int
    tokens: int


def fit(cls, defaults: dict, kwargs: dict, sizes: Sizes) -> dict:
    """``kwargs``, the zoo's fields for config ``cls`` (whose fields at their defaults are
    ``defaults``), fitted to the config's structure."""
    _layer_rules(cls, defaults, kwargs, sizes)
    _stage_rules(cls, defaults, kwargs, sizes)
    _attention_channels(defaults, kwargs, sizes)
    return kwargs


def _attention_channels(defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """Attention channels left to default to the channels of what the attention reads
    (Perceiver's qk_channels and v_channels, None): its cross-attention then takes those of
    the inputs it attends to (cross_attention_shape_for_attention "kv"), which a preprocessor
    may fix whatever the width (the image classifier's 256 channels of a 1x1 convolution and
    256 of learned positions, concatenated: 512 at every width), so that the cross-attention's
    queries, keys and values would stay 512 channels while the latents grow. The width, as its
    self-attention's channels are (theirs default to the latents'); where the inputs have the
    width's channels (the masked LM's embeddings) this is what they take already."""
    if "cross_attention_shape_for_attention" not in defaults:
        return
    for f in ("qk_channels", "v_channels"):
        if f in defaults and defaults[f] is None:
            kwargs[f] = sizes.width


def _layer_rules(cls, defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """A language model's: its layers' pattern, rotary parameters and experts."""
    for f, v in defaults.items():
        if _runs(v) and sum(len(kinds) * n for kinds, n in v) == _layers(defaults):
            # a per-layer pattern as runs of (kinds, repeats) (GPT-Neo's attention_types,
            # [[["global", "local"], 12]] for its 24 layers): its first layers, as one run
            kinds = [k for ks, n in v for k in ks * n][:sizes.layers]
            kwargs[f] = [[kinds, 1]]
    if "layer_types" in defaults and defaults["layer_types"] is None and \
            "layer_types" not in kwargs:
        # layer types a config leaves unset after its own defaults (LFM2-MoE's, which its
        # layers read, layer_types[i] != "conv"): none builds at its defaults. LFM2's own
        # default, attention at every layer (its full_attn_idxs unset)
        kwargs["layer_types"] = ["full_attention"] * sizes.layers
    _ssm_heads(defaults, kwargs, sizes)
    heads, kv = kwargs.get("num_attention_heads"), kwargs.get("num_key_value_heads")
    if isinstance(defaults.get("index_num_heads"), int) and heads and kv:
        # an indexer that scores keys with the leading query heads of key head 0 (Kolibri
        # 1.1's 12): at most the query heads a key head has, 1 with the zoo's key/value heads
        kwargs["index_num_heads"] = min(defaults["index_num_heads"], heads // kv)
    _each_kind(cls, defaults, kwargs)
    shared, total = defaults.get("num_kv_shared_layers"), _layers(defaults)
    if isinstance(shared, int) and total:
        # the layers that read an earlier layer's keys and values are the last ones (Gemma-3n's
        # last 15 of 35): those of them among the zoo's, the config's first, none
        kwargs["num_kv_shared_layers"] = max(0, shared - (total - sizes.layers))
    if computed(cls, "num_hidden_layers"):
        _blocks(cls, defaults, kwargs, sizes)
    if isinstance(defaults.get("axial_pos_shape"), list):
        _reformer(defaults, kwargs, sizes)
    types = kwargs.get("layer_types")
    if defaults.get("rope_parameters") == {} and isinstance(types, list):
        # rotary parameters per layer type that the defaults leave empty (Cohere-Compass's
        # text model, whose rotary table reads rope_parameters[layer_type] for each of its
        # layers' types): none builds at its defaults. Each type the plain rotary table
        kwargs["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": 10_000.0}
                                     for t in dict.fromkeys(types)}
    for f in ("n_shared_experts", "num_shared_experts"):
        if f in defaults and defaults[f] is None and kwargs.get("n_routed_experts"):
            # a count of shared experts left unset beside routed ones the zoo sets (Dots1's
            # defaults set neither, and its MoE layer then multiplies by None): one shared
            # expert, as the released models have some (dots.llm1: 2)
            kwargs[f] = 1
    if getattr(cls, "model_type", None) == "dbrx" and "attn_config" in kwargs:
        # DBRX's attention reads attn_config.rope_theta, a field its attention config does not
        # have (transformers 5's DbrxAttentionConfig): no DBRX builds without it, its default
        # config included. It is stored and never used (the rotary table reads the model's
        # rope_parameters): their theta
        theta = (defaults.get("rope_parameters") or {}).get("rope_theta", 10_000.0)
        kwargs["attn_config"].rope_theta = theta
        if kwargs["attn_config"].clip_qkv is None:
            # and its forward clamps q, k, v to ±clip_qkv, which raises at its default (None:
            # torch's clamp with neither bound): the released models' 8
            kwargs["attn_config"].clip_qkv = 8.0


def _stage_rules(cls, defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """A staged vision model's: what the zoo's per-stage lists leave inconsistent."""
    if isinstance(defaults.get("down_ops"), list) and "hidden_sizes" in kwargs:
        _levit(defaults, kwargs)
    if isinstance(defaults.get("width_coefficient"), int | float) and \
            isinstance(defaults.get("num_block_repeats"), list):
        _efficientnet(defaults, kwargs, sizes)
    if isinstance(defaults.get("block_configs"), list) and "scale" in defaults:
        _pp_lcnet(cls, defaults, kwargs, sizes)
    if isinstance(defaults.get("num_query_pool"), int) and "depths" in kwargs:
        # Hiera pools its queries on entering each of its first num_query_pool stages after
        # the first (3 of its 4): the zoo's stages have one such entry
        kwargs["num_query_pool"] = min(defaults["num_query_pool"], len(kwargs["depths"]) - 1)
    if getattr(cls, "model_type", None) == "cvt" and isinstance(kwargs.get("depth"), list):
        # CvT's stage i reads the i-th of its own layers' drop-path rates (a list as long as
        # its depth: transformers' modeling_cvt), so stage i needs i + 1 layers or more: 1 and
        # 2, its defaults' first two stages
        kwargs["depth"] = [i + 1 for i in range(len(kwargs["depth"]))]
        # and its classifier reads the last stage's class token (its defaults' last stage has
        # one; the zoo's last stage, their second, had none): the last stage keeps it
        kwargs["cls_token"] = [*kwargs["cls_token"][:-1], defaults["cls_token"][-1]]
    if isinstance(defaults.get("num_groups"), int) and "hidden_sizes" in kwargs:
        # a group norm's groups (BiT's 32) the same at every width, each of channels ∝ n, as
        # a layer norm's one group: at most the narrowest channels it normalises at the zoo's
        # narrowest width (a bottleneck's quarter of its stage's n: 16 at width 64)
        kwargs["num_groups"] = min(defaults["num_groups"], sizes.narrowest // 4)


def _runs(v) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(r, list | tuple) and len(r) == 2 and isinstance(r[0], list)
        and isinstance(r[1], int) for r in v)


def _layers(defaults: dict):
    return next((defaults[f] for f in ("num_hidden_layers", "num_layers", "n_layer", "n_layers")
                 if isinstance(defaults.get(f), int)), None)


def _each_kind(cls, defaults: dict, kwargs: dict) -> None:
    """The zoo's layers are its config's first ones (its layer types cut to their first
    entries); a config that refuses them, as it requires a layer of a kind they miss
    (OLMo-Hybrid's attention among its linear-attention layers, NeoMME's full attention among
    its sliding-window ones), gets its first layer of each kind instead, in their order, as
    many kinds as the zoo's layers can hold."""
    field = (getattr(cls, "attribute_map", {}) or {}).get("layer_types", "layer_types")
    cut, full = kwargs.get(field), defaults.get(field)
    if not (isinstance(cut, list) and isinstance(full, list)) or set(full) <= set(cut):
        return
    if _builds(cls, kwargs):
        return
    firsts = sorted(full.index(k) for k in dict.fromkeys(full))[:len(cut)]
    rest = [i for i in range(len(full)) if i not in firsts]
    each = [full[i] for i in sorted(firsts + rest[:len(cut) - len(firsts)])]
    if _builds(cls, {**kwargs, field: each}):  # else what refuses it is not the kinds
        kwargs[field] = each


def _builds(cls, kwargs: dict) -> bool:
    try:
        cls(**kwargs)
    except Exception:  # noqa: BLE001 - the config refuses these fields
        return False
    return True


def _levit(defaults: dict, kwargs: dict) -> None:
    """LeViT's own lists (its structure alone: no other config has them). Its key dims per
    stage (16 of heads of 32) keep that proportion to the zoo's head dims; its down_ops, one
    subsampling attention between two stages (each [kind, key dim, heads, attention ratio, MLP
    ratio, stride]; as many as its stages, the last one unused, and with the zoo's first two
    stages a second one read stages past the last), its first, its heads in their default
    proportion to the first stage's (8 of 4) and its key dim the stage's. Its stem is four
    stride-2 convolutions, patches of 16 whatever patch_size says (it sizes the position
    biases): its own 16, and an image of 4 x 4 patches, whose 2 x 2 grid after the subsampling
    keeps more than one key."""
    sizes, heads = kwargs["hidden_sizes"], kwargs["num_attention_heads"]
    own_head = defaults["hidden_sizes"][0] // defaults["num_attention_heads"][0]
    keys = [max(1, size // h * defaults["key_dim"][0] // own_head)
            for size, h in zip(sizes, heads, strict=True)]
    kwargs["key_dim"] = keys
    op = defaults["down_ops"][0]
    ratio = op[2] // defaults["num_attention_heads"][0]
    kwargs["down_ops"] = [[op[0], keys[i], heads[i] * ratio, *op[3:]]
                          for i in range(len(sizes) - 1)]
    kwargs["patch_size"] = defaults["stride"] ** 4
    kwargs["image_size"] = 4 * kwargs["patch_size"]


def _efficientnet(defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """EfficientNet's width is its width_coefficient, as MobileNet's depth_multiplier: each
    convolution's channels its base count (32 in the stem, 16 and 24 out of the first two
    stages, its stages' lists as long as in_channels; 1280 in the last convolution, which
    hidden_dim, the classifier's fan-in, repeats) times it, rounded to depth_divisor. At n/128
    with no rounding (a divisor of 1) every count is an exact multiple of n/32 from width 64
    on (the stem n/4, the last convolution 10n), a squeeze-and-excitation's quarter of its
    input included (n/32 at the least, 2 channels at width 64: at n/256 it was one, which
    reads as no width). Its first two stages, one block each (a depth_coefficient of 1 leaves
    the repeats as they are)."""
    stages = len(defaults["in_channels"])
    for f, v in defaults.items():
        if isinstance(v, list) and len(v) == stages:
            kwargs[f] = v[:sizes.stages]
    kwargs["num_block_repeats"] = [1] * sizes.stages
    kwargs.update(width_coefficient=sizes.width / 128, depth_coefficient=1.0, depth_divisor=1)
    kwargs["hidden_dim"] = 1280 * sizes.width // 128



def _pp_lcnet(cls, defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """PP-LCNet's width is its scale, as MobileNet's depth_multiplier: each convolution's
    channels its base count (16 in the stem, 32 to 512 out of its stages) times it, rounded to
    divisor. At n/512 with no rounding every count is an exact multiple of n/32 from width 64
    on (its last stage's n), and its head's expansion (class_expand, 1280 channels at every
    scale) keeps its default proportion to the last stage's, 2.5n. A config that refuses the
    zoo's stages (PP-LCNet's validation requires its five) keeps every stage, each its first
    block (whose input channels are the stage before's first block's output)."""
    kwargs.update(scale=sizes.width / 512, divisor=1, class_expand=1280 * sizes.width // 512)
    if not _builds(cls, kwargs):  # every stage, one block each
        kwargs["block_configs"] = [stage[:1] for stage in defaults["block_configs"]]
        kwargs["depths"] = [1] * len(defaults["block_configs"])
        if isinstance(defaults.get("stage_names"), list):
            kwargs["stage_names"] = defaults["stage_names"]


def _ssm_heads(defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """Heads that span expand x the width (Mamba-2's, 128 of 64 over its 2 x 4096 inner
    channels; its config checks it): the zoo's heads, each of expand x n / heads channels, and
    a group of B and C per head (n_groups = heads, as zoo._mamba2 sets them and says why)."""
    heads, dim = defaults.get("num_heads"), defaults.get("head_dim")
    expand, hidden = defaults.get("expand"), defaults.get("hidden_size")
    if not all(isinstance(v, int) for v in (heads, dim, expand, hidden)) \
            or heads * dim != expand * hidden or not isinstance(kwargs.get("num_heads"), int):
        return
    kwargs["head_dim"] = expand * sizes.width // kwargs["num_heads"]
    if isinstance(defaults.get("n_groups"), int):
        kwargs["n_groups"] = kwargs["num_heads"]


def _blocks(cls, defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """A config whose layer count is the sum of its blocks' (Funnel's block_sizes, [4, 4, 4],
    with a pooling of the tokens between two blocks): its first layers, as blocks of the same
    sizes cut there ([2]: its first block's first two), the lists of its blocks' other fields
    (block_repeats) as long."""
    try:
        total = cls().num_hidden_layers
    except Exception:  # noqa: BLE001 - no defaults to count
        return
    for f, v in defaults.items():
        if isinstance(v, list) and len(v) > 1 and all(isinstance(b, int) and b > 0 for b in v) \
                and sum(v) == total:
            cut, left = [], sizes.layers
            for b in v:
                if left > 0:
                    cut.append(min(b, left))
                    left -= cut[-1]
            kwargs[f] = cut
            kwargs.update({g: w[:len(cut)] for g, w in defaults.items()
                           if g != f and isinstance(w, list) and len(w) == len(v)})


def _reformer(defaults: dict, kwargs: dict, sizes: Sizes) -> None:
    """Reformer's own fields: its layers are its attn_layers (its layer count their length),
    the first ones; its axial position table, whose parts' dims sum to the width (64 and 192
    of 256) keeps their proportion (n/4, 3n/4), and whose shape, in training, is the
    sequence's exactly (64 x 64 of its 4096 tokens): 2 x 4 of the zoo's 8; its attention's
    chunks of tokens (64) at most the sequence, whose length they divide in training."""
    kwargs["attn_layers"] = defaults["attn_layers"][:sizes.layers]
    dims, hidden = defaults["axial_pos_embds_dim"], defaults["hidden_size"]
    kwargs["axial_pos_embds_dim"] = [d * sizes.width // hidden for d in dims]
    kwargs["axial_pos_shape"] = [2, sizes.tokens // 2]
    for f in ("local_attn_chunk_length", "lsh_attn_chunk_length"):
        if isinstance(defaults.get(f), int):
            kwargs[f] = min(defaults[f], sizes.tokens)
