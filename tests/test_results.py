"""Every result the tool returns follows one protocol: ``as_dict()`` (JSON-serialisable data)
and ``str()`` (the text the command line prints)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.classify import Classification
from tensorprog.engine.derivation import Derivation
from tensorprog.engine.report import Result
from tensorprog.fromtorch.apply import Report
from tensorprog.limits.mu import TrainingLimit
from tensorprog.limits.nngp import Kernel
from tensorprog.numerics.judge import CheckResult
from tensorprog.numerics.transfer import Sweep


@pytest.mark.parametrize("cls", [Derivation, Classification, CheckResult, Sweep, Kernel,
                                 TrainingLimit, Report])
def test_each_result_type_renders_both_ways(cls):
    assert callable(vars(cls).get("as_dict")) and callable(vars(cls).get("__str__")), cls


def test_results_as_the_facade_returns_them():
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    x = np.random.default_rng(0).standard_normal((3, 3072))
    for result in (tp.derive(program), tp.classify(program, preset="sp"),
                   tp.nngp_kernel(program, x)):
        assert isinstance(result, Result)
        json.dumps(result.as_dict())
        assert str(result).strip()
