"""from_torch on Zaya's delayed values (modeling_zaya.py's qkv_proj): a linear layer's output at
zeros of one token put before the same layer's outputs without their last token,
``cat([v(h.new_zeros(B, 1, n)), v(h)[:, :-1]], dim=1)``. Without a bias the layer maps zeros to
zeros: the language's ``shift(y, 1)``. Oracle: the traced program computes the model (float64),
and derives what the same model written with F.pad (a traced shift, test_shift_trace.py)
derives. With a bias the first token holds it: refused at the concatenation's line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class Delayed(nn.Module):
    """An embedding, the current and delayed halves of a value side by side, a layer over them
    and a readout. ``form``: "zeros" (Zaya's), "pad" (the same by F.pad)."""

    def __init__(self, n, form="zeros", bias=False):
        super().__init__()
        self.form = form
        self.e = nn.Embedding(VOCAB, n)
        self.cur = nn.Linear(n, n // 2, bias=False)
        self.late = nn.Linear(n, n // 2, bias=bias)
        self.o, self.head = nn.Linear(n, n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        y = self.late(h)
        if self.form == "pad":
            late = F.pad(y[:, :-1], (0, 0, 1, 0))
        else:
            first = self.late(h.new_zeros(h.shape[0], 1, h.shape[-1]))
            late = torch.cat([first, y[:, :-1]], dim=1)
        return self.head(h + self.o(torch.cat([self.cur(h), late], dim=-1)))


@pytest.mark.slow  # two traces
def test_a_layer_at_zeros_before_its_outputs_is_their_shift():
    # before: refused at h.new_zeros(...), "cannot trace the op new_zeros"
    traced = from_torch(Delayed, WIDTHS, _tokens)
    assert "shift(" in traced.source, traced.source
    traced_computes_the_model(traced, Delayed, _tokens)
    padded = from_torch(lambda n: Delayed(n, "pad"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(padded)


def test_a_layer_with_a_bias_at_zeros_is_refused():
    with pytest.raises(
        TensorProgError,
        match=r"test_delayed_tokens.py:\d+:\d+: error: cannot "
        r"trace a concatenation of a linear layer's output at zeros of 1 tokens "
        r"before another value: the layer has a bias",
    ):
        from_torch(lambda n: Delayed(n, bias=True), WIDTHS, _tokens)


class BoolZeros(nn.Module):
    """A vector's new_zeros of dtype bool, inverted: a mask keeping every token."""

    def __init__(self, n):
        super().__init__()
        self.e, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        m = h.new_zeros(h.shape[:2], dtype=torch.bool)
        return self.head(h * (~m)[..., None])


@pytest.mark.slow  # a refusal's reason before, not a wrong answer
def test_new_zeros_keeps_the_dtype_asked_for():
    # before: float64 zeros whatever the dtype, ~m of which read as a buffer of floats: refused
    traced = from_torch(BoolZeros, WIDTHS, _tokens)
    traced_computes_the_model(traced, BoolZeros, _tokens)
