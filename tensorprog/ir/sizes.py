"""The one memory and time estimate: what a computation needs for the sizes the user controls
(widths, depths, repeat counts, steps, seeds, points, Monte Carlo samples, sequence length),
against what the machine has, refused with the estimate before any work starts.

Each estimate states its need in bytes (a training run: its weights with gradients and two
optimizer moments; a kernel: its P × P matrices; a µ-limit: its draws of every Z-variable at
every step) and the floating-point operations of its dominant work (a training run: 6 per weight
per sample and step; a µ-limit: the per-input autograd passes over its draws); the comparison
with the device's memory and speed, and the message, are made here, so that every command and
library function refuses the same way instead of dying in the allocator or running for hours.

The time limit is :data:`MAX_MINUTES` (30); the environment variable ``TENSORPROG_MAX_MINUTES``
sets another for every command and library function alike (``inf``: no limit).
"""

from __future__ import annotations

import functools
import math
import os

from ..errors import UsageError
from .program import Program

GIB = 2**30


def device_memory(device: str = "cpu") -> tuple[int, str] | None:
    """(bytes, what) of the memory ``device`` has, or None when it cannot be told."""
    if device.startswith("cuda"):
        import torch  # heavy: only for a CUDA device

        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: there are {torch.cuda.device_count()} CUDA "
                             "device(s)", help="use --device cuda (the first one)")
        return torch.cuda.get_device_properties(index).total_memory, "the GPU's memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        return None


def fits(need: int, device: str = "cpu") -> bool:
    have = device_memory(device)
    return have is None or need <= have[0]


def check_fits(need: int, what: str, fix: str, device: str = "cpu") -> None:
    """Refuse a computation that needs ``need`` bytes, more than the device has: ``what`` says
    which size the need comes from, ``fix`` what to lower."""
    have = device_memory(device)
    if have is not None and need > have[0]:
        raise UsageError(f"{what}: about {need / GIB:.3g} GiB, more than {have[1]} "
                         f"({have[0] / GIB:.3g} GiB)", help=fix)


#: the default limit on a computation's estimated time, in minutes
MAX_MINUTES = 30.0
MAX_MINUTES_VAR = "TENSORPROG_MAX_MINUTES"
#: a rate (flop/s) that any machine torch runs on beats: work under the limit at this rate is
#: accepted without measuring the machine, so small runs (and the tests) never pay for it
SLOWEST_RATE = 1e9


def max_minutes() -> float:
    """The time limit: ``TENSORPROG_MAX_MINUTES`` if set (``inf`` for none), else 30."""
    text = os.environ.get(MAX_MINUTES_VAR)
    if text is None:
        return MAX_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:  # also refuses nan
        raise UsageError(f"{MAX_MINUTES_VAR}={text}: not a positive number of minutes",
                         help=f"e.g. {MAX_MINUTES_VAR}=120, or inf for no limit; unset, it is "
                              f"{MAX_MINUTES:g}")
    return value


@functools.cache
def throughput(device: str = "cpu", dtype: str = "float32") -> float:
    """The device's matrix-multiply rate in flop/s for ``dtype``, measured once per process:
    the best of at least 20 timed square products over at least 0.1 s (256 on a CPU; 2048 on a
    GPU, where a small product measures only the launch). The best is the peak, which a busy
    machine reaches between other processes' time slices (one product takes about a
    millisecond), so an estimate made with it errs short: what it refuses would not finish in
    time on this machine. On a CPU it is measured on one thread and multiplied by torch's
    threads: a product split over threads waits for all of them, and on a machine busier than
    its cores that wait, not the arithmetic, is what a multi-threaded timing measures."""
    import time

    import torch  # heavy: only measured when an estimate comes near the limit

    gpu = device.startswith("cuda")
    dev = torch.device(device if gpu else "cpu")
    size = 2048 if gpu else 256
    a = torch.randn(size, size, dtype=getattr(torch, dtype), device=dev)

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(dev)

    a @ a  # the first product pays for the kernel's set-up, not the rate
    threads = 1 if gpu else torch.get_num_threads()
    if not gpu:
        torch.set_num_threads(1)
    best, begin, count = math.inf, time.perf_counter(), 0
    try:
        while count < 20 or (time.perf_counter() - begin < 0.1 and count < 2000):
            count += 1
            sync()
            start = time.perf_counter()
            a @ a
            sync()
            best = min(best, time.perf_counter() - start)
    finally:
        if not gpu:
            torch.set_num_threads(threads)
    return threads * 2 * size**3 / max(best, 1e-9)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.3g} h"


