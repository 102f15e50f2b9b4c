"""The abc-symmetry: (a+θ, b-θ, c-2θ) under SGD, (a+θ, b-θ, c-θ) under Adam, per param, changes
nothing the engine reports (TP4 §3); (a, b+θ, c+kθ) for a standardised param. Checked on every
example, for µP and for SP/NTP."""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest
from conftest import example_cases, mlp_source, skip_refused
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy import Rational

import tensorprog as tp

thetas = st.fractions(min_value=-2, max_value=2, max_denominator=4)


def _shift(abc, optimizer, theta, program=None):
    """Each param moved along its symmetry: (a+θ, b-θ, c-kθ), or for a standardised one,
    whose multiplier alone sets its forward (engine/standardised.py), (a, b+θ, c+kθ)."""
    k = tp.OPTIMIZERS[optimizer].a_coef
    std = {p.name for p in program.params if p.standardised is not None} if program else set()
    return {p: tp.ABC(x.a, x.b + t, x.c + k * t) if p in std else
            tp.ABC(x.a + t, x.b - t, x.c - k * t)
            for (p, x), t in zip(abc.items(), theta, strict=True)}


def _fingerprint(result):
    an = result.analysis
    return (result.regime, result.r, {p: (x.r, x.init, x.update) for p, x in
                                      result.params.items()},
            dict(an.init_), dict(an.change_), dict(an.grad_),
            [(v.condition, v.tensor, v.exponent) for v in result.violations])


def _to_rational(values: list[Fraction]) -> list[Rational]:
    return [Rational(f.numerator, f.denominator) for f in values]


# 2 random shifts per example and optimizer (Adam over all 51 examples and SGD over
# conftest.CORE_EXAMPLES by default, SGD over the rest with -m slow): the symmetry is exact, so
# one shift that breaks it fails; 4 per case cost 6.5 s more of the default run's CPU budget
@settings(max_examples=2, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize(("path", "optimizer"), example_cases(["adam", "sgd"]))
def test_mup_is_invariant(path, optimizer, data):
    skip_refused(path, optimizer)
    program, base, want = _derived(path, optimizer)
    theta = _to_rational(data.draw(st.lists(thetas, min_size=len(base), max_size=len(base))))
    shifted = tp.classify(program, optimizer, abc=_shift(base, optimizer, theta, program))
    assert _fingerprint(shifted) == want


@functools.cache
def _derived(path, optimizer):
    """An example's program, its µP and what classify reports for it: the same for every shift
    drawn, so computed once per example and optimizer rather than once per shift."""
    program = tp.parse_file(path)
    base = tp.derive(program, optimizer).abc
    return program, base, _fingerprint(tp.classify(program, optimizer, abc=base))


@settings(max_examples=20, deadline=None)
@given(theta=st.lists(thetas, min_size=5, max_size=5),
       preset=st.sampled_from(["sp", "ntp", "mfp"]), optimizer=st.sampled_from(["sgd", "adam"]),
       c=st.sampled_from([None, Rational(0), Rational(1), Rational(1, 2)]))
def test_any_parametrization_is_invariant(theta, preset, optimizer, c):
    program = tp.parse(mlp_source(4))
    base = tp.classify(program, optimizer, preset=preset, c=c)
    abc = {p: x.abc for p, x in base.params.items()}
    shifted = tp.classify(program, optimizer, abc=_shift(abc, optimizer, _to_rational(theta)))
    assert _fingerprint(shifted) == _fingerprint(base)


@pytest.mark.parametrize(("path", "optimizer"), example_cases(["adam", "sgd"]))
def test_conventions_are_one_family(path, optimizer):
    skip_refused(path, optimizer)
    program = tp.parse_file(path)
    k = tp.OPTIMIZERS[optimizer].a_coef
    forms = [tp.derive(program, optimizer, conv).abc for conv in tp.CONVENTIONS]
    invariants = [{p: (x.a + x.b, x.c + k * x.a) for p, x in f.items()} for f in forms]
    assert all(inv == invariants[0] for inv in invariants)
