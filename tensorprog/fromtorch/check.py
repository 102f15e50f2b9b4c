"""The coordinate check of the user's own model: its program vectors read from its own graph
(:func:`probe`), trained a few steps at several widths and judged (:func:`coord_check`)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from ..engine.derive import derive
from ..engine.exponents import ABC
from ..engine.propagate import live_values
from ..errors import UsageError
from ..ir.functions import COORDINATEWISE, MUL
from ..ir.program import Dot, LinComb, MatMul, Nonlin
from ..ir.sequences import value_sequences
from ..ir.verify import SOFTMAXES
from ..numerics.judge import TOLERANCE, ZERO_RMS, Measurements, fit_slope, judge
from ..numerics.measure import default_batch_size
from ..numerics.turns import normalised, turned
from .apply import MuP
from .caches import backward, drop_caches
from .columns import scale_input
from .convert import convert
from .few import judge_runs, rejudge, remeasure
from .inputs import cpu_ids, float_feed, forward_names, given_inputs, token_feed, token_index
from .ops_conv import train_norms
from .ops_merged import logit_columns
from .patches import scale_out, scale_rows
from .rows import renumber_slices
from .trace import built, export
from .values import SHIFTED_IDS
from .where import module_of, op_name, strip_prefix

# Adam's default learning rate here: the largest that keeps HF Llama (2 layers, 4 heads, vocab
# 256, MLP 4n, traced at 64/128) in the small-update regime at widths 64..512 and 256..1024,
# where µP passes at ±0.25. At 1e-2 its deeper layers' changes compound (x2.4 over linear from
# step 2 to 3) and 12 vectors read -0.3 to -0.74 at 256..1024; at 1e-3 the 64..512 check reads
# the second block's logits at -0.30 (docs/torch.md has the table).
DEFAULT_LR = 3e-3


def probe(mup: MuP, model, inputs, kwargs: dict | None = None, split: dict | None = None,
          logits: bool = False):
    """A function returning {program vector: tensor} for the model's current params on
    ``inputs`` (and keyword ``kwargs``), through the model's own graph (with its forward
    patches). The graph is exported once per width and input shape, then reused (an export
    takes about a second).

    ``split``: filled at each call with {vector: (own, cross)} for every vector a linear layer
    of a finite fan-out computes (a router, a readout): its change since the first call split
    into ``cross`` = W₀·(x − x₀), the layer's first weight applied to its input's change, and
    ``own``, the rest (ΔW·x + Δb: what its own params' updates did). With ``logits``, also for
    every attention logit over a head dim that grows (``_logit_paths``): ``own`` = s(θ, x₀) −
    s(θ₀, x₀), its q/k path rerun from its step-0 input with the current params, and ``cross``
    the rest, s(θ, x) − s(θ, x₀). See :func:`coord_check`."""
    import torch

    kwargs = kwargs or {}
    fed = set(kwargs) | set(forward_names(model, tuple(inputs), {}))
    ids = [i.name for i in mup.traced.program.inputs
           if i.kind == "tokens" and i.name != "tok" and i.name not in fed
           and not i.name.startswith(SHIFTED_IDS)  # made by the model's graph itself
           and i.name not in mup.traced.codebooks]  # cut from the token ids by it
    if ids:  # segment ids traced as inputs of their own: the probe feeds the token ids alone
        raise UsageError(
            f"the model was traced with {', '.join(ids)} as token inputs of their own, which "
            "the probe (and coord_check) do not feed",
            help="check the traced program with `tensorprog check`, or trace the model with "
            "ids of one value (one segment) for its coordinate check; the exponents are the same",
        )
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    leaves = (*inputs, *kwargs.values())
    key = (mup.width_of(model), shapes, mup.scale_values(model),  # held in its graph
           tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in leaves))
    if key not in mup.graphs:
        with mup.unpatched(model):
            ep = export(model, inputs, kwargs)
        k = token_index(tuple(inputs), kwargs)
        trace = convert(
            ep, {"m." + k: v for k, v in mup.traced.base.items()}, cpu_ids(leaves[k]),
            given=given_inputs(ep, model, tuple(inputs), kwargs, k),
            keep=mup.traced.coefficient_nodes, own_heads=mup.traced.own_heads, traced=False,
        )
        # a block of a fused layer's rows named by a place that moves with the width (FocalNet's
        # gates after the query and context): named as the traced program's (rows.py)
        templates = mup.traced.templates
        renumber_slices(SimpleNamespace(decls=templates[:len(trace.decls)],
                                        stmts=templates[len(trace.decls):]), trace)
        if trace.decls + trace.stmts != templates:
            raise UsageError(
                "this model's graph differs from the traced one",
                help="probe a model built by the traced build(width)",
            )
        mup.graphs[key] = (ep, trace)
    ep, trace = mup.graphs[key]
    unfold = mup.unfolded(model)
    wanted: dict = {}
    stack = mup.traced.stack
    for vec, (node, kind) in trace.vectors.items():
        if kind == "expert":  # an expert's values: the model has them only for its tokens
            continue
        # a rolled layer's vector is measured as its repetition's (blk.i.v), so that it is
        # judged by the block's exponents; a folded query's factor is the block's (blk.v)
        for name in mup.traced.names.get(vec, (vec,)):
            generic = stack.generic(name) if stack else name
            wanted.setdefault(node, []).append((name, kind, unfold.get(generic, 1.0)))
    patches = mup.patch_factors(model)
    splits: dict = {}
    if split is not None:
        splits = {node: ({}, split) for node in _readout_nodes(mup, ep, wanted)}
        if logits:
            splits.update({node: ({}, split, path) for node, path
                           in _logit_paths(mup, ep, wanted).items()})
    inputs = mup.input_scales(model)
    return lambda: _run(ep, model, leaves, wanted, patches, splits, inputs)


def _readout_nodes(mup: MuP, ep, wanted: dict) -> list[str]:
    """The graph's linear layers (``aten.linear``) whose program vector is a matmul of a
    finite fan-out (plus a bias): a router, a readout. The matmul rule bounds their weight's
    cross term W₀·Δx by an LLN sum (+1: Δx built from W₀ᵀ by backprop), which is the limit's
    size; where x's change mostly comes from other layers, as a router's does, a CLT part
    (n^-1/2 smaller, but with its own constant) remains at finite widths, and the split shows
    it apart from the layer's own update."""
    import torch

    program = mup.program
    dims, shapes = program.dim_table, {p.name: p.shape for p in program.params}
    # W @ x's out dim is W's first axis; a tied readout's E.T @ x (``transposed``) is E's last
    finite = {ins.out for ins in program.body if isinstance(ins, MatMul)
              and not dims[shapes[ins.weight][-1 if ins.transposed else 0]].infinite}
    # a tied readout's multiplier (``tie * (E.T @ x)``: a scale, shape ()), then its bias
    finite |= {ins.out for ins in program.body if isinstance(ins, Nonlin) and ins.fn == "mul"
               and any(a in finite for a in ins.args)
               and all(a in finite or shapes.get(a) == () for a in ins.args)}
    finite |= {ins.out for ins in program.body if isinstance(ins, LinComb)
               and any(v in finite for _, v in ins.terms)}
    stack = mup.traced.stack
    nodes = {n.name: n for n in ep.graph.nodes}
    return [node for node, uses in wanted.items()
            if node in nodes and nodes[node].target is torch.ops.aten.linear.default
            and all((stack.generic(name) if stack else name) in finite for name, _, _ in uses)]


def _logit_paths(mup: MuP, ep, wanted: dict) -> dict:
    """The attention logits (``_logit_values``: a ``dot`` over a head dim that grows, and the
    values between it and its softmax) with the graph's path from the attention's inputs to
    them: {node: (path, cuts, uses)}, the path's nodes in graph order, the inputs it starts
    from (each q/k projection's input) and the node's logits among its vectors. Their change
    holds what the attention's own params' updates do (an LLN sum over the head dim, Θ(1)
    under µP) and what their input's change does through the projections, which holds a CLT
    part as a router's R₀·Δx does (docs/check.md, "A traced model's changes by their parts",
    measures both). A node whose path reaches the model's inputs other than through such a
    projection gets no split."""
    logits = _logit_values(mup.program)
    stack = mup.traced.stack
    nodes = {n.name: n for n in ep.graph.nodes}
    users = {spec.arg.name for spec in ep.graph_signature.input_specs
             if spec.kind.name == "USER_INPUT"}
    fed = set()  # the nodes the model's inputs reach
    for n in ep.graph.nodes:
        if n.name in users or any(a in fed for a in n.all_input_nodes):
            fed.add(n)
    out = {}
    for node, uses in wanted.items():
        # an sdpa node gives the logits and the attention's output: the logits are split
        split = [(name, kind, unfold) for name, kind, unfold in uses
                 if (stack.generic(name) if stack else name) in logits]
        if node not in nodes or not split:
            continue
        n = nodes[node]
        sdpa = any(kind.startswith("sdpa_logits") for _, kind, _ in split)
        found = _path(n.args[:2] if sdpa else [n], fed)
        if found:
            out[node] = (*found, split)
    return out


def _logit_values(program) -> set[str]:
    """The program's attention logits, by their role: a ``dot`` over a head dim that grows,
    and each value on the way from it to the softmax over the keys, computed from it by
    coordinatewise functions (a product, a linear combination, a nonlinearity): its scale, a
    soft cap c·tanh(s/c) (Gemma-2's), a position bias added (T5's, ALiBi's). A softmax's sink
    (its second argument, gpt-oss's) is not a logit, nor a value of the dot's that no softmax
    reads (a merged attention's second logits are). Whatever the vector is named after
    (sdpa's logits, a ``div`` or a ``mul``)."""
    dims = program.dim_table
    dots = {ins.out for ins in program.body
            if isinstance(ins, Dot) and ins.over and dims[ins.over].infinite}
    after = set(dots)  # computed coordinatewise from a dot
    for ins in program.body:
        if _coordinatewise(ins) and any(v in after for v in ins.operands):
            after.add(ins.out)
    before = set()  # reaching a softmax's logits coordinatewise
    for ins in reversed(program.body):
        if isinstance(ins, Nonlin) and ins.fn in SOFTMAXES:
            before.update(a for a in ins.args[:2] if a not in program.param_table)
        elif ins.out in before and _coordinatewise(ins):
            before.update(ins.operands)
    return dots | (after & before)


def _coordinatewise(ins) -> bool:
    return isinstance(ins, LinComb) or isinstance(ins, Nonlin) and (
        ins.fn == MUL or ins.fn in COORDINATEWISE)


def attention_logits(mup: MuP, names) -> list[str]:
    """Those of the checked vectors ``names`` (a rolled layer's as its repetition's,
    ``blk.i.v``) that are attention logits (``_logit_values``)."""
    logits, stack = _logit_values(mup.program), mup.traced.stack
    return [n for n in names if (stack.generic(n) if stack else n) in logits]


def _path(heads, fed: set, limit: int = 400):
    """The nodes computing ``heads`` back to the inputs of the projections on the way
    (``cuts``: a matmul's or linear layer's operand that the model's inputs reach (``fed``),
    where its other operand is the layer's weight, made of params and constants alone), in
    graph order; None where the walk meets a user input or exceeds ``limit``."""
    import torch

    aten = torch.ops.aten
    contractions = {aten.linear.default, aten.addmm.default, aten.matmul.default,
                    aten.mm.default, aten.bmm.default}
    seen, cuts, todo = set(), set(), list(heads)
    while todo:
        n = todo.pop()
        if n in seen or n in cuts:
            continue
        if n.op == "placeholder":
            if n in fed:
                return None
            continue
        seen.add(n)
        if len(seen) > limit:
            return None
        operands = n.all_input_nodes
        if n.target in contractions and any(a not in fed for a in operands):
            cuts.update(a for a in operands if a in fed)  # x in x @ W.T, W @ x, linear(x, W)
            todo += [a for a in operands if a not in fed]
        else:
            todo += operands
    if not cuts:
        return None
    order = {n: i for i, n in enumerate(next(iter(seen)).graph.nodes)}
    return sorted(seen, key=order.get), sorted(cuts, key=order.get)


def _run(ep, model, inputs, wanted: dict, patches: dict, splits: dict, scaled: dict) -> dict:
    """The graph run on the model's params, recording ``wanted``'s vectors; ``patches`` scale
    nodes' outputs as the forward patches do, ``scaled`` a node's input (its first argument)
    as a column scale's pre-hook does its module's (``MuP.input_scales``)."""
    import torch
    import torch.fx

    values = []
    users = iter(inputs)
    for spec in ep.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "PARAMETER":
            values.append(model.get_parameter(strip_prefix(spec.target)))
        elif kind == "BUFFER":
            values.append(model.get_buffer(strip_prefix(spec.target)))
        elif kind == "CONSTANT_TENSOR":
            values.append(ep.constants[spec.target])
        else:
            values.append(next(users))
    found: dict = {}

    def scale(n, args: tuple) -> tuple:
        if n.name not in scaled:
            return args
        return (scale_input(args[0], *scaled[n.name]), *args[1:])

    def logits(n, q, k):
        if n.kwargs.get("enable_gqa") and k.shape[-3] != q.shape[-3]:  # each key head in turn
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)  # serves a group's
        return (n.kwargs.get("scale") or q.shape[-1] ** -0.5) * q @ k.transpose(-2, -1)

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if n.name in scaled:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                out = getattr(self, n.op)(n.target, scale(n, args), kwargs)
            else:
                out = super().run_node(n)
            for factor, rows, *bias in patches.get(n.name, ()):
                out = scale_out(out, factor, rows, _bias(n, self.env) if bias else None)
            for vec, kind, unfold in wanted.get(n.name, []):
                if kind.startswith("sdpa_logits"):
                    found[vec] = logits(n, *(self.env[a] for a in n.args[:2]))[logit_columns(kind)]
                else:
                    found[vec] = out * unfold
            if n.name in splits:
                if len(splits[n.name]) == 3:
                    self.record_path(n, out)
                else:
                    self.record_split(n, out)
            return out

        def record_path(self, n, out):
            """The logits rerun from the step-0 inputs of their path with the current params:
            own = s(θ, x₀) − s(θ₀, x₀), cross = s(θ, x) − s(θ, x₀)."""
            first, into, (path, cuts, uses) = splits[n.name]
            if not first:  # the first call: the path's inputs, and the logits they give
                first.update(x={c: self.env[c].clone() for c in cuts}, s0={})
            env = dict(first["x"])
            for p in path:
                args, kwargs = torch.fx.node.map_arg(
                    (p.args, p.kwargs), lambda a: env[a] if a in env else self.env[a])
                env[p] = p.target(*scale(p, args), **kwargs)
                for factor, rows, *bias in patches.get(p.name, ()):
                    env[p] = scale_out(env[p], factor, rows, _bias(p, env) if bias else None)
            for vec, kind, unfold in uses:
                held = logits(n, env[n.args[0]], env[n.args[1]])[logit_columns(kind)] \
                    if kind.startswith("sdpa_logits") else env[n] * unfold
                start = first["s0"].setdefault(vec, held.clone())
                into[vec] = (held - start, found[vec] - held)

        def record_split(self, n, out):
            first, into = splits[n.name]
            x, w = scale(n, (self.env[n.args[0]],))[0], self.env[n.args[1]]
            if not first:  # the first call: the layer's first weight, input and output
                first.update(x=x.clone(), w=w.clone(), out=out.clone())
            cross = torch.nn.functional.linear(x - first["x"], first["w"])
            for factor, rows, *_ in patches.get(n.name, ()):  # W₀·Δx: no bias in it
                cross = scale_rows(cross, factor, rows)
            for vec, _, unfold in wanted[n.name]:
                into[vec] = ((out - first["out"] - cross) * unfold, cross * unfold)

    with torch.no_grad():
        # a path split reruns nodes after their last use: their values are kept
        keep = any(len(v) == 3 for v in splits.values())
        Recorder(ep.graph_module, garbage_collect_values=not keep).run(*values)
    return found


