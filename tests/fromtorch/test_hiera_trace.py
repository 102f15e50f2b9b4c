"""Hiera (transformers' HieraForImageClassification), traced: its overlapping patch embedding's
pixels read as tokens plus a table of their positions, its tokens unrolled (each 2 x 2 stride
block's four tokens moved T/4 apart), mask-unit attention over its one unit (a fused qkv viewed
per unit), and the next stage's queries and residual pooled by a max over the strides, which is
``tokens(maxpool(image(h, H, W)), S)`` of the tokens in the grid's own order
(fromtorch/ops_maskunit.py). Oracles: the traced program computes the model at the base width;
more than one unit per image is refused at its line."""

from __future__ import annotations

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nn = torch.nn

import tensorprog as tp  # noqa: E402

pytestmark = pytest.mark.slow  # transformers' model, traced at two widths: seconds each


def build(n, unit=8):
    """Two stages of one layer (the second pooling its queries, widening to 2n), 2 heads each,
    a 32 x 32 image: an 8 x 8 grid of tokens, one mask unit of ``unit`` x ``unit``."""
    config = transformers.HieraConfig(
        embed_dim=n,
        depths=[1, 1],
        num_heads=[2, 2],
        image_size=[32, 32],
        masked_unit_size=[unit, unit],
        masked_unit_attention=[True, True],
        num_query_pool=1,
        num_labels=3,
        drop_path_rate=0.0,
        layer_norm_eps=1e-5,
    )  # the emitted norms' (the language leaves a norm's eps aside)
    torch.manual_seed(0)
    return transformers.HieraForImageClassification(config).eval()


def images(model=None):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def hiera():
    return tp.from_torch(build, (16, 32), images)


def test_hiera_traces_its_pooling_as_a_max_pool_of_the_grid(hiera):
    src = hiera.source
    assert "= tokens(conv2d, f64)" in src  # its 7 x 7 stride-4 patches' pixels as tokens
    assert "input v_pos : positions[f64]" in src  # its table over the 64 pixels' tokens
    assert src.count("= tokens(maxpool(image(") == 2  # its residual's and its queries'


def test_the_traced_program_computes_hiera_at_the_base_width(hiera):
    # attention over the unrolled tokens whose output kept another order, or a max over other
    # groups of tokens than the grid's 2 x 2 blocks, would differ here
    traced_computes_the_model(hiera, build, images)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_apply_leaves_hiera_bit_identical_at_the_base_width(hiera, optimizer):
    apply_is_bit_identical_at_base(hiera, build, images, optimizer)


def test_more_than_one_mask_unit_is_refused_at_its_line():
    with pytest.raises(
        tp.TensorProgError,
        match=r"a fused qkv viewed \[2, 16, 4, 3, 2, 8\]: "
        r"Hiera's 4 mask units of 16 tokens each",
    ) as e:
        tp.from_torch(lambda n: build(n, unit=4), (16, 32), images)
    assert "modeling_hiera.py" in str(e.value)
