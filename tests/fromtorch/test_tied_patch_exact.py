"""apply multiplies the output of the module that computes a tied unembedding p = h @ E.T by the
readout's multiplier c (1/4 at 4x the base width), keeping a bias b added after it out: c·out +
(1 − c)·b. That is the program's c·p + b only where the module returns the product (times a
number), plus b, and nothing else, and only for a module called once: anything else is refused
at the product's line; what is accepted computes the program at 4x."""

import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

V, WIDTHS = 13, (32, 64)


class Head(nn.Module):
    def __init__(self, E, form):
        super().__init__()
        self.E, self.form = E, form
        self.bias = nn.Parameter(torch.linspace(-1, 1, V))

    def forward(self, h):
        p = h.matmul(self.E.weight.t())
        return {
            "bias x2": lambda: (p + self.bias) * 2,
            "-bias": lambda: -(p + self.bias),
            "bias / 3": lambda: (p + self.bias) / 3,
            "own bias x2": lambda: F.linear(h, self.E.weight, self.bias) * 2,
            "own bias tanh": lambda: torch.tanh(F.linear(h, self.E.weight, self.bias)),
            "(p, p)": lambda: (p, p),
            "(p + b, p)": lambda: (p + self.bias, p),
            "x2 + bias": lambda: p * 2 + self.bias,
            # Perceiver's: the rows flattened, the bias added, read back (the last axis kept)
            "flat + bias": lambda: (h.reshape(-1, h.shape[-1]) @ self.E.weight.t()
                                    + self.bias).reshape(*h.shape[:-1], V),
        }[self.form]()


class Model(nn.Module):
    def __init__(self, n, form, twice=False):
        super().__init__()
        self.e = nn.Embedding(V, n)
        self.up, self.norm = nn.Linear(n, n), nn.LayerNorm(n)
        self.head, self.twice = Head(self.e, form), twice

    def hidden(self, idx):
        return self.norm(self.up(self.e(idx)))

    def forward(self, idx):
        h = self.hidden(idx)
        out = self.head(h)
        if isinstance(out, tuple):
            return out[0] + out[1]
        return out + self.head(2 * h) if self.twice else out


class Top(Model):
    """The tied product in the model's own forward, then its bias or a tanh there."""

    def __init__(self, n, form):
        super().__init__(n, form)
        self.bias = self.head.bias

    def forward(self, idx):
        p = self.hidden(idx) @ self.e.weight.t()
        return p + self.bias if self.head.form == "bias" else torch.tanh(p)


def _tokens(model):
    return (torch.arange(16).remainder(V).view(2, 8),)


@pytest.mark.parametrize("form", ["bias x2", "-bias", "bias / 3", "own bias x2",
                                  "own bias tanh"])
def test_an_op_after_the_tied_products_bias_inside_its_module_is_refused_at_its_line(form):
    # before: traced and applied; at 4x the model computed 2·c·p + (1 + c)·b, not 2·(c·p + b)
    with pytest.raises(TensorProgError, match=r"test_tied_patch_exact.py:\d+:\d+: error: cannot "
                       r"trace a tied unembedding(.|\n)*inside head, which returns "
                       r"(mul|neg|div|tanh) of a bias added to it"):
        from_torch(lambda n: Model(n, form), WIDTHS, _tokens)


@pytest.mark.parametrize("form", ["(p, p)", "(p + b, p)"])
def test_a_module_returning_the_tied_product_beside_another_value_is_refused(form):
    # before: traced; the model's forward after apply raised a TypeError in the patch's hook
    with pytest.raises(TensorProgError, match=r"test_tied_patch_exact.py:\d+:\d+: error: cannot "
                       r"trace a tied unembedding(.|\n)*inside head, which returns "
                       r"(a tuple|more than one value)"):
        from_torch(lambda n: Model(n, form), WIDTHS, _tokens)


def test_a_tied_head_called_twice_is_refused():
    # before: two patches on one module, each call scaled by both (c² at 4x)
    with pytest.raises(TensorProgError, match=r"test_tied_patch_exact.py:\d+:\d+: error: cannot "
                       r"trace a tied unembedding(.|\n)*inside head, which is called 2 times"):
        from_torch(lambda n: Model(n, "x2 + bias", twice=True), WIDTHS, _tokens)


def test_a_tied_product_then_tanh_in_the_models_own_forward_is_refused():
    # before: the patch on the model's whole output computed c·tanh(p), not tanh(c·p)
    with pytest.raises(TensorProgError, match=r"test_tied_patch_exact.py:\d+:\d+: error: cannot "
                       r"trace a tied unembedding(.|\n)*the model's own forward, which returns "
                       r"tanh of it"):
        from_torch(lambda n: Top(n, "tanh"), WIDTHS, _tokens)


@pytest.mark.parametrize("build", [lambda n: Model(n, "x2 + bias"), lambda n: Top(n, "bias"),
                                   lambda n: Model(n, "flat + bias")],
                         ids=["in its module", "in the model's forward", "read back"])
def test_what_is_accepted_computes_the_program_at_4x(build):
    traced = from_torch(build, WIDTHS, _tokens)
    torch.manual_seed(0)
    model = build(4 * WIDTHS[0]).double()
    MuP(traced, "adam").apply(model)
    with torch.no_grad():
        (x,) = _tokens(model)
        p, b = model.hidden(x) @ model.e.weight.T, model.head.bias
        k = 2 if model.head.form == "x2 + bias" else 1
        torch.testing.assert_close(model(x), 0.25 * k * p + b, rtol=0, atol=1e-12)
