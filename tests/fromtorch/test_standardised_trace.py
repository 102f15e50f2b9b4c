"""BiT's forms traced. Its weight-standardised convolutions (WeightStandardizedConv2d): the
kernel's rows standardised by ``F.batch_norm(w.reshape(1, out, -1), None, None,
training=True, ...)``, laid back out with ``reshape_as(w)`` and read as a conv2d's kernel,
trace as ``param K : [...] standardised(eps)``; its stem pool of a zero-padded image as
``subsample(maxpool3z(h))``; its group norm of 16 groups as ``groupnorm(h, d)``. Oracles: the
traced program computes the model (``traced_computes_the_model``) and derives what
examples/bit.tp derives; apply leaves the model bit-identical at the base width and elsewhere
puts the multiplier on the convolution's output, its bias kept out (the standardisation would
divide it out of an init); every other computation on the kernel's entries (a gain,
statistics over anything but whole rows, another reader of the standardised kernel, the same
kernel read raw too) is refused at its line."""

from __future__ import annotations

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402


class StdConv(nn.Conv2d):
    """BiT's WeightStandardizedConv2d (``form`` another computation on its entries)."""

    def __init__(self, i, o, k, eps=1e-6, form="bit", bias=False):
        super().__init__(i, o, k, padding=k // 2, bias=bias)
        self.eps, self.form = eps, form
        self.gain = nn.Parameter(torch.ones(o)) if form == "gain" else None

    def forward(self, x):
        w = self.weight
        if self.form in ("var_mean", "unbiased", "eps_outside"):  # written out
            v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=self.form == "unbiased")
            if self.form == "eps_outside":
                w = (w - m) / (torch.sqrt(v) + self.eps)
            else:
                w = (w - m) / torch.sqrt(v + self.eps)
        elif self.form == "pairs":  # statistics over two rows at a time
            pairs = w.reshape(1, self.out_channels // 2, -1)
            w = F.batch_norm(pairs, None, None, training=True, eps=self.eps).reshape_as(w)
        else:
            w = F.batch_norm(w.reshape(1, self.out_channels, -1), None, None, weight=self.gain,
                             training=True, momentum=0.0, eps=self.eps).reshape_as(w)
        if self.form == "scaled":  # the standardised kernel read by a product
            w = 2.0 * w
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Net(nn.Module):
    """examples/bit.tp in torch."""

    def __init__(self, n, form="bit"):
        super().__init__()
        self.stem = StdConv(3, n, 3, eps=1e-8)
        self.pad = nn.ConstantPad2d(1, 0.0)  # BiT's stem pool: 0 joins the max at the border
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=form == "ceil")
        self.a = StdConv(n, n, 1, form=form)
        self.norm = nn.GroupNorm(16, n)
        self.b = StdConv(n, n, 3)
        self.head = nn.Linear(n, 10, bias=False)
        self.form = form

    def forward(self, img):
        h0 = self.pool(self.pad(self.stem(img)))
        u = F.relu(self.norm(self.a(h0)))
        if self.form == "raw":  # the kernel also read as it is
            u = u + F.conv2d(h0, self.b.weight, padding=1)
        h1 = h0 + self.b(u)
        return self.head(h1.mean((2, 3)))


NAMES = {"stem_weight": "K0", "a_weight": "A", "norm_weight": "g", "norm_bias": "c",
         "b_weight": "B", "head_weight": "W"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def bit():
    return tp.from_torch(Net, (16, 32), images)


def test_the_standardised_kernels_trace_with_their_eps(bit):
    assert "param stem_weight : [n, f3, f3, f3] standardised(1e-08)" in bit.source
    assert "param b_weight : [n, n, f3, f3] standardised(1e-06)" in bit.source
    assert "param head_weight : [f10, n]\n" in bit.source  # a plain linear stays plain


def test_the_traced_program_computes_the_model(bit):
    assert traced_computes_the_model(bit, Net, images) < 1e-10


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_network_derives_what_examples_bit_tp_derives(bit, optimizer):
    got = tp.derive(bit.program, optimizer).abc
    want = tp.derive(tp.parse_file(ROOT / "examples" / "bit.tp"), optimizer).abc
    assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}


def test_apply_puts_the_multiplier_on_the_convolutions_output(bit):
    mup = apply_is_bit_identical_at_base(bit, Net, images)
    torch.manual_seed(0)
    model = Net(64)
    report = str(mup.apply(model))
    assert "patched forward of a: a.weight standardised: multiplier (n/base)^-1/2" in report
    assert "init a.weight" in report and "(n/base)^-0)" in report  # b = 0: the base's std
    x = torch.randn(2, 64, 8, 8)
    w = F.batch_norm(model.a.weight.reshape(1, 64, -1), None, None, training=True,
                     eps=1e-6).reshape_as(model.a.weight)
    torch.testing.assert_close(model.a(x), 0.5 * F.conv2d(x, w), rtol=0, atol=1e-6)
    lrs = {id(p): g["lr"] for g in mup.param_groups(model, 1e-3) for p in g["params"]}
    assert lrs[id(model.a.weight)] == pytest.approx(1e-3 / 2)  # η·(n/base)^-1/2
    assert lrs[id(model.stem.weight)] == pytest.approx(1e-3)
    mup.remove_patches(model)


def test_the_standardisation_written_out_with_var_mean_traces_to_the_same_param():
    traced = tp.from_torch(lambda n: Net(n, "var_mean"), (16, 32), images)
    assert "param a_weight : [n, n, f1, f1] standardised(1e-06)" in traced.source
    assert traced_computes_the_model(traced, lambda n: Net(n, "var_mean"), images) < 1e-10


