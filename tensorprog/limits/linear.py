"""TP4's exact µ-limit of linear networks: no Monte Carlo, every Z-variable a linear form.

When every nonlinearity is the identity, every Z-variable of :mod:`tensorprog.limits.mu`'s
dynamics is a linear combination of finitely many Gaussians: the input rows u, the biases β,
the readout columns v and the Ẑ^{W x}, Ẑ^{Wᵀ g} of every hidden matrix. Keeping each Z as its
vector of coefficients c over those Gaussians (whose covariance Σ is built as they appear) makes
every quantity of the master theorem exact: E[Z Z'] = cᵀ Σ c' and E[∂Z / ∂Ẑ_k] = c_k. This is
TP4's exact limit of a deep linear network, computed without sampling and without autograd, so
it checks the Monte Carlo engine (its sampling, its conditional Gaussians and its derivative
expectations); :func:`linear_limit` is TP4's closed-form moment recursion for one hidden layer.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import EngineError
from ..ir.program import LinComb, MatMul, Nonlin, Program
from .common import read_inputs
from .mu import network, read_targets


class _Gaussians:
    """Named centred Gaussians, their covariance Σ grown block by block."""

    def __init__(self):
        self.sigma = np.zeros((0, 0))

    @property
    def count(self) -> int:
        return len(self.sigma)

    def new(self, cov: np.ndarray, cross: list[tuple[slice, np.ndarray]] = ()) -> slice:
        """k new Gaussians of covariance ``cov``, correlated with earlier ones only through
        ``cross`` (their covariance with an earlier block)."""
        m, k = self.count, len(cov)
        sigma = np.zeros((m + k, m + k))
        sigma[:m, :m], sigma[m:, m:] = self.sigma, cov
        for block, c in cross:
            sigma[m:, block], sigma[block, m:] = c, c.T
        self.sigma = sigma
        return slice(m, m + k)

    def pad(self, c: np.ndarray) -> np.ndarray:
        return np.pad(c, ((0, 0), (0, self.count - c.shape[1])))

    def cov(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self.pad(a), self.pad(b)
        return a @ self.sigma @ b.T


def exact_linear_limit(
    program: Program, inputs, targets, *, steps: int = 5, lr: float = 0.1
) -> np.ndarray:
    """The exact µ-limit of a linear MLP-family program (every nonlinearity the identity, any
    depth, biases allowed) after t = 0..steps SGD steps: (steps + 1, B, d_out)."""
    net = network(program)
    for ins in net.body:
        if isinstance(ins, Nonlin) and ins.fn != "identity":
            raise EngineError(
                f"{ins.fn} is not linear: the exact limit needs every "
                "nonlinearity to be the identity",
                ins.span,
                help="use mu_limit (Monte Carlo) for nonlinear networks",
            )
    xi = read_inputs(program, inputs)[net.x]
    y = read_targets(targets, len(xi), net.d_out)
    base, batch = program.width.base, len(xi)
    rb = math.sqrt(base)
    gs = _Gaussians()
    particles = {}  # coefficient matrices: rows per coordinate of the particle
    for p, role in net.roles.items():
        if role == "input":
            d = xi.shape[1]
            particles[p] = np.eye(gs.new(np.eye(d) / d).stop)[-d:]
        elif role == "bias":
            particles[p] = np.eye(gs.new(np.eye(1)).stop)[-1:]
        elif role == "readout":
            o = net.d_out
            particles[p] = np.eye(gs.new(np.eye(o)).stop)[-o:]
    fwd = {p: [] for p, r in net.roles.items() if r == "hidden"}  # (slice, X) per step
    bwd = {p: [] for p in fwd}  # (slice, G) per step
    outs = []
    for t in range(steps + 1):
        z = {}
        for ins in net.body:
            if isinstance(ins, MatMul):
                role, w = net.roles[ins.weight], ins.weight
                if role == "input":
                    z[ins.out] = xi @ gs.pad(particles[w])  # (B, m): Z^{u·ξ_b}
                elif role == "readout":
                    z[ins.out] = rb * gs.cov(z[ins.arg], particles[w])  # (B, d_out)
                else:
                    x = z[ins.arg]
                    new = gs.new(gs.cov(x, x), [(s, gs.cov(x, xs)) for s, xs in fwd[w]])
                    h = np.eye(gs.count)[new]  # Ẑ^{W x_t}
                    for (s, gb), (_, xs) in zip(bwd[w], fwd[w], strict=True):
                        # Ż: E[∂Z^{x_t} / ∂Ẑ^{Wᵀ g_s}] is x_t's coefficient on that Ẑ
                        h = h + gs.pad(x)[:, s] @ gs.pad(gb) - lr * gs.cov(x, xs) @ gs.pad(gb)
                    fwd[w].append((new, x))
                    z[ins.out] = h
            elif isinstance(ins, LinComb):
                z[ins.out] = sum(
                    float(c) * gs.pad(particles[v] if v in particles else z[v])
                    for c, v in ins.terms
                )
            else:
                z[ins.out] = z[ins.args[0]]
        f = z[net.output]
        outs.append(f)
        if t == steps:
            break
        chi = (f - y) / batch
        g, grads = {}, {}
        for ins in reversed(net.body):
            go = g.get(ins.out)
            if isinstance(ins, MatMul):
                role, w = net.roles[ins.weight], ins.weight
                if role == "readout":
                    g[ins.arg] = rb * chi @ gs.pad(particles[w])
                    grads[w] = chi.T @ gs.pad(z[ins.arg])
                elif go is None:
                    continue
                elif role == "input":
                    grads[w] = xi.T @ gs.pad(go)
                else:
                    new = gs.new(gs.cov(go, go), [(s, gs.cov(go, gp)) for s, gp in bwd[w]])
                    back = np.eye(gs.count)[new]
                    for s, xs in fwd[w]:  # every forward Ẑ of W so far, this step's included
                        back = back + gs.pad(go)[:, s] @ gs.pad(xs)
                    for (_, gp), (_, xs) in zip(bwd[w], fwd[w], strict=False):
                        back = back - lr * gs.cov(go, gp) @ gs.pad(xs)
                    bwd[w].append((new, go))
                    g[ins.arg] = back if ins.arg not in g else gs.pad(g[ins.arg]) + back
            elif go is None:
                continue
            elif isinstance(ins, LinComb):
                for c, v in ins.terms:
                    if v in particles:
                        grads[v] = float(c) * go.sum(0, keepdims=True)
                    else:
                        g[v] = float(c) * go if v not in g else gs.pad(g[v]) + float(c) * go
            else:
                g[ins.args[0]] = go if ins.args[0] not in g else gs.pad(g[ins.args[0]]) + go
        for p, dp in grads.items():
            scale = lr * rb if net.roles[p] == "readout" else lr / base
            particles[p] = gs.pad(particles[p]) - scale * gs.pad(dp)
    return np.stack(outs)


def linear_limit(
    program: Program, inputs, targets, *, steps: int = 5, lr: float = 0.1
) -> np.ndarray:
    """TP4's closed-form µ-limit of the linear one-hidden-layer network ``y = V @ (U @ x)``:
    f = √base M ξ with M = E[v uᵀ], Q = E[v vᵀ], S = E[u uᵀ] updated in closed form."""
    net = network(program)
    roles = sorted(net.roles.values())
    linear = all(
        isinstance(i, MatMul) or (isinstance(i, Nonlin) and i.fn == "identity") for i in net.body
    )
    if roles != ["input", "readout"] or not linear:
        raise EngineError(
            "linear_limit needs y = V @ (U @ x), φ = identity, no bias",
            program.body[0].span,
            help="use exact_linear_limit for deeper ones",
        )
    xi = read_inputs(program, inputs)[net.x]
    y = read_targets(targets, len(xi), net.d_out)
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
        m, q, s = (
            m - c * q @ g - a * g @ s + a * c * g @ m.T @ g,
            q - a * (g @ m.T + m @ g.T) + a * a * g @ s @ g.T,
            s - c * (g.T @ m + m.T @ g) + c * c * g.T @ q @ g,
        )
    return np.stack(outs)
