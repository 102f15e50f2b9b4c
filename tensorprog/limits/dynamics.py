"""The Z-variables of an MLP-family program under µP + SGD, step by step (see
:mod:`tensorprog.limits.mu` for the equations): a forward pass, a backward pass and an update,
each a Monte Carlo draw of every Z-variable, one row per draw.

Every Z is a torch tensor of shape (samples, B), one column per input of the batch. The Gaussians
Ẑ are autograd leaves, and every expectation is computed from detached values, so that
``autograd.grad`` gives the exact partial derivative ∂Z/∂Ẑ of each draw, whose mean is the
E[∂Z/∂Ẑ] of TP4's Ż terms.
"""

from __future__ import annotations

import math

from ..errors import UsageError
from ..ir.functions import MUL, torch_function
from ..ir.program import LinComb, MatMul
from ..ir.sizes import check_draws


class Diverged(ArithmeticError):
    """The Z-variables left float64's range at this step: the limit diverged (an LR too large
    for these inputs). Raised before a Gaussian is drawn from a covariance with inf or nan
    entries, which eigh cannot decompose."""

    def __init__(self, step: int = -1):
        super().__init__(step)
        self.step = step


class _Family:
    """The jointly Gaussian Ẑ^{W u} of one matrix and one side (W or Wᵀ): each new block of
    columns is drawn conditionally on the earlier ones, with Cov = σ² E[Z^u Z^u']."""

    def __init__(self, torch, gen):
        self.torch, self.gen = torch, gen
        self.sources: list = []  # the Z^u (detached), one (N, B) block per draw
        self.leaves: list = []  # the Ẑ, leaves of autograd

    def draw(self, u):
        torch = self.torch
        u = u.detach()
        n = len(u)
        new = u.T @ u / n
        z = torch.randn(u.shape, generator=self.gen, dtype=u.dtype)
        if self.sources:
            old_u = torch.cat(self.sources, 1)
            old_z = torch.cat([leaf.detach() for leaf in self.leaves], 1)
            k_oo, k_no = old_u.T @ old_u / n, u.T @ old_u / n
            a = k_no @ torch.linalg.pinv(k_oo, hermitian=True, rtol=1e-10)
            mean, new = old_z @ a.T, new - a @ k_no.T
        else:
            mean = 0
        cov = (new + new.T) / 2
        if not torch.isfinite(cov).all():  # u, or its second moments, overflowed float64
            raise Diverged  # eigh would fail on it with a LinAlgError
        vals, vecs = torch.linalg.eigh(cov)
        root = vecs * vals.clamp(min=0).sqrt()
        leaf = (mean + z @ root.T).requires_grad_(True)
        self.sources.append(u)
        self.leaves.append(leaf)
        return leaf


def _expected_grad(torch, target, leaves) -> list:
    """E[∂target[:, b] / ∂leaf[:, b']] as a (B', B) matrix per leaf: one autograd pass per b,
    the draws being independent (every expectation in the graph is a constant)."""
    b_count = target.shape[1]
    out = [torch.zeros(leaf.shape[1], b_count, dtype=target.dtype) for leaf in leaves]
    if not leaves or not target.requires_grad:
        return out
    for b in range(b_count):
        grads = torch.autograd.grad(
            target[:, b].sum(), leaves, retain_graph=True, allow_unused=True
        )
        for k, g in enumerate(grads):
            if g is not None:
                out[k][:, b] = g.mean(0)
    return out


def _add(g: dict, name: str, value) -> None:
    g[name] = value if name not in g else g[name] + value


