"""The µ-limit of training: an MLP-family program's outputs after t SGD steps as n → ∞ under µP.

The program is read from its IR: input weights (finite fan-in, reading the input), hidden n × n
weights, bias vectors, elementwise nonlinearities and products, sums, and one readout. Under µP
for SGD (checked on every param: the combinations a + b and 2a + c the abc-symmetry leaves
alone) every vector of the trained network has iid coordinates in the limit, distributed as a
Z-variable, and the master theorem (TP4 §§5–7 and its appendix on deep MLPs) builds them, step
by step, on a fixed batch ξ_1..ξ_B (loss ½ mean_b ‖f(ξ_b) - y_b‖², χ_b = (f(ξ_b) - y_b) / B).
With g the backward vectors n·∂L/∂h and W of init variance σ²/n (σ² = 1: 1/fan_in at the base
width, times ratio^-1):

    input weight:  Z^{U_t ξ} = Z^u·ξ - η/base Σ_{s<t,b} Z^{g_sb} ξ_b·ξ       (u a particle)
    hidden W:      Z^{W_t x_t} = Ẑ^{W x_t} + Ż^{W x_t} - η Σ_{s<t,b} Z^{g_sb} E[Z^{x_sb} Z^{x_t}]
                   Ż^{W x_t}   = σ² Σ_{s<t,b} Z^{g_sb} E[∂Z^{x_t} / ∂Ẑ^{Wᵀ g_sb}]
    backward:      Z^{W_tᵀ g_t} = Ẑ^{Wᵀ g_t} + σ² Σ_{s≤t,b} Z^{x_sb} E[∂Z^{g_t} / ∂Ẑ^{W x_sb}]
                                  - η Σ_{s<t,b} Z^{x_sb} E[Z^{g_sb} Z^{g_t}]
    readout:       f_t(ξ) = √base E[Z^v Z^{x_t(ξ)}],  Δv = -η √base Σ_b χ_b Z^{x_b}

The Ẑ^{W x} are jointly Gaussian with Cov = σ² E[Z^x Z^x'], the Ẑ^{Wᵀ g} likewise with the g's,
the two families and different matrices independent. Every expectation is a Monte Carlo mean
over ``samples`` draws of all the Gaussians (error O(samples^-1/2), stated in the result); the
partial derivatives ∂Z/∂Ẑ are exact per draw (torch autograd, with every expectation held
constant). For linear networks, :mod:`tensorprog.limits.linear` computes TP4's exact limit without
sampling (the oracle of the tests).

Refused, with the position: a weight used twice or transposed (reuse brings more Ż terms),
attention, norms, dots, blocks, several inputs or outputs, parametrizations other than µP
(NTP's limit is the kernel regime: its features do not move), and optimizers other than SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..emit.load import load_module
from ..emit.module import emit
from ..engine.optimizers import SGD
from ..engine.parametrization import choose
from ..errors import EngineError, UsageError
from ..ir.functions import MUL
from ..ir.program import LinComb, MatMul, Nonlin, Program
from .common import FNS, frac, read_inputs
from .dynamics import Diverged, Dynamics

#: the (a + b, 2a + c) of a param under µP for SGD, by how its dims scale: those that make
#: every update move every vector by Θ(1) (TP4 §5), invariant under the abc-symmetry
_MU = {
    "input": (Fraction(0), Fraction(-1)),
    "bias": (Fraction(0), Fraction(-1)),
    "hidden": (Fraction(1, 2), Fraction(0)),
    "readout": (Fraction(1), Fraction(1)),
}
_SCOPE = (
    "the µ-limit of training is implemented for MLP-family programs: one input read by "
    "W @ x, hidden n × n matmuls, bias vectors, elementwise nonlinearities and products, "
    "one readout"
)


def _refuse(message: str, span, help: str = "") -> EngineError:
    return EngineError(message, span, help=help or _SCOPE)


@dataclass
class Net:
    """An MLP-family program as the limit reads it: each param's role and the instructions."""

    x: str
    roles: dict[str, str]  # param → input | bias | hidden | readout
    body: tuple
    output: str
    d_out: int
    pre: tuple[str, ...]  # what the nonlinearities read: the features reported


