"""tensorprog: write a network as a Tensor Program; derive, classify and prove its width scaling.

The public surface::

    program = tensorprog.parse_file("mlp.tp")
    d = tensorprog.derive(program, "adam")            # µP, exactly, as (a, b, c) per param
    c = tensorprog.classify(program, "sgd", preset="sp")
"""

from __future__ import annotations

from . import analysis as _analysis
from . import derive as _derive
from . import presets as _presets
from .analysis import ABC, Classification
from .derive import CONVENTIONS, Derivation
from .errors import (
    EngineError,
    ParseError,
    SemanticError,
    TensorProgError,
    TensorProgWarning,
    UsageError,
)
from .ir import Program, to_text, verify
from .optimizers import OPTIMIZERS
from .parse import parse, parse_file

__version__ = "0.1.0"


def _optimizer(name):
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r}",
                         help=f"choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def derive(program: Program, optimizer: str = "adam", convention: str = "table3") -> Derivation:
    """µP for ``program``: every param's exact (a, b, c) under ``optimizer`` in ``convention``."""
    return _derive.derive(program, _optimizer(optimizer), convention)


def classify(program: Program, optimizer: str = "sgd", *, preset: str | None = None,
             abc: dict[str, ABC] | None = None, c=None) -> Classification:
    """Stability, nontriviality, r and regime of a preset (sp, ntp, mup, mfp) or given ``abc``."""
    opt = _optimizer(optimizer)
    if (preset is None) == (abc is None):
        raise UsageError("give exactly one of preset= or abc=")
    if preset is not None:
        abc = _presets.preset(preset, program, opt, c)
    return _analysis.classify(program, opt, abc)


__all__ = [
    "ABC", "CONVENTIONS", "Classification", "Derivation", "EngineError", "OPTIMIZERS",
    "ParseError", "Program", "SemanticError", "TensorProgError", "TensorProgWarning",
    "UsageError", "classify", "derive", "parse", "parse_file", "to_text", "verify",
]