def _bias(node, env):
    """The bias (third argument) of an ``aten.linear`` node, from ``env``: a patch that keeps a
    tied unembedding's bias out of its factor (``MuP.patch_factors``)."""
    assert len(node.args) > 2 and node.args[2] is not None, node
    bias = env[node.args[2]]  # a convolution's adds per channel of its [B, C, H, W]
    return bias[:, None, None] if op_name(node) == "conv2d" else bias


def coord_check(
    mup: MuP,
    widths,
    *,
    steps: int = 3,
    seeds=(0, 1),
    lr: float = DEFAULT_LR,
    apply: bool = True,
    batch: int | None = None,
    tolerance: float | None = None,
    eps: float = 1e-12,
    device: str = "cpu",
    split_logits: bool = False,
    remeasure_few: bool = True,
):
    """The coordinate check of the user's own model: build it at each width (µP applied, or
    as it comes with ``apply=False``), train ``steps`` Adam(W) steps on fixed random tokens
    (next-token cross-entropy) and judge every program vector's slope against µP. The model is
    built and initialised on the CPU (the same init on every device), then trained on
    ``device``. ``split_logits``: the attention logits' changes split too (``probe``), and
    judged by their parts as a router's are (:func:`_drift`); off by default: at the zoo's
    widths their later layers' parts cancel rather than one vanishing (docs/check.md, "A
    traced model's changes by their parts"). ``remeasure_few``: a failing vector of few entries
    (a 2-class classifier's logits) measured again over more seeds and judged on its RMS
    pooled over them (few.py; docs/check.md, "Vectors of few entries")."""
    m = Measurements()
    # a router's (a readout's) change split into its own update and W₀·Δx: _drift
    own, cross = Measurements(), Measurements()
    run = dict(lr=lr, apply=apply, batch=batch, eps=eps, device=device,
               split_logits=split_logits)
    turns: dict = {}  # (normalised vector, step, width, seed) -> its turn in that step
    model = _measure(mup, widths, seeds, steps, m, own, cross, **run, turns=turns)
    optimizer = mup.derivation.optimizer
    abc = _zero_matrices(mup, derive(mup.program, optimizer).abc)  # µP's, default convention
    result = judge(mup.program, optimizer, abc, m, against="mup", tolerance=tolerance or TOLERANCE)
    _frozen(result, mup, {strip_prefix(n) for n, p in model.named_parameters()
                          if not p.requires_grad})
    _unreached(result, mup)
    result.settings.update(lr=lr, label="µP applied" if apply else "as it comes")
    result.names = module_paths(mup)
    _drift(result, mup, own, cross)
    result.turned = turned(turns, widths, seeds)
    # a vector of a few entries (a 2-class readout) whose failure its noise can explain:
    # measured again over more seeds, and judged on its RMS pooled over all of them (few.py)
    again = remeasure(result, m) if remeasure_few else None
    if again is not None:
        more, more_steps = again
        extra = Measurements()
        _measure(mup, widths, more, more_steps, extra, Measurements(), Measurements(), **run)
        # the added runs judged as the check's own: a run that diverges or blows up fails
        broken = judge_runs(result, extra, more_steps, mup.program, optimizer, abc)
        rejudge(result, m, extra, more_steps, broken)
    return result


