"""The zoo's config plumbing for configs of an unusual shape (benchmarks/zoo.py builds every
family small; this fits what it sets to a config's own structure). Rules by structure, not by
family: a model class that takes one part of a composite config, per-layer lists kept as long
as the layers, a sub-config's heads and sizes set as its parent's. A family named here is one
whose config cannot be read for the rule (its reason in a comment)."""

from __future__ import annotations


def model_config(cls, model_cls):
    """The config class ``model_cls`` is built from: ``cls``, or the part of the composite
    ``cls`` it takes (Emu3ForCausalLM takes Emu3Config's text_config, an Emu3TextConfig, as a
    user builds the text model alone): built from the whole, it read the part's fields off the
    whole, which has none of them (pad_token_id, dropout)."""
    part = getattr(model_cls, "config_class", None)
    if part is not cls and part in (getattr(cls, "sub_configs", None) or {}).values():
        return part
    return cls


def fit(cls, defaults: dict, kwargs: dict, layers: int, narrowest: int) -> dict:
    """``kwargs``, the zoo's fields for config ``cls`` of ``layers`` layers (whose fields at
    their defaults are ``defaults``), fitted to the config's structure; ``narrowest``: the
    zoo's narrowest width."""
    model_type = getattr(cls, "model_type", None)
    if isinstance(defaults.get("num_groups"), int) and "hidden_sizes" in kwargs:
        # a group norm's groups (BiT's 32) the same at every width, each of channels ∝ n, as
        # a layer norm's one group: at most the narrowest channels it normalises at the zoo's
        # narrowest width (a bottleneck's quarter of its stage's n: 16 at width 64)
        kwargs["num_groups"] = min(defaults["num_groups"], narrowest // 4)
    for f, v in defaults.items():
        if _runs(v) and sum(len(kinds) * n for kinds, n in v) == _layers(defaults):
            # a per-layer pattern as runs of (kinds, repeats) (GPT-Neo's attention_types,
            # [[["global", "local"], 12]] for its 24 layers): its first layers, as one run
            kinds = [k for ks, n in v for k in ks * n][:layers]
            kwargs[f] = [[kinds, 1]]
    _each_kind(cls, defaults, kwargs)
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
    if model_type == "dbrx" and "attn_config" in kwargs:
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
    return kwargs


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
    try:
        cls(**kwargs)
    except Exception:  # noqa: BLE001 - refused: its first layer of each kind
        firsts = sorted(full.index(k) for k in dict.fromkeys(full))[:len(cut)]
        rest = [i for i in range(len(full)) if i not in firsts]
        kwargs[field] = [full[i] for i in sorted(firsts + rest[:len(cut) - len(firsts)])]
