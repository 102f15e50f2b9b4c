"""The attention's own scale as the place for µP's factor on its logits (scale_attr.py): a query
clamped after its layer (DBRX's clip_qkv) takes the factor in no init, LR or forward patch, but
the module hands its ``self.scaling`` to sdpa, and the logits are linear in it. ``apply`` sets it
to its value times (n/base)^-1/2 (4 heads, head dim n/4), after checking by a forward with it
doubled that it reaches that sdpa call's scale and nothing else. Near misses (an attribute equal
to the scale that sdpa does not read, or one read twice) keep the query's refusal."""

import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from conftest import apply_is_bit_identical_at_base, traced_computes_the_model  # noqa: E402

from tensorprog.errors import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (16, 32)
VOCAB, T, HEADS = 16, 8, 4


class Attention(nn.Module):
    """4 heads of n/4, the query clamped after its layer; ``form`` says how ``self.scaling``
    reaches the logits: 'sdpa' (its scale, transformers' way), 'eager' (the number multiplying
    q @ kᵀ), 'unused' (sdpa's own default, equal to it), 'twice' (its scale, and a number on
    the output), 'heads' (its scale, and the count of heads), 'asserted' (its scale, and an
    assertion of its value) or 'cached' (its scale, beside a mask the first call makes)."""

    def __init__(self, n, form="sdpa"):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.scaling = (n // HEADS) ** -0.5
        self.form = form

    def heads(self, h):
        b, t, n = h.shape
        # 'heads': the count of heads read from the scale (4 at every width, as built), an int
        # that its doubling changes (one head at 4x the base width, once apply has set it)
        hh = round(n * self.scaling**2) if self.form == "heads" else HEADS
        assert self.form != "asserted" or self.scaling == (n // HEADS) ** -0.5
        q, k, v = (z(h).view(b, t, hh, n // hh).transpose(1, 2) for z in (self.q, self.k, self.v))
        return q.clamp(-8.0, 8.0), k, v

    def logits(self, h):
        q, k, _ = self.heads(h)
        return q @ k.transpose(-1, -2) * self.scaling

    def forward(self, h):
        if self.form == "eager":  # LeViT's: (q @ kᵀ) * self.scale, its softmax, its mix
            a = self.logits(h)  # (its softmax over a (b·h, t, t) view of them, as BART's)
            y = a.reshape(-1, T, T).softmax(-1).reshape(a.shape) @ self.heads(h)[2]
        elif self.form == "cached":  # a mask made at the first call, kept (as LeViT's biases)
            q, k, v = self.heads(h)
            cache = self.__dict__.setdefault("cache", {})
            mask = cache.setdefault(str(q.device), torch.ones(T, T, device=q.device).tril() < 1)
            y = F.scaled_dot_product_attention(q, k, v, ~mask, scale=self.scaling)
        else:
            scale = None if self.form == "unused" else self.scaling
            y = F.scaled_dot_product_attention(*self.heads(h), is_causal=True, scale=scale)
        y = y.transpose(1, 2).reshape(h.shape)
        if self.form == "twice":
            y = y * (self.scaling * (h.shape[-1] // HEADS) ** 0.5)
        return h + y


class Net(nn.Module):
    def __init__(self, n, form="sdpa", depth=1):
        super().__init__()
        self.emb, self.head = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB)
        self.layers = nn.ModuleList(Attention(n, form) for _ in range(depth))

    def forward(self, idx):
        h = self.emb(idx)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB - 3).view(2, T),)


def _stack(n, depth=2):
    return Net(n, depth=depth)


def test_a_clamped_query_takes_the_factor_on_the_attentions_own_scale():
    # before: MuP refused it (the query is a clamp of its layer's output)
    traced = from_torch(_stack, WIDTHS, _tokens)
    assert traced.stack is not None and traced.stack.depth == 2
    traced_computes_the_model(traced, _stack, _tokens)
    mup = apply_is_bit_identical_at_base(traced, _stack, _tokens)
    (found,) = mup.scale_attrs.values()
    assert (found.module, found.attr, found.exponent) == ("layers.0", "scaling", 1 / 2)
    assert not mup.patches and not mup.folded
    for r in (2, 4):  # the logits' multiplier against the model's own: (n/base)^-1/2
        torch.manual_seed(0)
        model = _stack(r * WIDTHS[0], 3)  # every layer's, at a depth other than the traced
        report = mup.apply(model)
        assert [ln.split(":")[0] for ln in report.lines if ln.startswith("scale ")] == [
            f"scale layers.{i}.scaling" for i in range(3)
        ]
        plain = copy.deepcopy(model)  # the same params, with the model's own scale
        for layer in plain.layers:
            layer.scaling = Attention(r * WIDTHS[0]).scaling
        h = model.emb(_tokens(model)[0])
        with torch.no_grad():
            for mine, own in zip(model.layers, plain.layers, strict=True):
                ratio = mine.logits(h) / own.logits(h)
                torch.testing.assert_close(ratio, torch.full_like(ratio, r**-0.5))
        # the check exports one graph per set of scales (the graph holds them): SP's apart
        assert mup.scale_values(model) != mup.scale_values(_stack(r * WIDTHS[0], 3))
        # it is the model's state: a deepcopy keeps it, and apply again leaves it
        twin = copy.deepcopy(model)
        twin.load_state_dict(model.state_dict())
        assert twin.layers[2].scaling == plain.layers[2].scaling * r**-0.5
        assert "µP's already" in str(mup.apply(twin))
        assert twin.layers[2].scaling == model.layers[2].scaling


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ("unused", "changes 0 .*read nowhere"),
        ("twice", "changes 2 .*read more than once"),
        ("heads", "changes [0-9]+ .*read more than once"),  # before: taken
        ("asserted", r"fails the forward when doubled \(AssertionError"),  # before: a traceback
    ],
)
def test_an_attribute_that_is_not_what_reaches_sdpa_keeps_the_refusal(form, why):
    def build(n):
        return Net(n, form)  # one layer: no stack

    traced = from_torch(build, WIDTHS, _tokens)
    with pytest.raises(
        UsageError,
        match=r"(?s)µP needs the attention logits times "
        r"\(n/base\)\^-1/2 against the model's own scale, but the query .* is "
        rf"combined with something else.*nor could apply set the attention's "
        rf"own scale instead: layers.0.scaling {why}",
    ) as refused:
        MuP(traced, "adam")
    assert refused.value.diagnostics[0].span is not None  # the logits' line in the program


def test_the_number_multiplying_q_k_is_the_scale_of_eager_attention():
    def build(n):
        return Net(n, "eager")

    traced = from_torch(build, WIDTHS, _tokens)
    torch.manual_seed(1)
    drawn = torch.rand(3)
    torch.manual_seed(1)
    mup = MuP(traced, "adam")
    assert torch.equal(torch.rand(3), drawn)  # its check's forwards leave the user's RNG
    (found,) = mup.scale_attrs.values()
    assert (found.module, found.attr, found.exponent) == ("layers.0", "scaling", 1 / 2)
    model = build(4 * WIDTHS[0])
    mup.apply(model)
    assert model.layers[0].scaling == build(4 * WIDTHS[0]).layers[0].scaling / 2


class OutScaled(nn.Module):
    """Eager attention whose logits' scale is written inline, ``self.scaling`` (equal to it)
    multiplying the output projection's ``y @ W`` instead: a number on a matmul's output that
    is not q @ kᵀ, which the factor on the logits must not go to."""

    def __init__(self, n):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.wo = nn.Parameter(torch.randn(n, n) / n**0.5)
        self.scaling = (n // HEADS) ** -0.5

    def forward(self, h):
        b, t, n = h.shape
        q, k, v = (
            z(h).view(b, t, HEADS, n // HEADS).transpose(1, 2) for z in (self.q, self.k, self.v)
        )
        q = q.clamp(-8.0, 8.0)
        p = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        y = (p @ v).transpose(1, 2).reshape(h.shape)
        return h + torch.matmul(y, self.wo) * self.scaling


def test_a_number_on_another_product_than_the_logits_keeps_the_refusal():
    def build(n):
        model = Net(n)
        model.layers = nn.ModuleList([OutScaled(n)])
        return model

    traced = from_torch(build, WIDTHS, _tokens)
    with pytest.raises(UsageError, match=r"layers.0.scaling reaches the forward's mul call"):
        MuP(traced, "adam")


class Reader(nn.Module):
    """Keys and values of its own, and its own scale, for a query made outside it."""

    def __init__(self, n):
        super().__init__()
        self.k, self.v = nn.Linear(n, n), nn.Linear(n, n)
        self.scaling = (n // HEADS) ** -0.5

    def forward(self, q, h):
        b, t, n = h.shape
        k, v = (z(h).view(b, t, HEADS, n // HEADS).transpose(1, 2) for z in (self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        return h + y.transpose(1, 2).reshape(h.shape)


class TwoReaders(nn.Module):
    """One clamped query read by two attention modules, each with its own ``self.scaling``:
    the factor on one module's scale leaves the other's logits without it."""

    def __init__(self, n):
        super().__init__()
        self.emb, self.head, self.q = nn.Embedding(VOCAB, n), nn.Linear(n, VOCAB), nn.Linear(n, n)
        self.a, self.b = Reader(n), Reader(n)

    def forward(self, idx):
        h = self.emb(idx)
        b, t, n = h.shape
        q = self.q(h).view(b, t, HEADS, n // HEADS).transpose(1, 2).clamp(-8.0, 8.0)
        return self.head(self.b(q, self.a(q, h)))


def test_a_query_two_attentions_read_takes_the_factor_on_each_ones_scale():
    traced = from_torch(TwoReaders, WIDTHS, _tokens)
    traced_computes_the_model(traced, TwoReaders, _tokens)
    mup = MuP(traced, "adam")  # before: b's logits kept the model's scale, "covered" by a's
    assert sorted((s.module, s.attr) for s in mup.scale_attrs.values()) == [
        ("a", "scaling"),
        ("b", "scaling"),
    ]
    model = TwoReaders(4 * WIDTHS[0])
    mup.apply(model)
    assert model.a.scaling == model.b.scaling == TwoReaders(4 * WIDTHS[0]).a.scaling / 2


def test_a_forward_that_caches_at_its_first_call_and_a_scale_changed_by_hand():
    def build(n):
        return Net(n, "cached", depth=2)  # (two layers: a rolled stack)

    mup = MuP(from_torch(build, WIDTHS, _tokens), "adam")
    assert [s.attr for s in mup.scale_attrs.values()] == ["scaling"]
    model = build(2 * WIDTHS[0])
    model.layers[1].scaling = 0.3  # neither the model's own at this width nor µP's
    with pytest.raises(UsageError, match=r"layers.1.scaling is 0.3, neither the model's own"):
        mup.apply(model)
    assert model.layers[0].scaling == build(2 * WIDTHS[0]).layers[0].scaling  # none set


@pytest.mark.slow  # (the emitted module's import: a second or more)
def test_a_tuned_multiplier_on_the_logits_goes_on_the_attribute_too():
    # before: refused as a query "normalised without a gain" (it is clamped), at no line
    from tensorprog.emit.load import load_module
    from tensorprog.emit.module import Emitted, emit
    from tensorprog.engine.optimizers import OPTIMIZERS
    from tensorprog.engine.parametrization import choose
    from tensorprog.numerics.tune import scaling_record

    traced = from_torch(Net, WIDTHS, _tokens)
    program, adam = traced.program, OPTIMIZERS["adam"]
    abc, _, label, eps = choose(program, adam, "mup", "table3")
    emitted = emit(program, abc, optimizer=adam, label=label, command="t", eps=eps)
    record = scaling_record(load_module(Emitted(emitted.source), "mup"))
    ((name, scale),) = record["scales"].items()
    config = {"format": "tensorprog-tune/1", "program": program.name, "param": "mup",
              "convention": "table3", "optimizer": "adam", "base_width": WIDTHS[0], "lr": 3e-3,
              "init_std": {}, "mult": {name: 3 * float(scale["base"])}, **record}  # fmt: skip
    mup = MuP(traced, "adam", config=config)
    for r in (1, 4):  # the tuned x3 on the logits, times µP's (n/base)^-1/2
        model = Net(r * WIDTHS[0])
        mup.apply(model)
        mup.apply(model)  # again: µP's already
        assert model.layers[0].scaling == pytest.approx(Net(r * WIDTHS[0]).layers[0].scaling
                                                        * 3 * r**-0.5)  # fmt: skip
