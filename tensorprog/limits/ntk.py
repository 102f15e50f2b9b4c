"""The kernel regime: NTP's infinite-width limit of SGD, the contrast to µP's feature learning.

Under NTP (every weight ``W / √fan_in``, a constant LR) the updates move every hidden vector by
O(n^-1/2): in the limit the features stay at init and the outputs evolve linearly with the
neural tangent kernel Θ (Jacot et al. 2018; TP2 for general programs). For full-batch SGD on
½ mean ‖f - y‖²,

    f_{t+1} = f_t - (η / B) Θ (f_t - y),   so   f_t = y + (I - ηΘ/B)^t (f_0 - y),

where f_0 is the network's output at init (a Gaussian process in the limit). Θ is read from the
same Z-variables as the µ-limit (:mod:`tensorprog.limits.dynamics`, at init): with ĝ = √n ∂f/∂h
and x the vector a weight reads, each param contributes its squared gradient times its
learning-rate multiplier, whose powers of n cancel exactly under NTP:

    input row U:  E[ĝ ĝ'] ξ·ξ'        bias:  E[ĝ ĝ']
    hidden W:     base E[ĝ ĝ'] E[x x']   readout:  base E[x x']
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..engine.optimizers import SGD
from ..engine.parametrization import choose
from ..errors import EngineError, UsageError
from ..ir.program import LinComb, MatMul, Program
from ..ir.sizes import check_kernels
from .common import frac, read_inputs
from .dynamics import Dynamics
from .mu import network, read_targets
from .nngp import nngp_kernel

#: (a + b, 2a + c) under NTP for SGD: init 1/√fan_in and updates that move features by O(n^-1/2)
_NTP = {
    "input": (Fraction(0), Fraction(0)),
    "bias": (Fraction(0), Fraction(0)),
    "hidden": (Fraction(1, 2), Fraction(1)),
    "readout": (Fraction(1, 2), Fraction(1)),
}


@dataclass
class KernelRegime:
    """``ntk``: Θ over the batch (B, B), the same for every output coordinate."""

    ntk: np.ndarray
    samples: int
    method: str

    def outputs(self, f0, targets, *, steps: int, lr: float) -> np.ndarray:
        """f_t for t = 0..steps from the network's own f_0 (B, d_out): (steps + 1, B, d_out)."""
        f = np.asarray(f0, dtype=np.float64)
        y = read_targets(targets, len(self.ntk), f.shape[-1])
        step = np.eye(len(self.ntk)) - lr * self.ntk / len(self.ntk)
        outs = [f]
        for _ in range(steps):
            outs.append(y + step @ (outs[-1] - y))
        return np.stack(outs)

    def distribution(
        self, program: Program, inputs, targets, *, steps: int, lr: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The limit over inits: f_0 is a Gaussian process with the NNGP kernel K of the
        output (per coordinate), and f_t = y + A^t (f_0 - y) with A = I - ηΘ/B is linear in
        it, so E[f_t] = y - A^t y and Var f_t(ξ_b) = (A^t K A^tᵀ)_bb: (steps + 1, B, d_out)
        means and (steps + 1, B) standard deviations."""
        check_kernels(len(self.ntk), 3, steps)  # Θ, K and A^t, and three B × B products a step
        kernel = nngp_kernel(program, inputs, param="ntp", optimizer="sgd")
        (k,) = kernel.kernels.values()
        y = read_targets(
            targets, len(self.ntk), program.dim(program.value_dims[program.outputs[0]]).size
        )
        a = np.eye(len(self.ntk)) - lr * self.ntk / len(self.ntk)
        means, stds, power = [], [], np.eye(len(self.ntk))
        for _ in range(steps + 1):
            means.append(y - power @ y)
            stds.append(np.sqrt(np.clip(np.diag(power @ k @ power.T), 0, None)))
            power = a @ power
        return np.stack(means), np.stack(stds)


def ntk_limit(program: Program, inputs, *, samples: int = 2**14, seed: int = 0) -> KernelRegime:
    """Θ of the module emitted with ``--param ntp --optimizer sgd``, by Monte Carlo over
    ``samples`` draws of the Z-variables at init. Imports torch."""
    import torch  # heavy: imported only when the NTK is computed

    net = network(program)
    abc = choose(program, SGD, "ntp", depth_convention=None).abc
    for p, role in net.roles.items():
        x = abc[p]
        a, b, c = (frac(v) for v in (x.a, x.b, x.c))
        if None in (a, b, c) or (a + b, 2 * a + c) != _NTP[role]:
            raise EngineError(
                f"{p} ({role}) is not in NTP's kernel regime",
                program.param_table[p].span,
                help="the NTK is NTP's",
            )
    if samples < 2:
        raise UsageError(f"samples {samples}: need at least 2")
    xi = read_inputs(program, inputs)[net.x]
    dyn = Dynamics(program, net, xi, 0.0, samples, seed)
    z = dyn.forward()
    chi = torch.zeros((len(xi), net.d_out), dtype=dyn.dt)
    chi[:, 0] = 1.0  # one output coordinate: ĝ of output 0 at every input
    g, _ = dyn.backward(z, chi, record=False)
    base, n = dyn.base, samples

    def second(u):  # E[Z^u Z^u'] over the batch
        u = u.detach()
        return (u.T @ u / n).numpy()

    theta = np.zeros((len(xi), len(xi)))
    for ins in net.body:
        if isinstance(ins, MatMul):
            role = net.roles[ins.weight]
            if role == "readout":
                theta += base * second(z[ins.arg])
            elif ins.out in g:
                gg = second(g[ins.out]) / base  # ĝ = g / √base: the engine's readout is µP's
                theta += gg * (xi @ xi.T if role == "input" else base * second(z[ins.arg]))
        elif isinstance(ins, LinComb) and ins.out in g:
            gg = second(g[ins.out]) / base
            theta += sum(float(c) ** 2 for c, v in ins.terms if v in dyn.particles) * gg
    return KernelRegime(
        theta, samples, f"Monte Carlo over {samples} draws at init (error O(1/√{samples}))"
    )