def check_time(flops: float, what: str, fix: str, device: str = "cpu",
               dtype: str = "float32") -> None:
    """Refuse a computation whose ``flops`` take longer than the limit (:func:`max_minutes`) at
    the device's measured rate (:func:`throughput`), with the estimate: ``what`` says which
    sizes the work comes from, ``fix`` what to lower."""
    limit = max_minutes() * 60
    if flops <= limit * SLOWEST_RATE:
        return
    rate = throughput(device, dtype)
    seconds = flops / rate
    if seconds > limit:
        minutes = max_minutes()
        raise UsageError(f"{what}: about {_duration(seconds)} ({flops:.2g} floating-point "
                         f"operations at this machine's {rate / 1e9:.3g} GFLOP/s), more than "
                         f"the {minutes:g}-minute limit",
                         help=f"{fix}; or set {MAX_MINUTES_VAR}={math.ceil(seconds / 30)} (or "
                              "inf) to run it anyway")


def check_cost(need: int, flops: float, what: str, fix: str, device: str = "cpu",
               dtype: str = "float32") -> None:
    """Refuse a computation that needs more memory than the device has, or more time than the
    limit: the two checks every estimate below goes through."""
    check_fits(need, what, fix, device)
    check_time(flops, what, fix, device, dtype)


def largest_fitting(need, high: int, device: str = "cpu") -> int:
    """The largest size s ≤ ``high`` with need(s) in memory (need grows with s); 0 if none."""
    low = 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(need(mid), device) else (low, mid)
    return low


def _repeats(program: Program, depth: int | None) -> dict[str, int]:
    """Each block's repetitions at ``depth`` (default: the base depth)."""
    name = program.depth.name if program.depth is not None else None
    if depth is None and program.depth is not None:
        depth = program.depth.base
    reps: dict[str, int] = {}
    for s in program.streams:
        count = depth if name is not None and s.count == name else s.count
        reps[s.block] = reps.get(s.block, 0) + (count if isinstance(count, int) else 1)
    return reps


def param_count(program: Program, width: int, depth: int | None = None) -> int:
    """The program's weights at ``width`` (and ``depth``, default its base depth): every
    param's entries, times the repetitions of the block that owns it."""
    dims, reps, owner = program.dim_table, _repeats(program, depth), program.owner
    return sum(math.prod(dims[d].size_at(width) for d in p.shape) * reps.get(owner.get(p.name), 1)
               for p in program.params)


def value_count(program: Program, width: int, depth: int | None = None) -> int:
    """The coordinates of one sample's vectors at ``width`` and ``depth``: every instruction's
    output (a scalar counts one), once per repetition of the block that computes it."""
    dims, reps = program.dim_table, _repeats(program, depth)
    block_of = {v: b.name for b in program.blocks for v in b.values}
    total = 0
    for ins in program.body:
        d = program.value_dims.get(ins.out)
        total += (1 if d is None else dims[d].size_at(width)) * reps.get(block_of.get(ins.out), 1)
    return total


def training_bytes(program: Program, width: int, depth: int | None, vectors: int) -> int:
    """A training run's memory: every weight in float32 with its gradient and two optimizer
    moments (16 bytes), and ``vectors`` samples of every vector kept four times over (the
    forward pass for autograd, and the float64 copies at init and now a coordinate check
    records: 32 bytes)."""
    return 16 * param_count(program, width, depth) + 32 * vectors * value_count(program, width,
                                                                               depth)


def training_flops(program: Program, width: int, depth: int | None, vectors: int,
                   steps: int = 1) -> int:
    """A training run's dominant work: 6 operations per weight, per position (a token of a
    sequence) of each of ``vectors`` samples, per step (a multiply-add forward, two backward).
    Convolution kernels count once per image rather than once per pixel, and attention's
    [T, T] products and the elementwise work are left out: a lower bound."""
    positions = program.dim_table[program.seq].size if program.seq is not None else 1
    return 6 * param_count(program, width, depth) * vectors * positions * steps


