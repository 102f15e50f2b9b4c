"""The project's numerical proof on one GPU, in one go, written to a markdown report.

    timeout 470 python benchmarks/gpu_proof.py [--out FILE.md] [--budget 430]
    python benchmarks/gpu_proof.py --dry [--out FILE.md]     # the same code paths, tiny, on CPU

Parts, in this order, each with its own time cap (seconds, CAPS) inside the whole ``--budget``:

1. the CUDA-marked tests (``pytest -m cuda`` on the test files that mark one), in a subprocess;
2. the coordinate check of examples/mlp.tp, gpt.tp and llama.tp at widths 256..8192 (powers of
   two), µP against SP, in float32 and under bfloat16 autocast;
3. a µTransfer sweep of examples/transformer.tp on text up to width 4096: each width's optimal
   learning rate under µP and SP;
4. benchmarks/bench_gpt.py on the GPU (bf16 autocast, flash attention required), eager and under
   torch.compile, each in a subprocess;
5. one zoo model: a Hugging Face Llama with grouped-query attention built small from its config,
   traced, µP applied and checked up to width 4096 (a refusal by the tracer is recorded, and the
   same model with plain multi-head attention is checked instead).

Each part runs in a process of its own (spawned), stopped GRACE seconds after its cap: a hang
or an overrun costs that part only, and a crashed CUDA context dies with it. A part that raises
is recorded as failed and the next one runs; an item whose estimated time would overrun its
part's cap is skipped and named in the report (the widest widths first). The report is
rewritten after every part, and a part hands back what it finished after every item, so a run
stopped from outside, or a part stopped at its cap, keeps what it measured. Estimates: building
and training a model costs about its param count times a rate measured as the run goes (the
init is drawn on the CPU from seeded generators, so that results do not depend on the device;
on a GPU host this, not the GPU, dominates the wide checks: about 11 s a build of the 1.7B
params of gpt.tp or llama.tp at width 8192, at the 6.5 ns a param measured on a 2-core x86_64
CPU).

``--dry`` runs every part's code at widths 32/64 with 1-2 steps and a tiny GPT on the CPU, in
this process (a process per part costs seconds of imports), in about 10 s of CPU; the CUDA
tests are reported as "skipped: no CUDA" where there is none (tests/test_gpu_proof.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.ir.sizes import param_count
from tensorprog.numerics.judge import render
from tensorprog.numerics.measure import default_batch_size
from tensorprog.numerics.transfer import sweep

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_proof.md"

# Seconds per part on the GPU: 60 + 150 + 65 + 110 + 45 = 430 (the default --budget); a part
# overrunning its cap is stopped GRACE seconds after it, so a run ends within 430 + 15 s plus
# importing torch (under 8 minutes). The coordinate check's wide decoders (1.7B params at width
# 8192) cost about 11 s a build on the host's CPU, so it gets the largest share; compiling the
# GPTs (inductor, cold) is the next largest.
CAPS = {"cuda tests": 60, "coordinate check": 150, "transfer": 65, "bench_gpt": 110, "zoo": 45}
GRACE = 15.0
# --dry: every item runs, however slow a loaded CPU makes it (its sizes are the bound); a cap
# reached on a busy machine would skip items and make its test flaky
DRY_CAP = 3600.0

FULL = {
    # one seed: two would leave no time for the decoders at width 8192 (a build each, above)
    "widths": (256, 512, 1024, 2048, 4096, 8192), "seeds": 1, "steps": 3,
    "transfer_widths": (256, 1024, 4096), "transfer_values": (2.0**-11, 2.0**-9, 2.0**-7),
    "transfer_steps": 100, "transfer_batch": None,
    # 2 blocks: compiling (cold, inductor) grows with the unrolled blocks, and must fit the cap
    "bench": ["--width", "1024", "--blocks", "2", "--tokens", "1024", "--batch", "16",
              "--vocab", "32768", "--rounds", "5", "--steps", "3", "--autocast", "bf16",
              "--flash"],
    "zoo_widths": (512, 1024, 2048, 4096), "zoo_seeds": (0,), "zoo_layers": 2, "zoo_steps": 3,
}
DRY = {
    "widths": (32, 64), "seeds": 1, "steps": 2,
    "transfer_widths": (32, 64), "transfer_values": (2.0**-9, 2.0**-7, 2.0**-5),
    "transfer_steps": 1, "transfer_batch": 2,
    "bench": ["--width", "32", "--blocks", "1", "--tokens", "8", "--batch", "2", "--vocab", "16",
              "--rounds", "1", "--steps", "1"],
    "zoo_widths": (32, 64), "zoo_seeds": (0,), "zoo_layers": 1, "zoo_steps": 2,
}
PROGRAMS = ("mlp", "gpt", "llama")
# a tolerance for the traced Llama as in its test: 0.15 fails its logits at widths 128..512
ZOO_TOLERANCE = 0.25
SAFETY = 1.5  # estimates are scaled by this before they are compared with what is left
# seconds per param of a coordinate check's run before one is measured (numerics.measure.build:
# 6.5 ns a param of CPU for examples/llama.tp at width 2048 on a 2-core x86_64 CPU, with room
# for the steps, the move to the GPU and a slower host)
PRIOR_RATE = 15e-9


class Skip(Exception):
    """A part that does not apply here (no CUDA): recorded as skipped, not failed."""


@dataclass
class Part:
    title: str
    cap: float
    deadline: float = 0.0  # time.time(): the same clock in a part's own process
    status: str = "not run"
    lines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def left(self) -> float:
        return self.deadline - time.time()

    def skip(self, what: str, estimate: float) -> None:
        self.skipped.append(f"{what}: estimated {estimate:.0f} s, {max(self.left(), 0):.0f} s "
                            "left of the cap")


@dataclass
class Run:
    dry: bool
    device: str
    out: Path
    budget: float
    start: float = field(default_factory=time.time)
    parts: list[Part] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # seconds per param built and trained
    save_to: str | None = None  # in a part's own process: where its results go

    @property
    def size(self) -> dict:
        return DRY if self.dry else FULL

    def estimate(self, params: int) -> float:
        """Seconds to build (and train a few steps) ``params`` params: at the slowest rate seen
        in this run, or before any at PRIOR_RATE."""
        return SAFETY * max(self.rates, default=PRIOR_RATE) * params

    def learn(self, seconds: float, params: int) -> None:
        if params:
            self.rates.append(seconds / params)

    def checkpoint(self, part: Part) -> None:
        """In a part's own process, hand what it has so far to the parent (which keeps it if
        the part is stopped at its cap); in this process, nothing to do."""
        if self.save_to:  # written whole, then renamed: a part stopped mid-write leaves the last
            partial = Path(self.save_to + ".partial")
            partial.write_text(json.dumps({"status": part.status, "lines": part.lines,
                                           "skipped": part.skipped, "rates": self.rates}))
            os.replace(partial, self.save_to)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report (default {DEFAULT_OUT})")
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU, in seconds")
    ap.add_argument("--budget", type=float, default=430,
                    help="seconds for all parts together (default 430, for an 8-minute slot)")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry:
        # tiny tensors: torch's spinning worker threads would cost more CPU than they save
        # (the suite's conftest says the same)
        torch.set_num_threads(1)
    run = Run(args.dry, device, args.out, args.budget)
    for title, fn in PARTS.items():
        cap = DRY_CAP if args.dry else CAPS[title]
        left = math.inf if args.dry else run.budget - (time.time() - run.start)
        part = Part(title, max(0.0, min(cap, left)))
        run.parts.append(part)
        began, cpu = time.time(), _cpu()
        part.deadline = began + part.cap
        if part.cap <= 0:
            part.status = "skipped: the whole budget is spent"
        elif args.dry:  # seconds matter in the suite: no process of its own
            execute(run, part, fn)
        else:
            try:
                in_child(run, part)
            except Exception as err:  # the process could not start: the next part still runs
                part.status = f"failed: {type(err).__name__}: {err}"
        part.seconds = time.time() - began
        write(run)
        print(f"{title}: {part.status} ({part.seconds:.1f} s, {_cpu() - cpu:.1f} s of CPU with "
              "subprocesses)", flush=True)
    print(f"wrote {run.out}")
    return 0


def execute(run: Run, part: Part, fn) -> None:
    """Run one part, recording a skip or a failure instead of raising."""
    try:
        fn(run, part)
        part.status = "ok" if not part.skipped else "ok, with items not measured (below)"
    except Skip as why:
        part.status = f"skipped: {why}"
    except Exception as err:  # a GPU run must never be lost to one part's crash
        part.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
        part.lines += ["```text", traceback.format_exc()[-3000:].rstrip(), "```"]


def in_child(run: Run, part: Part, grace: float = GRACE) -> None:
    """Run a part in a process of its own, stopped ``grace`` seconds after its deadline: a
    hang (a compile, a kernel) or an overrun the estimates missed costs that part only, and a
    crashed CUDA context dies with its process. What the part had finished comes back through
    a JSON file it rewrites after each item."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")  # fork after CUDA is initialised is unsafe
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.json"
        child = spawn.Process(target=_child, args=(part.title, run.dry, run.device, run.rates,
                                                   part.cap, part.deadline, str(path)))
        child.start()
        child.join(max(part.left(), 0) + grace)
        stopped = child.is_alive()
        if stopped:
            child.terminate()  # SIGTERM: _child raises SystemExit, which kills its subprocess
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
        finished = path.exists()
        if finished:
            done = json.loads(path.read_text())
            part.status, part.lines, part.skipped = done["status"], done["lines"], done["skipped"]
            run.rates = done["rates"]
        below = "; what it finished is below" if finished else ""
        if stopped:
            part.status = f"stopped at its cap ({part.cap:.0f} s + {grace:.0f} s){below}"
        elif child.exitcode != 0:  # killed (out of memory) or crashed outside Python
            part.status = f"failed: its process exited with status {child.exitcode}{below}"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _child(title: str, dry: bool, device: str, rates: list[float], cap: float, deadline: float,
           save_to: str) -> None:
    def stop(signum, frame):
        raise SystemExit(f"stopped at the cap of {title}")

    signal.signal(signal.SIGTERM, stop)
    run = Run(dry, device, Path(save_to), 0.0, rates=list(rates), save_to=save_to)
    part = Part(title, cap, deadline)
    execute(run, part, PARTS[title])
    run.checkpoint(part)


