"""The infinite-width limit at init (tensorprog/limit.py) against independent oracles: the
arc-cosine recursion written out here, Monte Carlo over Gaussians, neural-tangents (if installed),
and the emitted module at finite widths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT, mlp_source, run_cli

import tensorprog as tp
from tensorprog.errors import UsageError
from tensorprog.ir.program import INSTRUCTIONS
from tensorprog.limits.nngp import RULES, finite_kernels, nngp_kernel

EX = ROOT / "examples"


def points(p: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((p, d))


def arccos_recursion(x: np.ndarray, depth: int, bias: float) -> np.ndarray:
    """NNGP of a relu MLP with weight variance 1/fan_in and bias variance ``bias``, by Cho &
    Saul's recursion, written independently of the library."""
    k = x @ x.T / x.shape[1] + bias
    for _ in range(depth - 1):
        d = np.sqrt(np.diag(k))
        cos = np.clip(k / np.outer(d, d), -1, 1)
        t = np.arccos(cos)
        k = np.outer(d, d) * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi) + bias
    d = np.sqrt(np.diag(k))
    t = np.arccos(np.clip(k / np.outer(d, d), -1, 1))
    return np.outer(d, d) * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)


# small matmuls: torch's thread pool only adds contention on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_instruction_has_a_rule():
    assert set(RULES) == set(INSTRUCTIONS)


@pytest.mark.parametrize("biases", [False, True])
def test_relu_mlp_is_the_arc_cosine_recursion(biases):
    x = points(6, 5)
    k = nngp_kernel(tp.parse(mlp_source(4, biases=biases)), x)
    assert k.error == 0.0  # every step a closed form
    expected = arccos_recursion(x, 4, 1.0 if biases else 0.0)
    np.testing.assert_allclose(k.kernels["f"], expected, rtol=1e-12)


def test_quadrature_agrees_with_monte_carlo_and_states_its_error():
    src = mlp_source(2).replace("relu(h2)", "tanh(h2)")
    x = points(3, 5)
    k = nngp_kernel(tp.parse(src), x)
    assert "Gauss-Hermite" in k.steps[-1].method and 0 < k.error < 1e-3
    # h2 is Gaussian with the arc-cosine kernel; integrate tanh over it by Monte Carlo
    cov = arccos_recursion(x, 1, 0.0)
    z = np.random.default_rng(1).multivariate_normal(np.zeros(3), cov, size=400_000)
    mc = np.tanh(z).T @ np.tanh(z) / len(z)
    np.testing.assert_allclose(k.kernels["f"], mc, atol=3e-3)


def test_hidden_kernels_agree_under_sp_and_mup_and_the_mup_readout_vanishes():
    x = points(4, 5)
    program = tp.parse(mlp_source(3))
    sp = nngp_kernel(program, x, param="sp", all_vectors=True)
    mup = nngp_kernel(program, x, param="mup", all_vectors=True)
    for name in ("h1", "x1", "h2", "x3"):
        np.testing.assert_allclose(mup.vectors[name], sp.vectors[name], rtol=1e-12)
        assert sp.vector_exponents[name] == mup.vector_exponents[name] == 0
    assert sp.exponents["f"] == 0 and mup.exponents["f"] == -0.5
    assert "vanishes at init" in str(mup) and "(n/64)^-1" in str(mup)
    np.testing.assert_allclose(mup.kernels["f"], sp.kernels["f"])  # the rescaled kernel


RNN = """width n = 64
dim d = 16
dim o = 4
input x1 : [d]
input x2 : [d]
param U : [n, d]
param W : [n, n]
param b : [n]
param Wo : [o, n]
h1 = tanh(U @ x1 + b)
h2 = tanh(W @ h1 + U @ x2 + b)
h3 = tanh(W @ h2 + b)
output y = Wo @ (h2 + h3)
"""


def test_reused_weight_correlates_through_the_kernel_of_its_arguments():
    """W is applied to h1 and to h2, so Z^{Wh1} and Z^{Wh2} are correlated and so are h2 and
    h3: the limit matches the emitted module at a large width, and an untied W would not."""
    data = {"x1": points(3, 16, 1), "x2": points(3, 16, 2)}
    k = nngp_kernel(tp.parse(RNN), data, all_vectors=True)
    f = finite_kernels(tp.parse(RNN), data, 1024, seeds=range(3))
    name = next(v for v in k.vectors if v.startswith("y_"))  # h2 + h3
    err = np.abs(f[name].mean(0) - k.vectors[name]).max()
    assert err < 0.03 * np.abs(k.vectors[name]).max()
    untied = RNN.replace("param b", "param V : [n, n]\nparam b").replace("tanh(W @ h2",
                                                                          "tanh(V @ h2")
    other = nngp_kernel(tp.parse(untied), data, all_vectors=True).vectors[name]
    assert np.abs(other - k.vectors[name]).max() > 5 * err


