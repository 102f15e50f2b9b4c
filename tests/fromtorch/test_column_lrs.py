"""Column blocks of one tensor whose derived LRs differ (fromtorch/columns.py): a linear layer on
cat(e, f), e a width vector and f a finite one (RoCBert's embeddings, its word embedding beside
its pronunciation's), has a hidden block (Adam LR ∝ 1/n) and an input block (LR Θ(1)). apply
stores W / s, s a scale of the input's columns that a forward pre-hook multiplies in, so the
model computes W x and each block steps with its own LR and Adam eps.

The oracle is the model written with each block a tensor of its own, its params those of the
applied model (its effective weight read through the module), stepped with the derived
exponents' LR and eps per block: the applied model's steps must match it to 1e-12 in float64."""

import copy
import warnings

import pytest
from conftest import apply_is_bit_identical_at_base

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402
from tensorprog.fromtorch.check import probe  # noqa: E402

WIDTHS = (32, 64)
WIDTH = 128  # four times the base
FINITE = 5
LR, EPS = 1e-2, 1e-5  # an eps of the order of the gradient entries: it matters to the step


class Cat(nn.Module):
    """An embedding of the width beside one of a fixed size, concatenated into one layer."""

    def __init__(self, n):
        super().__init__()
        self.e, self.f = nn.Embedding(13, n), nn.Embedding(13, FINITE)
        self.mix = nn.Linear(n + FINITE, n)
        self.head = nn.Linear(n, 13)

    def forward(self, idx):
        x = torch.cat([self.e(idx), self.f(idx)], dim=-1)
        return self.head(torch.relu(self.mix(x)))


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(Cat, WIDTHS, _tokens)


def _weight(model):
    """The weight the model's mix layer applies, read through its module (and hooks)."""
    with torch.no_grad():
        eye = torch.eye(model.mix.in_features, dtype=model.mix.weight.dtype)
        return (model.mix(eye) - model.mix(0 * eye)).T


def _applied(mup):
    torch.manual_seed(0)
    model = Cat(WIDTH)
    mup.apply(model)
    return model.double()


def _loss(logits):
    target = torch.arange(16).remainder(7).view(2, 8)
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def _oracle(mup, model, opt, steps, same_lr=False, **kw):
    """Each program param a tensor of its own (the two column blocks apart), taken from the
    applied model, stepped with LR·(n/base)^-lr_exp and eps·(n/base)^-eps_exp of its derived
    exponents (``same_lr``: the input block with the hidden block's LR, a wrong oracle)."""
    r = WIDTH / mup.traced.base_width
    w = _weight(model)
    p = {"e": model.e.weight, "f": model.f.weight, "mix_cols0": w[:, :WIDTH],
         "mix_cols1": w[:, WIDTH:], "mix_bias": model.mix.bias, "head": model.head.weight,
         "head_bias": model.head.bias}
    p = {k: v.detach().clone().requires_grad_() for k, v in p.items()}
    program = {"e": "e_weight", "f": "f_weight", "mix_cols0": "mix_weight_cols0",
               "mix_cols1": "mix_weight_cols0" if same_lr else "mix_weight_cols1",
               "mix_bias": "mix_bias", "head": "head_weight", "head_bias": "head_bias"}
    groups = []
    for k, t in p.items():
        lr = LR * r ** -float(mup.lr_exp[program[k]])
        group = {"params": [t], "lr": lr}
        if mup.eps_exp:  # Adam's and AdamW's eps (none under SGD and Lion)
            group["eps"] = EPS * r ** -float(mup.eps_exp[program[k]])
        if kw.get("weight_decay"):  # "independent": every weight shrinks by λ a step
            group["weight_decay"] = kw["weight_decay"] / lr if t.dim() == 2 else 0.0
        groups.append(group)
    o = opt(groups, **{k: v for k, v in kw.items() if k != "weight_decay"})
    idx = _tokens(None)[0]
    for _ in range(steps):
        h = p["e"][idx] @ p["mix_cols0"].T + p["f"][idx] @ p["mix_cols1"].T + p["mix_bias"]
        o.zero_grad()
        _loss(torch.relu(h) @ p["head"].T + p["head_bias"]).backward()
        o.step()
    return p


def _stepped(mup, model, opt, steps, **kw):
    decay = {"decay": "independent"} if kw.get("weight_decay") else {}
    o = opt(mup.param_groups(model, LR, eps=EPS, **decay, **kw) if opt is not torch.optim.SGD
            else mup.param_groups(model, LR, **decay, **kw))
    for _ in range(steps):
        o.zero_grad()
        _loss(model(*_tokens(model))).backward()
        o.step()
    return model


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., arXiv 2302.06675): p -= lr·sign(β1·m + (1 − β1)·g), then
    m = β2·m + (1 − β2)·g."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
        super().__init__(params, {"lr": lr, "betas": betas})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.sub_(group["lr"] * torch.sign(b1 * m + (1 - b1) * p.grad))
                m.mul_(b2).add_((1 - b2) * p.grad)


