"""from_torch on vision heads that pool their tokens, and on CLIP's quick_gelu.

``h.mean(1)`` (I-JEPA's head) traces as the language's ``mean(h)`` and ``h[:, k:].mean(1)``
(BEiT's pooler: the patch tokens after the class token) as ``mean(h, k)``; the oracle is the same
model read at its class token, ``h[:, 0]`` (``first(h)``), which derives every param's exponents
alike (a mean of finitely many tokens scales as one token). ``x * sigmoid(1.702 x)`` traces as
``c * silu(x / s)`` with c = s = 1/1.702, exactly the function, and derives as silu does. Apply
leaves each bit-identical at the base width."""

import re

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Pooled(torch.nn.Module):
    """A class token, one MLP per token, then a head on one vector per sequence: ``read`` says
    which (the class token, the mean of every token, of the tokens after the class token)."""

    def __init__(self, n, read="first", act="gelu"):
        super().__init__()
        self.read, self.act = read, act
        self.e = torch.nn.Embedding(13, n)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, n) * 0.02)
        self.fc = torch.nn.Linear(n, 2 * n)
        self.proj = torch.nn.Linear(2 * n, n)
        self.ln = torch.nn.LayerNorm(n)
        self.head = torch.nn.Linear(n, 5)

    def forward(self, idx):
        x = self.e(idx)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        u = self.fc(h)
        quick = self.act == "quick_gelu"  # CLIP's
        u = u * torch.sigmoid(1.702 * u) if quick else torch.nn.functional.gelu(u)
        h = h + self.proj(u)
        if self.read == "first":
            pooled = h[:, 0]
        elif self.read == "mean":
            pooled = h.mean(dim=1)
        elif self.read == "after_cls":
            pooled = h[:, 1:, :].mean(1)
        else:  # "middle": tokens 1..T-1, not to the last
            pooled = h[:, 1:-1].mean(1)
        return self.head(self.ln(pooled))


def _build(read, act="gelu"):
    return lambda n: Pooled(n, read, act)


@pytest.fixture(scope="module")
def first():
    return from_torch(_build("first"), WIDTHS, _tokens)


@pytest.mark.parametrize(("read", "statement"), [("mean", r"mean\(add\)"),
                                                 ("after_cls", r"mean\(add, 1\)")])
def test_a_mean_of_the_tokens_traces_as_mean_and_derives_as_the_class_token(read, statement,
                                                                            first):
    traced = from_torch(_build(read), WIDTHS, _tokens)
    assert re.search(rf"^\w+ = {statement}$", traced.source, re.M), traced.source
    for optimizer in ("adam", "sgd"):
        assert abc_by_target(traced, optimizer) == abc_by_target(first, optimizer)
    apply_is_bit_identical_at_base(traced, _build(read), _tokens)


def test_a_slice_of_the_tokens_short_of_the_last_is_refused():
    with pytest.raises(TensorProgError, match=r"test_pool.py:\d+:\d+: error: cannot trace a "
                       r"slice of the tokens(.|\n)*other than the tokens from one on to the "
                       r"last, h\[:, k:\]"):
        from_torch(_build("middle"), WIDTHS, _tokens)


def test_quick_gelu_traces_as_a_stretched_silu_and_derives_as_gelu_does(first):
    traced = from_torch(_build("first", "quick_gelu"), WIDTHS, _tokens)
    (line,) = [s for s in traced.source.splitlines() if "silu(" in s]
    assert re.search(r"= 0\.587544066 \* silu\(\w+ / 0\.587544066\)$", line), line
    for optimizer in ("adam", "sgd"):  # first(h) after a gelu MLP
        assert abc_by_target(traced, optimizer) == abc_by_target(first, optimizer)
    apply_is_bit_identical_at_base(traced, _build("first", "quick_gelu"), _tokens)


