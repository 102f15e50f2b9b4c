"""``F.normalize(q, dim=-1)`` over each head's coordinates (Swin V2's and YOSO's cosine
attention) traced as ``d^-1/2 * rmsnorm(q, dh)``: ``q / |q|`` is the RMS-normalised q over the
square root of its dh coordinates, a constant over heads of a fixed dim. Oracles: the traced
decoder derives what examples/qknorm.tp derives with its QK-norm gains replaced by that constant;
the emitted per-head RMSNorm times the constant is F.normalize.

Over coordinates that grow with the width (a head dim n/4, all n channels; FLA's l2norm, ``x *
rsqrt(sum(x²) + eps)``, too) the constant is the model's n^-1/2: counted in the multiplier of
attention logits that alone read the vector (cosine attention's 1/d, µP's own: nothing to
change), folded into a gain that alone reads it, and refused at the user's line where µP needs
a factor after the norm that nothing takes. Oracles: the traced program computes the model,
and at 4x the base width apply's factor is (n/base) to the derived exponent's difference."""

from __future__ import annotations

from fractions import Fraction

import pytest
from conftest import ROOT, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402


class Cosine(nn.Module):
    """examples/qknorm.tp with F.normalize in place of its QK-norm and gains: cosine attention
    over heads of ``dh`` coordinates, logits times the fixed 0.25."""

    def __init__(self, width, dh=16, by_hand=False, scale=0.25, own=False):
        super().__init__()
        self.dh, self.by_hand, self.scale = dh, by_hand, scale
        self.qn = L2() if own else None  # the query's normalisation, a module of its own
        self.E, self.P = nn.Embedding(64, width), nn.Embedding(4, width)
        self.ga, self.gf = nn.RMSNorm(width, eps=1e-6), nn.RMSNorm(width, eps=1e-6)
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Linear(width, width, bias=False)
                                              for _ in range(4))
        self.U = nn.Linear(width, 64, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        h0 = self.E(idx) + self.P(torch.arange(t))
        a = self.ga(h0)
        q, k, v = (w(a).view(b, t, -1, self.dh).transpose(1, 2) for w in (self.Wq, self.Wk,
                                                                          self.Wv))
        if self.by_hand:  # x / (|x| + eps)
            q, k = (x / (x.norm(dim=-1, keepdim=True) + 1e-6) for x in (q, k))
        elif self.qn is not None:
            q, k = self.qn(q), F.normalize(k, dim=-1)
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        h1 = h0 + self.Wo(o.transpose(1, 2).reshape(b, t, -1))
        return self.U(self.gf(h1))


class L2(nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=-1)


def tokens(model=None):
    return (torch.arange(8).remainder(13).view(2, 4),)


# traced param -> examples/qknorm.tp's
NAMES = {"E_weight": "E", "P_weight": "P", "ga_weight": "ga", "Wq_weight": "Wq",
         "Wk_weight": "Wk", "Wv_weight": "Wv", "Wo_weight": "Wo", "gf_weight": "gf",
         "U_weight": "U"}


def _cosine_example():
    """examples/qknorm.tp with q / |q| for its QK-norm: 16^-1/2 rmsnorm(q, dh), no gains."""
    text = (ROOT / "examples" / "qknorm.tp").read_text()
    for side in "qk":
        norm = f"{side} = g{side} * rmsnorm(W{side} @ a, dh)"
        assert norm in text
        text = text.replace(norm, f"{side} = 0.25 * rmsnorm(W{side} @ a, dh)")
        text = text.replace(f"param g{side} : [dh] = 1", "")
    return tp.parse(text, "cosine.tp")


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Cosine, (32, 64), tokens)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cosine_attention_traces_to_a_constant_times_rmsnorm_and_derives_as_written(traced,
                                                                                   optimizer):
    assert "0.25 * rmsnorm(" in traced.source
    ours = tp.derive(_cosine_example(), optimizer).abc
    theirs = tp.derive(traced.program, optimizer).abc
    assert {k: theirs[k] for k in NAMES} == {k: ours[v] for k, v in NAMES.items()}
    scale = next(s for s in theirs if s.startswith("attn") or "scale" in s)
    assert theirs[scale] == ours["attn"]


