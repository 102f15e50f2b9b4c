"""Choosing a parametrization by name: ``choose`` is the one place a name (mup, mup-width, sp,
ntp) becomes the exponents a module is emitted, checked or taken to its limit with.

The presets are TP4 Table 1's forms, generalised by each param's fan-in:

* ``sp``  (standard): a = 0, b = 1/2·[fan_in infinite], one global c (default 0: a constant LR);
* ``ntp`` (neural tangent): a = 1/2·[fan_in infinite], b = 0, one global c (default 0);
* ``mup``: µP as the engine derives it in TP4's style (b = 1/2 everywhere), per-param c;
* ``mfp`` (mean field): µP shifted along the abc-symmetry by θ = 1/2.

A ``scale`` is not trained (c = oo, b = 0). Under sp and ntp it is the usual normalisation of what
it multiplies: 1/√d (a = 1/2) for an inner product over an infinite dim, as attention's 1/√d_head,
and 1 (a = 0) otherwise, as an untied or tied unembedding with no multiplier.

``c`` (an exact exponent) overrides every param's c, as TP4 Table 1 uses one global c.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import UsageError
from ..ir.program import Dot, Program
from .classify import classify
from .derivation import Derivation
from .derive import derive
from .exponents import ABC, HALF, NEG_INF, ZERO, Exp, power
from .optimizers import Optimizer
from .propagate import used_params
from .ssd_init import zeroed_saddle
from .terms import fan_in_infinite


def _standard_scale(program: Program, scale: str) -> ABC:
    """1/√d for a product with an inner product over an infinite dim, else 1; never trained."""
    dims = program.dim_table
    for use in program.uses(scale):
        for other in use.operands:
            ins = program.producer.get(other)
            if isinstance(ins, Dot):
                summed = ins.over or program.value_dims[ins.left]
                if dims[summed].infinite:
                    return ABC(HALF, ZERO, "oo")
    return ABC(ZERO, ZERO, "oo")


def preset(name: str, program: Program, optimizer: Optimizer,
           c: Exp | None = None) -> dict[str, ABC]:
    params = used_params(program)
    if name in ("sp", "ntp"):
        c = ZERO if c is None else c
        out = {}
        for p in params:
            if program.param_table[p].is_scale:
                out[p] = _standard_scale(program, p)
                continue
            half = HALF if fan_in_infinite(program, p) else ZERO
            out[p] = ABC(ZERO, half, c) if name == "sp" else ABC(half, ZERO, c)
        return out
    if name in ("mup", "mfp"):
        theta = ZERO if name == "mup" else HALF
        k = optimizer.a_coef
        base = derive(program, optimizer, "tp4").abc
        # a standardised param's multiplier is pinned by its init: its twin moves b and c only
        # (engine/standardised.py)
        pinned = {p.name for p in program.params if p.standardised is not None}
        return {p: x if program.param_table[p].is_scale else
                ABC(x.a + (0 if p in pinned else theta), x.b - theta,
                    (x.c - k * theta) if c is None else c)
                for p, x in base.items()}
    raise UsageError(f"unknown preset '{name}'", help="choose one of sp, ntp, mup, mfp")


PRESETS = ("sp", "ntp", "mup", "mfp")


def zero_init(program: Program, abc: dict[str, ABC], names: tuple[str, ...] = (),
              readout: bool = False) -> dict[str, ABC]:
    """``abc`` with the named params (and, with ``readout``, every output weight) initialised to
    zero (b = oo); the learning rates and multipliers stay as they are."""
    from .terms import role

    known = {p.name for p in program.params if not p.is_scale}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--zero-init: no weight named {', '.join(unknown)}",
                         help=f"choose among {', '.join(sorted(known))}")
    readouts = {p for p in abc if role(program, p) == "output"}
    if readout and not readouts:
        raise UsageError("--readout-zero-init: no param has the role of an output weight",
                         help="a tied unembedding (E.T @ h) is also the embedding; zero it "
                              "with --zero-init only if you mean both")
    chosen = set(names) | (readouts if readout else set())
    saddle = zeroed_saddle(program, chosen)
    if saddle is not None:
        ssd, c, b = saddle
        raise UsageError(
            f"zero-initialising {c} and {b} makes C and B of the SSD {ssd} exactly 0: each "
            "one's gradient is ∝ the other, so both stay exactly 0 and its mixing never trains",
            help="zero the other weights by name (--zero-init W1,W2), leaving one of them")
    return {p: ABC(x.a, "oo", x.c) if p in chosen else x for p, x in abc.items()}


def zero_init_effects(d: Derivation, abc: dict) -> list[tuple[str, Exp, Exp]]:
    """(vector, init exponent under the derived µP, under ``abc``) wherever zero init changes it."""
    after = classify(d.program, d.optimizer, abc).analysis
    before = d.check.analysis
    return [(ins.out, before.init_[ins.out], after.init_[ins.out]) for ins in d.program.body
            if before.init_[ins.out] != after.init_[ins.out]]


def zero_init_text(d: Derivation, abc: dict, names: list[str]) -> str:
    c = classify(d.program, d.optimizer, abc)
    lines = [f"Zero init of {', '.join(names)}: the same exponents otherwise; at init",
             *(f"  {v}: Θ({power(b)}) -> {'exactly 0' if a is NEG_INF else f'Θ({power(a)})'}"
               for v, b, a in zero_init_effects(d, abc)),
             f"and the parametrization is still {c.regime.replace('_', ' ')}"
             + (" (every param updated maximally)." if c.all_maximal else ".")]
    return "\n".join(lines) + "\n"


PARAMS = ("mup", "sp", "ntp", "mup-width")


class Parametrization(NamedTuple):
    """What ``emit`` needs: the width exponents, the depth exponents (empty: no depth scaling),
    the label, and Adam's ε exponents per param as (in n, in L) (empty: a fixed ε)."""

    abc: dict[str, ABC]
    depth_abc: dict[str, ABC]
    label: str
    eps: dict[str, tuple[Exp, Exp]]


