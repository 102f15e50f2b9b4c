"""Trace a PyTorch model into a Tensor Program: ``from_torch(build, widths, example_inputs)``.

The model is exported (``torch.export``, non-strict) on the meta device at two widths; each
width's aten graph is converted (convert.py) into the same statements with different sizes; a
size that changes in proportion to the width is a width dim, one that stays is finite, anything
else is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..errors import TensorProgError, TraceError, UsageError
from .calls import bias_after, constant_modules, refuse_tuples, shared_outputs, sole_outputs
from .columns import merge_columns
from .convert import agreed_forms, convert
from .delta_kernel import delta_kernels
from .experts_loop import expert_loops
from .growing import (
    refuse_growing_cats,
    refuse_growing_groups,
    refuse_growing_part_counts,
    refuse_growing_part_sums,
)
from .init_stats import base_stats, block_stats, built
from .inputs import cpu_ids, forward_inputs, given_inputs, kind_of, token_index
from .normed import l2_constant, l2_into_scales, l2_note
from .ops_conv import refuse_frozen_norms, train_norms
from .ops_entries import fixed_entries
from .ops_tables import fixed_table
from .readback import read_back
from .rows import merge_rows, renumber_slices
from .sequences import input_lines
from .ssd_kernel import ssd_kernels
from .stack import Stack, roll
from .values import ParamUse, Trace
from .where import def_span, exception_span, module_of, op_name, strip_prefix
from .wkv_kernel import wkv_kernels


class _Wrapped:
    """Calls the user's model and returns its output tensors: every tensor of a tuple or list
    (each traced as an output of the program), or the ``logits`` of a Hugging Face output (else
    each of its ``*_logits``: BertForPreTraining's two heads), with ``use_cache=False`` where
    the model takes it."""

    def __new__(cls, model):
        import inspect

        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                self.kw = (
                    {"use_cache": False}
                    if "use_cache" in inspect.signature(m.forward).parameters
                    else {}
                )

            def forward(self, *args, **kwargs):
                got = self.m(*args, **kwargs, **self.kw)
                out = got
                if hasattr(out, "logits"):
                    out = out.logits
                elif hasattr(out, "to_tuple"):  # a Hugging Face output of several heads' logits
                    # (BertForPreTraining's prediction_logits and seq_relationship_logits)
                    fields = list(out.values())
                    out = tuple(v for k, v in out.items()
                                if k.endswith("logits") and isinstance(v, torch.Tensor))
                    if not out and len(fields) == 1 and isinstance(fields[0], torch.Tensor):
                        # its one field, a tensor named otherwise (PP-LCNet's classifier
                        # returns its logits as last_hidden_state)
                        out = fields[0]
                elif isinstance(out, (tuple, list)):  # every head, not the first only
                    out = tuple(x for x in out if isinstance(x, torch.Tensor))
                # anything else (an int, None, a tuple of no tensor) is a program with no output
                # or a crash deep in the walk: refused here, at the user's forward
                if isinstance(out, torch.Tensor) or (isinstance(out, tuple) and out):
                    return out
                raise TraceError(
                    f"{type(self.m).__name__}.forward returned {kind_of(got)}: there is no "
                    "output to trace",
                    def_span(type(self.m).forward),
                    help="the forward must return a tensor, a tuple or list of tensors, or an "
                    "output with .logits",
                )

        return Wrapped(model)


def export(model, inputs: Sequence, kwargs: dict | None = None):
    """The model's aten graph (``torch.export``, non-strict), in eval mode (no dropout)."""
    import torch

    was = model.training
    model.eval()
    train_norms(model)  # a batch norm's training forward is the program's (ops_conv.py)
    try:
        # transformers' gated delta rule, Mamba-2 scan and RWKV time mixing as one op each
        # (*_kernel.py); DBRX's loop over the experts hit as the batched matmul it computes
        # (experts_loop.py)
        with delta_kernels(), ssd_kernels(), wkv_kernels(), expert_loops():
            return torch.export.export(_Wrapped(model), tuple(inputs), kwargs=kwargs or None,
                                       strict=False)
    except TensorProgError:
        raise
    except Exception as err:  # noqa: BLE001 - torch's own message, at the user's line
        first = (str(err).strip().splitlines() or [""])[0]
        raise TraceError(
            f"torch.export cannot trace the model: {type(err).__name__}: {first}",
            # no user line in the traceback (the forward called with the wrong inputs): its def
            exception_span(err) or def_span(type(model).forward),
            help="the forward must be traceable by torch.export (no data-dependent "
            "Python control flow); docs/torch.md says what is supported",
        ) from None
    finally:
        model.train(was)


def _dim_name(s1: int, s2: int, w1: int, w2: int, node_hint: str = "") -> tuple[str, str]:
    """(name, declaration rhs) of the dim of size s1 at width w1 and s2 at w2."""
    if s1 == s2:
        return f"f{s1}", f"{s1}"
    mult = Fraction(s1, w1)
    if Fraction(s2, w2) != mult:
        raise TraceError(
            f"a dim is {s1} at width {w1} and {s2} at width {w2}: neither finite "
            "nor proportional to the width",
            help="build(width) must scale every "
            "width dim in proportion to the width (e.g. 4 * width, width // heads)",
        )
    if mult == 1:
        return "n", "n"
    if mult.denominator == 1:
        return f"n_x{mult.numerator}", f"{mult.numerator} * n"
    if mult.numerator == 1:
        return f"n_by{mult.denominator}", f"n / {mult.denominator}"
    return (f"n_x{mult.numerator}by{mult.denominator}",
            f"{mult.numerator} * n / {mult.denominator}")


@dataclass
class Traced:
    """A model traced at two widths: ``source`` (the .tp text), ``program``, and per program
    name what it is in the model (``params``: torch tensor and rows; ``vectors``: graph node).
    A param of a rolled block (``stack``) has a target pattern (``model.layers.{i}.mlp...``),
    and each traced layer's use is in ``stack.layers``."""

    source: str
    widths: tuple[int, int]
    params: dict[str, ParamUse]
    vectors: dict[str, tuple[str, str]]
    scales: dict[str, dict]  # scale -> {q, model exponent, value}
    producers: dict[str, tuple]
    base: dict  # torch target -> ("const", v) | ("normal", std) at the base width
    build: Callable
    example_inputs: Callable
    templates: list[str]
    # the stack of identical layers written as a block repeated over the depth (stack.py)
    stack: Stack | None = None
    # unrolled vector -> its names in the program (a block's value in layer i: blk.i.v)
    names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # what the trace found that makes µP degenerate, for people (also comments in ``source``)
    notes: list[str] = dataclasses.field(default_factory=list)
    # width constant -> the module whose one call returns the vector it multiplies (or the
    # product) alone, where a forward patch scales that vector and no other (calls.py)
    constant_modules: dict[str, str] = dataclasses.field(default_factory=dict)
    # graph node (of the base width's graph) -> the module whose one call returns it alone,
    # where a forward patch scales that vector and no other (calls.py; normed.py's patch)
    calls: dict[str, str] = dataclasses.field(default_factory=dict)
    # graph node -> (module, the nodes its calls return) of a module called more than once,
    # each call returning one node alone (a norm q and k share: normed.py's patch)
    shared_calls: dict = dataclasses.field(default_factory=dict)
    # torch targets whose init is a random draw centred on 0 (init_stats.py)
    centred: frozenset = frozenset()
    # graph nodes whose number is a coefficient slot at either width, 1 or not (convert's keep)
    coefficient_nodes: frozenset = frozenset()
    own_heads: frozenset = frozenset()  # attention nodes written mix(p, v, dv) (convert.py)
    # token inputs that are codebooks of the token ids: name -> (K, k), the ids' rows b·K + k;
    # the outputs stacked (K, flat): the model's output is the program's outputs stacked on
    # axis 1 (flat: then viewed (B·K, T, V)) (ops_codebooks.py)
    codebooks: dict = dataclasses.field(default_factory=dict)
    stacked: tuple | None = None

    @property
    def program(self):
        from ..lang.parse import parse

        return parse(self.source, "traced.tp")

    @property
    def base_width(self) -> int:
        return self.widths[0]


# the start of a traced program's first line: what tells a .tp this package wrote (and may
# replace) from one a person wrote
MARK = "# traced from PyTorch at widths"


def traced_here(first_line: str) -> bool:
    """Whether a file's first line is a traced program's (so ``trace -o`` may replace it)."""
    return first_line.startswith(MARK)


def from_torch(
    build: Callable,
    widths: tuple[int, int] = (128, 256),
    example_inputs: Callable | None = None,
    *,
    blocks: bool = True,
) -> Traced:
    """Trace ``build(width)`` at two widths on the meta device into a Tensor Program.

    ``example_inputs(model)`` returns the forward's inputs: a tuple of positional ones (token
    ids) or a dict of keyword ones (``input_ids``, an ``attention_mask``, ``token_type_ids``);
    integer inputs other than the token ids are constants of the trace, None is left out. The first
    width is the base width (where hyperparameters are tuned). A stack of identical layers (an
    nn.ModuleList of one class) becomes one ``block`` repeated over the depth ``L`` (its traced
    layer count), so that derive gives the exponents in the depth too; ``blocks=False`` keeps
    every layer unrolled."""
    import torch

    w1, w2 = (int(w) for w in widths)
    if not 0 < w1 < w2:
        raise UsageError(
            f"widths {widths}: give two increasing positive widths",
            help="e.g. widths=(128, 256); the first is the base width",
        )
    if example_inputs is None:
        raise UsageError("example_inputs is required: a function of the model giving its inputs")
    # the builds, draws and probes of the trace take nothing from the user's generator
    with torch.random.fork_rng():
        return _traced(build, w1, w2, example_inputs, blocks)


def _traced(build: Callable, w1: int, w2: int, example_inputs: Callable, blocks: bool) -> Traced:
    """from_torch's trace, its arguments checked."""
    import torch

    with torch.device("cpu"):
        base, centred = base_stats(build, w1)
    traces, converted = [], []
    for w in (w1, w2):
        with torch.device("meta"):
            model = built(build, w)
        # a tensor made by a constructor that ignores the default device (torch.FloatTensor(d,
        # n, k), XLNet's attention params) is on the CPU beside the meta rest: a copy moved to
        # the meta device, else export refuses the mix of devices (their values come from the
        # CPU build anyway). A copy: the CPU part may be the user's own (a pretrained module
        # the build put in), and a model wholly on the CPU (built before) is traced as it is
        devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
        if "meta" in devices and len(devices) > 1:
            model = copy.deepcopy(model).to("meta")
        args, kwargs = forward_inputs(example_inputs, model)
        leaves = (*args, *kwargs.values())
        k = token_index(args, kwargs)

        def meta(x):
            return x.to("meta") if isinstance(x, torch.Tensor) else x

        # the token ids, on the CPU (masks are computed from them: convert.py)
        tok = cpu_ids(leaves[k])
        try:
            refuse_frozen_norms(model)
            ep = export(model, [meta(x) for x in args], {n: meta(x) for n, x in kwargs.items()})
            scalars = _scalar_buffers(build, w, model, ep, example_inputs)
            converted.append((ep, base, tok, scalars, given_inputs(ep, model, args, kwargs, k)))
            traces.append(convert(*converted[-1]))
        except TraceError as err:
            raise _at_build(err, build) from None
        if w == w1:  # the module that computes each vector, and the model, find its stack
            nodes = {n.name: n for n in ep.graph.nodes}
            layout = (
                {v: module_of(nodes[node]) for v, (node, _) in traces[0].vectors.items()},
                model,
            )
            graph, params = ep.graph, dict(ep.graph_signature.inputs_to_parameters)
    try:
        keep, own = agreed_forms(traces, converted)  # written alike at both widths
        traced = _combine(traces, (w1, w2), base, build, example_inputs,
                          layout if blocks else None, nodes)
        read_back(traced.source, traced.vectors, nodes)
    except TraceError as err:
        raise _at_build(err, build) from None
    with torch.device("cpu"):  # a block's own init where it differs from its tensor's
        uses = [*traced.params.values(), *(u for layer in (traced.stack.layers.values()
                                                          if traced.stack else ()) for u in layer)]
        traced.base.update(block_stats(build, w1, uses, traced.base))
    traced.own_heads = own
    traced.calls = sole_outputs(graph, layout[1])
    traced.shared_calls = shared_outputs(graph, layout[1])
    bias_after(graph, params, traced.calls, traced.scales, layout[1])
    refuse_tuples(model, args, kwargs, traced.scales)
    traced.constant_modules = constant_modules(graph, traced.calls, traced.scales, traced.vectors)
    traced.centred = frozenset(strip_prefix(k) for k in centred)
    traced.coefficient_nodes = keep  # the check's conversions keep them too (check.py)
    return traced


def _width_constant(a: float, b: float, widths, info: dict, trace: Trace) -> dict:
    """A number the forward computes from the width (an embedding times sqrt(d_model), a
    logit times 1/sqrt(d)): a at width w1, b at w2, read as a·(n/w1)^-model_a with model_a
    measured between the two. By the abc-symmetry a multiplier n^-θ on W @ x + b is the same
    network as W's and b's init exponent + θ and LR exponent + kθ, so the program keeps the
    base value a and MuP folds the width factor into the params that make the vector (or
    patches their layer's output where they cannot take it), as for attention's scale."""
    w1, w2 = widths
    exponent = -math.log(b / a) / math.log(w2 / w1)
    model_a = Fraction(exponent).limit_denominator(8)
    where = info["span"]
    if abs(float(model_a) - exponent) > 1e-6:
        raise TraceError(
            f"a constant {a!r} at width {w1} and {b!r} at {w2}: no power of the width with a "
            "small denominator", where,
            help="a constant of the forward may change with the width only as a power of it "
            "(d ** 0.5, 1 / d)",
        )
    if info.get("norm"):  # an L2 normalisation over d coordinates: d^-1/2 * rmsnorm(x)
        return l2_constant(info, model_a, a)  # (ops_norm.py; normed.l2_into_scales)
    x = info["x"]
    reads = sum(len(re.findall(rf"\b{x}\b", st.partition("=")[2])) for st in trace.stmts)
    if not x or x not in trace.producers or reads > 1:
        raise TraceError(
            f"a constant that changes with the width ({a!r} at width {w1}, {b!r} at {w2}) "
            "multiplying a value that no layer's weight makes directly for this product "
            "alone: its width factor cannot move into a param's init and LR", where,
            help="apply the constant right after a linear layer or an embedding lookup whose "
            "output nothing else reads, or make it width-independent",
        )
    _bias_added_alone(x, info, (a, b, w1, w2), trace)
    # span: the user's line of the constant, for apply's refusal of a patch it cannot place
    return {"q": info["x"], "model_a": model_a, "value": a, "fixed": True, "out": info["out"],
            "span": where}


def _bias_added_alone(x: str, info: dict, values, trace: Trace) -> None:
    """A TraceError where ``x`` is a layer's ``W @ x'`` plus a bias param applied outside that
    layer (DeBERTa's ``q + q_bias``: ops_arith's ``added_bias``) and either is read elsewhere:
    the constant's width factor goes on the layer's output (a patch on its rows) and into the
    bias's init and LR, and would scale those other readers too."""
    w, bias = trace.producers[x]
    if bias is None or trace.params[bias].module == trace.params[w].module:
        return
    rhs = next(st.partition("=")[2] for st in trace.stmts if st.partition("=")[0].strip() == x)
    made = [v for v in re.findall(r"[\w.]+", rhs) if trace.producers.get(v, (None,))[0] == w]
    for v in (*made, bias):
        reads = sum(len(re.findall(rf"(?<![\w.]){re.escape(v)}(?![\w.])", st.partition("=")[2]))
                    for st in trace.stmts)
        if reads > 1:
            a, b, w1, w2 = values
            what = (f"the bias {strip_prefix(trace.params[v].target)}" if v == bias else
                    f"the output of {strip_prefix(trace.params[w].target)}")
            raise TraceError(
                f"a constant that changes with the width ({a!r} at width {w1}, {b!r} at {w2}) "
                f"multiplying a layer's output plus a bias param ({x}), whose width factor "
                f"would move into the layer and the bias; but {what} is read elsewhere too, "
                "and would take that factor there", info["span"],
                help="give the other reader a bias (or a layer) of its own, or make the "
                "constant width-independent (a fixed head dim)",
            )


def _grouping(name: str, u1, u2, widths):
    """A block of every head's rows (a fused qkv laid out per head) as the two widths agree: a
    fixed number of heads (their rows grow) or a fixed number of rows per head (heads grow)."""
    if u1.groups is None:
        return u1
    if u1.groups == u2.groups:
        return dataclasses.replace(u1, group_rows=None)
    if u1.group_rows == u2.group_rows:
        return dataclasses.replace(u1, groups=None)
    raise TraceError(
        f"{name} is a block of each of {u1.groups} groups of {u1.group_rows} rows of "
        f"{strip_prefix(u1.target)} at width {widths[0]} and of {u2.groups} groups of "
        f"{u2.group_rows} at {widths[1]}: neither the head count nor the head dim is fixed",
        help="build the model with a fixed head count or a fixed head dim",
    )


def _scalar_buffers(build, width: int, model, ep, example_inputs) -> dict:
    """The float buffers of the model (one entry: a constant the build computed from the width,
    as HF Gemma's embed_scale; 0s and 1s: a mask, OpenAI GPT's), its boolean ones (a causal
    mask, ImageGPT's) and its integer buffers (ids the model makes itself: HF's
    ``position_ids``, an arange, and ``token_type_ids``, zeros), read from one build on the
    CPU: on the meta device they have no value. A number the forward makes a tensor on the
    model's device, which a ``where`` reads (ImageGPT's ``torch.tensor(finfo.min)`` for the
    entries its causal mask drops) or a ``min`` of ids (TAPAS's bound on its positions), has
    none either: the CPU build is exported too, for it.
    Keyed by the exported graph's names."""
    import torch

    # every float buffer: one of 0s and 1s is a mask the walk reads (OpenAI GPT's), one of
    # zeros a constant added (BART's final_logits_bias); rotary's inverse frequencies are read
    # too, and the walk refuses a product with them by name
    names = [
        n
        for n, b in model.named_buffers()
        if b.is_floating_point() or b.dtype in (torch.int64, torch.int32, torch.bool)
    ]  # and the params it does not train: a table looked up at the positions (ops_tables.py)
    names += [n for n, p in model.named_parameters() if not p.requires_grad]
    lifted = {n: at for n, at in _lifted_numbers(ep).items()
              if ep.constants[n].device.type == "meta"}
    if not names and not lifted:
        return {}
    with torch.device("cpu"), torch.random.fork_rng():
        torch.manual_seed(0)
        cpu = built(build, width)
    tensors = {**dict(cpu.named_buffers()), **dict(cpu.named_parameters())}
    out = {"m." + n: tensors[n].detach().clone() for n in names}
    if lifted:
        args, kwargs = forward_inputs(example_inputs, cpu)
        on_cpu = export(cpu, args, kwargs)
        # paired by the op that reads each and where, not by name or number: the two exports
        # number them in different orders (torch.as_tensor is copied on the CPU, not on the
        # meta device), and a constant nothing reads is lifted on the meta device alone. One
        # left unpaired stays unknown, which its reader refuses
        read = _lifted_numbers(on_cpu)
        at = {where: n for n, where in read.items()}
        twice = {w for found in (read, lifted) for w in found.values()
                 if list(found.values()).count(w) > 1}  # no telling them apart
        out.update({n: on_cpu.constants[at[where]] for n, where in lifted.items()
                    if where in at and where not in twice})
    return out


def _lifted_numbers(ep) -> dict[str, tuple[str, int | str | None]]:
    """The one-entry constants of the graph that a ``where`` reads, a float (through copies:
    ``torch.tensor(c, device=w.device)`` is lift_fresh_copy, then detach_), or that bounds ids,
    an integer that a ``min`` or ``max`` reads (TAPAS's positions,
    ``torch.min(torch.as_tensor(max_position_embeddings - 1, device=device), ids)``), or a few
    integers an index reads (the ids a pick keeps: ``logits[:, -1, [yes, no]]``); each
    with where it is read: the first such reader's name and the argument (its place or
    keyword) it is there."""
    import torch

    specs = {s.arg.name: s.target for s in ep.graph_signature.input_specs
             if s.kind.name == "CONSTANT_TENSOR"}
    found, place = {}, {n: i for i, n in enumerate(ep.graph.nodes)}
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in specs:
            continue
        value = ep.constants.get(specs[node.name])
        if value is None or value.dtype == torch.bool or value.numel() != 1 and (
                value.is_floating_point() or value.dim() != 1 or value.numel() > 16):
            continue
        readers = {"where"} if value.is_floating_point() else {
            "min", "max", "minimum", "maximum", "clamp", "index"}  # (index: ids a pick keeps)
        read, copied = _read_through_copies(node)
        if not read or any(op_name(u) not in readers for u in read):
            continue  # read by another op too (arange + c): left to that op, which refuses it
        reader = min(read, key=place.__getitem__)
        found[specs[node.name]] = (reader.name, next((i for i, a in (
            *enumerate(reader.args), *reader.kwargs.items()) if a in copied | {node}), None))
    return found


_COPIES = ("detach", "detach_", "lift_fresh_copy", "clone", "to")


def _read_through_copies(node) -> tuple[set, set]:
    """The ops that read a constant's value, through its copies (``_COPIES``), and those
    copies."""
    todo, read, copied = list(node.users), set(), set()
    while todo:
        u = todo.pop()
        if u in read or u in copied:
            continue
        if op_name(u) in _COPIES:
            copied.add(u)
            todo.extend(u.users)
        else:
            read.add(u)
    return read, copied


def _at_build(err: TraceError, build) -> TraceError:
    """``err`` with its unpositioned diagnostics at the user's build: where no line of the
    user's runs the op (a model of torch's layers only, as an nn.Sequential) or the fault is
    the build's (a dim that does not follow the width), the build is the code to change."""
    span = def_span(build)
    if span is None or all(d.span is not None for d in err.diagnostics):
        return err
    return TraceError([dataclasses.replace(d, span=d.span or span) for d in err.diagnostics])


def _combine(traces: list[Trace], widths, base, build, example_inputs, layout=None,
             nodes=None) -> Traced:
    t1, t2 = traces
    w1, w2 = widths
    fixed_entries(t1, t2, widths)  # an entry read as a number: of a fixed size (ops_entries)
    renumber_slices(t1, t2)  # a slice's block named by a place that moves (rows.py)
    if t1.decls + t1.stmts != t2.decls + t2.stmts or len(t1.slots) != len(t2.slots):
        diff = next(
            (
                f"{a!r} at {w1}, {b!r} at {w2}"
                for a, b in zip(t1.decls + t1.stmts, t2.decls + t2.stmts, strict=False)
                if a != b
            ),
            "",
        )
    else:  # one name, one tensor: a param read from another layer at the second width would
        # take the first's exponents and be patched as the first's (a layer's place moved)
        diff = next((f"param {k} is {strip_prefix(u.target)} at {w1}, "
                     f"{strip_prefix(t2.params[k].target)} at {w2}" for k, u in t1.params.items()
                     if strip_prefix(u.target) != strip_prefix(t2.params[k].target)), None)
    if diff is not None:
        refuse_growing_groups(t1, t2, widths, nodes)
        refuse_growing_part_sums(t1, t2, widths, nodes)
        refuse_growing_part_counts(t1, t2, widths, nodes)
        raise TraceError(
            f"the model's graph differs between widths {w1} and {w2}",
            help=f"build(width) must build the same layers at every width; first "
            f"difference: {diff}",
        )
    refuse_growing_cats(t1, t2, nodes)  # cat(a, b, D) of finite parts only
    values, dims, scales, fixed = {}, {}, {}, {}
    for i, ((kind, a), (_, b)) in enumerate(zip(t1.slots, t2.slots, strict=True)):
        if kind == "dim":
            name, rhs = _dim_name(a, b, w1, w2)
            dims[name] = rhs
            values[f"s{i}"] = name
        elif kind == "literal":  # a number written as the base width's (ops_delta._unit)
            values[f"s{i}"] = repr(float(a))
        elif kind == "coef":
            values[f"s{i}"] = repr(float(a))
            if not math.isclose(a, b, rel_tol=1e-9):
                fixed[i] = _width_constant(a, b, (w1, w2), t1.coefs[i], t1)
        else:
            values[f"s{i}"] = repr(float(a))
            exponent = -math.log(b / a) / math.log(w2 / w1)
            scales[i] = (Fraction(exponent).limit_denominator(8), a)
    for info in t1.scales.values():
        exp, value = scales[info["slot"]]
        info.update(model_a=exp, value=value)
    l2_into_scales(fixed, t1)  # an L2 norm's constant the attention logits' scale counts
    for info in fixed.values():  # measured, not derived: MuP folds it like a scale's rest
        if not info.get("into"):
            t1.scales[f"the width constant on {info['q']}"] = info
    for k, u in t1.params.items():
        fixed_table(k, u, t2.params[k], widths)  # its entries Θ(1) at both (ops_tables.py)
        if u.rows != t2.params[k].rows:  # a block of a fixed size beside one that grows
            t1.params[k] = merge_rows(k, u, t2.params[k], widths)
    params = {
        # a concatenation's column block: its bounds over the widths (columns.py)
        k: dataclasses.replace(merge_columns(k, _grouping(k, u, t2.params[k], widths),
                                             t2.params[k]), target=strip_prefix(u.target))
        for k, u in t1.params.items()
    }
    base = {strip_prefix(k): v for k, v in base.items()}
    decls = [d.format(**values) for d in t1.decls]
    stmts = [s.format(**values) for s in t1.stmts]
    notes = fixed_dim_notes(decls, stmts, dims, t1.params, ("tok", "pos", *t1.seq_inputs))
    rolled = note = None
    if layout is not None:
        modules, model = layout
        rolled = roll(
            decls, stmts, params=params, modules=modules, outputs=t1.outputs, scales=t1.scales,
            producers=t1.producers, rotary=t1.rotary, base=base, model=model,
        )
        if isinstance(rolled, str):
            rolled, note = None, rolled
        elif rolled is not None:
            note = rolled.note
    if rolled is not None:
        # the rolled program must be the language's: where it is not (a case stack.py does not
        # foresee), the unrolled one stands, and says why
        from ..lang.parse import parse

        try:
            body = rolled.decls + rolled.stmts
            parse(_source(w1, w2, t1, body, rolled, None, dims, fixed, notes), "traced.tp")
        except TensorProgError as err:
            why = err.diagnostics[0].message
            rolled, note = None, f"the stack is kept unrolled: its block does not parse ({why})"
    source = _source(w1, w2, t1, rolled.decls + rolled.stmts if rolled else decls + stmts,
                     rolled, note, dims, fixed, notes)
    return Traced(
        source,
        (w1, w2),
        rolled.params if rolled else params,
        t1.vectors,
        rolled.scales if rolled else t1.scales,
        rolled.producers if rolled else t1.producers,
        base,
        build,
        example_inputs,
        t1.decls + t1.stmts,
        rolled.stack if rolled else None,
        rolled.names if rolled else {},
        notes,
        codebooks=dict(t1.codebooks),
        stacked=t1.stacked,
    )


def _source(w1, w2, t1: Trace, body: list[str], rolled, note: str | None, dims=None,
            fixed=None, notes=()) -> str:
    """The traced program's text: the header, its dims and inputs, then ``body``; ``fixed``:
    the width constants measured (each named in a comment at the top); ``notes``: what makes
    µP degenerate (fixed_dim_notes)."""
    rotary = rolled.rotary if rolled else t1.rotary
    seq, vocab = t1.tokens
    lines = [f"{MARK} {w1} and {w2}"]
    lines += [f"# note: {n}" for n in notes]
    lines += [f"# {note}"] if note else []
    lines += [
        f"# {v}: rotary embedding, an exact rotation of coordinate pairs, written as {v} itself"
        for v in rotary
    ]
    lines += [
        l2_note(info, w1) if info.get("l2") else
        f"# {info['q']} times {info['value']!r}: the model's {info['value']:.6g}·(n/{w1})^"
        f"{-info['model_a']}, written at its base value; the width factor goes into "
        f"the init and LR of what makes {info['q']}"
        for info in (fixed or {}).values()
    ]
    lines.append(f"width n = {w1}")
    if rolled:
        lines.append(rolled.depth_line)
    for name, rhs in sorted((dims or {}).items(), key=lambda kv: kv[0] != "n"):
        if name != "n":
            lines.append(f"dim {name} = {rhs}")
    if vocab is not None:
        lines += [f"dim T = {seq}", f"dim V = {vocab}", "input tok : tokens[T, V]"]
    elif seq is not None:  # float per-token inputs (an image's patches): their sequence dim
        lines.append(f"dim T = {seq}")
    # the image first: the language declares no image after a sequence's inputs (Perceiver's
    # image classifier has its latents' and its query's positions besides)
    images = [d for d in body if re.match(r"input \w+ : image\[", d)]
    lines += images
    body = [d for d in body if d not in images]
    # a second sequence, segment ids, positions and buckets of each sequence (sequences.py)
    lines += input_lines(t1, vocab, lambda rows: _dim_name(rows, rows, w1, w2)[0])
    if any(re.search(r" @ pos\b", s) for s in t1.stmts) and not any(
            d.startswith("input pos :") for d in t1.decls):  # (positions over T1: declared)
        lines.append("input pos : positions[T]")
    lines += body
    lines += [f"output {o}" for o in t1.outputs]
    return "\n".join(lines) + "\n"


_PARAM = re.compile(r"param (\w+) : \[(\w+), (\w+)\]")


def fixed_dim_notes(decls: list[str], stmts: list[str], dims: dict, params: dict,
                    inputs=("tok", "pos")) -> list[str]:
    """A dim that keeps its size while the width grows, between two width dims: a matrix maps
    the width to it and another maps it back (an ``intermediate_size`` the config fixes). The
    layer between is then not widened at all: µP treats the matrix into it as a readout and the
    one out of it as an input layer of finite fan-in, and may have no solution (a bias-free
    gated MLP's output vanishes at init as 1/n, and derive refuses it at the matrix after the
    bottleneck, an effect far from its cause). Said here, at the trace, with the modules and
    what to change. A token or position table (``E @ tok``) maps a finite one-hot input to the
    width, which is no bottleneck."""
    fixed = {d for d, rhs in dims.items() if "n" not in rhs}
    lookups = {m.group(1) for s in stmts
               if (m := re.search(rf"(\w+) @ ({'|'.join(inputs)})\b", s))}
    into: dict[str, list[str]] = {}
    out_of: dict[str, list[str]] = {}
    for d in decls:
        m = _PARAM.match(d)
        if not m:
            continue
        name, fan_out, fan_in = m.groups()
        if fan_out in fixed and fan_in not in fixed:
            into.setdefault(fan_out, []).append(name)
        elif fan_in in fixed and fan_out not in fixed and name not in lookups:
            out_of.setdefault(fan_in, []).append(name)

    def module(name: str) -> str:
        use = params.get(name)
        return strip_prefix(use.target).rpartition(".")[0] if use is not None else name

    def modules(names: list[str]) -> str:
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        return module(names[0]) + more

    notes = []
    for d in sorted(set(into) & set(out_of)):
        size = dims[d]
        notes.append(
            f"dim {d} stays {size} while the width grows: {modules(into[d])} maps the width "
            f"to {size} and {modules(out_of[d])} maps it back: the layer between is not "
            "widened, so µP treats the first as a readout and the second as an input layer, "
            "and may have none (derive then refuses the program after it); if the config fixes "
            "a size meant to grow with the model, build it in proportion to the width (e.g. "
            "intermediate_size = 4 * width)"
        )
    return notes
