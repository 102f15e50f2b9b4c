"""``tensorprog tune``: the search space made from the derivation (role groups, never names), a
tiny study end to end (the JSON, the loader, the emitted module taking the values, resuming),
pruning, and the local backend shared with transfer. Every study here trains an MLP of width 16
for a few steps, in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, all_gone, pool_workers, run_cli

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.backend import backend
from tensorprog.numerics.data import load
from tensorprog.numerics.transfer import fit_to_data, run_trial
from tensorprog.numerics.tune import load_config, search_space

torch = pytest.importorskip("torch")
pytest.importorskip("optuna")
MLP = ROOT / "examples" / "mlp.tp"
TIED = ROOT / "examples" / "transformer.tp"


def _module(program, convention="table3", param="mup"):
    abc, depth_abc, label, eps = choose(program, OPTIMIZERS["adam"], param, convention)
    source = emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                  depth_abc=depth_abc, eps=eps).source
    return load_module(tp.emit.module.Emitted(source), param)


def _space(text_or_path, convention="table3"):
    program = (tp.parse_file(text_or_path) if not isinstance(text_or_path, str)
               else tp.parse(text_or_path))
    return search_space(program, _module(program, convention), "adam")


def test_role_groups_come_from_the_derivation_not_the_names():
    space = _space(MLP)
    assert space.sigma == {"sigma_input": ("W1",), "sigma_vector": ("b1", "b2"),
                           "sigma_hidden": ("W2",), "sigma_output": ("W3",)}
    assert space.mult == {}  # table3: no forward multiplier to tune
    # the same network with its names shuffled: the groups follow the fans, not the names
    renamed = MLP.read_text().replace("W1", "Zout").replace("W3", "Win").replace("W2", "Wq")
    assert _space(renamed).sigma == {"sigma_input": ("Zout",), "sigma_vector": ("b1", "b2"),
                                     "sigma_hidden": ("Wq",), "sigma_output": ("Win",)}
    # the mup convention gives the readout a multiplier: it is tuned, as the output group's
    assert _space(MLP, "mup").mult == {"mult_output": ("W3",)}
    # a decoder: gains and biases (constant inits) have no σ; the attention and the tied
    # unembedding scales are tuned each by its program name, from its declared base value
    dec = _space(TIED)
    assert set(dec.mult) == {"mult_attn", "mult_tie"} and dec.base_mult["attn"] > 0
    assert dec.sigma["sigma_input"] == ("E", "P")
    assert set(dec.sigma) == {"sigma_input", "sigma_hidden"}


def test_a_pruned_trial_stops_at_the_step_it_was_told(tmp_path):
    program, _ = fit_to_data(tp.parse_file(MLP), load("digits"))
    module_source = emit(program, choose(program, OPTIMIZERS["adam"], "mup").abc,
                         optimizer=OPTIMIZERS["adam"], label="t", command="t").source
    seen = []

    def report(step, loss):
        seen.append((step, loss))
        return step >= 4

    job = {"source": module_source, "source_key": "p", "param": "mup", "width": 16,
           "value": 1.0, "seed": 0, "hp": "tune", "data": "digits", "steps": 6,
           "batch_size": 8, "seq": None, "optimizer": "adam", "base_lr": 1e-3, "device": "cpu",
           "threads": 1, "report_every": 2, "init_std": {"W2": 0.5}}
    result = run_trial(job, report)
    assert result == {"loss": None, "diverged": False, "steps": 4, "pruned": True}
    assert [s for s, _ in seen] == [2, 4]
    with backend(run_trial, 1) as runner:  # the backend both commands share, in this process
        runner.submit("a", {**job, "report_every": None})
        tag, whole = runner.next_done()
    assert tag == "a" and whole["steps"] == 6 and not whole["diverged"]


def test_a_study_writes_values_the_emitted_module_takes_and_resumes(tmp_path, capsys):
    out = tmp_path / "best.json"
    args = ["tune", str(MLP), "--data", "digits", "--width", "16", "--trials", "3", "--steps",
            "6", "--batch-size", "16", "--cache", str(tmp_path), "-o", str(out)]
    code, text, _ = run_cli(capsys, *args)
    assert code == 0 and "3 complete" in text and "sigma_hidden" in text
    config = load_config(out)
    saved = json.loads(out.read_text())
    assert saved["trials"] == {"complete": 3} and saved["width"] == 16
    assert saved["flops"] > 0 and saved["trial_seconds"] > 0
    # the values are the Model's: the fitted program's module (d_in = 64) takes them as they are
    program, _ = fit_to_data(tp.parse_file(MLP), load("digits"))
    module = _module(program)
    model = module.Model(16, **config.model_kwargs(module))
    assert model._base_std["W2"] == pytest.approx(config.init_std["W2"])
    module.make_optimizer(model, **config.optimizer_kwargs())
    # the same command with one more trial resumes the study: it trains that one alone
    code, text, _ = run_cli(capsys, *args[:6], "--trials", "4", *args[8:], "--json")
    assert code == 0 and sum(json.loads(text)["trials"].values()) == 4


def test_values_tuned_in_another_convention_are_refused_by_name(tmp_path, capsys):
    out = tmp_path / "mup.json"
    code, _, _ = run_cli(capsys, "tune", str(MLP), "--data", "digits", "--width", "16",
                         "--trials", "1", "--steps", "3", "--batch-size", "8", "--convention",
                         "mup", "--cache", str(tmp_path), "-o", str(out))
    assert code == 0 and set(load_config(out).mult) == {"W3"}
    program, _ = fit_to_data(tp.parse_file(MLP), load("digits"))
    # the file records the scaling it was tuned with: the module's own load_config compares
    with pytest.raises(tp.UsageError, match=r"param 'W3' has a 1.0 there, 0.0 here"
                                            r"(.|\n)*--convention mup"):
        load_config(out).model_kwargs(_module(program, "table3"))
    assert load_config(out).model_kwargs(_module(program, "mup"))["mult"]["W3"] > 0


@pytest.mark.slow  # tune and train_once, covered above; this keeps the script from rotting
def test_the_benchmark_runs_in_quick_mode(capsys, tmp_path):
    # benchmarks/bench_tune.py: tune small and train once, against tuning at the large width,
    # and SP as the contrast, at tiny sizes (no Ray)
    bench = _bench()
    bench.main(["--quick", "--json", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    assert "| µP, tuned at 16, trained once |" in out and "| µP, tuned directly at 32 |" in out
    assert "| SP, tuned at 16, trained once |" in out
    # the recheck remakes the module values from the dumped factors: with the same seed it
    # reproduces µP-small's run at 32 exactly
    row = json.loads((tmp_path / "d.json").read_text())["arms"]["mup_small"][0]
    bench.main(["--from-json", str(tmp_path / "d.json"), "--recheck", "0"])
    out = capsys.readouterr().out
    assert f"mup_small: {row['at']['32']:.4f}; seed 0 {row['at']['32']}" in out


@pytest.mark.slow  # a driver and two workers, each importing torch: the pool itself is tested
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")  # by transfer's
def test_a_killed_study_leaves_no_worker_and_its_rerun_trains_the_lost_trials(tmp_path, capsys):
    # kill -9 of the driver: its two workers die with it (workers.py); the trials it left
    # running in the study are marked failed on the next run and trained again
    import os
    import signal
    import subprocess
    import sys
    import time

    study = ["--study", "killed", "--cache", str(tmp_path), "--width", "16",
             "--batch-size", "8"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "tensorprog.cli", "tune", str(MLP), "--data", "digits",
         "--trials", "4", "--steps", "100000", "--jobs", "2", *study],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = pool_workers(driver)
    assert len(workers) == 2, "the study started no two workers in 90 s"
    time.sleep(3)  # past their start: training
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    assert all_gone(workers)
    code, text, _ = run_cli(capsys, "tune", str(MLP), "--data", "digits", "--trials", "1",
                            "--steps", "2", *study)
    assert code == 0 and "2 trial(s) left running by an interrupted run" in text
    assert "1 complete, 2 fail" in text


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tune",
                                                  ROOT / "benchmarks" / "bench_tune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_benchmarks_best_so_far_counts_complete_trials_only():
    # the figure's curve: pruned and failed trials have no final loss, the order is the asking
    trials = [{"number": 2, "state": "complete", "loss": 0.5},
              {"number": 0, "state": "pruned", "loss": None},
              {"number": 1, "state": "complete", "loss": 0.7},
              {"number": 3, "state": "fail", "loss": None},
              {"number": 4, "state": "complete", "loss": 0.6}]
    assert _bench().best_so_far(trials) == [None, 0.7, 0.5, 0.5, 0.5]


def test_the_benchmarks_dumps_merge_by_seed_and_refuse_a_seed_twice_or_other_settings():
    bench = _bench()
    settings = {"program": "examples/mlp.tp", "data": "digits", "trials": 2, "steps": 5,
                "batch_size": 8, "small": 16, "large": [32], "pruner": "median"}

    def dump(seed, loss):
        row = {"repeat": seed, "tuned_at": 16, "study_loss": loss, "seconds": 1.0,
               "flops": 10.0, "lr": 2**-8, "at": {"32": loss}, "trials": []}
        return {"settings": settings, "arms": {"mup_small": [row], "direct": [row],
                                               "sp_small": [row]}}

    cut = dump(2, 0.5)
    cut["arms"]["sp_small"] = []  # stopped before its last arm: left out of every arm
    arms = bench.merged([dump(1, 0.75), dump(0, 0.25), cut])
    assert all([r["repeat"] for r in rows] == [0, 1] for rows in arms.values())
    assert [r["at"] for r in arms["mup_small"]] == [{32: 0.25}, {32: 0.75}]
    assert "| µP, tuned at 16, trained once | 0.5000 ± 0.3536 | 1 | 10 |" in bench.table(
        arms, settings)
    with pytest.raises(SystemExit, match="seed 0 of mup_small is in two dumps"):
        bench.merged([dump(0, 0.25), dump(0, 0.75)])
    with pytest.raises(SystemExit, match="differ in their settings"):
        bench.merged([dump(0, 0.25), {**dump(1, 0.5), "settings": {**settings, "steps": 6}}])
