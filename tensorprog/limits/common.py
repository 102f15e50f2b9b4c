"""What the infinite-width limits share: the functions of one Gaussian they know (the table
:data:`FNS` and each one's value at 0), Gaussian integration (closed forms, Gauss–Hermite
quadrature), ABC exponents as exact fractions, and the checking of input data.

:mod:`.nngp` integrates these functions to get kernels at init; :mod:`.mu`, :mod:`.linear` and
:mod:`.ntk` read the same table of functions, exponents and inputs for the limits of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.special import erf

from ..errors import EngineError, UsageError
from ..ir.functions import FUNCTIONS
from ..ir.program import Program

#: Gauss–Hermite order of the 2-D quadrature (points per axis); its error is estimated by
#: comparing with half the order.
ORDER = 32

_SQRT2 = math.sqrt(2.0)


# --- univariate functions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fn:
    """A function of one Gaussian; ``closed`` names the ones with closed-form kernels."""

    name: str
    f: Callable[[np.ndarray], np.ndarray] = field(compare=False, repr=False)
    closed: str | None = None  # "identity" | "relu"


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


FNS = {
    "identity": Fn("identity", lambda x: x, "identity"),
    "relu": Fn("relu", lambda x: np.maximum(x, 0.0), "relu"),
    "gelu": Fn("gelu", lambda x: 0.5 * x * (1.0 + erf(x / _SQRT2))),  # torch's exact gelu
    "gelu_tanh": Fn("gelu_tanh", lambda x: 0.5 * x * (
        1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))),
    "tanh": Fn("tanh", np.tanh),
    "relu6": Fn("relu6", lambda x: np.clip(x, 0.0, 6.0)),
    "hardtanh": Fn("hardtanh", lambda x: np.clip(x, -1.0, 1.0)),
    "cap": Fn("cap", lambda x: np.minimum(x, 1.0)),
    "atleast": Fn("atleast", lambda x: np.maximum(x, 1.0)),
    "sigmoid": Fn("sigmoid", _sigmoid),
    "silu": Fn("silu", lambda x: x * _sigmoid(x)),
    "softplus": Fn("softplus", lambda x: np.logaddexp(0.0, x)),
    "elu": Fn("elu", lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))),
    "hardswish": Fn("hardswish", lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "hardsigmoid": Fn("hardsigmoid", lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "exp": Fn("exp", np.exp),
    "sqrt": Fn("sqrt", np.sqrt),  # of a value bounded below by a positive number (ir/ranges)
}
#: φ(0) for each supported function: the limit of φ of a vanishing vector
AT_ZERO = {name: FUNCTIONS[name].at_zero for name in FNS}
ID = FNS["identity"]


# --- Gaussian expectations ------------------------------------------------------------------------


def _hermite(order: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / w.sum()


def gaussian_mean(fn: Fn, var: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """E[f(U)], U ~ N(0, var), per input."""
    sd = np.sqrt(np.maximum(var, 0.0))
    if fn.closed == "identity":
        return np.zeros_like(var), 0.0
    if fn.closed == "relu":
        return sd / math.sqrt(2 * math.pi), 0.0
    z, w = _hermite(4 * order)
    return fn.f(sd[:, None] * z) @ w, 0.0  # 1-D at 4x the order: exact to rounding


def gaussian_pair(f: Fn, g: Fn, v1: np.ndarray, v2: np.ndarray, cov: np.ndarray,
                  order: int) -> tuple[np.ndarray, float, str]:
    """E[f(U) g(V)] for (U, V) centred Gaussian with variances v1[a], v2[b] and covariance
    cov[a, b], for every pair of inputs (a, b): the value, its error estimate and the method."""
    s1, s2 = np.sqrt(np.maximum(v1, 0.0)), np.sqrt(np.maximum(v2, 0.0))
    norm = s1[:, None] * s2[None, :]
    rho = np.clip(np.divide(cov, norm, out=np.zeros_like(cov), where=norm > 0), -1.0, 1.0)
    kinds = {f.closed, g.closed}
    if kinds == {"identity"}:
        return cov, 0.0, "closed form (identity)"
    if kinds == {"relu"}:  # Cho & Saul's arc-cosine kernel of degree 1
        theta = np.arccos(rho)
        k = norm / (2 * math.pi) * (np.sin(theta) + (math.pi - theta) * np.cos(theta))
        return k, 0.0, "closed form (arc-cosine kernel)"
    if kinds == {"identity", "relu"}:  # Stein: E[U relu(V)] = Cov(U, V) P(V > 0)
        return cov / 2, 0.0, "closed form (Stein's lemma)"
    fine = _gauss_hermite(f, g, s1, s2, rho, order)
    coarse = _gauss_hermite(f, g, s1, s2, rho, order // 2)
    err = float(np.max(np.abs(fine - coarse))) if fine.size else 0.0
    return fine, err, f"Gauss-Hermite {order}x{order}"


def _gauss_hermite(f: Fn, g: Fn, s1, s2, rho, order: int) -> np.ndarray:
    z, w = _hermite(order)
    fu = f.f(s1[:, None] * z)  # (P1, m): U = s1 z_i
    out = np.empty(rho.shape)
    chunk = max(1, 2**22 // (len(s2) * order * order))
    for lo in range(0, len(s1), chunk):
        r = rho[lo:lo + chunk, :, None, None]
        # V = s2 (ρ z_i + √(1-ρ²) z_j)
        v = s2[None, :, None, None] * (r * z[:, None] + np.sqrt(1 - r * r) * z[None, :])
        gv = g.f(v) @ w  # (c, P2, m): integrated over z_j
        out[lo:lo + chunk] = np.einsum("cpi,ci,i->cp", gv, fu[lo:lo + chunk], w)
    return out


# --- exponents and inputs -------------------------------------------------------------------------


def frac(x) -> Fraction | None:
    """An ABC exponent as a Fraction; None for oo (a zero-initialised param)."""
    if isinstance(x, str) or not x.is_Rational:
        return None
    return Fraction(int(x.p), int(x.q))


def read_inputs(program: Program, inputs) -> dict[str, np.ndarray]:
    """``inputs`` (a (P, dim) array for a one-input program, else a dict of them by input name;
    numpy or torch) as float64 numpy arrays; refused: an input that is not a vector of a finite
    dim (at its position), and missing, extra, misshapen or non-finite data, or inputs of
    different numbers of points; and a standardised param (its limit is not derived here)."""
    for p in program.params:
        if p.standardised is not None:
            # its rows are read at variance 1 whatever its init, and its steps scaled by 1/std:
            # the kernels and dynamics here take each weight's entries as its init draws them
            raise EngineError(f"param {p.name} is standardised: the infinite-width limits here "
                              "have no rule for a weight read at its rows' own variance",
                              p.span, help="compute the limit of the program without the "
                              "standardisation, or check it at finite widths (tensorprog check)")
    vectors = [i for i in program.inputs]
    for i in vectors:
        if i.kind != "vector":
            raise EngineError(f"input {i.name}: {i.kind} inputs have no NNGP rule here", i.span,
                              help="the kernel is computed for programs of vector inputs")
        if program.dim(i.dim).infinite:
            raise EngineError(f"input {i.name} has an infinite dim, so no fixed data", i.span,
                              help="declare the input's dim as a finite size")
    if not isinstance(inputs, dict):
        if len(vectors) != 1:
            raise UsageError(f"the program has {len(vectors)} inputs: give a dict "
                             f"{{name: (P, dim) array}} for {', '.join(i.name for i in vectors)}")
        inputs = {vectors[0].name: inputs}
    out, count = {}, None
    for i in vectors:
        if i.name not in inputs:
            raise UsageError(f"no data for input {i.name}",
                             help=f"give arrays for {', '.join(j.name for j in vectors)}")
        x = np.asarray(_numpy(inputs[i.name]), dtype=np.float64)
        size = program.dim(i.dim).size
        if x.ndim != 2 or x.shape[1] != size or not np.all(np.isfinite(x)):
            raise UsageError(f"input {i.name}: expected a finite (P, {size}) array, got shape "
                             f"{tuple(x.shape)}", help="one row per input point")
        if count is not None and len(x) != count:
            raise UsageError("every input needs the same number of points (rows)")
        count = len(x)
        out[i.name] = x
    extra = set(inputs) - set(out)
    if extra:
        raise UsageError(f"no input named {', '.join(sorted(extra))}",
                         help=f"the program's inputs: {', '.join(out)}")
    if not count:
        raise UsageError("no input points", help="give at least one row")
    return out


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