def _cpu() -> float:
    """CPU seconds of this process and its finished subprocesses."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --- 1. the CUDA-marked tests ---------------------------------------------------------------------


def cuda_tests(run: Run, part: Part) -> None:
    if not torch.cuda.is_available():
        raise Skip("no CUDA")
    if run.dry:
        raise Skip("--dry runs on the CPU only")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(part.left(), 1))
    except subprocess.TimeoutExpired:
        part.skipped.append(f"pytest stopped at the cap ({part.cap:.0f} s)")
        return
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    part.lines += [f"`pytest -m cuda` on {', '.join(files)}: exit status {proc.returncode}",
                   "", "| passed | failed | skipped | errors |", "|---:|---:|---:|---:|",
                   f"| {counts.get('passed', 0)} | {counts.get('failed', 0)} | "
                   f"{counts.get('skipped', 0)} | {counts.get('error', 0)} |", "",
                   f"summary: `{summary}`"]
    if proc.returncode != 0:
        part.lines += ["```text", (proc.stdout + proc.stderr)[-3000:].rstrip(), "```"]


# --- 2. the coordinate check ----------------------------------------------------------------------


def coordinate_check(run: Run, part: Part) -> None:
    size = run.size
    programs = {name: tp.parse((ROOT / "examples" / f"{name}.tp").read_text(), f"{name}.tp")
                for name in PROGRAMS}
    rows, details = [], []
    # µP first, in both precisions: what the time cap drops first is SP's widest widths, whose
    # blow-up already shows at the narrower ones
    for param in ("mup", "sp"):
        for autocast in (None, "bf16"):
            for name, program in programs.items():
                label = f"{name}, {autocast or 'fp32'}, {param}"
                widths = list(size["widths"])

                def need(ws, program=program):
                    return param_count_all(program, ws) * size["seeds"]

                # the widest first: a slope over the narrower widths still says something
                while run.estimate(need(widths)) > part.left() and len(widths) > 3:
                    part.skip(f"{label} at width {widths[-1]}", run.estimate(need(widths)))
                    widths.pop()
                if run.estimate(need(widths)) > part.left():
                    part.skip(f"{label} (every width)", run.estimate(need(widths)))
                    continue
                began = time.perf_counter()
                try:
                    result = tp.check(program, "adam", param=param, widths=widths,
                                      seeds=size["seeds"], steps=size["steps"],
                                      device=run.device, autocast=autocast)
                except Exception as err:  # e.g. out of GPU memory: the next check still runs
                    rows.append(f"| {label} | {widths[0]}–{widths[-1]} | failed: "
                                f"{type(err).__name__}: {str(err).splitlines()[0][:200]} | | | "
                                f"{time.perf_counter() - began:.1f} |")
                    part.skipped.append(f"{label}: failed (its row says why)")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                took = time.perf_counter() - began
                run.learn(took, need(widths))
                rows.append(check_row(label, widths, result, took))
                details += [f"<details><summary>{label}</summary>", "", "```text",
                            render(result), "```", "</details>", ""]
                part.lines = coord_lines(run, rows, details)
                run.checkpoint(part)
    part.lines = coord_lines(run, rows, details)


def coord_lines(run: Run, rows: list[str], details: list[str]) -> list[str]:
    size = run.size
    return [f"{size['seeds']} seed(s), {size['steps']} steps of Adam at lr 0.01 on "
            f"{run.device}; bf16 = forward and loss under bfloat16 autocast, vectors recorded "
            "in float32. µP should pass, SP fail (blow-ups); the slopes are those of the "
            "changes after the last step.", "",
            "| program, precision, param | widths | verdict | failing vectors (slope, "
            "expected) | largest deviation | time (s) |", "|---|---|---|---|---|---:|", *rows,
            "", *details]


def param_count_all(program, widths) -> int:
    return sum(param_count(program, w) for w in widths)


def check_row(label: str, widths, result, took: float) -> str:
    last = [r for r in result.results if r.step == result.steps and r.judged]
    fails = [r for r in last if not r.ok]
    finite = [r for r in last if r.expected is not None and _finite(r.slope)
              and _finite(_value(r.expected))]
    worst = max(finite, key=lambda r: abs(r.slope - _value(r.expected)), default=None)
    worst_text = (f"{worst.name} {worst.slope:+.2f} vs {worst.expected.render()}" if worst
                  else "-")
    failing = ", ".join(f"{r.name} {r.slope:+.2f} ({r.expected.render()})" for r in fails[:6])
    failing += f", +{len(fails) - 6} more" if len(fails) > 6 else ""
    return (f"| {label} | {widths[0]}–{widths[-1]} | {'pass' if result.passed else 'FAIL'} | "
            f"{failing or '-'} | {worst_text} | {took:.1f} |")


def _value(expected) -> float:
    """The exponent an exact expectation names (nan for a bound: no deviation to report)."""
    if expected.bound != "exact":
        return float("nan")
    try:
        return float(expected.exponent)
    except (TypeError, ValueError):  # oo: an exactly-zero vector
        return float("nan")


def _finite(x: float) -> bool:
    return math.isfinite(x)


# --- 3. the µTransfer sweep -----------------------------------------------------------------------


def transfer(run: Run, part: Part) -> None:
    size = run.size
    program = tp.parse((ROOT / "examples" / "transformer.tp").read_text(), "transformer.tp")
    widths = list(size["transfer_widths"])
    values = size["transfer_values"]
    builds = 2 * len(values)  # µP and SP, one seed
    threads = torch.get_num_threads()  # each trial sets its own (numerics.transfer.run_trial)
    with tempfile.TemporaryDirectory() as cache:
        def at(ws):
            return sweep(program, OPTIMIZERS["adam"], "text", params=("mup", "sp"), widths=ws,
                         values=values, steps=size["transfer_steps"], seeds=1,
                         batch_size=size["transfer_batch"],
                         device=run.device, jobs=1, cache=cache)

        began = time.perf_counter()
        result = at(widths[:2])  # the narrow widths first: they calibrate the wide one
        took = time.perf_counter() - began
        part.lines = transfer_lines(run, result)
        run.checkpoint(part)
        for w in widths[2:]:
            # a width's trials: what a narrow width's took (the steps), plus building the wide
            # models at the rate the coordinate check measured
            est = SAFETY * took / 2 + run.estimate(builds * param_count(program, w))
            if est > part.left():
                part.skip(f"width {w}", est)
                break
            result = at(widths[:widths.index(w) + 1])
            part.lines = transfer_lines(run, result)
            run.checkpoint(part)
    torch.set_num_threads(threads)


def transfer_lines(run: Run, result) -> list[str]:
    size = run.size
    lrs = ", ".join(f"2^{_log2(v):.0f}" for v in size["transfer_values"])
    lines = [f"examples/transformer.tp on text, Adam, learning rates {lrs}, "
             f"{size['transfer_steps']} steps, 1 seed, on {run.device}; optimum = log2 of the "
             "fitted best learning rate (edge: at the grid's smallest or largest value).", "",
             "| width | µP optimum | SP optimum |", "|---:|---:|---:|"]
    for w in result.widths:
        lines.append(f"| {w} | {_opt(result, 'mup', w)} | {_opt(result, 'sp', w)} |")
    drift = {p: result.drift(p) for p in ("mup", "sp")}
    return lines + ["", "drift of the optimum across widths (log2): " + ", ".join(
        f"{p} {'-' if d is None else f'{d:.2f}'}" for p, d in drift.items()), "",
        "```text", str(result), "```"]


def _log2(v: float) -> float:
    return math.log2(v)


def _opt(result, param: str, width: int) -> str:
    value, edge = result.optimum(param, width)
    return "-" if value is None else f"{value:+.2f}" + (" (edge)" if edge else "")


# --- 4. bench_gpt.py ------------------------------------------------------------------------------


def bench(run: Run, part: Part) -> None:
    has_mup = importlib.util.find_spec("mup") is not None
    part.lines.append("mup is installed: its column is in the tables" if has_mup else
                      "mup is not installed (`pip install --no-deps mup pyyaml tqdm`): the "
                      "tables have no mup column")
    options = ["--device", run.device, *run.size["bench"]]
    # compiling three models takes minutes on a CPU (inductor's C++ build): the dry run skips it
    variants = [("eager", [], 1.0 if run.dry else 0.25)]
    if run.dry:
        part.lines.append("torch.compile: not run in --dry (compiling on a CPU takes minutes)")
    else:
        variants.append(("torch.compile", ["--compile"], 1.0))
    failed = []
    for label, extra, share in variants:
        cap = part.left() * share
        try:
            code, out, err = bench_gpt([*options, *extra], cap, run.dry)
        except subprocess.TimeoutExpired:
            part.skipped.append(f"{label}: stopped at its cap ({cap:.0f} s)")
            continue
        part.lines += ["", f"**{label}** (`bench_gpt.py {' '.join(options + extra)}`), exit "
                       f"status {code}:", ""]
        part.lines += [line for line in out.splitlines() if not line.startswith("mup ")]
        if code != 0:  # the other variant still runs
            failed.append(f"{label}: {(err.strip().splitlines() or ['?'])[-1]}")
            part.lines += ["```text", err[-3000:].rstrip(), "```"]
        run.checkpoint(part)
    if failed:
        raise RuntimeError("bench_gpt.py failed: " + "; ".join(failed))


def bench_gpt(argv: list[str], cap: float, dry: bool) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of benchmarks/bench_gpt.py: in a subprocess stopped at
    ``cap`` seconds (a compile that hangs, or memory a crash leaves, stays there); in --dry in
    this process, the same main() without a second import of torch (seconds of CPU)."""
    script = ROOT / "benchmarks" / "bench_gpt.py"
    if dry:
        spec = importlib.util.spec_from_file_location("bench_gpt", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main(argv)
        return 0, out.getvalue(), ""
    proc = subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                          timeout=max(cap, 1))
    return proc.returncode, proc.stdout, proc.stderr