def network(program: Program) -> Net:
    """The program's roles, or a positioned refusal of what the limit does not cover."""
    if len(program.inputs) != 1 or program.inputs[0].kind != "vector":
        raise _refuse(
            "the µ-limit needs exactly one vector input",
            program.inputs[0].span if program.inputs else None,
        )
    if len(program.outputs) != 1:
        raise _refuse("the µ-limit needs exactly one output", program.body[-1].span)
    x, (out,) = program.inputs[0].name, program.outputs
    roles: dict[str, str] = {}
    for ins in program.body:
        if isinstance(ins, MatMul):
            w = program.param_table[ins.weight]
            if ins.transposed or len(program.uses(ins.weight)) > 1:
                raise _refuse(
                    f"{ins.weight} is used more than once or transposed",
                    ins.span,
                    "a reused weight brings more Ż terms than are implemented; "
                    "untie it into one param per use",
                )
            fan_in, fan_out = (
                (program.dim(d).infinite for d in w.shape[::-1])
                if len(w.shape) == 2
                else (None, None)
            )
            if fan_in is False and fan_out and ins.arg == x:
                roles[ins.weight] = "input"
            elif fan_in and fan_out:
                roles[ins.weight] = "hidden"
            elif fan_in and fan_out is False and ins.out == out:
                roles[ins.weight] = "readout"
            else:
                raise _refuse(
                    f"{ins.weight} @ {ins.arg} is not an input layer (finite fan-in "
                    f"reading {x}), a hidden n × n matmul or the readout",
                    ins.span,
                )
        elif isinstance(ins, LinComb):
            if ins.const:
                raise _refuse(f"{ins.out} adds a number to a function of params: gains and "
                              "their functions have no µ-limit rule here", ins.span)
            for _, name in ins.terms:
                p = program.param_table.get(name)
                if p is None:
                    continue
                if (
                    len(p.shape) != 1
                    or not program.dim(p.shape[0]).infinite
                    or p.base is not None
                    or len(program.uses(name)) > 1
                ):
                    raise _refuse(
                        f"{name} is not a Gaussian bias vector of infinite dim used once", ins.span
                    )
                roles[name] = "bias"
        elif not (isinstance(ins, Nonlin) and (ins.fn in FNS or ins.fn == MUL)):
            what = ins.fn if isinstance(ins, Nonlin) else type(ins).__name__
            raise _refuse(f"{what} has no µ-limit rule here", ins.span)
        else:
            for a in ins.args:
                if a in program.param_table or a == x:
                    raise _refuse(
                        f"{a} is a {'param' if a != x else 'input'} inside "
                        f"{ins.fn}: only computed vectors are implemented there",
                        ins.span,
                        "gains and scales have no µ-limit rule here; "
                        "drop the gain to get the limit of the network without it",
                    )
        if ins.out != out and not program.is_infinite(ins.out):
            raise _refuse(f"{ins.out} has a finite dim inside the network", ins.span)
    if "readout" not in roles.values():
        raise _refuse(
            "the output is not a readout matmul of a hidden vector", program.body[-1].span
        )
    if sum(r == "readout" for r in roles.values()) > 1:
        raise _refuse("more than one readout", program.body[-1].span)
    pre = tuple(dict.fromkeys(a for i in program.body if isinstance(i, Nonlin) for a in i.args))
    d_out = program.dim(program.value_dims[out]).size
    return Net(x, roles, tuple(program.body), out, d_out, pre)


def _check_mup(program: Program, net: Net, abc) -> None:
    """The Z-dynamics above are µP's for SGD: refuse any other (a + b, 2a + c)."""
    for p, role in net.roles.items():
        x = abc[p]
        a, b, c = (frac(v) for v in (x.a, x.b, x.c))
        got = None if None in (a, b, c) else (a + b, 2 * a + c)
        if got != _MU[role]:
            shown = tuple(str(v) for v in (x.a, x.b, x.c))
            raise EngineError(
                f"{p} ({role}) has (a, b, c) = {shown}, so (a + b, 2a + c) = "
                f"{'undefined' if got is None else tuple(str(v) for v in got)}; µP for SGD has "
                f"{tuple(str(v) for v in _MU[role])}: the limit computed here is µP's",
                program.param_table[p].span,
                help="compute it for the module emitted with --param mup --optimizer sgd; "
                "under NTP the limit is the kernel regime, where the features do not move",
            )


