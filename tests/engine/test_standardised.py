"""Weight standardisation (``param K : [...] standardised(eps)``): the language, the engine's
derivation (engine/standardised.py) and numbers that check it.

A standardised W is read as Ŵ = (W − mean_row) / sqrt(var_row + eps): its forward size is the
multiplier's alone (a pinned by the init), and W's init std n^-b moves only the update, ΔŴ ≈
ΔW / std(W). So a standardised (a, b, c) trains as the plain (a, 0, c − k·b). Oracles: the
derived exponents against that map and the paper's plain µP; classification under the
standardised symmetry (a, b+θ, c+kθ); finite-width measurements of the step's first-order
parts and of the layer's output change across widths under the derived LR."""

from __future__ import annotations

import math

import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.exponents import ABC, HALF, ZERO

MLP = """
width n = 64
dim d = 16
dim K = 10
input x : [d]
param W0 : [n, d]
param A : [n, n] {std}
param W1 : [K, n]
output y = W1 @ relu(A @ relu(W0 @ x))
"""


def _program(std: str = "standardised(1e-06)"):
    return tp.parse(MLP.format(std=std))


@pytest.mark.parametrize(("optimizer", "c"), [("adam", HALF), ("sgd", -1)])
def test_a_standardised_hidden_matrix_takes_its_multiplier_in_the_forward(optimizer, c):
    got = tp.derive(_program(), optimizer).abc
    plain = tp.derive(_program(""), optimizer).abc
    # b = 0 pins the plain symmetry's member: init 1/√n moves into the multiplier n^-1/2
    assert got["A"] == ABC(HALF, ZERO, c)
    k = 1 if optimizer == "adam" else 2
    theta = plain["A"].b  # the plain member with b = 0 is the same network as got's
    assert (plain["A"].a + theta, plain["A"].c - k * theta) == (got["A"].a, got["A"].c)
    assert got["W0"] == plain["W0"] and got["W1"] == plain["W1"]


def test_its_classification_follows_the_standardised_symmetry_not_the_plain_one():
    program, adam = _program(), tp.engine.optimizers.resolve("adam")
    mup = tp.derive(program, "adam").abc
    ok = tp.engine.classify.classify(program, adam, mup)
    assert not ok.violations and ok.regime == "feature_learning"
    # (a, b+θ, c+θ): the init std moves the update only, which the LR takes back
    moved = dict(mup, A=ABC(HALF, HALF, 1))
    assert not tp.engine.classify.classify(program, adam, moved).violations
    # the plain symmetry's (a-θ, b+θ, c+θ) is a different network: Ŵ ignores the init, so
    # A @ h is Θ(√n) without the multiplier
    plain = dict(mup, A=ABC(ZERO, HALF, 1))
    bad = tp.engine.classify.classify(program, adam, plain)
    assert any(v.tensor.startswith("A") or "A" in v.message for v in bad.violations)


def test_derive_explains_what_standardisation_pins_and_leaves_free():
    d = tp.derive(_program(), "adam")
    text = str(d)
    assert "Standardised A: each row is read at mean 0 and variance 1 whatever W's init" in text
    assert "symmetry is (a, b+θ, c+θ), fixed by b = 0" in text
    reasons = [e.reason for e in d.equations if e.param == "A"]
    assert any("ΔŴ ≈ ΔW / std(W) = n^b·ΔW" in r for r in reasons)


@pytest.mark.parametrize(("source", "message"), [
    ("param v : [n] standardised(1e-06)", "only a matrix or a convolution kernel is "
     "standardised"),
    ("param A : [n, n] standardised(0)", "with an eps above 0"),
])
def test_a_standardised_vector_or_a_zero_eps_is_refused(source, message):
    text = MLP.format(std="").replace("param A : [n, n] \n", source.replace("v :", "A :")
                                      .replace("[n] ", "[n] ") + "\n")
    if "param v" in source:
        text = MLP.format(std="") + source + "\n"
    with pytest.raises(tp.TensorProgError, match=message):
        tp.parse(text)


@pytest.mark.parametrize("fan_in", [1, 2])
def test_a_standardised_row_of_one_or_two_entries_is_refused(fan_in):
    # one entry standardises to 0, two to ±1 whatever the weight: W0 would have nothing to
    # train, where derive had called it an input layer updated maximally
    text = MLP.format(std="").replace("dim d = 16", f"dim d = {fan_in}").replace(
        "param W0 : [n, d]", "param W0 : [n, d] standardised(1e-06)")
    with pytest.raises(tp.TensorProgError, match=f"W0 is standardised over a fan-in of {fan_in}"):
        tp.parse(text)
    tp.parse(text.replace(f"dim d = {fan_in}", "dim d = 3"))  # three entries keep a direction


def test_a_transposed_read_of_a_standardised_matrix_is_refused():
    text = _program_text() + "output z = A.T @ relu(W0 @ x)\n"
    with pytest.raises(tp.TensorProgError, match="read only as the weight of W @ x or conv"):
        tp.parse(text)


def _program_text():
    return MLP.format(std="standardised(1e-06)")


def test_the_text_form_writes_the_standardisation_and_parses_back():
    program = tp.parse_file(ROOT / "examples" / "bit.tp")
    text = tp.ir.text.to_text(program)
    assert "param B : [n, n, k, k] standardised(1e-06)" in text
    assert tp.parse(text) == program


def _slope(xs, ys) -> float:
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx)


