"""Tune the base constants of a program's emitted module at one width with Optuna (TP5's
workflow: tune small, then train the wide model once with the same values).

The search space is made from the derivation, never from names: the base learning rate, one
init σ per *role group* of the normally initialised params (the role ``derive`` gives each from
which of its fans are infinite: ``input``, ``hidden``, ``output`` or ``finite`` weights, and
``vector`` for the params of one axis, biases and gains), one multiplier per role group of the
params the module multiplies in its forward (the readout under ``--convention mup``), and one per
scale of the program (an attention scale, a tied unembedding). σ and the multipliers are searched
as factors of the module's defaults (1/√fan-in at the base width, the scale's declared value),
log-uniformly; the learning rate over the grid ``transfer`` sweeps.

Each trial is :func:`transfer.run_trial` with the Model's ``init_std`` and ``mult`` set, on the
same data, steps and seed for every trial, reporting its running loss every tenth of its steps;
the study's pruner (median, or ASHA: successive halving) stops the trials that fall behind. The
study lives in an Optuna storage (SQLite in the cache by default), named after everything its
losses depend on, so the same command resumes it and another machine may share it. Locally the
trials run in this process or the worker pool (``backend.py``), each worker reporting to the
storage; on Ray the study is driven by Ray Tune with Optuna as its search algorithm, and Ray's
scheduler prunes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..emit.load import load_module
from ..emit.module import Emitted
from ..engine.optimizers import Optimizer
from ..engine.terms import role
from ..errors import UsageError
from ..ir.program import Program
from ..ir.sizes import check_training, training_flops
from .backend import backend, connect_ray
from .transfer import DEFAULT_LOG2, Trial, fit_to_data, run_trial, trial_plan

PRUNERS = ("median", "asha", "none")
SIGMA_LOG2 = (-4.0, 2.0)  # σ factors of the default 1/√fan-in: 1/16 to 4
MULT_LOG2 = (-5.0, 3.0)  # multiplier factors of the module's default: 1/32 to 8
FORMAT = "tensorprog-tune/1"  # the JSON's "format"


# --- the search space, from the derivation -------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """The HPs a study searches: each with its log2 range and the module's names it sets."""

    lr_log2: tuple[float, float]
    sigma: dict[str, tuple[str, ...]]  # "sigma_<group>" -> the params it scales
    mult: dict[str, tuple[str, ...]]  # "mult_<group or scale>" -> the Model's mult names
    base_std: dict[str, float]  # a param's init std at the base width by default
    base_mult: dict[str, float]  # a mult name's default value

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Every HP's (low, high), in its own units."""
        out = {"lr": (2.0 ** self.lr_log2[0], 2.0 ** self.lr_log2[1])}
        out.update({k: (2.0 ** SIGMA_LOG2[0], 2.0 ** SIGMA_LOG2[1]) for k in self.sigma})
        out.update({k: (2.0 ** MULT_LOG2[0], 2.0 ** MULT_LOG2[1]) for k in self.mult})
        return out

    def distributions(self) -> dict:
        import optuna

        return {k: optuna.distributions.FloatDistribution(lo, hi, log=True)
                for k, (lo, hi) in self.bounds().items()}

    def module_values(self, hp: dict[str, float]) -> dict:
        """What the emitted module takes: ``{"lr", "init_std": {param: std}, "mult": {...}}``."""
        init_std = {p: hp[k] * self.base_std[p] for k, ps in self.sigma.items() for p in ps}
        mult = {m: hp[k] * self.base_mult[m] for k, ms in self.mult.items() for m in ms}
        return {"lr": hp["lr"], "init_std": init_std, "mult": mult}

    def as_dict(self) -> dict:
        return {"lr_log2": list(self.lr_log2), "sigma": {k: list(v) for k, v in self.sigma.items()},
                "mult": {k: list(v) for k, v in self.mult.items()}}


def job_at(values: dict) -> dict:
    """What a ``run_trial`` job takes to train at a study's ``values`` (``{"lr", "init_std",
    "mult"}``, as :meth:`Space.module_values` gives them): hp "tune" varies nothing, so the run
    trains at base_lr with the Model's init_std and mult."""
    return {"hp": "tune", "base_lr": values["lr"], "init_std": values["init_std"],
            "mult": values["mult"]}


