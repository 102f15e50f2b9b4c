"""Apply a traced model's µP to the model itself: init in place, LR per param group, and the
forward multipliers folded into init and LR wherever the abc-symmetry allows.

A forward multiplier n^-θ on a param is, exactly (for the function and the whole training
trajectory), an init exponent b + θ and an LR exponent c + kθ (k = 1 for Adam/AdamW, 2 for SGD;
THEORY.md §1). So every derived (a, b, c) folds to a = 0: init std ∝ n^-(a+b), LR ∝ n^-(c+ka).
A derived `scale` (attention's 1/d against the model's own 1/√d) is a multiplier on the logits,
which are linear in the query: it folds into the query weight and bias when they are tensors of
their own. Where it cannot fold (a query that is a row block of a fused qkv weight, whose LR
cannot differ from k's and v's; a tied unembedding, whose matrix is also the embedding) a forward
hook multiplies the module's output (or its query rows) instead, and the report says so.

Everything is relative to the base width (the first traced width): there the model keeps its
own init and the LR given, so hyperparameters tuned there transfer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import UsageError
from .trace import Traced, convert, export, strip_prefix


@dataclass
class Patch:
    """A forward multiplier (width/base)^-exponent on a module's output (rows: its query block)."""

    module: str
    node: str
    exponent: Fraction
    rows: tuple[Fraction, Fraction] | None
    why: str


@dataclass
class Report:
    width: int
    lines: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([f"µP applied at width {self.width}:", *self.lines])


class MuP:
    """µP for a traced model: ``apply(model)``, ``param_groups(model, lr)``, ``probe``."""

    def __init__(self, traced: Traced, optimizer: str = "adam", convention: str = "table3"):
        from . import derive

        self.traced = traced
        self.program = traced.program
        self.derivation = derive(self.program, optimizer, convention)
        k = self.derivation.optimizer.a_coef
        abc = self.derivation.abc
        self.init_exp = {p: Fraction(str(abc[p].a + abc[p].b)) for p in traced.params}
        self.lr_exp = {p: Fraction(str(abc[p].c + k * abc[p].a)) for p in traced.params}
        self.folded: list[str] = []
        self.patches: list[Patch] = []
        for name, info in traced.scales.items():
            delta = Fraction(str(abc[name].a)) - info["model_a"]
            if delta == 0:
                continue
            if "q" in info:
                self._fold_query(name, info, delta, k)
            else:
                self.patches.append(
                    Patch(
                        info["module"],
                        info["node"],
                        delta,
                        None,
                        f"tied unembedding {info['tied']}: multiplier "
                        f"(n/base)^-{delta} (its matrix is also the lookup)",
                    )
                )
        self._hooks: dict[int, list] = {}

    def _fold_query(self, scale: str, info: dict, delta: Fraction, k: int) -> None:
        w, b = self.traced.producers[info["q"]]
        use = self.traced.params[w]
        if use.rows is None:
            for p in (w, b):
                if p:
                    self.init_exp[p] += delta
                    self.lr_exp[p] += k * delta
            self.folded.append(
                f"{scale}: (n/base)^-{delta} folded into the init and LR of "
                f"{use.target}" + (f" and {self.traced.params[b].target}" if b else "")
            )
        else:
            self.patches.append(
                Patch(
                    use.module,
                    use.node,
                    delta,
                    use.rows,
                    f"{scale}: query rows of fused {use.target} times "
                    f"(n/base)^-{delta} (its LR is shared with k and v)",
                )
            )

    # -- the model's width -------------------------------------------------------------------
    def width_of(self, model) -> int:
        found = set()
        for name, use in self.traced.params.items():
            shape = self.program.param_table[name].shape
            tensor = model.get_parameter(use.target)
            tshape = list(tensor.shape)[::-1] if use.transposed else list(tensor.shape)
            for axis, d in enumerate(shape):
                dim = self.program.dim_table[d]
                if dim.infinite:
                    size = Fraction(tshape[axis])
                    if axis == 0 and use.rows:
                        size *= use.rows[1] - use.rows[0]
                    found.add(size / dim.mult)
        if len(found) != 1 or next(iter(found)).denominator != 1:
            raise UsageError(
                f"cannot tell this model's width: its params give {sorted(found)}",
                help="pass a model built by the traced build(width)",
            )
        return int(next(iter(found)))

    def _view(self, model, use):
        t = model.get_parameter(use.target)
        if use.rows is None:
            return t
        axis = 1 if use.transposed and t.dim() == 2 else 0
        size = t.shape[axis]
        lo, hi = (int(r * size) for r in use.rows)
        return t.narrow(axis, lo, hi - lo)

    # -- init, forward patches, LR ------------------------------------------------------------
    def apply(self, model) -> Report:
        """Re-scale every normally initialised param to its µP std at this model's width (the
        model's own std at the base width times (n/base)^-(a+b)), and register the forward
        patches that cannot fold. Idempotent per model."""
        import torch

        width = self.width_of(model)
        r = width / self.traced.base_width
        report = Report(width)
        with torch.no_grad():
            for name, use in self.traced.params.items():
                kind, sigma = self.traced.base.get(use.target, ("normal", None))
                if kind == "const" or sigma is None:
                    continue
                view = self._view(model, use)
                target = sigma * r ** -float(self.init_exp[name])
                current = float(view.double().std())
                if current > 0:
                    view.mul_(target / current)
                report.lines.append(
                    f"init {use.target}{_rows(use)}: std {current:.4g} -> "
                    f"{target:.4g} (base {sigma:.4g} x (n/base)^"
                    f"-{self.init_exp[name]})"
                )
        report.lines += [f"folded {f}" for f in self.folded]
        self.remove_patches(model)
        handles = []
        for p in self.patches:
            handles.append(
                model.get_submodule(p.module).register_forward_hook(
                    _hook(r ** -float(p.exponent), p.rows)
                )
            )
            report.patched.append(p.module)
            report.lines.append(f"patched forward of {p.module or 'the model'}: {p.why}")
        self._hooks[id(model)] = handles
        return report

    def remove_patches(self, model) -> None:
        for h in self._hooks.pop(id(model), []):
            h.remove()

    def lr_multipliers(self, model) -> dict[str, float]:
        """Per torch param name: the factor on the base LR at this model's width."""
        r = self.width_of(model) / self.traced.base_width
        out: dict[str, float] = {}
        for name, use in self.traced.params.items():
            m = r ** -float(self.lr_exp[name])
            if use.target in out and not math.isclose(out[use.target], m):
                raise UsageError(
                    f"{use.target}: its row blocks need different LRs "
                    f"({out[use.target]:g} and {m:g})",
                    help="split the fused layer into separate nn.Linear layers",
                )
            out[use.target] = m
        return out

    def param_groups(self, model, lr: float, **options) -> list[dict]:
        """torch.optim param groups: one per LR multiplier, ``lr`` times it; ``options`` (e.g.
        weight_decay) go to every group. Params outside the program keep ``lr``."""
        mult = self.lr_multipliers(model)
        groups: dict[float, list] = {}
        for name, p in model.named_parameters():
            groups.setdefault(mult.get(name, 1.0), []).append(p)
        return [{"params": ps, "lr": lr * m, **options} for m, ps in sorted(groups.items())]

    # -- measuring the model's own vectors -----------------------------------------------------
    def probe(self, model, inputs):
        """A function returning {program vector: tensor} for the model's current params on
        ``inputs``, through the model's own graph (with the forward patches)."""
        import torch

        handles = self._hooks.get(id(model), [])
        self.remove_patches(model)
        try:
            ep = export(model, inputs)
        finally:
            if handles:
                self._hooks[id(model)] = handles
                self._reregister(model)
        trace = convert(
            ep, {"m." + k: v for k, v in self.traced.base.items()}, torch.zeros_like(inputs[0])
        )
        if trace.decls + trace.stmts != self.traced.templates:
            raise UsageError(
                "this model's graph differs from the traced one",
                help="probe a model built by the traced build(width)",
            )
        r = self.width_of(model) / self.traced.base_width
        patches = (
            {p.node: (r ** -float(p.exponent), p.rows) for p in self.patches}
            if id(model) in self._hooks
            else {}
        )
        # the program's query is W_q x without the multiplier that moved onto it
        unfold = (
            {}
            if id(model) not in self._hooks
            else {
                info["q"]: r ** float(Fraction(str(self.derivation.abc[s].a)) - info["model_a"])
                for s, info in self.traced.scales.items()
                if "q" in info
            }
        )
        wanted = {}
        for vec, (node, kind) in trace.vectors.items():
            wanted.setdefault(node, []).append((vec, kind, unfold.get(vec, 1.0)))
        return lambda: _run(ep, model, inputs, wanted, patches)

    def _reregister(self, model) -> None:
        r = self.width_of(model) / self.traced.base_width
        self._hooks[id(model)] = [
            model.get_submodule(p.module).register_forward_hook(
                _hook(r ** -float(p.exponent), p.rows)
            )
            for p in self.patches
        ]


