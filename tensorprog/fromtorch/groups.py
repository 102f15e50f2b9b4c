"""``MuP``'s optimizer side (apply.py's class takes it as a base): the LR and Adam eps
multiplier of each torch tensor at a model's width and depth, and torch.optim param groups made
of them, with weight decay in one of three meanings."""

from __future__ import annotations

import math
import warnings

from ..engine.derivation import DECAY_MODES
from ..errors import UsageError
from .columns import column_scales
from .decay import decay_rule
from .gradscale import eps_blocks


class OptimizerGroups:
    """The param groups of a ``MuP`` (its ``lr_exp``/``eps_exp`` and their depth exponents,
    its ``_uses``, ``width_of`` and ``_depth_ratio``, its tuned LR)."""

    @property
    def _adam(self) -> bool:
        """Whether the optimizer steps every param with Adam's eps (not Muon's matrices)."""
        return self.derivation.optimizer.name in ("adam", "adamw")

    def eps_multipliers(self, model, base_depth: int | None = None) -> dict[str, float]:
        """Per torch param name: the factor on Adam's base eps at this model's width and depth
        (empty under SGD; a param without an eps exponent, none of its gradient reaching it, is
        left out and keeps the base eps). A tensor whose blocks need different eps values gets
        its largest block's; ``apply`` scales the others' gradients (gradscale.py)."""
        return eps_blocks(self, model, base_depth)[0]

    def grad_scales(self, model, base_depth: int | None = None) -> dict:
        """Per torch param name whose blocks need different Adam eps values: the scale of its
        gradient (a tensor of its shape) that gives each block its own with the group's eps
        (gradscale.py); ``apply`` registers it as a hook. Empty at the base width, and under
        an optimizer without Adam's eps."""
        if not self._adam:
            return {}
        return eps_blocks(self, model, base_depth)[1]

    def column_scales(self, model, base_depth: int | None = None) -> dict:
        """Per torch param name whose column blocks need different LRs at this model's width
        and depth: its ``ColumnScale`` (columns.py), the scale s of its input's columns that
        ``apply``'s pre-hook multiplies in (the tensor holding W / s) and its group's LR
        factor. Empty at the base width and depth."""
        return column_scales(self, model, base_depth)

    def lr_multipliers(self, model, base_depth: int | None = None) -> dict[str, float]:
        """Per torch param name: the factor on the base LR at this model's width and depth. A
        tensor whose column blocks need different LRs gets its widest block's; ``apply``
        carries the others' by a scale of its columns (columns.py)."""
        cols = {t: c.lr for t, c in column_scales(self, model, base_depth).items()}
        return self._per_tensor(model, self.lr_exp, self.lr_exp_L, "LRs", base_depth, cols)

    def _per_tensor(self, model, exponents: dict, in_depth: dict, what: str,
                    base_depth: int | None = None, given: dict | None = None) -> dict[str, float]:
        """(width/base)^-e (depth/base)^-e_L per torch tensor, for the program params that have
        an exponent e; the row blocks of one fused tensor must agree, since a tensor has one
        optimizer group. ``given``: tensors whose factor is set (their blocks' differ)."""
        given = given or {}
        r = self.width_of(model) / self.traced.base_width
        rd = self._depth_ratio(model, base_depth)
        out: dict[str, float] = {}
        rows: set[str] = set()  # tensors with a row read as a vector of its own
        entries: dict[str, tuple] = {}  # a 1-D param read entry by entry -> its exponents
        for name, use, _ in self._uses(model):
            if name not in exponents or use.target in given:
                continue
            m = r ** -float(exponents[name]) * rd ** -float(in_depth.get(name, 0))
            e = (exponents[name], in_depth.get(name, 0))
            if use.entries and entries.setdefault(use.target, e) != e:  # at any width
                raise UsageError(
                    f"{use.target}: its entries read as numbers need different {what} "
                    f"((n/base)^-{entries[use.target][0]} and (n/base)^-{e[0]}), and a tensor "
                    "has one optimizer group", use.span,
                    help="make each number its own one-entry param (nn.Parameter(torch.ones(1)))",
                )
            if use.index is not None and not use.entries:
                rows.add(use.target)
            if use.target in out and not math.isclose(out[use.target], m) and \
                    use.target in rows:
                raise UsageError(
                    f"{use.target}: a row of it read as a vector of its own (a lookup of one "
                    f"constant id, or table[i]) and its other uses need different {what} "
                    f"({out[use.target]:g} and {m:g}), and a tensor has one optimizer group",
                    use.span,
                    help="make the row a param of its own (nn.Parameter), or read the table "
                    "only one way",
                )
            if use.target in out and not math.isclose(out[use.target], m):
                raise UsageError(
                    f"{use.target}: its row blocks need different {what} "
                    f"({out[use.target]:g} and {m:g})",
                    help="split the fused layer into separate nn.Linear layers",
                )
            out[use.target] = m
        return {**out, **given}

    def param_groups(
        self,
        model,
        lr: float | None = None,
        weight_decay: float = 0.0,
        decay: str | None = None,
        eps: float = 1e-8,
        decay_params="matrices",
        base_depth: int | None = None,
        **options,
    ) -> list[dict]:
        """torch.optim param groups: one per LR multiplier (and, under Adam/AdamW, Adam's eps),
        ``lr`` times it; ``options`` go to every group. Params outside the program keep ``lr``
        (and ``eps``), with a warning naming them (none for a param whose result reaches no
        output: no gradient reaches it, so it does not move).

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
        names (``named_parameters``); or a function ``(name, param) -> bool``.

        For a traced stack, every factor also carries the depth's, (depth/base_depth)^-e_L
        (``base_depth`` defaults to the MuP's). Without ``lr``, the tuned one (``config``)."""
        if lr is None:
            if self.tuned is None:
                raise UsageError("param_groups needs lr",
                                 help="give lr=..., or MuP(traced, ..., config=FILE) with the "
                                      "file `tensorprog tune -o FILE` wrote")
            lr = self.tuned.lr
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
        decayed = decay_rule(model, decay_params)
        # a param no output reaches gets no gradient: its LR moves nothing (apply names it);
        # nor does one the model does not train (AFMoE's expert_bias, set outside the gradient)
        unreached = set(self.unreached(model))
        outside = [name for name in self.uncovered(model) if name not in unreached
                   and model.get_parameter(name).requires_grad]
        if outside:
            warnings.warn(
                f"not in the traced program, so they keep lr {lr:g} unchanged at every width: "
                + ", ".join(outside),
                stacklevel=2,
            )
        mult = self.lr_multipliers(model, base_depth)
        self._columns_held(model, base_depth, decay, weight_decay, decayed)
        adam = self._adam
        eps_mult = self._eps_scaled(model, base_depth, decay, weight_decay, decayed) if adam \
            else {}
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

    def _columns_held(self, model, base_depth, decay, weight_decay, decayed) -> None:
        """A UsageError unless every tensor whose column blocks need different LRs has its
        column scale registered by ``apply`` (at the same base depth) on the modules the model
        holds now, and no weight decay acts on it otherwise than as a shrink by λ a step
        (``"independent"``): W = s ⊙ V moves as V does, and V's group shrinks every column by
        the same amount, where µP's blocks would shrink by lr_b·λ (``"decoupled"``), or an L2
        decay λV in V's gradient is λW/s, not the s·λW a block's own step would take."""
        import torch

        held = self._col_scales.get(id(model), {}) if self.patched(model) else {}
        for target, cs in column_scales(self, model, base_depth).items():
            mine = held.get(target)
            if mine is None or not torch.equal(mine[0].scale, cs.scale):
                raise UsageError(
                    f"{target}: its column blocks need different LRs, which a scale of its "
                    "columns carries once apply registers it"
                    + (" (apply ran at another base depth)" if mine else ""), cs.span,
                    help="call mup.apply(model) (with the same base_depth) before "
                    "param_groups(model, ...)",
                )
            if mine[1] != [id(model.get_submodule(m)) for m in cs.modules]:
                raise UsageError(
                    f"{target}: its column blocks need different LRs, which a pre-hook on "
                    f"{', '.join(cs.modules)} carries, and the model holds other modules there "
                    "now (a wrapper replaced them after apply): the hook is not called",
                    cs.span, help="call mup.apply(model) on the model as it is trained",
                )
            if weight_decay and decay != "independent" and decayed(
                    target, model.get_parameter(target)):
                raise UsageError(
                    f"{target}: its column blocks need different LRs, carried by a scale s of "
                    f"its columns (the tensor holds W / s); a {decay} weight decay would act "
                    "on each block otherwise than on a tensor of its own",
                    cs.span,
                    help="use decay='independent' (w shrinks by λ a step, the same for every "
                    "block), or leave the tensor out of the decay (decay_params)",
                )

    def _span_of(self, model, target: str):
        """The line of a block of tensor ``target``: its concatenation's, or its layer's."""
        for _, use, _ in self._uses(model):
            if use.target == target and (use.cols is not None and use.cols.span or use.span):
                return use.cols.span if use.cols is not None and use.cols.span else use.span
        return None

    def _eps_scaled(self, model, base_depth, decay, weight_decay, decayed) -> dict[str, float]:
        """``eps_multipliers``, where every tensor whose blocks need different eps values has
        its gradient scale registered by ``apply`` (at the same base depth), and no L2 decay
        enters its gradient after that scale; a UsageError otherwise."""

        factors, scales = eps_blocks(self, model, base_depth)
        held = self._grad_scales.get(id(model), {}) if self.patched(model) else {}
        for target, scale in scales.items():
            if target in held and held[target][1] != id(model.get_parameter(target)):
                raise UsageError(
                    f"{target}: its blocks need different Adam eps values, which a hook on its "
                    "param object gives them, and the model holds another param object there "
                    "now (a wrapper such as FSDP replaced it after apply): the hook is not "
                    "called", self._span_of(model, target),
                    help="use one nn.Linear per block, or take param_groups and "
                    "mup.grad_scales(model) before the wrap and multiply the gradient by its "
                    "scale yourself before each step",
                )
            if target not in held or not _same_scale(held[target][0], scale):
                raise UsageError(
                    f"{target}: its blocks need different Adam eps values, which a scale of "
                    "its gradient gives them once apply registers it"
                    + (" (apply ran at another base depth)" if target in held else ""),
                    self._span_of(model, target),
                    help="call mup.apply(model) (with the same base_depth) before "
                    "param_groups(model, ...)",
                )
            if decay == "coupled" and weight_decay and decayed(target, model.get_parameter(
                    target)):
                raise UsageError(
                    f"{target}: its blocks need different Adam eps values, given by a scale "
                    "of its gradient; a coupled (L2) weight decay adds λw to the gradient "
                    "inside Adam's step, after that scale, and would be scaled otherwise than "
                    "the gradient in each block", self._span_of(model, target),
                    help="use decay='decoupled' or 'independent' (torch's AdamW), or leave "
                    "the tensor out of the decay (decay_params)",
                )
        return factors


def _same_scale(held, scale) -> bool:
    """Whether the gradient scale apply registered is ``scale``, recomputed now: to the
    precision of the coarser of their dtypes (a model moved to float64 after apply reads
    1/9 closer than the float32 scale held; to bfloat16, less closely)."""
    import torch

    if held.shape != scale.shape:
        return False
    tol = max(torch.finfo(held.dtype).eps, torch.finfo(scale.dtype).eps)
    return torch.allclose(held.double(), scale.to(held.device).double(), rtol=tol, atol=0)
