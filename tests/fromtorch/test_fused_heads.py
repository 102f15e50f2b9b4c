"""A fused qkv laid out per head (head h's rows are [q_h; k_h; v_h]): GPT-NeoX's view (H, 3·dh)
chunked, GPT-NeoX-Japanese's slices of it, Bloom's and Persimmon's view (H, 3, dh) indexed; and
the multi-query layers, Falcon's viewed per head and split into H query heads, one key and one
value head, GPT-BigCode's split after an added heads axis; and ModernBERT's contiguous q, k, v
viewed as (3, H, dh) and unbound. The oracle is the same attention with
separate projections (for the multi-query ones, multi-head: grouped-query attention derives
MHA's exponents, docs/theory.md): the fused model's row blocks must derive exactly as they, and
`apply` must write each block's init into its own rows."""

from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class PerHead(nn.Module):
    """One attention block whose q, k, v come from one layer laid out per head (``form``:
    neox, japanese, bloom) or from three (``separate``); ``heads`` fixed (None: dh = 8)."""

    def __init__(self, n, form="neox", heads=4):
        super().__init__()
        self.form, self.h = form, heads or n // 8
        self.dh = n // self.h
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        kv = self.dh if form in ("falcon", "bigcode") else n  # multi-query: one key/value head
        if form == "separate":
            self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, kv), nn.Linear(n, kv)
        else:
            self.qkv = nn.Linear(n, n + 2 * kv)

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        if self.form == "separate":
            q, k, v = (f(x).view(b, t, -1, self.dh).transpose(1, 2)
                       for f in (self.q, self.k, self.v))
        elif self.form == "bigcode":
            q, k, v = self.qkv(x).unsqueeze(1).split([c, self.dh, self.dh], dim=3)
            q = q.view(b, t, -1, self.dh).transpose(1, 2)
        elif self.form == "falcon":
            q, k, v = (z.transpose(1, 2) for z in self.qkv(x).view(b, t, -1, self.dh).split(
                [self.h, 1, 1], dim=-2))
        elif self.form == "neox":
            q, k, v = self.qkv(x).view(b, t, self.h, 3 * self.dh).transpose(1, 2).chunk(3, -1)
        elif self.form == "modern":  # ModernBERT's: q, k, v contiguous, each viewed in heads
            q, k, v = (z.transpose(1, 2) for z in self.qkv(x).view(b, t, 3, -1, self.dh).unbind(
                dim=-3))
        elif self.form == "japanese":
            qkv = self.qkv(x).view(b, t, self.h, 3 * self.dh).transpose(1, 2)
            d = self.dh
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        else:  # bloom
            qkv = self.qkv(x).view(b, t, self.h, 3, self.dh)
            q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] == 1)
        return self.out(x + y.transpose(1, 2).reshape(b, t, c))


