"""The fuzz harness: run a program text through every stage a user can reach, and say whether it
ended in a positioned user error, a working model, or something else (a bug).

Used by tests/test_fuzz.py; kept apart so that a failing program can be replayed by hand, from
the tests folder: ``fuzzing.pipeline(Path("p.tp").read_text(), Path(tempfile.mkdtemp()))``.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from itertools import count
from pathlib import Path

import torch
from conftest import import_file

import tensorprog as tp
from tensorprog.emit.module import emit
from tensorprog.engine.classify import classify_json, classify_text
from tensorprog.engine.derivation import derive_json, derive_table, explain
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose

# a model bigger than this (elements over all params) is emitted and imported but not run: a
# fuzzed finite dim of 10**9 is a legal program, not one a test can allocate
MAX_ELEMENTS = 2_000_000
# classify costs seconds on the transformers; beyond this many instructions it runs one preset
CLASSIFY_ALL_BELOW = 40
_modules = count()


class StageFailure(AssertionError):
    """A stage raised something other than a positioned user error, or produced a broken result."""

    def __init__(self, stage: str, what: str):
        self.stage = stage
        super().__init__(f"[{stage}] {what}")


def check_user_error(err: tp.TensorProgError, stage: str) -> None:
    """A user error must render a non-empty message that points at the program and is not an
    apology for an internal bug."""
    text = err.render()
    if not text.strip():
        raise StageFailure(stage, f"{type(err).__name__} with an empty message")
    if "bug" in text.lower():
        raise StageFailure(stage, f"{type(err).__name__} reports an internal bug:\n{text}")
    if not any(d.span is not None and f"{d.span}:" in text for d in err.diagnostics):
        raise StageFailure(stage, f"{type(err).__name__} without a position:\n{text}")


def _guarded(stage: str, fn, *args, **kwargs):
    """``fn(*args)``; a TensorProgError is returned (after checking it), anything else fails."""
    try:
        return fn(*args, **kwargs)
    except tp.TensorProgError as err:
        check_user_error(err, stage)
        return err
    except StageFailure:
        raise
    except Exception as err:  # noqa: BLE001 -- any other exception is the finding
        raise StageFailure(stage, f"{type(err).__name__}: {err}") from err


def _dumps(to_data, result) -> str:
    return json.dumps(to_data(result), ensure_ascii=False)


def _elements(program: tp.Program, width: int) -> int:
    """A bound on the numbers a model holds at ``width``: its params, and per input a width-sized
    vector at every one of its coordinates, tokens (squared, for attention) and pixels."""
    def size(dims) -> int:
        total = 1
        for d in dims:
            total *= program.dim_table[d].size_at(width)
        return total

    inputs = [(i.dim, i.seq, i.seq, *(i.spatial or ())) for i in program.inputs]
    return (sum(size(p.shape) for p in program.params)
            + sum(width * size(d for d in dims if d is not None) for dims in inputs))


def _width(program: tp.Program) -> int | None:
    """A small width to build the model at: twice the base (so that every ratio**-x is really
    applied) when that is small, else the base; None when even the base is too big to run."""
    base = program.width.base
    for width in (2 * base, base):
        if width <= 512 and _elements(program, width) <= MAX_ELEMENTS:
            return width
    return None


def _train(module, width: int) -> None:
    """Build the model, run it once, and take one step of the emitted optimizer."""
    stage = "model"
    try:
        torch.manual_seed(0)
        model = module.Model(width, dtype=torch.float64)
        model.eval()
        model.train()
        model.load_state_dict(model.state_dict())
        inputs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
        stage = "training"
        out = model(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(o.to(torch.float64).pow(2).mean() for o in outs)
        if not math.isfinite(loss.item()):
            raise StageFailure(stage, f"non-finite loss {loss.item()} at width {width}")
        opt = module.make_optimizer(model, 1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        names = {n for g in module.param_groups(model, 1e-3) for n in g["entries"]}
    except StageFailure:
        raise
    except Exception as err:  # noqa: BLE001 -- any other exception is the finding
        raise StageFailure(stage, f"{type(err).__name__}: {err}") from err
    if names != set(module.SCALING):
        raise StageFailure(stage, f"param_groups {sorted(names)} != {sorted(module.SCALING)}")
    if getattr(module, "BASE_DEPTH", None) is not None:  # the depth factors, away from the base
        try:
            deeper = module.Model(width, 2 * module.BASE_DEPTH, dtype=torch.float64)
            out = deeper(*inputs)
        except Exception as err:  # noqa: BLE001 -- any other exception is the finding
            raise StageFailure("depth", f"{type(err).__name__}: {err}") from err
        outs = out if isinstance(out, tuple) else (out,)
        if not all(torch.isfinite(o).all() for o in outs):
            raise StageFailure("depth", f"non-finite output at depth {2 * module.BASE_DEPTH}")
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise StageFailure(stage, f"param {name} not finite after one step")


def pipeline(text: str, tmp_dir: Path) -> str:
    """Run ``text`` through parse, derive, classify, codegen, import and one training step.

    Returns ``"rejected"`` (a positioned user error), ``"derived"`` (derives but is too big to
    run) or ``"trained"``; raises :class:`StageFailure` on anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        program = _guarded("parse", tp.parse, text, "fuzz.tp")
        if isinstance(program, tp.TensorProgError):
            return "rejected"
        _guarded("ir", tp.verify, program)
        _guarded("ir", tp.to_text, program)
        result = "rejected"
        for name in ("adam", "sgd"):
            d = _guarded("engine", tp.derive, program, name)
            if isinstance(d, tp.TensorProgError):
                continue
            _guarded("report", derive_table, d)
            _guarded("report", explain, d)
            _guarded("report", _dumps, derive_json, d)
            presets = ("sp", "ntp") if len(program.body) < CLASSIFY_ALL_BELOW else ("sp",)
            for preset in presets:
                c = _guarded("engine", tp.classify, program, name, preset=preset)
                if not isinstance(c, tp.TensorProgError):
                    _guarded("report", classify_text, c, preset)
                    _guarded("report", _dumps, classify_json, c)
            abc, _, label, _ = _guarded("codegen", choose, program, OPTIMIZERS[name])
            source = _guarded("codegen", emit, program, abc, optimizer=OPTIMIZERS[name],
                              label=label, command="tensorprog derive fuzz.tp -o fuzz_model.py"
                              ).source
            path = tmp_dir / f"fuzz_model_{next(_modules)}.py"
            path.write_text(source)
            try:
                module = import_file(path)
            except Exception as err:  # noqa: BLE001
                raise StageFailure("import", f"{type(err).__name__}: {err}") from err
            width = _width(program)
            if width is None:
                result = "derived"
                continue
            _train(module, width)
            result = "trained"
        return result


