"""from_torch on the interleaved rotary embedding (GPT-J's rotate_every_two, with each angle
repeated for its pair as GLM, Helium and ERNIE 4.5 write the table; GLM's on half of each head):
an exact rotation of the pairs (2i, 2i + 1), so the traced program is the network without it.
Oracle: the same model without the rotary derives the same µP; apply is bit-identical at the
base; a stack that is no rotate_every_two is refused. Tables rearranged after cos and sin alike
(NeoMME's M-RoPE: a select of each axis, strided halves stacked, the table twice) are a rotation
too; rearranged otherwise, or moved by an op the trace does not follow, they are refused."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
HEADS = 4


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def rotate_every_two(x, form):
    x1, x2 = x[..., ::2], x[..., 1::2]
    if form == "bad":  # the pairs' halves not negated: no rotation
        return torch.stack((x2, x1), dim=-1).flatten(-2)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def _recomposed(t, once=False, swapped=False):
    """NeoMME's recomposition_frequencies: axis 0's even entries and axis 1's odd ones,
    interleaved, then the table twice (``once``: not twice, each angle twice over instead;
    ``swapped``: the other entries of each axis)."""
    a, b = (1, 0) if swapped else (0, 1)
    angles = torch.stack((t[0][..., a::2], t[1][..., b::2]), -1).flatten(-2)
    return angles.repeat_interleave(2, -1) if once else torch.cat((angles, angles), -1)


class Attention(nn.Module):
    """``rotary``: None, "full" (every coordinate of a head), "partial" (GLM's first half),
    "bad" (a stack that is no rotation), "flipped" (the tables flipped after cos), "mrope"
    (NeoMME's two-axis tables rearranged after cos, rotate_half), "mrope_swapped" (sin's
    rearranged otherwise), "mrope_once" (no table twice), "mrope_partial" (NeoMME's global
    layers: M-RoPE on part of each head, the rest passed)."""

    def __init__(self, n, rotary=None):
        super().__init__()
        self.rotary, self.dh = rotary, n // HEADS
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.r = self.dh // 2 if rotary in ("partial", "mrope_partial") else self.dh
        inv = 1.0 / 10000 ** (torch.arange(0, self.r, 2).float() / self.r)
        angle = torch.outer(torch.arange(8).float(), inv)
        self.register_buffer("angle", torch.cat((angle, angle), -1), persistent=False)

    def _rope(self, x):
        cos = self.angle.cos()[..., : self.r // 2].repeat_interleave(2, dim=-1)
        sin = self.angle.sin()[..., : self.r // 2].repeat_interleave(2, dim=-1)
        if self.rotary == "flipped":  # a table moved by an op the trace does not follow
            cos, sin = (t.flip(-1) for t in (self.angle.cos(), self.angle.sin()))
        if self.rotary in ("mrope", "mrope_swapped", "mrope_once"):  # NeoMME's M-RoPE
            half = self.angle[..., : self.r // 2]
            two = torch.stack((half, half))  # one row of angles per axis (text: the same)
            cos = _recomposed(two.cos(), self.rotary == "mrope_once")
            sin = _recomposed(two.sin(), self.rotary == "mrope_once",
                              swapped=self.rotary == "mrope_swapped")
            return x * cos + rotate_half(x) * sin
        x_rot, x_pass = x[..., : self.r], x[..., self.r :]
        if self.rotary == "mrope_partial":
            two = torch.stack((self.angle[..., : self.r // 2],) * 2)  # one table per axis
            cos, sin = _recomposed(two.cos()), _recomposed(two.sin())
            return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
        x_rot, x_pass = x[..., : self.r], x[..., self.r :]
        turned = x_rot * cos + rotate_every_two(x_rot, self.rotary) * sin
        return torch.cat((turned, x_pass), dim=-1)

    def forward(self, x):
        b, t, n = x.shape
        q, k, v = (
            f(x).view(b, t, HEADS, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        if self.rotary:
            q, k = self._rope(q), self._rope(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, n))


class Net(nn.Module):
    def __init__(self, n, rotary=None):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.attn = Attention(n, rotary)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        return self.out(x + self.attn(F.rms_norm(x, x.shape[-1:])))


@pytest.fixture(scope="module")
def plain():
    return abc_by_target(from_torch(Net, WIDTHS, _tokens))


@pytest.mark.parametrize("rotary", ["full", "partial"])
def test_an_interleaved_rotary_is_the_network_without_it(plain, rotary):
    def build(n):
        return Net(n, rotary)

    traced = from_torch(build, WIDTHS, _tokens)
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    assert abc_by_target(traced) == plain
    assert apply_is_bit_identical_at_base(traced, build, _tokens)


def test_a_stack_that_is_no_rotation_is_refused():
    with pytest.raises(TensorProgError, match="a stack of vectors"):
        from_torch(lambda n: Net(n, "bad"), WIDTHS, _tokens)


@pytest.mark.parametrize("rotary", ["mrope", pytest.param("mrope_partial",
                                                           marks=pytest.mark.slow)])
def test_tables_rearranged_after_cos_and_sin_alike_are_a_rotation(plain, rotary):
    def build(n):
        return Net(n, rotary)

    traced = from_torch(build, WIDTHS, _tokens)
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    assert abc_by_target(traced) == plain
    assert apply_is_bit_identical_at_base(traced, build, _tokens)


@pytest.mark.parametrize("rotary, match", [
    pytest.param("flipped", r"a product with a rotary cos/sin table that the trace lost track "
                 r"of at flip at test_trace_rotary.py:\d+", marks=pytest.mark.slow),
    ("mrope_swapped", "a sum of cos and sin terms that is not a rotation of one vector"),
    pytest.param("mrope_once", "a product with a cos table rearranged after cos and sin other "
                 "than a whole head, or its first part .a partial rotary., times one table "
                 "twice", marks=pytest.mark.slow),
])
def test_tables_moved_otherwise_are_refused(rotary, match):
    with pytest.raises(TensorProgError, match=match):
        from_torch(lambda n: Net(n, rotary), WIDTHS, _tokens)
