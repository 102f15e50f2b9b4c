"""A concatenation of finite vectors along their features read by more than linear layers
(Perceiver's image input: a 1x1 convolution's channels beside learned positions, normalised
together), traced as the language's ``cat(a, b, D)``. Oracles: the emitted program computes the
model's output at the base width, for the parts in either order, three parts, the axis named
either way, the concatenation read by a norm, a function and a linear layer at once, parts one
per sequence, and an image's channels laid out channels-last; the
Perceiver image classifier in miniature derives the exponents of examples/perceiver_image.tp,
written by hand; a concatenation with a part that grows with the width, read by a norm, is
refused at its line, as is one along the tokens."""

from __future__ import annotations

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class PerceiverImage(nn.Module):
    """examples/perceiver_image.tp in torch, as transformers' Perceiver writes it: a 4 x 4
    image, a 1x1 convolution to 24 channels laid out channels-last and flattened into 16
    tokens, beside 24 channels of learned positions; the latents' cross-attention reading them
    through a layer norm; a decoder whose one learned query attends to the latents in one head
    (viewed (B, 1, 1, C), then permuted) and whose one token is read out to 10 classes."""

    def __init__(self, n):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 1)
        self.pos = nn.Parameter(torch.randn(16, 24))
        self.norm = nn.LayerNorm(48)
        self.latents = nn.Parameter(torch.randn(6, n))
        self.query = nn.Parameter(torch.randn(1, n))
        lin = [nn.Linear(48 if i in (1, 2) else n, n, bias=False) for i in range(8)]
        self.lin = nn.ModuleList(lin)
        self.out = nn.Linear(n, 10)
        with torch.no_grad():
            self.conv.bias.zero_()
            self.out.bias.zero_()

    def attend(self, i, h, x, heads=4):
        (b, r, n), t = h.shape, x.shape[1]
        q = self.lin[i](h).view(b, r, heads, -1).permute(0, 2, 1, 3)
        k = self.lin[i + 1](x).view(b, t, heads, -1).permute(0, 2, 1, 3)
        v = self.lin[i + 2](x).view(b, t, heads, -1).permute(0, 2, 1, 3)
        a = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(b, r, n)
        return self.lin[i + 3](a)

    def forward(self, img):
        b = img.shape[0]
        x = self.conv(img).permute(0, 2, 3, 1).reshape(b, 16, 24)
        a = self.norm(torch.cat([x, self.pos.expand(b, -1, -1)], dim=-1))
        z0 = self.latents.expand(b, -1, -1)
        z1 = z0 + self.attend(0, F.layer_norm(z0, z0.shape[-1:]), a)
        w = F.layer_norm(z1, z1.shape[-1:])
        q0 = self.query.expand(b, -1, -1)
        o = q0 + self.attend(4, F.layer_norm(q0, q0.shape[-1:]), w, heads=1)
        return self.out(o)[:, 0, :]


def image(model=None):
    return (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)),)


NAMES = {"conv.weight": "Wc", "conv.bias": "bc", "pos": "P", "norm.weight": "g",
         "norm.bias": "b", "latents": "L", "query": "Dq", "out.weight": "U", "out.bias": "bU",
         **{f"lin.{i}.weight": f"W{'qkvo'[i % 4]}{i // 4 + 1}" for i in range(8)}}