# --- mutations of a program's text ---------------------------------------------------------------

HOSTILE_NAMES = (
    # Python keywords and constants
    "class", "def", "lambda", "None", "True", "import", "return", "if", "not", "async", "yield",
    # builtins
    "print", "len", "sum", "min", "max", "input", "id", "type", "object", "range", "super",
    "getattr", "float", "exec", "__import__",
    # nn.Module attributes and methods
    "forward", "training", "to", "cuda", "parameters", "state_dict", "zero_grad", "apply", "eval",
    "train", "modules", "half", "register_buffer", "named_parameters", "_parameters", "_modules",
    "T", "dump_patches", "call_super_init",
    # names the emitted module defines for itself
    "width", "base_width", "vectors", "reset_parameters", "example_inputs", "mult_W1", "SCALING",
    "SCALES", "BASE_WIDTH", "Model", "param_groups", "make_optimizer", "math", "torch", "self",
    "values", "factory", "ratio", "spec", "name", "param", "like", "generator", "batch_size",
    "_mix", "_conv", "_heads_dot", "_causal_softmax", "_avgpool", "lr", "out", "std",
    # dunders
    "__init__", "__class__", "__dict__", "__call__", "__name__", "__builtins__", "__",
    # words of the language, and names lowering invents
    "dim", "scale", "output", "tokens", "positions", "image", "relu", "dot", "mix", "softmax",
    "h1_1", "x1_1", "_", "_1",
)
NUMBERS = ("0", "-1", "1e400", "1e-400", "99999999999999999999", "0.0", "00", "1e30", "3",
           "1.5", "-0", "0e0", "2147483648")
TOKENS = ("@", "+", "*", "-", "/", "(", ")", ",", ".T", ":", "=", "[", "]", "\u2028", "\u2029",
          "\u0085", "\x0c", "\r", "\t", "\x00", "#", "\u03c0", "\ufb01", "\\", '"""', "'", "{",
          "1e400", "output", "param", "dot(", "mix(", "\n", "\r\n", "\n\n", "relu", "W1", "x")
DIM_RHS = ("0 * n", "n / 0", "0", "n * 0", "n / 1000", "n / 3", "1000000000000", "n", "-1")


