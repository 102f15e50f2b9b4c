"""from_torch on Zaya's QK-norm written as a product with c over the L2 norm, ``x * (c /
x.norm(p=2, dim=-1, keepdim=True).clamp_min(eps))`` (modeling_zaya.py's ZayaQKNorm, c = √d),
which export writes as a reciprocal of the norm times c: an L2 normalisation times c,
``c·d^-1/2 * rmsnorm(x)``, here rmsnorm(x) itself. Oracle: the traced program computes the model
(float64), and derives what the same model with a parameter-free RMSNorm derives. A reciprocal
of anything else is refused at its line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class Normed(nn.Module):
    """An embedding, a layer, its output normalised, a layer and a readout. ``form``: "l2"
    (Zaya's), "rms" (nn.RMSNorm without a gain), "sum" (the reciprocal of a sum of squares)."""

    def __init__(self, n, form="l2"):
        super().__init__()
        self.form = form
        self.e, self.a, self.b = nn.Embedding(VOCAB, n), nn.Linear(n, n), nn.Linear(n, n)
        self.rms = nn.RMSNorm(n, eps=0.0, elementwise_affine=False)
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        x = self.a(h)
        if self.form == "rms":
            y = self.rms(x)
        elif self.form == "eps":  # the eps added to the norm, not a floor
            c = x.shape[-1] ** 0.5
            y = x * (c / (x.norm(p=2, dim=-1, keepdim=True) + 1e-7))
        elif self.form == "sum":
            y = x * torch.reciprocal(x.pow(2).sum(-1, keepdim=True))
        else:
            c = x.shape[-1] ** 0.5
            y = x * (c / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-7))
        return self.head(h + self.b(y))


@pytest.mark.slow  # two traces
def test_c_over_the_l2_norm_is_an_l2_normalisation():
    # before: refused at the division, "cannot trace the op reciprocal"
    traced = from_torch(Normed, WIDTHS, _tokens)
    assert "rmsnorm(" in traced.source, traced.source
    traced_computes_the_model(traced, Normed, _tokens, tol=1e-5)  # the eps aside
    plain = from_torch(lambda n: Normed(n, "rms"), WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(plain)


def test_c_over_the_l2_norm_plus_eps_normalises_over_the_vectors_coordinates():
    # the number of coordinates was read from |x| + eps ([.., 1]): 1, so the program was
    # sqrt(d) * rmsnorm(x), d^1/2 times the model's, which the oracle below fails
    traced = from_torch(lambda n: Normed(n, "eps"), WIDTHS, _tokens)
    traced_computes_the_model(traced, lambda n: Normed(n, "eps"), _tokens, tol=1e-5)


def test_a_reciprocal_of_a_sum_of_squares_is_refused():
    with pytest.raises(
        TensorProgError,
        match=r"test_inverse_l2.py:\d+:\d+: error: cannot trace "
        r"a reciprocal of anything but a vector's L2 norm",
    ):
        from_torch(lambda n: Normed(n, "sum"), WIDTHS, _tokens)