def _measure(mup: MuP, widths, seeds, steps: int, m: Measurements, own: Measurements,
             cross: Measurements, *, lr: float, apply: bool, batch: int | None, eps: float,
             device: str, split_logits: bool, turns: dict | None = None):
    """The runs of :func:`coord_check`: for every seed and width the model built, ``steps``
    steps trained (none: its init alone), each recorded into ``m`` (and the split vectors'
    parts into ``own`` and ``cross``; each normalised vector's turn in each step into
    ``turns``: RMS(h_t − h_t-1) / RMS(h_t-1)). Returns the last model built."""
    import torch

    traced = mup.traced
    norms = normalised(mup.program)
    # about 16 token vectors a step, as the engine's own check (measure.VECTORS_PER_STEP)
    batch = batch or default_batch_size(traced.program)
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        x, y = (t.to(device) for t in _data(traced, batch, g))
        args, kwargs = _feed(traced, x, g)  # an encoder-decoder's decoder ids too
        for w in widths:
            torch.manual_seed(seed)
            model = traced.build(w)
            if apply:
                mup.apply(model)
            model.to(device)
            groups = mup.param_groups(model, lr, eps=eps) if apply else \
                [{"params": list(model.parameters()), "lr": lr}]
            opt = (
                torch.optim.SGD(groups, lr=lr)
                if mup.derivation.optimizer.name == "sgd"
                else torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, eps=eps)
            )
            split: dict = {}
            read = probe(mup, model, args, kwargs, split, split_logits)
            last = read()
            m.record(w, 0, last, seed)
            _record_split(own, cross, split, w, 0, seed)
            model.eval()  # dropout's noise is no width effect: the check trains without it
            train_norms(model)  # a batch norm's training forward is the program's
            for t in range(1, steps + 1):
                drop_caches(model)  # a cache of eval mode, stale after a step (caches.py)
                logits = _logits(model(*args, **kwargs))
                # a classifier of the sequence (logits read at one token, BERT's pooled head)
                # has one target per sequence: the first token's, folded into its classes (an
                # image classifier's targets, one per image, come as they are: _data)
                per_token = logits.dim() > 2 or y.dim() == 1
                target = y if per_token else y[:, 0] % logits.shape[-1]
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten())
                opt.zero_grad()
                backward(loss, model)
                opt.step()
                now = read()
                m.record(w, t, now, seed)
                if turns is not None:
                    for v in norms & now.keys():
                        before = last[v].detach().double()
                        turns[(v, t, w, seed)] = float(
                            (now[v].detach().double() - before).pow(2).mean().sqrt()
                            / before.pow(2).mean().sqrt().clamp_min(ZERO_RMS))
                last = now
                _record_split(own, cross, split, w, t, seed)
            mup.remove_patches(model)
    return model


