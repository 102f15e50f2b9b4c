"""A prompt of learned rows of the token table (CPM-Ant's): the forward puts P constant ids,
past the vocabulary, before the token ids and looks them all up in one table,
``table(cat([arange(V, V + P).repeat(B, 1), ids], 1))``. The prompt's rows are the same P
vectors before every sequence: the lookup traces as the tokens' with P learned tokens put
before them, ``prepend`` of one row param each, over a sequence P tokens longer (fromtorch/
ops_encoder.py); the output, cut back to the tokens (``h[:, P:]``), is ``tail(h, T)``.
Oracle: the emitted program computes the model's output at the base width; the prompt rows
derive as the token rows do (input weights: Θ(1) init and Adam LR); apply leaves the model
bit-identical there. Ids put after the tokens are refused."""

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402

V, P = 13, 2


class Prompted(nn.Module):
    """P prompt rows after V token rows of one table, a pre-norm MLP block, a readout of the
    tokens after the prompt."""

    def __init__(
        self, n, after=False, segments=False, prompt_std=None, padding=None, per_sequence=False
    ):
        super().__init__()
        self.after = after  # the constant ids after the tokens: refused
        self.segments = nn.Embedding(3, n) if segments else None  # CPM-Ant's: refused
        self.per_sequence = per_sequence  # prompt ids offset by the sequence's index: refused
        # a second prompt's rows, never read
        self.embed = nn.Embedding(V + 2 * P, n, padding_idx=padding)
        if prompt_std is not None:  # the prompt rows drawn apart from the token rows
            nn.init.normal_(self.embed.weight.data[V:], std=prompt_std)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(n), nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.head = nn.Linear(n, V)

    def forward(self, ids):
        prompt = torch.arange(V + P, V + 2 * P, device=ids.device).repeat(ids.shape[0], 1)
        if self.per_sequence:
            prompt = prompt - torch.arange(ids.shape[0], device=ids.device).view(-1, 1)
        h = self.embed(torch.cat((ids, prompt) if self.after else (prompt, ids), dim=1))
        if self.segments is not None:  # 2 at each token that is not the padding id 0
            segment = torch.where(ids != 0, 2, 0)
            h = h + self.segments(torch.cat((torch.zeros_like(prompt), segment), dim=1))
        h = h + self.fc2(torch.relu(self.fc1(self.norm(h))))
        return self.head(h[:, P:])  # the prompt cut off the output: tail(h, T)


def _tokens(model):
    return (torch.arange(16).remainder(V).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Prompted, (32, 64), _tokens)


def test_the_prompt_is_two_row_params_prepended_to_the_tokens(traced):
    src = traced.source
    assert "param embed_weight_row15 : [n]" in src and "param embed_weight_row16 : [n]" in src
    assert "dim T2 = 10" in src, src
    assert "= prepend(embed_weight_row16, " in src and "= prepend(embed_weight_row15, " in src
    assert "slice_1 = tail(add, T)" in src
    traced_computes_the_model(traced, Prompted, _tokens)


def test_the_prompt_rows_derive_as_the_token_rows(traced):
    for optimizer in ("adam", "sgd"):
        abc = tp.derive(traced.program, optimizer).abc
        assert abc["embed_weight_row15"] == abc["embed_weight_row16"] == abc["embed_weight"]
    apply_is_bit_identical_at_base(traced, Prompted, _tokens)


def test_prompt_rows_drawn_apart_from_the_table_keep_their_own_std_at_every_width():
    # the table's std (pooled over its rows) gave each row 0.9 at widths past the base: 9x the
    # model's own draw, which µP keeps (the rows' init exponent is 0); each row is a block of
    # its own (init_stats.block_key), scaled from its own std at the base width
    traced = tp.from_torch(lambda n: Prompted(n, prompt_std=0.1), (32, 64), _tokens)
    model = Prompted(128, prompt_std=0.1)
    MuP(traced, "adam").apply(model)
    for row in (V + P, V + P + 1):
        assert abs(float(model.embed.weight.detach()[row].std()) / 0.1 - 1) < 0.3, row
    assert abs(float(model.embed.weight.detach()[:V].std()) - 1) < 0.3  # the token rows, N(0, 1)


def test_a_prompt_id_at_the_padding_idx_is_a_fixed_zero_row():
    traced = tp.from_torch(lambda n: Prompted(n, padding=V + P), (32, 64), _tokens)
    assert "param embed_weight_row15 : [n] = 0  # row 15 of embed.weight, its padding_idx" in (
        traced.source
    )
    assert traced.params["embed_weight_row15"].fixed == 0.0
    traced_computes_the_model(traced, lambda n: Prompted(n, padding=V + P), _tokens)


def test_prompt_ids_that_differ_between_sequences_are_refused():
    with pytest.raises(
        tp.TensorProgError,
        match=r"test_prompt_rows.py:\d+:\d+: error: cannot "
        "trace an embedding lookup of ids computed from the token ids other than",
    ):
        tp.from_torch(lambda n: Prompted(n, per_sequence=True), (32, 64), _tokens)


def test_constant_ids_after_the_tokens_are_refused():
    with pytest.raises(
        tp.TensorProgError, match="a copy behind constant ids the same in every sequence"
    ):
        tp.from_torch(lambda n: Prompted(n, after=True), (32, 64), _tokens)


def test_segments_computed_from_which_ids_are_0_are_refused():
    # the trace's ids are zeros, here the padding id: read there, every token would be padding
    with pytest.raises(
        tp.TensorProgError,
        match=r"test_prompt_rows.py:\d+:\d+: error: cannot "
        r"trace an embedding lookup of ids computed from the token ids that are "
        r"the same in every sequence at ids other than 0 .* but not at ids 0",
    ):
        tp.from_torch(lambda n: Prompted(n, segments=True), (32, 64), _tokens)


class PromptAttended(Prompted):
    """Queries from the tokens after the prompt, keys over the prompt and the tokens, under a
    mask of 8 queries by 10 keys (each token sees the prompt and the tokens up to it)."""

    def forward(self, ids):
        prompt = torch.arange(V + P, V + 2 * P, device=ids.device).repeat(ids.shape[0], 1)
        h = self.embed(torch.cat((prompt, ids), dim=1))
        (b, s, n), t = h.shape, ids.shape[1]
        q = self.fc2(self.fc1(h[:, P:])).view(b, t, 4, n // 4).transpose(1, 2)
        k = h.view(b, s, 4, n // 4).transpose(1, 2)
        mask = torch.ones(t, s, dtype=torch.bool, device=ids.device).tril(s - t)
        o = nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
        return self.head(o.transpose(1, 2).reshape(b, t, n))


def test_a_mask_of_the_tokens_after_the_prompt_by_every_token_is_refused():
    # it crashed (a RuntimeError of the mask's shapes): the causal mask's test was of a
    # square mask, keys by keys
    with pytest.raises(
        tp.TensorProgError,
        match=r"test_prompt_rows.py:\d+:\d+: error: cannot trace an attention mask of 8 "
        r"queries by 10 keys that does not keep every key",
    ):
        tp.from_torch(PromptAttended, (32, 64), _tokens)
