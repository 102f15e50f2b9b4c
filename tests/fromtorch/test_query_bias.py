"""A query that is a layer's output plus a bias param applied outside that layer (DeBERTa's
``q + q_bias`` after a fused in_proj of no bias), then divided by sqrt(dh) before the logits:
the constant's width factor and the attention's both move into the layer (a patch on its query
rows) and into the bias (its init and LR), so the logits take the factor µP needs once. A bias,
or a layer output, also read elsewhere would take it there too: refused."""

import math
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from conftest import traced_computes_the_model  # noqa: E402

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Biased(nn.Module):
    """DeBERTa's attention, 4 heads of n/4: in_proj's rows laid out per head, q_bias and
    v_bias added per head, the query divided by sqrt(dh). ``again``: what else reads the
    query's parts ("bias": q_bias added to the values too; "scaled": the scaled query added to
    the residual; "rows": the query rows before the bias added to the residual)."""

    def __init__(self, n, again=None):
        super().__init__()
        self.again = again
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.in_proj, self.o = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n)
        self.q_bias, self.v_bias = (nn.Parameter(torch.randn(n) * 0.1) for _ in range(2))

    def heads(self, x):
        return x.view(*x.shape[:-1], 4, -1).permute(0, 2, 1, 3)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q0, k, v = self.heads(self.in_proj(x)).chunk(3, dim=-1)
        q = q0 + self.heads(self.q_bias[None, None, :])
        v = v + self.heads((self.q_bias if self.again == "bias" else self.v_bias)[None, None, :])
        q = q / math.sqrt(n // 4)
        a = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        h = x + self.o(a.permute(0, 2, 1, 3).reshape(b, t, n))
        if self.again in ("scaled", "rows"):
            h = h + (q if self.again == "scaled" else q0).permute(0, 2, 1, 3).reshape(b, t, n)
        return self.out(h)


def test_a_query_plus_a_bias_of_its_own_is_traced_as_the_model():
    traced = from_torch(Biased, (16, 32), _tokens)
    traced_computes_the_model(traced, Biased, _tokens)


def test_the_logits_take_the_factor_once_on_the_rows_and_the_bias():
    # at 4x: µP's 1/dh against the model's 1/sqrt(dh), (64/16)^-1/2 = 0.5 on q·k, carried by
    # the query rows' patch and by q_bias (init and LR), not by the keys, values or v_bias
    mup = MuP(from_torch(Biased, (16, 32), _tokens), "adam")
    torch.manual_seed(0)
    model = Biased(64)
    mup.apply(model)
    seen = []
    hook = model.in_proj.register_forward_hook(lambda m, i, o: seen.append([
        float((a / b).mean())
        for a, b in zip(model.heads(o).chunk(3, -1), model.heads(m.forward(i[0])).chunk(3, -1),
                        strict=True)]))
    with torch.no_grad():
        model(*_tokens(model))
    hook.remove()
    assert seen == [[pytest.approx(0.5), 1.0, 1.0]]  # one call, its query rows
    # the biases' init std (n/base)^-init_exp: q_bias's half v_bias's at 4x, as its LR
    assert mup.init_exp["q_bias"] - mup.init_exp["v_bias"] == Fraction(1, 2)
    lrs = {n: g["lr"] for g in mup.param_groups(model, lr=1.0)
           for n, p in model.named_parameters() for q in g["params"] if p is q}
    assert lrs["q_bias"] == pytest.approx(0.5 * lrs["v_bias"])
    # the check reads the model's vectors as the program's: the layer's rows and the query
    # plus its bias carry the net fold (64/16)^-1/2, the scaled query the constant's too
    unfold = mup.unfolded(model)
    assert {v: unfold[v] for v in ("getitem", "add", "div")} == pytest.approx(
        {"getitem": 2.0, "add": 2.0, "div": 4.0})


@pytest.mark.parametrize("again,match", [
    ("bias", r"the bias q_bias is read elsewhere too"),
    ("rows", r"the output of in_proj.weight is read elsewhere too"),
    ("scaled", r"reads .* too \(outside attention\)"),
])
def test_a_query_bias_or_its_parts_read_elsewhere_are_refused(again, match):
    with pytest.raises(TensorProgError, match=match):
        MuP(from_torch(lambda n: Biased(n, again), (16, 32), _tokens), "adam")


class Flat(nn.Module):
    """A query layer of its own (no bias) plus a bias param, not viewed per head, before
    sdpa's 1/sqrt(dh) (4 heads of n/4); ``twice``: the bias added to the values too."""

    def __init__(self, n, twice=False):
        super().__init__()
        self.twice = twice
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.q_bias = nn.Parameter(torch.randn(n) * 0.1)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        v = self.v(x) + self.q_bias if self.twice else self.v(x)
        q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2)
                   for y in (self.q(x) + self.q_bias, self.k(x), v))
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(x + self.o(a.transpose(1, 2).reshape(b, t, n)))


def test_a_query_layers_output_plus_a_bias_takes_the_fold_in_both():
    mup = MuP(from_torch(Flat, (16, 32), _tokens), "adam")
    assert mup.folded == ["attn_scaled_dot_product_attention: (n/base)^-1/2 folded into the "
                          "init and LR of q.weight and q_bias"]


def test_a_query_bias_read_elsewhere_is_refused_where_the_layer_takes_a_patch():
    # q_bias read twice: no fold into q and q_bias (a patch on q's output), nor into q_bias
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .* on the bias q_bias "
                       "added to it outside that layer; but add reads that bias too"):
        MuP(from_torch(lambda n: Flat(n, twice=True), (16, 32), _tokens), "adam")


class BiasAfterTheConstant(Flat):
    """The bias added after the layer's output is scaled (``q(x) / sqrt(dh) + q_bias``)."""

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        qf = self.q(x) / math.sqrt(n // 4) + self.q_bias
        q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2) for y in (qf, self.k(x), self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.out(x + self.o(a.transpose(1, 2).reshape(b, t, n)))


def test_a_bias_added_after_a_width_constant_is_refused():
    # the constant's fold would scale q(x) and not the bias: no one layer makes the query
    with pytest.raises(TensorProgError, match=r"the query \(add = div \+ q_bias\) is combined "
                       "with something else after its linear layer"):
        MuP(from_torch(BiasAfterTheConstant, (16, 32), _tokens), "adam")


class TwoBiases(Flat):
    """One query layer called for two attentions, each adding a bias of its own."""

    def __init__(self, n):
        super().__init__(n)
        self.q_bias2 = nn.Parameter(torch.randn(n) * 0.1)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        for bias in (self.q_bias, self.q_bias2):
            q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2)
                       for y in (self.q(x) + bias, self.k(x), self.v(x)))
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return self.out(x)


def test_a_query_layer_shared_by_attentions_with_biases_of_their_own_is_refused():
    # the first attention's patch on q and fold into q_bias would leave q_bias2 unscaled
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .*its query is "
                       "q.weight's output plus the bias q_bias2, and that layer makes "
                       "attn_scaled_dot_product_attention's"):
        MuP(from_torch(TwoBiases, (16, 32), _tokens), "adam")
