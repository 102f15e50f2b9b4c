"""One number per head over its head's coordinates, traced (fromtorch/ops_gate.py): Laguna's
per-head attention gate ``(o.view(..., H, dh) * softplus(g_proj(h)).unsqueeze(-1))`` and Beam's
per-head gate bias ``g_proj(h).view_as(o) + gate_bias[None, None, :, None]`` trace to the
program's ``spread(g, dh)``, compute the model's output (the shared oracle), derive what the
hand-written program derives, and any other layout is refused."""

import functools

import pytest
from conftest import ROOT, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError, UsageError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Gated(nn.Module):
    """One causal attention layer whose output is gated per head: ``form`` "laguna" (softplus
    of a linear to H, times each head), "beam" (sigmoid of a full linear plus a per-head bias),
    or a layout the tracer must refuse."""

    def __init__(self, n, form="laguna", heads=4):
        super().__init__()
        self.form, self.h, self.dh = form, heads, n // heads
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        out = {"beam": n, "beam_view": n, "bias_tokens": n, "groups": n // 4}.get(form, heads)
        self.g = nn.Linear(n, out, bias=False)
        self.gate_bias = nn.Parameter(torch.randn(8 if form == "bias_tokens" else heads))

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (z(x).view(b, t, self.h, self.dh).transpose(1, 2) for z in (self.q, self.k,
                                                                               self.v))
        if self.form == "bias_on_query":  # H fixed, dh growing: the logits' 1/d can't fold
            q = (self.q(x).view(b, t, self.h, -1) + self.gate_bias[None, None, :, None])
            q = q.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        o = y.reshape(b, t, c)
        if self.form == "laguna":
            gate = F.softplus(self.g(x))
            o = (o.view(b, t, -1, self.dh) * gate.unsqueeze(-1)).view(b, t, -1)
        elif self.form == "beam":
            gate = self.g(x).view_as(y) + self.gate_bias[None, None, :, None]
            o = (y * torch.sigmoid(gate)).reshape(b, t, c)
        elif self.form == "dots":  # the gate viewed (b, t, H, 1), then its sigmoid
            o = (y * self.g(x).view(b, t, -1, 1).sigmoid()).reshape(b, t, c)
        elif self.form == "dots_sum":  # the same, added: refused
            o = (y + self.g(x).view(b, t, -1, 1).sigmoid()).reshape(b, t, c)
        elif self.form == "beam_view":  # the same bias as a view, b.view(1, 1, H, 1)
            gate = self.g(x).view_as(y) - self.gate_bias.view(1, 1, self.h, 1)
            o = (y * torch.sigmoid(gate)).reshape(b, t, c)

        elif self.form == "groups":  # heads of 4 coordinates, n/4 of them: a gate each
            gate = torch.sigmoid(self.g(x))
            o = (o.view(b, t, -1, 4) * gate.unsqueeze(-1)).view(b, t, -1)
        elif self.form == "tokens":  # a gate per head against (B, H, T, dh): refused
            gate = F.softplus(self.g(x)).transpose(1, 2)
            o = (y.transpose(1, 2) * gate.unsqueeze(-1)).transpose(1, 2).reshape(b, t, c)
        elif self.form == "bias_tokens":  # a bias per token added to each head: refused
            gate = self.g(x).view_as(y) + self.gate_bias[None, :, None, None]
            o = (y * torch.sigmoid(gate)).reshape(b, t, c)
        return self.out(x + self.o(o))


@functools.cache
def _traced(form):
    return from_torch(lambda n: Gated(n, form), WIDTHS, _tokens)


@pytest.mark.parametrize("form", ["laguna", "beam", "beam_view", "dots",
                                  pytest.param("groups", marks=pytest.mark.slow)])
def test_a_per_head_gate_traces_to_spread_and_computes_the_model(form):
    tr = _traced(form)
    assert "spread(" in tr.source
    traced_computes_the_model(tr, lambda n: Gated(n, form), _tokens)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize(("form", "target", "mine"), [("laguna", "g.weight", "Wg"),
                                                      ("beam", "gate_bias", "bb")])
def test_the_traced_gate_derives_as_the_hand_written_one(optimizer, form, target, mine):
    # examples/head_gate.tp writes both gates by hand: the traced gate (n -> H = 4, a readout)
    # and per-head bias get the exponents its Wg and bb get
    tr = _traced(form)
    traced = tp.derive(tr.program, optimizer)
    hand = tp.derive(tp.parse_file(ROOT / "examples" / "head_gate.tp"), optimizer)
    name = next(p for p, u in tr.params.items() if u.target == target)
    assert (traced.abc[name], traced.eps.get(name)) == (hand.abc[mine], hand.eps.get(mine))


@pytest.mark.parametrize("form", ["tokens", "bias_tokens", "dots_sum"])
def test_a_gate_laid_out_over_another_axis_is_refused(form):
    # dots_sum: the view (b, t, H, 1) read as heads of one feature, added to heads of n/4
    with pytest.raises(TraceError, match="per-head gate|added axis|a sum of a vector of 32 "
                       "features and one of 4"):
        from_torch(lambda n: Gated(n, form), WIDTHS, _tokens)


def test_a_bias_per_head_on_the_query_is_no_norm_in_the_message():
    # the logits need µP's 1/d where dh grows, and a query biased per head after its linear
    # layer has no one layer to fold it into: said so, not taken for a gain-less QK-norm
    with pytest.raises(UsageError, match=r"the query \(add = linear\w* \+ spread\(gate_bias, "
                       r"n_by4\)\) is combined with something else after its linear layer"):
        tp.MuP(_traced("bias_on_query"), "adam")
