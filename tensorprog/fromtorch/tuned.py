"""Tuned base constants (``tensorprog tune -o FILE``) for a traced model's ``MuP``: the learning
rate and each param's init std at the base width, taken only where they were tuned for this
program in this parametrization.

A tune file records the scaling of the module it was tuned with (every param's exponents and
fan-in, every scale's exponent and base). Its values mean the same for a traced model only where
that scaling is the traced program's under the MuP's optimizer and convention: the same params,
the same (a, b, c) and fan-ins, the same base width (and depth). So a file of another program,
parametrization, convention, optimizer or data dims is refused, whatever its names say.

A tuned *multiplier* (a scale such as the attention's, or a tied readout's) off its default is
a constant factor c on that scale, which ``MuP`` applies as the emitted module does: in the
forward (apply.py's patches), so that the model trains as the emitted module tuned.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..emit.tables import fan_in_at_base
from ..engine.exponents import INF
from ..errors import UsageError
from ..numerics.tune import Config, as_config


def _number(e) -> float:
    """An exponent as the float a tune file holds (inf for a zero init or no training)."""
    return math.inf if e is INF else float(Fraction(int(e.p), int(e.q)))


def tuned_for(mup, config) -> Config:
    """``config`` (a ``tune -o`` file's path, its JSON or ``load_config``'s result) for the
    traced program of ``mup``, or a UsageError that says what differs and what to do."""
    cfg = as_config(config)
    src = cfg.source
    program = mup.program
    derivation = mup.derivation
    origin = (f"{src.get('program')} ({src.get('param')}, {src.get('convention')} convention, "
              f"{src.get('optimizer')})")
    ours = (f"{program.name} (mup, {derivation.convention} convention, "
            f"{derivation.optimizer.name})")
    fix = ("write the traced program (tensorprog trace FILE.py:build -o model.tp) and tune it "
           f"with --optimizer {derivation.optimizer.name} --convention {derivation.convention}")

    def refuse(why: str, help: str = fix) -> UsageError:
        return UsageError(f"the tuned values are for {origin}, this MuP is for {ours}: {why}",
                          help=help)

    if "scaling" not in src:
        raise refuse("the file does not record the scaling it was tuned for",
                     help="write it again with `tensorprog tune -o FILE`")
    if src.get("program") != program.name:
        raise refuse("another program")
    theirs = src["scaling"]
    names = set(mup.traced.params)
    if set(theirs) != names:
        odd = sorted(set(theirs) ^ names)
        raise refuse(f"the params differ ({', '.join(odd[:4])}"
                     + (f" and {len(odd) - 4} more" if len(odd) > 4 else "") + ")")
    for name in sorted(names):
        abc = derivation.abc[name]
        k, p = fan_in_at_base(program, name)
        here = {"a": _number(abc.a), "b": _number(abc.b), "c": _number(abc.c),
                "fan_in": [float(k), p]}
        for key, value in here.items():
            if theirs[name].get(key) != value:
                raise refuse(f"{name} has {key} {theirs[name].get(key)} there, {value} here")
    for key, here in (("base_width", mup.traced.base_width), ("base_depth", mup.base_depth)):
        if src.get(key, here) != here:
            raise refuse(f"{key} {src[key]} there, {here} here",
                         help=f"trace with the {key} the values were tuned at first")
    return cfg


def tuned_multipliers(mup, cfg: Config) -> dict[str, float]:
    """Scale -> c, the tuned multiplier against the program's default, for every tuned scale
    off its default (a file of this program: ``tuned_for``)."""
    scales = cfg.source.get("scales", {})
    out = {}
    for name, value in cfg.mult.items():
        default = float(scales[name]["base"]) if name in scales else 1.0
        if math.isclose(value, default, rel_tol=1e-9):
            continue
        if name not in mup.traced.scales or not math.isfinite(value) or value <= 0:
            raise UsageError(
                f"the tuned multiplier {name}={value!r}: "
                + ("no scale of the traced program has that name" if name not in
                   mup.traced.scales else "a multiplier must be a finite number > 0"),
                help=f"the traced program's scales: {', '.join(sorted(mup.traced.scales))}"
                if mup.traced.scales else "the traced program has no scale to tune")
        out[name] = value / default
    return out
