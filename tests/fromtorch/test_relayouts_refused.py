"""from_torch on relayouts the language cannot say: an image's rows and columns swapped
(h.transpose(2, 3), h.permute(0, 1, 3, 2)), the batch and tokens permuted into no layout the
tracer has ((tokens, features, batch)), and a linear layer over the tokens of [B, C, T]
(MLP-Mixer's token mixing). Each is refused at the user's line: traced, its program would
compute the value as if unswapped (a square image's transpose is not the identity). A swap its
reader undoes at once is the value itself and traces; the batch swapped with the tokens,
x.transpose(0, 1), is a time-major value (test_time_major.py), which per-token ops read as the
program does."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (8, 16)
AT = r"test_relayouts_refused.py:\d+:\d+: error: cannot trace "


def _images(model):
    return (torch.randn(2, 3, 8, 8),)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Convs(nn.Module):
    """Two convolutions, the image between them relaid out by ``how``."""

    def __init__(self, n, how):
        super().__init__()
        self.how = how
        self.stem, self.conv = nn.Conv2d(3, n, 3, padding=1), nn.Conv2d(n, n, 3, padding=1)
        self.head = nn.Linear(n, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        if self.how == "transpose":
            h = h.transpose(2, 3)
        elif self.how == "permute":
            h = h.permute(0, 1, 3, 2)
        elif self.how == "undone":
            h = h.transpose(2, 3).contiguous().transpose(-1, -2)
        return self.head(F.relu(self.conv(h)).mean((2, 3)))


@pytest.mark.parametrize("how", ["transpose", "permute"])
def test_an_images_rows_and_columns_swapped_are_refused(how):
    with pytest.raises(TensorProgError, match=AT + "a transpose or permute that swaps an "
                       "image's rows and columns"):
        from_torch(lambda n: Convs(n, how), WIDTHS, _images)


def test_a_swap_undone_at_once_is_the_image_itself():
    undone = from_torch(lambda n: Convs(n, "undone"), WIDTHS, _images)
    plain = from_torch(lambda n: Convs(n, None), WIDTHS, _images)
    assert len(undone.program.body) == len(plain.program.body)
    assert abc_by_target(undone) == abc_by_target(plain)


class Batch(nn.Module):
    """Tokens [B, T, C] viewed [T, B, C] before a linear layer (``swap``), then back."""

    def __init__(self, n, swap=True):
        super().__init__()
        self.swap = swap
        self.e, self.fc, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        if self.swap == "features":  # (tokens, features, batch): no layout the tracer has
            return self.out(self.fc(x.permute(1, 2, 0).transpose(1, 2)).transpose(0, 1))
        y = x.transpose(0, 1) if self.swap else x
        y = F.relu(self.fc(y))
        return self.out(x + (y.transpose(0, 1) if self.swap else y))


def test_the_batch_swapped_with_the_tokens_for_per_token_ops_is_the_model():
    # time-major between the swaps, (tokens, batch, n): a linear layer and a relu read each
    # token's vector alone, so the program is the unswapped model's (test_time_major.py has
    # the ops that read the tokens)
    swapped = from_torch(Batch, WIDTHS, _tokens)
    assert traced_computes_the_model(swapped, Batch, _tokens) <= 1e-10
    assert abc_by_target(swapped) == abc_by_target(from_torch(
        lambda n: Batch(n, swap=False), WIDTHS, _tokens))


def test_a_permute_of_the_batch_and_tokens_to_no_layout_traced_is_refused():
    with pytest.raises(TensorProgError, match=AT + "a transpose or permute that swaps the "
                       "batch and tokens axes"):
        from_torch(lambda n: Batch(n, swap="features"), WIDTHS, _tokens)


class Mixer(nn.Module):
    """MLP-Mixer's token mixing: a linear layer over the 16 pixels of [B, C, 16]."""

    def __init__(self, n):
        super().__init__()
        self.stem, self.tok = nn.Conv2d(3, n, 2, stride=2), nn.Linear(16, 16)
        self.head = nn.Linear(n, 10)

    def forward(self, x):
        h = self.stem(x).flatten(2)
        h = h + self.tok(h)
        return self.head(h.transpose(1, 2).mean(1))


def test_a_linear_layer_over_the_tokens_is_refused():
    with pytest.raises(TensorProgError, match=AT + "a linear layer over the tokens"):
        from_torch(Mixer, WIDTHS, _images)