def _record_split(own: Measurements, cross: Measurements, split: dict, width: int, step: int,
                  seed: int) -> None:
    """Records the two parts of each split vector's change (zero at step 0, so that the RMS
    recorded after step t is the part's own)."""
    parts = {k: (0 * a, 0 * b) if step == 0 else (a, b) for k, (a, b) in split.items()}
    own.record(width, step, {k: a for k, (a, _) in parts.items()}, seed)
    cross.record(width, step, {k: b for k, (_, b) in parts.items()}, seed)


def _mean_slope(m: Measurements, name: str, step: int, widths, seeds) -> float:
    slopes = [fit_slope(widths, [m.rms[(name, step, w, s)] for w in widths]) for s in seeds]
    return sum(slopes) / len(slopes)


# The own part is computed as a difference, out - out₀ - W₀·Δx: where the layer never moved
# (a frozen router) it is float32 rounding alone, about 1e-7 of the rest, and its slope is noise
# that may read as µP's by chance (it did, in one process of two). Below this share of the
# other part at any width or seed, the own part is zero, not a slope.
ROUNDING = 1e-4


def _resolved(own: Measurements, cross: Measurements, r, widths, seeds) -> bool:
    """Whether the own part stands above the rounding of the difference it is computed as."""
    return all(own.rms[(r.name, r.step, w, s)] > ROUNDING * cross.rms[(r.name, r.step, w, s)]
               for w in widths for s in seeds)