def test_apply_is_bit_identical_at_the_base_width(traced):
    apply_is_bit_identical_at_base(traced, Cat, _tokens)
    apply_is_bit_identical_at_base(traced, Cat, _tokens, "sgd")


def test_each_block_of_the_applied_weight_has_its_derived_std(traced):
    mup = MuP(traced, "adam")
    assert mup.lr_exp["mix_weight_cols0"] != mup.lr_exp["mix_weight_cols1"]
    w = _weight(_applied(mup))
    sigma = traced.base["mix.weight"][1]
    r = WIDTH / traced.base_width
    for name, block in (("mix_weight_cols0", w[:, :WIDTH]), ("mix_weight_cols1", w[:, WIDTH:])):
        want = sigma * r ** -float(mup.init_exp[name])
        assert float(block.std()) == pytest.approx(want, rel=1e-6), name


@pytest.mark.parametrize("opt, optimizer, kw", [
    (torch.optim.Adam, "adam", {}),
    (torch.optim.AdamW, "adamw", {"weight_decay": 0.1}),  # decay="independent"
    (torch.optim.SGD, "sgd", {"momentum": 0.9}),  # each block's LR s² times the group's
    (Lion, "lion", {}),  # a sign of the momentum: scale-free, no eps
])
def test_the_applied_model_steps_as_its_blocks_with_their_own_lrs(traced, opt, optimizer, kw):
    mup = MuP(traced, optimizer)
    model = _applied(mup)
    want = _oracle(mup, model, opt, 2, **kw)
    got = _stepped(mup, model, opt, 2, **kw)
    w = _weight(got)
    close = dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(w[:, :WIDTH], want["mix_cols0"].detach(), **close)
    torch.testing.assert_close(w[:, WIDTH:], want["mix_cols1"].detach(), **close)
    torch.testing.assert_close(got.head.weight, want["head"].detach(), **close)
    torch.testing.assert_close(got.f.weight, want["f"].detach(), **close)
    # the oracle can fail: the input block stepped with the hidden block's LR is elsewhere
    wrong = _oracle(mup, _applied(mup), opt, 2, same_lr=True, **kw)
    assert not torch.allclose(w[:, WIDTH:], wrong["mix_cols1"].detach(), rtol=1e-6, atol=0)


def test_a_decay_that_acts_otherwise_than_a_shrink_by_lambda_is_refused(traced):
    mup = MuP(traced, "adamw")
    model = _applied(mup)
    for decay in ("decoupled", "coupled"):
        with pytest.raises(UsageError, match=f"a {decay} weight decay would act on each block"):
            mup.param_groups(model, LR, weight_decay=0.1, decay=decay)
    mup.param_groups(model, LR, weight_decay=0.1, decay="decoupled", decay_params=set())


def test_param_groups_before_apply_is_refused(traced):
    mup = MuP(traced, "adam")
    with pytest.raises(UsageError, match="carries once apply registers it"):
        mup.param_groups(Cat(WIDTH), LR)


def test_a_second_apply_deepcopy_remove_patches_and_state_dict(traced):
    mup = MuP(traced, "adam")
    model = _applied(mup)
    idx = _tokens(model)[0]
    y = model(idx).detach()
    mup.apply(model)  # idempotent: the tensor's blocks already at their (held) std
    torch.testing.assert_close(model(idx), y, rtol=1e-6, atol=1e-7)
    clone = copy.deepcopy(model)  # its modules' hooks come along: the same function
    assert torch.equal(clone(idx), model(idx))
    mup.apply(clone)  # the copied pre-hook replaced, not doubled
    torch.testing.assert_close(clone(idx), model(idx), rtol=1e-6, atol=1e-7)
    state = model.state_dict()  # W / s: the model's function with apply's hooks
    fresh = _applied(mup)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(idx), model(idx))
    mup.remove_patches(model)  # without its hook the layer applies W / s
    assert not torch.allclose(model(idx), y, rtol=1e-3)


def test_the_probe_reads_the_hooked_layer(traced):
    mup = MuP(traced, "adam")
    model = _applied(mup)
    idx = _tokens(model)[0]
    read = probe(mup, model, (idx,))()
    seen = {}
    model.mix.register_forward_hook(lambda m, a, out: seen.setdefault("h", out))
    model(idx)
    torch.testing.assert_close(read["linear"], seen["h"], rtol=1e-12, atol=1e-15)