def _rows(use) -> str:
    return f"[{use.rows[0]}:{use.rows[1]} of rows]" if use.rows else ""


def _scale_rows(out, factor: float, rows):
    if rows is None:
        return out * factor
    size = out.shape[-1]
    lo, hi = (int(r * size) for r in rows)
    scale = out.new_ones(size)
    scale[lo:hi] = factor
    return out * scale


def _hook(factor: float, rows):
    def hook(module, args, out):
        return _scale_rows(out, factor, rows)

    return hook


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
                out = _scale_rows(out, *patches[n.name])
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
    lr: float = 1e-2,
    apply: bool = True,
    batch: int = 4,
    tolerance: float | None = None,
    eps: float = 1e-12,
):
    """The coordinate check of the user's own model: build it at each width (µP applied, or
    as it comes with ``apply=False``), train ``steps`` Adam(W) steps on fixed random tokens
    (next-token cross-entropy) and judge every program vector's slope against µP."""
    import torch

    from . import judge
    from .coordcheck import TOLERANCE, Measurements

    traced = mup.traced
    seq, vocab = (traced.program.dim_table[d].size for d in ("T", "V"))
    m = Measurements()
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        x = torch.randint(vocab, (batch, seq), generator=g)
        y = torch.randint(vocab, (batch, seq), generator=g)
        for w in widths:
            torch.manual_seed(seed)
            model = traced.build(w)
            if apply:
                mup.apply(model)
                groups = mup.param_groups(model, lr)
            else:
                groups = [{"params": list(model.parameters()), "lr": lr}]
            opt = (
                torch.optim.SGD(groups, lr=lr)
                if mup.derivation.optimizer.name == "sgd"
                else torch.optim.AdamW(groups, lr=lr, weight_decay=0.0, eps=eps)
            )
            probe = mup.probe(model, (x,))
            m.record(w, 0, probe(), seed)
            model.train()
            for t in range(1, steps + 1):
                logits = _logits(model(x))
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                m.record(w, t, probe(), seed)
            mup.remove_patches(model)
    return judge(mup.program, m, mup.derivation.optimizer.name, tolerance=tolerance or TOLERANCE)


def _logits(out):
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out
