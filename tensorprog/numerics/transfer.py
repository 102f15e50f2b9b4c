"""µTransfer sweeps: train the emitted module for every (parametrization, width, HP value, seed)
on real data and report where the optimal HP sits at each width.

The µP claim (TP5) is that the optimum stays put as the width grows under µP and moves under SP.
Per width the optimum is the vertex of a parabola through the grid minimum and its two
neighbours in log2(HP) (the grid argmin where that is not possible); the drift is the spread of
those optima across widths, in log2 units (1.0 = a factor of 2). "Wider is better" holds when, at
every HP value, the loss does not rise (by more than 1%) as the width grows. Neither is claimed
from fewer than 3 finite losses: the report then says "undetermined" and why.

Trials run in worker processes, each result cached as one JSON file, so an interrupted sweep
resumes where it stopped. A run whose loss turns inf or nan is recorded as diverged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..emit.load import load_module
from ..emit.module import Emitted, emit
from ..engine.classify import require_depth_pass
from ..engine.optimizers import Optimizer
from ..engine.parametrization import choose
from ..errors import Diagnostic, TensorProgWarning, UsageError
from ..ir.program import Program
from ..ir.sizes import check_training
from ..ir.verify import verify
from .backend import backend
from .data import Dataset, load

HPS = ("lr", "init_std", "output_mult")
DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
# grids in log2 units, wide enough to bracket the optimum at every width under SP and µP
DEFAULT_LOG2 = {("lr", "adam"): range(-14, -3), ("lr", "adamw"): range(-14, -3),
                ("lr", "lion"): range(-16, -5), ("lr", "muon"): range(-12, -1),
                ("lr", "sgd"): range(-9, 2), ("lr", "momentum"): range(-11, 0),
                ("init_std", None): range(-4, 3),
                ("output_mult", None): range(-6, 3)}
BASE_LR = {"adam": 2.0 ** -9, "adamw": 2.0 ** -9, "lion": 2.0 ** -11, "muon": 2.0 ** -7,
           "sgd": 2.0 ** -4, "momentum": 2.0 ** -6}  # when the HP is not lr
WIDER_TOLERANCE = 0.01  # "wider is better" allows a 1% rise (seed noise)
MIN_FINITE = 3  # the fewest finite losses an optimum (a parabola) or a verdict rests on
# the axes a sweep may run along at one width besides the depth (TP5 transfers across all
# three): each is a training setting, so one emitted module serves every value; the job key
# each sets
AXES = {"batch": "batch_size", "seq": "seq", "steps": "steps"}


def default_values(hp: str, optimizer: str) -> list[float]:
    grid = DEFAULT_LOG2.get((hp, optimizer)) or DEFAULT_LOG2[(hp, None)]
    return [2.0 ** k for k in grid]


# --- fitting the program to the data --------------------------------------------------------------


def fit_to_data(program: Program, data: Dataset) -> tuple[Program, list[str]]:
    """The program with its finite input and output dims set by the data, and what changed."""
    dims = {d.name: d for d in program.dims}
    notes: list[str] = []
    set_by: dict[str, tuple[str, int]] = {}

    def set_dim(name: str, size: int, what: str) -> None:
        d = dims.get(name, program.dim_table[name])
        if d.infinite:
            raise UsageError(f"the data's {what} ({size}) cannot set {name}, which grows with "
                             "the width")
        if name in set_by and set_by[name][1] != size:
            first, before = set_by[name]
            raise UsageError(f"--data {data.name}: the program's input and output share the dim "
                             f"{name}, but the data has {before} {first} and {size} {what}",
                             help="give the input and the output dims of their own, e.g. "
                                  "`dim d_in = 64` and `dim d_out = 10`")
        set_by[name] = (what, size)
        if d.size != size:
            notes.append(f"{what}: {name} = {size} (the program says {d.size})")
            dims[name] = replace(d, size=size)

    outputs = [program.value_dims[o] for o in program.outputs]
    if len(outputs) != 1 or outputs[0] is None:
        raise UsageError("a transfer sweep needs one output with a dim (the logits)")
    if data.is_text:
        tokens = [i for i in program.inputs if i.kind == "tokens"]
        if len(tokens) != 1:
            raise UsageError(f"--data {data.name} is a token stream: the program needs one "
                             "token input (`input tok : tokens[T, V]`)")
        set_dim(tokens[0].dim, data.vocab, "vocabulary")
        set_dim(outputs[0], data.vocab, "output classes")
    else:
        vectors = [i for i in program.inputs if i.kind == "vector"]
        if len(vectors) != 1 or len(program.inputs) != 1:
            raise UsageError(f"--data {data.name} is a labelled set: the program needs exactly "
                             "one vector input")
        set_dim(vectors[0].dim, int(data.x.shape[1]), "input features")
        set_dim(outputs[0], data.vocab, "output classes")
    fitted = replace(program, dims=tuple(dims[d.name] for d in program.dims))
    return verify(fitted), notes


# --- one trial ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    param: str
    width: int
    value: float
    seed: int

    def key(self, context: str) -> str:
        text = json.dumps([context, self.param, self.width, repr(self.value), self.seed])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


_WORKER: dict = {}  # per process: loaded data sets and modules


def run_trial(job: dict, report=None) -> dict:
    """Train one model; runs in a worker process. Returns the final training loss.

    ``job`` may also give the Model's ``init_std`` and ``mult`` (``tune``'s base constants) and
    ``report_every``: then ``report(step, loss)``, the mean loss of the last ``report_every``
    steps, is called that often and stops the run (``"pruned": True``) when it returns True."""
    import torch  # heavy: imported only when a trial trains

    torch.set_num_threads(job["threads"])
    data = _WORKER.get(("data", job["data"]))
    if data is None:
        data = _WORKER[("data", job["data"])] = load(job["data"])
    module = _WORKER.get(("module", job["source_key"]))
    if module is None:
        module = load_module(Emitted(job["source"]), job["param"])
        _WORKER[("module", job["source_key"])] = module
    hp, value, device = job["hp"], job["value"], job["device"]
    fixed = job.get("fixed_width")  # a depth sweep: "width" is the depth
    given = {k: job[k] for k in ("init_std", "mult") if job.get(k)}  # tune's base constants
    model = (module.Model(job["width"], **given) if fixed is None
             else module.Model(fixed, job["width"], **given))
    model.reset_parameters(generator=torch.Generator().manual_seed(job["seed"]))
    if hp == "init_std":  # scale every random init, not the constant ones (gains, zero biases)
        with torch.no_grad():
            for name, spec in module.SCALING.items():
                if "init" not in spec:
                    tensors = (model._tensors(name, spec) if hasattr(model, "_tensors")
                               else [getattr(model, spec.get("attr", name))])  # a renamed param
                    for tensor in tensors:
                        tensor.mul_(value)
    model.to(device)
    lr = value if hp == "lr" else job["base_lr"]
    opt = module.make_optimizer(model, lr, optimizer=job["optimizer"])
    out_mult = value if hp == "output_mult" else 1.0
    batches = torch.Generator().manual_seed(1_000_003 + job["seed"])
    losses: list[float] = []
    for _ in range(job["steps"]):
        x, y = data.batch(job["batch_size"], batches, job.get("seq"))
        x, y = x.to(device), y.to(device)
        logits = model(x) * out_mult
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        value_now = float(loss.detach())
        if not math.isfinite(value_now):
            return {"loss": None, "diverged": True, "steps": len(losses)}
        losses.append(value_now)
        every = job.get("report_every")
        if report is not None and every and len(losses) % every == 0 and len(losses) < job["steps"]:
            if report(len(losses), sum(losses[-every:]) / every):
                return {"loss": None, "diverged": False, "steps": len(losses), "pruned": True}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tail = losses[-max(1, len(losses) // 10):]  # the last 10% of steps, for a steadier figure
    return {"loss": sum(tail) / len(tail), "diverged": False, "steps": len(losses)}


# --- the sweep ------------------------------------------------------------------------------------


@dataclass
class Sweep:
    hp: str
    widths: list[int]
    values: list[float]
    seeds: int
    losses: dict[str, dict[int, dict[float, float]]]  # param -> width -> value -> loss (inf)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def optimum(self, param: str, width: int) -> tuple[float | None, bool]:
        """(log2 of the fitted optimal value, whether it sits at the edge of the grid); None when
        fewer than ``MIN_FINITE`` values trained without diverging at this width."""
        xs = [math.log2(v) for v in self.values]
        ys = [self.losses[param][width][v] for v in self.values]
        finite = [i for i, y in enumerate(ys) if math.isfinite(y)]
        if len(finite) < MIN_FINITE:
            return None, True
        k = min(finite, key=lambda i: ys[i])
        if k == 0 or k == len(xs) - 1 or not (math.isfinite(ys[k - 1])
                                                and math.isfinite(ys[k + 1])):
            return xs[k], True
        return parabola_vertex(xs[k - 1:k + 2], ys[k - 1:k + 2]), False

    def drift(self, param: str) -> float | None:
        optima = [self.optimum(param, w)[0] for w in self.widths]
        if any(o is None for o in optima):
            return None
        return max(optima) - min(optima)

    def wider_is_better(self, param: str) -> bool | None:
        """False on any counterexample; None (undetermined) when fewer than ``MIN_FINITE`` HP
        values trained without diverging at every width, since then too little was compared."""
        whole = 0
        for v in self.values:
            seq = [self.losses[param][w][v] for w in self.widths]
            for narrow, wide in zip(seq, seq[1:], strict=False):
                if not math.isfinite(wide) and math.isfinite(narrow):
                    return False
                if math.isfinite(wide) and wide > narrow + WIDER_TOLERANCE * abs(narrow):
                    return False
            whole += all(math.isfinite(x) for x in seq)
        return True if whole >= MIN_FINITE else None

    def undetermined(self, param: str) -> list[str]:
        """Why an optimum, the drift or wider-is-better could not be told, in words."""
        why = []
        rows = self.losses[param]
        counts = {w: sum(math.isfinite(x) for x in rows[w].values()) for w in self.widths}
        if not any(counts.values()):
            return ["every trial diverged: lower the HP values (or check the data)"]
        short = [w for w, k in counts.items() if k < MIN_FINITE]
        if short:
            why.append(f"at width {', '.join(map(str, short))} fewer than {MIN_FINITE} HP "
                       "values trained without diverging: no optimum can be fitted")
        if self.wider_is_better(param) is None:
            why.append(f"fewer than {MIN_FINITE} HP values trained at every width: "
                       "wider-is-better is undetermined")
        return why

    def __str__(self) -> str:
        return render(self)

    def as_dict(self) -> dict:
        out = {}
        for param in self.losses:
            optima = {str(w): self.optimum(param, w)[0] for w in self.widths}
            out[param] = {
                "optimal_log2_hp": optima,
                "at_grid_edge": {str(w): self.optimum(param, w)[1] for w in self.widths},
                "drift_log2": self.drift(param),
                "wider_is_better": self.wider_is_better(param),
                "undetermined": self.undetermined(param),
                "losses": {str(w): {repr(v): (None if math.isinf(loss) else loss)
                                    for v, loss in row.items()}
                           for w, row in self.losses[param].items()}}
        return {"hp": self.hp, "widths": self.widths, "values": self.values, "seeds": self.seeds,
                **self.settings, "notes": self.notes, "parametrizations": out}


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The minimum of the parabola through three points (equally spaced or not)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return x1
    return min(max(-b / (2 * a), x0), x2)


def sweep(program: Program, optimizer: Optimizer, data_name: str, *,
          params: Sequence[str] = ("mup", "sp"), hp: str = "lr",
          widths: Sequence[int] = DEFAULT_WIDTHS, values: Sequence[float] | None = None,
          steps: int | None = None, seeds: int = 2, batch_size: int | None = None,
          lr: float | None = None, device: str = "cpu", jobs: int | None = None,
          cache: str | Path | None = ".tensorprog-cache", progress: bool = False,
          depths: Sequence[int] | None = None, width: int | None = None,
          depth_convention: str = "completep", ray_address: str | None = None,
          axis: str | None = None, at: Sequence[int] | None = None) -> Sweep:
    """Train every (param, width, value, seed) and collect the final training losses.

    With ``depths``, every run has one width (``width``, default the base width) and the sweep's
    axis is the depth: ``Sweep.widths`` then holds the depths, and ``settings["axis"]`` is
    ``"depth"``. With ``axis`` (one of ``AXES``: batch size, sequence length, steps) and its
    values ``at``, likewise at one width: ``Sweep.widths`` holds those values. With
    ``ray_address`` every trial runs on that Ray cluster (backend.py)."""
    plan = _plan(program, optimizer, data_name, params=params, hp=hp, widths=widths,
                 values=values, steps=steps, seeds=seeds, batch_size=batch_size, lr=lr,
                 device=device, cache=cache, depths=depths, width=width,
                 depth_convention=depth_convention, axis=(axis, at) if axis else None)
    trials = [Trial(p, w, v, s) for p in plan.params for w in plan.widths for v in plan.values
              for s in range(plan.seeds)]
    results, todo = _from_cache(plan, trials)
    jobs = _run(plan, todo, results, jobs, total=len(trials), progress=progress,
               ray_address=ray_address)
    settings = {"program": program.name, "data": data_name, "data_about": plan.data.about,
                "optimizer": optimizer.name, "steps": plan.steps, "batch_size": plan.batch_size,
                "base_lr": plan.base_lr if hp != "lr" else None, "device": device, "jobs": jobs,
                "trials": len(trials), "cached": len(trials) - len(todo)}
    if plan.fixed_width is not None:
        settings.update(axis="depth", width=plan.fixed_width, base_depth=program.depth.base)
    if plan.axis:
        settings.update(axis=plan.axis[0], width=plan.axis[1], seq=plan.seq)
    return Sweep(hp, plan.widths, plan.values, seeds, _mean_losses(plan, results), settings,
                 plan.notes)


@dataclass(frozen=True)
class _Plan:
    """A sweep's settings, checked and filled in before any training, and the emitted source
    of every parametrization."""

    hp: str
    params: tuple[str, ...]
    widths: list[int]  # the depths, in a depth sweep
    values: list[float]
    seeds: int
    steps: int
    batch_size: int
    seq: int | None
    base_lr: float
    optimizer: str
    device: str
    data_name: str
    data: Dataset
    notes: list[str]
    sources: dict[str, str]  # param -> the emitted module's source
    context: str  # what every trial's cache key depends on besides the trial and the source
    cache_dir: Path | None
    fixed_width: int | None  # a depth sweep's one width; None in a width sweep
    axis: tuple[str, int] | None = None  # (AXES key, the one width) of a sweep along it

    def job(self, t: Trial, threads: int) -> dict:
        """What ``run_trial`` needs of trial ``t``: plain data, sent to a worker process."""
        source = self.sources[t.param]
        job = {"source": source, "source_key": hashlib.sha256(source.encode()).hexdigest(),
               "param": t.param, "width": t.width, "value": t.value, "seed": t.seed,
               "hp": self.hp, "data": self.data_name, "steps": self.steps,
               "batch_size": self.batch_size, "seq": self.seq, "optimizer": self.optimizer,
               "base_lr": self.base_lr, "device": self.device, "threads": threads,
               "fixed_width": self.fixed_width}
        if self.axis:  # the trial's "width" is its value along the axis
            job.update({"width": self.axis[1], AXES[self.axis[0]]: t.width})
        return job

    def steps_of(self, t: Trial) -> int:
        return t.width if self.axis and self.axis[0] == "steps" else self.steps


def _plan(program: Program, optimizer: Optimizer, data_name: str, *, params: Sequence[str],
          hp: str, widths: Sequence[int], values: Sequence[float] | None, steps: int | None,
          seeds: int, batch_size: int | None, lr: float | None, device: str,
          cache: str | Path | None, depths: Sequence[int] | None, width: int | None,
          depth_convention: str, convention: str = "table3", one_width: bool = False,
          axis: tuple[str, Sequence[int]] | None = None) -> _Plan:
    """Check a sweep's arguments against the program and the data, fill in the defaults and
    emit the module of every parametrization (µP in ``convention``): everything that can fail
    before training does. ``one_width``: a study at one width (tune.py), not a sweep.
    ``axis``: (an ``AXES`` key, its values), a sweep along it at ``width``."""
    if hp not in HPS:
        raise UsageError(f"unknown hyperparameter {hp!r}", help=f"choose one of {', '.join(HPS)}")
    if axis is not None and depths is not None:
        raise UsageError("--axis and --depths each set the sweep's axis: give one of them")
    if depths is not None:
        if not program.repeats_over_depth:
            raise UsageError(f"--depths: {program.name} repeats no block over a depth",
                             help="declare `depth L = ...` and use `repeat L block(...)`")
        # as check --depths: without derived depth exponents the "mup" runs would be width-only
        # µP under that label, swept across depths it does not scale for
        require_depth_pass(program, optimizer)
    cache_dir = _cache_dir(cache) if cache else None  # before the data: a bad path fails fast
    data = load(data_name)
    fitted, notes = fit_to_data(program, data)
    if axis is not None:
        fitted, width, widths = _along(fitted, data, axis, width, notes)
    values = sorted(set(values or default_values(hp, optimizer.name)))
    if any(not (math.isfinite(v) and v > 0) for v in values) or len(values) < 3:
        raise UsageError("give at least 3 positive HP values", help="e.g. --values 1e-4,1e-3,1e-2")
    if depths is not None:
        width = width or program.width.base
        fitted.check_widths([width])
        widths = depths
    widths = sorted(set(widths))
    if len(widths) < (1 if one_width else 2) or widths[0] < 1:
        raise UsageError("give at least two positive widths" if depths is None
                         else "give at least two positive depths")
    if depths is None and axis is None:
        fitted.check_widths(widths)
    # digits: about two epochs; past that the MLP memorises the 1,797 images, every loss near the
    # optimum is ~1e-3 and the optimum is noise (measured: 300 steps, docs/transfer.md)
    steps = steps or (200 if data.is_text else 60)
    batch_size = batch_size or (32 if data.is_text else 64)
    if min(steps, seeds, batch_size) < 1:
        raise UsageError("steps, seeds and the batch size must be at least 1")
    # here rather than in the command, so that a library call is refused as the command is; on
    # the fitted program, whose dims are the data's. Along an axis, every value's runs at the
    # one width, sized by the largest batch and the steps of all of them together
    along = axis[0] if axis else None
    check_training(fitted, [width] if depths is not None or along else widths, device, depths,
                   width, max(widths) if along == "batch" else batch_size,
                   steps=sum(widths) if along == "steps" else steps,
                   runs=len(params) * len(values) * seeds * (len(widths) if along in
                                                              ("batch", "seq") else 1),
                   runs_from="--param, --values, --seeds" + (", --axis" if along else ""))
    seq = fitted.dim_table[fitted.seq].size if fitted.seq else None
    base_lr = lr if lr is not None else BASE_LR[optimizer.name]
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise UsageError(f"the learning rate must be a positive number, not {base_lr}")
    sources = {}
    for param in params:
        abc, depth_abc, label, eps = choose(fitted, optimizer, param, convention,
                                            depth_convention=depth_convention)
        sources[param] = emit(fitted, abc, optimizer=optimizer, label=label,
                              command="tensorprog transfer", depth_abc=depth_abc,
                              eps=eps).source
    if data.is_text and len(data.tokens) <= (seq or 0):
        raise UsageError(f"--data {data_name}: {len(data.tokens)} tokens are fewer than one "
                         f"sequence of {seq}")
    # a user's file is keyed by its contents, so editing it never reuses stale results
    content = (hashlib.sha256(Path(data_name).read_bytes()).hexdigest()
               if Path(data_name).suffix == ".pt" else data_name)
    context = json.dumps([content, hp, steps, batch_size, optimizer.name, base_lr, device]
                         + ([width] if depths is not None else [])
                         + ([along, width] if along else []))
    return _Plan(hp, tuple(params), widths, values, seeds, steps, batch_size, seq, base_lr,
                 optimizer.name, device, data_name, data, notes, sources, context, cache_dir,
                 width if depths is not None else None, (along, width) if along else None)


def _along(fitted: Program, data: Dataset, axis: tuple[str, Sequence[int]], width: int | None,
           notes: list[str]) -> tuple[Program, int, list[int]]:
    """A sweep along a training setting at one width: (the program, the width, the values).
    Along the sequence length the program's sequence dim is set to the longest value: the
    emitted module's positions follow its tokens' length, so one module (one init per seed)
    serves every shorter value, each trial reading sequences of its own length."""
    name, at = axis
    if name not in AXES:
        raise UsageError(f"--axis {name}: not an axis a sweep runs along",
                         help=f"choose one of {', '.join(AXES)} (the width: --widths; the "
                              "depth: --depths)")
    at = sorted(set(at))
    if len(at) < 2 or at[0] < 1:
        raise UsageError(f"--axis {name}: give at least two different positive values",
                         help=f"e.g. --axis {name}=16,32,64,128")
    width = width or fitted.width.base
    fitted.check_widths([width])
    if name == "seq":
        if not fitted.seq or not data.is_text:
            raise UsageError(f"--axis seq: {fitted.name} has no sequence dim, or --data "
                             f"{data.name} is not a token stream",
                             help="sweep the sequence length of a program with a token input "
                                  "(`input tok : tokens[T, V]`) on text data")
        dim = fitted.dim_table[fitted.seq]
        if dim.size != at[-1]:
            notes.append(f"--axis seq: {dim.name} = {at[-1]}, the longest (the program says "
                         f"{dim.size}); shorter sequences use its first positions")
            fitted = verify(replace(fitted, dims=tuple(
                replace(d, size=at[-1]) if d.name == dim.name else d for d in fitted.dims)))
        if len(data.tokens) <= at[-1]:
            raise UsageError(f"--axis seq: {len(data.tokens)} tokens of --data {data.name} are "
                             f"fewer than one sequence of {at[-1]}")
    return fitted, width, at


def trial_plan(program: Program, optimizer: Optimizer, data_name: str, *, param: str,
               width: int, steps: int | None, batch_size: int | None, device: str,
               convention: str) -> _Plan:
    """The plan of trials of one parametrization at one width (a study's, tune.py): checked
    and emitted as a sweep's; each trial's HPs are set in its job (the values here are
    placeholders, and the study checks its own number of runs)."""
    return _plan(program, optimizer, data_name, params=(param,), hp="lr", widths=[width],
                 values=[1.0, 2.0, 4.0], steps=steps, seeds=1,
                 batch_size=batch_size, lr=None, device=device, cache=None, depths=None,
                 width=None, depth_convention="completep", convention=convention,
                 one_width=True)


def _from_cache(plan: _Plan, trials: list[Trial],
                ) -> tuple[dict[Trial, dict], list[tuple[Trial, Path | None]]]:
    """The results the cache already holds, and the trials still to run (with the path each
    result is to be cached at). Warns of cache entries that do not fit their trial."""
    results: dict[Trial, dict] = {}
    todo = []
    stale: list[str] = []
    for t in trials:
        key = t.key(plan.context + plan.sources[t.param])
        path = plan.cache_dir / f"{key}.json" if plan.cache_dir else None
        cached, why = (_cached(path, t, key, plan.steps_of(t)) if path and path.exists()
                       else (None, None))
        if cached is not None:
            results[t] = cached
        else:
            stale += [f"{path.name}: {why}"] if why else []
            todo.append((t, path))
    if stale:
        warnings.warn(TensorProgWarning(Diagnostic(
            f"{len(stale)} cached trial(s) in {plan.cache_dir} do not fit the trial they are "
            f"filed under and are trained again (first: {stale[0]})", severity="warning",
            help="a cache entry is only ever written by tensorprog; delete the directory if "
                 "it was edited")), stacklevel=3)  # sweep's caller
    return results, todo


def _run(plan: _Plan, todo: list[tuple[Trial, Path | None]], results: dict[Trial, dict],
         jobs: int | None, *, total: int, progress: bool, ray_address: str | None = None) -> int:
    """Run the trials of ``todo`` in ``jobs`` worker processes (in this one for a single job), or
    on Ray at ``ray_address``, caching each result as it comes; returns the number of jobs used
    (0 on Ray, where the cluster decides)."""
    from tqdm import tqdm  # only when trials run: the import is slow

    jobs = jobs or (1 if plan.device != "cpu" else max(1, os.cpu_count() or 1))
    jobs = max(1, min(jobs, len(todo)))  # no worker without a trial to run
    threads = 1 if ray_address else max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=total, initial=total - len(todo), desc="transfer sweep", unit="run",
               disable=not progress)
    failed: list[OSError] = []  # a cache write that failed: the sweep goes on without the cache
    try:
        with backend(run_trial, jobs, ray_address) as runner:  # no worker outlives the sweep
            for t, path in todo:
                runner.submit((t, path), plan.job(t, threads))
            while runner.pending:
                (t, path), result = runner.next_done()
                _store(results, t, path, result, bar, failed)
    finally:
        bar.close()
    return 0 if ray_address else jobs


def _mean_losses(plan: _Plan, results: dict[Trial, dict],
                 ) -> dict[str, dict[int, dict[float, float]]]:
    """param -> width -> value -> the loss averaged over the seeds; inf when a seed diverged."""
    losses: dict[str, dict[int, dict[float, float]]] = {}
    for p in plan.params:
        losses[p] = {}
        for w in plan.widths:
            losses[p][w] = {}
            for v in plan.values:
                runs = [results[Trial(p, w, v, s)] for s in range(plan.seeds)]
                ok = [r["loss"] for r in runs if not r["diverged"]]
                losses[p][w][v] = sum(ok) / len(ok) if len(ok) == len(runs) else math.inf
    return losses


def _cache_dir(cache: str | Path) -> Path:
    """The cache's trial directory, made and tried for writing before any training."""
    root = Path(cache)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--cache {cache}: is a file, not a directory",
                         help="choose a directory for the trial cache, or --cache none")
    out = root / "transfer"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--cache {cache}: cannot write the trial cache there "
                         f"({err.strerror or err})",
                         help="choose a directory you can write, or --cache none") from None
    return out


