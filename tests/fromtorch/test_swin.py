"""Swin's windowed attention, traced: tokens laid out as their grid, rolled (shifted windows),
cut into windows folded into the batch, attention within each window with the relative
position bias (and the shifted windows' -100 mask), the windows put back and the roll undone,
becomes the language's ``R @ win`` with ``input win : windows[T, B, H, W, s]`` (ops_windows.py);
Swin's patch merging becomes ``merge2x2(image(t, H, W), D)``.
Oracles: examples/swin.tp derives the same exponents as its torch counterpart, traced; the
emitted program computes the model's output (float64, the model's -100 mask included); apply
leaves it bit-identical; the windows' offsets and mask the emitted module builds are, pair for
pair, transformers' Swin's; variants (a roll the mask does not match, windows padded, a bias
added outside the windows, eager logits scaled after the bias, keys not transposed, a param per
position of a window or per head, one head) are refused at their line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"
WINDOW = 4


def window_partition(x, w):  # transformers' Swin's
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)
    return x.transpose(2, 3).contiguous().view(-1, w, w, c)


def window_reverse(windows, w, h, wd):  # transformers' Swin's
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c)
    return x.transpose(2, 3).contiguous().view(-1, h, wd, c)


def relative_index(w):  # SwinRelativePositionBias._create_relative_position_index
    coords = torch.stack(torch.meshgrid([torch.arange(w), torch.arange(w)], indexing="ij"))
    coords = torch.flatten(coords, 1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += w - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1)


def attn_mask(h, wd, w, shift, device=None):  # SwinLayer.get_attn_mask
    hi, wi = torch.arange(h, device=device), torch.arange(wd, device=device)
    hr = (hi >= h - w).long() + (hi >= h - shift).long()
    wr = (wi >= wd - w).long() + (wi >= wd - shift).long()
    img = (hr[None, :, None, None] * 3 + wr[None, None, :, None]).float()
    m = window_partition(img, w).view(-1, w * w)
    m = m.unsqueeze(1) - m.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


class Block(nn.Module):
    """SwinLayer's forward, written out; ``variant`` breaks one thing a recogniser must see."""

    def __init__(self, n, shift, variant=""):
        super().__init__()
        self.shift, self.variant = shift, variant
        self.heads = 1 if variant == "one_head" else n // 16
        self.norm1, self.norm2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, self.heads) * 0.5)
        self.register_buffer("index", relative_index(WINDOW).view(-1), persistent=False)
        self.fc1, self.fc2 = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        if variant == "pos":
            self.pos = nn.Parameter(torch.randn(WINDOW * WINDOW, n))
        if variant in ("per_position", "per_head"):
            self.pos = nn.Parameter(torch.randn(WINDOW * WINDOW if variant == "per_position"
                                                else self.heads))

    def forward(self, x, h, wd):
        b, _, c = x.shape
        w, s = WINDOW, self.shift
        y = self.norm1(x).view(b, h, wd, c)
        if self.variant == "pad":  # Swin's maybe_pad of a grid the window does not divide
            y = F.pad(y, (0, 0, 0, 4, 0, 4))
            h, wd = h + 4, wd + 4
        roll = -s if self.variant != "roll" else s
        if s:
            y = torch.roll(y, (roll, roll), (1, 2))
        win = window_partition(y, w).view(-1, w * w, c)
        if self.variant == "pos":  # a table per token of a window: the same for every window
            win = win + self.pos
        if self.variant == "per_position":  # a number per position of a window, tokens last
            win = (win.transpose(1, 2) * self.pos).transpose(1, 2)
        n_w = win.shape[0]
        q, k, v = (f(win).view(n_w, w * w, self.heads, -1).transpose(1, 2) for f in (
            self.q, self.k, self.v))
        if self.variant == "per_head":  # a number per head, the heads last
            q = (q.transpose(1, 3) * self.pos).transpose(1, 3)
        bias = self.table[self.index].view(w * w, w * w, -1).permute(2, 0, 1).contiguous()
        if self.variant in ("eager", "cosine", "scaled_late", "scaled_masked", "qk"):
            # DonutSwin's: logits, bias, mask by hand
            if self.variant == "cosine":  # Swin V2's cosine attention, at a fixed temperature
                q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1) * 2.0
            # qk: q @ k, k not transposed (a valid matmul: the head size is w² = 16)
            kt = k if self.variant == "qk" else k.transpose(-1, -2)
            sc = torch.matmul(q, kt) / 4.0 + bias.unsqueeze(0)
            if self.variant == "scaled_late":  # the bias scaled too
                sc = sc * 0.5
            if s:
                m = attn_mask(h, wd, w, s, x.device)
                sc = sc.view(b, n_w // b, self.heads, w * w, w * w) + m.unsqueeze(1).unsqueeze(0)
                if self.variant == "scaled_masked":  # the bias and mask scaled too
                    sc = sc / 2.0
                sc = sc.view(-1, self.heads, w * w, w * w)
            a = torch.matmul(F.softmax(sc, dim=-1), v)
            return self._out(x, a, n_w, h, wd, c)
        bias = bias.unsqueeze(0)
        if s:
            m = attn_mask(h, wd, w, s, x.device)
            m = m.unsqueeze(1).unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(-1, 1, w * w,
                                                                               w * w)
            bias = bias + m
        if self.variant == "kt":  # keys transposed (a valid sdpa: the head size is w² = 16)
            k = k.transpose(-1, -2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=16**-0.5)
        return self._out(x, a, n_w, h, wd, c)

    def _out(self, x, a, n_w, h, wd, c):
        w, s, roll = WINDOW, self.shift, -self.shift if self.variant != "roll" else self.shift
        b = x.shape[0]
        a = self.o(a.transpose(1, 2).reshape(n_w, w * w, c)).view(-1, w, w, c)
        a = window_reverse(a, w, h, wd)
        if s:
            a = torch.roll(a, (-roll, -roll), (1, 2))
        if self.variant == "pad":
            a = a[:, :h - 4, :wd - 4, :].contiguous()
            h, wd = h - 4, wd - 4
        x = x + a.view(b, h * wd, c)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def merge(x, h, wd, order=((0, 0), (1, 0), (0, 1), (1, 1))):  # SwinPatchMerging's
    b, _, c = x.shape
    x = x.view(b, h, wd, c)
    x = torch.cat([x[:, r::2, c_::2, :] for r, c_ in order], dim=-1)
    return x.view(b, -1, 4 * c)


class SwinLike(nn.Module):
    """examples/swin.tp in torch: Swin's patch embedding, an unshifted and a shifted block,
    patch merging, a block whose one window is the whole 4 x 4 grid, Swin's pooler (layer norm,
    the tokens' mean) and classifier."""

    def __init__(self, n, variant="", short=False):
        super().__init__()
        self.variant = variant
        self.embed, self.norm0 = nn.Conv2d(3, n, 4, stride=4), nn.LayerNorm(n)
        # short: the shifted block and the merging only (a quicker trace)
        self.blocks = nn.ModuleList([Block(n, 2, variant)] if short else [
            Block(n, 0), Block(n, 2, variant)])
        self.merge_norm, self.reduce = nn.LayerNorm(4 * n), nn.Linear(4 * n, 2 * n, bias=False)
        self.last = nn.Identity() if short else Block(2 * n, 0)
        self.norm, self.head = nn.LayerNorm(2 * n), nn.Linear(2 * n, 10)

    def forward(self, img):
        x = self.embed(img)
        h, wd = x.shape[2:]
        x = self.norm0(x.flatten(2).transpose(1, 2))
        for blk in self.blocks:
            x = blk(x, h, wd)
        order = ((0, 0), (0, 1), (1, 0), (1, 1)) if self.variant == "merge" else (
            (0, 0), (1, 0), (0, 1), (1, 1))
        x = self.reduce(self.merge_norm(merge(x, h, wd, order)))
        x = x if isinstance(self.last, nn.Identity) else self.last(x, h // 2, wd // 2)
        pooled = F.adaptive_avg_pool1d(self.norm(x).transpose(1, 2), 1)
        return self.head(torch.flatten(pooled, 1))


def images(model=None):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def short(n):
    return SwinLike(n, short=True)


@pytest.mark.parametrize("variant", ["", pytest.param("eager", marks=pytest.mark.slow),
                                     pytest.param("cosine", marks=pytest.mark.slow)])
def test_a_shifted_block_and_merging_trace_to_what_the_model_computes(variant):
    # windows of other tokens, another shift, the -100 mask dropped or the merged pixels in
    # another order would differ here; eager: DonutSwin's logits, bias and mask by hand
    def build(n):
        return SwinLike(n, variant, short=True)

    traced = tp.from_torch(build, (32, 64), images)
    assert "windows[T, f49, f8, f8, 2]" in traced.source
    # (cosine: the per-head RMSNorm's eps in place of F.normalize's, test_l2_normalize.py)
    traced_computes_the_model(traced, build, images, tol=1e-6 if variant == "cosine" else 1e-10)


@pytest.fixture(scope="module")
def swin():
    return tp.from_torch(SwinLike, (32, 64), images)


NAMES = {"embed.weight": "K0", "blocks.0.table": "Rb1", "blocks.1.table": "Rb2",
         "blocks.0.q.weight": "Wq1", "blocks.1.o.weight": "Wo2", "blocks.1.fc1.weight": "Wi2",
         "blocks.0.norm1.weight": "a1", "merge_norm.weight": "gm", "reduce.weight": "Wm",
         "last.table": "Rb3", "last.q.weight": "Wq3", "last.fc2.weight": "Wp3",
         "head.weight": "Wc"}


@pytest.mark.slow
def test_the_windows_trace_to_windows_inputs_of_each_shift(swin):
    src = swin.source
    assert "input win : windows[T, f49, f8, f8, 0]" in src
    assert "windows[T, f49, f8, f8, 2]" in src
    assert "windows[f16, f49, f4, f4, 0]" in src  # the merged grid's one window
    assert "= merge2x2(image(" in src


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_blocks_derive_what_examples_swin_tp_derives(swin, optimizer):
    traced = abc_by_target(swin, optimizer)
    d = tp.derive(tp.parse_file(EXAMPLES / "swin.tp"), optimizer)
    written = {k: (d.abc[v].a, d.abc[v].b, d.abc[v].c) for k, v in NAMES.items()}
    assert {k: traced[k] for k in NAMES} == written


@pytest.mark.slow
def test_the_traced_program_computes_the_model_with_its_mask(swin):
    # windows of other tokens, another shift or the -100 mask dropped would differ here
    traced_computes_the_model(swin, SwinLike, images)


@pytest.mark.slow
def test_apply_leaves_the_model_bit_identical(swin):
    apply_is_bit_identical_at_base(swin, SwinLike, images)


@pytest.mark.parametrize(("variant", "match"), [
    ("roll", r"not Swin's of any shift"),  # rolled by +2: the mask is for a roll by -2
    pytest.param("pad", r"a pad by \[0, 0, 0, 4, 0, 4\] of a grid of tokens",
                 marks=pytest.mark.slow),
    pytest.param("pos", r"add of values laid out otherwise \(other windows or orders, not "
                 r"windowed, or a table of one row per token\) of tokens cut into windows",
                 marks=pytest.mark.slow),
    pytest.param("merge", r"every other row and column of a grid of tokens used other than "
                 r"concatenated along the features, all four, in Swin's order",
                 marks=pytest.mark.slow),  # rows and columns swapped
    # eager logits scaled once the bias (and mask) are added: those would be scaled too
    ("scaled_late", r"a mul of attention logits within windows after Swin's bias"),
    pytest.param("scaled_masked", r"a div of attention logits within windows after Swin's "
                 r"bias", marks=pytest.mark.slow),
    # q @ k and sdpa(q, k.mT, v): torch computes them (head size w²), not q @ k.T
    pytest.param("qk", r"a matmul of windowed values other than the queries times the keys "
                 r"transposed", marks=pytest.mark.slow),
    pytest.param("kt", r"attention within windows whose keys are laid out otherwise than its "
                 r"queries", marks=pytest.mark.slow),
    pytest.param("one_head", r"attention within windows of one head", marks=pytest.mark.slow),
    pytest.param("per_position", r"mul of a param and tokens cut into windows whose last axis "
                 r"is their tokens", marks=pytest.mark.slow),
    pytest.param("per_head", r"mul of a param and tokens cut into windows whose last axis is "
                 r"the heads", marks=pytest.mark.slow),
])
def test_windows_other_than_swins_are_refused(variant, match):
    with pytest.raises(TensorProgError, match=r"test_swin\.py:\d+:\d+: error: cannot trace .*"
                       + match):
        tp.from_torch(lambda n: SwinLike(n, variant, short=True), (32, 64), images)


@pytest.mark.parametrize(("height", "width", "shift"), [(8, 8, 0), (8, 8, 2), (12, 8, 3),
                                                         (4, 8, 1)])
def test_the_emitted_windows_are_swins_pair_for_pair(height, width, shift):
    from tensorprog.emit.templates import HELPERS

    space: dict = {"torch": torch}
    exec("\n".join(HELPERS["_window_buckets"]), space)  # noqa: S102 - the emitted helper
    ids, bias_mask, outside = space["_window_buckets"](height, width, WINDOW, shift, None)
    mask = bias_mask + outside  # the bias's -100s, the softmax's -inf between windows
    # transformers' way: the grid's token numbers rolled and cut into windows
    grid = torch.arange(height * width).view(1, height, width, 1)
    if shift:
        grid = torch.roll(grid, (-shift, -shift), (1, 2))
    tokens = window_partition(grid, WINDOW).view(-1, WINDOW * WINDOW)
    m = attn_mask(height, width, WINDOW, shift) if shift else torch.zeros(
        tokens.shape[0], WINDOW**2, WINDOW**2)
    want = torch.full((height * width,) * 2, float("-inf"))
    want_ids = torch.full((height * width,) * 2, -1)
    for t, mw in zip(tokens, m, strict=True):
        want[t[:, None], t[None, :]] = mw
        want_ids[t[:, None], t[None, :]] = relative_index(WINDOW)
    assert torch.equal(mask, want)
    kept = want != float("-inf")
    assert torch.equal(ids[kept], want_ids[kept])


def test_the_emitted_merge_is_swins():
    from tensorprog.emit.templates import HELPERS

    space: dict = {"torch": torch}
    exec("\n".join(HELPERS["_merge2x2"]), space)  # noqa: S102 - the emitted helper
    x = torch.randn(2, 6 * 4, 5, generator=torch.Generator().manual_seed(0))
    want = merge(x, 6, 4).view(2, 3, 2, 20)
    assert torch.equal(space["_merge2x2"](x.view(2, 6, 4, 5)), want)


class _IndexGiven(nn.Module):
    """SwinLike whose relative position index the forward is given: at the example, Swin's."""

    def __init__(self, n):
        super().__init__()
        self.inner = short(n)

    def forward(self, img, index):
        self.inner.blocks[0].index = index
        return self.inner(img)


def test_an_index_given_to_the_forward_is_refused_though_the_example_is_swins():
    # the emitted module builds the windows' offsets itself: ids fed would be dropped
    with pytest.raises(TensorProgError, match=r"test_swin\.py:\d+:\d+: error: cannot trace a "
                       r"lookup of ids given to the forward or computed from its input index, "
                       r"whose example values are Swin's offsets of 4 x 4 windows") as err:
        tp.from_torch(_IndexGiven, (32, 64), lambda m=None: (
            *images(), relative_index(WINDOW).view(-1)))
    assert "self.table[self.index]" in str(err.value)
