"""The µ-limit of SGD training (tensorprog/mulimit.py) against independent oracles: TP4's exact
moment recursion for the linear network, and the emitted module trained at finite widths, which
must approach the limit as n^-1/2 (µP) while NTP's features freeze. Fixed seeds throughout; the
Monte Carlo sample counts and tolerances are stated at each check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, mlp_source, run_cli

import tensorprog as tp
from tensorprog.errors import UsageError
from tensorprog.limits.linear import exact_linear_limit, linear_limit
from tensorprog.limits.mu import finite_training, mu_limit
from tensorprog.limits.ntk import ntk_limit

EX = ROOT / "examples"

ONE_LAYER = """width n = 16
dim d = 4
dim o = 2
input x : [d]
param W1 : [n, d]
param W2 : [o, n]
h = W1 @ x
z = identity(h)
output y = W2 @ z
"""


# small matmuls: torch's thread pool only adds contention on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


def batch(p: int, d: int, d_out: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((p, d)), rng.standard_normal((p, d_out))


def rms(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_linear_network_matches_tp4s_exact_moment_recursion():
    program = tp.parse(ONE_LAYER)
    x, y = batch(3, 4, 2)
    exact = linear_limit(program, x, y, steps=5, lr=0.2)
    mc = mu_limit(program, x, y, steps=5, lr=0.2, samples=2**16)
    assert np.abs(exact[-1] - exact[0]).max() > 0.5  # it learns something
    # Monte Carlo error: √base · sd(v z) / √samples ≈ 4 / 256
    np.testing.assert_allclose(mc.outputs, exact, atol=0.05)


def test_exact_linear_limit_is_tp4s_recursion_at_depth_one():
    program = tp.parse(ONE_LAYER)
    x, y = batch(3, 4, 2)
    np.testing.assert_allclose(
        exact_linear_limit(program, x, y, steps=5, lr=0.2),
        linear_limit(program, x, y, steps=5, lr=0.2),
        atol=1e-12,
    )


@pytest.mark.parametrize("biases", [False, True])
def test_monte_carlo_agrees_with_the_exact_limit_of_a_deep_linear_network(biases):
    """3 hidden layers, 3 steps at lr 0.02. Monte Carlo over 2^15 draws: over Monte Carlo seeds
    0..4 the largest error was 0.03 to 0.07 (0.05 to 0.11 with biases) for outputs that move by
    1; it shrinks as samples^-1/2 (0.44, 0.125, 0.02 at 2^14, 2^16, 2^18 for a faster-moving
    case)."""
    program = tp.parse(mlp_source(3, biases=biases, width=16).replace("relu", "identity"))
    x, y = batch(4, 5, 3)
    exact = exact_linear_limit(program, x, y, steps=3, lr=0.02)
    mc = mu_limit(program, x, y, steps=3, lr=0.02, samples=2**15).outputs
    assert np.abs(exact[-1] - exact[0]).max() > 0.9  # it learns
    np.testing.assert_allclose(mc, exact, atol=0.15)


def test_deep_linear_network_finite_widths_converge_and_the_z_dot_terms_matter():
    """A 3-hidden-layer linear network (n × n weights W2, W3), 3 steps: the error at 1024 is
    about √8 = 2.8 times smaller than at 128 (∝ n^-1/2; measured 0.187 → 0.068). With TP4's Ż
    terms zeroed, the error at 1024 is 0.14 and stalls: the bound 0.1 catches a missing Ż."""
    program = tp.parse(mlp_source(3, width=16).replace("relu", "identity"))
    x, y = batch(4, 5, 3)
    limit = mu_limit(program, x, y, steps=3, lr=0.05, samples=2**14)
    err = [
        rms(finite_training(program, x, y, n, steps=3, lr=0.05, seeds=range(4))[0], limit.outputs)
        for n in (128, 1024)
    ]
    assert err[1] < err[0] / 2 and err[1] < 0.1, err


def test_deep_relu_mlp_converges_its_features_move_and_ntp_freezes_them():
    """A 2-hidden-layer relu MLP with biases, 3 steps: ∝ n^-1/2 gives a ratio of 2.8 between
    widths 128 and 1024; µP's features move by the limit's amount, NTP's shrink as n^-1/2."""
    program = tp.parse(mlp_source(2, biases=True, width=16))
    x, y = batch(4, 5, 3)
    limit = mu_limit(program, x, y, steps=3, lr=0.1, samples=2**14)
    assert min(v[-1] for v in limit.feature_change.values()) > 0.01  # features move
    err, move = {}, {}
    for n in (128, 1024):
        out, mv = finite_training(program, x, y, n, steps=3, lr=0.1, seeds=range(3))
        err[n] = rms(out, limit.outputs)
        move["mup", n] = mv["h2"].mean(0)[-1]
        move["ntp", n] = finite_training(
            program, x, y, n, steps=3, lr=0.1, seeds=range(3), param="ntp"
        )[1]["h2"].mean(0)[-1]
    assert err[1024] < err[128] / 2, err
    assert abs(move["mup", 1024] / limit.feature_change["h2"][-1] - 1) < 0.15
    assert 0.25 < move["ntp", 1024] / move["ntp", 128] < 0.5  # n^-1/2: 0.35