def group_of(program: Program, param: str) -> str:
    """A param's role group: its derived role (from which of its fans are infinite), with the
    params of one axis (biases, gains) a group of their own."""
    return "vector" if len(program.param_table[param].shape) == 1 else role(program, param)


def search_space(program: Program, module, optimizer: str) -> Space:
    """The space of ``program`` (fitted to its data) for its emitted ``module``."""
    sigma: dict[str, list[str]] = {}
    base_std = {}
    base = module.BASE_WIDTH
    for name, spec in module.SCALING.items():
        if "init" in spec or spec["b"] == math.inf:  # a constant or zero init has no σ
            continue
        k, p = spec["fan_in"]
        base_std[name] = (k * base ** p) ** -0.5
        sigma.setdefault(f"sigma_{group_of(program, name)}", []).append(name)
    mult: dict[str, list[str]] = {}
    base_mult = {}
    for name, spec in module.SCALING.items():  # a param the forward multiplies (not a block's)
        if "block" not in spec and "." not in name and (spec["a"] != 0 or spec.get("aL", 0)):
            mult.setdefault(f"mult_{group_of(program, name)}", []).append(name)
            base_mult[name] = 1.0
    for name, spec in getattr(module, "SCALES", {}).items():  # each scale by its program name
        mult[f"mult_{name}"] = [name]
        base_mult[name] = float(spec["base"])
    grid = DEFAULT_LOG2[("lr", optimizer)]
    return Space((float(grid[0]), float(grid[-1])), {k: tuple(v) for k, v in sigma.items()},
                 {k: tuple(v) for k, v in mult.items()}, base_std, base_mult)


# --- one trial, reporting to the study -----------------------------------------------------------


def _pruner(kind: str, steps: int, every: int):
    import optuna

    if kind == "median":  # after 5 complete trials, below the median of their losses so far
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=every)
    if kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3)
    return optuna.pruners.NopPruner()


_STORAGES: dict = {}  # per process: URL -> Optuna storage (each costs a connection and a check)


def open_storage(url: str):
    """The Optuna storage at ``url``, made once per process."""
    import optuna

    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    return _STORAGES[url]


def tune_trial(job: dict) -> dict:
    """One study trial (in this process or a worker): ``run_trial`` reporting its running loss to
    the study in the storage, which prunes it; adds the trial's seconds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = job["study"]
    study = optuna.load_study(study_name=t["name"], storage=open_storage(t["storage"]),
                              pruner=_pruner(t["pruner"], job["steps"], job["report_every"]))
    trial = optuna.trial.Trial(study, t["trial_id"])

    def report(step: int, loss: float) -> bool:
        trial.report(loss, step)
        return trial.should_prune()

    start = time.perf_counter()
    result = run_trial(job, report)
    return {**result, "seconds": time.perf_counter() - start}


# --- the study ------------------------------------------------------------------------------------


@dataclass
class Tuned:
    """A study's outcome: the best trial's values, in the form the emitted module takes."""

    program: str
    width: int
    base_width: int
    param: str
    optimizer: str
    convention: str
    values: dict  # {"lr", "init_std", "mult"}
    factors: dict[str, float]  # each searched HP's best value (σ and mult as factors)
    loss: float | None
    trials: dict[str, int]  # state -> count
    trial_seconds: float
    flops: float
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the tuned module's SCALING, SCALES and base depth, as JSON holds them: what an emitted
    # module's load_config (and MuP) compare with their own before taking the values
    scaling: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "program": self.program, "width": self.width,
                "base_width": self.base_width, "param": self.param,
                "optimizer": self.optimizer, "convention": self.convention, **self.values,
                "factors": self.factors, "loss": self.loss, "trials": self.trials,
                "trial_seconds": self.trial_seconds, "flops": self.flops, **self.settings,
                "notes": self.notes, **self.scaling}

    def __str__(self) -> str:
        return render(self)


def _study_name(program: Program, plan, width: int, convention: str, pruner: str,
                seed: int, space: Space) -> str:
    """Named after everything a trial's loss depends on: rerunning the same command resumes
    the study, changing any setting starts another."""
    key = json.dumps([plan.context, plan.sources[plan.params[0]], width, convention, pruner,
                      seed, space.as_dict()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{program.name}-{plan.params[0]}-w{width}-{digest}"


def _storage_url(storage: str | None, cache: str | Path | None) -> str:
    """The study's storage URL: ``storage``, or SQLite in the cache directory."""
    if storage:
        if "://" not in storage:
            raise UsageError(f"--storage {storage}: not a database URL",
                             help="e.g. --storage sqlite:///tune.db, or "
                                  "postgresql://user@host/db for a study shared by machines")
        return storage
    root = Path(cache or ".tensorprog-cache")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--cache {root}: cannot make it ({err.strerror or err})",
                         help="choose a directory you can write, or give --storage") from None
    return f"sqlite:///{(root / 'tune.db').resolve()}"


