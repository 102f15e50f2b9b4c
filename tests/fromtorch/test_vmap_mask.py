"""from_torch on an attention mask computed by torch.vmap over the positions (transformers'
``_vmap_for_bhqkv``, which builds T5Gemma 2's bidirectional sliding-window mask): export records
the vmap's levels as calls nothing reads, entered here as the graph enters them, so the mask is
the constant it is. Oracle: the traced program computes the model (float64), and derives what
the same model with the mask written without vmap derives. A mask computed so from a param is
refused at the op under vmap that reads it. A mask
from a vector's new_ones (Funnel's) is the constant of the size given."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class VmapMasked(nn.Module):
    """An embedding, two heads of attention under a window of 2048 tokens each way (every pair
    of these 8), its output layer and a readout. ``form``: "vmap" (the pair function vmapped
    over queries and keys), "plain" (the same mask by broadcasting), "param" (the window scaled
    by a param: no constant), "new_ones" (every pair, a constant of the
    embedding's new_ones)."""

    def __init__(self, n, form="vmap"):
        super().__init__()
        self.form = form
        self.e = nn.Embedding(VOCAB, n)
        self.qkv, self.o = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n, bias=False)
        self.head = nn.Linear(n, VOCAB, bias=False)
        self.w = nn.Parameter(torch.ones(()))

    def _mask(self, idx, h):
        if self.form == "new_ones":  # every pair, from the embedding's new_ones (Funnel's)
            return h.new_ones([idx.shape[1], idx.shape[1]]).bool()
        pos = torch.arange(idx.shape[1], device=idx.device)
        if self.form == "plain":
            return (pos[:, None] - pos[None, :]).abs() < 2048

        def near(q, k):
            d = q - k
            d = d * self.w if self.form == "param" else d
            return (d >= 0) & (d < 2048) | (d < 0) & (-d < 2048)

        return torch.vmap(torch.vmap(near, in_dims=(None, 0)), in_dims=(0, None))(pos, pos)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        q, k, v = (x.view(b, t, 2, n // 2).transpose(1, 2) for x in self.qkv(h).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(idx, h))
        return self.head(h + self.o(y.transpose(1, 2).reshape(b, t, n)))


@pytest.mark.slow  # two traces
def test_a_mask_computed_by_vmap_is_the_constant_it_is():
    # before: refused at the attention, "an attention mask that depends on params or buffers"
    traced = from_torch(VmapMasked, WIDTHS, _tokens)
    traced_computes_the_model(traced, VmapMasked, _tokens)
    plain = from_torch(lambda n: VmapMasked(n, "plain"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)


def test_a_mask_computed_by_vmap_from_a_param_is_refused():
    with pytest.raises(
        TensorProgError,
        match=r"test_vmap_mask.py:\d+:\d+: error: cannot trace "
        r"a mul under torch.vmap of a value computed from params",
    ):
        from_torch(lambda n: VmapMasked(n, "param"), WIDTHS, _tokens)


@pytest.mark.slow  # two traces
def test_a_mask_of_a_vectors_new_ones_is_a_constant():
    # before: refused at h.new_ones(...), "cannot trace the op new_ones" (Funnel's cls_mask)
    traced = from_torch(lambda n: VmapMasked(n, "new_ones"), WIDTHS, _tokens)
    traced_computes_the_model(traced, lambda n: VmapMasked(n, "new_ones"), _tokens)
    plain = from_torch(lambda n: VmapMasked(n, "plain"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)


class InvertedOnes(nn.Module):
    """A bool new_ones inverted, ``~h.new_ones(B, T, dtype=bool)``: a mask that zeroes every
    token's update."""

    def __init__(self, n):
        super().__init__()
        self.e, self.fc = nn.Embedding(VOCAB, n), nn.Linear(n, n)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        m = h.new_ones(h.shape[:2], dtype=torch.bool)
        return self.head(h + self.fc(h) * (~m)[..., None])


def test_a_bool_new_ones_keeps_its_dtype():
    # its ones were integers (zeros + 1), whose ~ is -2: refused as "a product with a constant
    # tensor other than a mask of 0s and 1s" where the mask is one of 0s
    with pytest.raises(
        TensorProgError,
        match=r"test_vmap_mask.py:\d+:\d+: error: cannot trace a product with a mask of 0s "
        r"and 1s per token that zeroes 16 of them",
    ):
        from_torch(InvertedOnes, WIDTHS, _tokens)
