"""Measuring a coordinate check: the only torch loop of the check.

For each (seed, width) the module is built, fed fixed synthetic data and trained a few steps. At
step 0 the RMS of every program vector is recorded, after step t the RMS of its change since
step 0 on the same inputs (:class:`~tensorprog.numerics.judge.Measurements`, which the judge
reads).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence

from ..errors import UsageError
from ..ir.program import Nonlin, Program
from .judge import Measurements

# Vectors per step. An update built from k vectors meets each of them coherently (LLN) only with
# weight about 1/sqrt(k) against a CLT remainder, so the widths must be well above k before the
# exponents show; 16 keeps them there from width 64 on. A sequence program feeds batch x tokens
# vectors (and attention compares tokens pairwise), so its batch shrinks to keep about 16.
VECTORS_PER_STEP = 16


def default_batch_size(program: Program) -> int:
    """About VECTORS_PER_STEP vectors a step: 16 samples, or 16 tokens over the sequences; an
    image has one vector per pixel, so an image program gets a batch of 1, or 2 where it has a
    batch norm (each channel normalised over the batch and the pixels: a 1 x 1 image, a
    strided network's last stage, holds one value per channel in a batch of one, which torch
    refuses to normalise)."""
    floor = 2 if any(isinstance(i, Nonlin) and i.fn == "batchnorm" for i in program.body) else 1
    per_sample = 1
    if program.seq is not None:
        per_sample = program.dim_table[program.seq].size
    for i in program.inputs:
        if i.spatial is not None:
            per_sample = max(per_sample, program.dim_table[i.spatial[0]].size
                             * program.dim_table[i.spatial[1]].size)
    return max(floor, VECTORS_PER_STEP // per_sample)


def pick_device(device: str) -> str:
    import torch  # heavy: imported only when a check or a sweep runs

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available",
                         help="use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}", help="choose auto, cpu or cuda")
    return device


AUTOCASTS = ("bf16",)


def precision_context(autocast: str | None, device: str):
    """A factory of the context each training step runs in: nothing, or bfloat16 autocast on
    ``device``'s type."""
    import contextlib

    import torch  # heavy: imported only when a check or a sweep runs

    if autocast is None:
        return contextlib.nullcontext
    if autocast not in AUTOCASTS:
        raise UsageError(f"unknown autocast {autocast!r}", help="choose bf16, or none")
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def collapse_repetitions(vectors: dict, blocks: Sequence[str]) -> dict:
    """``vectors()`` with each repeated block's ``block.i.v`` stacked into one ``block.*.v``
    (so that an RMS is over every repetition), the other names as they are."""
    import torch  # heavy: imported only when a check runs

    out, stacked = {}, {}
    for name, v in vectors.items():
        block, _, rest = name.partition(".")
        index, _, local = rest.partition(".")
        if block in blocks and index.isdigit() and local:
            stacked.setdefault(f"{block}.*.{local}", []).append(v)
        else:
            out[name] = v
    out.update({k: torch.stack(vs, dim=-1) for k, vs in stacked.items()})
    return out


def build(module: types.ModuleType, args: tuple, kwargs: dict, seed: int):
    """``module.Model(*args, **kwargs)`` initialised by ``reset_parameters`` from a CPU generator
    seeded by ``seed``. It is built on the meta device and then given CPU memory: the
    constructor's own init, which ``reset_parameters`` replaces, then costs nothing: 0.7 s of
    CPU against 1.2 s for examples/llama.tp at width 2048 (109M params) on a 2-core x86_64 CPU.
    At width 8192 (1.7B params) these builds, not the GPU, bound a check on a GPU. A model with
    a buffer, or with a param that ``reset_parameters`` does not set, is built on the CPU as
    before: its memory would otherwise start uninitialised."""
    import torch  # heavy: imported only when a check runs

    model = module.Model(*args, device="meta", **kwargs)
    tensors = getattr(model, "_tensors", None)  # a block's param has one tensor per repetition
    reset = {id(t) for name, spec in module.SCALING.items()
             for t in (tensors(name, spec) if tensors else
                       [getattr(model, spec.get("attr", name))])}
    if list(model.buffers()) or any(id(p) not in reset for p in model.parameters()):
        model = module.Model(*args, **kwargs)
    else:
        model.to_empty(device="cpu")
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    return model