def _open_study(url: str, name: str, seed: int, pruner):
    import optuna
    from sqlalchemy.exc import ArgumentError, OperationalError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(storage=open_storage(url), study_name=name, direction="minimize",
                                   sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner,
                                   load_if_exists=True)
    except (ArgumentError, OperationalError, ImportError, ValueError) as err:
        raise UsageError(f"--storage {url}: cannot open the study there ({err.__class__.__name__}"
                         f": {str(err).splitlines()[0]})",
                         help="give a database URL Optuna takes (sqlite:///FILE, "
                              "postgresql://..., mysql://...) that this machine can reach and "
                              "write") from None


def _here() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_orphans(study) -> int:
    """Mark FAIL the trials an earlier driver on this machine left running when it was killed
    (its pid is gone), so they count as tried; another machine's running trials are left alone."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("driver", "")
        h, _, pid = who.rpartition(":")
        if h == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            optuna.trial.Trial(study, t._trial_id).set_user_attr("interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
            count += 1
    return count


def tune(program: Program, optimizer: Optimizer, data_name: str, *, width: int | None = None,
         trials: int = 20, param: str = "mup", convention: str = "table3",
         pruner: str = "median", steps: int | None = None, batch_size: int | None = None,
         seed: int = 0, storage: str | None = None, study_name: str | None = None,
         cache: str | Path | None = ".tensorprog-cache", jobs: int | None = 1,
         device: str = "cpu", ray_address: str | None = None, progress: bool = False) -> Tuned:
    """Run (or resume) a study of ``trials`` trials at ``width`` (default the base width) and
    return the best values. Sizes are checked before any training, as in ``transfer``."""
    if pruner not in PRUNERS:
        raise UsageError(f"unknown pruner {pruner!r}", help=f"choose one of {', '.join(PRUNERS)}")
    if not 1 <= trials <= 100_000:
        raise UsageError(f"--trials {trials}: must be from 1 to 100000",
                         help="a study of a few dozen trials finds the optimum of a handful "
                              "of HPs")
    url = _storage_url(storage, cache)  # a malformed URL is refused before any work
    width = width or program.width.base
    plan = trial_plan(program, optimizer, data_name, param=param, width=width, steps=steps,
                      batch_size=batch_size, device=device, convention=convention)
    fitted, _ = fit_to_data(program, plan.data)
    check_training(fitted, [width], device, vectors=plan.batch_size, steps=plan.steps,
                   runs=trials, runs_from="--trials")
    module = load_module(Emitted(plan.sources[param]), param)
    space = search_space(fitted, module, optimizer.name)
    every = max(1, plan.steps // 10)
    name = study_name or _study_name(program, plan, width, convention, pruner, seed, space)
    study = _open_study(url, name, seed, _pruner(pruner, plan.steps, every))
    notes = list(plan.notes)
    orphans = _fail_orphans(study)
    if orphans:
        notes.append(f"{orphans} trial(s) left running by an interrupted run were marked failed "
                     "and are trained again")
    # every trial trains with the same seed: the study compares HPs, not draws
    base_job = {**plan.job(Trial(param, width, 1.0, seed), 1), "report_every": every}
    if ray_address:
        _run_on_ray(study, space, base_job, url, name, trials, pruner, seed, ray_address,
                    cache, progress)
    else:
        _run_local(study, space, base_job, url, name, trials, pruner, jobs, progress)
    return _result(study, space, fitted, plan, module, width, param, convention, notes,
                   {"study": name, "storage": url, "pruner": pruner, "seed": seed,
                    "steps": plan.steps, "batch_size": plan.batch_size, "data": data_name,
                    "backend": f"ray at {ray_address}" if ray_address else "local"})


def finished(study) -> int:
    """The trials that count towards ``--trials``: every finished one but those an interrupted
    run left behind (they are trained again)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                    TrialState.FAIL))
    return sum(not t.user_attrs.get("interrupted") for t in done)


