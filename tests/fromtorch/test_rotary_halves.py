"""from_torch on gpt-oss's rotary: ``x1, x2 = chunk(x, 2, -1)``, ``cat(x1·cos − x2·sin,
x2·cos + x1·sin)`` with cos and sin tables of d/2 angles, each scaled by YaRN's
attention_scaling: rotate_half's rotation written by halves, times a number. Oracles: it is
rotate_half's rotation times the number, numerically; the traced program derives the µP of
the same network without the rotary, the number a coefficient on the turned query and key;
halves summed with the wrong sign (no rotation) are refused."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
SCALE = 1.25


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def halves(x, cos, sin, bad=False):
    x1, x2 = torch.chunk(x, 2, dim=-1)
    if bad:
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # gpt-oss's


class Net(nn.Module):
    """One causal attention of 4 heads, q and k turned by halves (``form``: None, "halves", or
    "bad": the sines' signs swapped)."""

    def __init__(self, n, form=None):
        super().__init__()
        self.form, self.dh = form, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.register_buffer("inv", 1.0 / 10000 ** (torch.arange(0, self.dh, 2).float() / self.dh),
                             persistent=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.form:
            angle = torch.arange(t, device=idx.device).float()[:, None] * self.inv  # [t, dh/2]
            cos, sin = angle.cos() * SCALE, angle.sin() * SCALE
            q, k = (halves(y, cos, sin, self.form == "bad") for y in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


def test_halves_are_rotate_halfs_rotation_times_the_scale():
    x = torch.randn(2, 4, 8, 16, dtype=torch.float64)
    angle = torch.rand(8, 8, dtype=torch.float64) * 6
    full = torch.cat((angle, angle), -1)
    x1, x2 = x.chunk(2, -1)
    turned = SCALE * (x * full.cos() + torch.cat((-x2, x1), -1) * full.sin())
    assert torch.allclose(halves(x, angle.cos() * SCALE, angle.sin() * SCALE), turned)


@pytest.fixture(scope="module")
def traced():
    return from_torch(lambda n: Net(n, "halves"), WIDTHS, _tokens)


def test_a_rotary_by_halves_with_scaled_tables_traces_as_the_scaled_vector(traced):
    notes = [s for s in traced.source.splitlines() if "rotary embedding, an exact rotation" in s]
    assert len(notes) == 2, traced.source  # the query and the key
    assert "v_cat = 1.25 * view\n" in traced.source and "cat_1 = 1.25 * view_1\n" in traced.source
    assert abc_by_target(traced) == abc_by_target(from_torch(Net, WIDTHS, _tokens))
    apply_is_bit_identical_at_base(traced, lambda n: Net(n, "halves"), _tokens)


def test_halves_summed_with_the_wrong_signs_are_refused():
    with pytest.raises(TensorProgError, match=r"test_rotary_halves.py:\d+:\d+: error: cannot "
                       r"trace a sum of cos and sin terms of a head's halves"):
        from_torch(lambda n: Net(n, "bad"), WIDTHS, _tokens)


def test_the_querys_own_layer_output_is_unfolded_as_the_query_is(traced):
    # heads of n/4: µP's attention scale 1/dh folds into q's init and LR, which scales the
    # layer's output (view) as well as the scaled query the logits read (v_cat = 1.25 * view):
    # the check reads both with the factor undone
    from tensorprog.fromtorch import MuP

    mup = MuP(traced, "adam")
    model = Net(128, "halves")
    mup.apply(model)
    unfold = mup.unfolded(model)
    assert unfold["view"] == unfold["v_cat"] == pytest.approx(2.0)  # (128 / 32) ** (1 / 2)


class TwoAngles(Net):
    """q and k's halves (``form`` "halves": chunk(x, 2); "pairs": x[..., ::2], x[..., 1::2],
    DeepSeek-V3's interleaved form) turned by two tables of angles, θ for the first and
    ``other`` for the second: a rotation only where both are one table."""

    def __init__(self, n, form="halves", other="inv"):
        super().__init__(n, form)
        self.other = other
        self.register_buffer("inv2", 1.0 / 500 ** (torch.arange(0, self.dh, 2).float() / self.dh),
                             persistent=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        pos = torch.arange(t, device=idx.device).float()[:, None]
        a, a2 = pos * self.inv, pos * getattr(self, self.other)
        q, k = (self.turn(y, a.cos(), a.sin(), a2.cos(), a2.sin()) for y in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, n)))

    def turn(self, x, cos, sin, cos2, sin2):
        x1, x2 = torch.chunk(x, 2, dim=-1) if self.form == "halves" else (x[..., ::2], x[..., 1::2])
        return torch.cat((x1 * cos - x2 * sin, x2 * cos2 + x1 * sin2), dim=-1)


@pytest.mark.parametrize("form", ["halves", "pairs"])
def test_halves_turned_by_two_tables_of_angles_are_refused(form):
    # θ ≠ φ: each pair's map has determinant cos(θ − φ), no rotation, refused at the cat
    with pytest.raises(TensorProgError, match=r"test_rotary_halves.py:\d+:\d+: error: cannot "
                       r"trace a concatenation of a head's two turned halves that is not one "
                       r"rotation"):
        from_torch(lambda n: TwoAngles(n, form, "inv2"), WIDTHS, _tokens)


def test_halves_turned_by_one_table_computed_twice_are_a_rotation(traced):
    # pos * inv written once for each half: the same ops of the same buffer, one table
    one = from_torch(lambda n: TwoAngles(n, "halves"), WIDTHS, _tokens)
    assert abc_by_target(one) == abc_by_target(traced)


class FusedScaled(nn.Module):
    """q, k, v from one fused layer, the query rows times a number before the logits
    (LongCat-Flash's q_b_proj output times mla_scale_q_lora)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out, self.qkv = nn.Embedding(13, n), nn.Linear(n, 13), nn.Linear(n, 3 * n)

    def forward(self, tok):
        h = self.e(tok)
        b, t, n = h.shape
        q, k, v = (z.view(b, t, 4, n // 4).transpose(1, 2) for z in self.qkv(h).chunk(3, -1))
        y = F.scaled_dot_product_attention(SCALE * q, k, v, is_causal=True)
        return self.out(h + y.transpose(1, 2).reshape(b, t, n))


def test_a_fused_layers_query_rows_are_unfolded_with_the_query_read_under_a_number():
    # before: the query rows' own vector (the fused layer's q block) kept the patch's factor in
    # the check, its change read as shrinking by n^-1/2 (LongCat-Flash's queries at -0.55)
    from tensorprog.fromtorch import MuP

    traced = from_torch(FusedScaled, WIDTHS, _tokens)
    mup = MuP(traced, "adam")
    model = FusedScaled(4 * WIDTHS[0])
    mup.apply(model)
    unfold = mup.unfolded(model)
    made = {v: traced.params[w].rows for v, (w, *_) in traced.producers.items()}
    q_rows = made["getitem"]
    assert [v for v in made if made[v] == q_rows] == ["getitem", "mul"]  # SCALE * the q block
    assert unfold["getitem"] == unfold["mul"] == pytest.approx(2.0)  # 4 ** (1 / 2)
    assert "getitem_1" not in unfold and "getitem_2" not in unfold  # k's and v's rows