def _drift(result, mup: MuP, own: Measurements, cross: Measurements) -> None:
    """Passes the failing changes that are finite-width drift, saying so: a router's logits
    R·x change by ΔR·x (its own update, Θ(1) under µP) plus R₀·Δx, whose limit is Θ(1) (the
    LLN part the matmul rule counts: Δx built from R₀ᵀ by backprop) but which at finite widths
    also holds a CLT part, n^-1/2 smaller, from the change x gets through the other layers (the
    experts', attention's). With HF's init (std 0.02 at the base width) that part outweighs the
    rest up to widths of thousands, so the logits' slope reads -0.3 to -0.5 where µP requires
    0 (docs/torch.md, "Mixture-of-experts layers").

    µP's desideratum for the layer (THEORY §4: every weight updated maximally, its update
    moving what it feeds by Θ(1); the output O(1)) is a statement about the limit, and the
    split measures it directly: a change that fails by shrinking, whose own-update part scales
    as required while the W₀·Δx part shrinks (so its share of the change vanishes as n grows
    and the change tends to a Θ(1) limit), passes, its verdict saying so (and
    ``result.drift``); a softmax or sigmoid of it, failing alike, follows it. An own part that
    grows (SP: n^1) or shrinks (a frozen layer) fails as before, and so does a W₀·Δx that does
    not shrink: x's own change is judged as its own vector, so no failure upstream is hidden."""
    if not own.rms:
        return
    widths, seeds, tol = result.widths, result.seeds, result.tolerance
    stack = mup.traced.stack
    made = {ins.out: ins for ins in mup.program.body}
    logits = _logit_values(mup.program)
    marked: dict[tuple[str, int], float] = {}
    for r in result.results:
        if r.ok or r.step < 2 or (r.name, r.step, widths[0], seeds[0]) not in own.rms \
                or r.expected is None or r.expected.bound != "exact":
            continue
        e = float(r.expected.exponent)
        s_own, s_cross = (_mean_slope(part, r.name, r.step, widths, seeds)
                          for part in (own, cross))
        if r.slope < e - tol and abs(s_own - e) <= tol and s_cross < e - tol \
                and _resolved(own, cross, r, widths, seeds):
            # a linear layer's parts (a matmul, plus a bias: a LinComb), or attention logits'
            # (probe's split_logits: a dot, its scale, its soft cap)
            parts = ("its own update ΔW·x", "W₀·Δx") \
                if (stack.generic(r.name) if stack else r.name) not in logits else \
                ("its attention's own update (input held at step 0)", "the rest")
            r.ok = True
            r.verdict += (f"; passes by its parts, finite-width drift: {parts[0]} scales as µP "
                          f"requires (slope {s_own:+.2f}) and {parts[1]} shrinks (slope "
                          f"{s_cross:+.2f}), a CLT part of it still ahead of its Θ(1) limit at "
                          "these widths")
            result.drift[r.name] = r.verdict
            marked[(r.name, r.step)] = r.slope
    for r in result.results:
        generic = stack.generic(r.name) if stack else r.name
        ins = made.get(generic)
        if r.ok or not isinstance(ins, Nonlin) or len(ins.args) != 1 \
                or ins.fn not in ("softmax", "sigmoid"):
            continue
        arg = ins.args[0] if generic == r.name else \
            ".".join(r.name.split(".")[:2] + [ins.args[0].partition(".")[2]])
        if abs(marked.get((arg, r.step), math.inf) - r.slope) <= tol:
            r.ok = True
            r.verdict += f"; passes: follows {result.where(arg)}'s finite-width drift"
            result.drift[r.name] = r.verdict