# --- 5. a zoo model -------------------------------------------------------------------------------


def zoo(run: Run, part: Part) -> None:
    import transformers

    from tensorprog.fromtorch import coord_check

    size = run.size

    def llama(kv_heads: int):
        def build(n: int):
            cfg = transformers.LlamaConfig(
                hidden_size=n, intermediate_size=2 * n, num_hidden_layers=size["zoo_layers"],
                num_attention_heads=8, num_key_value_heads=kv_heads, vocab_size=256,
                max_position_embeddings=8, use_cache=False, bos_token_id=0, eos_token_id=0,
                pad_token_id=0)
            return transformers.LlamaForCausalLM(cfg)

        return build

    def tokens(model):
        return (torch.zeros(2, 8, dtype=torch.long),)

    try:
        traced = tp.from_torch(llama(2), (128, 256), tokens)
        what = "Llama, 8 query heads, 2 key/value heads (grouped-query attention)"
        part.lines.append("grouped-query attention: traced")
    except tp.TensorProgError as err:
        part.lines += ["grouped-query attention (8 query heads, 2 key/value heads): **refused "
                       "by the tracer**:", "", "```text", str(err).rstrip(), "```", "",
                       "checked instead: the same model with multi-head attention "
                       "(num_key_value_heads = num_attention_heads = 8)"]
        traced = tp.from_torch(llama(8), (128, 256), tokens)
        what = "Llama, 8 heads, multi-head attention"
    run.checkpoint(part)
    mup = tp.MuP(traced, "adamw")
    widths = list(size["zoo_widths"])

    def cost(ws) -> float:  # each model is initialised twice: by its constructor, by apply
        return run.estimate(2 * len(size["zoo_seeds"]) * param_count_all(traced.program, ws))

    while cost(widths) > part.left() and len(widths) > 2:
        part.skip(f"the traced Llama at width {widths[-1]}", cost(widths))
        widths.pop()
    began = time.perf_counter()
    result = coord_check(mup, widths, seeds=size["zoo_seeds"], steps=size["zoo_steps"],
                         tolerance=ZOO_TOLERANCE, device=run.device)
    took = time.perf_counter() - began
    # what render's header shows; fromtorch.coord_check's defaults (lr 1e-2, ~16 tokens a step)
    result.settings = {"program": "the traced Llama", "label": "µP applied by MuP.apply",
                       "optimizer": "adamw", "lr": 1e-2, "device": run.device,
                       "batch_size": default_batch_size(traced.program)}
    part.lines += ["", f"{what}, hidden size = width, intermediate 2 × width, "
                   f"{size['zoo_layers']} layer(s), "
                   f"vocabulary 256; µP for AdamW applied with `MuP.apply`; "
                   f"{len(size['zoo_seeds'])} seed(s), tolerance ±{ZOO_TOLERANCE}, on "
                   f"{run.device}", "", "| model | widths | verdict | failing vectors (slope, "
                   "expected) | largest deviation | time (s) |", "|---|---|---|---|---|---:|",
                   check_row("traced Llama", widths, result, took), "", "```text",
                   render(result), "```"]


