"""from_torch on LongT5's block-local attention (transformers' LongT5LocalAttention, written
small): each head's queries, keys and values padded to whole blocks, the keys and values of each
block's neighbours concatenated, T5's relative position bias of the 3-block grid and the mask
added, the softmax, the mix, the heads merged and the pad cut. It is attention over the sequence
with T5's bias in which each token attends the keys fewer than a block's length away: the
language's ``relative[T, B, r]`` (plain ``relative[T, B]`` where the sequence fits one reach).

Oracles: the emitted program computes the model (float64), over a sequence longer than its
blocks, of whole blocks (no pad) or within one reach; it derives the exponents of the same
network with its attention written over the whole sequence (T5's); a neighbour set that is
another band traces to that band. Near misses are refused at their line: keys kept by block,
not by distance, a bias read at another pair's bucket, padding keys left unmasked."""

import math

import pytest
from conftest import abc_by_target, emit_program, import_file, traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB, HEADS, BUCKETS = 13, 4, 32


def _tokens(model, t=6):
    return (torch.arange(2 * t).remainder(VOCAB).view(2, t),)


def _bucket(distance, buckets=BUCKETS, max_distance=128):
    """T5's bidirectional bucket of each distance (key minus query)."""
    buckets //= 2
    out = (distance > 0).long() * buckets
    distance = distance.abs()
    exact = buckets // 2
    far = (
        exact
        + (
            torch.log(distance.float() / exact) / math.log(max_distance / exact) * (buckets - exact)
        ).long()
    )
    return out + torch.where(distance < exact, distance, far.clamp(max=buckets - 1))


def _blocks(x, block):  # LongT5's _split_into_blocks
    pad = -x.shape[1] % block
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, pad])
    return x.reshape(x.shape[0], -1, block, *x.shape[2:])


def _three(x, order):  # LongT5's _concatenate_3_blocks, its blocks in ``order``
    n = x.shape[1]
    x = F.pad(x, [0, 0] * (x.dim() - 2) + [1, 1])
    return torch.cat([x[:, i : i + n] for i in order], dim=2)


