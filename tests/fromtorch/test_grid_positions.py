"""A table of positions laid out as the image's grid and back (PVT's and SigLIP2's): reshaped to
[h, w, n], permuted channels first, resized to the image's patch grid and laid back out as one
row per token. A resize to the table's own grid is the identity (exactly: tested below for
every mode torch has), so the chain is the table itself, traced as the ordinary learned
positions ``P @ pos``: the oracle is the same model adding its table as it is, which derives
the same exponents param for param; apply leaves the model bit-identical. A resize to another
grid mixes the table's rows and is refused."""

import re

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (16, 32)


@pytest.mark.parametrize("mode,kw", [
    ("nearest", {}), ("nearest-exact", {}),
    ("bilinear", {"align_corners": False}), ("bilinear", {"align_corners": True}),
    ("bilinear", {"align_corners": False, "antialias": True}),
    ("bicubic", {"align_corners": False}), ("bicubic", {"align_corners": True}),
    ("bicubic", {"align_corners": False, "antialias": True}),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_resize_to_the_same_grid_is_exactly_the_identity(mode, kw, dtype):
    x = torch.randn(1, 8, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(F.interpolate(x, size=(5, 7), mode=mode, **kw), x)


class Grid(torch.nn.Module):
    """PVT's front: patches of 8 (a 4 x 4 grid), a table [1, 16, n] resized to the grid
    (``laid``), or added as it is (the oracle)."""

    def __init__(self, n, laid=True, side=4):
        super().__init__()
        self.laid, self.side = laid, side
        self.proj = torch.nn.Conv2d(3, n, 8, stride=8)
        self.pos = torch.nn.Parameter(torch.randn(1, side * side, n))
        self.fc = torch.nn.Linear(n, n)
        self.head = torch.nn.Linear(n, 10)

    def forward(self, img):
        h = self.proj(img).flatten(2).transpose(1, 2)
        pos = self.pos
        if self.laid:
            s = self.side
            pos = pos.reshape(1, s, s, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(4, 4), mode="bilinear")
            pos = pos.reshape(1, -1, 16).permute(0, 2, 1)
        return self.head(torch.relu(self.fc(h + pos)).mean(1))


def _images(model):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def _same_exponents(traced, oracle):
    for optimizer in ("adam", "sgd"):
        mine, want = (tp.derive(t.program, optimizer).abc for t in (traced, oracle))
        got = {u.target: mine[p] for p, u in traced.params.items()}
        ref = {u.target: want[p] for p, u in oracle.params.items()}
        assert got.keys() == ref.keys() and got == ref, optimizer


def _bit_identical(traced, build, inputs):
    torch.manual_seed(1)
    model = build(WIDTHS[0])
    torch.manual_seed(1)
    plain = build(WIDTHS[0])
    MuP(traced, "adam").apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    x = inputs(model)
    args, kw = (x, {}) if isinstance(x, tuple) else ((), x)
    assert torch.equal(model(*args, **kw), plain(*args, **kw))


class TwoStage(torch.nn.Module):
    """PVT's two stages: the first's tokens (a 4 x 4 grid) with their table [1, 16, n]
    resized to the grid; laid back out as an image and cut into patches of 2 (a 2 x 2 grid);
    a class token before those 4 tokens and a table [1, 5, 2n] whose patch rows are resized
    to their grid and put back after the class token's row. ``laid=False``: each table added
    as it is (the oracle)."""

    def __init__(self, n, laid=True):
        super().__init__()
        self.laid = laid
        self.proj = torch.nn.Conv2d(3, n, 8, stride=8)
        self.pos = torch.nn.Parameter(torch.randn(1, 16, n))
        self.proj2 = torch.nn.Conv2d(n, 2 * n, 2, stride=2)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, 2 * n))
        self.pos2 = torch.nn.Parameter(torch.randn(1, 5, 2 * n))
        self.fc = torch.nn.Linear(2 * n, 2 * n)
        self.head = torch.nn.Linear(2 * n, 10)

    def _resized(self, pos, side):
        if not self.laid:
            return pos
        grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bilinear")
        return grid.reshape(1, -1, side * side).permute(0, 2, 1)

    def forward(self, img):
        h = self.proj(img).flatten(2).transpose(1, 2) + self._resized(self.pos, 4)
        h = self.proj2(torch.relu(h).transpose(1, 2).reshape(-1, h.shape[-1], 4, 4))
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h.flatten(2).transpose(1, 2)], 1)
        pos = torch.cat([self.pos2[:, :1], self._resized(self.pos2[:, 1:], 2)], 1)
        return self.head(torch.relu(self.fc(h + pos))[:, 0])


def test_pvt_positions_resized_to_their_own_grid_are_the_table_itself():
    traced = from_torch(TwoStage, WIDTHS, _images)
    oracle = from_torch(lambda n: TwoStage(n, laid=False), WIDTHS, _images)
    src = traced.source
    assert re.search(r"^v_pos_rows = v_pos @ pos$", src, re.M)
    # the class token before the second stage's tokens: a sequence of its own, S5, with its
    # own positions
    assert re.search(r"^\w+ = prepend\(cls, \w+, S5\)$", src, re.M)
    assert "input pos_S5 : positions[S5]" in src and "param pos2 : [n_x2, S5]" in src
    _same_exponents(traced, oracle)
    _bit_identical(traced, TwoStage, _images)
    # both tables: examples/vit.tp's hand-written positions Pos @ pos (and its class token's)
    for optimizer in ("adam", "sgd"):
        vit = tp.derive(tp.parse_file(ROOT / "examples" / "vit.tp"), optimizer).abc
        mine = tp.derive(traced.program, optimizer).abc
        assert mine["v_pos"] == mine["pos2"] == vit["Pos"], optimizer
        assert mine["cls"] == vit["cls"], optimizer