def choose(program: Program, optimizer: Optimizer, name: str = "mup",
           convention: str = "table3", readout_zero_init: bool = False,
           zero: tuple[str, ...] = (), depth_convention: str | None = "completep",
           ) -> Parametrization:
    """The parametrization called ``name``: the (a, b, c) of every used param, the depth
    exponents, Adam's ε exponents, and a label for the module's header.

    ``mup`` is the derived µP in ``convention``; ``sp`` and ``ntp`` are the presets at a
    constant LR. ``readout_zero_init`` zero-initialises the params whose derived role is output,
    ``zero`` the named ones (e.g. the query weights).

    ``mup`` takes the derived depth exponents (in ``depth_convention``) where the program repeats
    a block over its depth and the depth pass derives them; ``mup-width`` is the same width µP
    with no depth scaling, the baseline that depth transfer is measured against; the presets have
    no depth form. Under Adam and AdamW, ``mup`` and ``mup-width`` scale ε with each param's
    gradient entries (derive's eps columns; in L only with the depth exponents); the presets keep
    it fixed, as their usual recipes do.

    ``depth_convention=None`` asks for the width exponents alone: no depth or ε exponents, and a
    label that says nothing of a depth (what the infinite-width limits use).
    """
    abc, label = _width_parametrization(program, optimizer, name, convention,
                                        readout_zero_init, zero)
    if depth_convention is None:
        return Parametrization(abc, {}, label, {})
    if name not in ("mup", "mup-width"):
        return Parametrization(abc, {}, label + (", no depth scaling" if program.depth else ""),
                               {})
    d = derive(program, optimizer, convention, depth_convention)
    by_depth = name == "mup" and d.depth is not None
    depth_abc = d.depth.abc if by_depth else {}
    eps = {p: (e, d.eps_depth.get(p, ZERO) if by_depth else ZERO) for p, e in d.eps.items()}
    if program.depth is not None:  # derive says why there is none (refused, or no repeat)
        label += f", {depth_convention} in depth {program.depth.name}" if by_depth else \
            ", no depth scaling"
    return Parametrization(abc, depth_abc, label, eps)


def _width_parametrization(program: Program, optimizer: Optimizer, name: str, convention: str,
                           readout_zero_init: bool, zero: tuple[str, ...],
                           ) -> tuple[dict[str, ABC], str]:
    """The width exponents of every used param for ``name``, and the label's first part."""
    if name in ("mup", "mup-width"):  # the same width exponents; their depth exponents differ
        abc = derive(program, optimizer, convention).abc
        label = f"µP ({convention} convention) for {optimizer.name}"
        if name == "mup-width":
            label = f"width-only {label}"
    elif name in PARAMS:
        abc = preset(name, program, optimizer)
        label = f"{name.upper()} (constant LR) for {optimizer.name}"
    else:
        raise UsageError(f"unknown parametrization {name!r}", help=f"choose one of {PARAMS}")
    abc = zero_init(program, abc, zero, readout_zero_init)
    if readout_zero_init:
        label += ", readout zero-initialised"
    if zero:
        label += f", {', '.join(zero)} zero-initialised"
    return abc, label
