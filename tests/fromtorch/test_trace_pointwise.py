"""from_torch on coordinatewise forms outside the language's named functions and on norms
written by hand: relu² (Nemotron's, Arcee's) and x³ as products of copies, Cohere's layer norm,
Gemma 4's ``pow(ms, -0.5)`` and ``x / sqrt(ms)`` as the language's norms, a positions embedding
``expand_as`` the tokens' or read as ``table[positions]``, a padding mask; functions of a param
alone, an L1 norm and a mean used otherwise are refused at their line (an L2 norm:
test_l2_normalize.py). Oracle: the same model written with the form's plain counterpart (relu,
torch's layer_norm and rms_norm) derives the same µP, and apply is bit-identical at the base."""

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def _act(form, h):
    if form == "relu":
        return F.relu(h)
    if form == "square":  # HF's ReLUSquaredActivation
        return torch.square(F.relu(h))
    if form == "pow":
        return 0.5 * F.relu(h).pow(2)
    if form == "cube":
        return h**3
    if form == "exp":
        return torch.exp(h)
    raise AssertionError(form)


def _norm(form, x, w):
    if form == "layer_norm":
        x = F.layer_norm(x, x.shape[-1:])
    elif form == "cohere":  # CohereLayerNorm
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        x = (x - mean) * torch.rsqrt(variance + 1e-5)
    elif form == "divide":
        c = x - x.mean(-1, keepdim=True)
        x = c / torch.sqrt((c * c).mean(-1, keepdim=True) + 1e-5)
    elif form == "rms_norm":
        x = F.rms_norm(x, x.shape[-1:])
    elif form == "gemma4":  # Gemma4's RMSNorm
        x = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5)
    elif form == "l1":  # a sum of |x|: no norm the language has
        x = x / x.abs().sum(-1, keepdim=True)
    elif form == "twice_mean":
        x = x - 2 * x.mean(-1, keepdim=True)
    return w * x


class Net(nn.Module):
    def __init__(self, n, act="relu", norm="layer_norm", positions=None):
        super().__init__()
        self.act, self.norm, self.positions = act, norm, positions
        self.e = nn.Embedding(13, n)
        self.p = nn.Embedding(8, n)
        self.g = nn.Parameter(torch.ones(n))
        self.up, self.down = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        if self.positions == "expand_as":  # XLM's, and its padding mask
            x = x + self.p(torch.arange(idx.shape[1])[None]).expand_as(x)
            # (its pad id one the example's ids do not hold: traced without padding, the
            # mask keeps every token; one the example holds is refused, as the example's
            # padded token is zeroed where the program keeps it)
            x *= (idx != 13).unsqueeze(-1).to(x.dtype)
        elif self.positions == "index":  # Whisper's
            x = x + self.p.weight[torch.arange(idx.shape[1], device=idx.device)]
        x = x + self.down(_act(self.act, self.up(_norm(self.norm, x, self.g))))
        return self.out(x)


def _trace(**kw):
    def build(n):
        return Net(n, **kw)

    return build, from_torch(build, WIDTHS, _tokens)


@pytest.fixture(scope="module")
def plain():
    return abc_by_target(_trace()[1])


@pytest.mark.parametrize(("act", "line"), [
    ("square", "square = square_relu * square_relu"),
    ("pow", "mul_1 = 0.5 * mul_1_relu * mul_1_relu"),  # its coefficient kept
    ("cube", "pow_1 = linear * linear * linear"),
])
def test_an_integer_power_of_a_function_is_a_product_of_copies(plain, act, line):
    build, traced = _trace(act=act)
    assert line in traced.source.splitlines(), traced.source
    assert abc_by_target(traced) == plain
    assert apply_is_bit_identical_at_base(traced, build, _tokens)


@pytest.mark.parametrize(("norm", "fn", "positions"), [
    ("cohere", "layernorm", "expand_as"), ("divide", "layernorm", "index"),
    ("gemma4", "rmsnorm", "expand_as")])
def test_a_norm_written_by_hand_is_the_languages_norm(plain, norm, fn, positions):
    # and a positions embedding, XLM's expand_as, or Whisper's table indexed by the positions
    build, traced = _trace(norm=norm, positions=positions)
    assert f"= {fn}(add)" in traced.source, traced.source
    assert abc_by_target(traced) == {**plain, "p.weight": plain["e.weight"]}
    assert apply_is_bit_identical_at_base(traced, build, _tokens)


