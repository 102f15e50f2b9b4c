"""The verifier refuses a gated delta rule built as IR that the language would not write: each
refusal positioned at the call, never a traceback (the language's own are in the catalogue)."""

import dataclasses

import pytest
from conftest import GATED_DELTA_GROUPED

import tensorprog as tp
from tensorprog.errors import SemanticError
from tensorprog.ir.delta import Delta


@pytest.mark.parametrize("fields", [{"head": None}, {"dim": None}], ids=["dim-alone",
                                                                         "head-alone"])
def test_the_values_dims_come_as_a_pair(fields):
    """delta(..., dv, D) names both the values' head dim and their dim; one alone has no
    heads to give P (and the text form would drop it, so the IR would not read back)."""
    program = tp.parse(GATED_DELTA_GROUPED)
    body = tuple(dataclasses.replace(i, **fields) if isinstance(i, Delta) else i
                 for i in program.body)
    with pytest.raises(SemanticError, match=r"both the values' head dim and their dim") as e:
        tp.verify(dataclasses.replace(program, body=body))
    assert ":23:1:" in str(e.value)
