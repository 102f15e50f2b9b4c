"""The coordinate check: the three-way demonstration (µP passes, SP blows up, NTP freezes), its
agreement with classify, a used-by test through the public API, the CLI, and the judge itself.

Every run uses fixed seeds; the tolerance is the documented default (±0.15, see check.py).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, import_file
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorprog
from tensorprog.cli.main import run
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.judge import (
    TOLERANCE,
    Measurements,
    expectations,
    fit_slope,
    judge,
    render,
)
from tensorprog.numerics.measure import build, measure

torch = pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"


def example(name: str) -> tensorprog.Program:
    return tensorprog.parse_file(ROOT / "examples" / f"{name}.tp")

WIDTHS = (64, 128, 256, 512, 1024, 2048)
CASES = {"mup": "adam", "sp": "adam", "ntp": "sgd"}  # NTP is TP4's SGD parametrization


@pytest.fixture(scope="module")
def three_way():
    """One measurement per parametrization of examples/mlp.tp, judged both ways."""
    program = example("mlp")
    out = {}
    for param, opt_name in CASES.items():
        opt = OPTIMIZERS[opt_name]
        abc, _, label, _ = choose(program, opt, param)
        module = load_module(emit(program, abc, optimizer=opt, label=label, command="t"),
                             param)
        m = measure(module, WIDTHS, steps=3, seeds=range(3), lr=0.01 if opt_name == "adam"
                    else 0.1, optimizer=opt_name)
        out[param] = (judge(program, opt, abc, m, against="mup"),
                      judge(program, opt, abc, m, against="predicted"), abc, opt)
    return program, out


def _change(result, name, step=3):
    return result.slope(name, step)


def test_mup_passes_with_every_slope_flat_after_training(three_way):
    _, out = three_way
    mup = out["mup"][0]
    assert mup.passed, mup.failures
    for r in mup.results:
        if r.step >= 1:
            assert abs(r.slope) <= TOLERANCE, (r.name, r.step, r.slope)
    assert mup.slope("y", 0) == pytest.approx(-0.5, abs=TOLERANCE)  # readout init n^-1/2


def test_sp_at_constant_adam_lr_fails_and_names_hidden_and_output(three_way):
    _, out = three_way
    sp = out["sp"][0]
    assert not sp.passed
    assert set(sp.failures) == {"h2_1", "h2", "x2", "y"}
    for name in ("h2", "x2"):
        assert _change(sp, name) > 0.5  # n^1 as n -> oo; pre-asymptotic here (d_in = 3072)
    assert _change(sp, "y") > 1.2  # n^3/2 as n -> oo
    assert all("blows up" in e.verdict for entries in sp.failures.values() for e in entries)


def test_ntp_features_shrink_as_n_to_the_minus_half(three_way):
    _, out = three_way
    ntp = out["ntp"][0]
    assert not ntp.passed
    assert set(ntp.failures) == {"h1_1", "h1", "x1", "h2_1", "h2", "x2"}
    for name in ntp.failures:
        assert _change(ntp, name) == pytest.approx(-0.5, abs=TOLERANCE)
        assert "freezes" in ntp.failures[name][0].verdict
    assert abs(_change(ntp, "y")) <= TOLERANCE  # the output still moves: the kernel regime


def test_every_measured_slope_agrees_with_classify(three_way):
    program, out = three_way
    regimes = {"mup": "feature_learning", "sp": "unstable", "ntp": "kernel"}
    for param, (_, predicted, abc, opt) in out.items():
        assert predicted.passed, (param, predicted.failures)
        c = tensorprog.classify(program, opt.name, abc=abc)
        assert c.regime == regimes[param]
        an = c.analysis
        for r in predicted.results:  # the judge compared each slope with exactly these
            want = an.init_[r.name] if r.step == 0 else an.change_[r.name]
            assert r.expected.exponent == want


def test_used_by_plain_training_loop_through_the_public_api(tmp_path):
    out = tmp_path / "mlp_mup.py"
    assert run(["derive", str(MLP), "-o", str(out)]) == 0
    mod = import_file(out, "mlp_mup_user")

    measurements = tensorprog.Measurements()
    for width in (64, 256, 1024):
        torch.manual_seed(0)
        model = mod.Model(width)
        opt = mod.make_optimizer(model, lr=0.01)
        x = torch.randn(8, 3072, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            measurements.record(width, 0, model.vectors(x))
        for step in (1, 2, 3):
            loss = torch.nn.functional.cross_entropy(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                measurements.record(width, step, model.vectors(x))
    program = tensorprog.parse_file(MLP)
    result = tensorprog.judge(program, measurements, "adam")
    assert result.passed, result.failures
    # the feature-learning condition itself: hidden features move by Θ(1) at every width
    for name in ("h1", "x1", "h2", "x2"):
        assert abs(result.slope(name, 3)) <= TOLERANCE
        assert all(v > 1e-3 for v in next(r.rms for r in result.results
                                          if r.name == name and r.step == 3).values())


def test_readout_zero_init_passes_with_an_exactly_zero_output_at_init():
    result = tensorprog.check(example("mlp"), "adam", readout_zero_init=True,
                              widths=(64, 256, 1024), seeds=2)
    assert result.passed, result.failures
    assert not result.unstable  # late starters accelerate, but a zero init is not flagged
    y0 = next(r for r in result.results if r.name == "y" and r.step == 0)
    assert y0.slope == -math.inf and y0.verdict.startswith("exactly zero")


# the two widest examples (4n hidden layers, 30-60 s of CPU for the pair) and the residual MLP
# (3 s; the ResNet's check below keeps a residual stream in) run with -m slow: the default run
# keeps the rnn and the dot readout under both optimizers
_WIDE = pytest.mark.slow


@pytest.mark.parametrize("name", [pytest.param("gated_mlp", marks=_WIDE),
                                  pytest.param("mlp_expand", marks=_WIDE), "rnn",
                                  pytest.param("mlp_resnet", marks=_WIDE), "dot_readout"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_every_example_passes_under_its_derived_mup(name, optimizer):
    result = tensorprog.check(example(name), optimizer)
    assert result.passed, result.failures
    assert not result.unstable, result.unstable


# --- the CLI ------------------------------------------------------------------------------------


FAST = ["--widths", "64,128,256,512", "--seeds", "1", "--steps", "2"]


def test_cli_check_exit_status_json_and_plot(tmp_path, capsys):
    program = str(MLP)
    assert run(["check", program, *FAST]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "change t=2" in text
    png = tmp_path / "coord.png"
    assert run(["check", program, "--param", "sp", *FAST, "--json", "--plot", str(png)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False and data["against"] == "mup"
    assert set(data["failures"]) >= {"h2", "y"}
    entry = next(t for t in data["tensors"] if t["name"] == "y" and t["step"] == 2)
    assert set(entry) >= {"slope", "spread", "expected", "ok", "verdict", "rms"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cli_check_cuda_without_a_device(capsys):
    from tensorprog.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["check", str(MLP), "--device", "cuda"])
    assert exit_.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


# --- the judge, on synthetic power laws ---------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True)
@given(exponent=st.fractions(-2, 2, max_denominator=4), scale=st.floats(1e-3, 1e3))
def test_fit_recovers_an_exact_power_law(exponent, scale):
    m = Measurements()
    for w in (64, 128, 512, 4096):
        m.rms[("v", 0, w, 0)] = scale * w ** float(exponent)

    assert fit_slope(m.axis(2), [m.rms[("v", 0, w, 0)] for w in m.axis(2)]) == pytest.approx(
        float(exponent), abs=1e-9)


def _synthetic(program, sizes):
    """Measurements where vector v at init and its change follow n^sizes[v] exactly."""
    m = Measurements()
    for seed in (0, 1):
        for w in (64, 256, 1024):
            for step in (0, 1, 2):
                for ins in program.body:
                    e = sizes.get((ins.out, step), 0.0)
                    m.rms[(ins.out, step, w, seed)] = 0.0 if e is None else w ** e
    return m


def test_judge_names_blow_ups_freezes_and_frozen_zeros():
    program = example("mlp")
    opt = OPTIMIZERS["adam"]
    abc = tensorprog.derive(program, "adam").abc
    ok = judge(program, opt, abc, _synthetic(program, {("y", 0): -0.5}))
    assert ok.passed
    bad = judge(program, opt, abc, _synthetic(program, {("h2", 2): 0.4, ("x1", 2): -0.5,
                                                          ("x2", 2): None, ("y", 0): 0.5}))
    verdicts = {name: entries[0].verdict for name, entries in bad.failures.items()}
    assert set(verdicts) == {"h2", "x1", "x2", "y"}
    assert verdicts["h2"].startswith("blows up in its change")
    assert verdicts["x1"].startswith("freezes in its change")
    assert verdicts["x2"].startswith("exactly zero in its change")
    assert verdicts["y"].startswith("blows up at init")
    # step 1 is measured but not judged
    lenient = judge(program, opt, abc, _synthetic(program, {("h2", 1): 0.9, ("y", 0): -0.5}))
    assert lenient.passed


def test_judge_reports_divergence_and_partial_zeros_instead_of_a_slope():
    program = example("mlp")
    opt = OPTIMIZERS["adam"]
    abc = tensorprog.derive(program, "adam").abc
    m = _synthetic(program, {("y", 0): -0.5})
    m.rms[("h2", 2, 1024, 0)] = math.inf
    m.rms[("x2", 2, 64, 1)] = 0.0
    bad = judge(program, opt, abc, m)
    verdicts = {name: entries[0].verdict for name, entries in bad.failures.items()}
    # which runs (width, seed), and that the model's own values are not finite
    assert verdicts["h2"] == ("not finite in its change: the model's own values are inf or nan "
                              "in seed 0 (width 1024), so no slope can be fit")
    assert verdicts["x2"].startswith("exactly zero in its change in seed 1 (width 64) but not in "
                                     "seed 0 (every width), seed 1 (width 256, 1024) (nothing")
    assert set(verdicts) == {"h2", "x2"}
    assert [(v, w, s, t) for v, w, s, t, _ in bad.diverged] == [("h2", 1024, 0, 2)]
    assert "the model's own values are not finite" in render(bad)


def test_a_change_exactly_zero_in_one_seed_has_no_slope_and_says_which_seed():
    """EfficientNet's case: at HF's init (batch-norm gains of std 0.02) a batch of 2 whose two
    targets are equal sends no gradient above float32's rounding to its first layers, whose
    change is then exactly 0 at every width in that seed and not in the other. The mean of a
    slope of -inf and a finite one was nan, which the zoo printed as a slope of +nan."""
    program = example("mlp")
    opt = OPTIMIZERS["adam"]
    abc = tensorprog.derive(program, "adam").abc
    m = _synthetic(program, {("y", 0): -0.5})
    for step in (1, 2):
        for w in (64, 256, 1024):
            m.rms[("h1", step, w, 1)] = 0.0
    bad = judge(program, opt, abc, m)
    (entry,) = bad.failures["h1"]
    assert entry.step == 2 and math.isnan(entry.slope) and not bad.diverged
    assert entry.verdict.startswith("exactly zero in its change in seed 1 (every width) but not "
                                    "in seed 0 (every width)"), entry.verdict
    step1 = next(r for r in bad.results if r.name == "h1" and r.step == 1)
    assert step1.ok and step1.verdict.endswith("(step 1: not judged)")
    assert "h1: exactly zero in its change in seed 1" in render(bad)
    # a depth check's runs are at depths (its measurements' width axis)
    from tensorprog.numerics.noslope import no_slope
    assert "in seed 1 (every depth) but not in seed 0 (every depth)" in no_slope(
        m, "h1", 2, (64, 256, 1024), (0, 1), "depth")
    assert json.loads(json.dumps(bad.as_dict(), allow_nan=False))["passed"] is False


def test_measurements_need_step_zero_first():
    m = Measurements()
    with pytest.raises(tensorprog.UsageError, match="step 0"):
        m.record(64, 1, {"h": torch.zeros(2, 3)})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_check_on_cuda_matches_cpu():
    program = example("mlp")
    kw = dict(widths=(64, 256, 1024, 4096), seeds=2)
    gpu = tensorprog.check(program, "adam", device="cuda", **kw)
    cpu = tensorprog.check(program, "adam", device="cpu", **kw)
    assert gpu.passed and gpu.settings["device"] == "cuda"
    for a, b in zip(gpu.results, cpu.results, strict=True):
        if math.isfinite(a.slope):
            assert a.slope == pytest.approx(b.slope, abs=0.02)


def test_resnet_passes_under_mup_and_sp_fails():
    """Each step's update sums over 1,024 pixels: at the default LR and small widths the features
    move far from init within 3 steps, so this check uses lr 1e-3 (docs/check.md)."""
    program = example("resnet")
    assert tensorprog.check(program, "adam", widths=(32, 64, 128, 256), seeds=2, lr=1e-3).passed
    # SP's blow-up is clear at three widths and one seed (y's slope +2.2): half the CPU of µP's run
    sp = tensorprog.check(program, "adam", param="sp", widths=(32, 64, 128), seeds=1, lr=1e-3)
    assert {"h2", "y"} <= set(sp.failures)
    assert sp.slope("y", 3) > 1.0


@pytest.mark.slow  # the ResNet's Adam check (above) stays in the default run
def test_resnet_passes_under_mup_with_sgd_at_a_stable_learning_rate():
    """At lr 0.1 SGD diverges within 3 steps at every width (the check warns, next test); at
    lr 0.01 it passes. Widths from 64: over 32..256 the second block drifts to +0.16."""
    result = tensorprog.check(example("resnet"), "sgd", lr=0.01, widths=(64, 128, 256, 512),
                              seeds=2)
    assert result.passed, result.failures
    assert not result.unstable


def test_a_diverging_run_is_named_and_a_lower_learning_rate_suggested():
    """Synthetic measurements: every change grows linearly in the steps except three. h2 grows
    x20 from step 2 to step 3 past its init size: flagged at every width. x2 overflows at one
    width: flagged with growth inf. y starts at exactly 0 (a zero-initialised readout) and its
    change accelerates as a late starter's does: not flagged."""
    program = example("mlp")
    opt = OPTIMIZERS["adam"]
    abc = tensorprog.derive(program, "adam").abc
    m = Measurements()
    for w in (64, 256, 1024):
        for ins in program.body:
            for step in range(4):
                m.rms[(ins.out, step, w, 0)] = 1.0 if step == 0 else 0.1 * step
        m.rms[("h2", 3, w, 0)] = 4.0
        m.rms.update({("y", 0, w, 0): 0.0, ("y", 1, w, 0): 0.01, ("y", 2, w, 0): 0.1,
                      ("y", 3, w, 0): 2.0})
    m.rms[("x2", 3, 1024, 0)] = math.inf
    result = judge(program, opt, abc, m)
    flagged = [(v, w, t) for v, w, t, _ in result.unstable]
    assert flagged == [("h2", 64, 3), ("h2", 256, 3), ("h2", 1024, 3), ("x2", 1024, 3)]
    assert result.unstable[0][3] == pytest.approx(20.0) and result.unstable[-1][3] == math.inf
    result.settings["lr"] = 0.1
    text = render(result)
    assert "x2 overflowed to inf or nan from step 2 to step 3 at width 1024" in text
    assert "--lr 0.01" in text
    d = result.as_dict()["unstable"]
    assert d[0] == {"vector": "h2", "width": 64, "step": 3, "growth": pytest.approx(20.0)}
    assert d[-1]["growth"] == "inf"
    json.dumps(result.as_dict(), allow_nan=False)  # valid JSON