def _run_local(study, space: Space, base_job: dict, url: str, name: str, trials: int,
               pruner: str, jobs: int | None, progress: bool) -> None:
    """Ask, train and tell until the study holds ``trials`` finished trials, ``jobs`` at once."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    todo = max(0, trials - finished(study))
    jobs = max(1, min(jobs or 1, todo or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=trials, initial=trials - todo, desc="tune", unit="trial",
               disable=not progress)
    asked: dict[int, object] = {}
    try:
        with backend(tune_trial, jobs) as runner:
            while todo or runner.pending:
                while todo and runner.pending < jobs:
                    trial = study.ask(space.distributions())
                    trial.set_user_attr("driver", _here())
                    job = {**base_job, **job_at(space.module_values(trial.params)),
                           "threads": threads,
                           "study": {"name": name, "storage": url, "pruner": pruner,
                                     "trial_id": trial._trial_id}}
                    asked[trial.number] = trial
                    runner.submit(trial.number, job)
                    todo -= 1
                number, result = runner.next_done()
                trial = asked.pop(number)
                trial.set_user_attr("seconds", result["seconds"])
                trial.set_user_attr("steps", result["steps"])
                if result.get("pruned"):
                    study.tell(trial, state=TrialState.PRUNED)
                elif result["diverged"]:
                    trial.set_user_attr("diverged", True)
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, result["loss"])
                bar.update()
                if study.best_trials:
                    bar.set_postfix(best=f"{study.best_value:.4f}")
    finally:
        bar.close()


def _ray_trainable(config: dict, job: dict, space: Space) -> None:
    """One trial on a Ray worker: ``run_trial`` reporting its running loss to Ray Tune, whose
    scheduler may stop it; its steps and seconds are kept on the study's trial as it goes."""
    import optuna
    from optuna.trial import TrialState
    from ray import tune as ray_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = job["study"]
    study = optuna.load_study(study_name=t["name"], storage=open_storage(t["storage"]))
    # the trial OptunaSearch asked for this config: running, with exactly these params
    ours = [x for x in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if x.params == config]
    trial = optuna.trial.Trial(study, ours[0]._trial_id) if ours else None
    values = space.module_values(config)
    start = time.perf_counter()

    def keep(step: int) -> None:
        if trial is not None:
            trial.set_user_attr("steps", step)
            trial.set_user_attr("seconds", time.perf_counter() - start)
            trial.set_user_attr("driver", t["driver"])

    def report(step: int, loss: float) -> bool:
        keep(step)
        ray_tune.report({"loss": loss, "step": step})
        return False  # Ray's scheduler stops a trial itself

    result = run_trial({**job, **job_at(values)}, report)
    keep(result["steps"])
    if result["diverged"]:
        if trial is not None:
            trial.set_user_attr("diverged", True)
        ray_tune.report({"loss": math.inf, "step": result["steps"]})
    else:
        ray_tune.report({"loss": result["loss"], "step": result["steps"]})