def test_positions_resized_from_another_grid_are_refused():
    with pytest.raises(TensorProgError, match=r"resized from its grid \[2, 2\] to \[4, 4\]"):
        from_torch(lambda n: Grid(n, side=2), WIDTHS, _images)


class NaFlex(torch.nn.Module):
    """SigLIP2's front: flattened patches and their grid (spatial_shapes), its own resize of
    an ``nn.Embedding`` table [16, n] (a constant [B, T, 16] matmul'd with it), or the
    table's rows read by position (the oracle)."""

    def __init__(self, n, laid=True):
        super().__init__()
        from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

        self.laid, self.resize = laid, Siglip2VisionEmbeddings.resize_positional_embeddings
        self.proj = torch.nn.Linear(48, n)
        self.pos = torch.nn.Embedding(16, n)
        self.register_buffer("ids", torch.arange(16)[None], persistent=False)
        self.fc = torch.nn.Linear(n, n)
        self.head = torch.nn.Linear(n, 10)

    def forward(self, pixel_values, spatial_shapes):
        h = self.proj(pixel_values)
        if self.laid:
            pos = self.resize(self.pos.weight.reshape(4, 4, -1), spatial_shapes,
                              pixel_values.shape[1])
        else:
            pos = self.pos(self.ids)
        return self.head(torch.relu(self.fc(h + pos)).mean(1))


def _patches(grid):
    def inputs(model):
        x = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(0))
        return {"pixel_values": x, "spatial_shapes": torch.tensor([grid] * 2)}
    return inputs


def test_siglip2_positions_at_the_tables_own_grid_are_read_by_position():
    pytest.importorskip("transformers")
    traced = from_torch(NaFlex, WIDTHS, _patches([4, 4]))
    oracle = from_torch(lambda n: NaFlex(n, laid=False), WIDTHS, _patches([4, 4]))
    assert re.search(r"^param pos_weight : \[n, T\]$", traced.source, re.M)
    assert re.search(r"^\w+ = pos_weight @ pos$", traced.source, re.M)
    _same_exponents(traced, oracle)
    _bit_identical(traced, NaFlex, _patches([4, 4]))


def test_siglip2_positions_at_another_grid_are_refused():
    pytest.importorskip("transformers")
    with pytest.raises(TensorProgError, match="rows are not one-hot"):
        from_torch(NaFlex, WIDTHS, _patches([2, 8]))


class MaskedMean(torch.nn.Module):
    """SigLIP2's classifier pooling: the mean of the tokens a pixel mask keeps, written as
    ``sum(h * mask, 1) / sum(mask, 1)``."""

    def __init__(self, n):
        super().__init__()
        self.proj = torch.nn.Linear(48, n)
        self.head = torch.nn.Linear(n, 10)

    def forward(self, pixel_values, pixel_attention_mask):
        h = torch.relu(self.proj(pixel_values))
        mask = pixel_attention_mask[..., None].to(h.dtype)
        return self.head(torch.sum(h * mask, dim=1) / torch.sum(mask, dim=1))


def _masked(keep):
    def inputs(model):
        x = torch.randn(2, 16, 48, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, 16, dtype=torch.long)
        mask[:, keep:] = 0
        return {"pixel_values": x, "pixel_attention_mask": mask}
    return inputs


def test_a_masked_mean_under_a_mask_of_ones_is_the_mean_of_the_tokens():
    traced = from_torch(MaskedMean, WIDTHS, _masked(16))
    (pooled,) = re.findall(r"^(\w+) = mean\(\w+\)$", traced.source, re.M)
    assert f"head_weight @ {pooled} + head_bias" in traced.source
    abc = tp.derive(traced.program, "adam").abc
    assert str(abc["head_weight"].b) == "1" and str(abc["proj_weight"].b) == "0"


def test_a_masked_sum_that_drops_tokens_is_refused():
    with pytest.raises(TensorProgError, match="mask of 0s and 1s per token that zeroes 8"):
        from_torch(MaskedMean, WIDTHS, _masked(12))


def test_siglip2_positions_of_padded_images_are_refused():
    pytest.importorskip("transformers")

    def padded(model):  # the 16 patches of a 4 x 4 grid, then 4 of padding (reading row 0)
        x = torch.randn(2, 20, 48, generator=torch.Generator().manual_seed(0))
        return {"pixel_values": x, "spatial_shapes": torch.tensor([[4, 4]] * 2)}

    with pytest.raises(TensorProgError, match="rows other than consecutive positions"):
        from_torch(NaFlex, WIDTHS, padded)


class ImagePlusGrid(Grid):
    """The table laid out as the image's grid and added to the image itself: a sum the
    walk does not follow a reshaped param into (the table is the sum's second term)."""

    def forward(self, img):
        pos = self.pos.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        h = (self.proj(img) + pos).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.fc(h)).mean(1))


def test_a_reshaped_table_read_second_is_named_with_its_own_shapes():
    with pytest.raises(TensorProgError, match=r"the op add on a reshaped param \(its entries "
                       r"laid out anew, \[1, 16, \d+\] as \[1, \d+, 4, 4\]\)"):
        from_torch(ImagePlusGrid, WIDTHS, _images)
