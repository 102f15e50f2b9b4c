"""A vector rescaled to another's RMS (Gemma 3n's AltUp streams, ``h * RMS(e) / RMS(h)``), traced
as ``spread(rms(e, D), n) * rmsnorm(h)`` with the language's ``rms(x, D)``, in either order of
the product and the division. Oracles: the emitted module computes the model with its floors
read as the emitted norm's eps (float64); the traced program derives the exponents of
examples/altup_rescale.tp, the same network written by hand; the engine's rule for rms (as large
as x, a 1/n share of its gradient back) against torch's autograd. A per-head RMS, a norm by
another vector's RMS, a mean square unrooted, the RMS of a multiple of a vector the program
does not hold are refused at their line (the streams stacked on an axis of their own and
averaged trace as their mean: test_hyper_connections.py)."""

from __future__ import annotations

import pytest
from conftest import (
    ROOT,
    abc_by_target,
    apply_is_bit_identical_at_base,
    the_check_reads_the_program,
    traced_computes_the_model,
)

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

EPS = 1e-6  # the emitted rmsnorm's


def _ms(x):
    return torch.mean(x ** 2, dim=-1, keepdim=True)


class AltUp(nn.Module):
    """The embedding (times sqrt(n), Gemma's) and two streams projected from it, each rescaled
    to its RMS: the first as HF writes it (times the target, then divided by its own floored
    RMS), the second divided first. ``eps``: the floors read as the emitted norm's eps."""

    def __init__(self, n, eps=False, how=""):
        super().__init__()
        self.eps, self.how, self.scale = eps, how, n ** 0.5
        self.e = nn.Embedding(13, n)
        self.p1, self.p2 = (nn.Linear(n, n, bias=False) for _ in range(2))
        self.head = nn.Linear(n, 13, bias=False)

    def _rms(self, x):
        return torch.sqrt(_ms(x) + EPS if self.eps else _ms(x).clamp(min=1e-5))

    def forward(self, idx):
        h0 = self.e(idx) * self.scale
        target = _ms(h0) ** 0.5
        c1, c2 = self.p1(h0), self.p2(h0)
        if self.how == "per head":  # each head of c1 to the RMS of h0's same head
            view = (*c1.shape[:-1], 4, -1)
            s1 = (c1.view(view) * _ms(h0.view(view)) ** 0.5).flatten(-2) / self._rms(c1)
        elif self.how == "other's norm":
            s1 = c1 * target / self._rms(c2)
        elif self.how == "mean square":
            s1 = c1 * _ms(h0) / self._rms(c1)
        elif self.how == "unheld multiple":
            s1 = c1 * _ms(2 * self.e(idx)) ** 0.5 / self._rms(c1)
        else:
            s1 = c1 * target / self._rms(c1)
        s2 = c2 / self._rms(c2) * target
        return self.head(h0 + s1 + s2)


def inputs(model=None):
    return (torch.arange(16).remainder(13).view(2, 8),)


@pytest.fixture(scope="module")
def traced():
    return from_torch(AltUp, (16, 32), inputs)


def test_a_vector_rescaled_to_anothers_rms_traces_to_rms_and_computes_the_model(traced):
    body = traced.source
    assert body.count(" = rms(mul, f1)") == 2 and "dim f1 = 1" in body, body
    assert body.count("spread(") == 2 and body.count("rmsnorm(") == 2, body
    traced_computes_the_model(traced, lambda n: AltUp(n, eps=True), inputs)
    apply_is_bit_identical_at_base(traced, AltUp, inputs)  # sqrt(n) folded into the embedding
    # the check reads each rescaled stream where the model computes it, as the program's (its
    # floors against the emitted eps: mean squares of order 1 here, within 1e-6 of each vector)
    read = the_check_reads_the_program(traced, AltUp, inputs, tol=1e-5)
    assert {"div", "mul_2"} <= set(read), sorted(read)


def test_the_traced_rescaling_derives_the_hand_written_programs_exponents(traced):
    got = abc_by_target(traced)
    want = tp.derive(tp.parse_file(ROOT / "examples" / "altup_rescale.tp"), "adam").abc
    for target, name in {"e.weight": "E", "p1.weight": "A", "p2.weight": "A",
                         "head.weight": "U"}.items():
        assert got[target] == (want[name].a, want[name].b, want[name].c), target


ONLY_THROUGH_RMS = """width n = 64
dim D = 1
dim V = 13
dim T = 8
input tok : tokens[T, V]
param E : [n, V]
param F : [n, V]
param A : [n, n]
param U : [V, n]
e = E @ tok
r = rms(e, D)
h = spread(r, n) * rmsnorm(A @ (F @ tok))
output y = U @ h
"""


def test_rms_is_as_large_as_its_input_and_sends_back_a_share_of_its_gradient():
    # the engine: e reaches the output through its RMS alone; r is as large as e and moves as
    # it does, r's gradient sums spread's n coordinates of h's (1/n: LLN, +1), and e gets a
    # 1/n share of it per coordinate (-1): Θ(1/n), an input weight's gradient under µP
    d = tp.derive(tp.parse(ONLY_THROUGH_RMS, "rms.tp"), "adam")
    a = d.analysis
    assert (a.init_["r"], a.change_["r"], a.grad_["r"]) == (0, 0, 0)
    assert (a.init_["e"], a.grad_["e"], a.grad_["h"]) == (0, -1, -1)
    assert (d.abc["E"].b, d.abc["E"].c) == (0, 0)  # an input weight's, as without the RMS
    # torch: d RMS(x) / dx_i = x_i / (n RMS(x)), of size 1/n against x's coordinates of size 1
    for n in (64, 4096):
        x = torch.randn(n, dtype=torch.float64, requires_grad=True,
                        generator=torch.Generator().manual_seed(n))
        _ms(x).sqrt().sum().backward()
        assert torch.allclose(x.grad, x.detach() / (n * _ms(x.detach()).sqrt()))
        assert 0.5 / n < x.grad.pow(2).mean().sqrt().item() < 2 / n


@pytest.mark.parametrize("how, said", [
    ("per head", r"a vector times a standard deviation or an RMS over each head's coordinates"),
    ("other's norm", r"a vector rescaled to another's RMS, then multiplied by anything but the "
                     r"inverse RMS of itself"),
    pytest.param("mean square", r"a vector times a vector's mean square, mean\(h²\)",
                 marks=pytest.mark.slow),
    ("unheld multiple", r"a vector times the RMS of 2 times a vector that the program holds no "
                        r"multiple of"),
])
def test_a_rescaling_the_language_has_no_form_for_is_refused_at_its_line(how, said):
    with pytest.raises(TensorProgError, match=rf"test_rescale_trace.py:\d+:\d+: error: cannot "
                       rf"trace {said}"):
        from_torch(lambda n: AltUp(n, how=how), (16, 32), inputs)
