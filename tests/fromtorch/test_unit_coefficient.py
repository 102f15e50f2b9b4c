"""A number the forward computes from the width that is exactly 1 at one width (MiniCPM's logits
divided by hidden_size / dim_model_base, 1 at width 256): the converter drops a product by 1, so
without a care the program at that width would lack the product the other width has. The trace
keeps its slot at both widths, and the check, converting the model at other widths, keeps it
too."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.check import probe  # noqa: E402

BASE = 32  # the model's own base width: its readout's input is divided by n / BASE


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Rescaled(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n = n
        self.e, self.h, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)
        self.norm = nn.LayerNorm(n)

    def forward(self, idx):
        x = self.norm(torch.relu(self.h(self.e(idx))))
        return self.out(x / (self.n / BASE))  # folded into the norm's gain, as MiniCPM's


@pytest.mark.parametrize("widths", [(BASE, 2 * BASE)])
def test_a_number_of_one_at_a_traced_width_keeps_its_product(widths):
    traced = from_torch(Rescaled, widths, _tokens)
    assert len(traced.coefficient_nodes) == 1
    traced_computes_the_model(traced, Rescaled, _tokens)


def test_the_check_converts_a_width_where_the_number_is_one():
    traced = from_torch(Rescaled, (BASE // 2, BASE // 4 * 3), _tokens)
    mup = MuP(traced, "adam")
    model = Rescaled(BASE)  # the number is 1 here, not at the traced widths
    mup.apply(model)
    values = probe(mup, model, _tokens(model))()  # "graph differs" before the fix
    assert set(values) >= {v for v in traced.vectors}