def test_the_resnet_under_sgd_at_lr_0_1_is_named_as_diverging():
    """The motivating case: the second block's change grows x18 from step 2 to 3 at width 64
    with the default widths (docs/check.md); two small widths show it too."""
    result = tensorprog.check(example("resnet"), "sgd", lr=0.1, widths=(32, 64), seeds=1)
    assert {"h2", "y"} <= {v for v, *_ in result.unstable}
    result.settings["lr"] = 0.1
    assert "WARNING: training may be diverging" in render(result)


# --- bad runs: divergence named, never a traceback; results for people ----------------------------


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
    assert why == (f"{vector} is the first vector to go inf or nan (step {step}): the model's "
                   "own values are not finite")
    for r in result.results:  # no NaN slope is judged ok, judged step or not
        if math.isnan(r.slope) and any(not math.isfinite(x) for x in r.rms.values()):
            assert not r.ok and r.verdict.startswith("not finite"), r.verdict


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
                                                  "(step 1): the model's own values are not "
                                                  "finite")]
    assert not next(r for r in result.results if r.name == "h2" and r.step == 1).ok


def test_an_overflowing_run_is_reported_as_diverged(mlp):
    # the CLI refuses such an lr up front (tests/test_cli_hardening.py); the API still runs it
    result = tensorprog.check(mlp, "adam", lr=1e38, widths=(8, 16), seeds=1, steps=2)
    assert not result.passed and result.diverged
    assert "DIVERGED" in render(result)
    # a run stopped before a step: its vectors say so, not that the model's values went inf
    _, _, _, t, why = result.diverged[0]
    r = next(r for r in result.results if r.step == t and r.name == "h2")
    assert r.verdict == (f"not measured in its change: its runs in seed 0 (every width) stopped "
                         f"at step {t} ({why}), so no slope can be fit"), r.verdict


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