def test_gated_mlp_converges_to_its_limit():
    program = tp.parse((EX / "gated_mlp.tp").read_text())
    x, y = batch(3, 16, 4)
    limit = mu_limit(program, x, y, steps=2, lr=0.1, samples=2**14)
    err = [
        rms(finite_training(program, x, y, n, steps=2, lr=0.1, seeds=range(3))[0], limit.outputs)
        for n in (128, 1024)
    ]
    assert err[1] < err[0] / 2, err  # n^-1/2: 2.8


def test_ntp_outputs_follow_the_ntk_of_the_kernel_regime():
    """NTP's limit (the contrast): f_t = y + (I - ηΘ/B)^t (f_0 - y) from each network's own
    f_0. Measured errors 0.085, 0.028, 0.011 at widths 128, 1024, 8192 (∝ n^-1/2: 2.8 per 8×);
    the finite networks' own first step, -ΔF/η, matches Θχ to the seeds' spread."""
    program = tp.parse(mlp_source(2, biases=True, width=16))
    x, y = batch(4, 5, 3)
    regime = ntk_limit(program, x, samples=2**14)
    err = []
    for n in (128, 1024):
        out, _ = finite_training(program, x, y, n, steps=4, lr=0.05, seeds=range(3), param="ntp")
        kernel = np.stack([regime.outputs(o[0], y, steps=4, lr=0.05) for o in out])
        assert np.abs(out[:, -1] - out[:, 0]).mean() > 0.2  # the outputs move by Θ(1)
        err.append(rms(out, kernel))
    assert err[1] < err[0] / 2 and err[1] < 0.05, err


def test_bad_targets_are_usage_errors():
    with pytest.raises(UsageError, match=r"targets: expected a finite \(2, 2\) array"):
        mu_limit(tp.parse(ONE_LAYER), batch(2, 4, 2)[0], np.zeros((2, 3)))


def test_cli_train_text_json_and_saved_outputs(capsys, tmp_path):
    import torch

    x, y = batch(3, 16, 4)
    torch.save(torch.as_tensor(x), tmp_path / "X.pt")
    np.save(tmp_path / "Y.npy", y)
    base = [
        "limit",
        str(EX / "gated_mlp.tp"),
        "--train",
        "--inputs",
        str(tmp_path / "X.pt"),
        "--targets",
        str(tmp_path / "Y.npy"),
        "--steps",
        "2",
        "--samples",
        "512",
    ]
    code, out, _ = run_cli(capsys, *base, "-o", str(tmp_path / "F.pt"))
    assert code == 0 and "µ-limit of gated_mlp under µP" in out and "g_1:" in out, out
    code, out, _ = run_cli(capsys, *base, "--json")
    data = json.loads(out)
    assert code == 0 and np.shape(data["outputs"]) == (3, 3, 4) and data["samples"] == 512
    assert data["loss"][2] < data["loss"][0] and not data["diverged"]
    saved = torch.load(tmp_path / "F.pt", weights_only=True)["outputs"]
    np.testing.assert_allclose(saved.numpy(), data["outputs"])  # one seed, one answer
    code, out, _ = run_cli(capsys, *base, "--lr", "1000")  # a step far too large: said, not hidden
    assert code == 0 and "warning: the loss grows from" in out and "lower --lr" in out, out


def test_cli_train_under_ntp_gives_the_kernel_regime(capsys, tmp_path):
    x, y = batch(3, 16, 4)
    np.save(tmp_path / "X.npy", x)
    np.save(tmp_path / "Y.npy", y)
    code, out, _ = run_cli(
        capsys,
        "limit",
        str(EX / "gated_mlp.tp"),
        "--train",
        "--param",
        "ntp",
        "--inputs",
        str(tmp_path / "X.npy"),
        "--targets",
        str(tmp_path / "Y.npy"),
        "--samples",
        "1024",
        "--lr",
        "0.05",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["regime"] == "kernel (NTP)" and np.shape(data["ntk"]) == (3, 3)
    mean, std = np.array(data["mean"]), np.array(data["std"])
    assert np.all(mean[0] == 0) and np.all(std[0] > 0)  # f_0: a centred Gaussian process
    assert np.abs(mean[-1] - y).mean() < np.abs(y).mean()  # the mean moves towards y




DEEP_RELU = """width n = 64
dim d = 4
dim o = 1
input x : [d]
param W1 : [n, d]
param W2 : [n, n]
param W3 : [o, n]
h1 = W1 @ x
x1 = relu(h1)
h2 = W2 @ x1
x2 = relu(h2)
output y = W3 @ x2
"""


def test_a_limit_that_leaves_float64_stops_there_and_says_it_diverged(capsys, tmp_path):
    """At lr 4 the Z-variables overflow float64 within 12 steps: the limit keeps the finite
    steps and says where it diverged (before, eigh raised LinAlgError on the inf covariance)."""
    import torch

    program = tmp_path / "deep.tp"
    program.write_text(DEEP_RELU)
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randn(4, 4, generator=gen), tmp_path / "X.pt")
    torch.save(torch.randn(4, 1, generator=gen), tmp_path / "Y.pt")
    args = ["limit", str(program), "--train", "--inputs", str(tmp_path / "X.pt"), "--targets",
            str(tmp_path / "Y.pt"), "--samples", "256", "--steps", "12", "--lr", "4"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "diverged: the limit's values leave float64's range at step" in out, out
    code, out, _ = run_cli(capsys, *args, "--json")
    data = json.loads(out)
    assert data["diverged"] and data["stopped"] is not None
    assert len(data["outputs"]) == data["stopped"] and np.all(np.isfinite(data["outputs"]))
