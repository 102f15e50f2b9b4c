"""Funnel's query biases: ``q * scale + r_w_bias * scale``, a param [H, dh] times the number that
scales the query, read as ``scale * (q + r_w_bias)`` (the number a coefficient read at both
widths), and its logits and mixing written as einsums laid out per head ("bind,bjnd->bnij",
"bnij,bjnd->bind"). The product of a param and a number used otherwise, or with another number
on the vector, is refused; so are Transformer-XL's positional keys and Funnel's token-type dots,
which the language has no form for."""

import math
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from conftest import traced_computes_the_model  # noqa: E402

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Funnelish(nn.Module):
    """Funnel's attention, 4 heads of n/4, its logits and mixing as einsums. ``form``: how the
    bias joins ("other": the query scaled by another number than the bias; "product": the
    scaled bias multiplying the query; "kinked": a function of the query, linear near 0 alone,
    scaled like the bias; "positional": Funnel's positional keys of a fixed table; "segments":
    its token-type dots; "batch": einsums lettering the batch as the tokens)."""

    def __init__(self, n, form=None):
        super().__init__()
        self.form, self.h = form, 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q = nn.Linear(n, n, bias=False)
        self.k, self.v, self.o = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.r_w_bias = nn.Parameter(torch.randn(self.h, n // self.h) * 0.1)
        if form == "positional":
            self.r_kernel = nn.Parameter(torch.randn(n, self.h, n // self.h) * n**-0.5)
        if form == "kinked":  # queries reaching past the kink at -4
            self.q.weight.data.mul_(30)
        if form == "segments":
            self.seg_embed = nn.Parameter(torch.randn(2, self.h, n // self.h) * 0.1)
        self.scale = 1.0 / math.sqrt(n // self.h)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, self.h, -1) for f in (self.q, self.k, self.v))
        if self.form == "kinked":  # max(q, -4): linear on [-4, inf) alone
            q = torch.relu(q + 4) - 4
        q = q * (2 * self.scale if self.form == "other" else self.scale)
        bias = self.r_w_bias * self.scale
        q = q * bias if self.form == "product" else q + bias
        # "batch": the batch axis lettered as the tokens, attention across the batch
        logits, mixing = (
            ("ibnd,jbnd->bnij", "bnij,jbnd->ibnd")
            if self.form == "batch"
            else ("bind,bjnd->bnij", "bnij,bjnd->bind")
        )
        s = torch.einsum(logits, q, k)
        if self.form == "positional":
            r = torch.arange(2 * t, dtype=x.dtype, device=x.device)[:, None] * x.new_ones(n)
            s = (
                s
                + torch.einsum(
                    "binh,tnh->bnit", q, torch.einsum("td,dnh->tnh", r.sin(), self.r_kernel)
                )[..., :t]
            )
        if self.form == "segments":
            s = s + torch.einsum("bind,snd->bnis", q, self.seg_embed)[..., :1]
        a = torch.einsum(mixing, s.softmax(-1), v)
        return self.out(x + self.o(a.reshape(b, t, n)))


@pytest.fixture(scope="module")
def traced():
    return from_torch(Funnelish, (16, 32), _tokens)


def test_a_scaled_bias_on_a_query_scaled_alike_is_traced_as_the_model(traced):
    traced_computes_the_model(traced, Funnelish, _tokens)
    assert any(" + " in st and "r_w_bias" in st for st in traced.source.splitlines())


def test_the_bias_takes_the_querys_fold(traced):
    # the forward's 1/sqrt(dh) read at both widths; µP's 1/dh on q·k asks (n/base)^-1/2 more
    # of the query, carried by its layer and by r_w_bias, a bias of q's: at 4x, r_w_bias's
    # init std and Adam LR are half of k's bias's (an input weight's, Θ(1)), relatively
    mup = MuP(traced, "adam")
    assert mup.init_exp["r_w_bias"] - mup.init_exp["k_bias"] == Fraction(1, 2)
    torch.manual_seed(0)
    model = Funnelish(64)
    mup.apply(model)
    lrs = {
        n: g["lr"]
        for g in mup.param_groups(model, lr=1.0)
        for n, p in model.named_parameters()
        for q in g["params"]
        if p is q
    }
    assert lrs["r_w_bias"] == pytest.approx(0.5 * lrs["k.bias"])


@pytest.mark.parametrize(
    "form,match",
    [
        ("other", r"times 0\.5 with a vector times 1:"),
        ("product", r"a param \(r_w_bias\) times a number \(0\.5\) before its use"),
        ("kinked", r"times 0\.5 with a vector not a vector times a number"),
        ("positional", r"einsum 'td,dnh->tnh' of a fixed table .* positional keys"),
        ("batch", r"einsum 'ibnd,jbnd->bnij' .* swap"),
        ("segments", r"einsum 'bind,snd->bnis' of a per-head vector with the 3-D param seg_embed"),
    ],
)
def test_other_uses_are_refused_where_they_are_written(form, match):
    with pytest.raises(TensorProgError, match=match) as err:
        from_torch(lambda n: Funnelish(n, form), (16, 32), _tokens)
    assert "test_scaled_query_bias.py" in str(err.value)


class ParamEinsum(nn.Module):
    """A 3-D param in an einsum that is a batched matmul, as written ("btn,bnm->btm": one
    matrix per example) or once permuted ("bnt,tnm->btm": the features first, one matrix per
    token position): no layer of the language's."""

    def __init__(self, n, equation):
        super().__init__()
        self.equation = equation
        self.e, self.out = nn.Embedding(13, n), nn.Linear(8, 13)
        shape = (2, n, 8) if equation.startswith("btn") else (n, 8, 8)
        self.w = nn.Parameter(torch.randn(*shape) * n**-0.5)

    def forward(self, idx):
        return self.out(torch.einsum(self.equation, self.e(idx), self.w).mean(1))


@pytest.mark.parametrize("equation", ["btn,bnm->btm", "bnt,tnm->btm"])
def test_an_einsum_with_a_param_is_refused(equation):
    with pytest.raises(TensorProgError, match=f"einsum '{equation}' that is not a batched") as err:
        from_torch(lambda n: ParamEinsum(n, equation), (16, 32), _tokens)
    assert "test_scaled_query_bias.py" in str(err.value)