def test_a_steps_radial_part_fades_as_one_over_the_fan_in_and_its_mean_keeps_its_order():
    """ΔŴ to first order is (ΔW − mean_row ΔW − ⟨ΔW^c, Ŵ⟩ Ŵ / k) / std(W). For a rank-one
    step u·vᵀ met by x' = v (a relu's output: not centred), the part along Ŵ moves Ŵx' by 1/k
    of what the step does; removing the row mean leaves the centred Σ(v_j − v̄)v_j, a fixed
    fraction of vᵀv (Var/E[v²] of a relu of a Gaussian: 1 − 1/π)."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    ks, radial, centred = [256, 1024, 4096], [], []
    for k in ks:
        w_hat = torch.randn(64, k, generator=gen, dtype=torch.float64)
        w_hat = (w_hat - w_hat.mean(1, keepdim=True)) / w_hat.std(1, unbiased=False,
                                                                  keepdim=True)
        v = torch.relu(torch.randn(k, generator=gen, dtype=torch.float64))
        step = v - v.mean()  # each row's step u_i·v, centred (u_i = 1)
        along = (w_hat @ step / k)[:, None] * w_hat  # its part along each row's Ŵ
        radial.append(float((along @ v).abs().mean() / (step @ v)))
        centred.append(float(step @ v / (v @ v)))
    assert _slope(ks, radial) == pytest.approx(-1.0, abs=0.15)
    assert all(c == pytest.approx(1 - 1 / math.pi, abs=0.05) for c in centred)


def _output_change(torch, n: int, abc: dict, base: int = 64) -> float:
    """RMS change of A's output n^-a·Ŵh after 3 Adam steps, with the derived exponents (the
    params drawn at their base std times (n/base)^-b, LR 1e-2 times (n/base)^-c, multiplier
    (n/base)^-a) on a fixed batch."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=gen)
    target = torch.randn(8, 10, generator=gen)
    r = n / base
    stds = {"W0": 16 ** -0.5, "A": base ** -0.5, "W1": base ** -1.0}
    shapes = {"W0": (n, 16), "A": (n, n), "W1": (10, n)}
    params = {p: (torch.randn(*shapes[p], generator=gen) * stds[p] * r ** -float(abc[p].b))
              .requires_grad_() for p in shapes}
    mult = {p: r ** -float(abc[p].a) for p in shapes}
    opt = torch.optim.Adam([{"params": [params[p]], "lr": 1e-2 * r ** -float(abc[p].c)}
                            for p in shapes])

    def forward():
        h = torch.relu(mult["W0"] * x @ params["W0"].t())
        w_hat = F.batch_norm(params["A"].reshape(1, n, -1), None, None, training=True,
                             momentum=0.0, eps=1e-6).reshape_as(params["A"])
        a_out = mult["A"] * h @ w_hat.t()
        return a_out, mult["W1"] * torch.relu(a_out) @ params["W1"].t()

    before = forward()[0].detach()
    for _ in range(3):
        opt.zero_grad()
        ((forward()[1] - target) ** 2).mean().backward()
        opt.step()
    return float((forward()[0].detach() - before).pow(2).mean().sqrt())


def test_the_derived_lr_keeps_the_standardised_layers_output_change_width_independent():
    torch = pytest.importorskip("torch")
    mup = tp.derive(_program(), "adam").abc
    widths = [64, 128, 256, 512]
    assert abs(_slope(widths, [_output_change(torch, n, mup) for n in widths])) < 0.15
    # a width-independent LR (c = 0): the step grows against the row's fixed std, and A's own
    # update moves its output as n^(1/2)
    fixed = dict(mup, A=ABC(HALF, ZERO, ZERO))
    assert _slope(widths, [_output_change(torch, n, fixed) for n in widths]) > 0.3


def test_the_infinite_width_limits_refuse_a_standardised_weight():
    np = pytest.importorskip("numpy")
    from tensorprog.limits.nngp import nngp_kernel

    with pytest.raises(tp.TensorProgError, match="param A is standardised: the infinite-width "
                                                 "limits here have no rule"):
        nngp_kernel(_program(), np.zeros((2, 16)))


@pytest.mark.parametrize(("optimizer", "k"), [("sgd", 2), ("adam", 1)])
def test_the_symmetry_b_plus_theta_c_plus_k_theta_holds_over_training_not_only_a_step(
        optimizer, k):
    """Ŵ is scale-invariant in W: W's init times s and its LR times s^k (SGD: the gradient
    reaching W is s^-1 times; Adam: the step is the LR's) give the same trajectory of Ŵ,
    step after step, up to eps: the symmetry (a, b+θ, c+kθ) is exact, where its map to the
    plain (a, 0, c − k·b) is to first order in a step."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(16, m, generator=gen, dtype=torch.float64) for m in (8, 3))
    w0, v = torch.randn(32, 8, generator=gen, dtype=torch.float64), \
        torch.randn(3, 32, generator=gen, dtype=torch.float64) / 32

    def std(w):
        return F.batch_norm(w.reshape(1, 32, -1), None, None, training=True,
                            eps=1e-12).reshape_as(w)

    def trained(s):
        w = (s * w0).requires_grad_()
        opt = torch.optim.SGD([w], lr=1e-2 * s ** k) if optimizer == "sgd" else \
            torch.optim.Adam([w], lr=1e-2 * s, eps=1e-30)
        for _ in range(10):
            opt.zero_grad()
            ((F.relu(x @ std(w).T) @ v.T - y) ** 2).mean().backward()
            opt.step()
        return std(w).detach()

    base = trained(1.0)
    assert (base - std(w0)).abs().max() > 1e-3  # Ŵ moved: the invariance is not vacuous
    for s in (0.1, 10.0):
        torch.testing.assert_close(trained(s), base, rtol=0, atol=1e-8)