def _cached(path: Path, t: Trial, key: str, steps: int) -> tuple[dict | None, str | None]:
    """(the cached result of trial ``t``, None), or (None, why it cannot be used): unreadable,
    truncated, written for another trial or settings, or of the wrong form."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__})"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    if entry.get("key") != key or entry.get("trial") != _identity(t):
        return None, "written for another trial or other settings"
    loss, diverged, ran = entry.get("loss"), entry.get("diverged"), entry.get("steps")
    if not isinstance(diverged, bool) or isinstance(ran, bool) or not isinstance(ran, int):
        return None, "diverged or steps of the wrong type"
    if diverged:
        ok = loss is None and 0 <= ran < steps
    else:
        ok = (isinstance(loss, (int, float)) and not isinstance(loss, bool)
              and math.isfinite(loss) and loss >= 0 and ran == steps)
    if not ok:
        return None, f"loss {loss!r} and {ran!r} steps do not fit a run of {steps} steps"
    return {"loss": loss, "diverged": diverged, "steps": ran}, None


def _identity(t: Trial) -> list:
    return [t.param, t.width, repr(t.value), t.seed]


def _store(results, t: Trial, path: Path | None, result: dict, bar, failed: list) -> None:
    results[t] = result
    bar.update()
    if path and not failed:
        entry = {**result, "key": path.stem, "trial": _identity(t)}
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(entry))
            tmp.replace(path)  # a trial is cached whole or not at all
        except OSError as err:
            failed.append(err)
            warnings.warn(TensorProgWarning(Diagnostic(
                f"cannot write the trial cache ({err.strerror or err}): the sweep goes on "
                "without it, and an interrupted sweep will start over", severity="warning",
                help="free some disk space, or use --cache none")), stacklevel=2)


AXIS_WORDS = {"batch": ("batch size", "B"), "seq": ("sequence length", "T"),
              "steps": ("step count", "S")}  # the axis in words, and its column key


def render(s: Sweep) -> str:
    """Loss against the HP per width, then the optima, drift and wider-is-better."""
    st = s.settings
    along = {st["axis"]: "per " + AXIS_WORDS[st["axis"]][1]} if st.get("axis") in AXES else {}
    lines = [f"µTransfer sweep of {st['program']} on {st['data']} ({st['data_about']})",
             f"{st['optimizer']}, {along.get('steps', st['steps'])} steps, batch "
             f"{along.get('batch', st['batch_size'])}, {s.seeds} "
             f"seed(s), {st['trials']} trials ({st['cached']} from the cache), on {st['device']}"]
    lines += [n if n.startswith("--") else f"data sets {n}" for n in s.notes]
    depth = st.get("axis") == "depth"
    if depth:
        lines.append(f"across depths, at width {st['width']} (base depth {st['base_depth']})")
    axis, key = ("depth", "L") if depth else ("width", "w")
    if st.get("axis") in AXES:
        axis, key = AXIS_WORDS[st["axis"]]
        lines.append(f"across {axis}s, at width {st['width']}")
    for param, rows in s.losses.items():
        lines += ["", f"{param}: final training loss against log2({s.hp})  (* = grid minimum)"]
        head = ["log2 " + s.hp] + [f"{key}={w}" for w in s.widths]
        table = [head]
        for v in s.values:
            row = [f"{math.log2(v):+.2f}"]
            for w in s.widths:
                loss = rows[w][v]
                best = min(rows[w].values())
                cell = "diverged" if math.isinf(loss) else f"{loss:.4f}"
                row.append(cell + ("*" if loss == best and math.isfinite(loss) else ""))
            table.append(row)
        sizes = [max(len(r[i]) for r in table) for i in range(len(head))]
        lines += ["  ".join(c.rjust(n) for c, n in zip(r, sizes, strict=True)) for r in table]
        optima = []
        for w in s.widths:
            o, edge = s.optimum(param, w)
            optima.append(f"{w}: undetermined" if o is None else
                          f"{w}: {o:+.2f}" + (" (edge)" if edge else ""))
        drift, wider = s.drift(param), s.wider_is_better(param)
        verdict = {True: "yes", False: "no", None: "undetermined"}[wider]
        lines += [f"optimal log2({s.hp}): " + ", ".join(optima),
                  f"drift across {axis}s: "
                  + ("undetermined" if drift is None else f"{drift:.2f} (log2; x{2 ** drift:.2f})")
                  + f", {'deeper' if depth else 'larger' if axis != 'width' else 'wider'}"
                  " is no worse (within "
                  f"{WIDER_TOLERANCE:.0%}) at every value: "
                  + verdict]
        lines += [f"  undetermined: {why}" for why in s.undetermined(param)]
    return "\n".join(lines) + "\n"
