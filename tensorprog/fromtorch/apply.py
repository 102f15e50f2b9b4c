"""Apply a traced model's µP to the model itself: init in place, LR per param group, and the
forward multipliers folded into init and LR wherever the abc-symmetry allows.

A forward multiplier n^-θ on a param is, exactly (for the function and the whole training
trajectory), an init exponent b + θ and an LR exponent c + kθ (k = 1 for Adam/AdamW, 2 for SGD;
docs/theory.md). So every derived (a, b, c) folds to a = 0: init std ∝ n^-(a+b), LR ∝ n^-(c+ka).
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
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

from ..engine.derivation import DECAY_MODES
from ..engine.derive import derive
from ..engine.optimizers import resolve
from ..errors import Diagnostic, EngineError, UsageError
from .trace import Traced


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

    def as_dict(self) -> dict:
        return {"width": self.width, "changes": list(self.lines), "patched": list(self.patched)}


class MuP:
    """µP for a traced model: ``apply(model)``, ``param_groups(model, lr)``, ``probe``."""

    def __init__(self, traced: Traced, optimizer: str = "adam", convention: str = "table3"):
        self.traced = traced
        self.program = traced.program
        self.derivation = _derive(traced, self.program, resolve(optimizer), convention)
        k = self.derivation.optimizer.a_coef
        abc = self.derivation.abc
        self.init_exp = {p: Fraction(str(abc[p].a + abc[p].b)) for p in traced.params}
        self.lr_exp = {p: Fraction(str(abc[p].c + k * abc[p].a)) for p in traced.params}
        # Adam's ε ∝ the entries of the param's gradient, n^-e for the program's param, whose
        # multiplier n^-a is in the forward; folded into the param, its gradient is n^a times
        # that: ε ∝ n^-(e - a). Empty under SGD.
        self.eps_exp = {
            p: Fraction(str(e)) - Fraction(str(abc[p].a)) for p, e in self.derivation.eps.items()
        }
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
        self._hooks: dict[int, list] = {}  # id(model) -> its forward hooks
        # (width, input shapes) -> (exported graph, its trace), reused by check.probe
        self.graphs: dict = {}

    def _fold_query(self, scale: str, info: dict, delta: Fraction, k: int) -> None:
        if info["q"] not in self.traced.producers:
            # the query is no linear layer's output (a norm of it: QK-norm), so no weight's init
            # and LR carry the logits' factor; refused rather than applied to the wrong tensor
            raise UsageError(
                f"µP changes the attention scale {scale} by (n/base)^-{delta}, which folds into "
                f"the query's weight, but the query {info['q']} is not a linear layer's output "
                "(a norm applied to it, as QK-norm, takes the factor out again)",
                help="build the model with heads of a fixed dim (head_dim constant, the head "
                "count growing with the width): its attention scale needs no change",
            )
        w, b = self.traced.producers[info["q"]]
        use = self.traced.params[w]
        if use.rows is None:
            for p in (w, b):
                if p:
                    self.init_exp[p] += delta
                    self.lr_exp[p] += k * delta
                    if p in self.eps_exp:
                        self.eps_exp[p] -= delta
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
                if kind == "const" or sigma is None or width == self.traced.base_width:
                    continue  # at the base width the model keeps its own init, exactly
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
        report.lines += [
            f"not in the program: {name} keeps its init and the LR given (µP does not reach it)"
            for name in self.uncovered(model)
        ]
        self.remove_patches(model)
        report.patched = self._register(model, r)
        report.lines += [
            f"patched forward of {p.module or 'the model'}: {p.why}" for p in self.patches
        ]
        return report

    def remove_patches(self, model) -> None:
        for h in self._hooks.pop(id(model), []):
            h.remove()

    def uncovered(self, model) -> list[str]:
        """The model's params that the program has not: a part of the forward the trace does
        not reach (or a param the forward never uses). µP says nothing about them."""
        covered = {id(model.get_parameter(u.target)) for u in self.traced.params.values()}
        return [name for name, p in model.named_parameters() if id(p) not in covered]

    def eps_multipliers(self, model) -> dict[str, float]:
        """Per torch param name: the factor on Adam's base eps at this model's width (empty
        under SGD; a param without an eps exponent, none of its gradient reaching it, is left
        out and keeps the base eps)."""
        return self._per_tensor(model, self.eps_exp, "Adam eps")

    def lr_multipliers(self, model) -> dict[str, float]:
        """Per torch param name: the factor on the base LR at this model's width."""
        return self._per_tensor(model, self.lr_exp, "LRs")

    def _per_tensor(self, model, exponents: dict, what: str) -> dict[str, float]:
        """(width/base)^-e per torch tensor, for the program params that have an exponent e; the
        row blocks of one fused tensor must agree, since a tensor has one optimizer group."""
        r = self.width_of(model) / self.traced.base_width
        out: dict[str, float] = {}
        for name, use in self.traced.params.items():
            if name not in exponents:
                continue
            m = r ** -float(exponents[name])
            if use.target in out and not math.isclose(out[use.target], m):
                raise UsageError(
                    f"{use.target}: its row blocks need different {what} "
                    f"({out[use.target]:g} and {m:g})",
                    help="split the fused layer into separate nn.Linear layers",
                )
            out[use.target] = m
        return out

    def param_groups(
        self,
        model,
        lr: float,
        weight_decay: float = 0.0,
        decay: str | None = None,
        eps: float = 1e-8,
        decay_params="matrices",
        **options,
    ) -> list[dict]:
        """torch.optim param groups: one per LR multiplier (and, under Adam/AdamW, Adam's eps),
        ``lr`` times it; ``options`` go to every group. Params outside the program keep ``lr``
        (and ``eps``), with a warning naming them.

        Under Adam/AdamW each group's ``eps`` is ``eps`` scaled as its params' gradient entries
        (derive's eps exponents, the forward multipliers folded): ``eps`` itself at the base
        width, so that it stays as small against the gradient at every width.

        ``decay`` says what ``weight_decay`` (λ) means, as in an emitted module's param_groups
        (required when λ is not 0; lr_p is the group's lr): ``"coupled"`` and ``"decoupled"``
        pass λ as given, for an optimizer that adds λw to the gradient (torch's SGD, Adam) or
        shrinks w by lr_p·λ a step (torch's AdamW); ``"independent"`` sets the group's
        weight_decay to λ/lr_p, so that AdamW shrinks every weight by λ a step at every width
        (the mup package's MuAdamW is this mode with λ = lr·weight_decay).

        ``decay_params`` says which params λ reaches (the rest get weight_decay 0), as in an
        emitted module: ``"matrices"`` (default) every param of 2 or more dims, weight matrices
        and embedding tables, not LayerNorm gains or biases (the GPT-2 convention: decay pulls
        a gain to 0, not to its init 1); ``"all"`` every param; a set of the model's param
        names (``named_parameters``); or a function ``(name, param) -> bool``."""
        # as an emitted module's param_groups: a NaN, infinite or negative rate is multiplied
        # into every group and makes the weights NaN (or climb the loss) at the first step
        for what, value in (("lr", lr), ("weight_decay", weight_decay), ("eps", eps)):
            if not 0 <= value < math.inf:
                raise UsageError(f"{what} must be a finite number >= 0, not {value!r}")
        if decay is None and weight_decay:
            raise UsageError(
                "say what weight_decay means: decay='coupled' (L2 in the gradient), "
                "'decoupled' (torch AdamW: w shrinks by lr_p * wd a step) or 'independent' "
                "(w shrinks by wd a step at every width)"
            )
        if decay is not None and decay not in DECAY_MODES:
            raise UsageError(f"decay must be one of {', '.join(DECAY_MODES)}, not {decay!r}")
        decayed = _decay_rule(model, decay_params)
        outside = self.uncovered(model)
        if outside:
            warnings.warn(
                f"not in the traced program, so they keep lr {lr:g} unchanged at every width: "
                + ", ".join(outside),
                stacklevel=2,
            )
        mult = self.lr_multipliers(model)
        adam = self.derivation.optimizer.name in ("adam", "adamw")
        eps_mult = self.eps_multipliers(model) if adam else {}
        # by tensor: a tied one is named once in named_parameters, maybe not as in the program
        mult = {id(model.get_parameter(k)): m for k, m in mult.items()}
        eps_mult = {id(model.get_parameter(k)): m for k, m in eps_mult.items()}
        groups: dict[tuple, list] = {}
        for name, p in model.named_parameters():
            # without decay, decayed and undecayed params share a group (one fewer to step)
            decays = bool(weight_decay) and decayed(name, p)
            key = (mult.get(id(p), 1.0), eps_mult.get(id(p), 1.0), decays)
            groups.setdefault(key, []).append(p)
        out = []
        for (m, e, decays), ps in sorted(groups.items()):
            lr_p = lr * m
            wd = weight_decay / lr_p if decay == "independent" and lr_p else weight_decay
            wd = wd if decays else 0.0
            group = {"params": ps, "lr": lr_p, "weight_decay": wd, **options}
            if adam:
                group["eps"] = eps * e
            out.append(group)
        return out

    # -- measuring the model's own vectors -----------------------------------------------------
    def patched(self, model) -> bool:
        """Whether ``apply`` registered its forward patches on this model."""
        return id(model) in self._hooks

    @contextmanager
    def unpatched(self, model):
        """The model without its forward patches for the duration (to export its graph)."""
        had = self.patched(model)
        self.remove_patches(model)
        try:
            yield model
        finally:
            if had:
                r = self.width_of(model) / self.traced.base_width
                self._register(model, r)

    def _register(self, model, r: float) -> list[str]:
        handles, modules = [], []
        for p in self.patches:
            module = model.get_submodule(p.module)
            handles.append(module.register_forward_hook(_hook(r ** -float(p.exponent), p.rows)))
            modules.append(p.module)
        self._hooks[id(model)] = handles
        return modules

    def unfolded(self, model) -> dict[str, float]:
        """Per query vector of the program: the factor that undoes the attention multiplier
        folded into it (the program's query is W_q x without it)."""
        if not self.patched(model):
            return {}
        r = self.width_of(model) / self.traced.base_width
        return {
            info["q"]: r ** float(Fraction(str(self.derivation.abc[s].a)) - info["model_a"])
            for s, info in self.traced.scales.items()
            if "q" in info
        }

    def patch_factors(self, model) -> dict[str, tuple]:
        """Graph node -> (factor, rows) of each forward patch registered on the model."""
        if not self.patched(model):
            return {}
        r = self.width_of(model) / self.traced.base_width
        return {p.node: (r ** -float(p.exponent), p.rows) for p in self.patches}


