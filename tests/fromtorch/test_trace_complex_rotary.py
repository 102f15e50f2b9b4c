"""from_torch on the rotary embedding written with complex numbers (HF DeepSeek-V2's and Llama 4's
apply_rotary_emb: view_as_complex of each head's pairs, a product with torch.polar(1, angles),
view_as_real, flatten): the interleaved rotary, an exact rotation of the pairs (2i, 2i + 1).
Oracles: it computes what the interleaved real form computes (same weights, same output within
float32 rounding) and derives what that form derives (the network without a rotary's µP), and
apply is bit-identical at the base. A table that is no rotation (|z| != 1) and any other complex
op are refused at their lines (tests/test_error_catalogue.py)."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
HEADS = 4
T = 8


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, T),)


class Attention(nn.Module):
    """``rotary``: None; "complex" (HF Llama 4's); "real" (the same rotation with cos and sin,
    GPT-J's rotate_every_two)."""

    def __init__(self, n, rotary=None):
        super().__init__()
        self.rotary, self.dh = rotary, n // HEADS
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        inv = 1.0 / 10000 ** (torch.arange(0, self.dh, 2).float() / self.dh)
        self.register_buffer("inv_freq", inv, persistent=False)

    def _angles(self, x):  # [1, T, dh/2], from the positions in the forward as HF's
        pos = torch.arange(x.shape[-2], device=x.device)[None]
        return pos[..., None].float() * self.inv_freq

    def _complex(self, x, table):
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * table[:, None]).flatten(3).type_as(x)

    def _real(self, x, angles):
        cos = angles.cos().repeat_interleave(2, dim=-1)[:, None]
        sin = angles.sin().repeat_interleave(2, dim=-1)[:, None]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return x * cos + torch.stack((-x2, x1), dim=-1).flatten(-2) * sin

    def forward(self, x):
        b, t, n = x.shape
        q, k, v = (
            f(x).view(b, t, HEADS, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        angles = self._angles(q)
        if self.rotary == "real":
            q, k = self._real(q, angles), self._real(k, angles)
        elif self.rotary:
            table = torch.polar(torch.ones_like(angles), angles)
            q, k = self._complex(q, table), self._complex(k, table)
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


def test_the_complex_form_computes_the_interleaved_rotation():
    torch.manual_seed(0)
    complex_, real = Net(32, "complex"), Net(32, "real")
    real.load_state_dict(complex_.state_dict())
    idx = _tokens(None)[0]
    # float32: the two forms round differently, within a few ulps of outputs of size ~1
    torch.testing.assert_close(complex_(idx), real(idx), rtol=1e-5, atol=1e-5)


def test_a_complex_rotary_is_the_network_without_it():
    def build(n):
        return Net(n, "complex")

    traced = from_torch(build, WIDTHS, _tokens)
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    # the interleaved real form (the same rotation) derives what the network without a
    # rotary derives (test_trace_rotary.py), and the complex form what the real one derives
    real = from_torch(lambda n: Net(n, "real"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(real)
    assert apply_is_bit_identical_at_base(traced, build, _tokens)

