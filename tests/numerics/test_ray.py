"""Trials on Ray (``--ray-address``), on a local Ray instance of 2 CPUs started once for the
module: a transfer sweep's trials run as Ray tasks into the same result cache as the local pool
(so either resumes the other), and a study's trials through Ray Tune with Optuna as its search.
The interruption tests start a driver with its own local Ray and kill it (slow: each starts
Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, all_gone, processes, run_cli

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.transfer import sweep

ray = pytest.importorskip("ray")
pytest.importorskip("ray.tune")
MLP = ROOT / "examples" / "mlp.tp"


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    if started:
        ray.shutdown()


@pytest.mark.slow  # starting Ray and its workers costs more CPU than the default run can spare
def test_transfer_trials_on_ray_fill_the_cache_the_local_pool_reads(local_ray, tmp_path):
    kw = dict(params=("mup",), widths=(16, 32), values=[1e-3, 1e-2, 1e-1], steps=4, seeds=1,
              batch_size=8, cache=tmp_path)
    on_ray = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", ray_address="local", **kw)
    assert on_ray.settings["cached"] == 0
    assert len(list((tmp_path / "transfer").glob("*.json"))) == 6
    local = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", jobs=1, **kw)
    assert local.settings["cached"] == 6 and local.losses == on_ray.losses


@pytest.mark.slow
def test_a_study_on_ray_tune_resumes_locally(local_ray, tmp_path, capsys):
    args = ["tune", str(MLP), "--data", "digits", "--width", "16", "--steps", "4",
            "--batch-size", "8", "--cache", str(tmp_path), "--pruner", "none", "--json"]
    code, text, _ = run_cli(capsys, *args, "--trials", "2", "--ray-address", "local")
    assert code == 0
    first = json.loads(text)
    assert first["trials"] == {"complete": 2} and first["backend"] == "ray at local"
    assert first["trial_seconds"] > 0 and first["flops"] > 0
    code, text, _ = run_cli(capsys, *args, "--trials", "3")  # the same study, one more trial
    assert code == 0 and json.loads(text)["trials"] == {"complete": 3}


def _ray_workers(session_pid: int) -> list[int]:
    """Live processes of the session led by ``session_pid`` that run a trial on Ray."""
    return processes(lambda f, cmd: int(f[3]) == session_pid and b"run_trial" in cmd)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killing_the_driver_leaves_no_trial_running_on_ray(sig, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tensorprog.cli", "transfer", str(MLP), "--data", "digits",
         "--widths", "8,16", "--values", "1e-3,1e-2,1e-1", "--steps", "100000", "--seeds", "1",
         "--ray-address", "local", "--cache", str(tmp_path)],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = _ray_workers(driver.pid)
    if len(workers) < 2:
        driver.kill()
        driver.communicate()
        pytest.fail("the sweep started no two Ray trials in 240 s")
    time.sleep(2)  # training
    os.kill(driver.pid, sig)
    driver.communicate(timeout=60)
    assert all_gone(workers, 30)
    assert not list((tmp_path / "transfer").glob("*.json"))  # no trial finished to be cached
