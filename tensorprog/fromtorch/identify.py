"""A traced chain of coordinatewise ops told by its values: which of the language's functions it is
(identify), up to a scale of its input or output, or a power; each fit checked at points spread
far enough that a chain which leaves it between or beyond them is not taken for it."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..ir.functions import torch_function

#: The coordinatewise functions a traced chain of ops is matched against; the closest wins.
RECOGNISED = ("identity", "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid", "softplus",
              "hardswish", "hardsigmoid", "elu")


def sample_points():
    """The points a chain of coordinatewise ops is fitted on (float64): [-4, 4] finely, far
    out to ±256 (a clamp at 5, a threshold past 4, differ from a function only there), [-16,
    16] at 1/128 apart and 4096 seeded random points on ±256. A chain's numbers place its
    kinks anywhere (relu(t + 4.4) - 2 relu(t + 4.25) + relu(t + 4.1) is 0 at every point of
    the first two grids and 0.15 at -4.25): a fit checked on a few grids alone would take such
    a chain for the function, a silent wrong answer wherever the model's vector reaches
    between them. A finite sample still misses a feature narrower than its spacing."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.linspace(-4, 4, 161, dtype=torch.float64),
                      torch.linspace(-256, 256, 1025, dtype=torch.float64),
                      torch.linspace(-16, 16, 4097, dtype=torch.float64),
                      (torch.rand(4096, generator=gen, dtype=torch.float64) - 0.5) * 512])


def identify(f: Callable) -> tuple[str, float] | None:
    """(function, coefficient) with f(t) = coefficient * function(t) at :func:`sample_points`
    to 1e-5 of each value, or None."""
    import torch

    t = sample_points()
    y = f(t)
    fns = {name: torch_function(torch, name)(t) for name in RECOGNISED}
    best = None
    for name, ref in fns.items():
        c = float((y @ ref) / (ref @ ref))
        # each point's error against its own size (at least 1): the model's function itself,
        # up to float32's rounding where the chain casts (a few 1e-7); a function near one
        # (gelu + 0.001, tanh(1.001 x), gelu's tanh form beside gelu, 2e-4 apart) is another
        err = float(((y - c * ref).abs() / (c * ref).abs().clamp(min=1.0)).max())
        if abs(c) > 1e-12 and err < 1e-5 and (best is None or err < best[2]):
            best = (name, float(f"{c:.12g}"), err)  # the fit's last bits are rounding (50.0)
    return best[:2] if best else None


def identify_scaled(f: Callable) -> tuple[str, float, float] | None:
    """(fn, c, s) with f(t) = c * fn(t / s) on [-4s, 4s] for tanh or sigmoid, or None: a
    soft-cap (Gemma 2's final ``tanh(logits / 30) * 30``), or a gate of a scaled input
    (Qwen4-exp's hyper-connection weights ``2 * sigmoid(x / m)``), whose input scale the
    values on [-4, 4] cannot tell from the identity's. c is f's value far out, s from its slope
    at 0 (tanh'(0) = 1, sigmoid'(0) = 1/4) and its value there (0 for tanh, c/2 for sigmoid)."""
    import torch

    big = f(torch.tensor([1e6], dtype=torch.float64))
    c = float(big[0])
    if not (abs(c) > 1e-12 and math.isfinite(c)):
        return None
    name, s = None, 1.0
    # the slope at 0 as a difference quotient over a step of 1e-4, then again over 1e-5 of the
    # scale found (a step of 1e-4 misreads a scale of 1e-3 by 0.1%)
    for step in (1e-4, 1e-5):
        h = step * s
        rise = f(torch.tensor([-h, 0.0, h], dtype=torch.float64))
        slope = float(rise[2] - rise[0]) / (2 * h)
        if slope == 0:
            return None
        # f(0) = c/2 to a part in 1e9 of c (not of 1: a tanh of a small c is no sigmoid)
        name, s = ("sigmoid", c / (4 * slope)) if abs(float(rise[1]) - c / 2) < 1e-9 * abs(
            c) else ("tanh", c / slope)
        if not s > 0:
            return None
    fn = torch_function(torch, name)
    t = torch.linspace(-4, 4, 161, dtype=torch.float64) * s
    # to 2e-3 of c itself: against 1, any f of values under 1e-3 would pass (0.01 hardsigmoid(t
    # / 2), whose value at 0 is a sigmoid's, read as 0.01 sigmoid(t / 3))
    if float((f(t) - c * fn(t / s)).abs().max()) < 2e-3 * abs(c) and \
            agrees_far(f, lambda u: c * fn(u / s), max(s, 1.0), abs(c)):
        return name, float(f"{c:.12g}"), float(f"{s:.9g}")  # s: a difference quotient
    return None


def agrees_far(f: Callable, fit: Callable, scale: float = 1.0, floor: float = 1.0) -> bool:
    """Whether f is ``fit`` to 2e-3 of each value (against its own size, at least ``floor``:
    the allowance the fit had near 0) at :func:`sample_points` times ``scale``: a fit found on
    [-4, 4] (times its input's scale) alone takes relu(t)² + 100 relu(-t - 5) for relu(t)²."""
    t = sample_points() * scale
    ref = fit(t)
    return float(((f(t) - ref).abs() / ref.abs().clamp(min=floor)).max()) < 2e-3


def identify_power(f: Callable, powers=(2, 3, 4)) -> tuple[str, float, int] | None:
    """(function, coefficient, k) with f(t) = coefficient * function(t)**k on [-4, 4] for an
    integer k > 1 (relu², x²), or None: what :func:`identify` finds of f's k-th root, checked
    against f itself, and at every one of :func:`sample_points` to 2e-3 of each value (against
    its own size, at least 1): relu(t)² + 100 relu(-t - 5) is relu² on [-4, 4] alone."""
    import torch

    t = torch.linspace(-4, 4, 161, dtype=torch.float64)
    y = f(t)
    for k in powers:
        for name in RECOGNISED:
            ref = torch_function(torch, name)(t) ** k
            c = float((y @ ref) / (ref @ ref))
            if abs(c) > 1e-12 and float((y - c * ref).abs().max()) < 2e-3 * max(1.0, abs(c)) \
                    and agrees_far(f, lambda u, c=c, fn=name, k=k:
                                   c * torch_function(torch, fn)(u) ** k, 1.0, max(1.0, abs(c))):
                return name, float(f"{c:.12g}"), k
    return None
