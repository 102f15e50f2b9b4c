"""The µ-limit of training: a one-hidden-layer MLP's outputs after t SGD steps as n → ∞ under µP.

For ``h = W1 @ x (+ b1); z = φ(h); y = W2 @ z`` under the µP the emitted module uses (SGD, table3:
W1 and b1 at init variance 1/fan_in and LR η·n/base, W2 at init variance base/n² and LR
η·base/n), every hidden coordinate i is a *particle* (u_i, β_i, v_i) = (row i of W1, b1_i,
column i of W2 · n/√base), iid at init with u ~ N(0, I/d), β ~ N(0, 1), v ~ N(0, I). Then

    f(ξ) = √base · E[v φ(u·ξ + β)]                       (+ O(n^-1/2) at a finite width)
    χ_b = (f(ξ_b) - y_b) / B                               (loss ½ mean_b ‖f(ξ_b) - y_b‖²)
    Δv = -η √base Σ_b χ_b φ(h_b),   Δu = -η/√base Σ_b (χ_b·v) φ'(h_b) ξ_b,   Δβ likewise with 1,

with no width left in it: this is the master theorem's limit (TP4 §5–6) of a network whose only
n × n-free matrices are the input and output weights, so every Z-variable is a function of the
particle and no Ż correction appears. It is computed by Monte Carlo over ``samples`` particles
(error O(samples^-1/2), stated). For φ = identity without bias, :func:`linear_limit` gives TP4's
exact limit of the linear network as a recursion on the moments E[vuᵀ], E[vvᵀ], E[uuᵀ].

Deeper MLPs (whose n × n weights bring TP4's Ż terms) are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EngineError, UsageError
from .ir import LinComb, MatMul, Nonlin, Program
from .limit import _FNS, _frac, _inputs


@dataclass
class MLP1:
    """The parts of a one-hidden-layer MLP program."""

    x: str
    w1: str
    bias: str | None
    fn: str
    w2: str
    d_out: int


def _shape(program: Program) -> MLP1:
    body = list(program.body)
    refuse = EngineError(
        "the µ-limit of training is implemented for one-hidden-layer MLPs only: "
        "h = W1 @ x (+ b); z = φ(h); output y = W2 @ z",
        body[0].span if body else None,
        help="deeper MLPs need TP4's Ż terms, which are not implemented; use nngp_kernel for "
             "the limit at init")
    if len(program.inputs) != 1 or not 3 <= len(body) <= 4:
        raise refuse
    x = program.inputs[0].name
    first, *mid, act, last = body
    bias = None
    if mid:
        (lc,) = mid
        names = [n for _, n in lc.terms] if isinstance(lc, LinComb) else []
        if (len(names) != 2 or names[0] != first.out or any(c != 1 for c, _ in lc.terms)
                or names[1] not in program.param_table):
            raise refuse
        bias = names[1]
    pre = mid[0].out if mid else getattr(first, "out", None)
    ok = (isinstance(first, MatMul) and first.arg == x and not first.transposed
          and isinstance(act, Nonlin) and act.fn in _FNS and act.args == (pre,)
          and isinstance(last, MatMul) and last.arg == act.out and not last.transposed
          and program.outputs == (last.out,) and last.weight != first.weight
          and program.is_infinite(first.out) and not program.is_infinite(last.out))
    if not ok:
        raise refuse
    d_out = program.dim(program.value_dims[last.out]).size
    return MLP1(x, first.weight, bias, act.fn, last.weight, d_out)


def _check_mup(program: Program, net: MLP1, abc) -> None:
    """The particle dynamics above is µP's (SGD, table3): refuse other exponents."""
    want = {net.w1: (0, 0, -1), net.w2: (0, 1, 1)}
    if net.bias:
        want[net.bias] = (0, 0, -1)
    for p, (a, b, c) in want.items():
        x = abc[p]
        got = tuple(_frac(v) for v in (x.a, x.b, x.c))
        # an abc-symmetric equivalent (a + θ, b - θ, c - 2θ) gives the same dynamics
        theta = got[0] - a if None not in got else None
        if theta is None or got != (a + theta, b - theta, c - 2 * theta):
            raise EngineError(f"{p} has (a, b, c) = {tuple(str(v) for v in got)}, not µP's for "
                              "SGD: the µ-limit computed here is µP's",
                              program.param_table[p].span,
                              help="compute it for the module emitted with --param mup "
                                   "--optimizer sgd")


def _targets(targets, count: int, d_out: int) -> np.ndarray:
    y = np.asarray(targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets,
                   dtype=np.float64)
    if y.ndim == 1 and d_out == 1:
        y = y[:, None]
    if y.shape != (count, d_out) or not np.all(np.isfinite(y)):
        raise UsageError(f"targets: expected a finite ({count}, {d_out}) array, got shape "
                         f"{tuple(y.shape)}", help="one row of targets per input point")
    return y


def _derivative(fn: str):
    d = {"identity": lambda h: np.ones_like(h),
         "relu": lambda h: (h > 0).astype(h.dtype),
         "tanh": lambda h: 1.0 - np.tanh(h) ** 2}
    if fn in d:
        return d[fn]
    f = _FNS[fn].f
    return lambda h: (f(h + 1e-5) - f(h - 1e-5)) / 2e-5  # smooth: central differences


@dataclass
class TrainingLimit:
    """``outputs[t]``: the limit of f_t on the training batch, t = 0..steps; ``feature_change``
    [t]: RMS over particles and inputs of h_t - h_0 (Θ(1): feature learning)."""

    outputs: np.ndarray
    feature_change: np.ndarray
    samples: int
    method: str