class Local(nn.Module):
    """An embedding, LongT5's local attention over blocks of ``block`` (its neighbours' keys
    in ``order``, pairs under ``reach`` tokens apart kept, ``masked``: padding keys masked, or
    ``full``: T5's attention over the whole sequence instead), residual, and a readout."""

    def __init__(self, n, block=8, order=(0, 1, 2), reach=None, masked=True, full=False):
        super().__init__()
        self.block, self.order, self.masked, self.full = block, order, masked, full
        self.reach = block if reach is None else reach
        self.e = nn.Embedding(VOCAB, n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.rel = nn.Embedding(BUCKETS, HEADS)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        q, k, v = (f(h).view(b, t, HEADS, n // HEADS) for f in (self.q, self.k, self.v))
        y = self._full(q, k, v) if self.full else self._local(q, k, v)
        return self.head(h + self.o(y.reshape(b, -1, n)[:, :t]))

    def _full(self, q, k, v):
        t = q.shape[1]
        pos = torch.arange(t, device=q.device)
        bias = self.rel(_bucket(pos[None, :] - pos[:, None])).permute(2, 0, 1)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # T5's: [batch, heads, tokens, dh]
        w = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)
        return (w @ v).transpose(1, 2)

    def _local(self, q, k, v):
        block, (b, t) = self.block, q.shape[:2]
        q, k, v = (_blocks(x, block) for x in (q, k, v))
        k, v = _three(k, self.order), _three(v, self.order)
        scores = torch.einsum("...qhd,...khd->...hqk", q, k)
        pos = torch.arange(3 * block, device=q.device)
        rel = pos[None, :] - pos[block:-block, None]
        bias = self.rel(_bucket(rel)).permute(2, 0, 1)[None, None]
        ones = _blocks(
            torch.ones(b, t, device=q.device), block
        )  # LongT5's _get_local_attention_mask
        keep = ones[..., None].bool() & _three(ones, self.order)[..., None, :].bool()
        keep = keep & (rel.abs() < self.reach) if self.masked else torch.ones_like(keep)
        bias = bias + torch.where(keep[:, :, None], 0.0, -1e10)
        scores += bias
        w = torch.softmax(scores, dim=-1).type_as(scores)  # (LongT5 takes it in float32)
        out = torch.einsum("...hqk,...khd->...qhd", w, v)
        return out.contiguous().view(b, -1, q.shape[-2] * q.shape[-1])


def _build(**kw):
    return lambda n: Local(n, **kw)


@pytest.fixture(scope="module")
def traced():
    return from_torch(_build(block=4), WIDTHS, lambda m: _tokens(m, 11))


def test_block_local_attention_traces_as_a_band_of_keys_and_computes_the_model(traced):
    # blocks of 4 over 11 tokens (padded to 12): each token attends the keys fewer than 4 away
    assert "input rel : relative[T, f32, 4]" in traced.source
    assert "mix(softmax(" in traced.source
    traced_computes_the_model(traced, _build(block=4), lambda m: _tokens(m, 11))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("block", "t", "form"), [(8, 6, "relative[T, f32]"), (3, 9, "relative[T, f32, 3]")]
)
def test_a_sequence_within_one_reach_or_of_whole_blocks_computes_the_model(block, t, form):
    inputs = lambda m: _tokens(m, t)  # noqa: E731
    traced = from_torch(_build(block=block), WIDTHS, inputs)
    assert f"input rel : {form}\n" in traced.source
    traced_computes_the_model(traced, _build(block=block), inputs)


@pytest.mark.slow
def test_it_derives_the_exponents_of_the_same_attention_over_the_whole_sequence(traced):
    full = from_torch(_build(full=True), WIDTHS, lambda m: _tokens(m, 11))
    assert abc_by_target(traced) == abc_by_target(full)


@pytest.mark.slow
def test_a_neighbour_set_of_another_reach_traces_to_that_reach():
    inputs = lambda m: _tokens(m, 11)  # noqa: E731
    traced = from_torch(_build(block=4, reach=3), WIDTHS, inputs)
    assert "input rel : relative[T, f32, 3]" in traced.source
    traced_computes_the_model(traced, _build(block=4, reach=3), inputs)


def _refused(match, t=6, **kw):
    with pytest.raises(TensorProgError, match=r"test_block_local.py:\d+:\d+: error: " + match):
        from_torch(_build(**kw), WIDTHS, lambda m: _tokens(m, t))


def test_keys_kept_by_block_not_by_distance_are_refused():
    # the neighbours' blocks whole: token 0 sees 8 keys, token 3 (same block) as many but others
    _refused(
        r"cannot trace blocked attention over 11 tokens whose mask keeps pairs other than every "
        r"key once for every query",
        t=11,
        block=4,
        reach=8,
    )


@pytest.mark.slow
def test_a_bias_read_at_another_pairs_bucket_is_refused():
    # the 3 blocks concatenated out of order: the keys' tokens are not where the bias reads them
    _refused(
        r"cannot trace T5's bias read for tokens \(0, 1\) at another pair's bucket", order=(1, 0, 2)
    )


@pytest.mark.slow
def test_padding_keys_left_unmasked_are_refused():
    _refused(r"cannot trace blocked attention in which token 0 attends a padding key", masked=False)


class CutTokens(Local):
    """The attention's output cut to its first t - 1 tokens, not its pad alone."""

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        q, k, v = (f(h).view(b, t, HEADS, n // HEADS) for f in (self.q, self.k, self.v))
        return self.head(self.o(self._local(q, k, v).reshape(b, -1, n)[:, : t - 1]))


def test_a_cut_of_the_sequences_own_tokens_is_refused():
    # its index is 0..t-2 in order: the walk's value (t tokens) only where all of them are kept
    with pytest.raises(
        TensorProgError,
        match=r"test_block_local.py:\d+:\d+: error: cannot trace the op linear of a sequence's "
        r"11 tokens padded by 1",
    ):
        from_torch(lambda n: CutTokens(n, block=4), WIDTHS, lambda m: _tokens(m, 11))


@pytest.mark.parametrize("logits", ["tanh(s)", "s * s"])
def test_a_reachs_bias_read_other_than_summed_into_a_softmaxs_logits_is_refused(logits):
    # the emitted module masks the logits of a softmax that sums the bias: through a tanh it
    # would find no reach and attend every key
    source = BAND.format(softmax="softmax").replace("softmax(s)", f"softmax({logits})")
    with pytest.raises(
        TensorProgError,
        match=r"<program>:18:17: error: a relative bias of "
        r"reach 3 read other than summed into attention logits",
    ):
        tp.parse(source)


def test_the_ir_text_of_a_reach_parses_back(traced):
    text = tp.to_text(traced.program)
    assert "input rel : relative[T, f32, 4]" in text
    assert tp.parse(text) == traced.program


class Aggregates(nn.Module):
    """LongT5's transient-global aggregates: each block of 4 tokens summed into a token of a
    sequence of its own (``_create_global_aggregates``), read back into every token."""

    def __init__(self, n):
        super().__init__()
        self.e, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        blocks = torch.arange(h.shape[1], device=h.device) // 4
        one_hot = F.one_hot(blocks, 2).type(h.dtype)
        g = torch.einsum("...nd,...ng->...gd", h, one_hot)
        return self.head(h + g.mean(1, keepdim=True))


@pytest.mark.slow
def test_transient_global_aggregates_are_refused_as_such():
    with pytest.raises(
        TensorProgError,
        match=r"test_block_local.py:\d+:\d+: error: cannot trace the sum of each of 2 blocks' "
        r"token vectors into a token of a sequence of its own \(LongT5's transient-global",
    ):
        from_torch(Aggregates, WIDTHS, lambda m: _tokens(m, 8))


def test_the_block_ops_shadow_no_other_rules_private_method():
    # first in the walker's order, a private name it shares would replace another rule's
    from tensorprog.fromtorch.convert import Converter
    from tensorprog.fromtorch.ops_blocks import BlockOps

    own = {m for m in vars(BlockOps) if m.startswith("_") and not m.startswith("__")}
    others = {m for c in Converter.__mro__ if c not in (BlockOps, Converter) for m in vars(c)}
    assert not own & others


BAND = """width n = 32
dim V = 13
dim T = 10
dim B = 32
dim H = 4
dim dh = n / 4
input tok : tokens[T, V]
input rel : relative[T, B, 3]
param E : [n, V]
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param R : [H, B]
param U : [V, n]
scale tau = 1.0
h = E @ tok
s = tau * dot(Wq @ h, Wk @ h, dh) + R @ rel
a = mix({softmax}(s), Wv @ h)
y = U @ (h + a)
output y
"""


@pytest.mark.parametrize("softmax", ["softmax", "causal_softmax"])
def test_a_reach_masks_the_logits_before_the_softmax_that_reads_them(softmax, tmp_path):
    source = emit_program(tp.parse(BAND.format(softmax=softmax))).source
    assert "_beyond_reach(s, 3)" in source
    path = tmp_path / "band.py"
    path.write_text(source)
    model = import_file(path).Model(32, dtype=torch.float64)
    ids = torch.arange(10).remainder(VOCAB)[None]
    moved = 9 if softmax == "softmax" else 0  # a token that only its neighbours attend
    other = ids.clone()
    other[0, moved] = (other[0, moved] + 1) % VOCAB
    with torch.no_grad():
        changed = (model(ids) - model(other)).abs().amax(-1)[0] > 1e-12
    # the queries fewer than 3 tokens from it (and not before it, causal) read it, no other
    reads = [0 <= (t - moved if softmax != "softmax" else abs(t - moved)) < 3 for t in range(10)]
    assert changed.tolist() == reads


class LongT5Encoder(nn.Module):
    """transformers' LongT5 encoder (its local attention, blocks of 4), fed a mask of ones."""

    def __init__(self, n):
        super().__init__()
        transformers = pytest.importorskip("transformers")
        config = transformers.LongT5Config(
            vocab_size=VOCAB,
            d_model=n,
            d_kv=n // HEADS,
            d_ff=2 * n,
            num_layers=2,
            num_heads=HEADS,
            local_radius=3,
            relative_attention_num_buckets=BUCKETS,
            dropout_rate=0.0,
            feed_forward_proj="relu",
        )
        self.m = transformers.LongT5EncoderModel(config)

    def forward(self, ids):
        return self.m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


@pytest.mark.slow
def test_transformers_longt5_encoder_traces_to_its_band_and_computes_the_model():
    inputs = lambda m: _tokens(m, 11)  # noqa: E731
    traced = from_torch(LongT5Encoder, WIDTHS, inputs)
    assert "input rel : relative[T, f32, 4]" in traced.source
    # LongT5 takes its softmax in float32, whatever the model's dtype
    traced_computes_the_model(traced, LongT5Encoder, inputs, tol=1e-6)
