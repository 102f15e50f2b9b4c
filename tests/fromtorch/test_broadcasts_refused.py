"""What torch broadcasts and the language does not say is refused at its line, never traced into
a program that computes something else: a gate of one number per head or per pixel added (the
product's recognisers read it only as a factor), a param whose entries fall on the tokens, a
vector of one feature added to one of n, a softplus of another threshold, a function that
equals a language function on [-4, 4] only. A one-entry param of a negative init, a param of
one entry (ReZero's alpha) and a layer scale stored as [1, 1, n] trace to programs that parse
and compute the model (the shared oracle)."""

import math

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402
from tensorprog.fromtorch.identify import identify  # noqa: E402

WIDTHS = (16, 32)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def _image(model):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


class OneChannel(nn.Module):
    """An image of n channels and a gate of one channel per pixel, combined by ``form``."""

    def __init__(self, n, form):
        super().__init__()
        self.form = form
        self.conv, self.one = nn.Conv2d(3, n, 3, padding=1), nn.Conv2d(n, 1, 1)
        self.fc = nn.Linear(n, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        g = torch.sigmoid(self.one(h))
        if self.form == "add":
            y = h + g
        elif self.form == "rsub":
            y = g - h
        elif self.form == "pooled":
            y = h.mean((2, 3), keepdim=True) + g
        elif self.form == "channels_last":
            y = (h.permute(0, 2, 3, 1) + g.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("form", ["add", *(pytest.param(f, marks=pytest.mark.slow) for f in (
    "rsub", "pooled", "channels_last"))])
def test_an_image_plus_a_gate_of_one_channel_is_refused(form):
    with pytest.raises(TraceError, match="a sum or difference with a gate of one channel") as err:
        from_torch(lambda n: OneChannel(n, form), WIDTHS, _image)
    assert "y = " in err.value.diagnostics[0].span.source_line()


class Tokens(nn.Module):
    """A per-token vector of n features and ``form``: a per-head gate added, a param of T
    entries (the tokens) against the features transposed (times them, or expand_as'd to them
    and added, or read as the expanded tensor: it had crashed on the view), a vector of one
    feature added, a softplus gate of threshold 4, a one-entry gate whose bias is negative."""

    def __init__(self, n, form, heads=4):
        super().__init__()
        self.form, self.h = form, heads
        self.e, self.l, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)
        self.g = nn.Linear(n, 1 if form in ("one", "negative") else heads)
        self.p = nn.Parameter(torch.randn(8))
        nn.init.constant_(self.g.bias, -0.5)

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        o, f = self.l(x), self.form
        if f == "gate_added":
            y = (o.view(b, t, self.h, -1) + F.softplus(self.g(x)).unsqueeze(-1)).view(b, t, c)
        elif f == "over_tokens":
            y = (o.transpose(1, 2) * self.p).transpose(1, 2)
        elif f == "expanded_over_tokens":  # expand_as broadcasts as the sum would
            y = (o.transpose(1, 2) + self.p.expand_as(o.transpose(1, 2))).transpose(1, 2)
        elif f == "expanded_copied":  # and copied first (HRM's .contiguous()): the same
            y = (o.transpose(1, 2) + self.p.expand_as(o.transpose(1, 2)).contiguous()
                 ).transpose(1, 2)
        elif f == "expanded_viewed":  # the expanded param read as a tensor of its shape
            y = o + self.p.expand_as(o.transpose(1, 2)).reshape(b, c, t).transpose(1, 2)
        elif f == "one":
            y = o + torch.sigmoid(self.g(x))
        elif f == "threshold":
            y = (o.view(b, t, self.h, -1) * F.softplus(self.g(x), threshold=4).unsqueeze(-1)
                 ).view(b, t, c)
        else:
            y = o * torch.sigmoid(self.g(x))
        return self.out(x + y)


@pytest.mark.parametrize(("form", "message"), [
    ("gate_added", r"g.unsqueeze\(-1\), a per-head gate\) read by add"),
    ("over_tokens", r"a product of the param p of shape \[8\] with a value of shape "
                    r"\[2, 16, 8\] whose features are not"),
    ("expanded_over_tokens", r"a sum of the param p of shape \[8\] with a value of shape "
                             r"\[2, 16, 8\] whose features are not"),
    ("expanded_copied", r"a sum of the param p of shape \[8\] with a value of shape "
                        r"\[2, 16, 8\] whose features are not"),
    ("expanded_viewed", r"an expand_as from \[8\] to \[2, 16, 8\] of a param read by "
                        "anything but a sum or product"),
    ("one", "a sum of a vector of 16 features and one of 1"),
    ("threshold", "a softplus of threshold 4"),
])
def test_a_broadcast_the_language_does_not_say_is_refused_at_its_line(form, message):
    with pytest.raises(TraceError, match=message) as err:
        from_torch(lambda n: Tokens(n, form), WIDTHS, _tokens)
    assert "y = " in err.value.diagnostics[0].span.source_line()


class ReZero(nn.Module):
    """x + alpha * f(x) with alpha a param of one entry (``[1]``), a layer scale stored as
    ``[1, 1, n]`` (traced), none (``[]``) or a table over the tokens ``[8, n]`` (refused)."""

    def __init__(self, n, shape):
        super().__init__()
        self.e, self.l, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)
        shape = tuple(n if s == "n" else s for s in shape)
        self.alpha = nn.Parameter(torch.linspace(-1, 1, math.prod(shape)).view(shape))

    def forward(self, idx):
        x = self.e(idx)
        y = self.alpha * self.l(x)
        return self.out(x + y)


