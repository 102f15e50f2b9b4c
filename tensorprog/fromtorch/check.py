"""The coordinate check of the user's own model: its program vectors read from its own graph
(:func:`probe`), trained a few steps at several widths and judged (:func:`coord_check`)."""

from __future__ import annotations

from ..engine.derive import derive
from ..errors import UsageError
from ..ir.sequences import value_sequences
from ..numerics.judge import TOLERANCE, Measurements, judge
from ..numerics.measure import default_batch_size
from .apply import MuP, scale_rows
from .convert import convert
from .ops_conv import train_norms
from .trace import built, export, forward_names, given_inputs, token_feed, token_index
from .where import module_of, strip_prefix

# Adam's default learning rate here: the largest that keeps HF Llama (2 layers, 4 heads, vocab
# 256, MLP 4n, traced at 64/128) in the small-update regime at widths 64..512 and 256..1024,
# where µP passes at ±0.25. At 1e-2 its deeper layers' changes compound (x2.4 over linear from
# step 2 to 3) and 12 vectors read -0.3 to -0.74 at 256..1024; at 1e-3 the 64..512 check reads
# the second block's logits at -0.30 (docs/torch.md has the table).
DEFAULT_LR = 3e-3


def probe(mup: MuP, model, inputs, kwargs: dict | None = None):
    """A function returning {program vector: tensor} for the model's current params on
    ``inputs`` (and keyword ``kwargs``), through the model's own graph (with its forward
    patches). The graph is exported once per width and input shape, then reused (an export
    takes about a second)."""
    import torch

    kwargs = kwargs or {}
    fed = set(kwargs) | set(forward_names(model, tuple(inputs), {}))
    ids = [i.name for i in mup.traced.program.inputs
           if i.kind == "tokens" and i.name != "tok" and i.name not in fed]
    if ids:  # segment ids traced as inputs of their own: the probe feeds the token ids alone
        raise UsageError(
            f"the model was traced with {', '.join(ids)} as token inputs of their own, which "
            "the probe (and coord_check) do not feed",
            help="check the traced program with `tensorprog check`, or trace the model with "
            "ids of one value (one segment) for its coordinate check; the exponents are the same",
        )
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    leaves = (*inputs, *kwargs.values())
    key = (mup.width_of(model), shapes,
           tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in leaves))
    if key not in mup.graphs:
        with mup.unpatched(model):
            ep = export(model, inputs, kwargs)
        k = token_index(tuple(inputs), kwargs)
        trace = convert(
            ep, {"m." + k: v for k, v in mup.traced.base.items()}, torch.zeros_like(leaves[k]),
            given=given_inputs(ep, model, tuple(inputs), kwargs, k)
        )
        if trace.decls + trace.stmts != mup.traced.templates:
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
    return lambda: _run(ep, model, leaves, wanted, patches)


def _run(ep, model, inputs, wanted: dict, patches: dict) -> dict:
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

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in patches:
                out = scale_rows(out, *patches[n.name])
            for vec, kind, unfold in wanted.get(n.name, []):
                if kind == "sdpa_logits":
                    q, k = (self.env[a] for a in n.args[:2])
                    scale = n.kwargs.get("scale") or q.shape[-1] ** -0.5
                    found[vec] = scale * q @ k.transpose(-2, -1)
                else:
                    found[vec] = out * unfold
            return out

    with torch.no_grad():
        Recorder(ep.graph_module).run(*values)
    return found


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
):
    """The coordinate check of the user's own model: build it at each width (µP applied, or
    as it comes with ``apply=False``), train ``steps`` Adam(W) steps on fixed random tokens
    (next-token cross-entropy) and judge every program vector's slope against µP. The model is
    built and initialised on the CPU (the same init on every device), then trained on
    ``device``."""
    import torch

    traced = mup.traced
    m = Measurements()
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
            if apply:
                groups = mup.param_groups(model, lr, eps=eps)
            else:
                groups = [{"params": list(model.parameters()), "lr": lr}]
            opt = (
                torch.optim.SGD(groups, lr=lr)
                if mup.derivation.optimizer.name == "sgd"
                else torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, eps=eps)
            )
            read = probe(mup, model, args, kwargs)
            m.record(w, 0, read(), seed)
            model.eval()  # dropout's noise is no width effect: the check trains without it
            train_norms(model)  # a batch norm's training forward is the program's
            for t in range(1, steps + 1):
                logits = _logits(model(*args, **kwargs))
                # a classifier of the sequence (logits read at one token, BERT's pooled head)
                # has one target per sequence: the first token's, folded into its classes (an
                # image classifier's targets, one per image, come as they are: _data)
                per_token = logits.dim() > 2 or y.dim() == 1
                target = y if per_token else y[:, 0] % logits.shape[-1]
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                m.record(w, t, read(), seed)
            mup.remove_patches(model)
    optimizer = mup.derivation.optimizer
    abc = derive(mup.program, optimizer).abc  # µP's desiderata, in the default convention
    result = judge(mup.program, optimizer, abc, m, against="mup", tolerance=tolerance or TOLERANCE)
    _frozen(result, mup, {strip_prefix(n) for n, p in model.named_parameters()
                          if not p.requires_grad})
    result.settings.update(lr=lr, label="µP applied" if apply else "as it comes")
    result.names = module_paths(mup)
    return result


