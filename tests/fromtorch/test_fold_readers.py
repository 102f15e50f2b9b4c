"""apply's attention factor on the query: folded into the query layer's init and LR (or patched
on its output) it scales every reader of that output. Where the layer's output is also read
outside attention (added to the residual), that reader would be scaled with it, so apply refuses
and says which instruction reads it; a query read by attention alone is folded as before."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Attn(nn.Module):
    """One causal attention of 4 heads of n/4 (µP's 1/dh against sdpa's 1/sqrt(dh)); ``twice``:
    the query layer's output also added to the residual."""

    def __init__(self, n, twice=False):
        super().__init__()
        self.dh, self.twice = n // 4, twice
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        qf = self.q(x)
        q, k, v = (y.view(b, t, 4, self.dh).transpose(1, 2) for y in (qf, self.k(x), self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return self.out(h + qf if self.twice else h)


def test_a_query_layer_read_by_attention_alone_takes_the_fold():
    mup = MuP(from_torch(Attn, (16, 32), _tokens), "adam")
    assert [f.split(":")[1].strip() for f in mup.folded] == [
        "(n/base)^-1/2 folded into the init and LR of q.weight"]


def test_a_query_layer_whose_output_is_also_read_elsewhere_is_refused():
    traced = from_torch(lambda n: Attn(n, twice=True), (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .*µP needs the "
                       r"attention logits times \(n/base\)\^-1/2, which apply puts on the query "
                       r"linear, made by q.weight, .* but add_1 reads linear too"):
        MuP(traced, "adam")


class Shared(nn.Module):
    """ALBERT's depth: one attention layer's modules called twice (4 heads of n/4); ``mixed``:
    the second call views its query in heads of a fixed dim 8 instead (n/8 of them), whose
    logits need no factor while the first call's need (n/base)^-1/2."""

    def __init__(self, n, mixed=False):
        super().__init__()
        self.mixed = mixed
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.norm = nn.LayerNorm(n)

    def layer(self, x, dh):
        b, t, n = x.shape
        q, k, v = (y.view(b, t, n // dh, dh).transpose(1, 2)
                   for y in (self.q(x), self.k(x), self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.norm(x + self.o(a.transpose(1, 2).reshape(b, t, n)))

    def forward(self, idx):
        x = self.e(idx)
        n = x.shape[-1]
        return self.out(self.layer(self.layer(x, n // 4), 8 if self.mixed else n // 4))


def test_a_query_layer_called_twice_carries_the_factor_once_on_every_call():
    # each call's logits need (n/base)^-1/2; one patch on the module's output gives both
    # (two, one per scale, gave every call (n/base)^-1), and the check's probe scales both
    # calls' nodes, as the forward hook does
    traced = from_torch(Shared, (16, 32), _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Shared(64)  # 4 times the base width: a factor (64/16)^-1/2 = 0.5
    mup.apply(model)
    seen = []
    hook = model.q.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    with torch.no_grad():
        model(*_tokens(model))
    hook.remove()
    assert len(seen) == 2
    for x, patched in seen:
        torch.testing.assert_close(patched, F.linear(x, model.q.weight) * 0.5,
                                   rtol=1e-6, atol=1e-7)
    mup.apply(model)
    factors = mup.patch_factors(model)
    assert sorted(len(f) for f in factors.values()) == [1, 1]  # the two calls of q
    assert sum(f[0][0] == pytest.approx(0.5) for f in factors.values()) == 2


def test_a_query_layer_whose_calls_need_different_factors_is_refused():
    traced = from_torch(lambda n: Shared(n, mixed=True), (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"µP needs their attention logits times "
                       r"\(n/base\)\^0 and \(n/base\)\^-1/2, but one layer \(q.weight\) makes "
                       "both their queries"):
        MuP(traced, "adam")


class TwoReads(nn.Module):
    """One query, normalised over each of its 4 heads of n/4 without a gain, read by two
    attentions (each with keys and values of its own): both logits need (n/base)^-1/2."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.k2, self.v2 = (nn.Linear(n, n, bias=False)
                                                    for _ in range(5))
        self.norm = nn.RMSNorm(n // 4, elementwise_affine=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q = self.norm(self.q(x).view(b, t, 4, n // 4)).transpose(1, 2)
        a = sum(F.scaled_dot_product_attention(q, *(y(x).view(b, t, 4, n // 4).transpose(1, 2)
                                                    for y in kv), is_causal=True)
                for kv in ((self.k, self.v), (self.k2, self.v2)))
        return self.out(x + a.transpose(1, 2).reshape(b, t, n))


def _norm_scale(model) -> list:
    """Each call's output of ``model.norm`` over its own forward (hooks apart)."""
    seen = []
    hook = model.norm.register_forward_hook(
        lambda m, i, o: seen.append(float((o / m.forward(i[0])).mean())))
    with torch.no_grad():
        model(*_tokens(model))
    hook.remove()
    return seen


def test_a_normalised_query_read_by_two_attentions_takes_the_factor_once():
    # the norm's patch scales its one call's output, the query of both logits: one patch of
    # (n/base)^-1/2 (two, one per attention, gave the query (n/base)^-1)
    mup = MuP(from_torch(TwoReads, (16, 32), _tokens), "adam")
    model = TwoReads(64)
    mup.apply(model)
    assert _norm_scale(model) == [pytest.approx(0.5)]
    assert [f for fs in mup.patch_factors(model).values() for f in fs] == [(0.5, None)]


class Block(nn.Module):
    """An attention of 4 heads of n/4 whose modules are called twice (ALBERT's shared layer,
    inside each layer of a rolled stack); ``tied``: a second query layer tied to the first."""

    def __init__(self, n, tied=False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.q2 = None
        if tied:
            self.q2 = nn.Linear(n, n, bias=False)
            self.q2.weight = self.q.weight

    def forward(self, x):
        for q in (self.q, self.q2 or self.q):
            b, t, n = x.shape
            h, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2) for y in (q(x), self.k(x),
                                                                         self.v(x)))
            a = F.scaled_dot_product_attention(h, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return x


class Stacked(nn.Module):
    def __init__(self, n, tied=False):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.blocks = nn.ModuleList(Block(n, tied) for _ in range(2))

    def forward(self, idx):
        x = self.e(idx)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def test_a_rolled_blocks_query_layer_called_twice_is_probed_at_every_call():
    # the hook on each layer's q scales both its calls; the check's probe replays the graph
    # with each of the four nodes scaled alike (it scaled the first call of each layer alone,
    # and read the second's query as 2x the program's at 4x the base width)
    mup = MuP(from_torch(Stacked, (16, 32), _tokens), "adam")
    model = Stacked(64)
    mup.apply(model)
    seen = []
    hooks = [b.q.register_forward_hook(lambda m, i, o: seen.append(
        float((o / m.forward(i[0])).mean()))) for b in model.blocks]
    with torch.no_grad():
        model(*_tokens(model))
    for h in hooks:
        h.remove()
    assert seen == [pytest.approx(0.5)] * 4
    factors = mup.patch_factors(model)
    assert len(factors) == 4 and all(f == [(0.5, None)] for f in factors.values())


def test_a_query_weight_tied_across_two_layers_of_a_rolled_block_is_refused():
    # a hook on blocks.{i}.q would leave q2's calls (the second attention's query) unscaled
    traced = from_torch(lambda n: Stacked(n, tied=True), (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"puts on the output of the query's layer "
                       r"blocks.\{i\}.q .* other modules apply that weight too "
                       r"\(blocks.\{i\}.q2\)"):
        MuP(traced, "adam")


class FusedAgain(nn.Module):
    """A fused qkv layer called again after its attention, its query rows then read by a relu
    added to the residual: the rows' patch scales every call's query rows, that one too."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.qkv, self.o = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n, bias=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2) for y in self.qkv(x).split(n, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return self.out(x + torch.relu(self.qkv(x).split(n, -1)[0]))


def test_a_fused_layers_query_rows_read_outside_attention_at_another_call_are_refused():
    traced = from_torch(FusedAgain, (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .*which apply puts "
                       r"on the query getitem, made by qkv.weight, .* but v_relu reads "
                       r"getitem_3 too \(outside attention\)"):
        MuP(traced, "adam")


class QK(nn.Module):
    """Keys made by the query's layer: the same vector (Reformer's shared QK, ``again``
    False), or its module called again for them."""

    def __init__(self, n, again=False):
        super().__init__()
        self.again = again
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(3))

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q = self.q(x)
        k = self.q(x) if self.again else q
        q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2) for y in (q, k, self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + self.o(a.transpose(1, 2).reshape(b, t, n)))


@pytest.mark.parametrize("again", [False, True])
def test_keys_made_by_the_query_layer_are_refused(again):
    # a factor on the layer would scale the keys too: the logits would take its square
    traced = from_torch(lambda n: QK(n, again), (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"traced.tp:\d+:\d+: error: .*puts on the query "
                       r"linear, made by q.weight, .* reads linear(_1)? as its keys, made there "
                       "too, and the logits would take the factor twice"):
        MuP(traced, "adam")


class HalfShared(TwoReads):
    """TwoReads whose first keys share the query's norm (one module, called for both): that
    norm's patch puts the square root of the factor on each side of the first logits."""

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v, k2, v2 = (y(x).view(b, t, 4, n // 4) for y in (self.q, self.k, self.v, self.k2,
                                                                self.v2))
        q, k = (self.norm(y).transpose(1, 2) for y in (q, k))
        a = sum(F.scaled_dot_product_attention(q, kk, vv.transpose(1, 2), is_causal=True)
                for kk, vv in ((k, v), (k2.transpose(1, 2), v2)))
        return self.out(x + a.transpose(1, 2).reshape(b, t, n))


def test_a_query_whose_norm_its_keys_share_read_by_another_attention_is_refused():
    # the second logits (q against keys of no norm) would take the square root of the factor
    traced = from_torch(HalfShared, (16, 32), _tokens)
    with pytest.raises(TensorProgError, match=r"its query rms_norm and keys share a norm "
                       r"without a gain, .* but attn_scaled_dot_product_attention_1 reads that "
                       "query too, with keys of its own"):
        MuP(traced, "adam")


class ScaledShared(nn.Module):
    """ALBERT's depth over a fused qkv layer whose query rows are multiplied by dh^-1/2 (a
    width constant on each call's query, whose patch is on the layer's rows too) before a
    hand-written attention: the logits need (n/base)^-1 against q·k and the constant's own
    (n/base)^-1/2 undone, (n/base)^-1/2 on every call's query rows in all."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.qkv, self.o = nn.Linear(n, 3 * n, bias=False), nn.Linear(n, n, bias=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        for _ in range(2):
            q, k, v = (y.view(b, t, 4, n // 4).transpose(1, 2) for y in self.qkv(x).split(n, -1))
            a = ((q * (n // 4) ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, t, n))
        return self.out(x)


def test_width_constants_on_a_fused_layer_called_twice_are_one_patch():
    # one patch per call's constant gave every call both: (n/base)^-1 · (n/base)^1/2 · 2 = 1
    # at 4x, where the logits need 1/2
    mup = MuP(from_torch(ScaledShared, (16, 32), _tokens), "adam")
    model = ScaledShared(64)
    mup.apply(model)
    seen = []
    hook = model.qkv.register_forward_hook(lambda m, i, o: seen.append([
        float((a / b).mean())
        for a, b in zip(o.chunk(3, -1), m.forward(i[0]).chunk(3, -1), strict=True)]))
    with torch.no_grad():
        model(*_tokens(model))
    hook.remove()
    assert seen == [[pytest.approx(0.5), 1.0, 1.0]] * 2
