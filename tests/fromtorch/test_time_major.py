"""Time-major per-token vectors (fairseq's and FSMT's (tokens, batch, features) layout): a
small encoder-decoder written fairseq's way (its target vocabulary not its source's), its
attention's heads merged with the batch (``q.view(T, B * H, dh).transpose(0, 1)``, ``bmm``, and
back), traces to the program of the same model written batch-major, and that program computes
the model. Every op that would read a time-major value's tokens as the batch (attention over
it, a mean over its tokens, a sum with a batch-major value, a view that mixes its sequences, an
output left time-major) is refused."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (16, 32)
V, W, B, S, T = 11, 7, 3, 5, 4  # vocabularies, batch, source and target lengths all differ
AT = r"test_time_major.py:\d+:\d+: error: cannot trace "


class Attention(nn.Module):
    """fairseq's multi-head attention on (tokens, batch, features), or (``major`` False) the
    same written batch-major; ``how`` swaps one line for a wrong variant."""

    def __init__(self, n, heads=2, major=True, how=None):
        super().__init__()
        self.h, self.dh, self.major, self.how = heads, n // heads, major, how
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))

    def forward(self, x, mem, causal=False):
        if not self.major:
            b, t, c = x.shape
            q, k, v = (f(y).view(b, -1, self.h, self.dh).transpose(1, 2)
                       for f, y in ((self.q, x), (self.k, mem), (self.v, mem)))
            o = F.scaled_dot_product_attention(q * self.dh**-0.5, k, v, is_causal=causal,
                                               scale=1.0)
            return self.o(o.transpose(1, 2).reshape(b, t, c))
        t, b, c = x.shape
        q = self.q(x) * self.dh**-0.5
        q = q.view(t, b * self.h, self.dh).transpose(0, 1)
        k = self.k(mem).view(-1, b, self.h, self.dh).permute(1, 2, 0, 3)
        k = k.reshape(b * self.h, -1, self.dh)
        v = self.v(mem).view(-1, b * self.h, self.dh).transpose(0, 1)
        if self.how == "heads_unmerged":  # (T, B, H, dh) to sdpa: attention over the heads
            q4 = self.q(x).view(t, b, self.h, self.dh)
            o = F.scaled_dot_product_attention(q4, q4, q4)
            return self.o(o.reshape(t, b, c))
        w = torch.bmm(q, k.transpose(1, 2))
        if causal:
            w = w + torch.full((t, t), float("-inf"), device=w.device).triu(1)
        o = torch.bmm(w.softmax(-1), v)
        return self.o(o.transpose(0, 1).contiguous().view(t, b, c))


class EncDec(nn.Module):
    """A post-norm encoder-decoder block: source positions added batch-major, the stacks
    time-major (``major``), the target logits batch-major."""

    def __init__(self, n, major=True, how=None):
        super().__init__()
        self.major, self.how = major, how
        self.src, self.tgt, self.pos = nn.Embedding(V, n), nn.Embedding(W, n), nn.Embedding(S, n)
        self.enc = Attention(n, major=major, how=how)
        self.dec, self.cross = Attention(n, major=major), Attention(n, major=major)
        self.fc1, self.fc2 = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.ln = nn.ModuleList(nn.LayerNorm(n) for _ in range(4))
        self.out = nn.Linear(n, W)

    def forward(self, src, tgt):
        x = self.src(src) * 2.0 + self.pos(torch.arange(src.shape[1], device=src.device))
        y = self.tgt(tgt)
        if self.major:
            x, y = x.transpose(0, 1), y.transpose(0, 1)
        x = self.ln[0](x + self.enc(x, x))
        y = self.ln[1](y + self.dec(y, y, causal=True))
        y = self.ln[2](y + self.cross(y, x))
        y = self.ln[3](y + self.fc2(F.gelu(self.fc1(y))))
        if self.how == "pooled":  # a mean over the tokens: over the batch here
            y = y + y.mean(1, keepdim=True)
        if self.how == "summed":  # plus the batch-major (B, T, n), of its shape where B == T
            y = y + self.tgt(tgt)
        if self.how == "viewed":  # read back batch-major by a view, not a transpose
            return self.out(y.reshape(B, T, -1))
        if self.how == "left":  # the logits returned time-major
            return self.out(y)
        return self.out(y.transpose(0, 1) if self.major else y)


def _inputs(model, batch=B):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(V, (batch, S), generator=g), torch.randint(W, (batch, T), generator=g))


@pytest.fixture(scope="module")
def traced():
    return from_torch(EncDec, WIDTHS, _inputs)


def test_a_time_major_encoder_decoder_computes_the_model(traced):
    assert traced_computes_the_model(traced, EncDec, _inputs) <= 1e-10
    apply_is_bit_identical_at_base(traced, EncDec, _inputs)  # its patches on per-token layers


def test_the_check_draws_targets_over_the_target_vocabulary(traced):
    # FSMT's target vocabulary is not its source's: targets over the source's crashed the loss
    from tensorprog.fromtorch.check import _data

    ids, targets = _data(traced, 64, torch.Generator().manual_seed(0))
    assert (ids.shape, targets.shape) == ((64, S), (64, T))
    assert int(ids.max()) >= W and int(targets.max()) == W - 1


@pytest.mark.slow
def test_it_derives_what_the_same_model_written_batch_major_derives(traced):
    plain = from_torch(lambda n: EncDec(n, major=False), WIDTHS, _inputs)
    assert len(traced.program.body) == len(plain.program.body)
    for optimizer in ("adam", "sgd"):
        assert abc_by_target(traced, optimizer) == abc_by_target(plain, optimizer)


SLOW = pytest.mark.slow  # (each a trace of its own: the default run keeps one of a kind)


@pytest.mark.parametrize(("how", "what"), [
    ("heads_unmerged", "the op scaled_dot_product_attention on a time-major value"),
    ("pooled", "the op mean on a time-major value"),
    ("summed", r"a add of a time-major value \(tokens, batch, features\) with a value laid "
               "out batch-major"),
    ("viewed", r"a view from \[4, 3, 16\] to \[3, 4, 16\] of a time-major value"),
    ("left", "an output laid out time-major"),
])
def test_a_time_major_value_read_as_batch_major_is_refused(how, what):
    square = (lambda m: _inputs(m, T)) if how == "summed" else _inputs  # torch adds them
    with pytest.raises(TensorProgError, match=AT + what):
        from_torch(lambda n: EncDec(n, how=how), WIDTHS, square)


class HeadsParam(nn.Module):
    """XLNet's projection: ``einsum("ibh,hnd->ibnd", h, q)`` of a param [n, heads, head dim]."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(V, n), nn.Linear(n, V)
        self.q = nn.Parameter(torch.randn(n, 2, n // 2))

    def forward(self, ids):
        h = self.e(ids.transpose(0, 1))
        q = torch.einsum("ibh,hnd->ibnd", h, self.q)
        return self.out((h + q.flatten(2)).transpose(0, 1))


@pytest.mark.slow
def test_a_projection_by_a_param_laid_out_per_head_is_refused():
    with pytest.raises(TensorProgError, match=AT + "an einsum 'ibh,hnd->ibnd' of a time-major "
                       r"value with a 3-D param \[16, 2, 8\]"):
        from_torch(HeadsParam, WIDTHS, lambda m: _inputs(m)[:1])


class Relaid(nn.Module):
    """A time-major value laid out batch-major and back another way than fairseq's bmm: its
    heads permuted to (B, H, T, dh) for sdpa and back (``heads``), or permuted channels-first
    (B, n, T) and transposed to (B, T, n) (``channels``)."""

    def __init__(self, n, how):
        super().__init__()
        self.how, self.h = how, 2
        self.e, self.q, self.out = nn.Embedding(V, n), nn.Linear(n, n), nn.Linear(n, V)

    def forward(self, ids):
        x = self.e(ids).transpose(0, 1)
        t, b, c = x.shape
        if self.how == "heads":
            q, k = (y.view(t, b, self.h, c // self.h).permute(1, 2, 0, 3) for y in (self.q(x), x))
            o = F.scaled_dot_product_attention(q, k, k, is_causal=True)
            o = o.permute(2, 0, 1, 3).reshape(t, b, c)
        else:
            o = self.q(F.gelu(x.permute(1, 2, 0)).transpose(1, 2)).transpose(0, 1)
        return self.out((x + o).transpose(0, 1))


@pytest.mark.parametrize("how", ["heads", pytest.param("channels", marks=SLOW)])
def test_a_time_major_value_laid_out_batch_major_and_back_is_the_model(how):
    build = lambda n: Relaid(n, how)  # noqa: E731
    traced = from_torch(build, WIDTHS, lambda m: _inputs(m)[:1])
    assert traced_computes_the_model(traced, build, lambda m: _inputs(m)[:1]) <= 1e-10


class TorchMHA(nn.Module):
    """nn.MultiheadAttention, time-major inside whatever its batch_first."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(V, n), nn.Linear(n, V)
        self.a = nn.MultiheadAttention(n, 2, batch_first=True)

    def forward(self, ids):
        x = self.e(ids)
        return self.out(x + self.a(x, x, x, need_weights=False)[0])


@pytest.mark.slow
def test_torchs_multihead_attention_is_refused_at_its_packed_projection():
    with pytest.raises(TensorProgError, match=AT + "a packed q/k/v projection unflattened"):
        from_torch(TorchMHA, WIDTHS, lambda m: _inputs(m)[:1])


class FusedQKV(nn.Module):
    """Older fairseq's fused in_proj, ``qkv(x).chunk(3, dim=-1)`` of a time-major x, each part
    viewed (T, B * H, dh) and transposed for bmm."""

    def __init__(self, n):
        super().__init__()
        self.h, self.dh = 2, n // 2
        self.e, self.qkv, self.p, self.out = (nn.Embedding(V, n), nn.Linear(n, 3 * n),
                                              nn.Linear(n, n), nn.Linear(n, V))

    def forward(self, ids):
        x = self.e(ids).transpose(0, 1)
        t, b, c = x.shape
        q, k, v = (y.contiguous().view(-1, b * self.h, self.dh).transpose(0, 1)
                   for y in self.qkv(x).chunk(3, dim=-1))
        w = torch.bmm(q, k.transpose(1, 2)) * self.dh**-0.5
        o = torch.bmm(w.softmax(-1), v).transpose(0, 1).contiguous().view(t, b, c)
        return self.out((x + self.p(o)).transpose(0, 1))


@pytest.mark.slow
def test_a_fused_projection_chunked_time_major_is_the_model():
    inputs = lambda m: _inputs(m)[:1]  # noqa: E731
    traced = from_torch(FusedQKV, WIDTHS, inputs)
    assert traced_computes_the_model(traced, FusedQKV, inputs) <= 1e-10
    apply_is_bit_identical_at_base(traced, FusedQKV, inputs)
