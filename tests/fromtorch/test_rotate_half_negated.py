"""from_torch on HF's rotary with rotate_half negated, ``cat((x2, -x1))`` (NanoChat's): the
rotation by the opposite angles, as exact a rotation as ``cat((-x2, x1))``'s. Oracle: the same
network without the rotary derives the same µP, and so does the usual rotate_half; a cat of the
halves not negated (no rotation) is refused."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def rotate_half(x, form):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat({"usual": (-x2, x1), "negated": (x2, -x1), "bad": (x2, x1)}[form], dim=-1)


class Net(nn.Module):
    """One causal attention of 4 heads, its q and k turned by HF's rotary (``form``: None, or
    rotate_half's "usual", "negated" or "bad")."""

    def __init__(self, n, form=None):
        super().__init__()
        self.form, self.dh = form, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        inv = 1.0 / 10000 ** (torch.arange(0, self.dh, 2).float() / self.dh)
        angle = torch.outer(torch.arange(8).float(), inv)
        self.register_buffer("angle", torch.cat((angle, angle), -1), persistent=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.form:
            cos, sin = self.angle.cos(), self.angle.sin()
            q, k = (y * cos + rotate_half(y, self.form) * sin for y in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


@pytest.fixture(scope="module")
def plain():
    return abc_by_target(from_torch(Net, WIDTHS, _tokens))


@pytest.mark.parametrize("form", ["usual", "negated"])
def test_rotate_half_negated_is_a_rotation_too(plain, form):
    def build(n):
        return Net(n, form)

    traced = from_torch(build, WIDTHS, _tokens)
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    assert abc_by_target(traced) == plain
    apply_is_bit_identical_at_base(traced, build, _tokens)


def test_halves_swapped_without_a_sign_are_refused():
    with pytest.raises(TensorProgError, match=r"test_rotate_half_negated.py:\d+:\d+: error: "
                       r"cannot trace a concatenation of vectors"):
        from_torch(lambda n: Net(n, "bad"), WIDTHS, _tokens)