def measure(module: types.ModuleType, widths: Iterable[int], *, steps: int = 3,
            seeds: Iterable[int] = (0, 1, 2), lr: float, optimizer: str | None = None,
            device: str = "cpu", batch_size: int = 16, progress: bool = False,
            width: int | None = None, looped: Sequence[str] = (),
            base_depth: int | None = None, autocast: str | None = None) -> Measurements:
    """Train ``module.Model`` a few steps at every width and seed on fixed synthetic data.

    With ``width``, ``widths`` are depths instead: ``Model(width, depth, base_depth=base_depth)``
    for each, recorded under the depth, each block of ``looped`` recorded as ``block.*.v``
    (collapse_repetitions).

    The loss is linear in the outputs, L = mean(f · g) with a fixed random g, so dL/df is the
    same at every width and step, as the engine assumes (a Θ(1) output gradient): the slopes
    show how the parametrization propagates updates and nothing else. A regression loss feeds
    the output's init size back into its gradient, and under µP that size shrinks as n^-1/2,
    so at small widths the gradient drifts with width (measured on examples/mlp.tp with SGD:
    change slopes near -0.25 with a squared error, +0.03 with this loss).
    Init and data come from CPU generators seeded per seed (the same data at every width where
    the input dims are finite), so results do not depend on the device's random streams.

    With ``autocast="bf16"`` every training step's forward and loss run under bfloat16 autocast
    (params and optimizer state stay float32, as in mixed-precision training); the vectors are
    recorded in float32, so the measurement adds no bfloat16 rounding (2^-8 relative) to the
    small changes it measures.
    """
    # heavy, and needed only when a check runs
    import torch
    from tqdm import tqdm

    widths, seeds = list(widths), list(seeds)
    mixed = precision_context(autocast, device)
    trials = [(s, w) for s in seeds for w in widths]
    m = Measurements()
    fixed = width

    def vectors(model, inputs) -> dict:
        return collapse_repetitions(model.vectors(*inputs), looped) if looped else \
            model.vectors(*inputs)

    for seed, width in tqdm(trials, desc="coordinate check", unit="run", disable=not progress,
                            leave=False):
        model = build(module, (width,) if fixed is None else (fixed, width),
                      {} if fixed is None else {"base_depth": base_depth or module.BASE_DEPTH},
                      seed)
        data = torch.Generator().manual_seed(10_000 + seed)
        inputs = model.example_inputs(batch_size, generator=data)
        with torch.no_grad():
            outs = model(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        directions = [torch.randn(o.shape, generator=data) for o in outs]
        model.to(device)
        inputs = [x.to(device) for x in inputs]
        directions = [g.to(device) for g in directions]
        opt = module.make_optimizer(model, lr, optimizer=optimizer)
        with torch.no_grad():
            m.record(width, 0, vectors(model, inputs), seed)
        for t in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            with mixed():
                outs = model(*inputs)
                outs = outs if isinstance(outs, tuple) else (outs,)
                loss = sum((o.float() * g).mean() for o, g in zip(outs, directions, strict=True))
            if not torch.isfinite(loss):
                m.stop(width, t, steps, f"the loss is {float(loss)} before step {t}", seed)
                break
            loss.backward()
            try:
                opt.step()
            except RuntimeError as err:
                # torch refuses a step size that overflows float32 (Adam at lr 1e38); any other
                # failure is a bug and propagates
                if "overflow" not in str(err):
                    raise
                m.stop(width, t, steps, f"the optimizer's step size overflows at step {t}", seed)
                break
            with torch.no_grad():
                m.record(width, t, vectors(model, inputs), seed)
    return m