@pytest.mark.parametrize("shape", [(1,), (1, 1, "n")])
def test_a_param_of_one_entry_or_features_after_axes_of_1_computes_the_model(shape):
    tr = from_torch(lambda n: ReZero(n, shape), WIDTHS, _tokens)
    traced_computes_the_model(tr, lambda n: ReZero(n, shape), _tokens)


@pytest.mark.parametrize(("shape", "message"), [
    ((), "with the 0-d param alpha"),
    ((8, "n"), r"a product of the param alpha of shape \[8, 16\]"),
])
def test_a_param_of_no_axis_or_over_the_tokens_is_refused(shape, message):
    with pytest.raises(TraceError, match=message) as err:
        from_torch(lambda n: ReZero(n, shape), WIDTHS, _tokens)
    assert "y = " in err.value.diagnostics[0].span.source_line()


def test_a_one_entry_param_of_a_negative_init_traces_and_computes_the_model():
    tr = from_torch(lambda n: Tokens(n, "negative"), WIDTHS, _tokens)
    assert "= -0.5" in tr.source
    traced_computes_the_model(tr, lambda n: Tokens(n, "negative"), _tokens)


class InitialState(nn.Module):
    """HRM's low-level state: a param of n entries (``frozen``: requires_grad=False, as HRM's
    own) expanded over the tokens and copied (``z.expand_as(x).contiguous()``), then added to
    the tokens' vectors."""

    def __init__(self, n, frozen=False):
        super().__init__()
        self.e, self.l, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)
        self.z = nn.Parameter(torch.linspace(-1, 1, n), requires_grad=not frozen)

    def forward(self, idx):
        x = self.e(idx)
        s = self.z.expand_as(x).contiguous()
        return self.out(x + torch.tanh(self.l(s + x)))


@pytest.mark.parametrize("frozen", [False, True])
def test_a_param_expanded_over_the_tokens_and_copied_is_a_vector_param(frozen):
    build = lambda n: InitialState(n, frozen)  # noqa: E731
    tr = from_torch(build, WIDTHS, _tokens)
    traced_computes_the_model(tr, build, _tokens)
    abc = abc_by_target(tr)
    # a vector added to the tokens' is a bias: an input weight of fan-in 1 (TP5 Table 3)
    assert abc["z"] == abc["l.bias"] == abc["e.weight"], abc


class TruncatedState(InitialState):
    """HRM's cycles as the model trains them: the first step under torch.no_grad (its
    truncated backprop), which hands no gradient to the layer's params through that step."""

    def forward(self, idx):
        x = self.e(idx)
        s = self.z.expand_as(x).contiguous()
        with torch.no_grad():
            s = torch.tanh(self.l(s + x))
        return self.out(x + torch.tanh(self.l(s + x)))


def test_a_param_expanded_into_a_no_grad_step_is_refused_as_the_step():
    with pytest.raises(TraceError, match="torch.no_grad: no gradient flows through it") as err:
        from_torch(TruncatedState, WIDTHS, _tokens)
    assert "s = torch.tanh(self.l(s + x))" in err.value.diagnostics[0].span.source_line()


class HandedBack(InitialState):
    """The expanded param handed to a torch.no_grad region that scales it in place by 1 (RWKV's
    rescaling, kept as a no-op) and so returns it as it was; read after it by a view, it would
    be read as the param's n entries (it crashed), or by a sum, as a param of the expanded
    shape."""

    def __init__(self, n, read):
        super().__init__(n)
        self.read = read

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        s = self.z.expand_as(x).clone()
        with torch.no_grad():
            s.mul_(1)
        s = s.reshape(b, n, t).transpose(1, 2) if self.read == "view" else s
        return self.out(x + torch.tanh(self.l(s + x)))


@pytest.mark.parametrize("read", ["view", pytest.param("sum", marks=pytest.mark.slow)])
def test_an_expanded_param_handed_back_by_a_no_grad_region_is_refused(read):
    with pytest.raises(TraceError, match="a torch.no_grad region that hands back the param z "
                       r"of shape \[16\] expanded to \[2, 8, 16\]") as err:
        from_torch(lambda n: HandedBack(n, read), WIDTHS, _tokens)
    assert "s.mul_(1)" in err.value.diagnostics[0].span.source_line()


class ParamSum(InitialState):
    """A param added to itself (through its expanded copies, or as it is) before the sum with
    a value: no vector of the program to add it to (it crashed)."""

    def __init__(self, n, copied):
        super().__init__(n)
        self.copied = copied

    def forward(self, idx):
        x = self.e(idx)
        s = self.z.expand_as(x).contiguous() if self.copied else self.z
        return self.out(x + torch.tanh(self.l(x + (s + s))))


@pytest.mark.parametrize("copied", [pytest.param(False, marks=pytest.mark.slow), True])
def test_a_param_added_to_itself_is_refused(copied):
    with pytest.raises(TraceError, match=r"a sum of two params \(or of a param with itself\)"
                       ) as err:
        from_torch(lambda n: ParamSum(n, copied), WIDTHS, _tokens)
    assert "x + (s + s)" in err.value.diagnostics[0].span.source_line()


@pytest.mark.parametrize(("f", "found"), [
    (lambda t: F.softplus(t, threshold=4), None),  # t itself past 4
    (lambda t: F.hardtanh(t, -5, 5), None),  # the identity on [-5, 5]
    (lambda t: t.clamp(max=5), None),
    (F.relu6, None),
    (F.softplus, ("softplus", 1.0)),
    (lambda t: 3 * torch.tanh(t), ("tanh", 3.0)),
])
def test_a_function_is_identified_only_where_it_equals_one_far_out_too(f, found):
    assert identify(f) == found