def test_finite_widths_converge_at_rate_n_to_the_minus_half():
    """One network's kernel of its last hidden vector differs from the limit by O(n^-1/2)."""
    program = tp.parse(mlp_source(3, biases=True))
    x = points(4, 5)
    limit = nngp_kernel(program, x, all_vectors=True).vectors["x3"]
    widths = [64, 256, 1024]
    errors = []
    for n in widths:
        f = finite_kernels(program, x, n, seeds=range(16))["x3"]
        errors.append(np.mean(np.linalg.norm(f - limit, axis=(1, 2))) / np.linalg.norm(limit))
    slope = np.polyfit(np.log(widths), np.log(errors), 1)[0]
    assert abs(slope + 0.5) < 0.15, (slope, errors)


def test_residual_mlp_with_a_gaussian_gain_matches_the_module():
    """relu(g * h) with g an independent Gaussian gain: split on the signs of the factors."""
    program = tp.parse_file(EX / "mlp_resnet.tp")
    x = points(3, 16)
    k = nngp_kernel(program, x, all_vectors=True)
    f = finite_kernels(program, x, 1024, seeds=range(6))
    for name in ("h2_1", "h2"):
        assert np.abs(f[name].mean(0) - k.vectors[name]).max() < 0.05 * np.abs(
            k.vectors[name]).max()


def test_bad_inputs_are_usage_errors():
    program = tp.parse(mlp_source(2))
    with pytest.raises(UsageError, match=r"expected a finite \(P, 5\) array"):
        nngp_kernel(program, points(3, 4))
    with pytest.raises(UsageError, match="no input named z"):
        nngp_kernel(program, {"x": points(3, 5), "z": points(3, 5)})
    with pytest.raises(UsageError, match="unknown parametrization"):
        nngp_kernel(program, points(3, 5), param="xyz")


def test_json_states_method_and_error():
    import json

    k = nngp_kernel(tp.parse(mlp_source(2)), points(2, 5), param="mup")
    out = json.loads(json.dumps(k.as_dict()))
    assert out["outputs"]["f"]["exponent"] == "-1/2"
    assert "vanishes" in out["outputs"]["f"]["status"]
    assert all("method" in s for s in out["method"]) and out["error"] == 0.0


def _stax():
    pytest.importorskip("jax")
    stax = pytest.importorskip("neural_tangents.stax")
    import jax

    jax.config.update("jax_enable_x64", True)
    return stax


def test_agrees_with_neural_tangents_mlp():
    stax = _stax()
    x = points(5, 5)
    layers = []
    for _ in range(3):
        layers += [stax.Dense(512, W_std=1.0, b_std=1.0), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(3, W_std=1.0))
    expected = np.asarray(kernel_fn(x, None, "nngp"))
    ours = nngp_kernel(tp.parse(mlp_source(3, biases=True)), x).kernels["f"]
    np.testing.assert_allclose(ours, expected, rtol=1e-3)


# the identity branch has no Dense layer: its sum with W @ relu(h) is still independent
@pytest.mark.filterwarnings("ignore:`FanIn` layers assume independent inputs")
def test_agrees_with_neural_tangents_residual_mlp():
    stax = _stax()
    x = points(5, 16)
    block = stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(),
                                                       stax.serial(stax.Relu(),
                                                                   stax.Dense(512, W_std=1.0))),
                        stax.FanInSum())
    _, _, kernel_fn = stax.serial(stax.Dense(512, W_std=1.0), block, block,
                                  stax.Dense(4, W_std=1.0))
    expected = np.asarray(kernel_fn(x, None, "nngp"))
    src = (EX / "mlp_resnet.tp").read_text().replace("relu(g * h1)", "relu(h1)")
    src = src.replace("param g : [n]\n", "")
    ours = nngp_kernel(tp.parse(src), x).kernels["y"]
    np.testing.assert_allclose(ours, expected, rtol=1e-3)
    assert math.isfinite(float(ours.sum()))


def test_cli_kernel_json_and_saved_tensor(capsys, tmp_path):
    import json

    import torch

    x = points(3, 5)
    program = tmp_path / "mlp.tp"
    program.write_text(mlp_source(2))
    torch.save(torch.as_tensor(x), tmp_path / "X.pt")
    code, out, _ = run_cli(capsys, "limit", str(program), "--kernel", "--inputs",
                        str(tmp_path / "X.pt"), "--json", "-o", str(tmp_path / "K.pt"))
    assert code == 0
    expected = nngp_kernel(tp.parse(mlp_source(2)), x).kernels["f"]
    np.testing.assert_allclose(json.loads(out)["outputs"]["f"]["kernel"], expected)
    saved = torch.load(tmp_path / "K.pt", weights_only=True)
    np.testing.assert_allclose(saved["kernels"]["f"].numpy(), expected)
    code, out, _ = run_cli(capsys, "limit", str(program), "--kernel", "--inputs",
                        str(tmp_path / "X.pt"), "--param", "mup")
    assert code == 0 and "vanishes at init" in out and "arc-cosine" in out


def test_cli_refusals_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "limit", str(EX / "mlp.tp"), "--kernel", "--inputs",
                        str(tmp_path / "missing.pt"))
    assert code == 2 and "cannot read" in err
    np.save(tmp_path / "X.npy", points(2, 8))
    code, _, err = run_cli(capsys, "limit", str(EX / "transformer.tp"), "--kernel", "--inputs",
                        str(tmp_path / "X.npy"))
    assert code == 2 and "transformer.tp:" in err and "tokens inputs" in err


