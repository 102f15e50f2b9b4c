"""Norms over images traced: ``nn.GroupNorm(1, c)`` as the language's ``groupnorm(h)`` (each
image normalised over its channels and pixels together), PoolFormer's pooling mixer
``nn.AvgPool2d(3, 1, 1, count_include_pad=False)`` as ``avgpool3(h)``, and a layer scale given
two axes of 1 (``g.unsqueeze(-1).unsqueeze(-1) * h``) as a gain of the channels. Oracles: the
hand-written examples derive the same exponents as their torch counterparts; the emitted helpers
compute what torch's layers compute; apply leaves the model bit-identical at the base width."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class PoolFormer(nn.Module):
    """examples/poolformer.tp in torch, laid out as HF's PoolFormer block."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm1, self.norm2, self.norm = (nn.GroupNorm(1, width) for _ in range(3))
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.scale1 = nn.Parameter(1e-5 * torch.ones(width))
        self.scale2 = nn.Parameter(1e-5 * torch.ones(width))
        self.fc1 = nn.Conv2d(width, 4 * width, 1)
        self.fc2 = nn.Conv2d(4 * width, width, 1)
        self.head = nn.Linear(width, 10)

    def forward(self, img):
        h0 = self.stem(img)
        u1 = self.norm1(h0)
        h1 = h0 + self.scale1.unsqueeze(-1).unsqueeze(-1) * (self.pool(u1) - u1)
        mlp = self.fc2(F.gelu(self.fc1(self.norm2(h1))))
        h2 = h1 + self.scale2.unsqueeze(-1).unsqueeze(-1) * mlp
        return self.head(self.norm(h2).mean((-2, -1)))


# traced param -> examples/poolformer.tp's
POOLFORMER = {"stem_weight": "K0", "stem_bias": "c0", "norm1_weight": "g1", "norm1_bias": "b1",
              "scale1": "s1", "norm2_weight": "g2", "norm2_bias": "b2", "fc1_weight": "P1",
              "fc1_bias": "c1", "fc2_weight": "P2", "fc2_bias": "c2", "scale2": "s2",
              "norm_weight": "gf", "norm_bias": "bf", "head_weight": "W", "head_bias": "bW"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def poolformer():
    return tp.from_torch(PoolFormer, (8, 16), images)


def test_a_poolformer_block_traces_to_groupnorm_avgpool3_and_channel_gains(poolformer):
    src = poolformer.source
    assert "group_norm = norm1_weight * groupnorm(conv2d) + norm1_bias" in src
    assert "avgpool3(group_norm)" in src
    assert "scale1 * " in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_poolformer_derives_what_examples_poolformer_tp_derives(poolformer,
                                                                             optimizer):
    traced = tp.derive(poolformer.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "poolformer.tp"), optimizer).abc
    assert set(traced) == set(POOLFORMER)
    assert {k: traced[k] for k in POOLFORMER} == {k: written[v] for k, v in POOLFORMER.items()}


def test_apply_leaves_the_poolformer_bit_identical_at_the_base_width(poolformer):
    apply_is_bit_identical_at_base(poolformer, PoolFormer, images)


def _helper(name):
    space = {"torch": torch}
    exec("\n".join(HELPERS[name]), space)  # noqa: S102 - the emitter's own template
    return space[name]


def test_the_emitted_groupnorm_and_avgpool3_are_torchs_layers():
    gn, pool3 = _helper("_groupnorm"), _helper("_avgpool3")
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    last = x.movedim(1, -1)
    module = nn.GroupNorm(1, 5, affine=False).double()
    torch.testing.assert_close(gn(last).movedim(-1, 1), module(x), rtol=1e-12, atol=1e-12)
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    torch.testing.assert_close(pool3(last).movedim(-1, 1), pool(x), rtol=1e-12, atol=1e-12)
    # a corner pixel averages its 4 neighbours inside the image, not 9 with the padding's zeros
    torch.testing.assert_close(pool3(last)[:, 0, 0], last[:, :2, :2].mean((1, 2)))