def test_a_standardised_convolutions_own_bias_stays_out_of_its_multiplier():
    def build(n):
        net = Net(n)
        net.b = StdConv(n, n, 3, bias=True)
        return net

    mup = MuP(tp.from_torch(build, (16, 32), images), "adam")
    torch.manual_seed(0)
    model = build(64)
    mup.apply(model)
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    b = model.b.double()
    w = F.batch_norm(b.weight.reshape(1, 64, -1), None, None, training=True,
                     eps=1e-6).reshape_as(b.weight)
    want = 0.5 * F.conv2d(x, w, padding=1) + b.bias[:, None, None]
    torch.testing.assert_close(b(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("form", "message"), [
    ("gain", r"a batch norm of the param a\.weight's entries with a gain"),
    ("pairs", r"its channels are not each one whole row of the param"),
    pytest.param("scaled", r"the op mul on the standardised rows of the param a\.weight|the "
                 r"standardised param a\.weight read by mul", marks=pytest.mark.slow),
    ("raw", r"the param b\.weight read both standardised and as it is"),
    # a pool whose last window has no pad
    pytest.param("ceil", r"cannot trace a pad by \[1, 1, 1, 1\]", marks=pytest.mark.slow),
    ("unbiased", r"torch\.var_mean of a param traced only as weight standardisation"),
    pytest.param("eps_outside", r"the op sqrt on the row statistics of the param a\.weight",
                 marks=pytest.mark.slow),
])
def test_any_other_computation_on_the_kernels_entries_is_refused(form, message):
    with pytest.raises(tp.TensorProgError, match=message):
        tp.from_torch(lambda n: Net(n, form), (16, 32), images)


class TwoInputs(nn.Module):
    """A standardised 1x1 convolution of an image of ``c`` channels (fan-in c)."""

    def __init__(self, n, c=2, form="bit"):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1, bias=False)
        self.a = StdConv(c, n, 1, form=form)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        return self.head(F.relu(self.a(self.stem(img))).mean((2, 3)))


@pytest.mark.parametrize(("form", "message"), [
    ("bit", r"over each row of a matrix or kernel of three entries or more"),
    pytest.param("var_mean", r"three or more: a row of two standardises to ±1",
                 marks=pytest.mark.slow),
])
def test_a_kernel_of_two_fan_in_entries_is_refused(form, message):
    # its rows standardise to ±1 whatever the weight: nothing to train, where derive had
    # called the kernel updated maximally
    with pytest.raises(tp.TensorProgError, match=message):
        tp.from_torch(lambda n: TwoInputs(n, 2, form), (16, 32), images)


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.norm = nn.GroupNorm(8, n)
        self.conv = StdConv(n, n, 3, bias=True)

    def forward(self, h):
        return h + self.conv(F.relu(self.norm(h)))


class Stack(nn.Module):
    """Standardised convolutions with their own bias in a stack of layers, rolled."""

    def __init__(self, n, depth=2):
        super().__init__()
        self.stem = nn.Conv2d(3, n, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList([Block(n) for _ in range(depth)])
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        h = self.stem(img)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean((2, 3)))


@pytest.fixture(scope="module")
def stack():
    return tp.from_torch(Stack, (16, 32), images)


def _kernel_outputs_are(model, factor):
    """Each layer's convolution is factor·conv(x, Ŵ) + its own bias."""
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    for block in model.blocks:
        c = block.conv
        w = F.batch_norm(c.weight.reshape(1, 64, -1), None, None, training=True,
                         eps=1e-6).reshape_as(c.weight)
        want = factor * F.conv2d(x, w, padding=1) + c.bias[:, None, None]
        torch.testing.assert_close(c(x), want, rtol=0, atol=1e-12)


def test_a_rolled_layers_standardised_kernel_takes_its_multiplier_in_every_layer(stack):
    # SGD, whose exponents have no depth part: each layer's convolution is patched (the
    # layer's own module and bias), where apply had refused the block's pattern as no module
    assert "block blocks(h)" in stack.source
    assert traced_computes_the_model(stack, Stack, images, optimizer="sgd") < 1e-10
    mup = apply_is_bit_identical_at_base(stack, Stack, images, "sgd")
    model = Stack(64, depth=3).double()  # deeper than traced: every layer patched
    mup.apply(model)
    _kernel_outputs_are(model, 0.5)  # (64/16)^-1/2


def test_under_adam_its_depth_multiplier_joins_the_patch(stack):
    # completep's aL = 1 on the kernel: its patch carries (L/base)^-1 with (n/base)^-1/2
    # (no init can carry either), its LR L^-cL; where apply had refused any depth exponent
    mup = apply_is_bit_identical_at_base(stack, Stack, images, "adam")
    depth = mup.derivation.depth.abc["blocks.conv_weight"]
    assert (depth.a, depth.b, depth.c) == (1, 0, 0)
    model = Stack(64, depth=3).double()
    mup.apply(model)
    _kernel_outputs_are(model, 0.5 / 1.5)  # (64/16)^-1/2 · (3/2)^-1
    lrs = {id(p): g["lr"] for g in mup.param_groups(model, 1.0) for p in g["params"]}
    assert lrs[id(model.blocks[2].conv.weight)] == pytest.approx(0.5)  # (64/16)^-1/2


@pytest.mark.slow
def test_from_torch_keeps_a_stack_unrolled_with_blocks_false():
    unrolled = tp.from_torch(Stack, (16, 32), images, blocks=False)
    assert "block " not in unrolled.source
    apply_is_bit_identical_at_base(unrolled, Stack, images, "adam")
