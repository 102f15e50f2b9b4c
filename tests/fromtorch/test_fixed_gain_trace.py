"""A per-token vector times a constant vector over its features (fromtorch/ops_fixedgain.py):
Falcon-H1's ``in_proj(h) * mup_vector``, a float buffer of one number per block of rows (z, x,
B, C, dt) from the config's ssm_multipliers. Oracles: the traced program computes the model
with a gain of several values, each block written ``c_j * (W_j @ h)``; the gains change no
exponent (the same layers derive as without them); apply leaves the buffer and every param
bit-identical at the base; a gain read whole with several values, and a product by a constant
that changes with the width in a way no number can say, and a vector computed from the token
ids or an input mask (it changes with them), are refused; a gain of one value that scales with
the width is a width constant, read at both widths."""

from __future__ import annotations

import pytest
from conftest import (
    abc_by_target,
    apply_is_bit_identical_at_base,
    the_check_reads_the_program,
    traced_computes_the_model,
)

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402

BLOCKS = (0.5, 2.0, 0.25)  # the gain's value on each third of the layer's rows


class Net(nn.Module):
    """A layer whose output is multiplied by a constant buffer, then split in three: ``gain``
    "blocks" (one value per third, Falcon-H1's layout), "ones", "one" (0.5 everywhere),
    "width" ((n/16)^-1/2 everywhere: all 1s at 16), "none" (no product: the oracle of the
    exponents)."""

    def __init__(self, n, gain="blocks", whole=False):
        super().__init__()
        self.whole = whole
        self.e = nn.Embedding(13, n)
        self.up = nn.Linear(n, 3 * n)
        self.out = nn.Linear(n, 13)
        values = {"blocks": torch.tensor(BLOCKS).repeat_interleave(n),
                  "ones": torch.ones(3 * n), "one": torch.full((3 * n,), 0.5),
                  "width": torch.full((3 * n,), (16 / n) ** 0.5)}.get(gain)
        self.gain = values is not None
        if self.gain:
            self.register_buffer("mup_vector", values[None, None, :], persistent=False)

    def forward(self, idx):
        h = self.up(self.e(idx))
        if self.gain:
            h = h * self.mup_vector
        if self.whole:
            return self.out(torch.relu(h)[..., ::3])
        a, b, c = h.split(h.shape[-1] // 3, dim=-1)
        return self.out(a * torch.sigmoid(b) + torch.relu(c))


def ids(model=None):
    return (torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0)),)


def build(gain="blocks", whole=False):
    return lambda n: Net(n, gain, whole)


def test_a_gain_of_one_value_per_block_is_each_blocks_number_and_computes_the_model():
    traced = tp.from_torch(build(), (16, 32), ids)
    src = traced.source
    for c in BLOCKS:
        assert f"{c} * " in src, src
    traced_computes_the_model(traced, build(), ids)
    # a fixed gain of Θ(1) entries changes no exponent: the layers derive as without it
    plain = tp.from_torch(build("none"), (16, 32), ids)
    assert abc_by_target(traced, "adam") == abc_by_target(plain, "adam")
    apply_is_bit_identical_at_base(traced, build(), ids)


def test_ones_are_the_identity_and_one_value_a_number():
    ones = tp.from_torch(build("ones"), (16, 32), ids)
    assert "mup_vector" not in ones.source and " * up" not in ones.source
    half = tp.from_torch(build("one"), (16, 32), ids)
    assert "0.5 * " in half.source
    traced_computes_the_model(half, build("one"), ids)


def test_a_gain_of_several_values_read_whole_is_refused_at_its_line():
    with pytest.raises(TraceError, match=r"a constant vector of 3 values \(0.25, 0.5, 2\)"):
        tp.from_torch(build(whole=True), (16, 32), ids)


def test_a_gain_that_scales_with_the_width_is_a_width_constant():
    # all 1s at the base width, the identity there alone: written as the other width's numbers
    traced = tp.from_torch(build("width"), (16, 32), ids)
    assert "the model's 1·(n/16)^-1/2, written at its base value" in traced.source
    traced_computes_the_model(traced, build("width"), ids)