def read_targets(targets, count: int, d_out: int) -> np.ndarray:
    """``targets`` (numpy or torch) as a finite float64 (count, d_out) array, one row per input
    point; a 1-d array for a one-output network."""
    y = np.asarray(
        targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets, dtype=np.float64
    )
    if y.ndim == 1 and d_out == 1:
        y = y[:, None]
    if y.shape != (count, d_out) or not np.all(np.isfinite(y)):
        raise UsageError(
            f"targets: expected a finite ({count}, {d_out}) array, got shape {tuple(y.shape)}",
            help="one row of targets per input point",
        )
    return y


@dataclass
class TrainingLimit:
    """``outputs[t]``: the limit of f_t on the training batch (steps + 1, B, d_out);
    ``feature_change[h][t]``: RMS over coordinates and inputs of Z^{h_t} - Z^{h_0} for every
    vector h a nonlinearity reads (Θ(1) under µP: feature learning)."""

    outputs: np.ndarray
    feature_change: dict[str, np.ndarray]
    samples: int
    method: str
    lr: float
    targets: np.ndarray = field(repr=False)
    program: str = "program"
    #: the step whose Z-variables left float64's range (the limit diverged there, and
    #: ``outputs`` ends at the step before), or None
    stopped: int | None = None

    def diverged(self) -> bool:
        """Whether the loss blew up along the steps (non-finite, or 10x its start): the limit of a
        learning rate too large for these inputs, not a finite-width effect."""
        loss = [float(0.5 * ((f - self.targets) ** 2).sum(-1).mean()) for f in self.outputs]
        return self.stopped is not None or not np.isfinite(loss[-1]) or loss[-1] > 10 * loss[0]

    def __str__(self) -> str:
        return describe(self)

    def as_dict(self) -> dict:
        return {
            "diverged": self.diverged(),
            "stopped": self.stopped,
            "outputs": self.outputs.tolist(),
            "lr": self.lr,
            "samples": self.samples,
            "method": self.method,
            "feature_change": {h: v.tolist() for h, v in self.feature_change.items()},
            "loss": [float(0.5 * ((f - self.targets) ** 2).sum(-1).mean()) for f in self.outputs],
        }


def mu_limit(
    program: Program,
    inputs,
    targets,
    *,
    steps: int = 5,
    lr: float = 0.1,
    samples: int = 2**14,
    seed: int = 0,
    progress: bool = False,
) -> TrainingLimit:
    """The µ-limit of ``steps`` full-batch SGD steps on a fixed batch (loss ½ mean ‖f - y‖²)
    for an MLP-family program under µP, by Monte Carlo over ``samples`` draws of the
    Z-variables (see the module docstring). Imports torch."""
    import torch  # heavy: imported only when a limit of training is computed

    net = network(program)
    abc = choose(program, SGD, "mup", depth_convention=None).abc
    _check_mup(program, net, abc)
    xi_np = read_inputs(program, inputs)[net.x]
    y = read_targets(targets, len(xi_np), net.d_out)
    if steps < 0 or samples < 2 or not math.isfinite(lr):
        raise UsageError(
            f"steps {steps}, samples {samples}, lr {lr}: need steps ≥ 0, "
            "samples ≥ 2 and a finite lr"
        )
    dyn = Dynamics(program, net, xi_np, lr, samples, seed, steps)
    yt = torch.as_tensor(y, dtype=dyn.dt)
    outs, start, moves = [], {}, {h: [] for h in net.pre}
    from tqdm import tqdm  # slow to import: only for this loop's progress bar

    stopped = None
    for t in tqdm(range(steps + 1), desc="µ-limit", unit="step", disable=not progress, leave=False):
        # a diverging limit overflows float64 within a few steps: stop at the first step whose
        # Z-variables are not finite and keep the finite steps before it, rather than
        # decompose an inf covariance (LinAlgError) or report nan outputs
        try:
            z = dyn.forward()
            f = z[net.output].detach()
            if not torch.isfinite(f).all():
                raise Diverged(t)
        except Diverged:
            stopped = t
            break
        outs.append(f.numpy().copy())
        for h in net.pre:
            start.setdefault(h, z[h].detach())
            moves[h].append(float((z[h].detach() - start[h]).pow(2).mean().sqrt()))
        if t == steps:
            break
        try:
            _, grads = dyn.backward(z, (f - yt) / len(y))  # χ_b = (f(ξ_b) - y_b) / B
        except Diverged:
            stopped = t + 1
            break
        dyn.update(grads)
    if not outs:
        raise UsageError(
            "the limit's outputs at init already leave float64's range",
            help="normalise the inputs (unit variance per coordinate)",
        )
    return TrainingLimit(
        np.stack(outs),
        {h: np.array(v) for h, v in moves.items()},
        samples,
        f"Monte Carlo over {samples} draws of the Z-variables (error O(1/√{samples}))",
        lr,
        y,
        program.name,
        stopped,
    )