def _run_on_ray(study, space: Space, base_job: dict, url: str, name: str, trials: int,
                pruner: str, seed: int, address: str, cache, progress: bool) -> None:
    """The study driven by Ray Tune: Optuna's TPE as its search algorithm (on this study's
    storage), Ray's ASHA or median-stopping scheduler as the pruner, one CPU a trial."""
    todo = trials - finished(study)
    if todo <= 0:
        return
    # Ctrl-C must reach the command (which says what is kept), not Ray Tune's own handler,
    # which would stop the trials and return as if the study had finished
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    connect_ray(address)
    import optuna
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    steps, every = base_job["steps"], base_job["report_every"]
    goal = {"metric": "loss", "mode": "min"}
    scheduler = {"asha": lambda: ASHAScheduler(time_attr="step", max_t=steps, **goal,
                                               grace_period=every, reduction_factor=3),
                 "median": lambda: MedianStoppingRule(time_attr="step", grace_period=every,
                                                      min_samples_required=5, **goal),
                 "none": FIFOScheduler}[pruner]()
    searcher = OptunaSearch(space=space.distributions(), metric="loss", mode="min",
                            sampler=optuna.samplers.TPESampler(seed=seed), study_name=name,
                            storage=open_storage(url))
    job = {**base_job, "study": {"name": name, "storage": url, "driver": _here()}}
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(_ray_trainable, job=job, space=space), {"cpu": 1})
    root = Path(cache or ".tensorprog-cache").resolve() / "ray"
    tuner = ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=todo),
        run_config=ray_tune.RunConfig(name=name, storage_path=str(root),
                                      verbose=1 if progress else 0))
    with contextlib.redirect_stdout(sys.stderr):  # Ray Tune's tables are for people: stdout
        tuner.fit()                               # holds the result (and --json) alone


def _result(study, space: Space, fitted: Program, plan, module, width: int, param: str,
            convention: str, notes: list[str], settings: dict) -> Tuned:
    from optuna.trial import TrialState

    states: dict[str, int] = {}
    seconds = 0.0
    flops = 0.0
    complete = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.state == TrialState.COMPLETE and t.user_attrs.get("steps") != plan.steps:
            state = "pruned"  # stopped by Ray's scheduler, which tells its last loss as final
        elif t.state == TrialState.COMPLETE and not math.isfinite(t.value):
            state = "fail"  # diverged on Ray
        elif t.state == TrialState.COMPLETE:
            complete.append(t)
        states[state] = states.get(state, 0) + 1
        seconds += t.user_attrs.get("seconds", 0.0)
        flops += training_flops(fitted, width, None, plan.batch_size, t.user_attrs.get("steps", 0))
    if not complete:
        raise UsageError("no trial of the study trained to its last step without diverging: "
                         "there is no best value to give",
                         help="run more --trials, or fewer --steps (or check the data)")
    best = min(complete, key=lambda t: t.value)
    return Tuned(fitted.name, width, module.BASE_WIDTH, param, plan.optimizer, convention,
                 space.module_values(best.params), dict(best.params), best.value, states,
                 seconds, flops, settings, notes, scaling_record(module))


def scaling_record(module) -> dict:
    """What a tuned file records of the module it was tuned with: its SCALING (and SCALES,
    base depth) as JSON holds them, which ``load_config`` of the module it is loaded into
    compares with its own."""
    record = {"scaling": module.SCALING, "scales": getattr(module, "SCALES", {})}
    if hasattr(module, "BASE_DEPTH"):
        record["base_depth"] = module.BASE_DEPTH
    return json.loads(json.dumps(record))


def render(t: Tuned) -> str:
    st = t.settings
    counts = ", ".join(f"{n} {k}" for k, n in sorted(t.trials.items()))
    lines = [f"tuned {t.program} ({t.param}, {t.convention}) for {t.optimizer} at width "
             f"{t.width} (base {t.base_width}) on {st['data']}",
             f"study {st['study']}: {counts}; {st['steps']} steps of batch {st['batch_size']} a "
             f"trial, {st['pruner']} pruning, on {st['backend']}",
             f"compute: {t.trial_seconds:.1f} trial-seconds, about {t.flops:.3g} FLOPs",
             *(f"note: {n}" for n in t.notes), "",
             f"best final training loss {t.loss:.4f}", "",
             f"lr  {t.values['lr']:.4g}"]
    lines += [f"{k}  x{v:.3g}" for k, v in t.factors.items() if k != "lr"]
    return "\n".join(lines) + "\n"


def train_once(program: Program, optimizer: Optimizer, data_name: str, values: dict, *,
               width: int, param: str = "mup", convention: str = "table3",
               steps: int | None = None, batch_size: int | None = None, seed: int = 0,
               device: str = "cpu") -> dict:
    """One run at ``width`` with tuned ``values`` (``{"lr", "init_std", "mult"}``): the step a
    study's values are for (train the wide model once). Returns the trial's result with its
    ``seconds`` and ``flops``."""
    plan = trial_plan(program, optimizer, data_name, param=param, width=width, steps=steps,
                      batch_size=batch_size, device=device, convention=convention)
    fitted, _ = fit_to_data(program, plan.data)
    job = {**plan.job(Trial(param, width, 1.0, seed), max(1, os.cpu_count() or 1)),
           **job_at(values)}
    start = time.perf_counter()
    result = run_trial(job)
    return {**result, "seconds": time.perf_counter() - start,
            "flops": float(training_flops(fitted, width, None, plan.batch_size,
                                          result["steps"]))}


