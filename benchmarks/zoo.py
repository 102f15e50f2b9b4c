"""The zoo: transformers' model families, built small, traced, µP applied and checked.

    python benchmarks/zoo.py [--mappings causal,masked] [--families gpt2,llama] [--workers 2]
                             [--timeout 300] [--fresh]

Four of transformers' auto mappings, one table each (``MAPPINGS``): causal LMs, masked LMs,
sequence-to-sequence LMs and image classifiers. For every entry the model is built from its own
config class with a tiny vocabulary (256), 2 layers (2 stages of one layer for a staged vision
model), 8 tokens (a seq2seq model: 8 source and 8 target tokens; an image classifier: one
3 × 32 × 32 image, patches of 8), every dropout 0 and the MLP at 4 × the width (a mixture-of-experts
layer: 4 experts, 2 per token, each an MLP at 4 × the width), in two scalings: the head count
fixed at 4 (the head dim grows with the width) and
the head dim fixed at 16 (the head count grows). Each is traced at widths 64 and 128
(``from_torch``), derived, applied (µP for Adam), and checked with the user-model coordinate check
(``fromtorch.coord_check``) over widths 256..1024 at its defaults, with the model as it comes (SP)
as the contrast (at 256 and 512, one seed). Every family ends in one of

* ``pass``: the program derives, ``apply`` leaves the model bit-identical at the base width, and
  the check passes (the output of a layer of a finite fan-out, a router's logits, may pass by
  the split of its change, finite-width drift: the row names it, the totals count such rows;
  a vector of few entries, a 2-class classifier's logits, may pass measured again over more
  seeds, its RMS pooled over them: the row names it);
* ``fail``: one of those does not hold (the failing vectors with their slopes; first the runs
  whose values went inf or nan, and the vectors with no slope, exactly 0 in some runs only, each
  with the check's verdict naming its runs: never a slope of nan); where the check
  fails on attention logits alone (known by their role in the traced program, whatever op
  names them: the values from a dot over the head dim to the softmax over the keys, its
  scale, a soft cap, a bias; ``attention_logits``),
  a second check at widths 1024, 2048, 4096 (``WIDER_WIDTHS``,
  at the check's own tolerance ±0.15), whose result the row gives apart: ``fail; pass (wider)``
  or ``fail; fail (wider)``, never a pass. Their later layers' change is Θ(1), as the engine
  derives, with a finite-width transient up to width about 1024 that the zoo's widths read
  (docs/check.md, "At wider widths": gpt_neox's later logits read -0.36 over 256..512, -0.07
  over 1024..4096). A model past ``WIDER_MEMORY`` at width 4096 (a mixture of experts) is left
  out, ``skipped``; one wider check runs at a time (a file lock: about 11 GiB each). A fail
  whose check warned that its run left the small-update regime (the check's lr too large for
  that model: xlm-roberta-xl's and ESM's LM heads turn in every step, docs/check.md) gives the
  warning in its row, and is checked once more at the lower lr the warning suggests (the
  check's lr / ``LR_BACKOFF``), as the warning tells a user to do: where that run passes and
  stays in the regime, the row is ``pass (lr 0.001)``, counted as a pass and in the totals apart,
  with what the first run warned; else the row stays the first run's fail, with the second's;
* ``refused``: tensorprog refuses it with a positioned error (the op and the user-code line);
* ``build``: the model does not build small from its config (counted apart);
* ``crash``: any other exception (its type and first line), or the family's timeout: the goal
  is none.

Families run in two child processes that stay warm (torch.export's first call costs about 30 s),
each family under an alarm (``--timeout``); a child that dies or hangs past it is restarted after
that family, which is recorded as a crash (a child's stderr goes to a file, whose last line
says why it died). Each result is cached as JSON as it completes
(``.tensorprog-cache/zoo/MAPPING/FAMILY.json``), so a rerun resumes, and ``docs/zoo.md`` is
written from the cache. ``--one FAMILY`` runs one family (of the first mapping given) in process
and prints its JSON.

How a family is built is config plumbing, not µP: the standard field names (``hidden_size``,
``num_attention_heads``, ...) reach a config's own field through its ``attribute_map``, and
``FIELDS`` lists only the other spellings families use for the same field. What a config's own
structure needs besides (a model class that takes one part of a composite config, per-layer
patterns and lists kept consistent with the zoo's layers, a sub-config's sizes, group counts the
same at every width, a width multiplier, a batch norm's gain that the model's init draws at
random set to 1 as torch's default: EfficientNet's, drawn from N(0, 0.02), left no gradient
above Adam's eps) is ``benchmarks/zoo_fit.py``'s. A staged vision
model's per-stage lists keep their first two stages, channels ``[n, 2n]``; sizes the image
fixes follow it (a window tiles every stage's grid, a position table holds the image's patches).
MobileNet's width is its ``depth_multiplier`` (each layer's channels its base count times it): it
is n/512, with the floors and rounding of the channel counts off (``min_depth``, v2's multiples
of 8 and its last convolution's 1280 kept below a multiplier of 1), so every count is a fixed
fraction of the width (v2's 96 base channels 3n/16). RegNet's ``groups_width`` keeps its
default proportion to the first stage's channels (n/2), so its grouped convolutions have the
same groups at every width; HGNetV2's stem channels keep theirs to its first stage's (n/4, n/2),
so a stage's aggregation reads channels that all grow with the width.
HRM text is built with gradients through every cycle of its recurrence (``L_bp_cycles`` all of
its ``L_cycles`` in each high-level cycle): by default it runs the earlier cycles under
torch.no_grad (a truncated backprop), which the trace refuses, so the model its row checks is
HRM trained by backprop through the whole recurrence, not as its authors train it.
DBRX's and HunYuan-MoE's configs default to one expert per token (their released models take
several), their gates divided by the gates' sum, so each token's one gate is 1 and the router
gets no gradient (the trace refuses that): they take the zoo's top-2, as every mixture of experts.
Sizes a config fixes besides the head dim and the width keep their defaults' proportion to one
of them (``PER_HEAD``, ``PER_WIDTH``): partial rotary's and MLA's head dims to the head dim; MLA's
low ranks, per-layer inputs' width (``hidden_size_per_layer_input``), MobileBERT's bottleneck,
UltraBERT's prediction head and Qwen4-exp's hyper-connection mix rank (``hc_lowrank``, 320 of
2048 in its defaults) to the width. This changes the model checked: at its default such a size
exceeds a small head or width, and a low rank kept fixed is a layer of fixed size between layers
of the width, which leaves no µP (derive refuses it as a bottleneck).
A family whose forward takes its inputs in another form gets them in that form, as its authors
feed it (``example_inputs``): an image as colour ids (ImageGPT) or as flattened patches
(SigLIP2), or at 64 × 64 where 32 × 32 leaves no patch (MobileViTV2); a prompt with the image's
tokens (ShieldGemma-2); audio features with the tokens (Voxtral-Realtime); a mask of ones where
the model needs one under torch.export (Switch Transformers); the states a drafter drafts from
(Gemma-4's assistant, refused by the trace: they are a dict of pairs).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


def _sibling(name: str):
    """A module of benchmarks/ beside this one, whether this file runs as a script (its folder
    on sys.path) or is imported by path (the tests)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_fit = _sibling("zoo_fit")
CACHE = ROOT / ".tensorprog-cache" / "zoo"
OUT = ROOT / "docs" / "zoo.md"

VOCAB = 256
SEQ = 8
LAYERS = 2
# a model past this many parameters at the base width did not build small: a sub-config the
# zoo does not shrink (a vision tower, an audio encoder at their default sizes)
MAX_PARAMS = 20_000_000
TRACE_WIDTHS = (64, 128)
# checked from 256: HF's small inits (0.02) drift below it. GPT-2 fails at 64..512 at every lr
# tried (1e-2, 3e-3, 1e-3: its second block's logits -0.35 to -0.39, the output logits -0.29 to
# -0.33), a finite-width effect docs/torch.md measures; a family takes 20-80 s at these widths
CHECK_WIDTHS = (256, 512, 1024)
EXPERTS, TOP_K = 4, 2  # a mixture-of-experts layer's experts, and those each token takes
HEADS = 4  # the "heads" scaling: 4 heads at every width, head dim n / 4
HEAD_DIM = 16  # the "head_dim" scaling: heads of 16, n / 16 of them
TOLERANCE = 0.25  # as docs/torch.md's checks of HF models: widths <= 512 drift up to 0.25
# the second, wider check of a family whose check fails on attention logits alone: their later
# layers' change is Θ(1) with a finite-width transient that lasts to about 1024 (docs/check.md,
# "At wider widths": gpt_neox's later logits read -0.36 over 256..512, -0.07 over 1024..4096).
# Judged at the check's own tolerance (±0.15): past the transient nothing calls for more
WIDER_WIDTHS = (1024, 2048, 4096)
# what one family's wider check may take: two workers share 24 GiB, and one wider check runs at
# a time (_one_at_a_time), the other worker's check at the zoo's widths taking about 1 GiB. Its
# peak is about 30 bytes a param at the widest width (measured at 4096, about 0.405G params:
# gpt_neox 11.4 GiB resident, vit 11.5, dinov2 11.8; the params, their gradients, Adam's two
# moments, the exported graph's copy of the first seed's params, and the next model built while
# the last is alive): a dense model of 2 layers, MLP 4n, fits; a mixture of 4 experts, 1.2G
# params, is left out
WIDER_BYTES_PER_PARAM = 30
WIDER_MEMORY = 12 * 2**30
SCALINGS = {
    "heads": f"{HEADS} heads, head dim n/{HEADS}",
    "head_dim": f"head dim {HEAD_DIM}, n/{HEAD_DIM} heads",
}