@pytest.mark.slow  # 6 s of matplotlib; the CLI test draws a plot by default too
def test_the_figure_draws_fifty_vectors_with_distinct_styles(mlp, tmp_path):
    from tensorprog.numerics.plots import coord_plot, drawn_here, vector_style

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
    assert drawn_here(out)  # so --plot may replace it; a photo of the same name it may not
    for suffix in ("pdf", "svg"):
        assert drawn_here(coord_plot(result, tmp_path / f"fifty.{suffix}"))
    assert not drawn_here(coord_plot(result, tmp_path / "fifty.jpg"))  # jpeg takes no metadata


def test_check_under_bf16_autocast_trains_in_bf16_and_records_in_float32():
    program = example("mlp")
    kw = dict(widths=(64, 128), seeds=1, steps=2, device="cpu")
    fp32 = tensorprog.check(program, "adam", **kw)
    bf16 = tensorprog.check(program, "adam", autocast="bf16", **kw)
    assert bf16.settings["autocast"] == "bf16" and fp32.settings["autocast"] is None
    assert "on cpu under bf16 autocast" in render(bf16)
    a = {(r.name, r.step): r.rms for r in fp32.results}
    b = {(r.name, r.step): r.rms for r in bf16.results}
    # init is recorded before any step, in float32: the same numbers
    assert all(b[k] == a[k] for k in a if k[1] == 0)
    # the steps ran in bfloat16 (the changes differ) and only by its rounding (2^-8 relative,
    # through Adam's normalised updates: measured 1.0% at most here)
    moved = [abs(b[k][w] / a[k][w] - 1) for k in a if k[1] > 0 for w in a[k]]
    assert 0 < max(moved) < 0.05