# --- reading the values back ----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Tuned values, read back from ``tune -o FILE``: ``Model(width, **c.model_kwargs())``,
    ``make_optimizer(model, **c.optimizer_kwargs())``; for a traced model,
    ``MuP(...).param_groups(model, **c.optimizer_kwargs())``."""

    lr: float
    init_std: dict[str, float]
    mult: dict[str, float]
    source: dict

    def model_kwargs(self, module=None) -> dict:
        """``init_std`` and ``mult`` for ``Model``; with ``module`` (an emitted module), first
        checked against its params and scales."""
        if module is not None:
            check_fits_module(self, module)
        return {"init_std": dict(self.init_std), "mult": dict(self.mult)}

    def optimizer_kwargs(self) -> dict:
        return {"lr": self.lr}


def load_config(path: str | Path) -> Config:
    """The values ``tune -o`` wrote to ``path``, checked: a UsageError says what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror or err})",
                         help="give the file `tensorprog tune -o FILE` wrote") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not JSON ({err})",
                         help="give the file `tensorprog tune -o FILE` wrote") from None
    return config_from_json(data, str(path))


def as_config(config) -> Config:
    """A :class:`Config` from what a caller may hold: one already, the path of a ``tune -o``
    file, or its JSON as a dict."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return config_from_json(config, "the tuned values")
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise UsageError(f"config must be the path of a `tensorprog tune -o` file, its JSON or "
                     f"tensorprog.load_config's result, not {type(config).__name__}")


def config_from_json(data, path: str) -> Config:
    """The values of a ``tune -o`` file's JSON, checked (``path`` names it in errors)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path}: not a file of tuned values (no \"format\": \"{FORMAT}\")",
                         help="give the file `tensorprog tune -o FILE` wrote")

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    lr, init_std, mult = data.get("lr"), data.get("init_std"), data.get("mult")
    if not (number(lr) and lr > 0):
        raise UsageError(f"{path}: \"lr\" must be a positive number, not {lr!r}")
    for key, table, positive in (("init_std", init_std, True), ("mult", mult, False)):
        if not isinstance(table, dict) or not all(
                isinstance(k, str) and number(v) and (v > 0 or not positive)
                for k, v in table.items()):
            raise UsageError(f"{path}: \"{key}\" must map names to "
                             f"{'positive' if positive else 'finite'} numbers")
    return Config(float(lr), dict(init_std), dict(mult), data)


def check_fits_module(config: Config, module) -> None:
    """Refuse values for params or scales ``module`` does not have, naming the convention the
    values were tuned in (a readout multiplier exists only under ``--convention mup``); a file
    that records its scaling, loaded into a module that has ``load_config``, is checked by it
    (every exponent and fan-in the same, so a file of another program, parametrization,
    convention, optimizer or data dims is refused)."""
    if "scaling" in config.source and hasattr(module, "load_config"):
        try:
            module.load_config(config.source)
        except ValueError as err:
            raise UsageError(str(err), help="give the module emitted from the program and "
                                            "settings the values were tuned for") from None
        return
    scaling = module.SCALING
    known_mult = set(getattr(module, "SCALES", {})) | {
        n for n, s in scaling.items() if "block" not in s and "." not in n
        and (s["a"] != 0 or s.get("aL", 0))}
    missing = sorted(set(config.init_std) - set(scaling)) + sorted(set(config.mult) - known_mult)
    if missing:
        src = config.source
        raise UsageError(f"the tuned values set {', '.join(missing)}, which this module does not "
                         f"have (they were tuned for {src.get('program')} in the "
                         f"{src.get('convention')} convention, {src.get('param')})",
                         help=f"emit the module with `tensorprog derive PROGRAM -o FILE "
                              f"--convention {src.get('convention')}` for the same program")
