"""The verifier's checks of ``ssd(cb, dt, A, P)`` on programs built through the API (the
lowering reports the same at the user's line: tests/test_error_catalogue.py, ``ssd-*``)."""

import dataclasses

import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.errors import SemanticError
from tensorprog.ir.verify import verify

PROGRAM = tp.parse((ROOT / "examples" / "ssd.tp").read_text())


def _with_ssd(**changes):
    body = tuple(dataclasses.replace(i, **changes) if getattr(i, "fn", None) == "ssd" else i
                 for i in PROGRAM.body)
    return dataclasses.replace(PROGRAM, body=body)


def test_the_example_verifies():
    assert verify(PROGRAM) is PROGRAM


@pytest.mark.parametrize(("changes", "message"), [
    ({"over": "V"}, r"no declared dim has H·V's size"),
    ({"args": ("mamba.p_1", "mamba.dt", "mamba.p_5")}, r"must be a per-head dot's value"),
    ({"args": ("mamba.p_3", "mamba.dt", "mamba.a")}, r"must be vectors of one dim H"),
    ({"args": ("mamba.p_3", "mamba.p_5", "mamba.p_5")}, r"ssd's steps mamba.p_5 must be one "
                                                        r"vector per token of T"),
    ({"args": ("mamba.p_3", "mamba.dt")}, r"ssd takes \(cb, dt, A\)"),
    ({"args": ()}, r"ssd takes \(cb, dt, A\)"),  # an IndexError before
    ({"args": ("mamba.p_3", "mamba.y", "mamba.p_5")}, r"'mamba.y' is not a vector defined "
                                                      r"before"),  # a KeyError before
    ({"args": ("mamba.p_3", "mamba.Wx", "mamba.p_5")}, r"'mamba.Wx' is not a vector"),
])
def test_a_malformed_ssd_is_refused(changes, message):
    with pytest.raises(SemanticError, match=message):
        verify(_with_ssd(**changes))