class Dynamics:
    """The state of the limit: the particles (input rows, biases, readout columns), each
    hidden matrix's Gaussian families and its history of (Z^{x_s}, Z^{g_s})."""

    def __init__(self, program, net, xi, lr: float, samples: int, seed: int, steps: int = 0):
        import torch  # heavy: only the limits of training need it, not the kernels at init

        if not 0 <= seed < 2**64:  # torch.Generator.manual_seed raises a bare ValueError
            raise UsageError(f"seed {seed}: must be from 0 to 2**64 - 1",
                             help="the draws come from a torch generator, whose seed is a 64-bit "
                                  "unsigned integer")
        check_draws(samples, len(xi), len(net.body), steps)  # before any draw is allocated
        self.torch, self.net, self.lr, self.n = torch, net, lr, samples
        self.dt = torch.float64
        gen = torch.Generator().manual_seed(seed)
        self.xi = torch.as_tensor(xi, dtype=self.dt)
        self.base = program.width.base
        self.rb = math.sqrt(self.base)
        self.particles = {}
        for p, role in net.roles.items():
            if role == "input":  # base_std² = 1/fan_in, a + b = 0
                d = self.xi.shape[1]
                self.particles[p] = torch.randn(
                    (samples, d), generator=gen, dtype=self.dt
                ) / math.sqrt(d)
            elif role == "bias":
                self.particles[p] = torch.randn((samples, 1), generator=gen, dtype=self.dt)
            elif role == "readout":  # the column of W · n/√base
                self.particles[p] = torch.randn((samples, net.d_out), generator=gen, dtype=self.dt)
        self.fwd = {p: _Family(torch, gen) for p, r in net.roles.items() if r == "hidden"}
        self.bwd = {p: _Family(torch, gen) for p in self.fwd}
        self.hist: dict[str, list] = {p: [] for p in self.fwd}

    def forward(self) -> dict:
        """Every value's Z at the current step; the output's entry is f (B, d_out)."""
        torch, net, n, lr = self.torch, self.net, self.n, self.lr
        z = {net.x: None}
        for ins in net.body:
            if isinstance(ins, MatMul):
                role, w = net.roles[ins.weight], ins.weight
                if role == "input":
                    z[ins.out] = self.particles[w] @ self.xi.T
                elif role == "readout":
                    z[ins.out] = self.rb * (self.particles[w].T @ z[ins.arg]).T / n
                else:
                    u = z[ins.arg]
                    h = self.fwd[w].draw(u)
                    dots = _expected_grad(torch, u, self.bwd[w].leaves)
                    for (xs, gs), d in zip(self.hist[w], dots, strict=True):
                        h = h + gs @ d - lr * gs @ (xs.detach().T @ u.detach() / n)
                    z[ins.out] = h
            elif isinstance(ins, LinComb):
                z[ins.out] = sum(
                    float(c) * (self.particles[v] if v in self.particles else z[v])
                    for c, v in ins.terms
                )
            elif ins.fn == MUL:
                z[ins.out] = z[ins.args[0]] * z[ins.args[1]]
            else:
                z[ins.out] = torch_function(torch, ins.fn)(z[ins.args[0]])
        return z

    def backward(self, z: dict, chi, record: bool = True) -> tuple[dict, dict]:
        """The backward vectors g = n ∂L/∂h of every value for the output cotangent χ (B, d_out),
        and the gradient of each particle; ``record`` keeps them for the next steps' terms."""
        torch, net, n, lr = self.torch, self.net, self.n, self.lr
        g: dict = {}
        grads: dict = {}
        for ins in reversed(net.body):
            go = g.get(ins.out)
            if isinstance(ins, MatMul):
                role, w = net.roles[ins.weight], ins.weight
                if role == "readout":
                    g[ins.arg] = self.rb * self.particles[w] @ chi.T
                    grads[w] = z[ins.arg] @ chi
                elif go is None:
                    continue
                elif role == "input":
                    grads[w] = go @ self.xi
                else:
                    back = self.bwd[w].draw(go)
                    xs_all = [xs for xs, _ in self.hist[w]] + [z[ins.arg]]
                    for xs, d in zip(
                        xs_all, _expected_grad(torch, go, self.fwd[w].leaves), strict=True
                    ):
                        back = back + xs @ d
                    for xs, gs in self.hist[w]:
                        back = back - lr * xs @ (gs.detach().T @ go.detach() / n)
                    if record:
                        self.hist[w].append((z[ins.arg], go))
                    _add(g, ins.arg, back)
            elif go is None:
                continue
            elif isinstance(ins, LinComb):
                for c, v in ins.terms:
                    if v in self.particles:
                        grads[v] = float(c) * go.sum(1, keepdim=True)
                    else:
                        _add(g, v, float(c) * go)
            else:
                # the local derivative, kept differentiable: ∂Z^g/∂Ẑ passes through φ'
                args = [
                    z[a] if z[a].requires_grad else z[a].detach().requires_grad_(True)
                    for a in ins.args
                ]
                out = args[0] * args[1] if ins.fn == MUL else torch_function(torch, ins.fn)(args[0])
                local = torch.autograd.grad(out, args, go, create_graph=True, allow_unused=True)
                for a, d in zip(ins.args, local, strict=True):
                    if d is not None:
                        _add(g, a, d)
        return g, grads

    def update(self, grads: dict) -> None:
        """One SGD step of the particles: µP's LR η·n/base (input rows, biases) and η·base/n
        (readout), in units where the particles are Θ(1)."""
        for p, dp in grads.items():
            scale = self.lr * self.rb if self.net.roles[p] == "readout" else self.lr / self.base
            self.particles[p] = self.particles[p] - scale * dp