def _derive(traced: Traced, program, optimizer, convention: str):
    """derive, whose refusal of a traced program also gives the trace's notes (a width dim
    fixed by the config): they name the cause where the engine sees only its effect, a vector
    that vanishes at init."""
    try:
        return derive(program, optimizer, convention)
    except EngineError as err:
        if not traced.notes:
            raise
        notes = [Diagnostic(f"the trace noted: {note}", severity="note") for note in traced.notes]
        raise EngineError(err.diagnostics + notes) from None


def _rows(use) -> str:
    return f"[{use.rows[0]}:{use.rows[1]} of rows]" if use.rows else ""


def scale_rows(out, factor: float, rows):
    if rows is None:
        return out * factor
    size = out.shape[-1]
    lo, hi = (int(r * size) for r in rows)
    scale = out.new_ones(size)
    scale[lo:hi] = factor
    return out * scale


def _hook(factor: float, rows):
    def hook(module, args, out):
        return scale_rows(out, factor, rows)

    return hook


def _decay_rule(model, decay_params):
    """(name, param) -> whether weight decay reaches it, from param_groups' ``decay_params``;
    a UsageError for anything else, or for a name the model has no param by (a typo would
    silently leave that param undecayed)."""
    if decay_params == "matrices":
        return lambda name, p: p.dim() >= 2
    if decay_params == "all":
        return lambda name, p: True
    if callable(decay_params):
        return lambda name, p: bool(decay_params(name, p))
    if isinstance(decay_params, str) or not hasattr(decay_params, "__iter__"):
        raise UsageError(
            "decay_params must be 'matrices', 'all', a function (name, param) -> bool or a set "
            f"of the model's param names, not {decay_params!r}"
        )
    names = dict(model.named_parameters())
    unknown = sorted(set(decay_params) - set(names))
    if unknown:
        raise UsageError(
            f"decay_params names no param of the model: {', '.join(unknown)} "
            "(see model.named_parameters())"
        )
    chosen = set(decay_params)
    return lambda name, p: name in chosen
