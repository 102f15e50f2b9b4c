"""µTransfer sweeps: the data loaders, fitting a program to its data, the optimum fit, drift and
wider-is-better on synthetic losses, divergence, the per-trial cache and the CLI (tiny sweeps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import ROOT, alive, all_gone, pool_workers, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorprog as tp
from tensorprog.cli.main import run
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.data import load
from tensorprog.numerics.transfer import (
    MIN_FINITE,
    Sweep,
    fit_to_data,
    parabola_vertex,
    run_trial,
    sweep,
)

torch = pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"
TIED = ROOT / "examples" / "transformer.tp"


def test_digits_loader():
    d = load("digits")
    assert tuple(d.x.shape) == (1797, 64) and d.vocab == 10 and not d.is_text
    assert abs(float(d.x.mean())) < 1e-4
    x, y = d.batch(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 64) and y.dtype == torch.long and int(y.max()) < 10


def test_text_loader_is_real_text_from_an_installed_package():
    d = load("text")
    assert d.is_text and d.vocab == 97 and len(d.tokens) > 400_000
    assert int(d.tokens.max()) < d.vocab
    x, y = d.batch(4, torch.Generator().manual_seed(0), seq=8)
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])  # next-token targets


def test_tensor_files_load(tmp_path):
    torch.save({"x": torch.randn(20, 5), "y": torch.arange(20) % 3}, tmp_path / "set.pt")
    torch.save({"tokens": torch.arange(100) % 7}, tmp_path / "stream.pt")
    labelled, stream = load(str(tmp_path / "set.pt")), load(str(tmp_path / "stream.pt"))
    assert labelled.vocab == 3 and tuple(labelled.x.shape) == (20, 5)
    assert stream.is_text and stream.vocab == 7
    with pytest.raises(tp.UsageError, match="unknown data set"):
        load("cifar")
    torch.save({"x": torch.randn(5, 2), "y": torch.tensor([0.5] * 5)}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    torch.save({"x": torch.randn(5, 2), "y": torch.arange(4)}, tmp_path / "short.pt")
    for name, why in (("bad", "non-negative integer labels"),
                      ("junk", "not a tensor file that torch.save wrote"),
                      ("short", "x must be \\(N, d_in\\)")):
        with pytest.raises(tp.UsageError, match=why):
            load(str(tmp_path / f"{name}.pt"))


def test_the_data_sets_the_programs_finite_dims_and_says_so():
    program, notes = fit_to_data(tp.parse_file(MLP), load("digits"))
    assert program.dim_table["d_in"].size == 64 and program.dim_table["d_out"].size == 10
    assert notes == ["input features: d_in = 64 (the program says 3072)"]
    program, notes = fit_to_data(tp.parse_file(TIED), load("text"))
    assert program.dim_table["V"].size == 97
    assert notes == ["vocabulary: V = 97 (the program says 64)"]
    with pytest.raises(tp.UsageError, match="needs one token input"):
        fit_to_data(tp.parse_file(MLP), load("text"))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(center=st.floats(-3, 3), curvature=st.floats(0.1, 10), offset=st.floats(0, 5))
def test_the_optimum_is_the_vertex_of_the_parabola(center, curvature, offset):
    xs = [-1.0, 0.0, 1.0]
    ys = [curvature * (x - center) ** 2 + offset for x in xs]
    assert parabola_vertex(xs, ys) == pytest.approx(min(max(center, -1.0), 1.0), abs=1e-9)


def _synthetic(optima: dict[int, float], diverge: tuple = ()) -> Sweep:
    values = [2.0 ** k for k in range(-8, 1)]
    losses = {"mup": {}}
    for w, c in optima.items():
        losses["mup"][w] = {v: (math.inf if (w, v) in diverge else
                                (math.log2(v) - c) ** 2 + 1.0 / w) for v in values}
    return Sweep("lr", sorted(optima), values, 1, losses)


def test_optima_drift_and_wider_is_better_on_known_curves():
    s = _synthetic({64: -4.3, 128: -4.3, 256: -4.3})
    for w in (64, 128, 256):
        assert s.optimum("mup", w) == (pytest.approx(-4.3), False)
    assert s.drift("mup") == pytest.approx(0.0) and s.wider_is_better("mup")
    moving = _synthetic({64: -2.0, 128: -3.0, 256: -5.5})
    assert moving.drift("mup") == pytest.approx(3.5)
    assert not moving.wider_is_better("mup")  # far from its own optimum, the wide one loses
    edge = _synthetic({64: 2.0, 128: 2.0})
    assert edge.optimum("mup", 64) == (0.0, True)  # the grid's last value, flagged
    broken = _synthetic({64: -4.0, 128: -4.0}, diverge=((128, 1.0),))
    assert not broken.wider_is_better("mup")  # the wider model diverged where the narrow did not
    assert broken.as_dict()["parametrizations"]["mup"]["losses"]["128"]["1.0"] is None


def test_a_divergent_trial_is_recorded_not_raised():
    program, _ = fit_to_data(tp.parse_file(MLP), load("digits"))
    from tensorprog.emit.module import emit
    from tensorprog.engine.parametrization import choose

    abc, _, label, _ = choose(program, OPTIMIZERS["sgd"], "sp")
    source = emit(program, abc, optimizer=OPTIMIZERS["sgd"], label=label, command="t").source
    result = run_trial({"source": source, "source_key": "t", "param": "sp", "width": 64,
                        "value": 1e6, "seed": 0, "hp": "lr", "data": "digits", "steps": 20,
                        "batch_size": 16, "seq": None, "optimizer": "sgd", "base_lr": 0.1,
                        "device": "cpu", "threads": 1})
    assert result["diverged"] and result["loss"] is None


def test_sweep_caches_every_trial_and_resumes(tmp_path):
    kw = dict(widths=(32, 64), values=[1e-3, 1e-2, 1e-1], steps=10, seeds=1, jobs=1,
              cache=tmp_path)
    first = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", **kw)
    assert first.settings["cached"] == 0 and len(list((tmp_path / "transfer").glob("*.json"))) == 12
    second = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", **kw)
    assert second.settings["cached"] == 12 and second.losses == first.losses
    assert set(first.losses) == {"mup", "sp"}


def _many_threads(job: dict) -> dict:
    torch.set_num_threads(job["threads"])  # as every trial does, for its worker's cores
    return {}


def test_trials_run_in_this_process_leave_its_thread_count_as_it_was():
    # a sweep of one job ran its trials here and left torch on every core: the rest of a test
    # run (from tests/emit on) then paid for spinning threads on a busy machine
    from tensorprog.numerics.backend import backend

    before = torch.get_num_threads()
    with backend(_many_threads, 1) as runner:
        runner.submit("t", {"threads": before + 2})
        assert runner.next_done() == ("t", {}) and torch.get_num_threads() == before + 2
    assert torch.get_num_threads() == before


@pytest.mark.slow  # 5 s; the sweep in processes is run by the interrupt tests by default
def test_cli_transfer_json_in_parallel_processes(tmp_path, capsys):
    args = ["transfer", str(TIED), "--data", "text", "--widths", "32,64", "--values",
            "1e-3,3e-3,1e-2", "--steps", "8", "--jobs", "2", "--cache", str(tmp_path),
            "--json", "--plot", str(tmp_path / "t.png")]
    assert run(args) == 0
    data = json.loads(capsys.readouterr().out)
    for param in ("mup", "sp"):
        entry = data["parametrizations"][param]
        assert set(entry["optimal_log2_hp"]) == {"32", "64"}
        assert isinstance(entry["wider_is_better"], bool)
        assert entry["drift_log2"] is None or entry["drift_log2"] >= 0
    assert data["notes"] == ["vocabulary: V = 97 (the program says 64)"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


# --- data that does not fit, wrong cache entries, too few points ----------------------------------


# an autoencoder-like program: its input and output share the dim d
SHARED = ("width n = 16\ndim d = 4\ninput x : [d]\nparam W1 : [n, d]\nparam W2 : [d, n]\n"
          "h = W1 @ x\nz = relu(h)\noutput y = W2 @ z\n")


def test_a_program_whose_input_and_output_share_a_dim(capsys, tmp_path):
    (tmp_path / "shared.tp").write_text(SHARED)
    torch.save({"x": torch.randn(8, 4), "y": torch.arange(8) % 3}, tmp_path / "set.pt")
    code, _, err = run_cli(capsys, "transfer", str(tmp_path / "shared.tp"), "--data",
                         str(tmp_path / "set.pt"), "--cache", "none")
    assert code == 2
    assert "input and output share the dim d, but the data has 4 input features and 3" in err
    torch.save({"x": torch.randn(8, 4), "y": torch.arange(8) % 4}, tmp_path / "square.pt")
    code, out, _ = run_cli(capsys, "transfer", str(tmp_path / "shared.tp"), "--data",
                         str(tmp_path / "square.pt"), "--cache", "none", "--param", "mup",
                         "--widths", "8,16", "--values", "1e-2,1e-1,1", "--steps", "2",
                         "--seeds", "1", "--jobs", "1", "--json")
    assert code == 0 and json.loads(out)["trials"] == 6  # as many features as classes: it runs


def test_wrong_cache_entries_are_trained_again_with_a_warning(capsys, tmp_path):
    torch.save({"x": torch.randn(32, 4, generator=torch.Generator().manual_seed(0)),
                "y": torch.arange(32) % 3}, tmp_path / "set.pt")
    cache = tmp_path / "cache"
    argv = ["transfer", str(MLP), "--data", str(tmp_path / "set.pt"), "--param", "mup", "--widths",
            "8,16", "--values", "1e-3,1e-2,1e-1", "--steps", "2", "--seeds", "1", "--jobs", "1",
            "--cache", str(cache), "--json"]
    code, out, err = run_cli(capsys, *argv)
    first = json.loads(out)["parametrizations"]["mup"]["losses"]
    assert code == 0 and "warning" not in err
    entries = sorted((cache / "transfer").glob("*.json"))
    assert len(entries) == 6
    good = json.loads(entries[1].read_text())
    entries[0].write_text('{"loss": 0.1')  # truncated
    entries[1].write_text(entries[2].read_text())  # another trial's result, filed under this one
    entries[2].write_text(json.dumps({**good, "key": entries[2].stem, "loss": "low"}))
    entries[3].write_text("[1, 2]")  # not an object
    code, out, err = run_cli(capsys, *argv)
    data = json.loads(out)
    assert code == 0 and data["cached"] == 2
    assert "4 cached trial(s)" in err and "trained again" in err
    assert data["parametrizations"]["mup"]["losses"] == first  # the same numbers, recomputed
    code, out, err = run_cli(capsys, *argv)
    assert json.loads(out)["cached"] == 6 and "warning" not in err  # rewritten, now good


def _sweep(losses: dict[int, list[float]]) -> Sweep:
    values = [2.0 ** k for k in range(-4, 1)]
    return Sweep("lr", sorted(losses), values, 1,
                 {"mup": {w: dict(zip(values, row, strict=True)) for w, row in losses.items()}},
                 {"program": "p", "data": "d", "data_about": "", "optimizer": "adam",
                  "steps": 1, "batch_size": 1, "device": "cpu", "trials": 10, "cached": 0})


def test_a_sweep_that_all_diverged_claims_nothing():
    from tensorprog.numerics.transfer import render

    s = _sweep({8: [math.inf] * 5, 16: [math.inf] * 5})
    assert s.wider_is_better("mup") is None and s.drift("mup") is None
    assert s.optimum("mup", 8) == (None, True)
    text = render(s)
    assert "at every value: undetermined" in text and "every trial diverged" in text
    assert "yes" not in text
    entry = s.as_dict()["parametrizations"]["mup"]
    assert entry["wider_is_better"] is None and entry["undetermined"]


def test_too_few_finite_points_give_no_optimum_and_no_verdict():
    inf = math.inf
    s = _sweep({8: [1.0, 0.5, inf, inf, inf], 16: [0.9, 0.4, inf, inf, inf]})
    assert MIN_FINITE == 3
    assert s.optimum("mup", 8)[0] is None and s.wider_is_better("mup") is None
    assert "fewer than 3 HP values" in " ".join(s.undetermined("mup"))
    # one wider run that diverged where the narrower trained is a counterexample, a clear "no"
    s = _sweep({8: [1.0, 0.5, 0.7, 0.9, 2.0], 16: [0.9, 0.4, 0.6, 0.8, inf]})
    assert s.wider_is_better("mup") is False and s.optimum("mup", 16)[0] is not None
    s = _sweep({8: [1.0, 0.5, 0.7, 0.9, inf], 16: [0.9, 0.4, 0.6, 0.8, inf]})
    assert s.wider_is_better("mup") is True and s.undetermined("mup") == []


# --- the worker processes of a sweep die with their driver --------------------------------------


def _sweep_with_workers(tmp_path):
    """A driver of a long two-job sweep, once both its workers train: (driver, worker pids)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tensorprog.cli", "transfer", str(MLP), "--data", "digits",
         "--widths", "8,16", "--values", "1e-3,1e-2,1e-1", "--steps", "100000", "--seeds", "1",
         "--jobs", "2", "--cache", str(tmp_path)],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = pool_workers(driver)
    if len(workers) == 2:
        time.sleep(3)  # past their start: training
        return driver, workers
    driver.kill()
    driver.communicate()
    pytest.fail("the sweep started no two workers in 90 s")