def _frozen(result, mup: MuP, frozen: set[str]) -> None:
    """Marks a vector made by params that never train (``requires_grad=False``: Marian's and
    Pegasus's sinusoidal position tables) as frozen where its change is exactly zero: the model
    keeps it fixed on purpose, so a change of slope -inf is what it does, not a failure."""
    if not frozen:
        return
    stack = mup.traced.stack
    for r in result.results:
        made = mup.traced.producers.get(stack.generic(r.name) if stack else r.name)
        if r.step == 0 or r.slope != float("-inf") or not made:
            continue
        targets = {strip_prefix(mup.traced.params[p].target) for p in made if p}
        if targets and targets <= frozen:
            r.ok, r.verdict = True, ("frozen: its params do not train (requires_grad=False), "
                                     "so it never changes")


def _feed(traced, x, g) -> tuple[tuple, dict]:
    """The forward's inputs for token ids ``x``: ``x`` alone, or where the program reads
    another token input (an encoder-decoder's decoder ids) the example inputs' form with random
    ids of each (trace.token_feed)."""
    import torch

    program = traced.program
    others = [i for i in program.inputs if i.kind == "tokens" and i.name != "tok"]
    if not others:
        return (x,), {}
    tokens = {"tok": x}
    for i in others:
        seq, vocab = (program.dim_table[d].size for d in (i.seq, i.dim))
        tokens[i.name] = torch.randint(vocab, (x.shape[0], seq), generator=g).to(x.device)
    with torch.device("meta"):
        model = built(traced.build, traced.base_width)
    return token_feed(traced.example_inputs, model, tokens)


def _data(traced, batch: int, g):
    """A fixed batch and its targets: random token ids and next tokens, or for a model traced
    on float inputs (an ``image``, ``patches`` or vector input) random N(0, 1) inputs of the
    example inputs' shape and a class of the output's dim per sample (per token, for per-token
    outputs)."""
    import torch

    program = traced.program
    if not any(i.kind in ("image", "patches", "vector") for i in program.inputs):
        seq, vocab = (program.dim_table[d].size for d in ("T", "V"))
        # the targets run over the output's sequence (an encoder-decoder's: the decoder's)
        out = value_sequences(program).get(program.outputs[0], ("T",))
        target = program.dim_table[out[0]].size if out else seq
        return (torch.randint(vocab, (batch, seq), generator=g),
                torch.randint(vocab, (batch, target), generator=g))
    with torch.device("meta"):  # the program has the patches, the model takes the image
        given = traced.example_inputs(built(traced.build, traced.base_width))
    given = (given,) if isinstance(given, torch.Tensor) else given
    shape = next(tuple(x.shape) for x in given if isinstance(x, torch.Tensor))
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
                out[name] = f"{path} logits" if kind == "sdpa_logits" else path
    return out


def _logits(out):
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out
