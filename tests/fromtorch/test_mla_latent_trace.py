"""Multi-head latent attention written as Dots.llm3 writes it (fromtorch/ops_mla.py): the
compressed latent kept as (batch, 1, tokens, r), one head of all its features, scaled by a
number before kv_b reads it (each token's r features: the axis of 1 moves no data), the keys
built in place (``new_empty`` and a ``copy_`` into each part of their last axis) and a per-head
sigmoid gate viewed (b, t, H, 1). Oracles: the traced program computes the model (the shared
oracle) and derives the exponents of the same attention without the number; copies into
overlapping or partial slices, and a latent cut into heads of its own, are refused."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError, derive  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Latent(nn.Module):
    """One MLA layer of 4 heads (no-rotary parts n/8, a rotary key of n/8 shared by all heads,
    a latent of n/4), ``scale`` times the latent before kv_b; ``form`` a variant: "plain", "gate"
    (a per-head sigmoid gate viewed (b, t, H, 1)), or one the tracer must refuse."""

    def __init__(self, n, form="plain", scale=2.0, heads=4):
        super().__init__()
        self.form, self.scale, self.h = form, scale, heads
        self.dn, self.dr, self.r = n // 8, n // 8, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.q = nn.Linear(n, heads * (self.dn + self.dr), bias=False)
        self.kv_a = nn.Linear(n, self.r + self.dr, bias=False)
        self.norm = nn.RMSNorm(self.r, eps=1e-6)
        halves = form == "latent_heads"  # 2 latent heads of r/2, each read for H/2 heads
        self.kv_b = nn.Linear(self.r // 2 if halves else self.r,
                              heads * self.dn * (1 if halves else 2), bias=False)
        self.g = nn.Linear(n, heads, bias=False)
        self.o = nn.Linear(heads * self.dn, n, bias=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, -1).transpose(1, 2)
        q_nope, q_rot = torch.split(q, [self.dn, self.dr], dim=-1)
        c, k_rot = torch.split(self.kv_a(x), [self.r, self.dr], dim=-1)
        if self.form == "latent_heads":  # the latent cut into 2 heads, kv_b shared by them
            c = self.norm(c).view(b, t, 2, self.r // 2).transpose(1, 2) * self.scale
            kv = self.kv_b(c).transpose(1, 2).reshape(b, t, self.h, -1).transpose(1, 2)
        elif self.form == "one_last":  # the axis of 1 after the tokens: (b, t, 1, r)
            kv = self.kv_b(self.norm(c).view(b, t, 1, self.r) * self.scale)
            kv = kv.view(b, t, -1, 2 * self.dn).transpose(1, 2)
        else:
            c = self.norm(c).view(b, 1, t, self.r) * self.scale
            kv = self.kv_b(c).view(b, t, -1, 2 * self.dn).transpose(1, 2)
        k_nope, v = torch.split(kv, [self.dn, self.dn], dim=-1)
        k_rot = k_rot.view(b, 1, t, self.dr).expand(-1, self.h, -1, -1)
        k = kv.new_empty(*kv.shape[:-1], self.dn + self.dr)
        k[..., : self.dn].copy_(k_nope)
        if self.form == "copy_twice":  # the no-rotary part written again: the first copy lost
            k[..., : self.dn].copy_(2 * k_nope)
        if self.form != "copy_partial":  # else the rotary part is never written
            k[..., self.dn:].copy_(k_rot)
        y = F.scaled_dot_product_attention(torch.cat((q_nope, q_rot), dim=-1), k, v,
                                           is_causal=True).transpose(1, 2)
        if self.form == "gate":
            y = y * self.g(x).view(b, t, -1, 1).sigmoid()
        return self.out(x + self.o(y.reshape(b, t, -1)))


@pytest.mark.parametrize("form", ["gate", pytest.param("one_last", marks=pytest.mark.slow)])
def test_a_scaled_latent_of_one_head_computes_the_model(form):
    build = lambda n: Latent(n, form)  # noqa: E731
    traced = from_torch(build, WIDTHS, _tokens)
    assert "2.0 * " in traced.source  # the latent's scale, on each token's r features
    if form == "gate":
        assert "spread(" in traced.source
    traced_computes_the_model(traced, build, _tokens)


def test_the_scale_leaves_the_exponents_as_they_are():
    got, want = (derive(from_torch(lambda n, s=s: Latent(n, scale=s), WIDTHS, _tokens).program,
                        "adam").abc for s in (2.0, 1.0))
    assert {p: x for p, x in got.items() if "weight" in p} == \
        {p: x for p, x in want.items() if "weight" in p}


@pytest.mark.parametrize(("form", "match"), [
    ("copy_twice", r"an in-place copy_ into anything but a part of a new_empty tensor's last "
                   r"axis, each part filled once"),
    ("copy_partial", r"a new_empty tensor read before copy_ has filled its last axis"),
    # a linear layer over each of 2 heads of the latent: no per-token layer, refused where
    # its heads are read back
    ("latent_heads", r"cannot trace a view from \[2, 8, 2, 16\] to \[2, 8, 4, 8\]"),
])
def test_a_latent_or_key_built_otherwise_is_refused(form, match):
    with pytest.raises(TensorProgError, match=match):
        from_torch(lambda n: Latent(n, form), WIDTHS, _tokens)