def check_training(program: Program, widths, device: str = "cpu", depths=None,
                   width: int | None = None, vectors: int = 16, steps: int = 1,
                   runs: int = 1, runs_from: str = "--seeds") -> None:
    """Refuse widths (or, with ``depths``, depths at ``width``) whose training run needs more
    than the device's memory by :func:`training_bytes` with ``vectors`` samples a step, naming
    the largest size that fits, or whose ``runs`` runs of ``steps`` steps at every size take
    longer than the time limit by :func:`training_flops` (``runs_from`` names the options that
    multiply the runs): what check, transfer and coord_check refuse before any work."""
    if depths:
        at = width or program.width.base

        def need(depth: int) -> int:
            return training_bytes(program, at, depth, vectors)

        def work(depth: int) -> int:
            return training_flops(program, at, depth, vectors, steps)

        option, what, sizes = "--depths", "depth", depths
        count = param_count(program, at, max(depths))
    else:
        def need(w: int) -> int:
            return training_bytes(program, w, None, vectors)

        def work(w: int) -> int:
            return training_flops(program, w, None, vectors, steps)

        option, what, sizes = "--widths", "width", widths
        count = param_count(program, max(widths))
    largest = max(sizes)
    if not fits(need(largest), device):
        check_fits(need(largest), f"{option}: {what} {largest} has {count:,} weights: with "
                                  "gradients, optimizer state and the recorded vectors",
                   f"use {what}s of at most about {largest_fitting(need, largest, device)}",
                   device)
    check_time(runs * sum(work(s) for s in sizes),
               f"{option} {','.join(map(str, sizes))}: {runs:,} run(s) of {steps:,} step(s) "
               f"at each {what}, the largest with {count:,} weights",
               f"use fewer or smaller {what}s, fewer --steps or fewer runs ({runs_from})", device)


def check_seq_len(seq_len: int) -> None:
    """Refuse a trace's sequence length whose tensors cannot fit this machine's memory, before
    any is made (else the allocator kills the trace): the token ids (two int64 copies of
    [2, T]) and a [T, T] float32 mask, which a causal model computes from them on the CPU (a
    few operations per entry of the mask)."""

    def need(t: int) -> int:
        return 32 * t + 4 * t * t

    what = f"--seq-len {seq_len}: the token ids and a [T, T] attention mask"
    fix = "T is a finite dim of the program, the same at any length: keep the default 8"
    if not fits(need(seq_len)):
        fix += f" (at most about {largest_fitting(need, seq_len):,} fits)"
    check_cost(need(seq_len), 4 * seq_len * seq_len, what, fix)


#: operations per (sample, point, point, Z-variable) of a Monte Carlo limit's autograd passes,
#: counted against the float64 matmul rate, and the samples' worth of fixed cost each pass has:
#: measured with torch 2.13 on two CPU cores (an MLP of 5 Z-variables, 256-2,000 points, 64-2,048
#: samples) as about 110 for the kernel regime's one backward pass (the NTK) and 370-580 a step²
#: for the µ-limit (DRAW_STEP times as much); on a machine busier than its cores every one was
#: up to 5 times slower, so the estimate errs short
DRAW_OPS = 128
DRAW_STEP = 4
DRAW_PASS = 256


def draws_cost(samples: int, points: int, values: int, steps: int) -> tuple[int, int]:
    """(bytes, operations) of a Monte Carlo limit's draws: see :func:`check_draws`."""
    passes = DRAW_STEP * steps**2 if steps else 1
    return (32 * samples * points * values * (steps + 1),
            DRAW_OPS * (samples + DRAW_PASS) * points * points * values * passes)


def check_draws(samples: int, points: int, values: int, steps: int) -> None:
    """Refuse a Monte Carlo limit whose draws need more than this machine's memory, or more
    time than the limit: every one of ``values`` Z-variables is a (samples, points) float64
    tensor, kept four times over (the forward and backward passes, autograd's graph and the
    history later steps read) at each of ``steps`` + 1 steps. The time is in the E[∂Z/∂Ẑ] of
    TP4's Ż terms: one autograd pass per point over every draw of every Z-variable, against a
    history that grows with the step, so it grows as points² × values × steps² (``steps`` 0:
    the kernel regime's one backward pass) times the samples plus a pass's fixed cost."""
    check_cost(*draws_cost(samples, points, values, steps),
               f"{samples:,} samples of {values} Z-variables on {points:,} points over "
               f"{steps + 1} step(s)",
               "use fewer points (the time grows with their square) or --samples (the Monte "
               "Carlo error is O(samples^-1/2)), or fewer --steps", dtype="float64")


def check_kernels(points: int, kernels: int, steps: int = 0) -> None:
    """Refuse an NNGP kernel whose ``kernels`` (points × points) float64 matrices need more
    than this machine's memory, or whose work takes longer than the limit: a few operations per
    entry of every kernel (the quadratures of nonlinearities without a closed form are left
    out, a lower bound), and with ``steps`` the kernel regime's three points × points products
    a step."""
    work = 8 * points * points * kernels + 6 * steps * points**3
    what = f"{points:,} points: {kernels} kernel matrices of {points:,} × {points:,}"
    if steps:
        what += f" and {steps:,} step(s) of their products"
    check_cost(8 * points * points * kernels, work, what,
               "use fewer points: the kernel's memory grows with their square and its products' "
               "time with their cube" + (", or fewer --steps" if steps else ""), dtype="float64")
