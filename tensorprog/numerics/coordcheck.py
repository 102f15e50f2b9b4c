"""The coordinate check: train the emitted module at several widths and compare every vector's
log-log slope against width with the exponent the engine requires or predicts.

The driver :func:`coord_check` names the passes in order: emit the module under the
parametrization, train it and record every vector's RMS (:mod:`.measure`, the only torch loop),
then fit the slopes and judge them against µP or the engine's prediction (:mod:`.judge`, which
also renders the result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..emit.load import load_module
from ..emit.module import emit
from ..engine.optimizers import Optimizer
from ..engine.parametrization import choose
from ..errors import UsageError
from ..ir.program import Program
from ..ir.sizes import check_training
from .judge import TOLERANCE, CheckResult, depth_expectations, judge
from .measure import default_batch_size, measure, pick_device, precision_context

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024, 2048)
# Θ(1) learning rates at the base width; µTransfer tunes these, the check only needs visible steps.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "adam": 0.01, "adamw": 0.01, "lion": 0.001,
              "muon": 0.01}
# The check over depth (Adam only): 0.01 made CompleteP's changes on examples/resmlp_deep.tp grow
# x13 from step 2 to 3 at depth 32 (width 128), a diverging run; at 1e-3 none does (docs/check.md).
DEFAULT_DEPTH_LR = {"adam": 1e-3, "adamw": 1e-3}


def coord_check(program: Program, optimizer: Optimizer, *, param: str = "mup",
                convention: str = "table3", readout_zero_init: bool = False,
                zero: tuple[str, ...] = (),
                base_width: int | None = None, widths: Sequence[int] = DEFAULT_WIDTHS,
                steps: int = 3, seeds: int = 3, lr: float | None = None,
                batch_size: int | None = None,
                device: str = "auto", against: str = "mup", tolerance: float = TOLERANCE,
                progress: bool = False, depths: Sequence[int] | None = None,
                width: int | None = None, depth_convention: str = "completep",
                autocast: str | None = None) -> CheckResult:
    """Emit ``program`` under ``param``, train it at every width and judge every vector.

    With ``depths``, train at one width (``width``, default the base width) and every depth,
    and judge every vector's slope against the depth with the depth pass's exponents. The module
    is built with base depth 1: the exponents do not depend on it, but the finite-depth terms
    (the branches' L^-1/2 sums, of relative size base_depth/√L) are then as small as they can
    be (docs/check.md).

    ``autocast="bf16"`` trains under bfloat16 autocast (:func:`.measure.measure`)."""
    if depths is not None:
        if not program.repeats_over_depth:
            raise UsageError(f"--depths: {program.name} repeats no block over a depth",
                             help="declare `depth L = ...` and use `repeat L block(...)`, or "
                                  "check against the width with --widths")
        depths = sorted(set(depths))
        if len(depths) < 2 or depths[0] < 1:
            raise UsageError("give at least two positive depths", help="e.g. --depths 2,4,8,16")
        width = width or program.width.base
        program.check_widths([width])
        widths = depths
    widths = sorted(set(widths))
    if len(widths) < 2 or widths[0] < 1:
        raise UsageError("give at least two positive widths", help="e.g. --widths 64,128,256")
    if depths is None:
        program.check_widths(widths)
    if steps < 2:
        raise UsageError("the check judges changes from step 2 on (a first step can scale "
                         "differently)", help="use --steps 2 or more (default: 3)")
    if batch_size is None:
        batch_size = default_batch_size(program)
    if seeds < 1 or batch_size < 1:
        raise UsageError("seeds and the batch size must be at least 1")
    check_training(program, widths if depths is None else [width], pick_device(device), depths,
                   width, batch_size, steps=steps, runs=seeds)
    if lr is None:
        lr = DEFAULT_LR[optimizer.name]
        if depths is not None:
            lr = DEFAULT_DEPTH_LR.get(optimizer.name, lr)
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"the learning rate must be a positive number, not {lr}")
    device = pick_device(device)
    precision_context(autocast, device)  # an unknown autocast is refused before any work
    abc, depth_abc, label, eps = choose(program, optimizer, param, convention,
                                        readout_zero_init, zero, depth_convention)
    emitted = emit(program, abc, optimizer=optimizer, label=label, command="tensorprog check",
                   base_width=base_width, depth_abc=depth_abc, eps=eps)
    module = load_module(emitted, f"{program.name}_{param}")
    looped = program.depth_blocks if depths is not None else ()
    # before training: the depth pass refuses what it cannot analyse (SGD) without a run wasted
    expected = (depth_expectations(program, optimizer, abc, depth_abc, against)
                if depths is not None else None)
    m = measure(module, widths, steps=steps, seeds=range(seeds), lr=lr, optimizer=optimizer.name,
                device=device, batch_size=batch_size, progress=progress,
                width=width if depths is not None else None, looped=looped,
                base_depth=1 if depths is not None else None, autocast=autocast)
    result = judge(program, optimizer, abc, m, against=against, tolerance=tolerance,
                   expected=expected)
    result.settings = {"program": program.name, "param": param, "label": label,
                       "optimizer": optimizer.name, "lr": lr, "batch_size": batch_size,
                       "device": device, "base_width": base_width or program.width.base,
                       "autocast": autocast}
    if depths is not None:
        result.settings.update(axis="depth", width=width, base_depth=1)
    return result
