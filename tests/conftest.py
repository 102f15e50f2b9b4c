"""Shared helpers: example paths, generated MLPs of any width and depth, a residual MLP over the
depth, importing emitted modules, running the CLI in-process, and for traced models, the apply
and (a, b, c) oracles."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import signal
import sys
import types
from pathlib import Path

import pytest

# torch's worker threads spin while they wait for work: on a busy 2-core machine two of them burn
# several times the CPU of one on the suite's small models (test_check + test_transformer: 370 s
# of CPU with 2 threads, 68 s with 1, measured side by side), so the suite runs torch on one
# thread; set before torch is imported, and inherited by the CLI processes some tests start
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)
_THREADS = os.environ["OMP_NUM_THREADS"]


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """Every test starts on the run's thread count, whatever the one before it (or the library
    under it) set: a one-job sweep once left torch on 2 threads from tests/emit on, and the rest
    of the default run paid for the spinning (509 s of CPU instead of 285 s)."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and _THREADS.isdigit() and torch.get_num_threads() != int(_THREADS):
        torch.set_num_threads(int(_THREADS))

# a suite started in the background of a non-interactive shell (`.ci/run &`) inherits SIGINT
# ignored, and so would every process the Ctrl-C tests start (an ignored signal survives exec),
# which then cannot be interrupted as a terminal's Ctrl-C would: catch it here as Python does
# by default, so that the processes started get the default action, as from a terminal
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.tp"))

#: the examples whose sweeps over every optimizer run by default; the other examples run their
#: sweeps' first optimizer by default and the rest with ``-m slow`` (the same rules with another
#: coefficient, a tenth of the default run's CPU budget over all 51): one of each kind of network
CORE_EXAMPLES = ("mlp", "resmlp_deep", "rnn", "gpt", "t5", "vit", "resnet", "moe", "ssd")


def example_cases(optimizers, stem=False):
    """(example, optimizer) params over every example: the first optimizer for all of them by
    default, the others for CORE_EXAMPLES, and the rest marked slow. Ids are "<example>-<opt>"."""
    cases = []
    for path in EXAMPLES:
        for i, opt in enumerate(optimizers):
            slow = i > 0 and path.stem not in CORE_EXAMPLES
            cases.append(pytest.param(path.stem if stem else path, opt,
                                      marks=[pytest.mark.slow] if slow else [],
                                      id=f"{path.stem if stem else path.name}-{opt}"))
    return cases


# a residual MLP repeating a block over the depth L (the core of the depth issue, as written there)
RESMLP = """\
width n = 128
depth L = 4                  # blocks at the base; like the width, it may go to infinity
dim d_in = 64
dim d_out = 10
input x : [d_in]
param W_in : [n, d_in]
param W_out : [d_out, n]

block res(h) {               # params declared inside are fresh in every repetition
    param W1 : [n, n]
    param W2 : [n, n]
    u = W1 @ h               # names inside are local to each repetition
    return h + W2 @ relu(u)
}

h0 = W_in @ x
hL = repeat L res(h0)        # res applied L times, each output feeding the next
output y = W_out @ hL
"""