def test_cli_check_autocast_is_in_the_json(capsys):
    argv = ["check", str(MLP), "--widths", "64,128", "--seeds", "1", "--steps", "2",
            "--device", "cpu", "--json"]
    run([*argv, "--autocast", "bf16"])
    assert json.loads(capsys.readouterr().out)["autocast"] == "bf16"
    run(argv)  # the default: none
    assert json.loads(capsys.readouterr().out)["autocast"] is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_check_on_cuda_under_bf16_autocast_matches_float32():
    program = example("mlp")
    kw = dict(widths=(64, 256, 1024, 4096), seeds=2, device="cuda")
    bf16 = tensorprog.check(program, "adam", autocast="bf16", **kw)
    fp32 = tensorprog.check(program, "adam", **kw)
    assert bf16.passed and bf16.settings["autocast"] == "bf16"
    for a, b in zip(bf16.results, fp32.results, strict=True):
        if math.isfinite(a.slope):
            assert a.slope == pytest.approx(b.slope, abs=0.05)


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_a_model_built_on_meta_starts_as_one_built_on_the_cpu(name):
    program = example(name)
    abc, depth_abc, label, eps = choose(program, OPTIMIZERS["adam"], "mup")
    module = load_module(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label,
                              command="t", depth_abc=depth_abc, eps=eps), f"{name}_built")
    fast = build(module, (64,), {}, seed=3)
    slow = module.Model(64)
    slow.reset_parameters(generator=torch.Generator().manual_seed(3))
    assert fast.state_dict().keys() == slow.state_dict().keys()
    for key, value in slow.state_dict().items():
        assert value.device.type == "cpu" and torch.equal(fast.state_dict()[key], value), key


