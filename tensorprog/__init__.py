"""tensorprog: write a network as a Tensor Program; derive, classify and prove its width scaling.

The public surface::

    program = tensorprog.parse_file("mlp.tp")
    d = tensorprog.derive(program, "adam")            # µP, exactly, as (a, b, c) per param
    c = tensorprog.classify(program, "sgd", preset="sp")
    m = tensorprog.derive(program, tensorprog.muon(io=True))  # Muon on every matrix
    r = tensorprog.check(program, "adam", param="sp")  # coordinate check (imports torch)
    assert not r.passed, r.failures

Only ``check`` and ``measure`` import torch, and only when called. The names below are loaded
when first used (PEP 562), so that ``import tensorprog`` costs nothing: the command line must be
able to set up its Ctrl-C handling before sympy and the pipeline load (a second's work).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__ as __version__
from .errors import (
    CodegenError,
    EngineError,
    ParseError,
    SemanticError,
    TensorProgError,
    TensorProgWarning,
    UsageError,
)

if TYPE_CHECKING:
    from .engine.classify import Classification
    from .engine.derivation import Derivation
    from .engine.exponents import ABC
    from .engine.optimizers import Optimizer
    from .ir.program import Program
    from .numerics.judge import CheckResult, Measurements

# each public name loaded on first use, and the module it comes from
_LAZY = {
    "ABC": "engine.exponents", "CONVENTIONS": "engine.derive", "Classification": "engine.classify",
    "Derivation": "engine.derivation", "OPTIMIZERS": "engine.optimizers",
    "Optimizer": "engine.optimizers", "muon": "engine.optimizers", "MuP": "fromtorch.apply",
    "Program": "ir.program", "to_text": "ir.text", "verify": "ir.verify", "parse": "lang.parse",
    "parse_file": "lang.parse", "CheckResult": "numerics.judge",
    "Measurements": "numerics.judge", "load_config": "numerics.tune",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBPACKAGES:  # ``tensorprog.engine`` without importing it first
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


_SUBPACKAGES = ("cli", "emit", "engine", "fromtorch", "ir", "lang", "limits", "numerics")


def _resolve(optimizer: str | Optimizer) -> Optimizer:
    from .engine.optimizers import resolve

    return resolve(optimizer)


def derive(program: Program, optimizer: str = "adam", convention: str = "table3",
           depth_convention: str = "completep") -> Derivation:
    """µP for ``program``: every param's exact (a, b, c) under ``optimizer`` in ``convention``;
    for a program repeating a block over its depth, also (a_L, b_L, c_L) (``.depth``), a free
    one resolved by ``depth_convention`` (completep or depth-mup)."""
    from .engine.derive import derive as derived

    return derived(program, _resolve(optimizer), convention, depth_convention)


def classify(program: Program, optimizer: str = "sgd", *, preset: str | None = None,
             abc: dict[str, ABC] | None = None, c=None) -> Classification:
    """Stability, nontriviality, r and regime of a preset (sp, ntp, mup, mfp) or given ``abc``."""
    from .engine.classify import classify as classified
    from .engine.parametrization import preset as preset_abc

    opt = _resolve(optimizer)
    if (preset is None) == (abc is None):
        raise UsageError("give exactly one of preset= or abc=")
    if preset is not None:
        abc = preset_abc(preset, program, opt, c)
    return classified(program, opt, abc)


def check(program: Program, optimizer: str = "adam", *, param: str = "mup",
          against: str = "mup", **options) -> CheckResult:
    """Coordinate check: emit ``program`` under ``param`` (mup, sp, ntp, mup-width), train it a few
    steps at several widths and judge every vector's log-log slope ``against`` what µP requires
    or what the engine predicts. ``options``: convention, readout_zero_init, base_width, widths,
    steps, seeds, lr, batch_size, device, autocast ("bf16"), tolerance, progress; or depths,
    width and depth_convention to check against the depth at one width."""
    from .numerics.coordcheck import coord_check

    return coord_check(program, _resolve(optimizer), param=param, against=against, **options)


def judge(program: Program, measurements: Measurements, optimizer: str = "adam", *,
          against: str = "mup", param: str = "mup", abc: dict[str, ABC] | None = None,
          tolerance: float | None = None) -> CheckResult:
    """Judge measurements from your own training loop (see :class:`Measurements`).

    ``against="mup"`` asks whether they behave as µP requires; ``against="predicted"`` compares
    them with the engine's prediction for ``abc`` (or the preset ``param``); ``tolerance``: the
    allowed |slope - expected exponent| (default ``numerics.judge.TOLERANCE``, 0.15)."""
    from .engine.derive import derive as derived
    from .engine.parametrization import preset as preset_abc
    from .numerics.judge import TOLERANCE
    from .numerics.judge import judge as judged

    opt = _resolve(optimizer)
    if abc is None:
        abc = derived(program, opt).abc if param == "mup" else preset_abc(param, program, opt)
    return judged(program, opt, abc, measurements, against=against,
                  tolerance=TOLERANCE if tolerance is None else tolerance)


def from_torch(build, widths=(128, 256), example_inputs=None, *, blocks=True):
    """Trace ``build(width)`` (a PyTorch model) at two widths on the meta device into a Tensor
    Program; ``.source`` is its text, and ``MuP(traced, optimizer)`` derives µP and applies it to
    the model (see docs/torch.md); ``blocks=False`` keeps every stack of layers unrolled (the
    width's µP alone, which apply's refusals of a depth exponent point to). Imports torch when
    called."""
    from .fromtorch import from_torch as trace

    return trace(build, widths, example_inputs, blocks=blocks)


def nngp_kernel(program: Program, inputs, **options):
    """The NNGP kernel at init of ``program``'s outputs over ``inputs`` in the infinite-width
    limit (see :func:`tensorprog.limits.nngp.nngp_kernel`; ``options``: param, optimizer,
    convention, order, all_vectors). Imports numpy and scipy when called."""
    from .limits.nngp import nngp_kernel as kernel

    return kernel(program, inputs, **options)


def training_limit(program: Program, inputs, targets, **options):
    """The µ-limit of SGD on a fixed batch for an MLP-family program under µP: its outputs
    after t = 0..steps steps as n → ∞ (see :func:`tensorprog.limits.mu.mu_limit`; ``options``:
    steps, lr, samples, seed, progress). Imports torch when called."""
    from .limits.mu import mu_limit

    return mu_limit(program, inputs, targets, **options)


__all__ = [
    "ABC", "CONVENTIONS", "CheckResult", "Classification", "CodegenError", "Derivation",
    "EngineError", "Measurements", "MuP", "OPTIMIZERS", "Optimizer", "ParseError", "Program",
    "SemanticError", "TensorProgError",
    "TensorProgWarning", "UsageError", "check", "classify", "derive", "from_torch", "judge",
    "muon", "nngp_kernel", "parse", "parse_file", "to_text", "training_limit", "verify",
]