def import_file(path: Path, name: str | None = None) -> types.ModuleType:
    """Import a generated module from its file, as a user's script would."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def emit_program(program, param="mup", convention="table3", command="t", optimizer="adam"):
    """Emit ``program`` under the parametrization ``param`` for ``optimizer``."""
    # imported when called, as in run_cli: the package loads after the thread setting above
    from tensorprog.emit.module import emit
    from tensorprog.engine.optimizers import OPTIMIZERS
    from tensorprog.engine.parametrization import choose

    abc, _, label, _ = choose(program, OPTIMIZERS[optimizer], param, convention)
    return emit(program, abc, optimizer=OPTIMIZERS[optimizer], label=label, command=command)


def train_once(module, width=32):
    """Construct, run forward and backward, and take one optimizer step."""
    import torch  # the suite also runs where torch is not installed

    model = module.Model(width, dtype=torch.float64)
    inputs = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    out = model(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    opt = module.make_optimizer(model, 0.01)
    sum(o.sum() for o in outs if o.is_floating_point()).backward()
    opt.step()
    return model, inputs


def mlp_source(depth: int, biases: bool = False, width: int = 64) -> str:
    """An MLP with ``depth`` hidden layers: W1 input, W2..W_depth hidden, W_{depth+1} readout."""
    lines = [f"width n = {width}", "dim d_in = 5", "dim d_out = 3", "input x : [d_in]",
             "param W1 : [n, d_in]"]
    lines += [f"param W{k} : [n, n]" for k in range(2, depth + 1)]
    lines += [f"param b{k} : [n]" for k in range(1, depth + 1) if biases]
    lines.append(f"param W{depth + 1} : [d_out, n]")
    prev = "x"
    for k in range(1, depth + 1):
        bias = f" + b{k}" if biases else ""
        lines += [f"h{k} = W{k} @ {prev}{bias}", f"x{k} = relu(h{k})"]
        prev = f"x{k}"
    lines.append(f"output f = W{depth + 1} @ {prev}")
    return "\n".join(lines) + "\n"


def apply_is_bit_identical_at_base(traced, build, inputs, optimizer="adam"):
    """``MuP(traced).apply`` on ``build(base width)`` changes no param and no output, bit for
    bit, against the same build left alone (``inputs(model)``: the forward's inputs); returns
    the MuP."""
    import torch

    from tensorprog.fromtorch import MuP

    mup = MuP(traced, optimizer)
    torch.manual_seed(1)
    model = build(traced.base_width)
    torch.manual_seed(1)
    plain = build(traced.base_width)
    mup.apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    given = inputs(model)
    got, want = model(*given), plain(*given)
    # (a Hugging Face model's output: its logits)
    assert torch.equal(getattr(got, "logits", got), getattr(want, "logits", want))
    return mup


def _fed(program, a):
    """An input of the model as the emitted module takes it: an image channels-last, or cut
    into the patches of a patches input (a stride-p convolution's, traced as a matmul of
    each patch's C·p·p values in the kernel's order)."""
    import torch

    if a.dim() != 4:
        return a
    patches = next((i for i in program.inputs if i.kind == "patches"), None)
    if patches is None:
        return a.movedim(1, -1)
    p = math.isqrt(program.dim_table[patches.dim].size // a.shape[1])
    return torch.nn.functional.unfold(a, p, stride=p).transpose(1, 2)


def _codebooks_fed(traced, args) -> list:
    """The emitted module's inputs for a model that reads its token ids as K codebooks (the
    program's codebook inputs, traced.codebooks: name -> (K, k)): rows b·K + k of the ids each;
    the model's other inputs, as they are, by the program's other inputs in order."""
    from tensorprog.fromtorch.inputs import token_index
    from tensorprog.ir.program import BUILT_KINDS

    ids = args[token_index(tuple(args), {})]
    fed = [i.name for i in traced.program.inputs if i.kind not in BUILT_KINDS]
    out = []
    for name in fed:
        count, k = traced.codebooks[name]  # (no other input beside codebooks: the trace's)
        out.append(ids.reshape(-1, count, ids.shape[-1])[:, k])
    return out


def _emitted_like(traced, model, mup, dtype):
    """The emitted module of ``traced.program`` at the base width, holding ``model``'s params
    (each in the program's layout, as apply reads it)."""
    import torch

    from tensorprog.emit.load import load_module

    emitted = load_module(emit_program(traced.program), "traced_oracle").Model(
        traced.base_width, dtype=dtype)
    mine = dict(emitted.named_parameters())
    with torch.no_grad():
        for name, use in traced.params.items():
            if name in mup.unused:  # reaches no output: derive, and the module, leave it out
                continue
            # a rolled block's param (target ``layers.{i}.fc.weight``): one per repetition
            block, _, attr = name.partition(".")
            # (repetition i is the container's item first + i: layers before the block that
            # compute otherwise stay unrolled, stack.py)
            first = traced.stack.first if traced.stack is not None else 0
            copies = [(name, use)] if "{i}" not in use.target else [
                (f"{block}.{i}.{attr}", dataclasses.replace(use, target=use.target.replace(
                    "{i}", str(i + first)))) for i in range(len(mine))
                if f"{block}.{i}.{attr}" in mine]
            for key, one in copies:
                t = mup._view(model, one)
                if one.transposed:
                    while t.dim() > 2 and t.shape[0] == 1:
                        t = t[0]
                    if t.dim() > 2:  # a grid axis's table [A, 1, d]: A rows (ops_axial.py)
                        t = t.reshape(-1, t.shape[-1])
                    t = t.t() if t.dim() == 2 else t
                q = mine.pop(key)
                q.copy_(t.reshape(q.shape) + one.offset)  # (Gemma's 1 + w: the sum)
    assert not mine, f"emitted params no traced param fills: {sorted(mine)}"
    return emitted


def traced_computes_the_model(traced, build, inputs, tol: float = 1e-10,
                              optimizer: str = "adam") -> float:
    """The emitted module of ``traced.program``, given the params of ``build(base width)``
    (each in the program's layout, as apply reads it), computes the model's output on
    ``inputs(model)`` at the base width, in float64: within ``tol`` of it, a traced program that
    computes something else (tokens reordered, a mask dropped) fails. Images are given to the
    emitted module channels-last, as it keeps them. ``optimizer`` is the one ``MuP`` reads the
    params' layout under (one under which the blocks of a tensor share an LR: Adam for a fused
    layer whose blocks' SGD LRs differ). Returns the largest difference."""
    import torch

    from tensorprog.fromtorch import MuP

    torch.manual_seed(3)
    model = build(traced.base_width).double()
    emitted = _emitted_like(traced, model, MuP(traced, optimizer), torch.float64)
    with torch.no_grad():
        args = [a.double() if a.is_floating_point() else a for a in inputs(model)]
        want = model(*args)
        want = getattr(want, "logits", want)  # a Hugging Face model's output
        got = emitted(*_codebooks_fed(traced, args)) if traced.codebooks else emitted(
            *(_fed(traced.program, a) for a in args))
        if traced.stacked is not None:  # K readouts stacked on axis 1 (flat: (B·K, T, V))
            got = torch.stack(got, dim=1)
            got = got.reshape(-1, *got.shape[2:]) if traced.stacked[1] else got
    err = (got - want).abs().max().item()
    assert got.shape == want.shape and err <= tol * max(1.0, want.abs().max().item()), (
        f"the traced program computes something else: max |emitted - model| = {err}")
    return err


def the_check_reads_the_program(traced, build, inputs, tol: float = 1e-10,
                                dtype=None) -> dict:
    """Every vector the coordinate check reads from ``build(base width)`` (``probe``) is the
    program's value there: the emitted module's ``vectors()`` given the model's params, entry
    for entry up to their order (a layout of heads the model keeps otherwise), within ``tol``
    of the largest entry. A vector named after a model's node that holds something else (a
    masked table, a sum times a constant) fails. ``dtype``: float64 unless the model runs
    only in float32 (transformers' grouped_mm). Returns what was read."""
    import torch

    from tensorprog.fromtorch import MuP, probe

    dtype = dtype or torch.float64
    mup = MuP(traced, "adam")
    torch.manual_seed(3)
    model = build(traced.base_width).to(dtype)
    emitted = _emitted_like(traced, model, mup, dtype)
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in inputs(model))
    with torch.no_grad():
        program = emitted.vectors(*(_fed(traced.program, a) for a in args))
    found = probe(mup, model, args)()
    assert found and set(found) <= set(program), sorted(set(found) - set(program))
    for name, value in found.items():
        a, b = (v.double().reshape(-1).sort().values for v in (value, program[name]))
        assert a.shape == b.shape, f"the check reads {name} of {value.shape}, the program's " \
            f"{tuple(program[name].shape)}"
        err = (a - b).abs().max().item()
        assert err <= tol * max(1.0, b.abs().max().item()), (
            f"the check reads {name} as something else than the program's: max |model - "
            f"program| = {err}")
    return found


def abc_by_target(traced, optimizer="adam", rows=False) -> dict:
    """Each traced param's (a, b, c) under ``optimizer``, keyed by its torch target (``rows``: by
    (target, rows), so a fused layer's row blocks stay apart): the same model written two ways
    must give the same dict."""
    from tensorprog import derive

    d = derive(traced.program, optimizer)
    return {(u.target, u.rows) if rows else u.target: (d.abc[p].a, d.abc[p].b, d.abc[p].c)
            for p, u in traced.params.items()}


def processes(match) -> list[int]:
    """The live (not zombie) processes, from /proc, for which ``match(fields, cmdline)`` holds:
    ``fields``, their stat fields after the command (state, ppid, pgrp, session, ...)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone while listed
            continue
        if fields[0] != "Z" and match(fields, cmdline):
            found.append(int(stat.parent.name))
    return found


def pool_workers(driver, count: int = 2, seconds: float = 90) -> list[int]:
    """The local pool's worker processes of a ``driver`` (a Popen), once ``count`` of them run
    (or those found after ``seconds``)."""
    import time

    deadline, workers = time.monotonic() + seconds, []
    while time.monotonic() < deadline and len(workers) < count:
        time.sleep(0.2)
        workers = processes(lambda f, cmd: int(f[1]) == driver.pid and b"spawn_main" in cmd)
    return workers


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie), from /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_gone(pids, seconds: float = 10) -> bool:
    """Whether every process of ``pids`` has ended within ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, whatever OMP_NUM_THREADS the run was given."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the ``tensorprog`` command in-process: (exit status, stdout, stderr)."""
    from tensorprog.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err  # every outcome, refusals included, is said in words
    return exit_.value.code, out.out, out.err


def parse_error(source: str, cls=None):
    """The positioned error (a TensorProgError, or ``cls``) that parsing ``source`` raises."""
    import warnings

    import tensorprog as tp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        with pytest.raises(cls or tp.TensorProgError) as info:
            tp.parse(source, "bad.tp")
    return info.value


#: (example, optimizer) pairs that derive refuses, which the tests deriving every example skip
#: and whose golden is the refusal; none today (every example derives under every optimizer)
REFUSED: set[tuple[str, str]] = set()


def skip_refused(example, optimizer: str) -> None:
    """Skip a test of ``example`` (a path or a stem) under ``optimizer`` that derive refuses."""
    if (Path(example).stem, optimizer) in REFUSED:
        pytest.skip(f"derive refuses {Path(example).stem} under {optimizer} (conftest.REFUSED)")


@pytest.fixture(params=[p.name for p in EXAMPLES])
def example(request) -> Path:
    return ROOT / "examples" / request.param


# a gated delta layer whose values have 4 heads per query/key head (n/32 key heads of 16, n/8
# value heads of 8), as Qwen3-Next's have 2: tests/emit/test_delta_emit.py, tests/engine/
# test_delta_derive.py
GATED_DELTA_GROUPED = """width n = 64
dim V = 32
dim T = 6
dim dk = 16
dim dv = 8
dim D = n
dim H = n / 8
dim K = n / 2
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
param Wq : [K, n]
param Wk : [K, n]
param Wv : [D, n]
param Wo : [n, D]
param Wb : [H, n]
param A : [H] = 0
scale tau = 0.015625
scale kap = 0.0625
h = E @ tok
q = rmsnorm(Wq @ h, dk)
k = rmsnorm(Wk @ h, dk)
p = delta(tau * dot(q, k, dk), kap * dot(k, k, dk), sigmoid(Wb @ h), -1 * exp(A), dv, D)
output y = U @ (h + Wo @ mix(p, Wv @ h, dv))
"""


class PlainSizes:
    """A rule's view of its operands as plain exponents, for testing a Nonlin's rule alone: their
    sizes at init, their changes (NEG_INF where none is given) and one gradient size for all."""

    def __init__(self, program, init, change=None, grad=None):
        from tensorprog.engine.exponents import ZERO

        self.program, self._init, self._change = program, init, change or {}
        self._grad = ZERO if grad is None else grad

    def init(self, name):
        from tensorprog.engine.terms import Mono

        return [Mono(self._init[name])]

    def train(self, name):
        from tensorprog.engine.exponents import NEG_INF, emax
        from tensorprog.engine.terms import Mono

        return [Mono(emax((self._init[name], self._change.get(name, NEG_INF))))]

    def change(self, name):
        from tensorprog.engine.exponents import NEG_INF
        from tensorprog.engine.terms import Mono

        return [Mono(self._change.get(name, NEG_INF))]

    def first_order_train(self, name):
        return self.train(name)

    def grad(self, name):
        return self._grad

    def infinite(self, dim):
        return self.program.dim_table[dim].infinite
