"""The IR: its text form parses back to the same IR, and the verifier guards API-built programs."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

import tensorprog as tp
from tensorprog.ir.program import INSTRUCTIONS, LinComb, MatMul


def test_text_form_round_trips(example):
    program = tp.parse_file(example)
    text = tp.to_text(program)
    assert tp.parse(text) == program
    assert tp.to_text(tp.parse(text)) == text


def test_nested_expressions_are_flattened_with_fresh_names():
    src = """width n = 8
dim d = 3
input x : [d]
input h1_1 : [d]
param W : [n, d]
param b : [n]
h1 = 2 * (W @ x) - b / 4 + W @ h1_1
output h1
"""
    p = tp.parse(src)
    assert [type(i).__name__ for i in p.body] == ["MatMul", "MatMul", "LinComb"]
    assert p.body[0].out not in ("h1_1",)  # never clashes with a user name
    assert p.body[-1].terms[1] == (Fraction(-1, 4), "b")


def test_verifier_rejects_bad_api_built_programs():
    p = tp.parse("width n = 8\ndim d = 3\ninput x : [d]\nparam W : [n, d]\noutput y = W @ x\n")
    wrong_dim = dataclasses.replace(p, body=(MatMul("y", "W", "y0"),))
    with pytest.raises(tp.SemanticError, match="not a vector defined before"):
        tp.verify(wrong_dim)
    mixed = dataclasses.replace(p, body=(MatMul("h", "W", "x"),
                                         LinComb("y", ((Fraction(1), "h"), (Fraction(1), "x")))))
    with pytest.raises(tp.SemanticError, match="same dim"):
        tp.verify(mixed)
    no_output = dataclasses.replace(p, outputs=())
    with pytest.raises(tp.SemanticError, match="no output"):
        tp.verify(no_output)


def test_every_instruction_has_a_rule_in_every_table():
    from tensorprog.engine import rules

    for table in (rules.INIT, rules.CHANGE, rules.GRAD):
        assert set(table) == set(INSTRUCTIONS)


def test_instructions_are_frozen():
    ins = MatMul("y", "W", "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ins.out = "z"
