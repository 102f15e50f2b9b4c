"""The zoo: every causal-LM family of transformers, built small, traced, µP applied and checked.

    python benchmarks/zoo.py [--families gpt2,llama] [--workers 2] [--timeout 300] [--fresh]

For every entry of transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` the model is built from its
own config class with a tiny vocabulary (256), 2 layers, 8 tokens, every dropout 0 and the MLP at
4 × the width, in two scalings: the head count fixed at 4 (the head dim grows with the width) and
the head dim fixed at 16 (the head count grows). Each is traced at widths 64 and 128
(``from_torch``), derived, applied (µP for Adam), and checked with the user-model coordinate check
(``fromtorch.coord_check``) over widths 256..1024 at its defaults, with the model as it comes (SP)
as the contrast (at 256 and 512, one seed). Every family ends in one of

* ``pass``: the program derives, ``apply`` leaves the model bit-identical at the base width, and
  the check passes;
* ``fail``: one of those does not hold (the failing vectors with their slopes);
* ``refused``: tensorprog refuses it with a positioned error (the op and the user-code line);
* ``build``: the model does not build small from its config (counted apart);
* ``crash``: any other exception (its type and first line), or the family's timeout: the goal
  is none.

Families run in two child processes that stay warm (torch.export's first call costs about 30 s),
each family under an alarm (``--timeout``); a child that dies or hangs past it is restarted after
that family, which is recorded as a crash. Each result is cached as JSON as it completes
(``.tensorprog-cache/zoo/FAMILY.json``), so a rerun resumes, and ``docs/zoo.md`` is written from
the cache. ``--one FAMILY`` runs one family in process and prints its JSON.

How a family is built is config plumbing, not µP: the standard field names (``hidden_size``,
``num_attention_heads``, ...) reach a config's own field through its ``attribute_map``, and
``FIELDS`` lists only the other spellings families use for the same field.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".tensorprog-cache" / "zoo"
OUT = ROOT / "docs" / "zoo.md"

VOCAB = 256
SEQ = 8
LAYERS = 2
# a model past this many parameters at the base width did not build small: a sub-config the
# zoo does not shrink (a vision tower, an audio encoder at their default sizes)
MAX_PARAMS = 20_000_000
TRACE_WIDTHS = (64, 128)
# checked from 256: HF's small inits (0.02) drift below it. GPT-2 fails at 64..512 at every lr
# tried (1e-2, 3e-3, 1e-3: its second block's logits -0.35 to -0.39, the output logits -0.29 to
# -0.33), a finite-width effect docs/torch.md measures; a family takes 20-80 s at these widths
CHECK_WIDTHS = (256, 512, 1024)
HEADS = 4  # the "heads" scaling: 4 heads at every width, head dim n / 4
HEAD_DIM = 16  # the "head_dim" scaling: heads of 16, n / 16 of them
TOLERANCE = 0.25  # as docs/torch.md's checks of HF models: widths <= 512 drift up to 0.25
SCALINGS = {
    "heads": f"{HEADS} heads, head dim n/{HEADS}",
    "head_dim": f"head dim {HEAD_DIM}, n/{HEAD_DIM} heads",
}

# other spellings of the same config field (config plumbing; every one present is set)
FIELDS = {
    "hidden_size": ("n_embd", "d_model", "dim", "embed_dim", "n_embed", "hidden_dim"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers", "decoder_layers"),
    "num_attention_heads": ("n_head", "num_heads", "n_heads", "decoder_attention_heads"),
    "num_key_value_heads": ("num_kv_heads", "n_kv_heads", "multi_query_group_num"),
    "head_dim": ("d_head", "head_size", "attention_head_size", "kv_channels"),
    "intermediate_size": ("n_inner", "ffn_dim", "d_ff", "decoder_ffn_dim", "ffn_hidden_size",
                          "inner_hidden_size", "intermediate_dim", "d_inner"),
    "max_position_embeddings": ("n_positions", "n_ctx", "max_seq_len", "seq_length"),
}
# sizes a config fixes apart from the head dim and the width (config plumbing: at their
# defaults they exceed a small head or width): each keeps its default's proportion to the head
# dim (partial rotary's rotary_dim, a quarter of CodeGen's and GPT-J's heads; MLA's rope, nope
# and value head dims: DeepSeek-V3, Youtu, MiniCPM3) or to the width (MLA's low ranks), that
# proportion rounded to a power of two so that the size stays a whole multiple or fraction of
# the head dim or the width at every traced width
PER_HEAD = ("rotary_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
PER_WIDTH = ("q_lora_rank", "kv_lora_rank")


def _fields(cls) -> set[str]:
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    try:
        names |= set(cls().to_dict())
    except Exception:  # noqa: BLE001 - a config whose defaults do not build: its signature only
        pass
    return names


def config_kwargs(cls, width: int, scaling: str) -> dict:
    """The config's own fields for a small model at ``width`` in ``scaling``."""
    heads = HEADS if scaling == "heads" else width // HEAD_DIM
    wanted = {
        "hidden_size": width,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,  # every query head its own key and value head
        "head_dim": width // heads,
        "intermediate_size": 4 * width,
        "max_position_embeddings": 4 * SEQ,
        "vocab_size": VOCAB,
    }
    fields = _fields(cls)
    aliases = getattr(cls, "attribute_map", {}) or {}
    kwargs: dict = {}
    for std, value in wanted.items():
        names = {aliases.get(std, std), *FIELDS.get(std, ())}
        kwargs.update({f: value for f in names if f in fields})
        if std in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            kwargs.setdefault(aliases.get(std, std), value)
    try:
        defaults = cls().to_dict()
    except Exception:  # noqa: BLE001
        defaults = {}
    for f, v in defaults.items():
        if isinstance(v, float) and ("dropout" in f or "pdrop" in f or f.endswith("_drop")):
            kwargs[f] = 0.0
        elif f.endswith("token_id") and isinstance(v, int) and v >= VOCAB:
            kwargs[f] = 0
        elif f == "layer_types" and isinstance(v, list) and v:
            kwargs[f] = v[:LAYERS]
    kwargs.update(_proportional(defaults, width, width // heads))
    if "use_cache" in fields:
        kwargs["use_cache"] = False
    if "is_decoder" in fields:  # an encoder family's causal-LM head (BERT's) runs as a decoder
        kwargs["is_decoder"] = True
    if isinstance(defaults.get("causal"), bool):  # XLM's own switch for the same
        kwargs["causal"] = True
    return kwargs


def _proportional(defaults: dict, width: int, head: int) -> dict:
    """The PER_HEAD and PER_WIDTH fields of a config's ``defaults`` at a small ``width`` whose
    heads are of ``head`` coordinates, in their default proportion (a power of two)."""
    import math

    hidden = next((defaults[f] for f in ("hidden_size", *FIELDS["hidden_size"])
                   if isinstance(defaults.get(f), int)), None)
    n_heads = next((defaults[f] for f in ("num_attention_heads", *FIELDS["num_attention_heads"])
                    if isinstance(defaults.get(f), int)), None)
    default_head = defaults.get("head_dim") or (hidden // n_heads if hidden and n_heads else None)
    out = {}
    for names, ref, new in ((PER_HEAD, default_head, head), (PER_WIDTH, hidden, width)):
        for f in names:
            if isinstance(defaults.get(f), int) and defaults[f] > 0 and ref:
                out[f] = max(1, round(new * 2 ** round(math.log2(defaults[f] / ref))))
    return out


def builder(family: str, scaling: str, overrides: dict | None = None):
    """``build(width)`` of the family's causal LM in ``scaling`` (``overrides``: config fields
    set last, e.g. another ``initializer_range``)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = transformers.AutoConfig.for_model(family).__class__
    model_cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])

    def build(width):
        return model_cls(cls(**{**config_kwargs(cls, width, scaling), **(overrides or {})}))

    build.__name__ = f"build_{family}"
    return build


def tokens(model):
    import torch

    return (torch.zeros(2, SEQ, dtype=torch.long),)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def refusal(err) -> str:
    """A positioned error in one line: the message, where, and the user's line."""
    d = err.diagnostics[0]
    where = ""
    if d.span is not None:
        where = f" at {Path(d.span.filename).name}:{d.span.line}"
        line = d.span.source_line().strip()
        if line:
            where += f" `{line[:80]}`"
    return f"{d.message}{where}"


def run_scaling(family: str, scaling: str, widths=CHECK_WIDTHS, trace_widths=TRACE_WIDTHS,
                overrides: dict | None = None, check: bool = True, **options) -> dict:
    """One family in one scaling: trace, derive, apply (bit-identical at the base width: its
    params and its output?), then the coordinate check under µP and as the model comes
    (``options`` go to ``coord_check``; ``check=False`` stops before it, status "applied").
    Never raises."""
    import torch

    from tensorprog.engine.derive import derive
    from tensorprog.engine.optimizers import resolve
    from tensorprog.errors import TensorProgError
    from tensorprog.fromtorch import MuP, coord_check, from_torch

    start = time.perf_counter()
    out: dict = {"family": family, "scaling": scaling}
    options.setdefault("tolerance", TOLERANCE)

    def done(status, detail="", **more):
        out.update(status=status, detail=detail, time=round(time.perf_counter() - start, 1),
                   **more)
        return out

    stage = "build"
    try:
        build = builder(family, scaling, overrides)
        with torch.device("meta"):  # counted before anything is allocated or initialised
            size = sum(p.numel() for p in build(trace_widths[0]).parameters())
        if size > MAX_PARAMS:
            return done("build", f"{size / 1e6:.0f}M params at width {trace_widths[0]}: a "
                        "sub-config the zoo does not shrink")
        torch.manual_seed(0)
        base = build(trace_widths[0])
        stage = "trace"
        traced = from_torch(build, trace_widths, tokens)
        out["notes"] = list(traced.notes)
        stage = "derive"
        derive(traced.program, resolve("adam"))
        mup = MuP(traced, "adam")
        stage = "apply"
        x = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
        base.eval()
        with torch.no_grad():
            before = {k: v.clone() for k, v in base.state_dict().items()}
            y0 = _logits(base(x))
            mup.apply(base)
            y1 = _logits(base(x))
        same = all(torch.equal(before[k], v) for k, v in base.state_dict().items())
        out["bit_identical"] = same and torch.equal(y0, y1)
        mup.remove_patches(base)
        if not out["bit_identical"]:
            what = "its output" if same else "its params"
            return done("fail", f"apply changes {what} at the base width")
        if not check:
            return done("applied")
        stage = "check"
        good = coord_check(mup, widths, **options)
        # the contrast: SP's blow-ups are slopes of +1 to +3, plain at two widths and one seed
        bad = coord_check(mup, widths[:2], apply=False, **{**options, "seeds": (0,)})
        out["sp"] = ("passes" if bad.passed
                     else f"fails ({len(bad.failures)} vectors, {_worst(bad)})")
        out["regime"] = good.regime_warning() or None
        if good.passed:
            return done("pass")
        return done("fail", f"{len(good.failures)} vectors: {_worst(good, 4)}",
                    failures={good.where(k): _slope(v) for k, v in good.failures.items()})
    except TensorProgError as err:
        if stage == "build":
            return done("build", _first_line(err))
        return done("refused", f"{stage}: {refusal(err)}")
    except Exception as err:  # noqa: BLE001 - every family gets a row, whatever happens
        if stage == "build":
            return done("build", f"{type(err).__name__}: {_first_line(err)}")
        tb = traceback.extract_tb(err.__traceback__)[-1]
        return done("crash", f"{stage}: {type(err).__name__}: {_first_line(err)} "
                    f"({Path(tb.filename).name}:{tb.lineno})")


def _logits(out):
    return getattr(out, "logits", out[0] if isinstance(out, (tuple, list)) else out)


def _slope(entries) -> float:
    worst = max(entries, key=lambda r: abs(r.slope) if r.slope == r.slope else 1e9)
    return round(worst.slope, 2)


def _worst(result, k: int = 2) -> str:
    """The k failing vectors furthest from their expectation: name (module path) and slope."""
    items = sorted(result.failures.items(), key=lambda kv: -abs(_slope(kv[1])))[:k]
    return ", ".join(f"{result.where(name)} {_slope(v):+.2f}" for name, v in items)


def run_family(family: str, **options) -> dict:
    return {s: run_scaling(family, s, **options) for s in SCALINGS}


# --- the pool, the cache and the report ---------------------------------------------------------


class Timeout(BaseException):
    """The family's alarm: a BaseException, so that no ``except Exception`` on the way (the
    family's own row, the model's code) takes it for the family's failure."""


def _alarm(signum, frame):
    raise Timeout


def run_batch(families: list[str], timeout: float) -> None:
    """In a child: each family in turn, cached as it completes, under a per-family alarm (the
    process stays warm: torch.export's first call costs about 30 s, once)."""
    import signal

    import torch

    torch.set_num_threads(1)  # two children run side by side on two cores
    signal.signal(signal.SIGALRM, _alarm)
    for family in families:
        t = time.perf_counter()
        signal.alarm(int(timeout))
        try:
            result = run_family(family)
        except Timeout:
            row = {"status": "crash", "detail": f"timed out after {timeout:.0f} s",
                   "time": round(time.perf_counter() - t, 1)}
            result = {s: dict(row, family=family, scaling=s) for s in SCALINGS}
        finally:
            signal.alarm(0)
        _store(family, result)
        print(f"done {family}", flush=True)


def _store(family: str, result: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{family}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(CACHE / f"{family}.json")


def _worker(families: list[str], timeout: float, bar) -> None:
    """Runs ``families`` in one warm child, restarting it past a family that kills it (a crash
    in C code, or a hang the alarm cannot interrupt: killed after the timeout and a minute)."""
    import select

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    todo = list(families)
    while todo:
        cmd = [sys.executable, __file__, "--batch", ",".join(todo), "--timeout", str(timeout)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        t = time.perf_counter()
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("done "):
                    done = line.split()[1]
                    todo.remove(done)
                    bar.set_postfix_str(done)
                    bar.update()
                    t = time.perf_counter()
            elif time.perf_counter() - t > timeout + 60:
                proc.kill()
                break
        proc.wait()
        err = proc.stderr.read().strip().splitlines() if proc.stderr else []
        if todo and not (CACHE / f"{todo[0]}.json").exists():
            why = (err or ["no message"])[-1][:200]
            row = {"status": "crash", "detail": f"the process died (exit {proc.returncode}): "
                   f"{why}", "time": round(time.perf_counter() - t, 1)}
            _store(todo[0], {s: dict(row, family=todo[0], scaling=s) for s in SCALINGS})
            todo.pop(0)
            bar.update()


def run_all(families: list[str], workers: int, timeout: float, fresh: bool) -> dict:
    from tqdm import tqdm

    todo = [f for f in families if fresh or not (CACHE / f"{f}.json").exists()]
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc="zoo") as bar:
        jobs = [pool.submit(_worker, todo[i::workers], timeout, bar) for i in range(workers)]
        for job in as_completed(jobs):
            job.result()
    return {f: json.loads((CACHE / f"{f}.json").read_text()) for f in families}


STATUSES = ("pass", "fail", "refused", "crash", "build")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _total_minutes(results: dict) -> float:
    return sum(r[s].get("time", 0) for r in results.values() if r is not None
               for s in SCALINGS) / 60


def report(results: dict, wall: float | None) -> str:
    import torch
    import transformers

    lines = [
        "# The zoo: transformers' causal LMs, traced, µP applied and checked",
        "",
        "Written by `python benchmarks/zoo.py` (its docstring says how each family is built and "
        "judged).",
        f"Every family of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (transformers "
        f"{transformers.__version__}, {len(results)} families): vocabulary {VOCAB}, {LAYERS} "
        f"layers, {SEQ} tokens, MLP 4n, dropout 0; traced at widths "
        f"{', '.join(map(str, TRACE_WIDTHS))}, µP for Adam applied, and "
        "`fromtorch.coord_check` at its defaults over widths "
        f"{', '.join(map(str, CHECK_WIDTHS))} (±{TOLERANCE}), the model as it comes (SP) as the "
        "contrast (at the two smallest of them, one seed). A pass also needs the program to "
        "derive and `apply` to leave the model bit-identical at the base width (its params and "
        "its logits).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}; each family in its own process, two at a time."
        + (f" Wall time of the last run: {wall / 60:.0f} min (a family cached from an earlier "
           "run is not run again; each row's time is its own run's)." if wall else "")
        + f" The families' times add up to {_total_minutes(results):.0f} min.",
        "",
    ]
    missing = [f for f, r in results.items() if r is None]
    if missing:
        lines += [f"Not run yet ({len(missing)}, left out of the totals): "
                  + ", ".join(missing) + ".", ""]
    for scaling, title in SCALINGS.items():
        rows = [r[scaling] for r in results.values() if r is not None]
        count = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        built = len(rows) - count["build"]
        slowest = max(rows, key=lambda r: r.get("time", 0))
        share = f"{100 * count['pass'] / built:.0f}%" if built else "-"
        lines += [
            f"## {title}",
            "",
            f"Totals: {count['pass']} pass, {count['fail']} fail, {count['refused']} refused, "
            f"{count['crash']} crash, of {built} that build ({share} pass); {count['build']} do "
            f"not build small. Slowest: {slowest['family']} ({slowest.get('time', 0):.0f} s).",
            "",
            "| family | result | SP | time (s) | detail |",
            "|---|---|---|---:|---|",
        ]
        order = {s: i for i, s in enumerate(STATUSES)}
        for r in sorted(rows, key=lambda r: (order[r["status"]], r["family"])):
            lines.append(f"| {r['family']} | {r['status']} | {_cell(r.get('sp', '-'))} | "
                         f"{r.get('time', 0):.0f} | {_cell(r.get('detail', ''))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", help="comma-separated model types (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=420, help="seconds per family")
    ap.add_argument("--fresh", action="store_true", help="ignore cached results")
    ap.add_argument("--one", help="run one family in this process and print its JSON")
    ap.add_argument("--batch", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/zoo.md")
    ap.add_argument("--report", action="store_true",
                    help="only write docs/zoo.md from the cached results")
    args = ap.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(1)  # two families run side by side on two cores
        print(json.dumps(run_family(args.one)))
        return 0
    if args.batch:
        run_batch(args.batch.split(","), args.timeout)
        return 0
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    every = list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    families = args.families.split(",") if args.families else every
    wall = None
    if not args.report:
        t = time.perf_counter()
        results = run_all(families, args.workers, args.timeout, args.fresh)
        wall = time.perf_counter() - t
        for f in families:
            print(f, *(f"{s}={results[f][s]['status']}" for s in SCALINGS),
                  results[f]["heads"].get("detail", "")[:100])
    if args.report or not (args.no_write or args.families):
        cached = {f: (json.loads((CACHE / f"{f}.json").read_text())
                      if (CACHE / f"{f}.json").exists() else None) for f in every}
        OUT.write_text(report(cached, wall) + "\n")
        print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