class DeadProbe(torch.nn.Module):
    """SigLIP's image classifier in small: patches of an image, positions looked up by ids over
    the patches (no class token), a mean over them into the classifier, and an attention-pooling
    head whose output the classifier leaves unused (its ``repeat`` alone would be refused)."""

    def __init__(self, n):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, n, 4, stride=4)
        self.pos = torch.nn.Embedding(16, n)
        self.register_buffer("position_ids", torch.arange(16)[None], persistent=False)
        self.fc = torch.nn.Linear(n, n)
        self.probe = torch.nn.Parameter(torch.randn(1, 1, n))
        self.head = torch.nn.Linear(n, 10)

    def forward(self, img):
        h = self.proj(img).flatten(2).transpose(1, 2) + self.pos(self.position_ids)
        h = h + torch.relu(self.fc(h))
        q = self.probe.repeat(h.shape[0], 1, 1)  # the unused head
        torch.softmax(q @ h.transpose(1, 2), -1) @ h
        return self.head(h.mean(1))


def _images(model):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def test_a_head_whose_output_is_unused_is_left_out_and_positions_run_over_the_patches():
    traced = from_torch(DeadProbe, WIDTHS, _images)
    assert "input pos : positions[T]" in traced.source, traced.source
    assert "probe" not in {u.target for u in traced.params.values()}
    assert re.search(r"^\w+ = mean\(\w+\)$", traced.source, re.M)
    apply_is_bit_identical_at_base(traced, DeadProbe, _images)


class PerPatch(Pooled):
    """A per-patch head on the tokens after the class token, ``h[:, skip:]``."""

    def __init__(self, n, skip=1):
        super().__init__(n)
        self.skip = skip

    def forward(self, idx):
        x = self.e(idx)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(h[:, self.skip :])


def test_the_tokens_after_the_class_token_read_by_a_layer_are_the_tokens_again():
    # refused before as "a slice of a sequence's tokens ... read by the op linear": they are
    # the sequence T again, tail(h, T), exactly the tokens kept (ops_pool.py's token_tail)
    traced = from_torch(PerPatch, WIDTHS, _tokens)
    assert "slice_1 = tail(v_cat, T)" in traced.source, traced.source
    traced_computes_the_model(traced, PerPatch, _tokens)


def test_the_tokens_after_the_class_token_and_one_more_read_by_a_layer_are_refused():
    with pytest.raises(TensorProgError, match=r"test_pool.py:\d+:\d+: error: cannot trace "
                       r"a slice of a sequence's tokens, the tokens from token 2 on, h\[:, 2:\], "
                       r"read by the op linear"):
        from_torch(lambda n: PerPatch(n, skip=2), WIDTHS, _tokens)


class Sliced(Pooled):
    """The tokens before the last (a language model's shifted logits, ``form`` "logits") or
    the first token kept as a sequence of one (``h[:, :1]``), read by a layer or squeezed."""

    def __init__(self, n, form):
        super().__init__(n)
        self.form = form

    def forward(self, idx):
        h = self.e(idx)
        if self.form == "logits":
            logits = self.head(h)
            return logits[:, :-1]
        first = h[:, :1]
        return self.head(first.squeeze(1) if self.form == "squeezed" else first)


@pytest.mark.parametrize(("form", "slice_", "reader", "line"), [
    ("logits", r"the tokens before token 7, h\[:, :7\]", "the model's output", "logits[:, :-1]"),
    ("first", r"the tokens before token 1, h\[:, :1\]", "the op linear", "first = h[:, :1]"),
    ("squeezed", r"the tokens before token 1, h\[:, :1\]", "the op squeeze", "first = h[:, :1]"),
], ids=["logits", "first", "squeezed"])
def test_a_slice_of_the_tokens_read_by_anything_else_is_refused_at_the_slice(
        form, slice_, reader, line):
    # said at the reader's line before, as "the tokens of a sequence from token 0 on (h[:, k:])",
    # or for the output at no line of the model's; squeezed, as "the op squeeze"
    with pytest.raises(TensorProgError, match=rf"cannot trace a slice of a sequence's tokens, "
                       rf"{slice_}, read by {reader}") as err:
        from_torch(lambda n: Sliced(n, form), WIDTHS, _tokens)
    assert line in err.value.diagnostics[0].span.source_line()