@pytest.mark.slow  # a variant of the form above, one more trace
def test_a_division_by_the_norm_plus_eps_is_the_same_normalisation(traced):
    by_hand = tp.from_torch(lambda n: Cosine(n, by_hand=True), (32, 64), tokens)
    assert by_hand.source.count("0.25 * rmsnorm(") == 2
    assert tp.derive(by_hand.program, "adam").abc == tp.derive(traced.program, "adam").abc


def test_the_emitted_constant_times_the_heads_rmsnorm_is_f_normalize():
    space = {"torch": torch}
    exec("\n".join(HELPERS["_heads_rmsnorm"]), space)  # noqa: S102 - the emitter's template
    x = torch.randn(2, 3, 4 * 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = 16**-0.5 * space["_heads_rmsnorm"](x, 16)
    want = F.normalize(x.unflatten(-1, (4, 16)), dim=-1).flatten(-2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)  # eps aside


def _growing(**kw):
    def build(n):
        return Cosine(n, dh=n // 4, **kw)

    return build, tp.from_torch(build, (32, 64), tokens)


def test_cosine_attention_over_a_growing_head_dim_is_mups_own_1_over_d():
    # 0.25 * dot(q / |q|, k / |k|) = 0.25 / dh * dot(rmsnorm q, rmsnorm k): the model's
    # multiplier of the program's dot goes as n^-1, which µP derives: nothing to change
    build, traced = _growing()
    assert traced.source.count("0.3535533905932738 * rmsnorm(") == 2  # 8^-1/2 at width 32
    (scale, info), = traced.scales.items()
    assert info["model_a"] == 1 == tp.derive(traced.program, "adam").abc[scale].a
    mup = MuP(traced, "adam")
    assert mup.patches == [] and mup.folded == []
    traced_computes_the_model(traced, build, tokens, tol=1e-6)  # (the norms' eps aside)


def test_a_factor_after_an_inline_normalisation_is_refused_at_its_line():
    # sdpa's default 1/sqrt(dh) on normalised q and k: the model's logits go as n^-3/2, µP's
    # as n^-1, and the query, normalised inline, has no param or module to take n^1/2
    with pytest.raises(tp.TensorProgError, match=r"µP needs the attention logits times "
                       r"\(n/base\)\^1/2 \(the model's multiplier of them counting the d\^-1/2 "
                       r"of the L2 normalisation of div, div_1\)") as err:
        MuP(_growing(scale=None)[1], "adam")
    assert "F.normalize(q, dim=-1), F.normalize(k" in err.value.diagnostics[0].span.source_line()


def test_the_factor_at_4x_the_base_width_goes_on_the_querys_own_normalisation():
    build, traced = _growing(scale=None, own=True)
    (scale, info), = traced.scales.items()
    derived = tp.derive(traced.program, "adam").abc[scale].a
    assert (derived, info["model_a"]) == (1, Fraction(3, 2))
    model = build(128)
    MuP(traced, "adam").apply(model)
    x = torch.randn(2, 4, 3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the hook on qn's output: (128 / 32)^-(derived - model's)
        torch.testing.assert_close(model.qn(x), 4.0 ** float(info["model_a"] - derived)
                                   * F.normalize(x, dim=-1))


class Sphere(nn.Module):
    """Tokens' vectors L2-normalised over all n channels (FLA's l2norm, or F.normalize), then a
    gain (``gain``) or not, read by an MLP and a readout."""

    def __init__(self, n, gain=True, fla=True):
        super().__init__()
        self.fla, self.e = fla, nn.Embedding(13, n)
        self.g = nn.Parameter(torch.ones(n)) if gain else None
        self.up, self.down, self.out = nn.Linear(n, 2 * n), nn.Linear(2 * n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        if self.fla:
            y = x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)
        else:
            y = F.normalize(x, dim=-1)
        h = y if self.g is None else self.g * y
        return self.out(x + self.down(F.relu(self.up(h))))


def test_an_l2_norm_over_all_channels_then_a_gain_folds_the_factor_into_the_gain():
    traced = tp.from_torch(Sphere, (32, 64), tokens)
    assert "mul_1 = 0.1767766952966369 * rmsnorm(embedding)" in traced.source  # 32^-1/2
    traced_computes_the_model(traced, Sphere, tokens, tol=1e-6)
    model = Sphere(128)
    MuP(traced, "adam").apply(model)
    # the model's normalised vector is (n/32)^-1/2 of the program's: g starts at 4^1/2
    torch.testing.assert_close(model.g.detach(), torch.full((128,), 2.0))


def test_an_l2_norm_over_all_channels_read_by_a_layer_is_refused_at_its_line():
    traced = tp.from_torch(lambda n: Sphere(n, gain=False, fla=False), (32, 64), tokens)
    with pytest.raises(tp.TensorProgError, match=r"an L2 normalisation over 32 coordinates .*"
                       r"µP needs it times \(n/base\)\^1/2; .* linear reads it") as err:
        MuP(traced, "adam")
    assert "F.normalize(x, dim=-1)" in err.value.diagnostics[0].span.source_line()


# forms of an L2 normalisation of u (y: another vector), each computing u / |u| or refused
FORMS = {
    "sqrt_eps": (lambda u, y: u / (u.pow(2).sum(-1, keepdim=True).sqrt() + 1e-6), None),
    "sqrt": (lambda u, y: u / torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-6), None),
    "scaled": (lambda u, y: (2 * u) * torch.rsqrt(((2 * u) ** 2).sum(-1, keepdim=True) + 1e-6),
               None),
    "linalg": (lambda u, y: u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(
        1e-12), None),
    "other": (lambda u, y: y * torch.rsqrt((u * u).sum(-1, keepdim=True) + 1e-6),
              "a product with another vector's inverse L2 norm"),
    "times_norm": (lambda u, y: y * torch.sqrt((u * u).sum(-1, keepdim=True)),
                   r"a product with a vector's sum of squares or L2 norm, sqrt\(sum\(x²\)\)"),
    "l1": (lambda u, y: u / u.abs().sum(-1, keepdim=True),
           "a sum over a vector's coordinates of anything but its squares"),
    # an eps the program's norm would not hold: the model's u / |u| differs by 0.1% to 12%
    "eps_big": (lambda u, y: u * torch.rsqrt((u * u).sum(-1, keepdim=True) + 0.1),
                r"an eps of 0.1 \(above 0.001\) added to a vector's sum of squares"),
    "eps_big_root": (lambda u, y: u / (u.pow(2).sum(-1, keepdim=True).sqrt() + 0.5),
                     r"an eps of 0.5 \(above 0.001\) added to the root of a vector's sum"),
    "inverse_plus": (lambda u, y: u * (torch.rsqrt((u * u).sum(-1, keepdim=True)) + 0.1),
                     "a number added to the inverse root of a vector's sum of squares"),
    "eps_negative": (lambda u, y: u * torch.rsqrt((u * u).sum(-1, keepdim=True) - 1e-4),
                     "a subtraction with a vector's sum of squares"),
}


class Gained(nn.Module):
    """A gain times a form of FORMS of a layer's output (of each of 4 heads, ``heads``), added
    to the residual."""

    def __init__(self, n, form, heads):
        super().__init__()
        self.form, self.heads = FORMS[form][0], heads
        self.e = nn.Embedding(13, n)
        self.g = nn.Parameter(torch.ones(n // 4 if heads else n))
        self.a, self.b, self.out = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        u, y = self.a(x), self.b(x)
        if self.heads:
            u, y = u.unflatten(-1, (4, -1)), y.unflatten(-1, (4, -1))
        h = self.g * self.form(u, y)
        return self.out(x + (h.flatten(-2) if self.heads else h))


@pytest.mark.slow  # 22 traces
@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("form", list(FORMS))
def test_other_forms_of_an_l2_norm_compute_the_model_or_are_refused_at_their_line(form, heads):
    def build(n):
        return Gained(n, form, heads)

    refused = FORMS[form][1]
    if refused:
        with pytest.raises(tp.TensorProgError, match=refused) as err:
            tp.from_torch(build, (32, 64), tokens)
        assert "self.form(u, y)" in err.value.diagnostics[0].span.source_line()
        return
    traced = tp.from_torch(build, (32, 64), tokens)
    traced_computes_the_model(traced, build, tokens, tol=1e-5)
    model = build(128)
    MuP(traced, "adam").apply(model)  # the gain takes (128 / 32)^1/2
    torch.testing.assert_close(model.g.detach(), torch.full_like(model.g, 2.0))


class Reads(nn.Module):
    """Cosine attention over heads of n/4 whose normalised query is also halved (``half``),
    the keys too (``same``; its key layer unused), or also added to the residual (``reuse``)."""

    def __init__(self, n, how):
        super().__init__()
        self.how, self.e = how, nn.Embedding(13, n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        same = self.how == "same"
        q, k, v = (f(x).unflatten(-1, (4, -1)).transpose(1, 2) for f in (
            self.q, self.v if same else self.k, self.v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = 0.5 * q if self.how == "half" else q
        k = q if same else k
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0).transpose(1, 2)
        extra = q.transpose(1, 2).flatten(-2) if self.how == "reuse" else 0
        return self.out(x + self.o(o.flatten(-2)) + extra)


@pytest.mark.slow  # 3 traces
@pytest.mark.parametrize("how", ["half", "same", "reuse"])
def test_a_normalised_query_reaching_the_logits_through_a_number_or_also_read_elsewhere(how):
    def build(n):
        return Reads(n, how)

    traced = tp.from_torch(build, (32, 64), tokens)
    if how == "reuse":  # the query's constant is then no multiplier of the logits alone
        with pytest.raises(tp.TensorProgError, match=r"an L2 normalisation over 8 .* add_1 "
                           r"reads it") as err:
            MuP(traced, "adam")
        assert "F.normalize(q, dim=-1)" in err.value.diagnostics[0].span.source_line()
        return
    (scale, info), = traced.scales.items()
    assert info["model_a"] == 1 == tp.derive(traced.program, "adam").abc[scale].a
    assert MuP(traced, "adam").patches == []
    traced_computes_the_model(traced, build, tokens, tol=1e-5)


def test_a_number_added_to_the_inverse_norm_is_refused_at_its_line():
    # u * (rsqrt(sum(u²)) + 0.1) is no norm: it was traced as u / |u|, the 0.1 dropped
    with pytest.raises(tp.TensorProgError, match=FORMS["inverse_plus"][1]) as err:
        tp.from_torch(lambda n: Gained(n, "inverse_plus", False), (32, 64), tokens)
    assert "self.form(u, y)" in err.value.diagnostics[0].span.source_line()


class SharedGain(nn.Module):
    """A gain times an L2 normalisation over all n channels, the gain also read by another
    normalisation's product (``two``) or by a plain vector's."""

    def __init__(self, n, two):
        super().__init__()
        self.two, self.e, self.g = two, nn.Embedding(13, n), nn.Parameter(torch.ones(n))
        self.a, self.b, self.out = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        y = self.b(x)
        other = F.normalize(y, dim=-1) if self.two else y
        return self.out(x + self.g * F.normalize(self.a(x), dim=-1) + self.g * other)


@pytest.mark.parametrize("two", [pytest.param(True, marks=pytest.mark.slow), False])
def test_a_gain_read_elsewhere_too_is_refused_at_the_normalisations_line(two):
    # folding (n/base)^1/2 into g would scale its other product too; the refusal said
    # "attention logits" and "the query's gain", at no line
    traced = tp.from_torch(lambda n: SharedGain(n, two), (32, 64), tokens)
    with pytest.raises(tp.TensorProgError, match=r"an L2 normalisation over 32 coordinates .* "
                       r"µP needs it times \(n/base\)\^1/2; but the gain g that takes it "
                       r"\(mul(_1)? = g \* div\) is read elsewhere too") as err:
        MuP(traced, "adam")  # (two: the first normalisation refused, either one's line)
    assert "F.normalize(" in err.value.diagnostics[0].span.source_line()


class KeysOnly(nn.Module):
    """Attention over heads of n/4 whose keys alone are L2-normalised and whose query is the
    sum of two layers' outputs (logits at sdpa's scale 1: µP needs them times (n/base)^-1/2)."""

    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.q, self.q2, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(5))
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        q, k, v = (y.unflatten(-1, (4, -1)).transpose(1, 2) for y in (
            self.q(x) + self.q2(x), self.k(x), self.v(x)))
        k = F.normalize(k, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0).transpose(1, 2)
        return self.out(x + self.o(o.flatten(-2)))


def test_a_factor_the_keys_normalisation_needs_and_no_query_layer_takes_is_refused_at_its_line():
    # the query is no one layer's output: the refusal had no line, the cause is the keys' norm
    traced = tp.from_torch(KeysOnly, (32, 64), tokens)
    with pytest.raises(tp.TensorProgError, match=r"µP needs the attention logits times "
                       r"\(n/base\)\^-1/2 \(the model's multiplier of them counting the d\^-1/2 "
                       r"of the L2 normalisation of div\) .* is combined with something else") \
            as err:
        MuP(traced, "adam")
    assert "F.normalize(k, dim=-1)" in err.value.diagnostics[0].span.source_line()