# --- the report -----------------------------------------------------------------------------------


PARTS = {"cuda tests": cuda_tests, "coordinate check": coordinate_check, "transfer": transfer,
         "bench_gpt": bench, "zoo": zoo}


def write(run: Run) -> None:
    where = (torch.cuda.get_device_name() if run.device.startswith("cuda")
             else platform.processor() or platform.machine())
    total = time.time() - run.start
    lines = ["# GPU proof" + (" (dry run)" if run.dry else ""), "",
             f"device: {run.device} ({where}); torch {torch.__version__}, CUDA "
             f"{torch.version.cuda or 'none'}; Python {platform.python_version()}; "
             f"tensorprog {tp.__version__}", "",
             f"{total:.0f} s in all, "
             + ("no time caps (--dry)" if run.dry else f"of a budget of {run.budget:.0f} s"), "",
             "| part | status | time (s) | cap (s) |", "|---|---|---:|---:|"]
    lines += [f"| {p.title} | {p.status} | {p.seconds:.1f} | {p.cap:.0f} |" for p in run.parts]
    for p in run.parts:
        lines += ["", f"## {p.title}", "", f"status: {p.status}", ""]
        if p.skipped:
            lines += ["not measured (over the time cap, or failed):", ""]
            lines += [f"- {s}" for s in p.skipped]
            lines.append("")
        lines += p.lines
    run.out.parent.mkdir(parents=True, exist_ok=True)
    run.out.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