# other spellings of the same config field (config plumbing; every one present is set)
FIELDS = {
    "hidden_size": ("n_embd", "d_model", "dim", "embed_dim", "n_embed", "hidden_dim",
                    "embedding_size", "pooler_output_size", "pooler_hidden_size", "d_latents"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers",
                          "num_decoder_layers", "num_blocks", "num_encoder_layers",
                          "num_self_attends_per_block"),
    "num_attention_heads": ("n_head", "num_heads", "n_heads", "decoder_attention_heads",
                            "encoder_attention_heads", "num_encoder_attention_heads",
                            "num_decoder_attention_heads", "num_self_attention_heads",
                            "num_cross_attention_heads"),
    "num_key_value_heads": ("num_kv_heads", "n_kv_heads", "multi_query_group_num",
                            "kv_n_heads"),
    "head_dim": ("d_head", "head_size", "attention_head_size", "kv_channels", "d_kv", "dim_head"),
    "intermediate_size": ("n_inner", "ffn_dim", "d_ff", "decoder_ffn_dim", "encoder_ffn_dim",
                          "ffn_hidden_size", "inner_hidden_size", "intermediate_dim", "d_inner",
                          "dff", "dense_intermediate_size", "mlp_only_intermediate_size",
                          "first_dense_intermediate_size", "dim_ff"),
    "max_position_embeddings": ("n_positions", "n_ctx", "max_seq_len", "seq_length"),
    # a mixture of experts: 4 experts, top-2 (at most the config's own), each expert's MLP
    # 4n, one group
    "num_experts": ("num_local_experts", "n_routed_experts", "moe_num_experts",
                    "num_routed_experts"),
    "num_experts_per_tok": ("top_k", "moe_topk", "num_selected_experts", "moe_k",
                            "num_experts_per_token"),
    "moe_intermediate_size": ("expert_intermediate_size", "shared_expert_intermediate_size",
                              "moe_ffn_hidden_size", "shared_intermediate_size",
                              "moe_shared_expert_intermediate_size",
                              "shared_experts_intermediate_size"),
}
# sizes a config fixes apart from the head dim and the width (config plumbing: at their
# defaults they exceed a small head or width): each keeps its default's proportion to the head
# dim (partial rotary's rotary_dim, a quarter of CodeGen's and GPT-J's heads; MLA's rope, nope
# and value head dims: DeepSeek-V3, Youtu, MiniCPM3) or to the width (MLA's low ranks;
# MobileBERT's intra_bottleneck_size, its blocks' inner width, true_hidden_size, which its
# attention and stacked FFNs run at: a quarter of hidden_size in its defaults and in every
# released checkpoint, 128 of 512; UltraBERT's and UltraVBERT's prediction_head_size, their
# masked-LM head's inner width, 768 of 4096 in their defaults: kept at 768 it is a layer of fixed
# size between layers of the width, which leaves no µP, as derive says; Qwen4-exp's hc_lowrank,
# the rank of its hyper-connections' stream mix, 320 of 2048, likewise), that proportion rounded
# to a power of two so that the size stays a whole multiple or fraction of the head dim or the
# width at every traced width
PER_HEAD = ("rotary_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "index_head_dim")
PER_WIDTH = ("q_lora_rank", "kv_lora_rank", "hidden_size_per_layer_input",
             "intra_bottleneck_size", "prediction_head_size", "hc_lowrank")
# vocabularies besides the tokens' (Gemma-3n's and Gemma-4's per-layer embeddings, LUKE's
# entities, BLT's hashed byte groups: 262144, 500000 and 500002 rows, 135M-193M params at
# width 64; FSMT's source vocabulary, 42024 rows, whose vocab_size is the target's): the zoo's
# tiny one
VOCABS = ("vocab_size_per_layer_input", "entity_vocab_size", "encoder_hash_byte_group_vocab",
          "src_vocab_size")


def _defaults(cls) -> dict:
    """The config's fields at their defaults, or {} for a config whose defaults do not build."""
    try:
        return cls().to_dict()
    except Exception:  # noqa: BLE001
        return {}


def _fields(cls) -> set[str]:
    """The fields a config takes: its signature's and its defaults' (where those build)."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    return names | set(_defaults(cls))


def _names(cls, std: str) -> set[str]:
    """The fields of config ``cls`` that may hold the standard field ``std``: its attribute_map
    alias (or ``std`` itself) and FIELDS' other spellings."""
    aliases = getattr(cls, "attribute_map", {}) or {}
    return {aliases.get(std, std), *FIELDS.get(std, ())}


IMAGE = 32  # an image classifier's input: 3 x 32 x 32
PATCH = 8
STAGES = 2  # a staged vision model keeps its first two stages, channels [n, 2n]


class Mapping(NamedTuple):
    """One of transformers' auto mappings: its table's title, the model class for a family, the
    config fields it sets besides the shared ones, and the example inputs."""

    names: str  # the mapping's name in transformers.models.auto.modeling_auto
    title: str
    inputs: str  # "tokens", "seq2seq" or "image"
    decoder: bool = False  # an encoder family's head runs as a causal decoder (BERT's)

    def families(self) -> dict:
        from transformers.models.auto import modeling_auto

        return {f: (c if isinstance(c, str) else c[0])
                for f, c in getattr(modeling_auto, self.names).items()}


MAPPINGS = {
    "causal": Mapping("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal LMs", "tokens", decoder=True),
    "masked": Mapping("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "masked LMs", "tokens"),
    "seq2seq": Mapping("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "sequence-to-sequence LMs",
                       "seq2seq"),
    "image": Mapping("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image classifiers", "image"),
}


def config_kwargs(cls, width: int, scaling: str, mapping: Mapping = MAPPINGS["causal"]) -> dict:
    """The config's own fields for a small model at ``width`` in ``scaling``."""
    heads = HEADS if scaling == "heads" else width // HEAD_DIM
    wanted = {
        "hidden_size": width,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,  # every query head its own key and value head
        "head_dim": width // heads,
        "intermediate_size": 4 * width,
        "max_position_embeddings": 4 * SEQ,
        "vocab_size": VOCAB,
        "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "moe_intermediate_size": 4 * width,
    }
    fields = _fields(cls)
    aliases = getattr(cls, "attribute_map", {}) or {}
    kwargs: dict = {}
    for std, value in wanted.items():
        kwargs.update({f: value for f in _names(cls, std) if f in fields})
        if std in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") \
                and mapping.inputs != "image" and not _fit.computed(cls, std):
            # a convnet has none of these; a field the config computes and will not take
            # (ProphetNet's and Funnel's layers, the sum of their parts' or blocks') is set
            # through its parts
            kwargs.setdefault(aliases.get(std, std), value)
    defaults = _defaults(cls)
    for f, v in defaults.items():
        if isinstance(v, float) and ("dropout" in f or "pdrop" in f or f.endswith("_drop")):
            kwargs[f] = 0.0
        elif f in VOCABS and isinstance(v, int) and v > VOCAB:
            kwargs[f] = VOCAB
        elif f.endswith("token_id") and isinstance(v, int) and v >= VOCAB:
            kwargs[f] = 0
        elif f in _names(cls, "layer_types") and isinstance(v, list) and v:  # Zamba's alias
            kwargs[f] = v[:LAYERS]
        elif f in ("n_group", "topk_group") and isinstance(v, int):
            kwargs[f] = 1  # expert groups (DeepSeek's): one group of the 4 experts
        elif f == "pad_token_id" and v is None and "mask_token_id" in defaults:
            # a masked LM's vocabulary left unset (ESM's): its positions count the tokens that
            # are not padding, input_ids.ne(pad_token_id), so it needs one; 1, ESM-2's own
            kwargs[f] = 1
        elif f == "block_auto_adjust_ff_dim" and v is True:
            # LFM2's MLP at 2/3 of intermediate_size rounded up to a multiple of 256: 4n at
            # widths 64 and 128, 3n at 256, 2.75n at 1024. The MLP is then 4n at every width
            kwargs[f] = False
    kwargs.update(_proportional(defaults, width, width // heads))
    kwargs.update(_linear_attention(defaults, width, scaling))
    kwargs.update(_mamba2(defaults, width, scaling))
    # at most the config's own: ZAYA takes 1 expert per token; a conformer's num_blocks (24 in
    # Phi-4-multimodal's audio encoder, 900M params at width 1024) is cut to 2, Perceiver's 1
    # block stays 1. A default of one expert is a placeholder, no mixture (HunYuan-MoE's; its
    # released models have 64): such a config gets the zoo's experts
    for std in ("num_experts", "num_experts_per_tok", "num_blocks"):
        for f in _names(cls, std) & set(kwargs):
            if std == "num_experts" and defaults.get(f) == 1:
                continue
            if isinstance(defaults.get(f), int) and defaults[f] > 0:
                kwargs[f] = min(kwargs[f], defaults[f])
    if getattr(cls, "model_type", None) == "mimo_v2_flash":
        # MiMo-V2-Flash's sliding-window layers take twice the config's key/value heads (its
        # modeling code: num_key_value_heads * 2), a whole fraction of the query heads (64
        # query heads, 4 and 8 key/value ones released): at as many key/value heads as query
        # heads they had twice as many, and a query head 0 of them. Half as many: one per query
        # head in those layers, groups of two in the full-attention ones
        kwargs["num_key_value_heads"] = heads // 2
    if cls.__name__ == "DbrxFFNConfig" or getattr(cls, "model_type", None) == "hunyuan_v1_moe":
        # a default of one expert per token whose gate the model divides by the gates' sum
        # (DBRX's and HunYuan-MoE's: their released models take several) is a placeholder: that
        # gate is 1 for every token, so its router gets no gradient but rounding noise, which
        # Adam's eps of 1e-12 turned into full steps (the check's verdict hung on the rounding),
        # and the trace refuses it. They take the zoo's top-2, as every mixture of experts
        for f in ("moe_top_k", "moe_topk"):
            if f in fields:
                kwargs[f] = TOP_K
    if getattr(cls, "model_type", None) == "hrm_text":
        # HRM runs its low-level stack L_cycles times per high-level cycle, all but the last
        # L_bp_cycles of them under torch.no_grad (a truncated backprop through the recurrence,
        # to bound memory), which the trace refuses: no gradient reaches the stack's params
        # through those steps, which no program says. Every step with its gradient: the model
        # the zoo checks is HRM trained by backprop through the whole recurrence
        cycles = defaults.get("L_cycles", 3)
        kwargs["L_bp_cycles"] = [cycles] * defaults.get("H_cycles", 2)
    if "use_cache" in fields:
        kwargs["use_cache"] = False
    if "is_decoder" in fields and mapping.decoder:
        kwargs["is_decoder"] = True
    if isinstance(defaults.get("causal"), bool) and mapping.decoder:  # XLM's own switch
        kwargs["causal"] = True
    if mapping.inputs == "image":
        kwargs.update(_image_fields(defaults, fields, width, heads, scaling == "head_dim"))
        if isinstance(defaults.get("mm_tokens_per_image"), int):
            # an image read as tokens by a language model (ShieldGemma-2's Gemma-3): its
            # patches' grid pooled to mm_tokens_per_image (256: 16 x 16 of 64 x 64 patches,
            # pooled 4 x 4); the zoo's 4 x 4 patches pooled 2 x 2, to 2 x 2 tokens
            kwargs["mm_tokens_per_image"] = 4
        if getattr(cls, "model_type", None) == "shieldgemma2":
            # its logits are its LM's at two ids ("Yes", "No": 10784 and 3771 in its own
            # vocabulary, read from the config): two of the zoo's vocabulary
            kwargs.update(yes_token_index=1, no_token_index=2)
    kwargs.update(_sub_configs(cls, width, scaling, mapping))
    return _fit.fit(cls, defaults, kwargs,
                    _fit.Sizes(width, LAYERS, STAGES, TRACE_WIDTHS[0],
                               HEADS if scaling == "heads" else TRACE_WIDTHS[0] // HEAD_DIM,
                               SEQ))


def _sub_configs(cls, width: int, scaling: str, mapping: Mapping) -> dict:
    """A composite config's parts (a multimodal model's text and vision configs), each made
    small as a model of its own: a vision part as an image classifier's."""
    try:
        default = cls()
    except Exception:  # noqa: BLE001 - no defaults to read the parts' classes from
        return {}
    out = {}
    for name in getattr(cls, "sub_configs", None) or {}:
        part = getattr(default, name, None)
        if part is None or not hasattr(part, "to_dict"):
            continue
        sub = mapping._replace(inputs="image") if "vision" in name else mapping
        # an encoder-decoder's decoder part is a causal decoder that reads the encoder
        # (transformers' EncoderDecoderConfig.from_encoder_decoder_configs sets the same two
        # fields): without them the decoder never reads the encoder
        seq2seq = name == "decoder" and "encoder" in cls.sub_configs
        if seq2seq:
            sub = sub._replace(decoder=True)
        try:
            kwargs = config_kwargs(type(part), width, scaling, sub)
            if seq2seq:
                kwargs["add_cross_attention"] = True
            out[name] = type(part)(**kwargs)
        except Exception:  # noqa: BLE001 - the part stays as it comes (counted by its size)
            continue
    return out


def _image_fields(defaults: dict, fields: set, width: int, heads: int,
                  doubling: bool) -> dict:
    """An image classifier's own fields: a 32 x 32 image, patches of 8, and a staged model's
    per-stage lists cut to their first two stages (every list as long as ``depths``), channels
    [n, 2n] and, with the head dim fixed, heads doubling with them."""
    out = {f: v for f, v in (("image_size", IMAGE), ("num_channels", 3)) if f in fields}
    if isinstance(defaults.get("image_size"), list):
        out["image_size"] = [IMAGE] * len(defaults["image_size"])
    if isinstance(defaults.get("patch_size"), int):
        out["patch_size"] = min(defaults["patch_size"], PATCH)
    if isinstance(defaults.get("num_patches"), int) and "patch_size" in out:
        # a position table of the image's patches (SigLIP2's 256: 16 x 16 patches of 16 at
        # 256 x 256): the zoo's image's 4 x 4
        out["num_patches"] = (IMAGE // out["patch_size"]) ** 2
    if defaults.get("model_type") == "mobilevitv2":
        # MobileViTV2 downsamples by output_stride (32), then unfolds its grid into patches of
        # patch_size (2) as it is (MobileViT's first version resizes it to whole patches): a
        # 32 x 32 image left a 1 x 1 grid, no patch. Its image is output_stride x patch_size
        out["image_size"] = defaults["output_stride"] * out["patch_size"]
    if isinstance(defaults.get("depth_multiplier"), (int, float)):
        # MobileNet's width is depth_multiplier: each layer's channels its base count (32 to
        # 1024 in v1, 16 to 1280 in v2) times it. n/512 puts the widest layer near 2n (v1's
        # 1024 base channels, v2's 1280: 2.5n); every base count a multiple of 8, the
        # channels are exact multiples of the width from 64 on, once min_depth (8) and v2's
        # rounding to multiples of 8 are 1, and v2's last convolution (1280 channels kept
        # below a multiplier of 1, finegrained_output) scales with the rest
        out["depth_multiplier"] = width / 512
        out.update({f: 1 for f in ("min_depth", "depth_divisible_by") if f in defaults})
        if "finegrained_output" in defaults:
            out["finegrained_output"] = False
    key = "depths" if isinstance(defaults.get("depths"), list) else "depth"
    depths = defaults.get(key)
    if isinstance(depths, list) and len(depths) >= STAGES:
        for f, v in defaults.items():
            if isinstance(v, list) and len(v) == len(depths):
                out[f] = v[:STAGES]
        out[key] = [1] * STAGES
        stages = [width * 2**i for i in range(STAGES)]
        for f in ("hidden_sizes", "embed_dims", "hidden_dims", "channels", "embed_dim"):
            v = defaults.get(f)
            if isinstance(v, list):  # a stem's channels first where the list has one more
                out[f] = stages if len(v) == len(depths) else [width] + stages
        if isinstance(defaults.get("groups_width"), int) and isinstance(
                defaults.get("hidden_sizes"), list):
            # RegNet's grouped convolutions: groups of groups_width channels (64 of its first
            # stage's 128). Kept in that proportion to the first stage's channels (n/2), the
            # groups stay fixed as the width grows, each of channels ∝ n: the language's
            # conv(..., g). A fixed group width has groups growing with the width, which the
            # trace refuses
            ratio = defaults["groups_width"] / defaults["hidden_sizes"][0]
            out["groups_width"] = max(1, round(width * 2 ** round(math.log2(ratio))))
        if defaults.get("stem_out_channels") == (defaults.get("hidden_sizes") or [None])[0]:
            # TextNet's stem writes stem_out_channels, which its first stage reads as the stem's
            # hidden_sizes[0]: the two stay one
            out["stem_out_channels"] = out.get("hidden_sizes", [width])[0]
        if isinstance(defaults.get("window_size"), int) and "patch_size" in out:
            # a window that tiles every stage's grid (Swin's 7 is its last stage's at 224 x 224,
            # 224/4/8): the last stage's grid, 4 at 32 x 32. A window of 7 was padded to in the
            # first stage's 8 x 8 and cut to the grid in the last's 4 x 4, where its 7 x 7
            # relative-position table no longer fit
            out["window_size"] = IMAGE // out["patch_size"] // 2 ** (STAGES - 1)
            if key == "depths" and defaults.get("model_type") in ("swin", "donut-swin",
                                                                   "swinv2"):
                # a second block in the first stage: Swin's odd blocks roll the 8 x 8 grid by
                # half a window first (shifted windows, with their mask)
                out["depths"] = [2] + [1] * (STAGES - 1)
        if isinstance(defaults.get("sequence_reduction_ratios"), list):
            # PVT pools its keys by these ratios to the same grid in every stage (7 x 7 at 224 x
            # 224: 56/8, 28/4, 14/2, 7/1), the last stage, whose class token does not reshape to
            # its grid, not at all: the last two ratios (the first two pooled the last stage)
            out["sequence_reduction_ratios"] = defaults["sequence_reduction_ratios"][-STAGES:]
        if isinstance(defaults.get("sr_ratios"), list | tuple):
            # PVTv2's and SegFormer's the same (8, 4, 2, 1): their first two would pool the
            # zoo's 8 x 8 and 4 x 4 grids to one pixel, a single key (refused: its softmax is
            # the constant 1); the last two pool them as they pool the last stages' grids
            out["sr_ratios"] = list(defaults["sr_ratios"][-STAGES:])
        if isinstance(defaults.get("stage_out_channels"), list):
            # HGNetV2's stages take their channels from lists of their own, its classifier's
            # fan-in from hidden_sizes (its defaults' last stage's out channels, 2048): each
            # stage's out channels those of hidden_sizes, its in channels the stem's (below) then
            # the stage before's, its mid channels in their default proportion to its out
            # channels (a power of two, as _proportional's)
            outs, mids = defaults["stage_out_channels"], defaults["stage_mid_channels"]
            out["stage_out_channels"] = stages

            def scaled(c):  # in its default proportion to the first stage's out channels
                return max(1, round(width * 2 ** round(math.log2(c / outs[0]))))

            stem = defaults.get("stem_channels")
            if isinstance(stem, list) and stem[-1] == defaults["stage_in_channels"][0]:
                # the stem's channels (32, 48 of the first stage's 128: n/4, n/2) scale too: a
                # stage's aggregation concatenates its input with its layers' outputs into one
                # convolution, whose input-channel blocks would take different LRs (one an
                # input weight's, on the stem's fixed channels) where one tensor has one
                out["stem_channels"] = [stem[0], *(scaled(c) for c in stem[1:])]
            first = out["stem_channels"][-1] if "stem_channels" in out else \
                defaults["stage_in_channels"][0]
            out["stage_in_channels"] = [first, *stages[:-1]]
            out["stage_mid_channels"] = [
                max(1, round(c * 2 ** round(math.log2(m / o))))
                for c, m, o in zip(stages, mids, outs, strict=False)]
        for f in ("num_encoder_blocks",):
            if isinstance(defaults.get(f), int):
                out[f] = STAGES
        for f in ("num_heads", "num_attention_heads"):  # Swin's; PVT's and SegFormer's
            if isinstance(defaults.get(f), list):
                # by the scaling, not the count: at width 64 heads of 16 are 4, as many as
                # the 4-head table's
                out[f] = [heads * (2**i if doubling else 1) for i in range(STAGES)]
        for f in ("num_stages",):
            if f in fields:
                out[f] = STAGES
        if isinstance(defaults.get("stage_names"), list):
            out["stage_names"] = defaults["stage_names"][:STAGES + 1]
        for f in ("out_features", "out_indices"):
            if f in fields:
                out[f] = None
    return out


def _proportional(defaults: dict, width: int, head: int) -> dict:
    """The PER_HEAD and PER_WIDTH fields of a config's ``defaults`` at a small ``width`` whose
    heads are of ``head`` coordinates, in their default proportion (a power of two)."""
    hidden = next((defaults[f] for f in ("hidden_size", *FIELDS["hidden_size"])
                   if isinstance(defaults.get(f), int)), None)
    n_heads = next((defaults[f] for f in ("num_attention_heads", *FIELDS["num_attention_heads"])
                    if isinstance(defaults.get(f), int)), None)
    default_head = defaults.get("head_dim") or (hidden // n_heads if hidden and n_heads else None)
    out = {}
    for names, ref, new in ((PER_HEAD, default_head, head), (PER_WIDTH, hidden, width)):
        for f in names:
            if isinstance(defaults.get(f), int) and defaults[f] > 0 and ref:
                out[f] = max(1, round(new * 2 ** round(math.log2(defaults[f] / ref))))
    return out


# a linear attention's heads (Gated DeltaNet's: Qwen3.5, Qwen3-Next, OLMo-hybrid, Lara): its own
# key and value heads, apart from the softmax attention's
LINEAR_HEADS = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                "linear_value_head_dim")
# Kimi Delta Attention's (Kimi Linear, Bailing hybrid): queries, keys and values alike
KDA_HEADS = ("linear_num_heads", "linear_head_dim")


def _linear_attention(defaults: dict, width: int, scaling: str) -> dict:
    """A linear attention's heads scaled as the zoo scales attention's: ``heads``, 4 key heads
    of n/4; ``head_dim``, key heads of 16, n/16 of them. The values keep the config's ratios to
    the keys (value heads per key head: Qwen3.5's 32 of 16, 2; value head dim per key head
    dim: OLMo-hybrid's 192 of 96, 2), so their dims stay a whole multiple of the keys'. At
    their defaults (16 heads of 128) the layer does not scale with the width. Kimi Delta
    Attention's (Kimi Linear, Bailing hybrid) has one count and one head dim for all three."""
    heads, dim = (HEADS, width // HEADS) if scaling == "heads" else (width // HEAD_DIM, HEAD_DIM)
    if all(isinstance(defaults.get(f), int) for f in KDA_HEADS):  # one count, one head dim
        return dict(zip(KDA_HEADS, (heads, dim), strict=True))
    kh, vh, kd, vd = (defaults.get(f) for f in LINEAR_HEADS)
    if not all(isinstance(x, int) and x > 0 for x in (kh, vh, kd, vd)) or vh % kh or vd % kd:
        return {}
    return dict(zip(LINEAR_HEADS, (heads, heads * (vh // kh), dim, dim * (vd // kd)),
                    strict=True))


# a Mamba-2 mixer's fields (heads, head dim, groups of B and C, state size per group, expand),
# as each family names them: mamba2; nemotron_h; bamba and granitemoehybrid; zamba2
MAMBA2_FIELDS = (("num_heads", "head_dim", "n_groups", "state_size", "expand"),
                 ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size", "expand"),
                 ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state",
                  "mamba_expand"),
                 ("n_mamba_heads", "mamba_headdim", "mamba_ngroups", "mamba_d_state",
                  "mamba_expand"))
MAMBA2_STATE = 16  # the state size per group N, fixed (a finite dot C_t . B_s per group)


def _mamba2(defaults: dict, width: int, scaling: str) -> dict:
    """A Mamba-2 mixer's heads scaled as the zoo scales attention's, over its expand·n
    coordinates (head_dim · heads = expand · width, expand the config's): ``heads``, 4 heads
    of expand·n/4; ``head_dim``, heads of 16, expand·n/16 of them. As every query head gets its
    own key/value head (num_key_value_heads = heads), every Mamba head gets its own group of B
    and C (n_groups = heads): the groups then grow with the width, as the heads do. A fixed
    number of groups (the configs' 1 or 8) has B and C of a finite fan-out, which every stable
    µP initialises as readouts, so the mixing C_t·B_s vanishes at init and derive refuses it
    (docs/theory.md, "State-space mixing"); with 4 heads the head dim grows, and derive refuses
    that too (expected)."""
    for names in MAMBA2_FIELDS:
        if all(f in defaults for f in names[:4]):
            break
    else:
        return {}
    heads_f, dim_f, groups_f, state_f, expand_f = names
    expand = defaults.get(expand_f)
    inner = (expand if isinstance(expand, int) and expand > 0 else 2) * width
    heads = HEADS if scaling == "heads" else inner // HEAD_DIM
    sizes = {heads_f: heads, dim_f: inner // heads, groups_f: heads, state_f: MAMBA2_STATE}
    if "mamba_d_ssm" in defaults:  # Falcon-H1's inner size, fixed unless None (expand·n)
        sizes["mamba_d_ssm"] = inner
    return sizes


def builder(family: str, scaling: str, overrides: dict | None = None,
            mapping: Mapping = MAPPINGS["causal"]):
    """``build(width)`` of the family's model of ``mapping`` in ``scaling`` (``overrides``:
    config fields set last, e.g. another ``initializer_range``)."""
    import transformers

    model_cls = getattr(transformers, mapping.families()[family])
    cls = _fit.model_config(transformers.AutoConfig.for_model(family).__class__, model_cls)

    def build(width):
        model = model_cls(cls(**{**config_kwargs(cls, width, scaling, mapping),
                                 **(overrides or {})}))
        _fit.fit_init(model)
        # a model with per-language adapters (xmod) refuses a forward with no language
        # given: use its first language, as a user would set it once before training
        if hasattr(model, "set_default_language") and getattr(model.config, "languages", None):
            model.set_default_language(model.config.languages[0])
        return model

    build.__name__ = f"build_{family}"
    return build


# seq2seq families given masks of ones (example_inputs says why): the forward's inputs for them
ONES_MASK = {"switch_transformers": ("attention_mask",), "t5gemma": ("attention_mask",),
             "fsmt": ("attention_mask", "decoder_attention_mask"), "longt5": ("attention_mask",)}


def example_inputs(mapping: Mapping, real: bool = False):
    """``inputs(model)`` for ``mapping``: token ids; a seq2seq model's source ids and target
    ids, the target's at its forward's own position (``None`` for the optional inputs between);
    an image classifier's images. ``real``: random values (the bit-identity check) instead of
    zeros (the trace reads shapes)."""
    import torch

    def ids(real=real, rows=2):
        if not real:
            return torch.zeros(rows, SEQ, dtype=torch.long)
        return torch.randint(VOCAB, (rows, SEQ), generator=torch.Generator().manual_seed(0))

    def inputs(model):
        params = list(inspect.signature(model.forward).parameters)
        if mapping.inputs == "image":
            return _image_inputs(model, params, ids, real)
        if mapping.inputs == "tokens" and "shared_kv_states" in params:
            return _drafter_inputs(model, real)
        heads = getattr(model, "lm_heads", None)
        if mapping.inputs == "tokens" and isinstance(heads, torch.nn.ModuleList):
            # a decoder with one LM head per codebook (MusicGen's) reads one row of tokens per
            # codebook of each sequence: (batch x num_codebooks, seq)
            return (ids(rows=2 * len(heads)),)
        if mapping.inputs == "tokens":
            return (ids(),)
        if "input_features" in params and model.config.model_type == "voxtral_realtime":
            # a decoder fed audio, one embedding per token added to it, which it needs (it
            # raises without): the token ids and the audio's features, the model's mel bins over
            # audio_length_per_tok frames per token (its encoder's stride and downsample_factor).
            # Other audio LMs take their text alone (their text decoders are what is traced),
            # and fed features without their masks they fail in their own forwards
            config = model.config
            mels = getattr(getattr(config, "audio_config", config), "num_mel_bins", 80)
            frames = SEQ * getattr(config, "audio_length_per_tok", 1)
            x = torch.randn(2, mels, frames, generator=torch.Generator().manual_seed(0))
            return {"input_ids": ids(), "input_features": x if real else torch.zeros_like(x)}
        if "decoder_input_ids" not in params:
            return (ids(),)
        at = params.index("decoder_input_ids")
        # the target ids vary even in the trace: ids given as an input that hold one value are
        # read as one constant id (a row of the table, as BERT's token types of one segment),
        # which a decoder with its own table (EncoderDecoderModel's) would otherwise become
        given = [ids(), *([None] * (at - 1)), ids(real=True)]
        # the masks of ones a tokenizer gives for text with no padding. Switch Transformers'
        # encoder makes its mask from attention_mask=None only outside torch.export
        # (is_torchdynamo_compiling), and indexes None under it; T5Gemma's makes it from
        # input_ids != pad_token_id, and the trace's ids are zeros, its pad token; FSMT's
        # asks whether any id is its pad token (padding_mask.any()), which export cannot
        # decide for ids it does not know
        for name in ONES_MASK.get(getattr(getattr(model, "config", None), "model_type", None), ()):
            at = params.index(name)
            given += [None] * (at + 1 - len(given))
            given[at] = torch.ones(2, SEQ, dtype=torch.long)
        return tuple(given)

    return inputs


def _drafter_inputs(model, real: bool) -> dict:
    """A drafter's inputs (Gemma-4's assistant, which ignores input_ids): the hidden states of
    the model it drafts for (2 x its width, backbone_hidden_size) and that model's keys and
    values, one pair per attention type, in the shapes of the drafter's layers of that type.
    A dict of pairs: the trace takes flat inputs, and refuses these at example_inputs."""
    import torch

    config = model.config
    text = config.get_text_config()
    g = torch.Generator().manual_seed(0)

    def x(*shape):
        return torch.randn(*shape, generator=g) if real else torch.zeros(*shape)

    states = {}
    for layer_type, layer in zip(text.layer_types, text.per_layer_config, strict=True):
        shape = (2, layer.num_key_value_heads, SEQ, layer.head_dim)
        states.setdefault(layer_type, (x(*shape), x(*shape)))
    return {"inputs_embeds": x(2, SEQ, 2 * config.backbone_hidden_size),
            "shared_kv_states": states}


def _image_inputs(model, params: list[str], ids, real: bool):
    """An image classifier's inputs: a batch of 2 images of the config's size (3 x 32 x 32
    unless the model needs another, _image_fields), in the form its forward takes them."""
    import torch

    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", config)
    side = vision.image_size if isinstance(getattr(vision, "image_size", None), int) else IMAGE
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    x = x if real else torch.zeros_like(x)
    if "pixel_values" not in params:
        # an image as a sequence of colour-cluster ids (ImageGPT's input_ids): the zoo's tokens
        return (ids(),)
    if "input_ids" in params:
        # a language model asked about an image (ShieldGemma-2): a prompt as its processor
        # builds it, the image's mm_tokens_per_image placeholder tokens in one block after
        # the prompt's first tokens (its bos, the turn's start, the image's start token: 2
        # of them here), the policy's text after them, and the image. Its ids are random
        # even in the trace (which reads only where the image's tokens are: the others it
        # replaces by zeros itself), as the coordinate check feeds this prompt with its images
        # (zeros are Gemma's padding id, whose embedding row never trains)
        prompt = ids(real=True).clone()
        prompt[:, 2:2 + config.mm_tokens_per_image] = config.image_token_id
        return {"input_ids": prompt, "pixel_values": x}
    if "spatial_shapes" in params:
        # SigLIP2 (NaFlex) takes an image as its flattened patches, p x p x 3 values each in
        # rows then columns (its image processor's order), which of them are real (all), and
        # the grid they came from
        p = vision.patch_size
        grid = side // p
        patches = x.reshape(2, 3, grid, p, grid, p).permute(0, 2, 4, 3, 5, 1)
        return {"pixel_values": patches.reshape(2, grid * grid, p * p * 3),
                "pixel_attention_mask": torch.ones(2, grid * grid, dtype=torch.long),
                "spatial_shapes": torch.tensor([[grid, grid]] * 2)}
    return (x,)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def refusal(err) -> str:
    """A positioned error in one line: the message, where, and the user's line."""
    d = err.diagnostics[0]
    where = ""
    if d.span is not None:
        where = f" at {Path(d.span.filename).name}:{d.span.line}"
        line = d.span.source_line().strip()
        if line:
            where += f" `{line[:80]}`"
    return f"{d.message}{where}"


def run_scaling(family: str, scaling: str, widths=CHECK_WIDTHS, trace_widths=TRACE_WIDTHS,
                overrides: dict | None = None, check: bool = True,
                mapping: Mapping = MAPPINGS["causal"], wider=WIDER_WIDTHS, **options) -> dict:
    """One family in one scaling: trace, derive, apply (bit-identical at the base width: its
    params and its output?), then the coordinate check under µP and as the model comes
    (``options`` go to ``coord_check``; ``check=False`` stops before it, status "applied"),
    and where it fails on attention logits alone, the check again at widths ``wider`` (none:
    no second check; ``wants_wider``). Never raises."""
    import torch

    from tensorprog.errors import TensorProgError
    from tensorprog.fromtorch import MuP, coord_check, from_torch
    from tensorprog.fromtorch.check import attention_logits

    start = time.perf_counter()
    out: dict = {"family": family, "scaling": scaling}
    options.setdefault("tolerance", TOLERANCE)

    def done(status, detail="", **more):
        out.update(status=status, detail=detail, time=round(time.perf_counter() - start, 1),
                   **more)
        return out

    stage = "build"
    try:
        build = builder(family, scaling, overrides, mapping)
        with torch.device("meta"):  # counted before anything is allocated or initialised
            size = sum(p.numel() for p in build(trace_widths[0]).parameters())
        if size > MAX_PARAMS:
            return done("build", f"{size / 1e6:.0f}M params at width {trace_widths[0]}: a "
                        "sub-config the zoo does not shrink")
        torch.manual_seed(0)
        base = build(trace_widths[0])
        stage = "trace"
        traced = from_torch(build, trace_widths, example_inputs(mapping))
        out["notes"] = list(traced.notes)
        stage = "derive"
        mup = MuP(traced, "adam")  # derive's refusal placed at the user's line where it can be
        stage = "apply"
        x = example_inputs(mapping, real=True)(base)
        # keyword inputs (SigLIP2's patches, mask and grid) as keywords, not their names
        args, kwargs = ((), x) if isinstance(x, dict) else (x, {})
        base.eval()
        with torch.no_grad():
            before = {k: v.clone() for k, v in base.state_dict().items()}
            y0 = _logits(base(*args, **kwargs))
            mup.apply(base)
            y1 = _logits(base(*args, **kwargs))
        same = all(torch.equal(before[k], v) for k, v in base.state_dict().items())
        out["bit_identical"] = same and torch.equal(y0, y1)
        mup.remove_patches(base)
        if not out["bit_identical"]:
            what = "its output" if same else "its params"
            return done("fail", f"apply changes {what} at the base width")
        if not check:
            return done("applied")
        stage = "check"
        good = coord_check(mup, widths, **options)
        # the contrast: SP's blow-ups are slopes of +1 to +3, plain at two widths and one seed
        bad = coord_check(mup, widths[:2], apply=False,
                          **{**options, "seeds": (0,), "remeasure_few": False})
        out["sp"] = ("passes" if bad.passed  # a run without any slope: what the check says
                     else f"fails ({len(bad.failures)} vectors, {_worst(bad) or _failed(bad)})")
        out["regime"] = good.regime_warning() or None
        if not good.passed and out["regime"]:
            # the check's own advice, taken once as a user would: its run left the small-update
            # regime, so its slopes mix the lr with the width; the row is the run at the lower
            # lr it suggests where that run passes inside the regime, and says so
            lower = coord_check(mup, widths, **{**options, "lr": _lower_lr(good)})
            out["lower_lr"] = {"lr": lower.settings["lr"], "from": good.settings["lr"],
                               "status": _verdict(lower),
                               "detail": "" if lower.passed else _failed(lower)}
            if _verdict(lower) == "pass":
                out["lr"] = lower.settings["lr"]
                good = lower
        split = _passed_by(good)
        if good.passed:
            return done("pass", split, drift=_drift(good), remeasured=_again(good))
        out["logits_only"] = len(attention_logits(mup, good.failures)) == len(good.failures)
        out.update(failures={good.where(k): _slope(v) for k, v in good.failures.items()},
                   drift=_drift(good), remeasured=_again(good))
        if wider and wants_wider(out):
            out["wider"] = _wider(mup, build, wider, options)
        return done("fail", _failed(good) + (f"; {split}" if split else ""))
    except TensorProgError as err:
        if stage == "build":
            return done("build", _first_line(err))
        return done("refused", f"{stage}: {refusal(err)}")
    except Exception as err:  # noqa: BLE001 - every family gets a row, whatever happens
        if stage == "build":
            return done("build", f"{type(err).__name__}: {_first_line(err)}")
        tb = traceback.extract_tb(err.__traceback__)[-1]
        return done("crash", f"{stage}: {type(err).__name__}: {_first_line(err)} "
                    f"({Path(tb.filename).name}:{tb.lineno})")


def _lower_lr(result) -> float:
    """The lr a check that left the small-update regime suggests (its regime warning's)."""
    from tensorprog.numerics.judge import LR_BACKOFF

    return result.settings["lr"] / LR_BACKOFF


def _verdict(result) -> str:
    """pass only where the check passed inside the small-update regime; else fail, or "warns"
    for a pass whose run still left it (its slopes mix the lr with the width)."""
    if not result.passed:
        return "fail"
    return "warns" if result.regime_warning() else "pass"


def _drift(result) -> list[str]:
    # vectors that pass by the split of their change (a router's logits whose own update
    # scales as µP requires while W₀·Δx shrinks: finite-width drift, fromtorch/check.py)
    # (a vector may pass by its parts after one step and fail after another: a failure)
    return [result.where(k) for k in result.drift if k not in result.failures]


def _again(result) -> list[str]:
    # vectors of few entries (a 2-class classifier) that failed by their noise and passed
    # measured over more seeds (fromtorch/few.py)
    return [result.where(k) for k in result.remeasured if k not in result.failures]


def _passed_by(result) -> str:
    """What a row says of the vectors that passed only by the split or by more seeds."""
    drift, again = _drift(result), _again(result)
    parts = [f"passed by the split: {', '.join(drift)}" if drift else "",
             f"passed over {result.settings['remeasured_seeds']} seeds (few entries): "
             + ", ".join(again) if again else ""]
    return "; ".join(x for x in parts if x)


def wants_wider(row: dict) -> bool:
    """Whether a family's row gets the second, wider check: its check failed (the program
    derived and ``apply`` was bit-identical) and every failing vector is an attention logit."""
    return row.get("status", "fail") == "fail" and bool(row.get("failures")) \
        and row.get("logits_only", False)


def _wider(mup, build, widths, options: dict) -> dict:
    """The check again at ``widths`` at the check's own tolerance (µP alone), or why not: its
    memory past WIDER_MEMORY. Never raises."""
    import torch

    from tensorprog.fromtorch import coord_check

    start = time.perf_counter()
    out: dict = {"widths": list(widths)}
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in build(widths[-1]).parameters())
        need = WIDER_BYTES_PER_PARAM * size
        if need > WIDER_MEMORY:
            out.update(status="skipped", detail=f"{size / 1e9:.1f}G params at width "
                       f"{widths[-1]}: about {need / 2**30:.0f} GiB, past the "
                       f"{WIDER_MEMORY / 2**30:.0f} GiB a family may take")
        else:
            # a failing vector of few entries is not measured again here: at 4096 its extra
            # seeds would cost several times the check itself
            def check() -> tuple[bool, str]:
                result = coord_check(mup, widths, **{**options, "tolerance": None,
                                                     "remeasure_few": False})
                return result.passed, "" if result.passed else _failed(result)

            with _one_at_a_time():
                start = time.perf_counter()  # the check's own time, not the wait
                passed, out["detail"] = _in_child(check)
            out["status"] = "pass" if passed else "fail"
    except Exception as err:  # noqa: BLE001 - the first check's row stands
        tb = traceback.extract_tb(err.__traceback__)[-1]
        out.update(status="crash", detail=f"{type(err).__name__}: {_first_line(err)} "
                   f"({Path(tb.filename).name}:{tb.lineno})")
    out["time"] = round(time.perf_counter() - start, 1)
    return out


def _in_child(fn):
    """``fn()`` run in a forked process, its result sent back through a pipe. The child exits
    when done, so the ~11 GiB a wide model takes goes back to the system before the worker's
    next family: a worker that ran it in its own process kept that memory, and with the lock
    released the next wider check in the other worker ran out of memory (both killed, exit -9).
    The family's alarm interrupts the wait here, and the child is then killed too."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        try:
            data = pickle.dumps(("ok", fn()))
        except BaseException as err:  # noqa: BLE001 - sent to the parent, which raises it
            data = pickle.dumps(("error", f"{type(err).__name__}: {_first_line(err)}"))
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the wider check's process died without a result (out of memory?)")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise RuntimeError(value)
    return value


@contextlib.contextmanager
def _one_at_a_time():
    """Holds the zoo's lock on wider checks (a file lock, across the workers' processes), so
    that two of them (12 GiB each at most) never run at once."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "wider.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def result_cell(row: dict) -> str:
    """A row's result: its status, and the wider check's where it ran (``pass (wider)``: the
    family fails at the zoo's widths and passes at the wider ones, never counted as a pass)."""
    status = row["status"] + (f" (lr {row['lr']:g})" if row.get("lr") else "")
    wider = row.get("wider")
    if not wider:
        return status
    return f"{status}; {wider['status']} (wider)"


def _lower_lr_detail(row: dict) -> str:
    """What a row says of the check's run at the lower lr it suggested: why it ran, and its
    result where the row is not that run's."""
    lower = row.get("lower_lr")
    if not lower:
        return ""
    if row.get("lr"):
        return (f"at lr {lower['from']:g}, the check's default, it failed and warned: "
                f"{row['regime']}; the row is its run at lr {lower['lr']:g}")
    return (f"at lr {lower['lr']:g}, which the check suggested: {lower['status']}"
            + (f", {lower['detail']}" if lower.get("detail") else ""))


def _logits(out):
    # a model output without logits is its first field (PP-LCNet's classifier returns its
    # logits as last_hidden_state)
    first = isinstance(out, (tuple, list)) or hasattr(out, "to_tuple")
    return getattr(out, "logits", out[0] if first else out)


def _slope(entries) -> float | str:
    """A failing vector's slope furthest from 0, or where some entry has none (inf or nan in a
    run, or exactly 0 in some runs only) that entry's verdict: never a slope of nan."""
    none = [r for r in entries if math.isnan(r.slope)]
    if none:
        return f"{none[0].verdict} ({_when(none[0])})"
    return round(max(entries, key=lambda r: abs(r.slope)).slope, 2)


def _when(r) -> str:
    return "at init" if r.step == 0 else f"after step {r.step}"


def _worst(result, k: int = 2) -> str:
    """The k failing vectors with a slope furthest from their expectation: name (module path)
    and slope."""
    sloped = {n: s for n, v in result.failures.items() if isinstance(s := _slope(v), float)}
    items = sorted(sloped.items(), key=lambda kv: -abs(kv[1]))[:k]
    return ", ".join(f"{result.where(name)} {s:+.2f}" for name, s in items)


def _failed(result) -> str:
    """A failing check's detail: the runs whose values went inf or nan (the model's own values
    not finite, so no slope at all), the vectors that have no slope (their first and the
    verdict saying which runs), then the worst slopes."""
    lines = []
    for _, w, s, t, why in result.diverged[:2]:
        lines.append(f"diverged at width {w}, seed {s}, step {t}: {why}")
    failures = result.failures
    none = [n for n, v in failures.items() if isinstance(_slope(v), str)]
    if none and not result.diverged:
        lines.append(f"{len(none)} vectors have no slope, first {result.where(none[0])}: "
                     f"{_slope(failures[none[0]])}")
    worst = _worst(result, 4)
    lines.append(f"{len(failures)} vectors" + (f": {worst}" if worst else ""))
    return "; ".join(lines)


def run_family(family: str, mapping: Mapping = MAPPINGS["causal"], **options) -> dict:
    """Both scalings; a family with no attention heads (a convnet; _has_heads) runs once, its row
    the same in both tables."""
    import transformers

    try:
        cls = transformers.AutoConfig.for_model(family).__class__
        headless = not _has_heads(cls)
    except Exception:  # noqa: BLE001 - run_scaling gives the row its build error
        headless = False
    if headless:
        row = run_scaling(family, "heads", mapping=mapping, **options)
        return {s: dict(row, scaling=s) for s in SCALINGS}
    return {s: run_scaling(family, s, mapping=mapping, **options) for s in SCALINGS}


def _has_heads(cls) -> bool:
    """Whether the config, or one of its parts, has attention heads: a composite config
    (CLIP's, SigLIP's, a multimodal LM's) keeps its heads in its parts, which _sub_configs
    builds in each scaling. Read from the top level alone, such a family ran once, in the 4-head
    scaling, and that row stood in the head-dim table too."""
    if _names(cls, "num_attention_heads") & _fields(cls):
        return True
    try:
        default = cls()
    except Exception:  # noqa: BLE001 - no defaults to read the parts' classes from
        return False
    parts = (getattr(default, name, None) for name in getattr(cls, "sub_configs", None) or {})
    return any(_has_heads(type(part)) for part in parts if hasattr(part, "to_dict"))


# --- the pool, the cache and the report ---------------------------------------------------------


class Timeout(BaseException):
    """The family's alarm: a BaseException, so that no ``except Exception`` on the way (the
    family's own row, the model's code) takes it for the family's failure."""


def _alarm(signum, frame):
    raise Timeout


def run_batch(families: list[str], timeout: float, mapping: str = "causal") -> None:
    """In a child: each family in turn, cached as it completes, under a per-family alarm (the
    process stays warm: torch.export's first call costs about 30 s, once)."""
    import torch

    torch.set_num_threads(1)  # two children run side by side on two cores
    signal.signal(signal.SIGALRM, _alarm)
    for family in families:
        t = time.perf_counter()
        # each family starts with gradients on: a family interrupted by its alarm inside a
        # no-grad region (torch.export's) left them off for the next ones in this process, whose
        # checks then failed with "does not require grad"
        torch.set_grad_enabled(True)
        signal.alarm(int(timeout))
        try:
            result = run_family(family, MAPPINGS[mapping])
        except Timeout:
            row = {"status": "crash", "detail": f"timed out after {timeout:.0f} s",
                   "time": round(time.perf_counter() - t, 1)}
            result = {s: dict(row, family=family, scaling=s) for s in SCALINGS}
        finally:
            signal.alarm(0)
        _store(mapping, family, result)
        print(f"done {family}", flush=True)


def _cached(mapping: str, family: str) -> Path:
    return CACHE / mapping / f"{family}.json"


def _store(mapping: str, family: str, result: dict) -> None:
    path = _cached(mapping, family)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def _worker(mapping: str, families: list[str], timeout: float, bar) -> None:
    """Runs ``families`` in one warm child, restarting it past a family that kills it (a crash
    in C code, or a hang the alarm cannot interrupt: killed after the timeout and a minute)."""
    import select

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    todo = list(families)
    while todo:
        cmd = [sys.executable, __file__, "--batch", ",".join(todo), "--timeout", str(timeout),
               "--mappings", mapping]
        # the child's stderr goes to a file, not a pipe: nothing reads a pipe until the child
        # ends, and a family that logs more than its 64 KiB (torch.export prints the whole
        # graph on a data-dependent guard, Longformer's twice) blocked the child in a write
        # until its alarm, a "timeout" of a family that is refused in 25 s
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        t = time.perf_counter()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("done "):
                    done = line.split()[1]
                    todo.remove(done)
                    bar.set_postfix_str(done)
                    bar.update()
                    t = time.perf_counter()
            elif time.perf_counter() - t > timeout + 60:
                proc.kill()
                break
        proc.wait()
        errors.seek(0)
        err = errors.read().strip().splitlines()
        errors.close()
        if todo and not _cached(mapping, todo[0]).exists():
            why = (err or ["no message"])[-1][:200]
            row = {"status": "crash", "detail": f"the process died (exit {proc.returncode}): "
                   f"{why}", "time": round(time.perf_counter() - t, 1)}
            _store(mapping, todo[0],
                   {s: dict(row, family=todo[0], scaling=s) for s in SCALINGS})
            todo.pop(0)
            bar.update()


def run_all(mapping: str, families: list[str], workers: int, timeout: float,
            fresh: bool) -> dict:
    from tqdm import tqdm

    todo = [f for f in families if fresh or not _cached(mapping, f).exists()]
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(todo), desc=f"zoo {mapping}") as bar:
        jobs = [pool.submit(_worker, mapping, todo[i::workers], timeout, bar)
                for i in range(workers)]
        for job in as_completed(jobs):
            job.result()
    return {f: json.loads(_cached(mapping, f).read_text()) for f in families}


STATUSES = ("pass", "fail", "refused", "crash", "build")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _total_minutes(results: dict) -> float:
    return sum(r[s].get("time", 0) for r in results.values() if r is not None
               for s in SCALINGS) / 60


def _counts(rows: list[dict]) -> tuple[dict, int, str]:
    """Rows per status (at the zoo's widths), how many build, the share that pass, and under
    "wider" and "wider_pass" how many failing rows got the wider check and passed it."""
    count = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    count["wider"] = sum(bool(r.get("wider")) for r in rows)
    count["wider_pass"] = sum(r.get("wider", {}).get("status") == "pass" for r in rows)
    count["lower_lr"] = sum(r["status"] == "pass" and bool(r.get("lr")) for r in rows)
    built = len(rows) - count["build"]
    share = f"{100 * count['pass'] / built:.0f}%" if built else "-"
    return count, built, share


def _wider_totals(count: dict) -> str:
    """The wider check's totals, apart from the passes at the zoo's widths."""
    return (f"{count['wider_pass']} of the {count['wider']} that fail on attention logits "
            f"alone pass at widths {', '.join(map(str, WIDER_WIDTHS))}: pass (wider)")


def report(by_mapping: dict, wall: float | None) -> str:
    """``docs/zoo.md`` from ``{mapping: {family: result or None}}``: a summary, then one table
    per mapping and scaling."""
    import torch
    import transformers

    minutes = sum(_total_minutes(r) for r in by_mapping.values())
    lines = [
        "# The zoo: transformers' model families, traced, µP applied and checked",
        "",
        "Written by `python benchmarks/zoo.py` (its docstring says how each family is built and "
        "judged).",
        f"Every family of four of transformers' auto mappings (transformers "
        f"{transformers.__version__}): vocabulary {VOCAB}, {LAYERS} layers (a staged vision model: "
        f"{STAGES} stages of one layer, channels n and 2n), {SEQ} tokens (a seq2seq model: {SEQ} "
        f"source and {SEQ} target tokens; an image classifier: 3 × {IMAGE} × {IMAGE} images, "
        f"patches of at most {PATCH}), MLP 4n, dropout 0, a batch norm's gain that the family's "
        "init draws at random set to 1, torch's default (EfficientNet's N(0, 0.02) scales each "
        "norm's output down about 50 times: `benchmarks/zoo_fit.py`, `fit_init`); traced at widths "
        f"{', '.join(map(str, TRACE_WIDTHS))}, µP for Adam applied, and "
        "`fromtorch.coord_check` at its defaults over widths "
        f"{', '.join(map(str, CHECK_WIDTHS))} (±{TOLERANCE}), the model as it comes (SP) as the "
        "contrast (at the two smallest of them, one seed). A pass also needs the program to "
        "derive and `apply` to leave the model bit-identical at the base width (its params and "
        "its output). A model with no attention heads (a convnet) runs once; its row is the same "
        "in both scalings.",
        "",
        "A family whose check fails on attention logits alone is checked a second time at widths "
        f"{', '.join(map(str, WIDER_WIDTHS))} (µP alone, at the check's own tolerance ±0.15, "
        "its other defaults the same): the later layers' logits change by Θ(1), as the engine "
        "derives, with a finite-width transient that lasts to about width 1024 "
        "(docs/check.md, \"At wider widths\"). Its result is given apart: `fail; pass (wider)` "
        "is a fail at the zoo's widths, counted as such, and the totals say how many of those "
        f"pass wider; a model past {WIDER_MEMORY / 2**30:.0f} GiB at width {WIDER_WIDTHS[-1]} "
        "(a mixture of experts) is left out (`skipped`), and one wider check runs at a time "
        "(memory). A vector of few entries (a 2-class "
        "classifier's logits, 2 numbers an image) that fails at the zoo's widths is measured "
        "again over more seeds (docs/check.md, \"Vectors of few entries\"); the row names it. "
        "A check that fails and warns that its run left the small-update regime (its slopes "
        "then mix the learning rate with the width) is run once more at the lower lr it "
        "suggests, as its warning tells a user to; where that run passes inside the regime, "
        "the row is a pass at that lr, `pass (lr 0.001)`, and says what the first run warned; "
        "else the row is the first run's, with the second's result.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}; each family in its own process, two at a time."
        + (f" Wall time of the last run: {wall / 60:.0f} min (a family cached from an earlier "
           "run is not run again; each row's time is its own run's)." if wall else "")
        + f" The families' times add up to {minutes:.0f} min.",
        "",
        "| mapping | families | build small | " + " | ".join(
            f"pass, {title}" for title in SCALINGS.values()) + " |",
        "|---|---:|---:|" + "---:|" * len(SCALINGS),
    ]
    for name, results in by_mapping.items():
        rows = {s: [r[s] for r in results.values() if r is not None] for s in SCALINGS}
        if not rows["heads"]:  # not run yet: no totals to give
            lines.append(f"| {MAPPINGS[name].title} | {len(results)} | not run | "
                         + " | ".join("-" for _ in SCALINGS) + " |")
            continue
        cells = []
        for s in SCALINGS:
            count, built, share = _counts(rows[s])
            cells.append(f"{count['pass']} of {built} ({share}); {count['wider_pass']} "
                         "pass (wider)")
        built = _counts(rows["heads"])[1]
        lines.append(f"| {MAPPINGS[name].title} | {len(results)} | {built} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    for name, results in by_mapping.items():
        lines += _section(MAPPINGS[name], results)
    return "\n".join(lines)


def _section(mapping: Mapping, results: dict) -> list[str]:
    lines = [f"## {mapping.title[0].upper()}{mapping.title[1:]} (`{mapping.names}`)", ""]
    missing = [f for f, r in results.items() if r is None]
    if missing:
        lines += [f"Not run yet ({len(missing)}, left out of the totals): "
                  + ", ".join(missing) + ".", ""]
    for scaling, title in SCALINGS.items():
        rows = [r[scaling] for r in results.values() if r is not None]
        if not rows:
            continue
        count, built, share = _counts(rows)
        slowest = max(rows, key=lambda r: r.get("time", 0))
        split = sum(r["status"] == "pass" and bool(r.get("drift")) for r in rows)
        lines += [
            f"### {title}",
            "",
            f"Totals: {count['pass']} pass ({split} by the split of a vector's change: "
            f"finite-width drift; {count['lower_lr']} at the lower lr the check suggested), "
            f"{count['fail']} fail, {count['refused']} refused, "
            f"{count['crash']} crash, of {built} that build ({share} pass); {count['build']} do "
            f"not build small. Of the fails, {_wider_totals(count)}. Slowest: "
            f"{slowest['family']} ({slowest.get('time', 0):.0f} s).",
            "",
            "| family | result | SP | time (s) | detail |",
            "|---|---|---|---:|---|",
        ]
        order = {s: i for i, s in enumerate(STATUSES)}
        for r in sorted(rows, key=lambda r: (order[r["status"]], r["family"])):
            wider = r.get("wider")
            detail = r.get("detail", "") + (
                f"; at widths {', '.join(map(str, wider['widths']))} ({wider['time']:.0f} s): "
                f"{wider['status']}" + (f", {wider['detail']}" if wider.get("detail") else "")
                if wider else "")
            if r["status"] == "fail" and r.get("regime"):  # the check's own warning: the lr
                detail += f"; the check warns: {r['regime']}"  # leaves small updates
            if r.get("lower_lr"):
                detail = "; ".join(x for x in (detail, _lower_lr_detail(r)) if x)
            lines.append(f"| {r['family']} | {result_cell(r)} | {_cell(r.get('sp', '-'))} | "
                         f"{r.get('time', 0):.0f} | {_cell(detail)} |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mappings", default=",".join(MAPPINGS),
                    help=f"comma-separated, of {', '.join(MAPPINGS)} (default: all)")
    ap.add_argument("--families", help="comma-separated model types (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    # a family checked wider twice (both scalings) takes up to about 2 x 170 s more
    ap.add_argument("--timeout", type=float, default=900, help="seconds per family")
    ap.add_argument("--fresh", action="store_true", help="ignore cached results")
    ap.add_argument("--one", help="run one family in this process and print its JSON")
    ap.add_argument("--batch", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/zoo.md")
    ap.add_argument("--report", action="store_true",
                    help="only write docs/zoo.md from the cached results")
    args = ap.parse_args(argv)
    mappings = args.mappings.split(",")
    unknown = [m for m in mappings if m not in MAPPINGS]
    if unknown:
        ap.error(f"unknown mapping {unknown[0]!r}: give some of {', '.join(MAPPINGS)}")
    if args.one:
        import torch

        torch.set_num_threads(1)  # two families run side by side on two cores
        print(json.dumps(run_family(args.one, MAPPINGS[mappings[0]])))
        return 0
    if args.batch:
        run_batch(args.batch.split(","), args.timeout, mappings[0])
        return 0
    wall = None
    if not args.report:
        t = time.perf_counter()
        for name in mappings:
            every = list(MAPPINGS[name].families())
            families = [f for f in args.families.split(",") if f in every] if args.families \
                else every
            results = run_all(name, families, args.workers, args.timeout, args.fresh)
            for f in families:
                print(name, f, *(f"{s}={results[f][s]['status']}" for s in SCALINGS),
                      results[f]["heads"].get("detail", "")[:100])
        wall = time.perf_counter() - t
    if args.report or not (args.no_write or args.families):
        cached = {name: {f: (json.loads(_cached(name, f).read_text())
                             if _cached(name, f).exists() else None)
                         for f in m.families()} for name, m in MAPPINGS.items()}
        OUT.write_text(report(cached, wall) + "\n")
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
