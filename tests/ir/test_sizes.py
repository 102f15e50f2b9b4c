"""The one memory and time estimate (tensorprog/ir/sizes.py): each grows with every size the user
controls, typical runs pass without measuring the machine, and work past the time limit is
refused with its estimate (the machine's rate fixed here, so the numbers are exact)."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES, RESMLP

import tensorprog as tp
from tensorprog.errors import UsageError
from tensorprog.ir import sizes

MLP = next(p for p in EXAMPLES if p.name == "mlp.tp")
GPT = next(p for p in EXAMPLES if p.name == "gpt.tp")


@pytest.fixture
def rate(monkeypatch):
    """A machine of exactly 10 GFLOP/s and 1 TiB (so that only time refuses), whose rate is
    never measured unless asked for; the measured calls are counted."""
    calls = []

    def fixed(device="cpu", dtype="float32"):
        calls.append((device, dtype))
        return 1e10

    monkeypatch.setattr(sizes, "throughput", fixed)
    monkeypatch.setattr(sizes, "device_memory", lambda device="cpu": (2**40, "1 TiB"))
    monkeypatch.delenv(sizes.MAX_MINUTES_VAR, raising=False)
    return calls


def test_training_work_grows_with_every_size():
    program = tp.parse_file(MLP)
    deep = tp.parse(RESMLP)
    base = sizes.training_flops(program, 64, None, 16, 3)
    assert sizes.training_flops(program, 128, None, 16, 3) > base
    assert sizes.training_flops(program, 64, None, 32, 3) == 2 * base
    assert sizes.training_flops(program, 64, None, 16, 6) == 2 * base
    assert (sizes.training_flops(deep, 128, 8, 16, 1) > sizes.training_flops(deep, 128, 4, 16, 1)
            > sizes.training_flops(deep, 128, 2, 16, 1))
    # 6 per weight, per sample and step
    assert base == 6 * sizes.param_count(program, 64) * 16 * 3


def test_a_sequence_counts_each_position():
    program = tp.parse_file(GPT)
    seq = program.dim_table[program.seq].size
    assert sizes.training_flops(program, 64, None, 1, 1) == 6 * sizes.param_count(program, 64) * seq


def test_draws_and_kernels_grow_with_every_size():
    base = sizes.draws_cost(1024, 100, 5, 2)
    for bigger in ((2048, 100, 5, 2), (1024, 200, 5, 2), (1024, 100, 10, 2), (1024, 100, 5, 3)):
        grown = sizes.draws_cost(*bigger)
        assert grown[0] > base[0] and grown[1] > base[1], bigger
    # the points enter the time squared (one autograd pass per point over every point's draws)
    assert sizes.draws_cost(1024, 200, 5, 2)[1] == 4 * base[1]


def test_typical_sizes_pass_on_a_slow_machine(rate):
    program = tp.parse_file(MLP)
    # the check's defaults: too little work to measure the machine for
    sizes.check_training(program, [64, 128, 256, 512, 1024, 2048], vectors=16, steps=3, runs=3)
    sizes.check_seq_len(1024)
    assert rate == []
    # the transfer sweep's defaults, a µ-limit and a kernel regime on 64 points
    sizes.check_training(program, [64, 128, 256, 512, 1024], vectors=64, steps=60, runs=44)
    sizes.check_draws(2**14, 64, 7, 5)
    sizes.check_kernels(64, 20, steps=5)


def test_work_past_the_limit_is_refused_with_its_estimate(rate):
    with pytest.raises(UsageError, match=r"^error: some work: about 2.78 h \(1e\+14 floating-"
                                         r"point operations at this machine's 10 GFLOP/s\), more "
                                         r"than the 30-minute limit") as err:
        sizes.check_time(1e14, "some work", "do less")
    assert "do less; or set TENSORPROG_MAX_MINUTES=334 (or inf) to run it anyway" in str(err.value)
    sizes.check_time(1.8e13, "just under", "")  # 30 min at 10 GFLOP/s
    assert rate == [("cpu", "float32"), ("cpu", "float32")]
    with pytest.raises(UsageError, match=r"about 100 min"):
        sizes.check_time(6e13, "minutes under two hours", "")


def test_the_limit_is_one_environment_variable(rate, monkeypatch):
    monkeypatch.setenv(sizes.MAX_MINUTES_VAR, "inf")
    sizes.check_time(1e20, "anything", "")
    monkeypatch.setenv(sizes.MAX_MINUTES_VAR, "1")
    with pytest.raises(UsageError, match="more than the 1-minute limit"):
        sizes.check_time(1e12, "a minute and a half", "")
    for bad in ("0", "-5", "nan", "soon"):
        monkeypatch.setenv(sizes.MAX_MINUTES_VAR, bad)
        with pytest.raises(UsageError, match=f"TENSORPROG_MAX_MINUTES={bad}: not a positive"):
            sizes.check_time(1e20, "anything", "")


def test_each_estimate_refuses_its_sizes(rate):
    program = tp.parse_file(MLP)
    with pytest.raises(UsageError, match=r"--widths 64,4096: 100 run\(s\) of 1,000 step\(s\) at "
                                         r"each width(.|\n)*fewer runs \(--seeds\)"):
        sizes.check_training(program, [64, 4096], vectors=16, steps=1000, runs=100)
    with pytest.raises(UsageError, match=r"--depths 2,64: 10 run\(s\) of 10,000 step\(s\) at "
                                         r"each depth"):
        sizes.check_training(tp.parse(RESMLP), [], depths=[2, 64], steps=10_000, runs=10)
    with pytest.raises(UsageError, match=r"16,384 samples of 7 Z-variables on 5,000 points over "
                                         r"1 step\(s\): about [\d.]+ h"):
        sizes.check_draws(2**14, 5000, 7, 0)
    with pytest.raises(UsageError, match=r"and 50 step\(s\) of their products: about"):
        sizes.check_kernels(20_000, 3, steps=50)
    assert rate[-1] == ("cpu", "float64")  # the limits compute in float64


def test_the_measured_rate_is_a_positive_number_once_per_process():
    sizes.throughput.cache_clear()
    first = sizes.throughput("cpu", "float32")
    assert first > 1e8 and sizes.throughput("cpu", "float32") == first
