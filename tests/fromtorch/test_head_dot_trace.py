"""A dot per head of one token, traced (fromtorch/ops_headdot.py): NeoMME's exclusive
self-attention, ``o - tanh(alpha) * (o * vn).sum(-1, keepdim=True) * vn`` with vn the token's
own value L2-normalised per head, traces to the program's ``hdot(o, vn, dh)`` laid back over
the heads by ``spread``, computes the model's output (the shared oracle), and its exponents are
the derivation's (engine/rules_hdot.py): over heads of 16 a finite sum, over heads of n/4 a CLT
sum of independent sides and an LLN sum of correlated ones, each checked against numbers (and the
traced model's coordinate check, slow). A sum over a block that is no head is refused at its
line, and so is a unit value over heads of n/4, whose dh^-1/2 the trace would hold at its base
value (its exact program, with a scale 1/dh of the dot, is derived here from its text)."""

import functools

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Exclusive(nn.Module):
    """One attention layer of heads of ``dh`` whose output loses, per head, its component along
    the token's own unit value (NeoMME's), or a near miss the tracer must refuse."""

    def __init__(self, n, dh=16, form="neomme"):
        super().__init__()
        self.form, self.dh, self.h = form, dh, n // dh
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.alpha = nn.Parameter(torch.full((self.h,), 0.5))

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (
            z(x).view(b, t, self.h, self.dh).transpose(1, 2) for z in (self.q, self.k, self.v)
        )
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        vn = F.normalize(v.transpose(1, 2), dim=-1)
        if self.form == "head_sum":  # each head's coordinates summed, no product: no dot
            proj = (y + vn).sum(-1, keepdim=True)
        elif self.form == "two_heads":  # a sum over two heads' coordinates: no head's dot
            pair = (y * vn).reshape(b, t, self.h // 2, 2 * self.dh)
            proj = pair.sum(-1, keepdim=True).repeat_interleave(2, -2)
        elif self.form == "sigmoid":  # a function of the gate, then a gain and the product
            proj = torch.sigmoid((y * vn).sum(-1, keepdim=True))
        elif self.form == "viewed":  # the gate's axis of 1 viewed anew: no product's factor
            proj = (y * vn).sum(-1, keepdim=True).reshape(b, t, self.h, 1)
        else:
            proj = (y * vn).sum(-1, keepdim=True)
        gain = torch.tanh(self.alpha)
        if self.form == "int_gain":  # a cast that rounds tanh(alpha) to 0: no gain tanh(alpha)
            gain = gain.type_as(idx)
        if self.form == "int_values":  # the output rounded to whole numbers: no identity
            y = (4 * y).type_as(idx).to(x.dtype)
        y = y - (gain.view(1, 1, -1, 1) * proj) * vn
        return self.out(x + self.o(y.reshape(b, t, c)))


@functools.cache
def _traced(form="neomme", heads=None):
    return from_torch(lambda n: Exclusive(n, n // heads if heads else 16, form), WIDTHS, _tokens)


def test_the_exclusive_attention_traces_to_hdot_and_computes_the_model():
    tr = _traced()
    assert "hdot(" in tr.source and "spread(" in tr.source
    traced_computes_the_model(tr, lambda n: Exclusive(n), _tokens, tol=1e-6)  # (the norm's eps
    # aside: F.normalize's on the norm, the program's rmsnorm's on the mean square)


@pytest.mark.slow
def test_a_function_of_the_gate_traces_and_computes_the_model():
    tr = _traced("sigmoid")
    assert "sigmoid(" in tr.source and "hdot(" in tr.source
    traced_computes_the_model(tr, lambda n: Exclusive(n, 16, "sigmoid"), _tokens, tol=1e-6)


@pytest.mark.slow
def test_the_traced_heads_of_16_pass_the_coordinate_check_under_mup_and_fail_as_they_come():
    # the derivation against numbers: every vector, the dot per head among them, moves flat in
    # the width under µP (widths 128..512); as the model comes (SP) it moves as n^+1
    mup = MuP(from_torch(Exclusive, (64, 128), _tokens), "adam")
    result = coord_check(mup, (128, 256, 512), steps=3, seeds=(0, 1))
    assert result.passed, str(result)
    sp = coord_check(mup, (128, 256, 512), steps=3, seeds=(0, 1), apply=False)
    assert not sp.passed and "sum_1: blows up in its change" in str(sp), str(sp)


_PROGRAM = """
width n = 128
dim V = 64
dim T = 4
{dims}
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
scale attn = 0.125
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param Wo : [n, n]
param al : [H] = 0
h = E @ tok
v = Wv @ h
o = mix(softmax(attn * dot(Wq @ h, Wk @ h, dh)), v)
{x}
output logits = U @ (h + Wo @ x)
"""
# heads of 16: vn = F.normalize(v) per head is 1/4 · rmsnorm(v, dh), a number; heads of n/4: its
# 1/sqrt(dh) twice is 1/dh of the width, a scale (µP's own exponent: the sum is an LLN one)
_SIXTEEN = (
    "dim H = n / 16\ndim dh = 16",
    "vn = 0.25 * rmsnorm(v, dh)\nx = o - spread(tanh(al), dh) * spread(hdot(o, vn, dh), dh) * vn",
)
_FOUR = (
    "dim H = 4\ndim dh = n / 4\nscale s = 0.03125",
    "vn = rmsnorm(v, dh)\nx = o - spread(tanh(al), dh) * spread(s * hdot(o, vn, dh), dh) * vn",
)


@pytest.mark.parametrize(
    ("heads", "want"),
    [
        # the dot over 16 coordinates is a finite sum: al is a bias of n/16 entries (SGD LR ∝ n,
        # Adam eps 1/n, as a hidden vector's), the value weight a hidden weight
        (_SIXTEEN, {"al": ("0", "0", "0"), "Wv": ("0", "1/2", "1"), "s": None}),
        # over n/4 coordinates: o holds its own token's value with a Θ(1) weight, so hdot(o, vn) is
        # an LLN sum (+1) and the scale takes µP's 1/dh, the model's own; al's gradient sums dh
        # coordinates (+1): a readout-like bias
        (_FOUR, {"al": ("0", "0", "0"), "Wv": ("0", "1/2", "1"), "s": ("1", "0", "oo")}),
    ],
)
def test_the_dot_per_head_derives_a_finite_or_an_lln_sum(heads, want):
    p = tp.parse(_PROGRAM.format(dims=heads[0], x=heads[1]), "xsa.tp")
    d = tp.derive(p, "adam")
    got = {k: tuple(d.abc[k].as_dict().values()) if k in d.abc else None for k in want}
    assert got == want
    assert str(d.eps["al"]) == ("1" if heads is _SIXTEEN else "0")
    traced = tp.derive(_traced().program, "adam")  # the traced heads of 16 alike
    if heads is _SIXTEEN:
        assert tuple(traced.abc["alpha"].as_dict().values()) == want["al"]
        assert traced.eps["alpha"] == d.eps["al"]


def _slope(f, widths=(64, 256, 1024)):
    import math

    sizes = [f(n) for n in widths]
    return math.log(sizes[-1] / sizes[0]) / math.log(widths[-1] / widths[0])


_SUMS = """
width n = 64
dim D = 3
{dims}
dim O = 1
input x : [D]
param W1 : [n, D]
param W2 : [n, D]
param U : [O, n]
h1 = W1 @ x
h2 = W2 @ x
s = hdot(h1, h2, dh)
t = hdot(h1, h1, dh)
output o = U @ (spread(s, dh) * h2 + spread(t, dh) * h1)
"""


@pytest.mark.parametrize("dims", ["dim H = n / 16\ndim dh = 16", "dim H = 4\ndim dh = n / 4"])
def test_the_sums_measured_are_the_derived_ones(dims):
    # the engine's init exponents of a dot per head of two independent sides (s: fresh weights
    # on one input, a CLT sum over a growing dh) and of one side with itself (t: an LLN sum),
    # against the same sums measured: the RMS of h1 = W1 x, h2 = W2 x per head, at 3 widths
    an = tp.classify(tp.parse(_SUMS.format(dims=dims), "sums.tp"), "sgd", preset="sp").analysis
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)  # 16 inputs

    def rms_hdot(n, same):
        dh = 16 if "dh = 16" in dims else n // 4
        h1, h2 = (torch.randn(n, 3, generator=g, dtype=torch.float64) @ x for _ in range(2))
        s = (h1 * (h1 if same else h2)).T.unflatten(-1, (-1, dh)).sum(-1)
        return s.pow(2).mean().sqrt().item()

    for name, same in (("s", False), ("t", True)):
        assert abs(_slope(lambda n, same=same: rms_hdot(n, same)) - float(an.init_[name])) < 0.15


@pytest.mark.parametrize(
    ("form", "match"),
    [
        ("head_sum", "a sum over each block's \\(head's\\) coordinates"),
        ("viewed", r"a dot per head kept as a gate \(..., H, 1\) read by reshape"),
        ("int_gain", "a cast to an integer type of a function of the param alpha"),
        ("int_values", "a cast to an integer type"),
        pytest.param(
            "two_heads", r"a view from \[2, 8, 2, 16\] to \[2, 8, 1, 32\]", marks=pytest.mark.slow
        ),
    ],
)
def test_a_sum_over_no_head_dot_is_refused_at_its_line(form, match):
    # a head's coordinates summed alone, or two heads' products summed together, is no dot of
    # one head: refused where the model computes it; so are the dot's gate read by anything but
    # one product (a reshape of it once crashed the walk) and a gain or vector cast to integers
    # by type_as (once traced as tanh(alpha), and as the vector, themselves)
    with pytest.raises(TraceError, match=f"test_head_dot_trace.py:\\d+:\\d+: error: .*{match}"):
        _traced(form)


def test_a_unit_value_over_a_growing_head_dim_is_refused_at_its_norm():
    # 4 heads of n/4: F.normalize's dh^-1/2 is a constant of the width the program would hold at
    # its base value, so the dot would grow as n; its exact form needs a scale of the dot (the
    # program above, _FOUR), which the trace does not write: refused at the normalisation
    with pytest.raises(
        TraceError,
        match=r"test_head_dot_trace.py:\d+:\d+: error: an L2 "
        r"normalisation over 8 coordinates at the base width, .* read by a dot "
        r"per head of one token",
    ):
        _traced(heads=4)
