"""Functions of a param alone used as a gain, traced (fromtorch/ops_paramfn.py): Ergo's residual
gates ``sigmoid(w) * h + sqrt(1 + sigmoid(w)) * exp(-0.5 * softplus(w)) * residual`` compute
the model's output (the shared oracle), derive what the hand-written program derives (w a
gain), and every other function or use of a param is refused at its line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Gate(nn.Module):
    """transformers' ErgoResidualGate, or a variant the tracer must refuse."""

    def __init__(self, n, form, zero):
        super().__init__()
        self.form, self.zero = form, zero
        self.weight = nn.Parameter(torch.zeros(n) if zero else torch.randn(n))
        entries = {"one_entry": 1, "head_dim": n // 4}.get(form, n)
        self.other = nn.Parameter(torch.randn(entries))

    def forward(self, h, residual):
        # Ergo's cast to float32 (kept out of the float64 oracle, whose model it would round)
        weight = self.weight.float() if self.zero else self.weight
        branch_gate = weight.sigmoid()
        if self.form == "ergo":
            residual_gate = torch.sqrt(1.0 + branch_gate) * torch.exp(-0.5 * F.softplus(weight))
        elif self.form == "variants":  # rsub, division, tanh, sums of two of w's functions,
            # keywords the forms write (alpha, softplus's beta)
            residual_gate = (2.0 - torch.tanh(weight)) / 3.0 + branch_gate * weight - 0.25
            residual_gate = torch.add(residual_gate, F.softplus(weight, beta=2.0), alpha=0.5)
            # a clamp at c != 1 of a sum: c * cap((sum) / c), the whole sum divided
            residual_gate = residual_gate + (1.0 - branch_gate).clamp(max=0.6)
        elif self.form == "axes":  # given axes of 1 to meet h's features
            return branch_gate[None, None, :] * h + residual * weight.sigmoid().view(1, 1, -1)
        elif self.form == "floor":  # a keyword no form writes
            residual_gate = torch.div(branch_gate, 0.3, rounding_mode="floor")
        elif self.form == "sqrt_near_zero":
            residual_gate = torch.sqrt(branch_gate)
        elif self.form == "two_params":
            residual_gate = branch_gate * self.other.sigmoid()
        elif self.form == "one_entry":  # xIELU's softplus(alpha) of one entry, times a vector
            return F.softplus(self.other) * h + residual
        elif self.form == "head_dim":  # a function of a head dim's param, on every head
            b, t, c = h.shape
            return (h.view(b, t, 4, -1) * self.other.sigmoid()).view(b, t, c) + residual
        elif self.form == "added":
            return h + branch_gate + residual
        return branch_gate * h + residual_gate * residual


class Gated(nn.Module):
    def __init__(self, n, form="ergo", zero=False):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.up, self.down = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.gate = Gate(n, form, zero)

    def forward(self, idx):
        x = self.e(idx)
        return self.out(self.gate(self.down(F.relu(self.up(x))), x))


HAND = """width n = 32
dim V = 13
dim T = 8
dim ff = 4 * n
input tok : tokens[T, V]
param E : [n, V]
param U : [ff, n]
param bu : [ff]
param D : [n, ff]
param bd : [n]
param w : [n] = 0
param O : [V, n]
param bo : [V]
x = E @ tok
f = D @ relu(U @ x + bu) + bd
h = sigmoid(w) * f + sqrt(1 + sigmoid(w)) * exp(-0.5 * softplus(w)) * x
output y = O @ h + bo
"""


@pytest.mark.parametrize("form", ["ergo", "variants", "one_entry", "axes"])
def test_a_gate_of_a_param_computes_the_model(form):
    traced = from_torch(lambda n: Gated(n, form), WIDTHS, _tokens)
    assert traced_computes_the_model(traced, lambda n: Gated(n, form), _tokens) < 1e-10


def test_the_traced_gate_derives_what_the_hand_written_program_derives():
    traced = from_torch(lambda n: Gated(n, zero=True), WIDTHS, _tokens)
    by_target = abc_by_target(traced)
    hand = tp.derive(tp.parse(HAND), "adam").abc
    names = {"e.weight": "E", "up.weight": "U", "up.bias": "bu", "down.weight": "D",
             "down.bias": "bd", "gate.weight": "w", "out.weight": "O", "out.bias": "bo"}
    assert {t: by_target[t] for t in names} == {
        t: (hand[p].a, hand[p].b, hand[p].c) for t, p in names.items()}
    assert by_target["gate.weight"] == by_target["down.bias"]  # a gain: as a bias, fan-in 1


@pytest.mark.parametrize(("form", "match"), [
    ("sqrt_near_zero", r"sqrt of a function of the param gate\.weight whose values are only "
                       r"known to lie in \[0, 1\]"),
    ("floor", r"sigmoid of a param alone \(gate\.weight\) used by div"),
    ("two_params", r"a function of two params \(gate\.weight and gate\.other\)"),
    ("head_dim", r"a function of the param gate\.other of 8 entries multiplying a vector "
                 r"of 32 features"),
    ("added", r"a sum of a function of the param gate\.weight with anything but a number"),
])
def test_other_functions_and_uses_of_a_param_are_refused_at_their_line(form, match):
    with pytest.raises(TensorProgError, match=r"test_param_functions_trace\.py:\d+:\d+: error: "
                       r"cannot trace " + match):
        from_torch(lambda n: Gated(n, form), WIDTHS, _tokens)
