"""from_torch on a torch.no_grad region whose outputs are the ids of a top-k over a whole axis
(DeepSeek-V3.2's indexer, its ids scattered into the mask of the keys it does not select):
no gradient flows through ids, and a top-k of every key selects them all, so the mask is a
constant. Oracles: the same attention without the indexer derives the same µP, and apply is
bit-identical at the base; an input cast to its own dtype inside, which export hands back as an
output of the region (Dots.llm3's ``h.to(w.dtype)``, h read again after), is that input, as
the model computes; a top-k of fewer keys (a mask that depends on the scores), another use of
the ids (a gather, which reads their order) and a value computed in the region read after it
are refused."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
T = 8


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, T),)


class Net(nn.Module):
    """One causal attention of 4 heads; ``form``: None (no indexer), "all" (the indexer's top-k
    of every key), "fewer" (of T - 1), "gather" (its ids also gather the values), "alias" (x
    cast to its own dtype in the indexer, read by a gate after it), "carried" (the gate reads
    2 * x computed in the indexer), "copied" (the gate reads a copy of x cast to its own dtype
    there, ``x.to(dtype, copy=True)``: a new tensor, no gradient to x)."""

    def __init__(self, n, form=None):
        super().__init__()
        self.form, self.dh = form, n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.iq, self.ik = nn.Linear(n, 8, bias=False), nn.Linear(n, 8, bias=False)
        if form in ("alias", "carried", "copied"):
            self.g = nn.Linear(n, n, bias=False)

    @torch.no_grad()
    def indexer(self, x):
        if self.form == "alias":  # Dots's x.to(w.dtype): x itself, as export hands it on
            x = x.to(self.iq.weight.dtype)
        scores = self.iq(x) @ self.ik(x).transpose(1, 2)  # [b, t, t]
        ids = scores.topk(T - 1 if self.form == "fewer" else T, dim=-1).indices.to(torch.int32)
        if self.form == "copied":
            return ids, x.to(self.iq.weight.dtype, copy=True)
        return (ids, 2 * x) if self.form == "carried" else ids

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()[None, None]
        if self.form:
            ids, g = self.indexer(x), x
            if self.form in ("carried", "copied"):  # computed under no_grad, read on: refused
                ids, g = ids
            unselected = ids.new_ones((b, t, t), dtype=torch.bool).scatter(-1, ids.long(), False)
            mask = mask & ~unselected[:, None]
            if self.form == "gather":
                v = v + v.gather(2, ids.long()[:, None, :, :1].expand(-1, 4, -1, self.dh))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.o(y.transpose(1, 2).reshape(b, t, n))
        if self.form in ("alias", "carried", "copied"):  # x read after the indexer (Dots's gate)
            y = y * torch.sigmoid(self.g(g))
        return self.out(x + y)


def test_an_indexer_selecting_every_key_is_a_constant_mask():
    build = lambda n: Net(n, "all")  # noqa: E731
    traced = from_torch(build, WIDTHS, _tokens)
    plain = abc_by_target(from_torch(Net, WIDTHS, _tokens))
    assert abc_by_target(traced) == plain  # the indexer's params: in no program
    assert not any("iq" in u.target or "ik" in u.target for u in traced.params.values())
    apply_is_bit_identical_at_base(traced, build, _tokens)


def test_an_input_the_indexer_hands_back_is_the_input_itself():
    build = lambda n: Net(n, "alias")  # noqa: E731
    traced = from_torch(build, WIDTHS, _tokens)
    assert "g_weight @ embedding" in traced.source  # the gate reads x, gradient and all
    traced_computes_the_model(traced, build, _tokens)


@pytest.mark.parametrize("form, match", [
    ("fewer", r"cannot trace a torch.no_grad region that returns ids or masks alone"),
    ("gather", r"cannot trace the op \w+ on the ids of a top-k over a whole axis"),
    ("carried", r"cannot trace torch.no_grad: no gradient flows through it"),
    # a copy made under no_grad: its gate gives x no gradient, which the program would
    ("copied", r"cannot trace torch.no_grad: no gradient flows through it"),
])
def test_an_indexer_read_otherwise_is_refused(form, match):
    with pytest.raises(TensorProgError, match=match):
        from_torch(lambda n: Net(n, form), WIDTHS, _tokens)


class ExpandedBack(Net):
    """The indexer given a param expanded over the tokens beside x, and handing it back cast to
    its own dtype (as Dots's x): the expanded param, read after the region by a view (it
    crashed there) or a sum."""

    def __init__(self, n, read):
        super().__init__(n, "all")
        self.read, self.z = read, nn.Parameter(torch.linspace(-1, 1, n))

    @torch.no_grad()
    def indexer_of(self, x, s):
        scores = self.iq(x) @ self.ik(x).transpose(1, 2)
        return scores.topk(T, dim=-1).indices.to(torch.int32), s.to(self.iq.weight.dtype)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        ids, s = self.indexer_of(x, self.z.expand_as(x))
        unselected = ids.new_ones((b, t, t), dtype=torch.bool).scatter(-1, ids.long(), False)
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()[None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & ~unselected[:, None])
        s = s.reshape(b, n, t).transpose(1, 2) if self.read == "view" else s
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, n)) + s)


@pytest.mark.slow
@pytest.mark.parametrize("read", ["view", "sum"])
def test_an_expanded_param_the_indexer_hands_back_is_refused(read):
    with pytest.raises(TensorProgError, match=r"a torch.no_grad region that hands back the "
                       r"param z of shape \[\d+\] expanded to \[2, 8, \d+\]"):
        from_torch(lambda n: ExpandedBack(n, read), WIDTHS, _tokens)