def _frozen(result, mup: MuP, frozen: set[str]) -> None:
    """Marks a vector made by params that never train (``requires_grad=False``: Marian's and
    Pegasus's sinusoidal position tables) as frozen where its change is exactly zero: the model
    keeps it fixed on purpose, so a change of slope -inf is what it does, not a failure."""
    # a fixed table's lookup (a buffer or a param that never trains, ops_tables.py) too
    fixed = {p for p, u in mup.traced.params.items() if u.fixed is not None}
    if not frozen and not fixed:
        return
    stack = mup.traced.stack
    body = {ins.out: ins for ins in mup.program.body}
    for r in result.results:
        generic = stack.generic(r.name) if stack else r.name
        ins = body.get(generic)
        # P @ pos of a fixed table, or a fixed vector param itself (a padding row: ops_linear)
        if r.step and r.slope == float("-inf") and (getattr(ins, "weight", None) in fixed or (
                isinstance(ins, LinComb) and set(ins.operands) <= fixed)):
            r.ok, r.verdict = True, "frozen: a fixed table or row (never trained), so it never " \
                "changes"
            continue
        made = mup.traced.producers.get(stack.generic(r.name) if stack else r.name)
        if r.step == 0 or r.slope != float("-inf") or not made:
            continue
        targets = {strip_prefix(mup.traced.params[p].target) for p in made if p}
        if targets and targets <= frozen:
            r.ok, r.verdict = True, ("frozen: its params do not train (requires_grad=False), "
                                     "so it never changes")


