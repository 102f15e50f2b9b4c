"""The coordinate check of the user's own model: its program vectors read from its own graph
(:func:`probe`), trained a few steps at several widths and judged (:func:`coord_check`)."""

from __future__ import annotations

from ..engine.derive import derive
from ..errors import UsageError
from ..numerics.judge import TOLERANCE, Measurements, judge
from ..numerics.measure import default_batch_size
from .apply import MuP, scale_rows
from .convert import convert
from .trace import export
from .where import module_of, strip_prefix

# Adam's default learning rate here: the largest that keeps HF Llama (2 layers, 4 heads, vocab
# 256, MLP 4n, traced at 64/128) in the small-update regime at widths 64..512 and 256..1024,
# where µP passes at ±0.25. At 1e-2 its deeper layers' changes compound (x2.4 over linear from
# step 2 to 3) and 12 vectors read -0.3 to -0.74 at 256..1024; at 1e-3 the 64..512 check reads
# the second block's logits at -0.30 (docs/torch.md has the table).
DEFAULT_LR = 3e-3


def probe(mup: MuP, model, inputs):
    """A function returning {program vector: tensor} for the model's current params on
    ``inputs``, through the model's own graph (with its forward patches). The graph is
    exported once per width and input shape, then reused (an export takes about a second)."""
    import torch

    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    key = (mup.width_of(model), shapes, tuple(tuple(x.shape) for x in inputs))
    if key not in mup.graphs:
        with mup.unpatched(model):
            ep = export(model, inputs)
        trace = convert(
            ep, {"m." + k: v for k, v in mup.traced.base.items()}, torch.zeros_like(inputs[0])
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
    return lambda: _run(ep, model, inputs, wanted, patches)


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
    seq, vocab = (traced.program.dim_table[d].size for d in ("T", "V"))
    m = Measurements()
    # about 16 token vectors a step, as the engine's own check (measure.VECTORS_PER_STEP)
    batch = batch or default_batch_size(traced.program)
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        x = torch.randint(vocab, (batch, seq), generator=g).to(device)
        y = torch.randint(vocab, (batch, seq), generator=g).to(device)
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
            read = probe(mup, model, (x,))
            m.record(w, 0, read(), seed)
            model.eval()  # dropout's noise is no width effect: the check trains without it
            for t in range(1, steps + 1):
                logits = _logits(model(x))
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                m.record(w, t, read(), seed)
            mup.remove_patches(model)
    optimizer = mup.derivation.optimizer
    abc = derive(mup.program, optimizer).abc  # µP's desiderata, in the default convention
    result = judge(mup.program, optimizer, abc, m, against="mup", tolerance=tolerance or TOLERANCE)
    result.settings.update(lr=lr, label="µP applied" if apply else "as it comes")
    result.names = module_paths(mup)
    return result


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