def mu_limit(program: Program, inputs, targets, *, steps: int = 5, lr: float = 0.1,
             samples: int = 2**16, seed: int = 0) -> TrainingLimit:
    """The µ-limit of SGD on a fixed batch (full-batch steps, loss ½ mean ‖f - y‖²) for a
    one-hidden-layer MLP under µP, by Monte Carlo over ``samples`` particles."""
    from .codegen import parametrization
    from .optimizers import OPTIMIZERS

    net = _shape(program)
    abc, _ = parametrization(program, OPTIMIZERS["sgd"], "mup")
    _check_mup(program, net, abc)
    xi = _inputs(program, inputs)[net.x]
    y = _targets(targets, len(xi), net.d_out)
    base = program.width.base
    rng = np.random.default_rng(seed)
    d = xi.shape[1]
    u = rng.standard_normal((samples, d)) / math.sqrt(d)
    beta = rng.standard_normal(samples) if net.bias else np.zeros(samples)
    v = rng.standard_normal((samples, net.d_out))
    phi, dphi = _FNS[net.fn].f, _derivative(net.fn)
    h0 = xi @ u.T + beta  # (B, N)
    outs, moves = [], []
    for t in range(steps + 1):
        h = xi @ u.T + beta
        z = phi(h)
        f = math.sqrt(base) * z @ v / samples  # (B, d_out)
        outs.append(f)
        moves.append(float(np.sqrt(np.mean((h - h0) ** 2))))
        if t == steps:
            break
        chi = (f - y) / len(xi)  # (B, d_out)
        back = (chi @ v.T) * dphi(h)  # (B, N): χ_b·v_i φ'(h_bi)
        v = v - lr * math.sqrt(base) * z.T @ chi
        u = u - lr / math.sqrt(base) * back.T @ xi
        if net.bias:
            beta = beta - lr / math.sqrt(base) * back.sum(0)
    return TrainingLimit(np.stack(outs), np.array(moves), samples,
                         f"Monte Carlo over {samples} particles (error O(1/√{samples}))")


def linear_limit(program: Program, inputs, targets, *, steps: int = 5,
                 lr: float = 0.1) -> np.ndarray:
    """TP4's exact µ-limit of the linear one-hidden-layer network (φ = identity, no bias):
    f = √base M ξ with M = E[v uᵀ], Q = E[v vᵀ], S = E[u uᵀ] updated in closed form."""
    net = _shape(program)
    if net.fn != "identity" or net.bias:
        raise EngineError("linear_limit needs φ = identity and no bias",
                          program.body[0].span, help="use mu_limit for the general case")
    xi = _inputs(program, inputs)[net.x]
    y = _targets(targets, len(xi), net.d_out)
    rb = math.sqrt(program.width.base)
    d = xi.shape[1]
    m, q, s = np.zeros((net.d_out, d)), np.eye(net.d_out), np.eye(d) / d
    a, c = lr * rb, lr / rb
    outs = []
    for t in range(steps + 1):
        f = rb * xi @ m.T
        outs.append(f)
        if t == steps:
            break
        g = ((f - y) / len(xi)).T @ xi  # Σ_b χ_b ξ_bᵀ
        m, q, s = (m - c * q @ g - a * g @ s + a * c * g @ m.T @ g,
                   q - a * (g @ m.T + m @ g.T) + a * a * g @ s @ g.T,
                   s - c * (g.T @ m + m.T @ g) + c * c * g.T @ q @ g)
    return np.stack(outs)


def finite_training(program: Program, inputs, targets, width: int, *, steps: int = 5,
                    lr: float = 0.1, seeds=range(4),
                    param: str = "mup") -> tuple[np.ndarray, np.ndarray]:
    """The emitted module trained the same way at a finite width: its outputs (seeds, steps + 1,
    B, d_out) and the RMS change of its pre-activations h_t - h_0 (seeds, steps + 1), for
    comparison with :func:`mu_limit`. Imports torch."""
    import torch

    from .codegen import emit, parametrization
    from .coordcheck import load_module
    from .optimizers import OPTIMIZERS

    net = _shape(program)
    xi = torch.as_tensor(_inputs(program, inputs)[net.x])
    y = torch.as_tensor(_targets(targets, len(xi), net.d_out))
    abc, label = parametrization(program, OPTIMIZERS["sgd"], param)
    module = load_module(emit(program, abc, optimizer="sgd", label=label,
                              command="tensorprog limit"), f"mulimit_{program.name}")
    pre = program.body[1].out if net.bias else program.body[0].out
    out, moves = [], []
    for seed in seeds:
        model = module.Model(width, dtype=torch.float64)
        model.reset_parameters(generator=torch.Generator().manual_seed(int(seed)))
        opt = module.make_optimizer(model, lr, "sgd")
        run, move, h0 = [], [], None
        for t in range(steps + 1):
            values = model.vectors(xi)
            f = values[program.outputs[0]]
            h = values[pre].detach()
            h0 = h if h0 is None else h0
            run.append(f.detach().numpy())
            move.append(float((h - h0).pow(2).mean().sqrt()))
            if t == steps:
                break
            opt.zero_grad()
            (0.5 * ((f - y) ** 2).sum(-1).mean()).backward()
            opt.step()
        out.append(np.stack(run))
        moves.append(move)
    return np.stack(out), np.array(moves)