def _unreached(result, mup: MuP) -> None:
    """Marks a vector that no output depends on (BERT's pooler under a masked-LM head: computed,
    then dropped) as not judged: no gradient reaches its params, ``apply`` leaves them as the
    model has them (MuP.unused), and µP, a statement about what reaches the outputs, says
    nothing of it. Its size at init keeps the model's own width law (HF's std 0.02 at every
    width grows it as √n), which is not a failure of the µP applied."""
    program = mup.program
    dead = {ins.out for ins in program.body} - live_values(program)
    for r in result.results:
        if r.name in dead:
            r.ok, r.judged = True, False
            r.verdict = "reaches no output of the forward: not judged (µP says nothing of it)"


def _feed(traced, x, g) -> tuple[tuple, dict]:
    """The forward's inputs for token ids ``x``: ``x`` alone, or where the program reads
    another token input (an encoder-decoder's decoder ids) the example inputs' form with random
    ids of each (inputs.token_feed)."""
    import torch

    program = traced.program
    others = [i for i in program.inputs if i.kind == "tokens" and i.name != "tok"
              and i.name not in traced.codebooks]  # (cut from x by the model: _data)
    if not others and x.is_floating_point():
        return _keyword_feed(traced, x)
    if not others:
        return (x,), {}
    tokens = {"tok": x}
    for i in others:
        seq, vocab = (program.dim_table[d].size for d in (i.seq, i.dim))
        tokens[i.name] = torch.randint(vocab, (x.shape[0], seq), generator=g).to(x.device)
    with torch.device("meta"):
        model = built(traced.build, traced.base_width)
    return token_feed(traced.example_inputs, model, tokens)


def _keyword_feed(traced, x) -> tuple[tuple, dict]:
    """The float input ``x`` (an image, patches) as the forward takes it (inputs.float_feed),
    beside the example inputs' others (SigLIP2's mask and grid, a prompt's ids)."""
    import torch

    with torch.device("meta"):
        model = built(traced.build, traced.base_width)
    return float_feed(traced.example_inputs(model), x)  # off the meta device: their values