def test_what_a_scale_of_the_columns_cannot_carry_is_refused(traced):
    with pytest.raises(UsageError, match="muon orthogonalises a tensor's update as one matrix"):
        MuP(traced, "muon")
    model = Cat(WIDTH)
    model.mix = Mine(WIDTH + FINITE, WIDTH)  # a forward of its own: the hook's scale unsure
    with pytest.raises(UsageError, match=r"mix \(Mine\) is no nn.Linear or nn.Conv2d"):
        MuP(traced, "adam").apply(model)


class Mine(nn.Linear):
    def forward(self, x):
        return super().forward(x)


class Images(nn.Module):
    """A convolution of the stem's n channels concatenated with the image's 3."""

    def __init__(self, n):
        super().__init__()
        self.stem = nn.Conv2d(3, n, 3, padding=1, bias=False)
        self.mix = nn.Conv2d(n + 3, n, 3, stride=2, padding=1)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        x = torch.cat([torch.relu(self.stem(img)), img], dim=1)
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


def _images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.slow  # its trace: about 5 s
def test_a_convolution_of_concatenated_images_scales_its_input_channels():
    traced = from_torch(Images, (16, 32), _images)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Images(64)
    mup.apply(model)
    model.double()
    x = _images()[0].double()
    plain = Images(64).double()  # the kernel itself, W = s ⊙ V, no hooks
    plain.load_state_dict(model.state_dict())
    s = 4 ** float(mup.lr_exp["mix_weight_cols0"] - mup.lr_exp["mix_weight_cols1"])
    with torch.no_grad():
        plain.mix.weight[:, 64:] *= s
    assert s != 1 and torch.equal(model(x), plain(x))
    read = probe(mup, model, (x,))()
    torch.testing.assert_close(read["conv2d_1"], plain.mix(torch.cat(
        [torch.relu(plain.stem(x)), x], dim=1)), rtol=1e-12, atol=1e-15)


class Layer(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.mix = nn.Linear(n + FINITE, n)

    def forward(self, h, f):
        return h + torch.relu(self.mix(torch.cat([h, f], -1)))


class Stack(nn.Module):
    """Each layer's linear layer on cat(h, f), f a finite embedding: a block over the depth."""

    def __init__(self, n, depth=3):
        super().__init__()
        self.e, self.f = nn.Embedding(13, n), nn.Embedding(13, FINITE)
        self.layers = nn.ModuleList(Layer(n) for _ in range(depth))
        self.head = nn.Linear(n, 13)

    def forward(self, idx):
        h, f = self.e(idx), self.f(idx)
        for layer in self.layers:
            h = layer(h, f)
        return self.head(h)


@pytest.mark.slow  # its trace and check: about 4 s
def test_every_layer_of_a_stack_takes_its_column_scale():
    traced = from_torch(Stack, WIDTHS, _tokens)
    assert "repeat L" in traced.source, traced.source
    mup = MuP(traced, "adam")
    model = Stack(WIDTH, depth=4)  # deeper than traced: every layer patched
    report = str(mup.apply(model))
    assert all(f"patched input of layers.{i}.mix" in report for i in range(4)), report
    model = Stack(WIDTH)
    mup.apply(model)
    model.double()
    read = probe(mup, model, _tokens(model))()
    seen = {}
    for i, layer in enumerate(model.layers):
        layer.mix.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, out))
    model(*_tokens(model))
    for i in range(3):
        torch.testing.assert_close(read[f"layers.{i}.linear"], seen[i], rtol=1e-12, atol=1e-15)
    assert coord_check(mup, (32, 64, 128), seeds=(0,), steps=2).passed


class Tied(nn.Module):
    """mix's weight tied to mix2's, each applied to a concatenation of the same blocks [n | 5]
    (``functional``: the second application F.linear of the weight in the model's forward)."""

    functional = False

    def __init__(self, n):
        super().__init__()
        self.e, self.f = nn.Embedding(13, n), nn.Embedding(13, FINITE)
        self.mix = nn.Linear(n + FINITE, n)
        self.mix2 = nn.Linear(n + FINITE, n, bias=False)
        self.mix2.weight = self.mix.weight
        self.head = nn.Linear(n, 13)

    def forward(self, idx):
        f = self.f(idx)
        h = torch.relu(self.mix(torch.cat([self.e(idx), f], -1)))
        x = torch.cat([h, f], -1)
        h2 = nn.functional.linear(x, self.mix.weight) if self.functional else self.mix2(x)
        return self.head(h + torch.relu(h2))


class TiedFunctional(Tied):
    functional = True