@pytest.mark.slow  # 8 s of processes; the interrupt by ctrl-c below stays in the default run
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_workers_die_when_the_driver_is_killed(tmp_path):
    # before: after kill -9 of the driver the workers trained on, each for minutes
    import os
    import signal

    driver, workers = _sweep_with_workers(tmp_path)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()  # reaps it and closes its pipes
    assert all_gone(workers)
    assert not list((tmp_path / "transfer").glob("*.json"))  # no trial finished to be cached


@pytest.mark.slow  # ~8 s of worker start-up: with -m slow (the default run's CPU budget)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_stops_a_parallel_sweep_at_once(tmp_path):
    # before: 16-31 s, while the pool's shutdown waited for the queued trials
    import os
    import signal
    import time

    driver, workers = _sweep_with_workers(tmp_path)
    start = time.monotonic()
    os.killpg(driver.pid, signal.SIGINT)  # as the terminal does: the driver and its workers
    _, err = driver.communicate(timeout=30)
    assert time.monotonic() - start < 8
    assert driver.returncode == 130 and b"interrupted: the finished trials are cached" in err
    assert b"Traceback" not in err
    assert not any(alive(w) for w in workers)


def test_the_library_sweep_refuses_a_run_too_big_before_training(monkeypatch):
    # before, only the transfer command checked the sizes: sweep() from Python went on to train
    from tensorprog.ir import sizes

    monkeypatch.setattr(sizes, "throughput", lambda device="cpu", dtype="float32": 1e10)
    monkeypatch.delenv(sizes.MAX_MINUTES_VAR, raising=False)
    # 44 runs: 2 parametrizations x 11 values x 2 seeds; the weights are those of the data's
    # dims (d_in = 64 from digits, not the program's 3072)
    weights = 4096 * 64 + 4096 + 4096 * 4096 + 4096 + 10 * 4096
    with pytest.raises(tp.UsageError, match=rf"--widths 64,4096: 44 run\(s\) of 100,000 step\(s\) "
                                            rf"at each width, the largest with {weights:,} "
                                            r"weights: about [\d.]+ h(.|\n)*fewer runs \(--param, "
                                            r"--values, --seeds\)"):
        sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", widths=[64, 4096],
              steps=100_000, cache=None)
