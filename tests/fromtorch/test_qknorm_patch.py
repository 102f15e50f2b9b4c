"""QK-norm without a gain over a head dim that grows (4 heads: nn.RMSNorm(dh,
elementwise_affine=False), NanoChat's parameter-free RMS norm): µP's 1/d against the model's
1/sqrt(dh) must scale the logits, which no param of the query can take (a norm's output is Θ(1)
whatever its input's scale). The logits are linear in the normalised query, so ``apply`` puts
(n/base)^-1/2 on the output of the norm's module, which returns the query alone. Checked:
bit-identical at the base width; at twice the base the logits are those of the same params
with the norm's output times 2^-1/2 by hand; in a rolled stack, every layer's norm (at a depth
other than the traced one too)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from conftest import apply_is_bit_identical_at_base  # noqa: E402

from tensorprog.fromtorch import from_torch, probe  # noqa: E402

WIDTHS = (16, 32)
VOCAB, T, HEADS = 16, 8, 4


class PlainRMS(nn.Module):
    """An RMS norm with no param (NanoChat's, Llama 4's QK L2 norm)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Attention(nn.Module):
    """Attention whose query (only) is normalised over each head's dh = n / 4 coordinates
    without a gain; ``by_hand`` multiplies the norm's output (the oracle)."""

    def __init__(self, n, norm=None):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.q_norm = norm if norm is not None else nn.RMSNorm(n // HEADS,
                                                               elementwise_affine=False)
        self.by_hand = 1.0

    def heads(self, h):
        b, t, n = h.shape
        q = self.q_norm(self.q(h).view(b, t, HEADS, n // HEADS)).transpose(1, 2) * self.by_hand
        k, v = (z(h).view(b, t, HEADS, n // HEADS).transpose(1, 2) for z in (self.k, self.v))
        return q, k, v

    def logits(self, h):
        q, k, _ = self.heads(h)
        return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5

    def forward(self, h):
        y = F.scaled_dot_product_attention(*self.heads(h), is_causal=True)
        return h + y.transpose(1, 2).reshape(h.shape)


class Net(nn.Module):
    def __init__(self, n, depth=1, norm=None):
        super().__init__()
        self.emb, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB)
        self.layers = nn.ModuleList(Attention(n, norm and norm()) for _ in range(depth))

    def forward(self, idx):
        h = self.emb(idx)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB - 3).view(2, T),)


def _twin(model, build):
    """A model of the same params, unpatched: the oracle's."""
    torch.manual_seed(0)
    plain = build()
    plain.load_state_dict(model.state_dict())
    return plain


def test_a_query_normalised_without_a_gain_takes_the_factor_on_its_norms_output():
    # before: MuP refused it (no param of the query can take µP's factor)
    traced = from_torch(Net, WIDTHS, _tokens, blocks=False)
    mup = apply_is_bit_identical_at_base(traced, Net, _tokens)
    (patch,) = mup.patches
    assert (patch.module, patch.exponent) == ("layers.0.q_norm", 0.5)
    n = 2 * WIDTHS[0]
    torch.manual_seed(0)
    model = Net(n)
    report = mup.apply(model)
    assert "patched forward of layers.0.q_norm: attn" in str(report)
    plain = _twin(model, lambda: Net(n))
    plain.layers[0].by_hand = 2**-0.5  # µP's 1/dh: the model's 1/sqrt(dh) times (n/base)^-1/2
    h = model.emb(_tokens(model)[0])
    with torch.no_grad():
        torch.testing.assert_close(model.layers[0].logits(h), plain.layers[0].logits(h),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(model(*_tokens(model)), plain(*_tokens(model)),
                                   rtol=1e-6, atol=1e-7)
        # unpatched, the logits are 2^1/2 times larger: the patch is what changed them
        assert not torch.allclose(_twin(model, lambda: Net(n)).layers[0].logits(h),
                                  plain.layers[0].logits(h))
    # the coordinate check's probe measures the program's query, the norm's own output
    found = probe(mup, model, _tokens(model))()
    q = next(v for v, (node, _) in traced.vectors.items() if traced.calls.get(node) ==
             "layers.0.q_norm")
    with torch.no_grad():
        own = F.rms_norm(model.layers[0].q(h).view(2, T, HEADS, -1), (n // HEADS,))
    torch.testing.assert_close(found[q].reshape(own.shape), own, rtol=1e-6, atol=1e-7)


def test_every_layers_parameter_free_norm_is_patched_in_a_rolled_stack():
    def build(n, depth=2):
        return Net(n, depth, norm=PlainRMS)

    traced = from_torch(build, WIDTHS, _tokens)
    assert traced.stack is not None and traced.stack.depth == 2
    mup = apply_is_bit_identical_at_base(traced, build, _tokens)
    n = 2 * WIDTHS[0]
    torch.manual_seed(0)
    model = build(n, 3)  # a depth other than the traced one: each layer's norm
    report = mup.apply(model)
    assert report.patched == [f"layers.{i}.q_norm" for i in range(3)]
    plain = _twin(model, lambda: build(n, 3))
    for layer in plain.layers:
        layer.by_hand = 2**-0.5
    with torch.no_grad():
        torch.testing.assert_close(model(*_tokens(model)), plain(*_tokens(model)),
                                   rtol=1e-6, atol=1e-7)


class SharedNorm(Attention):
    """Llama 4's: one parameter-free norm module that q and k share (called twice per layer);
    ``by_hand`` multiplies both of its outputs."""

    def heads(self, h):
        b, t, n = h.shape
        q, k = (self.q_norm(z(h).view(b, t, HEADS, n // HEADS)).transpose(1, 2) * self.by_hand
                for z in (self.q, self.k))
        return q, k, self.v(h).view(b, t, HEADS, n // HEADS).transpose(1, 2)


class SharedNet(Net):
    def __init__(self, n, depth=2):
        nn.Module.__init__(self)
        self.emb, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB)
        self.layers = nn.ModuleList(SharedNorm(n, PlainRMS()) for _ in range(depth))


def test_a_norm_q_and_k_share_takes_the_square_root_of_the_factor_on_each():
    # before: refused (no module returns the query alone); the logits are linear in q and in k,
    # so (n/base)^-1/4 on both is the (n/base)^-1/2 µP needs on the logits, and the gradients
    # reaching q and k are those of the factor on the logits: the same training
    traced = from_torch(SharedNet, WIDTHS, _tokens)
    mup = apply_is_bit_identical_at_base(traced, SharedNet, _tokens)
    (patch,) = mup.patches
    assert (patch.module, patch.exponent, len(patch.nodes)) == ("layers.0.q_norm", 0.25, 4)
    n = 2 * WIDTHS[0]
    torch.manual_seed(0)
    model = SharedNet(n, 3)  # a depth other than the traced one: each layer's norm
    assert mup.apply(model).patched == [f"layers.{i}.q_norm" for i in range(3)]
    plain = _twin(model, lambda: SharedNet(n, 3))
    for layer in plain.layers:
        layer.by_hand = 2**-0.25
    with torch.no_grad():
        torch.testing.assert_close(model(*_tokens(model)), plain(*_tokens(model)),
                                   rtol=1e-6, atol=1e-7)
        assert not torch.allclose(_twin(model, lambda: SharedNet(n, 3))(*_tokens(model)),
                                  plain(*_tokens(model)))
