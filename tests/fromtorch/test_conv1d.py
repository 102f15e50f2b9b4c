"""A kernel-1 conv1d over a channels-first sequence (SqueezeBERT's layers, ``nn.Conv1d(c, out,
1)`` on [B, C, T]) traces as the linear layer over the channels it is, ``W @ h + b``. Oracles:
the traced program computes the model; it derives what the same model written with nn.Linear
over [B, T, C] derives, param by param; apply leaves the model bit-identical at the base width
and scales the 3-D kernel at twice it. In g groups (SqueezeBERT's 4) it is the grouped 1x1
convolution it is, of the tokens laid out as a 1 x T image and read back, with the same oracles.
A kernel wider than 1 is refused at the layer's line."""

from __future__ import annotations

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402


class Norm(nn.LayerNorm):
    """SqueezeBERT's LayerNorm of a channels-first value: permuted, normalised, permuted back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 1)).permute(0, 2, 1)


class Attention(nn.Module):
    """SqueezeBERT's self-attention on [B, C, T]: q, k, v kernel-1 conv1d, split into heads
    channels-first ([B, H, dh, T]), q and v permuted to [B, H, T, dh], k kept, q @ k, softmax,
    the values mixed, and merged back to [B, C, T]."""

    def __init__(self, n, heads=4, groups=1):
        super().__init__()
        self.q, self.k, self.v = (nn.Conv1d(n, n, 1, groups=groups) for _ in range(3))
        self.heads = heads

    def split(self, x):
        b, c, t = x.shape
        return x.view(b, self.heads, c // self.heads, t)

    def forward(self, h):
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        s = torch.matmul(q.permute(0, 1, 3, 2), k) / (q.shape[2] ** 0.5)
        o = torch.matmul(torch.softmax(s, -1), v.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)
        return o.contiguous().view(h.shape)


class TokensAttention(Attention):
    """The same attention with nn.Linear on [B, T, C], heads as [B, H, T, dh]."""

    def __init__(self, n, heads=4):
        super().__init__(n, heads)
        self.q, self.k, self.v = (nn.Linear(n, n) for _ in range(3))

    def forward(self, h):
        b, t, c = h.shape
        q, k, v = (f(h).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        s = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        return (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, t, c)


class Channels(nn.Module):
    """An attention and an MLP block on [B, C, T] between an embedding and a readout
    (``linear``: the same with nn.Linear on [B, T, C]; ``groups``: SqueezeBERT's, of q, k, v
    and the second MLP layer; ``conv``: that layer's other conv1d arguments)."""

    def __init__(self, n, linear=False, conv=None, groups=1):
        super().__init__()
        self.emb, self.out, self.linear = nn.Embedding(32, n), nn.Linear(n, 8), linear
        if linear:
            self.a, self.b, self.ln = nn.Linear(n, 2 * n), nn.Linear(2 * n, n), nn.LayerNorm(n)
            self.att, self.ln0 = TokensAttention(n), nn.LayerNorm(n)
        else:
            self.a, self.ln = nn.Conv1d(n, 2 * n, 1), Norm(n)
            self.b = nn.Conv1d(2 * n, n, **{"kernel_size": 1, "groups": groups, **(conv or {})})
            self.att, self.ln0 = Attention(n, groups=groups), Norm(n)

    def forward(self, ids):
        h = self.emb(ids)
        if self.linear:
            h = self.ln0(h + self.att(h))
            return self.out(self.ln(h + self.b(torch.relu(self.a(h)))))
        h = h.permute(0, 2, 1)
        h = self.ln0(h + self.att(h))
        h = self.ln(h + self.b(torch.relu(self.a(h))))
        return self.out(h.permute(0, 2, 1))


def ids(model=None):
    return (torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Channels, (64, 128), ids)


def test_a_kernel_1_conv1d_is_a_linear_layer_over_the_channels(traced):
    src = traced.source
    assert "param a_weight : [n_x2, n]" in src and "param b_weight : [n, n_x2]" in src
    assert "a_weight @ layer_norm + a_bias" in src and "b_weight @ v_relu + b_bias" in src
    assert "dot(conv1d, conv1d_1, n_by4)" in src and "mix(softmax(div), conv1d_2)" in src


def test_the_traced_conv1d_computes_the_model(traced):
    traced_computes_the_model(traced, Channels, ids)


@pytest.fixture(scope="module")
def linear():
    return tp.from_torch(lambda n: Channels(n, linear=True), (64, 128), ids)


@pytest.mark.slow  # the grouped model's test below compares the same way by default
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_conv1d_derives_what_linear_layers_derive(traced, linear, optimizer):
    assert abc_by_target(traced, optimizer) == abc_by_target(linear, optimizer)


def test_apply_scales_the_kernel_in_place(traced):
    mup = apply_is_bit_identical_at_base(traced, Channels, ids)
    torch.manual_seed(0)
    model = Channels(128)
    before = model.b.weight.std().item()
    mup.apply(model)
    assert model.b.weight.shape == (128, 256, 1)  # a hidden weight under µP keeps 1/fan_in
    assert model.b.weight.std().item() == pytest.approx(before, rel=0.05)
    assert mup.lr_multipliers(model)["b.weight"] == pytest.approx(0.5)  # Adam: 1/fan_in


def grouped(n):
    return Channels(n, groups=4)


@pytest.fixture(scope="module")
def traced_grouped():
    return tp.from_torch(grouped, (64, 128), ids)


def test_a_grouped_kernel_1_conv1d_is_a_grouped_1x1_convolution_of_the_tokens_as_an_image(
        traced_grouped):
    src = traced_grouped.source
    assert "param b_weight : [n, n_by2, f1, f1]" in src
    assert "conv1d_4_image = image(v_relu, f1, f8)" in src
    assert "conv(b_weight, conv1d_4_image, 1, 0, 0, 0, 0, 1, 4) + b_bias" in src
    assert "conv1d_4 = tokens(conv1d_4_conv, T)" in src


def test_the_traced_grouped_conv1d_computes_the_model(traced_grouped):
    traced_computes_the_model(traced_grouped, grouped, ids)


def test_grouped_conv1d_derives_what_linear_layers_derive_and_applies(traced_grouped, linear):
    for optimizer in ("adam", "sgd"):
        assert abc_by_target(traced_grouped, optimizer) == abc_by_target(linear, optimizer)
    mup = apply_is_bit_identical_at_base(traced_grouped, grouped, ids)
    model = grouped(128)
    mup.apply(model)
    assert mup.lr_multipliers(model)["b.weight"] == pytest.approx(0.5)  # Adam: 1/fan_in


@pytest.mark.slow  # a trace of its own
def test_a_conv1d_over_the_tokens_is_refused_at_the_layer():
    with pytest.raises(tp.TensorProgError, match=r"the conv1d b of kernel 3") as err:
        tp.from_torch(lambda n: Channels(n, conv={"kernel_size": 3, "padding": 1}), (64, 128),
                      ids)
    assert "test_conv1d.py" in str(err.value)