def _abc(traced):
    d = derive(traced.program, "adam")
    return sorted((d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in traced.params)


@pytest.fixture(scope="module")
def separate():
    return _abc(from_torch(lambda n: PerHead(n, "separate"), WIDTHS, _tokens))


@pytest.mark.parametrize("form", ["neox", "japanese", "bloom", "falcon", "bigcode", "modern"])
def test_a_per_head_fused_qkv_derives_as_three_projections(form, separate):
    fused = from_torch(lambda n: PerHead(n, form), WIDTHS, _tokens)
    assert _abc(fused) == separate
    blocks = {p: u for p, u in fused.params.items() if u.target == "qkv.weight"}
    if form in ("falcon", "bigcode"):  # whole heads: q's 4, then k and v one each (contiguous)
        shares = [Fraction(0), Fraction(4, 6), Fraction(5, 6), Fraction(1)]
        assert sorted(u.rows for u in blocks.values()) == list(zip(shares, shares[1:],
                                                                   strict=False))
        assert {u.groups for u in blocks.values()} == {None}
        return
    thirds = [Fraction(i, 3) for i in range(4)]
    assert sorted(u.rows for u in blocks.values()) == list(zip(thirds, thirds[1:], strict=False))
    # 4 heads, each [q_h; k_h; v_h]; ModernBERT's blocks are contiguous, then viewed in heads
    assert {u.groups for u in blocks.values()} == {None if form == "modern" else 4}


def test_apply_writes_each_per_head_block_into_its_own_rows():
    traced = from_torch(lambda n: PerHead(n, "neox"), WIDTHS, _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model, given = PerHead(32, "neox"), _tokens(None)
    before, w = model(*given), model.qkv.weight.detach().clone()
    mup.apply(model)  # at the base width: bit-identical, the patch's factor is 1
    assert torch.equal(model.qkv.weight, w) and torch.equal(model(*given), before)
    # at width 128 the query rows of every head get the attention factor (n/base)^-1/2 in the
    # forward (their LR is the fused tensor's): the output is the separate model's with q
    # times 1/2, which the oracle computes by hand from the same weights
    torch.manual_seed(0)
    model = PerHead(128, "neox")
    report = mup.apply(model)
    assert "query rows of fused qkv.weight" in str(report)
    rows = model.qkv.weight.detach().view(4, 3, 32, 128)  # head, block, row, in
    stds = rows.transpose(0, 1).reshape(3, -1).std(dim=1)
    assert torch.allclose(stds, torch.full((3,), 32 ** -0.5 / 3 ** 0.5 * 0.5), rtol=0.05)
    oracle = PerHead(128, "separate")
    with torch.no_grad():
        oracle.e.weight.copy_(model.e.weight)
        oracle.out.load_state_dict(model.out.state_dict())
        wb = model.qkv.weight.view(4, 3, 32, 128)
        bb = model.qkv.bias.view(4, 3, 32)
        for i, lin in enumerate((oracle.q, oracle.k, oracle.v)):
            lin.weight.copy_(wb[:, i].reshape(128, 128) * (0.5 if i == 0 else 1))
            lin.bias.copy_(bb[:, i].reshape(128) * (0.5 if i == 0 else 1))
    torch.testing.assert_close(model(*given), oracle(*given), rtol=1e-5, atol=1e-6)


class Bart(nn.Module):
    """BART's attention (MVP, TrOCR): the query scaled by dh ** -0.5 by hand, batch and heads
    merged for ``bmm`` (``reshape(b * H, t, dh)``), an additive causal mask on the logits viewed
    back per head; two layers, rolled into a block (``sdpa``: the same block with sdpa)."""

    class Layer(nn.Module):
        def __init__(self, n, sdpa):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
            self.h, self.dh, self.sdpa = 4, n // 4, sdpa

        def forward(self, x):
            b, t, c = x.shape
            heads = lambda z: z.view(b, t, self.h, self.dh).transpose(1, 2)  # noqa: E731
            if self.sdpa:
                y = F.scaled_dot_product_attention(
                    heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
            else:
                q, k, v = (heads(z).reshape(b * self.h, t, self.dh)
                           for z in (self.q(x) * self.dh ** -0.5, self.k(x), self.v(x)))
                mask = torch.full((t, t), float("-inf"), device=x.device).triu(1)
                s = torch.bmm(q, k.transpose(1, 2)).view(b, self.h, t, t) + mask
                p = s.view(b * self.h, t, t).softmax(-1)
                y = torch.bmm(p, v).view(b, self.h, t, self.dh)
            return x + self.o(y.transpose(1, 2).reshape(b, t, c))

    def __init__(self, n, sdpa=False):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.layers = nn.ModuleList(Bart.Layer(n, sdpa) for _ in range(2))

    def forward(self, idx):
        x = self.e(idx)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_attention_with_batch_and_heads_merged_derives_as_sdpa():
    traced = from_torch(Bart, WIDTHS, _tokens)
    oracle = from_torch(lambda n: Bart(n, sdpa=True), WIDTHS, _tokens)
    assert "dot(" in traced.source and traced.stack is not None
    assert _abc(traced) == _abc(oracle)
    # the hand-written dh ** -0.5 is a width constant of every layer, folded into the block's
    # query layer once (a later layer's is the block's), and measured as the block's vector
    mup = MuP(traced, "adam")
    fixed = [info for info in mup.traced.scales.values() if info.get("fixed")]
    assert [info["out"].partition(".")[0] for info in fixed] == ["layers"]
    torch.manual_seed(0)
    model, given = Bart(32), _tokens(None)
    before = model(*given)
    mup.apply(model)
    assert torch.equal(model(*given), before)


class Deberta(Bart):
    """DeBERTa-v2's attention: batch and heads merged for ``bmm`` (the key divided by √dh),
    the logits viewed back per head for the mask and the softmax, and the weights merged again
    for their ``bmm`` with the values."""

    class Layer(Bart.Layer):
        def forward(self, x):
            b, t, c = x.shape
            q, k, v = (z(x).view(b, t, self.h, self.dh).transpose(1, 2).reshape(-1, t, self.dh)
                       for z in (self.q, self.k, self.v))
            s = torch.bmm(q, k.transpose(-1, -2) / self.dh ** 0.5).view(-1, self.h, t, t)
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            p = s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1)
            y = torch.bmm(p.view(-1, t, t), v).view(-1, self.h, t, self.dh)
            return x + self.o(y.transpose(1, 2).reshape(b, t, c))

    def __init__(self, n):
        super().__init__(n)
        self.layers = nn.ModuleList(Deberta.Layer(n, False) for _ in range(2))


def test_attention_weights_merged_for_their_bmm_derive_as_sdpa():
    traced = from_torch(Deberta, WIDTHS, _tokens)
    oracle = from_torch(lambda n: Bart(n, sdpa=True), WIDTHS, _tokens)
    assert "mix(causal_softmax(" in traced.source and traced.stack is not None
    assert _abc(traced) == _abc(oracle)
    torch.manual_seed(0)
    model, given = Deberta(32), _tokens(None)
    before = model(*given)
    MuP(traced, "adam").apply(model)  # at the base width: the model as it comes
    assert torch.equal(model(*given), before)


class InProj(nn.Module):
    """DeBERTa's (v1) attention: one bias-free layer's output viewed per head as (H, 3·dh),
    permuted (0, 2, 1, 3) and chunked into q, k, v, then biases of their own added to q and v
    viewed as the heads they join (``q_bias[None, None, :]`` viewed and permuted alike), eager
    logits plus 0 (``rel_att`` without relative attention); ``separate``: three layers, q's
    and v's with a bias, the oracle. The head dim is fixed (8): no width constant."""

    def __init__(self, n, separate=False):
        super().__init__()
        self.h, self.separate = n // 8, separate
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        if separate:
            self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n, bias=False), nn.Linear(n, n)
        else:
            self.in_proj = nn.Linear(n, 3 * n, bias=False)
            self.q_bias, self.v_bias = nn.Parameter(torch.zeros(n)), nn.Parameter(torch.zeros(n))

    def heads(self, x):
        return x.view(x.size()[:-1] + (self.h, -1)).permute(0, 2, 1, 3)

    def forward(self, idx):
        x = self.e(idx)
        if self.separate:
            q, k, v = (self.heads(f(x)) for f in (self.q, self.k, self.v))
        else:
            q, k, v = self.heads(self.in_proj(x)).chunk(3, dim=-1)
            q = q + self.heads(self.q_bias[None, None, :])
            v = v + self.heads(self.v_bias[None, None, :])
        s = torch.matmul(q / 8 ** 0.5, k.transpose(-1, -2)) + 0
        y = torch.matmul(s.softmax(-1), v)
        return self.out(x + y.transpose(1, 2).reshape(x.shape))


def test_a_fused_layer_permuted_per_head_with_biases_of_their_own_derives_as_three():
    traced = from_torch(InProj, WIDTHS, _tokens)
    oracle = from_torch(lambda n: InProj(n, separate=True), WIDTHS, _tokens)
    assert _abc(traced) == _abc(oracle)
    # q's and k's rows of each head's group of 3·dh, and the biases as vector params
    blocks = sorted(u.rows for u in traced.params.values() if u.target == "in_proj.weight")
    thirds = [Fraction(i, 3) for i in range(4)]
    assert blocks == list(zip(thirds, thirds[1:], strict=False))
    assert {u.target for u in traced.params.values()} >= {"q_bias", "v_bias"}
    assert "+ q_bias" in traced.source and "+ v_bias" in traced.source
    torch.manual_seed(0)
    model, given = InProj(32), _tokens(None)
    before = model(*given)
    MuP(traced, "adam").apply(model)  # at the base width: the model as it comes
    assert torch.equal(model(*given), before)


class Biased(nn.Module):
    """A vector param added to the tokens' vectors with axes of 1 written out (``spread``:
    ``x + b[None, None, :]``, or ``b[None]``, broadcast from the last axis) or as it is."""

    def __init__(self, n, spread="none"):
        super().__init__()
        self.spread = spread
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.b = nn.Parameter(torch.zeros(n))

    def forward(self, idx):
        b = {"none": self.b, "two": self.b[None, None, :], "one": self.b[None]}[self.spread]
        return self.out(torch.relu(self.e(idx) + b))


@pytest.mark.parametrize("spread", ["two", "one"])
def test_a_vector_param_given_axes_of_1_is_the_bias_it_is(spread):
    traced = from_torch(lambda n: Biased(n, spread), WIDTHS, _tokens)
    assert _abc(traced) == _abc(from_torch(Biased, WIDTHS, _tokens))
    assert "embedding + b" in traced.source


class SplitTwice(nn.Module):
    """A fused qkv split into q, k, v for attention of 2 heads (a head dim that grows) and
    again into [q k], v, its first block read by a layer of its own."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.qkv, self.o = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n, bias=False)
        self.extra = nn.Linear(2 * n, n, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        qkv = self.qkv(h)
        q, k, v = (x.view(b, t, 2, n // 2).transpose(1, 2) for x in qkv.split([n, n, n], -1))
        qk, _ = qkv.split([2 * n, n], -1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        return self.out(h + self.o(a.reshape(b, t, n)) + self.extra(qk))


def test_a_query_factor_on_rows_another_block_overlaps_is_refused_by_apply():
    # µP's (n/base)^-1/2 on the logits goes on the query rows' output (a patch): the block
    # [q k] read by `extra` shares those rows, so it would take the factor on half its rows,
    # which the program does not say (measured: extra's input's q rows at 0.5 at 4x the base)
    from tensorprog.errors import UsageError

    traced = from_torch(SplitTwice, WIDTHS, _tokens)
    with pytest.raises(UsageError, match=r"reads its rows 0:2/3, a block that overlaps them"):
        MuP(traced, "adam")