GATED = """
width n = 64
dim V = 16
dim T = 16
dim f1 = 1
input tok : tokens[T, V]
param E : [n, V]
param Wg : [f1, n]
param bg : [f1]{init}
param U : [V, n]
h = E @ tok
g = Wg @ h + bg
y = h * spread(g, n)
out = U @ y
output out
"""


@pytest.mark.parametrize("zero", [True, False])
def test_a_gate_whose_zero_bias_leaves_it_a_readouts_size_is_judged_by_that_size(zero):
    # g = Wg @ h + bg: a readout's W·h, Θ(1/√n) at init, beside a bias µP counts as Θ(1). A
    # bias of the constant 0 (HF's FocalNet gates) leaves g, and y = h * spread(g, n), at
    # Θ(1/√n) at init: µP with that bias zero-initialised, held to that size (a bias of 3
    # keeps µP's Θ(1)); the measured run is the oracle of what the zero bias does
    program = tensorprog.parse(GATED.format(init=" = 0" if zero else " = 3"))
    opt = OPTIMIZERS["adam"]
    abc, _, label, _ = choose(program, opt, "mup")
    module = load_module(emit(program, abc, optimizer=opt, label=label, command="t"), "gated")
    widths = (64, 256, 1024)
    m = measure(module, widths, steps=2, seeds=(0,), lr=0.01, optimizer="adam", batch_size=4)
    slope = fit_slope(widths, [m.rms[("y", 0, w, 0)] for w in widths])
    assert slope == pytest.approx(-0.5 if zero else 0.0, abs=TOLERANCE)
    assert float(expectations(program, opt, abc)[("y", "init")].exponent) == (-0.5 if zero else 0)
    result = judge(program, opt, abc, m)
    assert not {"g", "y"} & set(result.failures), render(result)
