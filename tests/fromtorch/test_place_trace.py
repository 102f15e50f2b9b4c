"""from_torch on an image's features put where a prompt holds the image's placeholder tokens:
Gemma 3's (ShieldGemma-2's) ``inputs_embeds.masked_scatter(ids == image_id, features)``, traced
as the language's ``place(v, h, k)``, the image's patches a sequence of their own beside the
prompt's, and the answer read at the last token at two ids (``logits[:, -1, [3, 1]]``,
``pick(last(y), D, 3, 1)``). Oracles: the
emitted program computes the model (float64), and it derives the exponents of
examples/image_prompt.tp, the same network written by hand. A mask that is no block of whole
tokens from one token k in every sequence, as many as the image's, is refused at its line."""

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
IMAGE = 5  # the image's placeholder id


def _prompt(at=(2, 2), count=4):
    """Two prompts of 8 ids with ``count`` image tokens from token at[b] of prompt b."""
    ids = torch.tensor([[1, 2, 3, 4, 6, 7, 8, 9], [7, 2, 8, 9, 1, 3, 4, 6]])
    for b, k in enumerate(at):
        ids[b, k:k + count] = IMAGE
    return ids


class ImageText(nn.Module):
    """A prompt's embeddings with an 8x8 image's 4 patches (a stride-4 convolution, projected)
    put where the prompt holds the image token, then causal attention (2 heads), an MLP and a
    readout at the last token (ShieldGemma-2's answer, logits[:, -1])."""

    def __init__(self, n, partial=False, answers="ids"):
        super().__init__()
        self.partial, self.answers = partial, answers
        self.e = nn.Embedding(13, n)
        self.patch = nn.Conv2d(3, n, 4, stride=4)
        self.proj = nn.Linear(n, n, bias=False)
        self.q, self.k, self.v = (nn.Linear(n, n, bias=False) for _ in range(3))
        self.fc1, self.fc2 = nn.Linear(n, n), nn.Linear(n, n)
        self.head = nn.Linear(n, 13, bias=False)

    def forward(self, ids, pixels):
        h = self.e(ids)
        v = self.proj(torch.relu(self.patch(pixels).flatten(2).transpose(1, 2)))
        mask = (ids == IMAGE).unsqueeze(-1)
        if self.partial:  # the first feature of each image token only
            mask = mask & (torch.arange(h.shape[-1], device=ids.device) == 0)
        h = h.masked_scatter(mask.expand_as(h) if not self.partial else mask, v)
        b, t, n = h.shape
        q, k, v = (z(h).view(b, t, 2, n // 2).transpose(1, 2) for z in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + a.transpose(1, 2).reshape(b, t, n)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        if self.answers == "ids":  # ShieldGemma-2's Yes and No logits, two ids of its vocabulary
            return self.head(h)[:, -1, [3, 1]]
        # ids that vary with the prompt: the logits at its first two tokens' ids
        return self.head(h[:, -1])[:, ids[0, :2]]


def _inputs(**prompt):
    def inputs(model):
        pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        return (_prompt(**prompt), pixels)
    return inputs


def test_an_image_placed_among_a_prompts_tokens_traces_as_place_and_computes_the_model():
    # before: refused as "cannot trace the op masked_scatter"
    traced = from_torch(ImageText, WIDTHS, _inputs())
    assert "masked_scatter = place(linear, embedding, 2)" in traced.source
    assert "= last(" in traced.source and ", 3, 1)" in traced.source  # pick(y, D, 3, 1)
    assert "input patch : patches[T_patch," in traced.source  # the image's own sequence
    traced_computes_the_model(traced, ImageText, _inputs())
    want = tp.derive(tp.parse_file(ROOT / "examples" / "image_prompt.tp"), "adam").abc
    got = abc_by_target(traced)
    same = {"e.weight": "E", "patch.weight": "Wp", "patch.bias": "bp", "proj.weight": "Wv",
            "q.weight": "Wq", "k.weight": "Wk", "v.weight": "Wa", "fc1.weight": "W1",
            "fc1.bias": "b1", "fc2.weight": "W2", "fc2.bias": "b2",
            "head.weight": "U"}
    assert got == {t: (want[p].a, want[p].b, want[p].c) for t, p in same.items()}


@pytest.mark.parametrize("prompt, match", [
    ({"at": (2, 3)}, r"sequence 0: tokens 2-5; sequence 1: tokens 3-6"),  # apart in the batch
    ({"count": 3}, r"tokens 2-4.*one block of 4 tokens"),  # fewer tokens than features
])
def test_a_mask_that_is_no_block_of_the_images_tokens_is_refused(prompt, match):
    with pytest.raises(TensorProgError, match=match):
        from_torch(ImageText, WIDTHS, _inputs(**prompt))


def test_a_mask_of_some_of_a_tokens_features_is_refused():
    with pytest.raises(TensorProgError, match="picks some of a token's features"):
        from_torch(lambda n: ImageText(n, partial=True), WIDTHS, _inputs())


def test_a_readouts_logits_kept_at_ids_of_the_prompt_are_refused_at_their_line():
    with pytest.raises(TensorProgError, match=r"test_place_trace.py:\d+:\d+: error: cannot "
                       r"trace keeping some of the 13 features of a vector at ids the trace "
                       r"does not know(.|\n)*help: index the features with a list of numbers"):
        from_torch(lambda n: ImageText(n, answers="prompt"), WIDTHS, _inputs())


class HeadIds(ImageText):
    """Two coordinates of each query head kept, q.view(b, t, 2, n // 2)[..., [0, 1]]: no
    coordinates of a whole vector."""

    def forward(self, ids, pixels):
        h = self.e(ids)
        b, t, n = h.shape
        return self.q(h).view(b, t, 2, n // 2)[..., [0, 1]].reshape(b, t, 4)[:, -1]


def test_ids_kept_of_each_head_are_refused_at_their_line():
    with pytest.raises(TensorProgError, match=r"keeping some of the \d+ entries of the last "
                       r"axis of a value viewed otherwise than"):
        from_torch(HeadIds, WIDTHS, _inputs())


def test_the_coordinate_checks_images_come_with_the_examples_prompt():
    # the check feeds its random images beside the example's prompt, the first one's ids over
    # its batch, so that the image tokens stay where the trace placed them (check.py)
    from tensorprog.fromtorch.inputs import float_feed

    ids, pixels = _inputs()(None)
    x = torch.zeros(3, 3, 8, 8)
    args, kwargs = float_feed((ids, pixels), x)
    assert kwargs == {} and args[1] is x and torch.equal(args[0], ids[:1].expand(3, 8))
    args, kwargs = float_feed({"input_ids": ids, "pixel_values": pixels}, x)
    assert args == () and kwargs["pixel_values"] is x
    assert torch.equal(kwargs["input_ids"], ids[:1].expand(3, 8))


class TextKept(ImageText):
    """The prompt's embeddings read again beside the image's, zeroed at its placeholders by a
    mask of the ids, e(ids) * (ids != image)."""

    def forward(self, ids, pixels):
        h = self.e(ids)
        v = self.proj(torch.relu(self.patch(pixels).flatten(2).transpose(1, 2)))
        h = h.masked_scatter((ids == IMAGE).unsqueeze(-1).expand_as(h), v)
        h = h + self.e(ids) * (ids != IMAGE).unsqueeze(-1)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))[:, -1, [3, 1]]


def test_a_mask_of_the_ids_that_zeroes_the_examples_placeholders_is_refused():
    # before: the walk computes constants from zero ids, where the mask keeps every token, and
    # traced the product as the identity: the placeholders' embeddings were kept
    with pytest.raises(TensorProgError, match=r"test_place_trace.py:\d+:\d+: error: cannot "
                       r"trace a product with a mask of 0s and 1s per token that zeroes 8"):
        from_torch(TextKept, WIDTHS, _inputs())


class EditedIds(ImageText):
    """Gemma 3's lookup: the placeholders' ids set to 0 first (ids[ids == image] = 0), the
    embeddings scaled, the image's features put there; ``read``: those embeddings also read by
    a mean over each token's features before the features are put in place."""

    def __init__(self, n, read=False):
        super().__init__(n)
        self.read = read

    def forward(self, ids, pixels):
        kept = ids.clone()
        kept[ids == IMAGE] = 0
        h = self.e(kept) * 2.0
        if self.read:
            h = h + h.mean(-1, keepdim=True)
        v = self.proj(torch.relu(self.patch(pixels).flatten(2).transpose(1, 2)))
        h = h.masked_scatter((ids == IMAGE).unsqueeze(-1).expand_as(h), v)
        return self.head(h + self.fc2(torch.relu(self.fc1(h))))[:, -1, [3, 1]]


def test_the_embeddings_of_edited_ids_read_other_than_by_place_are_refused():
    # before: the edited ids were read as the token ids and their lookup at the placeholders
    # (the ids' own rows, where the model reads row 0) kept by the mean
    with pytest.raises(TensorProgError, match=r"test_place_trace.py:\d+:\d+: error: cannot trace "
                       r"a lookup of token ids set to one id where a condition picks them "
                       r"\(sequence 0: tokens 2-5; sequence 1: tokens 2-5 of the example\) "
                       r"read by mean"):
        from_torch(lambda n: EditedIds(n, read=True), WIDTHS, _inputs())


@pytest.mark.slow
def test_the_embeddings_of_edited_ids_covered_by_place_compute_the_model():
    traced = from_torch(EditedIds, WIDTHS, _inputs())
    assert "place(" in traced.source
    traced_computes_the_model(traced, EditedIds, _inputs())
