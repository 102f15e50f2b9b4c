"""The one memory estimate: what a computation needs for the sizes the user controls (widths,
depths, repeat counts, points, Monte Carlo samples), against what the machine has, refused with
the estimate before any work starts.

Each caller states its own need in bytes (a training run: its weights with gradients and two
optimizer moments; a kernel: its P × P matrices; a µ-limit: its draws of every Z-variable at
every step); the comparison with the device's memory, and the message, are made here, so that
every command and library function refuses the same way instead of dying in the allocator.
"""

from __future__ import annotations

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


def check_training(program: Program, widths, device: str = "cpu", depths=None,
                   width: int | None = None, vectors: int = 16) -> None:
    """Refuse widths (or, with ``depths``, depths at ``width``) whose training run needs more
    than the device's memory by :func:`training_bytes` with ``vectors`` samples a step, naming
    the largest size that fits: what check, transfer and coord_check refuse before any work."""
    if depths:
        at = width or program.width.base

        def need(depth: int) -> int:
            return training_bytes(program, at, depth, vectors)

        option, what, largest = "--depths", "depth", max(depths)
        count = param_count(program, at, largest)
    else:
        def need(w: int) -> int:
            return training_bytes(program, w, None, vectors)

        option, what, largest = "--widths", "width", max(widths)
        count = param_count(program, largest)
    if not fits(need(largest), device):
        check_fits(need(largest), f"{option}: {what} {largest} has {count:,} weights: with "
                                  "gradients, optimizer state and the recorded vectors",
                   f"use {what}s of at most about {largest_fitting(need, largest, device)}",
                   device)


def check_draws(samples: int, points: int, values: int, steps: int) -> None:
    """Refuse a Monte Carlo limit whose draws need more than this machine's memory: every one
    of ``values`` Z-variables is a (samples, points) float64 tensor, kept four times over (the
    forward and backward passes, autograd's graph and the history later steps read) at each of
    ``steps`` + 1 steps."""
    need = 32 * samples * points * values * (steps + 1)
    check_fits(need, f"{samples:,} samples of {values} Z-variables on {points:,} points over "
                     f"{steps + 1} step(s)",
               "use fewer points or --samples (the Monte Carlo error is O(samples^-1/2)), or "
               "fewer --steps")


def check_kernels(points: int, kernels: int) -> None:
    """Refuse an NNGP kernel whose ``kernels`` (points × points) float64 matrices need more
    than this machine's memory."""
    check_fits(8 * points * points * kernels, f"{points:,} points: {kernels} kernel matrices "
                                              f"of {points:,} × {points:,}",
               "use fewer points: the kernel's memory grows with their square")