def identifiers(text: str) -> list[str]:
    """Names the program declares or assigns, in order of first appearance."""
    names = re.findall(r"^\s*(?:width|dim|input|param|scale|output)?\s*([A-Za-z_]\w*)\s*[:=]",
                       text, flags=re.M)
    return list(dict.fromkeys(names))


def _assigned(text: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"^\s*(?:output\s+)?([A-Za-z_]\w*)\s*=(?!=)",
                                         "\n".join(ln for ln in text.splitlines()
                                                   if not re.match(r"\s*(width|dim|scale|param)",
                                                                   ln)), flags=re.M)))


def mutate(text: str, kind: str, rng: random.Random) -> str:
    """One mutation of ``kind``; positions and payloads drawn from ``rng``."""
    lines = text.split("\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    names = identifiers(text) or ["n"]
    width = (re.findall(r"^\s*width\s+(\w+)", text, flags=re.M) or ["n"])[0]
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(j, lines[i])
    elif kind == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "rename":
        old, new = rng.choice(names), rng.choice(HOSTILE_NAMES)
        return re.sub(rf"\b{re.escape(old)}\b", new, text)
    elif kind == "number":
        spots = list(re.finditer(r"\b\d+(\.\d*)?([eE][-+]?\d+)?", text))
        if spots:
            m = rng.choice(spots)
            return text[:m.start()] + rng.choice(NUMBERS) + text[m.end():]
    elif kind == "token":
        at = rng.randrange(len(text) + 1)
        return text[:at] + rng.choice(TOKENS) + text[at:]
    elif kind == "truncate":
        return text[:rng.randrange(len(text) + 1)]
    elif kind == "dim":
        dims = [k for k, ln in enumerate(lines) if re.match(r"\s*dim\s+\w+\s*=", ln)]
        k = rng.choice(dims) if dims else i
        name = re.match(r"\s*dim\s+(\w+)", lines[k])
        rhs = rng.choice(DIM_RHS).replace("n", width)
        lines[k] = f"dim {name.group(1) if name else 'zz'} = {rhs}"
    elif kind == "softmax":
        vec = rng.choice(_assigned(text) or [width])
        lines.append(f"output zz_soft = softmax({vec})")
    elif kind == "relu_to":
        fn = rng.choice(("softmax", "causal_softmax", "layernorm", "avgpool", "global_pool",
                         "identity", "dot", "mix", "sigmoid"))
        return re.sub(r"\b(relu|gelu|tanh|silu|layernorm|rmsnorm)\(", f"{fn}(", text, count=1)
    elif kind == "branch":
        vals = _assigned(text) or [width]
        a, b = rng.choice(vals), rng.choice(vals)
        lines.append(f"zz_unused = {rng.choice(('tanh', 'relu', 'identity'))}({a}) * {b}")
    elif kind == "output":
        vals = _assigned(text) or [width]
        lines.append(f"output {rng.choice(vals)}")
    return "\n".join(lines)


MUTATIONS = ("delete", "duplicate", "swap", "rename", "number", "token", "truncate", "dim",
             "softmax", "relu_to", "branch", "output")


# --- random grammar-valid programs ---------------------------------------------------------------

NONLINS = ("relu", "gelu", "tanh", "sigmoid", "silu", "identity", "layernorm", "rmsnorm",
           "softmax")


def random_program(rng: random.Random) -> str:
    """A random program: always grammatical, usually well-shaped (a matmul picks a param whose
    fan-in fits), sometimes not (a param of a random shape), so both verdicts are exercised."""
    base = rng.choice((1, 2, 4, 8, 16, 32))
    dims = {"n": True}
    lines = [f"width n = {base}"]
    for k in range(rng.randrange(3)):
        name = f"d{k}"
        finite = rng.random() < 0.6
        rhs = str(rng.choice((1, 2, 3, 5))) if finite else rng.choice(("2 * n", "n * 3", "n / 2",
                                                                       "n"))
        lines.append(f"dim {name} = {rhs}")
        dims[name] = not finite
    finite = [d for d, inf in dims.items() if not inf] or ["dx"]
    if "dx" in finite and "dx" not in dims:
        lines.append("dim dx = 3")
        dims["dx"] = False
    values = []  # (expression, dim)
    for k in range(rng.randint(1, 2)):
        d = rng.choice(finite)
        lines.append(f"input x{k} : [{d}]")
        values.append((f"x{k}", d))
    params = []

    def param(shape):
        name = f"P{len(params)}"
        init = rng.choice(("", "", "", " = 1", " = 0", " = 0.5"))
        params.append(f"param {name} : [{', '.join(shape)}]{init if len(shape) == 1 else ''}")
        return name

    all_dims = list(dims)
    body = []
    if rng.random() < 0.8:  # most programs have a hidden layer, so that there is something to scale
        src, dim = values[0]
        body.append(f"h = {rng.choice(NONLINS)}({param(['n', dim])} @ {src})")
        values.append(("h", "n"))
    for k in range(rng.randint(1, 7)):
        src, dim = rng.choice(values)
        op = rng.choice(("matmul", "matmul", "bias", "nonlin", "mul", "add", "sub", "const",
                         "transpose", "neg", "div", "nested", "wrong"))
        same = [v for v, d in values if d == dim]
        if op == "matmul":
            out = rng.choice(all_dims)
            expr, dim = f"{param([out, dim])} @ {src}", out
        elif op == "bias":
            expr = f"{src} + {param([dim])}"
        elif op == "nonlin":
            expr = f"{rng.choice(NONLINS)}({src})"
        elif op in ("mul", "add", "sub", "div"):
            sym = {"mul": "*", "add": "+", "sub": "-", "div": "/"}[op]
            expr = f"{src} {sym} {rng.choice(same)}"
        elif op == "const":
            expr = f"{rng.choice(('2', '0.5', '-1', '1e-3'))} * {src}"
        elif op == "transpose":
            out = rng.choice(all_dims)
            expr, dim = f"{param([dim, out])}.T @ {src}", out
        elif op == "neg":
            expr = f"-{src}"
        elif op == "nested":
            out = rng.choice(all_dims)
            w = param([out, dim])
            expr, dim = f"{rng.choice(NONLINS)}({w} @ {src}) + {w} @ ({src} * {src})", out
        else:  # a param of any shape: usually a shape error the parser must report
            shape = [rng.choice(all_dims) for _ in range(rng.randint(1, 2))]
            expr, dim = f"{param(shape)} @ {src}", shape[0]
        name = f"v{k}"
        body.append(f"{name} = {expr}")
        values.append((name, dim))
    outs = [(v, d) for v, d in values[-3:] if v[0] in "vh"] or [values[-1]]
    for v, d in outs[: rng.randint(1, len(outs))]:
        if dims.get(d, False):
            if rng.random() < 0.5:
                body.append(f"output o_{v} = {param([rng.choice(finite), d])} @ {v}")
            else:
                body.append(f"output o_{v} = dot({param([d])}, {v})")
        else:
            body.append(f"output {v}")
    rng.shuffle(params)
    return "\n".join(lines + params + body) + "\n"


# --- random programs with blocks, repeat and a depth ---------------------------------------------

BRANCHES = (  # a residual branch of h inside a block: (its params, its expression)
    ((), "relu(h)"),
    (("W",), "W @ h"),
    (("W",), "W @ relu(h)"),
    (("W",), "W @ tanh(h)"),
    (("A", "B"), "B @ relu(A @ h)"),
    (("A", "B"), "B @ gelu(A @ h) + A @ h"),
    (("g",), "g * layernorm(h)"),
)


def random_block_program(rng: random.Random) -> str:
    """A random residual network: a declared depth, one or two blocks repeated over it or a fixed
    number of times, branches drawn from BRANCHES (a block's params fresh per repetition), and
    sometimes a shape slip, so that both verdicts are exercised."""
    base = rng.choice((4, 8, 16))
    depth = rng.choice((1, 2, 3))
    lines = [f"width n = {base}", f"depth L = {depth}", "dim d_in = 3", "dim d_out = 2",
             "input x : [d_in]", "param W_in : [n, d_in]", "param W_out : [d_out, n]"]
    prev = "h0"
    calls = ["h0 = W_in @ x"]
    for k in range(rng.randint(1, 2)):
        params, expr = rng.choice(BRANCHES)
        body = [f"block b{k}(h) {{"]
        for p in params:
            shape = "[n]" if p == "g" else rng.choice(("[n, n]",) * 5 + ("[d_in, n]",))
            body.append(f"    param {p} : {shape}")
        body.append(f"    return h + {expr}")
        body.append("}")
        lines += body
        count = rng.choice(("L", "L", str(rng.randint(1, 3))))
        calls.append(f"h{k + 1} = repeat {count} b{k}({prev})")
        prev = f"h{k + 1}"
    lines += calls
    lines.append(f"output y = W_out @ {prev}")
    return "\n".join(lines) + "\n"
