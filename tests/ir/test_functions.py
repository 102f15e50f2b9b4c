"""Every table that names the language's functions agrees with the IR's one row per function
(tensorprog/ir/functions.py): the same names, the same value at 0, the same torch function."""

from __future__ import annotations

import math

import pytest

from tensorprog.emit.instructions import _NORMS, _TORCH_FN
from tensorprog.emit.templates import HELPERS
from tensorprog.engine.rules import NONLIN_SHAPE
from tensorprog.fromtorch.identify import RECOGNISED
from tensorprog.ir.ddot import DDOT
from tensorprog.ir.functions import (
    AT,
    CAT,
    COORDINATEWISE,
    DWCONV,
    FUNCTIONS,
    NONLINEARITIES,
    PART,
    PICK,
    PLACE,
    RMS,
    SHIFT,
    SPREAD,
    TCONV,
    torch_function,
)
from tensorprog.ir.hdot import HDOT
from tensorprog.ir.ssd import SSD
from tensorprog.ir.wkv import WKV
from tensorprog.lang.lower_conv import CONV
from tensorprog.lang.lower_delta import DELTA
from tensorprog.lang.lower_expr import FUNCTIONS as LANGUAGE_FUNCTIONS
from tensorprog.lang.lower_first import MEAN
from tensorprog.lang.lower_prepend import PREPEND
from tensorprog.lang.lower_relayout import RELAYOUTS
from tensorprog.lang.lower_route import ROUTES
from tensorprog.limits.common import AT_ZERO, FNS

SCALINGS = {"linear", "bounded", "offset", "shifted", "exponential", "normalize"}


def test_every_row_is_complete_and_the_language_accepts_each():
    assert all(f.scaling in SCALINGS for f in FUNCTIONS.values())
    assert set(LANGUAGE_FUNCTIONS) == set(NONLINEARITIES) | {
        "dot", "mix", DELTA, *ROUTES, PREPEND, MEAN, CONV, DWCONV, SPREAD, PART, SHIFT, TCONV, CAT,
        AT, PLACE, PICK, RMS, SSD, DDOT, WKV, HDOT, *RELAYOUTS}
    assert NONLIN_SHAPE == {name: f.scaling for name, f in FUNCTIONS.items()}


def test_the_emitter_writes_every_function_with_its_torch_function():
    assert set(_TORCH_FN) | set(_NORMS) | {"identity"} == set(FUNCTIONS)
    assert not set(_TORCH_FN) & set(_NORMS)
    for name, call in _TORCH_FN.items():
        assert call == FUNCTIONS[name].torch
    for name, template in _NORMS.items():
        helper = "\n".join(HELPERS.get(f"_{name}", ()))  # the module-level helper it calls
        assert FUNCTIONS[name].torch in template + helper, name


def test_the_limits_compute_each_function_with_its_value_at_zero():
    assert set(FNS) == set(COORDINATEWISE)
    for name, fn in FNS.items():
        assert AT_ZERO[name] == FUNCTIONS[name].at_zero
        assert math.isclose(float(fn.f(0.0)), FUNCTIONS[name].at_zero, abs_tol=1e-12), name


def test_the_torch_functions_have_the_tables_value_at_zero():
    torch = pytest.importorskip("torch")
    zero = torch.zeros(1, dtype=torch.float64)
    for name in COORDINATEWISE:
        assert math.isclose(float(torch_function(torch, name)(zero)), FUNCTIONS[name].at_zero,
                            abs_tol=1e-12), name


def test_the_tracer_recognises_only_the_languages_functions():
    assert set(RECOGNISED) <= set(COORDINATEWISE)