@pytest.mark.parametrize(("kw", "message"), [
    ({"act": "exp"}, "a coordinatewise function that is none of"),
    ({"norm": "l1"}, "a sum over a vector's coordinates of anything but its squares"),
    ({"norm": "twice_mean"}, "a piece of a norm written by hand"),
])
def test_what_the_language_cannot_say_is_refused_at_its_line(kw, message):
    with pytest.raises(TensorProgError, match=message) as err:
        _trace(**kw)
    # the forward's line that calls the helper writing the form
    assert "self.down(_act(" in err.value.diagnostics[0].span.source_line()


def test_a_function_of_a_param_alone_is_refused_but_as_a_gain():
    class Mamba(nn.Module):  # A = -exp(A_log), added to the tokens' vectors: no gain
        def __init__(self, n):
            super().__init__()
            self.a_log, self.e = nn.Parameter(torch.zeros(n)), nn.Embedding(13, n)

        def forward(self, idx):
            return self.e(idx) + -torch.exp(self.a_log)

    with pytest.raises(TensorProgError, match="a sum of a function of the param a_log"):
        from_torch(Mamba, WIDTHS, _tokens)


class SoftCapped(nn.Module):
    """Attention by hand with Gemma 2's soft-caps of the attention logits and of the output
    logits (``cap`` 0: none)."""

    def __init__(self, n, cap=0.0):
        super().__init__()
        self.cap, self.dh = cap, n // 4
        self.e = nn.Embedding(13, n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (f(x).view(b, t, 4, self.dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = q @ k.transpose(-1, -2) * self.dh**-0.5
        if self.cap:
            s = torch.tanh(s / self.cap) * self.cap
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        s.masked_fill_(~mask[None, None].expand_as(s), float("-inf"))  # as XLM writes it
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, n)
        logits = self.out(x + self.o(y))
        return torch.tanh(logits / 30.0) * 30.0 if self.cap else logits  # and the output's


def test_a_soft_cap_of_the_attention_logits_is_a_function_of_them():
    def build(n):
        return SoftCapped(n, cap=50.0)

    traced = from_torch(build, WIDTHS, _tokens)
    capped = [s.split(" = ")[1] for s in traced.source.splitlines() if "tanh(" in s]
    assert len(capped) == 2 and capped[0].startswith("50.0 * tanh("), capped
    assert capped[1] == "30.0 * tanh(linear_4 / 30.0)", capped
    plain = from_torch(SoftCapped, WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)  # the attention scale's 1/d among them
    assert apply_is_bit_identical_at_base(traced, build, _tokens)


def test_a_vector_concatenated_with_an_empty_constant_is_the_vector():
    class Cached(nn.Module):  # a key/value cache's first update: cat((empty, k))
        def __init__(self, n):
            super().__init__()
            self.e, self.o = nn.Embedding(13, n), nn.Linear(n, 13)

        def forward(self, idx):
            x = self.e(idx)
            empty = torch.zeros(x.shape[0], 0, x.shape[-1], device=x.device)
            return self.o(torch.cat([empty, x], dim=1))

    traced = from_torch(Cached, WIDTHS, _tokens)
    assert "linear = o_weight @ embedding + o_bias" in traced.source.splitlines()


class KeptTokens(nn.Module):
    """The embeddings times a constant mask per token held in a buffer, boolean or float;
    ``keep``: the tokens it keeps, of 8."""

    def __init__(self, n, keep=range(8), dtype=torch.bool):
        super().__init__()
        self.e, self.fc, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)
        mask = torch.zeros(8, dtype=dtype)
        mask[list(keep)] = 1
        self.register_buffer("keep", mask, persistent=False)

    def forward(self, idx):
        h = self.e(idx) * self.keep[None, :, None]
        return self.out(h + self.fc(F.relu(h)))


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_a_mask_per_token_is_traced_where_it_keeps_every_token_and_refused_where_it_drops(dtype):
    def build(n, keep=range(8)):
        return KeptTokens(n, keep, dtype)

    traced = from_torch(build, WIDTHS, _tokens)
    traced_computes_the_model(traced, build, _tokens)
    # tokens 2 and 6 zeroed: traced as the identity before, a program computing something else
    with pytest.raises(TensorProgError, match=r"test_trace_pointwise.py:\d+:\d+: error: cannot "
                       r"trace a product with a mask of 0s and 1s per token that zeroes 2 of"):
        from_torch(lambda n: build(n, keep=(0, 1, 3, 4, 5, 7)), WIDTHS, _tokens)


@pytest.mark.parametrize(("fn", "name"), [
    (lambda t: F.gelu(t), "gelu"),
    (lambda t: F.gelu(t, approximate="tanh"), "gelu_tanh"),
    # GPT-2's gelu_new, written out: the tanh approximation, not gelu (2e-4 apart)
    (lambda t: 0.5 * t * (1.0 + torch.tanh(0.7978845608028654 * (t + 0.044715 * t**3))),
     "gelu_tanh"),
])
def test_gelu_and_its_tanh_approximation_are_told_apart(fn, name):
    from tensorprog.fromtorch.identify import identify

    assert identify(fn) == (name, 1.0)


class ScaledTwice(nn.Module):
    """HF Gemma 4's embedding: ``e(ids) * sqrt(n)`` read by a linear layer and by an RMSNorm
    that casts its input first (``x.float()``); ``cast`` False: the norm reads it as it is."""

    def __init__(self, n, cast=True):
        super().__init__()
        self.n, self.cast, self.e = n, cast, nn.Embedding(13, n)
        self.side, self.fc = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        self.g, self.out = nn.Parameter(torch.ones(n)), nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        x = self.e(idx) * self.n ** 0.5
        s = self.side(x)
        y = x.float() if self.cast else x
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g
        return self.out(x + F.relu(self.fc(y)) + s)


def test_a_scaled_value_read_again_through_a_cast_is_one_vector():
    # before: the cast named the lazy product anew, so the norm wrote `embedding` times the
    # width constant a second time, and the constant, multiplying two vectors, was refused
    traced = from_torch(ScaledTwice, WIDTHS, _tokens)
    assert traced.source.count("* embedding") == 1, traced.source
    # the model's own x.float() rounds its float64 run to float32 there: its error, not ours
    traced_computes_the_model(traced, ScaledTwice, _tokens, tol=1e-6)
    plain = from_torch(lambda n: ScaledTwice(n, cast=False), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)
    apply_is_bit_identical_at_base(traced, ScaledTwice, _tokens)


@pytest.mark.parametrize("fn", [
    lambda t: F.gelu(t) + 1e-3,  # an offset
    lambda t: torch.tanh(1.001 * t),  # a stretch
    lambda t: 0.5 * t * (1.0 + torch.tanh(0.7978845608028654 * (t + 0.045 * t**3))),
])
def test_a_function_near_one_of_the_languages_is_not_taken_for_it(fn):
    from tensorprog.fromtorch.identify import identify

    assert identify(fn) is None


@pytest.mark.parametrize(("fn", "want"), [
    (lambda t: 30 * torch.tanh(t / 30), ("tanh", 30.0, 30.0)),  # Gemma 2's soft-cap
    (lambda t: 2 * torch.sigmoid(t / 4), ("sigmoid", 2.0, 4.0)),  # Qwen4-exp's stream weights
    (lambda t: 2 * torch.sigmoid(t / 4) + 0.01, None),  # an offset: neither
    (lambda t: torch.tanh(t / 4) + 1, ("sigmoid", 2.0, 2.0)),  # 1 + tanh(x / 2) = 2 sigmoid(x)
    # a sigmoid's value at 0 and a small c: within 2e-3 of 1 but 10% off c, no sigmoid
    (lambda t: 0.01 * F.hardsigmoid(t / 2), None),
    (lambda t: 1e-10 * torch.tanh(t / 3), ("tanh", 1e-10, 3.0)),  # f(0) = 0 is not c/2 = 5e-11
    (lambda t: 2 * torch.sigmoid(t / 1e-3), ("sigmoid", 2.0, 1e-3)),  # a slope over 1e-4 of s
])
def test_a_bounded_function_of_a_scaled_input_is_told_by_its_value_and_slope_at_0(fn, want):
    from tensorprog.fromtorch.identify import identify_scaled

    assert identify_scaled(fn) == want


class ScaledHeads(nn.Module):
    """A layer's output viewed into 2 heads, scaled, and merged back: the lazy product is
    written before the merge (a traceback before)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.fc, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        y = (self.fc(x).view(*idx.shape, 2, -1) * 0.5).reshape(*idx.shape, -1)
        return self.out(x + y)


def test_a_scaled_view_into_heads_merged_back_computes_the_model():
    traced_computes_the_model(from_torch(ScaledHeads, WIDTHS, _tokens), ScaledHeads, _tokens)