def finite_training(
    program: Program,
    inputs,
    targets,
    width: int,
    *,
    steps: int = 5,
    lr: float = 0.1,
    seeds=range(4),
    param: str = "mup",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The emitted module trained the same way at a finite width: its outputs (seeds,
    steps + 1, B, d_out) and, for every vector h a nonlinearity reads, the RMS of h_t - h_0 (seeds,
    steps + 1), for comparison with :func:`mu_limit`. Imports torch."""
    import torch  # heavy: imported only when a finite network is trained

    net = network(program)
    xi = torch.as_tensor(read_inputs(program, inputs)[net.x])
    y = torch.as_tensor(read_targets(targets, len(xi), net.d_out))
    chosen = choose(program, SGD, param, depth_convention=None)
    abc, label = chosen.abc, chosen.label
    module = load_module(
        emit(program, abc, optimizer=SGD, label=label, command="tensorprog limit"),
        f"mulimit_{program.name}",
    )
    out, moves = [], {h: [] for h in net.pre}
    for seed in seeds:
        model = module.Model(width, dtype=torch.float64)
        model.reset_parameters(generator=torch.Generator().manual_seed(int(seed)))
        opt = module.make_optimizer(model, lr, "sgd")
        run, move, h0 = [], {h: [] for h in net.pre}, {}
        for t in range(steps + 1):
            values = model.vectors(xi)
            f = values[net.output]
            run.append(f.detach().numpy())
            for h in net.pre:
                v = values[h].detach()
                h0.setdefault(h, v)
                move[h].append(float((v - h0[h]).pow(2).mean().sqrt()))
            if t == steps:
                break
            opt.zero_grad()
            (0.5 * ((f - y) ** 2).sum(-1).mean()).backward()
            opt.step()
        out.append(np.stack(run))
        for h in net.pre:
            moves[h].append(move[h])
    return np.stack(out), {h: np.array(v) for h, v in moves.items()}


def describe(result: TrainingLimit) -> str:
    """The limit as a table: per step, the loss and the outputs on the batch, then how far
    each pre-activation has moved from init (Θ(1): feature learning)."""
    loss = result.as_dict()["loss"]
    out = result.outputs.reshape(len(result.outputs), -1)
    shown = min(out.shape[1], 6)
    more = f" … ({out.shape[1]} values)" if out.shape[1] > shown else ""
    lines = [
        f"µ-limit of {result.program} under µP, SGD at lr {result.lr:g} on "
        f"{result.outputs.shape[1]} inputs: {result.method}",
        f"{'step':>4}  {'loss':>10}  outputs (f(ξ_1), f(ξ_2), …)",
    ]
    for t, (lo, f) in enumerate(zip(loss, out, strict=True)):
        lines.append(f"{t:>4}  {lo:>10.5f}  " + " ".join(f"{v:+.4f}" for v in f[:shown]) + more)
    lines.append(
        "feature change RMS(h_t - h_0) at the last step (under NTP it vanishes as n^-1/2):"
    )
    lines += [f"  {h}: {v[-1]:.4f}" for h, v in result.feature_change.items()]
    if result.stopped is not None:
        lines.append(f"diverged: the limit's values leave float64's range at step "
                     f"{result.stopped}, so it stops at step {len(result.outputs) - 1}")
    if result.diverged():
        lines.append(f"warning: the loss grows from {loss[0]:.4g} to {loss[-1]:.4g}: at lr "
                     f"{result.lr:g} SGD diverges in the limit too; lower --lr (or normalise "
                     "the inputs, whose scale sets the step's size)")
    return "\n".join(lines)
