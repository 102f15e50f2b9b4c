"""The coordinate check on bad runs and in a person's hands: a run that overflows ends in a
DIVERGED verdict naming where (never a traceback or a NaN slope judged ok), a CheckResult prints
as a summary, and the figure tells 50 vectors apart.

Every run is tiny (widths 8 and 16, one seed) and uses fixed seeds.
"""

from __future__ import annotations

import math

import pytest
from conftest import ROOT

import tensorprog
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.judge import Measurements, judge, render

torch = pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"
TINY = dict(widths=(8, 16), seeds=1, steps=2)


@pytest.fixture(scope="module")
def mlp():
    return tensorprog.parse_file(MLP)


def test_an_optimizer_step_that_overflows_is_a_divergence_not_a_traceback(mlp):
    # Adam's step size lr / (1 - beta1) does not fit a float32: torch refuses the step
    result = tensorprog.check(mlp, "adam", lr=1e38, **TINY)
    assert not result.passed
    assert [(w, why) for _, w, _, _, why in result.diverged] == [
        (8, "the optimizer's step size overflows at step 1"),
        (16, "the optimizer's step size overflows at step 1")]
    text = render(result)
    assert "DIVERGED: 2 run(s) overflowed to inf or nan" in text and "--lr 1e+37" in text
    assert "PASS" not in text and "WARNING" not in text  # one diagnosis, not two


def test_weights_that_overflow_name_the_first_vector_to_go_inf(mlp):
    result = tensorprog.check(mlp, "sgd", lr=1e6, **TINY)
    assert not result.passed and result.diverged
    vector, _, _, step, why = result.diverged[0]
    assert vector in {ins.out for ins in mlp.body} and step >= 1
    assert why == f"{vector} is the first vector to go inf or nan (step {step})"
    for r in result.results:  # no NaN slope is judged ok, judged step or not
        if math.isnan(r.slope) and any(not math.isfinite(x) for x in r.rms.values()):
            assert not r.ok and "diverged" in r.verdict


def test_a_nan_only_in_the_unjudged_first_step_still_fails(mlp):
    opt = OPTIMIZERS["adam"]
    m = Measurements()
    for w in (64, 256):
        for ins in mlp.body:
            for step in range(3):
                m.rms[(ins.out, step, w, 0)] = 1.0
    m.rms[("h2", 1, 256, 0)] = math.nan
    result = judge(mlp, opt, tensorprog.derive(mlp, "adam").abc, m)
    assert not result.passed
    assert result.diverged == [("h2", 256, 0, 1, "h2 is the first vector to go inf or nan "
                                                  "(step 1)")]
    assert not next(r for r in result.results if r.name == "h2" and r.step == 1).ok


def test_an_overflowing_run_is_reported_as_diverged(mlp):
    # the CLI refuses such an lr up front (tests/test_cli_hardening.py); the API still runs it
    result = tensorprog.check(mlp, "adam", lr=1e38, widths=(8, 16), seeds=1, steps=2)
    assert not result.passed and result.diverged
    assert "DIVERGED" in render(result)


def test_check_result_prints_as_a_summary(mlp):
    result = tensorprog.check(mlp, "adam", param="sp", widths=(64, 256), seeds=1, steps=2)
    failing = list(result.failures)
    assert failing and "y" in failing  # the output blows up
    assert repr(result) == (f"<CheckResult mlp sp adam: FAIL: {', '.join(failing)}, widths "
                            "64,256 x 1 seed(s), 2 steps>")
    lines = str(result).splitlines()
    assert lines[:3] == [
        "coordinate check of mlp under SP (constant LR) for adam",
        "  lr 0.01, widths 64, 256 x 1 seed(s), 2 steps, against what µP requires (±0.15)",
        f"  FAIL: {', '.join(failing)}"]
    assert lines[-1].startswith("    y: blows up in its change: slope +")
    assert lines[-1].endswith(", expected 0 (after step 2)")


def test_judged_measurements_print_the_program_and_optimizer(mlp):
    m = Measurements()
    for w in (64, 256):
        for ins in mlp.body:
            for step in range(3):
                m.rms[(ins.out, step, w, 0)] = 1.0
    result = tensorprog.judge(mlp, m, "sgd")
    assert repr(result) == "<CheckResult mlp sgd: PASS, widths 64,256 x 1 seed(s), 2 steps>"
    assert str(result).startswith("coordinate check of mlp under sgd\n")


def test_the_figure_draws_fifty_vectors_with_distinct_styles(mlp, tmp_path):
    from tensorprog.numerics.plots import coord_plot, vector_style

    styles = [vector_style(k) for k in range(240)]
    keys = {(s["color"], s["marker"], s["dashes"]) for s in styles}
    assert len(keys) == 240
    assert all(styles[k]["color"] != styles[k + 1]["color"] for k in range(239))
    m = Measurements()
    names = [f"v{k}" for k in range(50)]
    for w in (64, 128):
        for k, name in enumerate(names):
            for step in range(3):
                m.rms[(name, step, w, 0)] = (1 + k / 10) * (w / 64) ** (0.5 * (k % 7 == 0))
    result = judge(mlp, OPTIMIZERS["adam"], tensorprog.derive(mlp, "adam").abc, m)
    out = coord_plot(result, tmp_path / "fifty.png")
    assert out.stat().st_size > 10_000