@pytest.mark.slow
def test_falcon_h1_mup_vector_traces_and_computes_the_model(monkeypatch):
    """Falcon-H1 with ssm_multipliers of five values: in_proj's z, x, B, C and dt blocks each
    times its number (x, B and C through the short convolution split after the layer); its
    other multipliers (numbers) and steps clamped from below too. Its rotary is written as the
    vector itself (docs/torch.md), so the model compared has none."""
    fh = pytest.importorskip("transformers.models.falcon_h1.modeling_falcon_h1")
    monkeypatch.setattr(fh, "apply_rotary_pos_emb", lambda q, k, cos, sin, *a, **kw: (q, k))
    mult = [0.5, 2.0, 0.25, 1.5, 0.75]

    def falcon(n):
        heads = n // 8
        cfg = fh.FalconH1Config(
            vocab_size=13, hidden_size=n, intermediate_size=2 * n, num_hidden_layers=1,
            num_attention_heads=n // 16, num_key_value_heads=n // 16, mamba_d_ssm=None,
            mamba_n_heads=heads, mamba_d_head=16, mamba_n_groups=heads, mamba_d_state=8,
            mamba_expand=2, mamba_chunk_size=4, use_cache=False, ssm_multipliers=mult,
            max_position_embeddings=32, rms_norm_eps=1e-6, key_multiplier=0.3,
            mlp_multipliers=[0.6, 0.4], attention_in_multiplier=0.5,
            attention_out_multiplier=0.8, ssm_in_multiplier=0.7, ssm_out_multiplier=0.9,
            embedding_multiplier=5.0, lm_head_multiplier=0.1,
            time_step_limit=(0.01, float("inf")))
        return fh.FalconH1ForCausalLM(cfg)

    traced = tp.from_torch(falcon, (64, 128), ids)
    for c in mult:
        assert f"{c} * " in traced.source
    assert "0.01 * atleast(" in traced.source
    traced_computes_the_model(traced, falcon, ids, tol=1e-5)
    the_check_reads_the_program(traced, falcon, ids, tol=1e-5)  # each block's vector its own


class FromIds(Net):
    """The layer's output times a vector computed from the token ids (2 where the first id is
    odd, else 1): it changes with the inputs, so it is no fixed gain (the walk computes it from
    zeros in the ids' place, where it is all 1s)."""

    def forward(self, idx):
        h = self.up(self.e(idx))
        c = (idx[0, 0] % 2 + 1).to(h.dtype)
        gain = c * torch.ones(h.shape[-1], dtype=h.dtype, device=idx.device)
        a, b, g = (h * gain).split(h.shape[-1] // 3, -1)
        return self.out(a * torch.sigmoid(b) + torch.relu(g))


def test_a_vector_computed_from_the_token_ids_is_no_fixed_gain():
    assert int(ids()[0][0, 0]) % 2 == 1  # (the example's gain is 2, the zeros' 1)
    with pytest.raises(TraceError, match=r"a product with a constant tensor other than a mask"):
        tp.from_torch(lambda n: FromIds(n, gain="none"), (16, 32), ids)


class FromMask(nn.Module):
    """The layer's output times a vector computed from the attention mask given to the
    forward: 2 where the first token is kept, 1 where not (traced with the example's all-ones
    mask, it would be the number 2 for every mask)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.up, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx, attention_mask):
        h = self.up(self.e(idx))
        kept = attention_mask[0, :1].to(h.dtype) + 1
        return self.out(h * (kept * torch.ones(h.shape[-1], dtype=h.dtype, device=idx.device)))


def test_a_vector_computed_from_an_input_mask_is_no_fixed_gain():
    with pytest.raises(TraceError, match=r"a product with a constant tensor other than a mask"):
        tp.from_torch(FromMask, (16, 32), lambda model=None: (ids()[0], torch.ones(2, 5).long()))


class Clamped(Net):
    """The gained layer's output clamped to [-0.3, 0.3] (DBRX's clip_qkv) before its split, in
    either order with the gain, or each block after it ("split")."""

    def __init__(self, n, order):
        super().__init__(n)
        self.order = order

    def forward(self, idx):
        h = self.up(self.e(idx))
        if self.order == "gain first":
            h = (h * self.mup_vector).clamp(-0.3, 0.3)
        elif self.order == "clamp first":
            h = h.clamp(-0.3, 0.3) * self.mup_vector
        else:
            h = h * self.mup_vector
        a, b, c = h.split(h.shape[-1] // 3, dim=-1)
        if self.order == "split":
            a, b, c = (x.clamp(-0.3, 0.3) for x in (a, b, c))
        return self.out(a * torch.sigmoid(b) + torch.relu(c))


def test_a_gained_block_clamped_computes_the_model_and_a_clamp_before_the_split_is_refused():
    # each block split off first: c_j * (W_j @ h) clamped, the model's value; clamped whole
    # (before the split, either side of the gain), the gain of 3 values is read as one vector
    traced = tp.from_torch(lambda n: Clamped(n, "split"), (16, 32), ids)
    traced_computes_the_model(traced, lambda n: Clamped(n, "split"), ids)
    for order in ("gain first", "clamp first"):
        with pytest.raises(TraceError, match=r"test_fixed_gain_trace\.py:\d+:\d+: error: cannot "
                           r"trace a product with mup_vector, a constant vector of 3 values"):
            tp.from_torch(lambda n, o=order: Clamped(n, o), (16, 32), ids)