def test_a_weight_tied_across_two_layers_is_scaled_on_the_input_of_each():
    traced = from_torch(Tied, WIDTHS, _tokens)
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Tied(WIDTH)
    report = str(mup.apply(model))
    assert "patched input of mix:" in report and "patched input of mix2:" in report, report
    model.double()
    plain = Tied(WIDTH).double()  # W = s ⊙ V held as the tensor, no hooks
    plain.load_state_dict(model.state_dict())
    s = mup.column_scales(model)["mix2.weight"].scale
    assert len(set(s.tolist())) == 2
    with torch.no_grad():
        plain.mix.weight.mul_(s)
    idx = _tokens(model)[0]
    assert torch.equal(model(idx), plain(idx))
    read = probe(mup, model, (idx,))()  # the check's run scales the second layer's input too
    x = torch.cat([torch.relu(plain.mix(torch.cat([plain.e(idx), plain.f(idx)], -1))),
                   plain.f(idx)], -1)
    torch.testing.assert_close(read["linear_1"], plain.mix2(x), rtol=1e-12, atol=1e-15)
    with pytest.raises(UsageError, match=r"the model \(TiedFunctional\) is no nn.Linear"):
        MuP(from_torch(TiedFunctional, WIDTHS, _tokens), "adam").apply(TiedFunctional(WIDTH))


class Keyword(Cat):
    """Cat, its layer called with its input as a keyword (``self.mix(input=x)``)."""

    def forward(self, idx):
        x = torch.cat([self.e(idx), self.f(idx)], dim=-1)
        return self.head(torch.relu(self.mix(input=x)))


def test_a_layer_called_with_its_input_as_a_keyword_is_scaled(traced):
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = Keyword(WIDTH)
    mup.apply(model)
    idx = _tokens(model)[0]
    assert torch.equal(model(idx), Cat.forward(model, idx))  # the same W x either way
    copied = copy.deepcopy(model)
    mup.remove_patches(copied)  # a keyword pre-hook comes off as well: the layer applies V
    assert torch.equal(copied.mix(input=torch.eye(WIDTH + FINITE)), copied.mix.weight.T
                       + copied.mix.bias)


class Compiled(Cat):
    """Cat with a forward of its own: the code torch.compile caches is this class's alone."""

    def cat_input(self, idx):
        return torch.cat([self.e(idx), self.f(idx)], dim=-1)

    def forward(self, idx):
        return self.head(torch.relu(self.mix(self.cat_input(idx))))


def test_apply_after_a_compiled_run_drops_the_compiled_code_and_says_so(traced):
    # torch reuses compiled code without checking module hooks: a forward compiled before apply
    # (the model's, or a module's inside it) ran on without the pre-hook (W / s: a diff of
    # 0.59); apply now drops the compiled code, which recompiles with the hook, and warns
    mup = MuP(traced, "adam")
    idx = _tokens(Compiled(WIDTH))[0]
    try:
        for part in ("", "mix"):  # the whole model compiled, or the layer it hooks
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = Compiled(WIDTH)
            compiled = torch.compile(model.get_submodule(part), backend="eager")
            x = idx if not part else model.cat_input(idx).detach()
            with torch.no_grad():
                compiled(x)
                if part:  # a compiled nn.Linear's code is not its class's forward's: no
                    mup.apply(model)  # warning, but its code is dropped all the same
                else:
                    with pytest.warns(UserWarning, match=r"apply dropped torch.compile's "
                                      r"compiled code(.|\n)*forwards of Compiled had been"):
                        mup.apply(model)
                assert torch.equal(compiled(x), model.get_submodule(part)(x))
        # a sweep that compiles each width's model after apply: no refusal, each exact (the
        # second apply drops the first width's code, which later shapes could reuse)
        torch._dynamo.reset()
        for n in (WIDTH, 2 * WIDTH):
            model = Compiled(n)
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                mup.apply(model)
            assert len(said) == (n > WIDTH)
            compiled = torch.compile(model, backend="eager")
            with torch.no_grad():
                assert torch.equal(compiled(idx), model(idx))
    finally:
        torch._dynamo.reset()


def test_a_model_moved_to_another_dtype_after_apply_keeps_its_scales(traced):
    # at 3x the base width a block's gradient scale is 1/3, which float32 does not hold exactly:
    # the gradient scale is kept in float64 and compared to the dtype's precision (before: a
    # float64 move read as "apply ran at another base depth", unpositioned)
    mup = MuP(traced, "adam")
    for dtype in (torch.float64, torch.bfloat16):
        model = Cat(96)
        mup.apply(model)
        model.to(dtype)
        assert len(mup.param_groups(model, LR)) > 1
    scale = mup.grad_scales(model)["mix.weight"]
    assert scale.dtype == torch.float64 and set(scale.unique().tolist()) == {1.0, 1 / 3}