def _data(traced, batch: int, g):
    """A fixed batch and its targets: random token ids and next tokens, or for a model traced
    on float inputs (an ``image``, ``patches`` or vector input) random N(0, 1) inputs of the
    example inputs' shape and a class of the output's dim per sample (per token, for per-token
    outputs)."""
    import torch

    program = traced.program
    if traced.codebooks:  # K codebooks per example as K rows of the ids (ops_codebooks.py)
        count = next(iter(traced.codebooks.values()))[0]
        seq = program.dim_table["T"].size
        vocab = min(program.dim_table[i.dim].size for i in program.inputs
                    if i.name in traced.codebooks)
        classes = program.dim_table[program.value_dims[program.outputs[0]]].size
        return (torch.randint(vocab, (batch * count, seq), generator=g),
                torch.randint(classes, (batch * count, seq), generator=g))
    if not any(i.kind in ("image", "patches", "vector") for i in program.inputs):
        seq, vocab = (program.dim_table[d].size for d in ("T", "V"))
        # the targets run over the output's sequence (an encoder-decoder's: the decoder's)
        out = value_sequences(program).get(program.outputs[0], ("T",))
        target = program.dim_table[out[0]].size if out else seq
        # and over the output's own vocabulary (FSMT's target vocabulary is not its source's)
        classes = program.dim_table[program.value_dims[program.outputs[0]]].size
        return (torch.randint(vocab, (batch, seq), generator=g),
                torch.randint(classes, (batch, target), generator=g))
    with torch.device("meta"):  # the program has the patches, the model takes the image
        given = traced.example_inputs(built(traced.build, traced.base_width))
    given = (given,) if isinstance(given, torch.Tensor) else given
    given = tuple(given.values()) if isinstance(given, dict) else given  # keywords: SigLIP2's
    shape = next(tuple(x.shape) for x in given
                 if isinstance(x, torch.Tensor) and x.is_floating_point())
    classes = program.dim_table[program.value_dims[program.outputs[0]]].size
    tokens = (program.dim_table[program.seq].size,) if program.seq else ()
    return (torch.randn(batch, *shape[1:], generator=g),
            torch.randint(classes, (batch, *tokens), generator=g))


def module_paths(mup: MuP) -> dict[str, str]:
    """Each program vector's module path in the user's model (``model.layers.1.mlp.down_proj``),
    read from the graph node that computes it (its ``nn_module_stack``); attention logits are
    named after their attention module with ``logits``; a rolled layer's vectors under their
    names in the block (``layers.1.linear_6``). Empty before any graph is exported."""
    if not mup.graphs:
        return {}
    ep, trace = next(iter(mup.graphs.values()))
    nodes = {n.name: n for n in ep.graph.nodes}
    out = {}
    for vec, (node, kind) in trace.vectors.items():
        path = module_of(nodes[node]) if node in nodes else ""
        if path:
            # a rolled layer's vector is judged under its repetition's name (blk.i.v)
            for name in mup.traced.names.get(vec, (vec,)):
                out[name] = f"{path} logits" if kind.startswith("sdpa_logits") else path
    return out


def _zero_matrices(mup: MuP, abc: dict) -> dict:
    """``abc`` with b = oo (zero init) for the matrices the model initialises to 0 (Swin's
    relative position bias table): what they compute is exactly 0 at init at every width, as
    for the program's own zero vector params (``param b : [n] = 0``, judge's zero_constants),
    and apply keeps a constant init as it is. Matrices only: a vector param at 0 is judge's (a
    gain written as (1 + w), Gemma's norms', is no zero: what it computes is the norm's output)."""
    shapes = mup.program.param_table
    zero = {name for name, use in mup.traced.params.items()
            if mup.traced.base.get(use.target) == ("const", 0.0)
            and name in shapes and len(shapes[name].shape) >= 2}
    return {p: ABC(x.a, "oo", x.c) if p in zero else x for p, x in abc.items()}


def _logits(out):
    if hasattr(out, "logits"):
        return out.logits
    # a model output without logits (transformers' ModelOutput, which has to_tuple) is its first
    # field, as a tuple's: PP-LCNet's classifier returns its logits as last_hidden_state
    first = isinstance(out, (tuple, list)) or hasattr(out, "to_tuple")
    return out[0] if first else out