def pixels(model=None):
    return (torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def perceiver():
    return tp.from_torch(PerceiverImage, (16, 32), image)


def test_a_norm_over_finite_parts_reads_the_languages_cat(perceiver):
    src = perceiver.source
    assert "dim f48 = 48" in src and "param v_pos : [f24, T]" in src
    # the 1x1 convolution of each pixel: a patch of one pixel, as a ViT's of 16 x 16
    assert "input patch : patches[T, f3]" in src and "conv_weight @ patch + conv_bias" in src
    assert "cat(conv2d, expand, f48)" in src
    # the decoder's one query: one head of all the width's channels, its one token read out
    assert "dot(linear_4, linear_5, n)" in src and "first(linear_8)" in src
    assert "norm_weight * layernorm(v_cat) + norm_bias" in src


def test_the_traced_perceiver_image_computes_the_model(perceiver):
    traced_computes_the_model(perceiver, PerceiverImage, image)


@pytest.mark.parametrize("optimizer", ["adam", pytest.param("sgd", marks=pytest.mark.slow)])
def test_the_traced_perceiver_image_derives_what_the_example_derives(perceiver, optimizer):
    got = {NAMES[t]: abc for t, abc in abc_by_target(perceiver, optimizer).items()}
    d = tp.derive(tp.parse_file(ROOT / "examples" / "perceiver_image.tp"), optimizer)
    want = {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in NAMES.values()}
    assert got == want


class Small(nn.Module):
    """Finite parts joined along their features, in ``form``'s way, normalised, then the
    width: a linear layer, a nonlinearity, a norm and a mean over the tokens."""

    def __init__(self, n, form="two"):
        super().__init__()
        self.form = form
        self.proj, self.proj2 = nn.Linear(3, 12), nn.Linear(3, 4)
        self.pos = nn.Parameter(torch.randn(16, 12) * 0.5)
        self.wide = nn.Linear(3, n)
        parts = {"three": 28, "growing": 12 + n, "tokens": 12, "learned_tokens": 12}.get(form, 24)
        self.norm = nn.LayerNorm(parts)
        self.kv = nn.Linear(parts, n)
        self.side = nn.Linear(parts, n)
        self.out = nn.Linear(n, 10)

    def forward(self, x):
        b = x.shape[0]
        h, p = self.proj(x), self.pos.expand(b, -1, -1)
        form = self.form
        if form == "swapped":
            c = torch.cat([p, h], dim=-1)
        elif form == "three":
            c = torch.cat([h, p, F.gelu(self.proj2(x))], dim=-1)
        elif form == "axis":  # the features named by their positive index
            c = torch.cat((h, p), 2)
        elif form == "growing":  # a part of the width: read by a norm, refused
            c = torch.cat([h, self.wide(x)], dim=-1)
        elif form == "tokens":  # along the tokens: refused
            c = torch.cat([h, F.relu(h)], dim=1)
        elif form == "learned_tokens":  # the positions after the tokens: refused
            c = torch.cat([h, p], dim=1)
        else:
            c = torch.cat([h, p], dim=-1)
        a = self.kv(self.norm(c))
        if form == "readers":  # read by a function and a linear layer beside the norm
            a = a + self.side(torch.tanh(c))
        return self.out(F.layer_norm(F.relu(a), a.shape[-1:]).mean(1))


@pytest.mark.slow  # the Perceiver's above is the default run's
@pytest.mark.parametrize("form", ["readers", "swapped", "three", "axis"])
def test_each_concatenation_computes_the_model(form):
    traced = tp.from_torch(lambda n: Small(n, form), (16, 32), pixels)
    assert "= cat(" in traced.source
    traced_computes_the_model(traced, lambda n: Small(n, form), pixels)


class Pooled(nn.Module):
    """Vectors per sequence (means over the tokens) joined, normalised, then the width."""

    def __init__(self, n):
        super().__init__()
        self.e, self.f = nn.Linear(3, 6), nn.Linear(3, 5)
        self.norm, self.up, self.out = nn.LayerNorm(11), nn.Linear(11, n), nn.Linear(n, 4)

    def forward(self, x):
        c = torch.cat([self.e(x).mean(1), torch.tanh(self.f(x)).mean(1)], -1)
        return self.out(F.relu(self.up(self.norm(c))))


class ChannelsLast(nn.Module):
    """Two convolutions' channels laid out channels-last and joined, normalised per pixel,
    then a 1x1 convolution to the width."""

    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.norm, self.up, self.out = nn.LayerNorm(16), nn.Conv2d(16, n, 1), nn.Linear(n, 10)

    def forward(self, img):
        x = torch.cat([self.a(img).permute(0, 2, 3, 1), self.b(img).permute(0, 2, 3, 1)], -1)
        return self.out(F.relu(self.up(self.norm(x).permute(0, 3, 1, 2))).mean((2, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("model, inputs", [(Pooled, pixels), (ChannelsLast, image)],
                         ids=["per_sequence", "channels_last"])
def test_parts_per_sequence_or_per_pixel_compute_the_model(model, inputs):
    traced = tp.from_torch(model, (16, 32), inputs)
    assert "= cat(" in traced.source
    traced_computes_the_model(traced, model, inputs)


@pytest.mark.slow  # the default run's: tests/test_error_catalogue.py's feature_cat, by the CLI
@pytest.mark.parametrize("form, match", [
    ("growing", r"a concatenation of vectors along their features read by layer_norm \(its "
                r"statistics span every part\), with a part that grows with the width"),
    ("tokens", r"cannot trace a concatenation of sequences along their tokens into one longer"),
    ("learned_tokens", r"cannot trace a concatenation of learned tokens other than before"),
])
def test_what_the_language_cannot_join_is_refused_at_its_line(form, match):
    with pytest.raises(TraceError, match=match) as err:
        tp.from_torch(lambda n: Small(n, form), (16, 32), pixels)
    assert "test_finite_cat.py" in str(err.value) and "torch.cat" in str(err.value)


class Wide(nn.Module):
    """Parts that all grow with the width (n and n/2), joined, normalised, then a function and
    a readout: the language's cat of growing parts, a fixed share of the whole each."""

    def __init__(self, n):
        super().__init__()
        self.e, self.g = nn.Linear(3, n), nn.Linear(3, n // 2)
        self.norm, self.out = nn.LayerNorm(n + n // 2), nn.Linear(n + n // 2, 4)

    def forward(self, x):
        c = torch.cat([self.e(x), torch.tanh(self.g(x))], -1)
        return self.out(F.gelu(self.norm(c)))


def test_parts_that_all_grow_compute_the_model():
    traced = tp.from_torch(Wide, (16, 32), pixels)
    assert "dim n_x3by2 = 3 * n / 2" in traced.source and ", n_x3by2)" in traced.source
    traced_computes_the_model(traced, Wide, pixels)
    # each part's layer is an input layer (finite fan-in 3), the readout an output one
    abc = abc_by_target(traced)
    assert abc["e.weight"] == abc["g.weight"] == (0, 0, 0) and abc["out.weight"] == (0, 1, 1)


class Halves(nn.Module):
    """A stream of two copies of a vector side by side, split back into them (Reformer's
    reversible stream, ``chunk(cat([h, h], -1), 2, -1)``), each half then updated on its own."""

    def __init__(self, n):
        super().__init__()
        self.e, self.f, self.out = nn.Linear(3, n), nn.Linear(n, n), nn.Linear(2 * n, 4)

    def forward(self, x):
        h = self.e(x)
        a, b = torch.chunk(torch.cat([h, torch.tanh(h)], -1), 2, dim=-1)
        b = b + self.f(F.layer_norm(a, a.shape[-1:]))
        return self.out(F.layer_norm(torch.cat([a, b], -1), (2 * a.shape[-1],)))


def test_a_split_of_a_concatenation_at_its_parts_is_the_parts():
    traced = tp.from_torch(Halves, (16, 32), pixels)
    assert "= layernorm(linear)\n" in traced.source  # a: e's output itself
    traced_computes_the_model(traced, Halves, pixels)
