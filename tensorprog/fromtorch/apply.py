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

import itertools
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction

from ..engine.optimizers import resolve
from ..errors import UsageError
from .columns import block_scale, check_shared_lr, column_range, column_scales, input_hook
from .depth import DepthScaling
from .derived import derive_traced
from .gradscale import block_of, eps_blocks, grad_hook, scale_lines
from .groups import OptimizerGroups
from .hand_set import hand_set_init
from .init_stats import block_key
from .normed import l2_taken, query_norm_patch
from .patches import (
    Patch,
    claim,
    drop_compiled,
    groups_of,
    hook,
    mark,
    modules_at,
    release,
    strip,
)
from .query_fold import (
    fold_query,
    one_side_alone,
    outside_bias,
    query_layer,
    query_patch,
    query_read_alone,
    scale_span,
    shared_query_layers,
)
from .reinit import draw_seed, padding_rows, rescale
from .rows import row_range
from .scale_attr import ScaleAttr, set_scales, shared_scales
from .standardised import fold_standardised
from .trace import Traced
from .tuned import tuned_for, tuned_multipliers
from .values import ParamUse, init_of
from .where import strip_prefix

_TOKENS = itertools.count(1)  # one per MuP


@dataclass
class Report:
    width: int
    lines: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    depth: tuple[int, int] | None = None  # (the model's depth, the base depth) for a stack

    def __str__(self) -> str:
        at = f" and depth {self.depth[0]} (base {self.depth[1]})" if self.depth else ""
        return "\n".join([f"µP applied at width {self.width}{at}:", *self.lines])

    def as_dict(self) -> dict:
        return {
            "width": self.width,
            **({"depth": self.depth[0], "base_depth": self.depth[1]} if self.depth else {}),
            "changes": list(self.lines),
            "patched": list(self.patched),
        }


class MuP(DepthScaling, OptimizerGroups):
    """µP for a traced model: ``apply(model)``, ``param_groups(model, lr)``, ``probe``.

    For a model whose stack of layers was traced as a block repeated over the depth L, the
    model's depth is its stack's length, and every factor is (width/base)^-e times
    (depth/base_depth)^-e_L; ``base_depth`` (here, or per call) defaults to the traced depth.

    ``config`` (a ``tensorprog tune -o`` file, its JSON or ``load_config``'s result) gives the
    tuned base constants: ``apply`` initialises each tuned param at its tuned std at the base
    width (times the same factors elsewhere) instead of the model's own, and ``param_groups``
    takes the tuned lr when none is given. A file tuned for another program, parametrization,
    convention, optimizer or base is refused (tuned.py)."""

    def __init__(
        self,
        traced: Traced,
        optimizer: str = "adam",
        convention: str = "table3",
        base_depth: int | None = None,
        config=None,
    ):
        self.traced = traced
        self.stack = traced.stack
        self.base_depth = self._check_base_depth(base_depth)
        self.program = traced.program
        self.derivation = derive_traced(traced, self.program, resolve(optimizer), convention)
        k = self.derivation.optimizer.a_coef
        abc = self.derivation.abc
        # a traced param whose result reaches no output of the forward (BERT's pooler under a
        # masked-LM head: computed, then dropped) gets no gradient, and derive leaves it out
        # (with a warning): µP has nothing to say of it, so it keeps its init and LR as well
        self.unused = [p for p in traced.params if p not in abc]
        self.init_exp = {p: Fraction(str(abc[p].a + abc[p].b)) for p in traced.params
                         if p in abc}
        self.lr_exp = {p: Fraction(str(abc[p].c + k * abc[p].a)) for p in traced.params
                       if p in abc}
        # Adam's ε ∝ the entries of the param's gradient, n^-e for the program's param, whose
        # multiplier n^-a is in the forward; folded into the param, its gradient is n^a times
        # that: ε ∝ n^-(e - a). Empty under SGD.
        self.eps_exp = {
            p: Fraction(str(e)) - Fraction(str(abc[p].a)) for p, e in self.derivation.eps.items()
        }
        self._depth_exponents(k)
        self.folded: list[str] = []
        self.const_fold: dict[str, Fraction] = {}  # param -> multiplier folded into it
        self.patches: list[Patch] = []
        fold_standardised(self)  # its multiplier a patch, not in its init (standardised.py)
        self.own_patch: set[str] = set()  # vectors a width constant's patch scales alone
        self.shared_norm: dict[str, str] = {}  # query -> the keys its norm's patch halves with
        # query layers whose whole output carries a factor (folded in, or patched on the
        # module's output; not a fused layer's query rows alone): each vector they make
        self.whole_layers: set[str] = set()
        # scale -> the attention's own scale attribute that takes its factor, where nothing on
        # its query can (scale_attr.py), and the model its check runs (built when first needed)
        self.scale_attrs: dict[str, ScaleAttr] = {}
        self._attr_probe, self._attr_meta = None, {}
        for name, info in traced.scales.items():  # first: the cause, at the user's line
            l2_taken(self, name, info)  # an L2 normalisation no gain takes alone (normed.py)
        # scale -> the scale whose factor on their queries' common layer carries its own (one
        # layer called for several attentions: ALBERT's shared layer)
        self.shared_fold = shared_query_layers(self)
        for name, info in traced.scales.items():
            if name in self.shared_fold:
                continue
            delta = self.derived_a(name, info) - info["model_a"]
            if self.depth_exp.get(name):
                raise UsageError(
                    f"{name} needs a multiplier in the depth, which apply cannot give it yet",
                    help="trace the model with from_torch(..., blocks=False) for width-only µP",
                )
            if delta == 0:
                continue
            if "q" in info:
                fold_query(self, name, info, delta, k)
            else:
                self.patches.append(
                    Patch(
                        info["module"],
                        info["node"],
                        delta,
                        None,
                        f"tied unembedding {info['tied']}: multiplier "
                        f"(n/base)^{-delta} (its matrix is also the lookup)"
                        + (", its bias kept out of it" if info.get("bias") else ""),
                        bias=info.get("bias"), bias_after=info.get("bias_after", False),
                        span=info.get("span"),
                    )
                )
        shared_scales(self)  # a query another attention's scale took: its own module's too
        self._attr_probe, self._attr_meta = None, {}  # (the models of the attributes' check)
        self._hooks: dict[int, list] = {}  # id(model) -> its forward and gradient hooks
        self._rd: dict[int, float] = {}  # id(model) -> its depth / base depth (patches' L part)
        self._token = next(_TOKENS)  # the mark its patched models carry (patches.claim)
        # id(model) -> {tensor: (its gradient's scale, id of the param object hooked)}: its
        # blocks' own Adam eps (gradscale.py)
        self._grad_scales: dict[int, dict] = {}
        # id(model) -> {tensor: (its ColumnScale, ids of the modules hooked)}: its column
        # blocks' own LRs (columns.py)
        self._col_scales: dict[int, dict] = {}
        # (width, input shapes) -> (exported graph, its trace), reused by check.probe
        self.graphs: dict = {}
        self.tuned = tuned_for(self, config) if config is not None else None
        self.tuned_query: dict[str, float] = {}  # query vector -> its tuned multiplier
        if self.tuned is not None:
            self._tuned_multipliers()
        check_shared_lr(self)  # blocks of one tensor (a concatenation's, a split's): one LR

    def derived_a(self, scale: str, info: dict) -> Fraction:
        """The program's exponent of a scale: derived, or 0 for a width constant of the forward
        (the program holds its base value; trace.py). A scale on attention whose result reaches
        no output (an encoder its decoder never reads) is left out by derive, as its params are:
        it keeps the model's own exponent, so nothing changes it."""
        if info.get("fixed"):
            return Fraction(0)
        if scale not in self.derivation.abc:
            return Fraction(info["model_a"])
        return Fraction(str(self.derivation.abc[scale].a))

    def _tuned_multipliers(self) -> None:
        """A tuned multiplier c (a tune file's value against the program's default) is the
        emitted module's forward multiplier: a patch of factor c on the module that makes the
        query of the logits it scales (logits are linear in the query), or on the tied
        unembedding's output, which is what the emitted module computes, for any optimizer."""
        tuned = tuned_multipliers(self, self.tuned)
        carried = set()  # (first scale, query vector) whose share of its patch is counted
        for scale, c in tuned.items():
            info = self.traced.scales[scale]
            if scale in self.scale_attrs:  # the attention's own scale takes it, as µP's factor
                self.scale_attrs[scale] = replace(self.scale_attrs[scale], factor=c)
                continue  # (on its logits alone: its query is the program's)
            first = self.shared_fold.get(scale)
            if first is not None:  # its query's layer is another attention's: one patch
                if tuned.get(first, 1.0) != c:
                    raise UsageError(
                        f"{scale} and {first}: tuned multipliers x{c:.4g} and "
                        f"x{tuned.get(first, 1.0):.4g}, but one layer makes both their "
                        "queries, and a patch on it scales every call's output alike",
                        help="tune one multiplier for the attentions that share the layer, "
                        "or give each attention a query layer of its own")
                # the patch scales each vector once: one query read by both attentions
                # (the first's own) carries c once, not c per attention
                if info["q"] != self.traced.scales[first]["q"] \
                        and (first, info["q"]) not in carried:
                    carried.add((first, info["q"]))
                    self.tuned_query[info["q"]] = self.tuned_query.get(info["q"], 1.0) * c
                continue
            if "q" not in info:
                # a tied unembedding's own bias stays out of it, as out of its width factor
                self.patches.append(Patch(info["module"], info["node"], Fraction(0), None,
                                          f"{scale}: tuned multiplier x{c:.4g}", factor=c,
                                          bias=info.get("bias"),
                                          bias_after=info.get("bias_after", False),
                                          span=info.get("span")))
                continue
            need = f"a tuned multiplier x{c:.4g}"
            query_read_alone(self, scale, info, need)
            if info["q"] not in self.traced.producers:  # a query normalised without a gain
                self.patches.append(query_norm_patch(
                    self.traced, scale, info, need, Fraction(0), f"{scale}: {need} on the "
                    "output of the query's norm", c))
                if self.patches[-1].keys:
                    one_side_alone(self, scale, info, need)
                    self.shared_norm[info["q"]] = self.patches[-1].keys
            else:
                w, b, use, _ = query_layer(self, scale, info, need)
                if outside_bias(self, w, b):  # the patch would scale W @ x, not the bias
                    raise UsageError(
                        f"{scale}: {need} on its query, {use.target}'s output plus the bias "
                        f"{self.traced.params[b].target} added outside that layer, which a "
                        "patch on the layer's output would leave unscaled",
                        scale_span(self, scale),
                        help="leave this multiplier at its default, or give the query layer "
                        "its bias (nn.Linear(..., bias=True))")
                self.patches.append(query_patch(self, scale, info, use, w, Fraction(0), (
                    f"{scale}: {need} on the query {use.target}{_rows(use)}"), c))
            self.tuned_query[info["q"]] = self.tuned_query.get(info["q"], 1.0) * c

    def _uses(self, model, depth: int | None = None) -> list[tuple[str, ParamUse, int | None]]:
        """(program param, its use in this model, layer): a block param once per layer."""
        out = []
        for name, use in self.traced.params.items():
            # a fixed table (a buffer, a param that never trains: ops_tables.py) has no init or
            # LR for µP to scale
            if name in self.unused or use.fixed is not None:
                continue
            if self.stack is not None and name in self.stack.layers:
                for i in range(depth if depth is not None else self.depth_of(model)):
                    out.append((name, self.stack.at(name, i), i))
            else:
                out.append((name, use, None))
        return out

    def _base(self, name: str, use: ParamUse, layer: int | None) -> tuple[str, float | None]:
        """The param's init at the base width: its own tensor's, or for a layer past the traced
        depth the traced layers' (their RMS std; stack.py rolled them as one init)."""
        if self.tuned is not None and name in self.tuned.init_std:
            return "normal", self.tuned.init_std[name]  # the program param's tuned std
        if layer is None or layer < self.stack.depth:
            return init_of(self.traced.base, use.target, use.index, ("normal", None),
                           block_key(use))
        found = [init_of(self.traced.base, u.target, u.index, ("normal", None), block_key(u))
                 for u in self.stack.layers[name]]
        if found[0][0] == "const" or any(s is None for _, s in found):
            return found[0]
        return "normal", math.sqrt(sum(s * s for _, s in found) / len(found))

    # -- the model's width -------------------------------------------------------------------
    def width_of(self, model) -> int:
        found: dict[Fraction, str] = {}  # each width the params give -> the first giving it
        for name, use, _ in self._uses(model, depth=1 if self.stack else None):
            shape = self.program.param_table[name].shape
            tensor = model.get_parameter(use.target)
            tshape = list(tensor.shape)[::-1] if use.transposed else list(tensor.shape)
            if use.index is not None:  # one row of a table: the program's vector is that row
                tshape = list(tensor[use.index].shape)  # (a register token's: [0, i])
            if use.expert is not None:  # one expert's matrix: its slice of the 3-D tensor
                tshape = list(tensor.shape[1:])[::-1] if use.transposed else list(tensor.shape[1:])
            while len(tshape) > len(shape) and tshape[0] == 1:  # a class token's [1, 1, n]
                tshape = tshape[1:]
            if len(shape) == 1 and len(tshape) > 1 and use.index is None and use.expert is None \
                    and not use.rows:
                tshape = [math.prod(tshape)]  # a bias [H, dh] of a per-head vector, flattened
            if len(tshape) == len(shape) - 1 and not self.program.dim_table[shape[0]].infinite:
                tshape = [1, *tshape]  # a vector param applied as one row (a query: [n] as [1, n])
            for axis, d in enumerate(shape):
                dim = self.program.dim_table[d]
                if dim.infinite:
                    size = Fraction(tshape[axis])
                    if axis == 0 and use.rows:  # its block's rows (of every head's: rows.py)
                        groups = groups_of(use.groups, use.group_rows, tshape[0])
                        lo, hi = row_range(use.rows, use.row_consts, tshape[0] // groups)
                        size = Fraction((hi - lo) * groups)
                    if axis == 1 and use.cols:  # a concatenation's part: its columns
                        lo, hi = column_range(use.cols, tshape[1])
                        size = Fraction(hi - lo)
                    found.setdefault(size / dim.mult, f"{use.target} ({d} = {tshape[axis]})")
        if len(found) != 1 or next(iter(found)).denominator != 1:
            # a size the trace saw grow in proportion to the width that does not at this width
            # (a size the config rounds up to a multiple: LFM2's MLP, to multiples of 256)
            gives = ", ".join(f"{w} from {where}" for w, where in sorted(found.items()))
            raise UsageError(
                f"cannot tell this model's width: its params give {gives}",
                help="pass a model built by the traced build(width), whose every dim that "
                "grows with the width keeps the proportion it had in the trace (not a size "
                "the config rounds up to a multiple)",
            )
        return int(next(iter(found)))

    def _view(self, model, use):
        return block_of(model.get_parameter(use.target), use)

    # -- init, forward patches, LR ------------------------------------------------------------
    def apply(self, model, base_depth: int | None = None) -> Report:
        """Re-scale every normally initialised param to its µP std at this model's width (the
        model's own std at the base width times (n/base)^-(a+b)) and depth (times
        (L/base_depth)^-(aL+bL) for a traced stack), and register the forward patches that
        cannot fold. Idempotent per model."""
        import torch

        width = self.width_of(model)
        r = width / self.traced.base_width
        rd = self._rd[id(model)] = self._depth_ratio(model, base_depth)
        depth = self.depth_of(model)
        report = Report(width)
        if depth is not None:
            report.depth = (depth, round(depth / rd))
            report.lines += self._depth_lines()
        at_base = width == self.traced.base_width and rd == 1
        anchor = self._anchor(model)
        cols = column_scales(self, model, base_depth)  # blocks' LRs by scales of the columns
        zero_rows = padding_rows(model)  # kept zero where a table is drawn anew
        with torch.no_grad():
            for name, use, layer in self._uses(model):
                kind, sigma = self._base(name, use, layer)
                if kind == "const" and self.const_fold.get(name) and not at_base:
                    report.lines.append(self._fold_constant(model, name, use, sigma, r))
                tuned = self.tuned is not None and name in self.tuned.init_std
                if kind == "const" or sigma is None or (at_base and not tuned):
                    continue  # at the base width and depth the model keeps its own init
                view = self._view(model, use)
                eL = self.init_exp_L.get(name, 0)
                if self.init_exp[name] == 0 and not eL and not tuned and \
                        use.target not in self.traced.centred:
                    if (line := hand_set_init(self, model, name, use, layer, view)):
                        report.lines.append(line)
                        continue
                    # a draw not centred on 0 (Mamba's and Gated DeltaNet's log-uniform A_log,
                    # their dt_bias an inverse softplus), or a param of 2 or more dims set by
                    # hand (Mamba-1's A = 1..N in every channel's row: the base's rows
                    # repeated), of a law the same at every width: the model's own draw is
                    # µP's, and a factor towards the base's std (a few entries' estimate)
                    # would move its mean with it
                    report.lines.append(f"init {use.target}{_rows(use)}: the model's own draw "
                                        "(not centred on 0; its law the same at every width)")
                    continue
                target = sigma * r ** -float(self.init_exp[name]) * rd ** -float(eL)
                s = block_scale(cols, use)  # the tensor holds W / s there (columns.py)
                fixed = not any(self.program.dim_table[d].infinite
                                for d in self.program.param_table[name].shape)
                drawable = fixed and use.target in self.traced.centred and anchor is not None
                key = f"{use.target}{_rows(use)}@{width}"
                t = model.get_parameter(use.target)
                pads = zero_rows.get(id(t), []) if view.shape == t.shape else []
                # a fresh draw's zeroed padding rows: the others drawn so that the table's std
                # is the one the base's (with its zero rows) scales to
                wide = math.sqrt(len(view) / (len(view) - len(pads))) if drawable and pads \
                    and len(pads) < len(view) else 1.0
                current, drawn = rescale(view, target / s * wide, drawable,
                                         draw_seed(anchor, key) if drawable else 0)
                if pads:  # each stays the zero the build made it (reinit.padding_rows)
                    view[pads] = 0
                report.lines.append(
                    f"init {use.target}{_rows(use)}: std {current:.4g} -> "
                    f"{'drawn anew at ' if drawn else ''}{target:.4g} (base {sigma:.4g} x (n/base)^"
                    f"-{self.init_exp[name]}" + (f" x (L/base)^-{eL})" if eL else ")")
                    + (f", held as {target / s:.4g} = it / {s:.4g}" if s != 1.0 else "")
                    + (f", its padding row{'s' * (len(pads) > 1)} "
                       f"{', '.join(map(str, pads))} kept zero" if drawn and pads else "")
                )
        report.lines += [f"folded {f}" for f in self.folded]
        report.lines += [f"fixed {'table' if u.index is None else f'row {u.index} of'} "
                         f"{u.target}: never trained, left as it is (no init, no LR)"
                         for u in self.traced.params.values() if u.fixed is not None]
        unreached = set(self.unreached(model))
        report.lines += [
            f"unused by the traced forward: {name} reaches no output (no gradient), left as it is"
            if name in unreached else
            f"not in the program: {name} keeps its init and the LR given (µP does not reach it)"
            for name in self.uncovered(model)
        ]
        self.remove_patches(model)
        # blocks of one tensor with different Adam eps: their gradients scaled (gradscale.py)
        factors, scales = eps_blocks(self, model, base_depth) if self._adam else ({}, {})
        self._grad_scales[id(model)] = {t: (x, id(model.get_parameter(t))) for t, x in
                                        scales.items()}  # the param object its hook is on
        self._col_scales[id(model)] = {t: (c, [id(model.get_submodule(m)) for m in c.modules])
                                       for t, c in cols.items()}  # the modules hooked
        if cols or any(self._patched_modules(model, p) for p in self.patches):
            stale = drop_compiled(model)  # module hooks a compiled forward would not see
            if stale:
                warnings.warn(f"apply dropped torch.compile's compiled code "
                              f"(torch._dynamo.reset()): forwards of {', '.join(stale)} had "
                              "been compiled, and torch reuses compiled code without checking "
                              "nn.Module hooks, so apply's hooks would not act in them; "
                              "compiled models recompile on their next call", stacklevel=2)
        report.patched = self._register(model, r)
        report.lines += set_scales(self, model)
        report.lines += [
            f"patched forward of {p.module or 'the model'}: {p.why}" for p in self.patches
        ]
        report.lines += [
            f"patched input of {m or 'the model'}: columns of {t} times their scale s (the "
            f"tensor holds W / s), its LR x{c.lr:.4g}: each block's LR is that x s^"
            f"{self.derivation.optimizer.a_coef}" for t, c in cols.items() for m in c.modules]
        report.lines += scale_lines(self, model, scales, factors, _rows, cols)
        return report

    def _anchor(self, model):
        """A tensor of the model's own random draw that apply only rescales (the first growing
        param drawn centred on 0), whose signs seed a small tensor's fresh draw (reinit.py), or
        None."""
        for name, use, _ in self._uses(model):
            shape = self.program.param_table[name].shape
            if use.target in self.traced.centred and any(
                    self.program.dim_table[d].infinite for d in shape):
                return self._view(model, use)
        return None

    def _fold_constant(self, model, name: str, use: ParamUse, value: float, r: float) -> str:
        """A multiplier m folded into a param of constant init (a QK-norm gain): the program's
        gain g (its init is the program's constant: Gemma's 1 + w has w = 0, g = 1) starts at
        m·g, so the model's tensor w = g - offset is set to value + g·(m - 1)."""
        g = self.program.param_table[name].base
        g = float(g) if g is not None else value
        m = r ** -float(self.const_fold[name])
        self._view(model, use).fill_(value + g * (m - 1))
        return (f"init {use.target}: constant {value:g} -> {value + g * (m - 1):.4g} (the gain "
                f"{g:g} x (n/base)^-{self.const_fold[name]})")

    def remove_patches(self, model) -> None:
        for h in self._hooks.pop(id(model), []):
            h.remove()
        strip(model, self._token)  # a deepcopy's copies of them
        release(model, self._token)

    def uncovered(self, model) -> list[str]:
        """The model's params that the program has not: a part of the forward the trace does
        not reach (or a param the forward never uses). µP says nothing about them."""
        covered = {id(model.get_parameter(u.target)) for _, u, _ in self._uses(model)}
        fixed = {u.target for u in self.traced.params.values() if u.fixed is not None}
        return [name for name, p in model.named_parameters()
                if id(p) not in covered and name not in fixed]

    def unreached(self, model) -> list[str]:
        """The model's params that the traced forward computes with but whose result reaches
        none of its outputs (``self.unused``): no gradient reaches them, so training leaves them
        as they are, whatever their LR. A tensor the program also reads elsewhere is not one."""
        covered = {id(model.get_parameter(u.target)) for _, u, _ in self._uses(model)}
        names = {self.traced.params[p].target for p in self.unused}
        if self.stack is not None:  # a block param in every layer of the model
            names |= {self.stack.at(p, i).target for p in self.unused if p in self.stack.layers
                      for i in range(self.depth_of(model))}
        return [name for name, p in model.named_parameters()
                if name in names and id(p) not in covered]

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
        placed = [(p, name) for p in self.patches for name in self._patched_modules(model, p)]
        cols = self._col_scales.get(id(model), {})
        if placed or self._grad_scales.get(id(model)) or cols:  # hooks that would act twice
            claim(model, self._token)
        strip(model, self._token)  # a deepcopy's copies of them, else they act twice
        found = modules_at(model, [name for _, name in placed])  # refused before any hook
        for (p, name), m in zip(placed, found, strict=True):
            if p.bias and getattr(m, "bias", None) \
                    is not model.get_parameter(strip_prefix(_layer_bias(p, name))):
                raise UsageError(
                    f"{name or 'the model'} adds a bias ({strip_prefix(p.bias)}) to a tied "
                    "unembedding, which "
                    "apply must keep "
                    "out of the unembedding's multiplier, and it is not the module's .bias, "
                    "where the forward patch finds it",
                    help="compute the readout with an nn.Linear whose weight is the embedding "
                    "and whose bias is its .bias, or add the bias outside the module",
                )
        rd = self._rd.get(id(model), 1.0)
        self._hooks[id(model)] = [m.register_forward_hook(mark(hook(p.at(r, rd), p.rows,
                                                                    bool(p.bias), name,
                                                                    p.span)))
                                  for (p, name), m in zip(placed, found, strict=True)]
        inputs = [m for c, _ in cols.values() for m in c.modules]  # their input scaled
        self._hooks[id(model)] += [
            model.get_submodule(m).register_forward_pre_hook(mark(input_hook(c.scale, c.conv)),
                                                             with_kwargs=True)
            for c, _ in cols.values() for m in c.modules]
        self._hooks[id(model)] += [model.get_parameter(t).register_hook(grad_hook(s))
                                   for t, (s, _) in self._grad_scales.get(id(model), {}).items()]
        return [name for _, name in placed] + inputs

    def unfolded(self, model) -> dict[str, float]:
        """Per query vector of the program: the factor that undoes the attention multiplier
        folded into it (the program's query is W_q x without it)."""
        if not self.patched(model):
            return {}
        r = self.width_of(model) / self.traced.base_width
        scales = [(s, info) for s, info in self.traced.scales.items() if "q" in info]
        # every multiplier folded into one layer scales each vector it makes: the query's
        # attention scale and a width constant on it (q * dh ** -0.5) add up; a width
        # constant patched on its own vector's module scales that vector alone
        folded: dict[str, Fraction] = {}
        layer_of = {i["q"]: i["q"] if i["q"] in self.own_patch
                    else self.traced.producers.get(i["q"], (i["q"],))[0] for _, i in scales}
        for s, info in scales:
            layer = layer_of[info["q"]]
            if s in self.shared_fold or s in self.scale_attrs:  # another scale's factor on
                continue  # the layer carries its own; the attention's own scale takes it
            folded[layer] = folded.get(layer, Fraction(0)) + self.derived_a(s, info) - info[
                "model_a"]
        # a width constant's output carries the constant's own width factor as well
        own = {info["out"]: info["model_a"] for _, info in scales if info.get("fixed")}
        out = {
            info["q"]: r ** float(folded.get(layer_of[info["q"]], 0) + own.get(info["q"], 0))
            / self.tuned_query.get(info["q"], 1.0)  # a tuned multiplier's patch on it
            for _, info in scales
        }
        # the layer's own output under a number on it (gpt-oss's query times YaRN's scale, then
        # the query): the factor folded into the layer scales it too, and a fused layer's query
        # rows its patch scales (LongCat-Flash's q_b_proj times mla_scale_q_lora; its key and
        # value rows are params of their own, never patched); where that number is a width
        # constant (DeBERTa's key / sqrt(dh), Gemma's embedding times sqrt(d)), its own width
        # factor undoes the fold: the model's vector is the program's there
        for vec, (w, *_) in self.traced.producers.items():
            if vec not in out and w in folded and (
                    w in self.whole_layers or self.traced.params[w].rows is not None):
                out[vec] = r ** float(folded[w] + own.get(vec, 0))
        for q, k in self.shared_norm.items():  # each side of the logits took half of it
            out[q] = out[k] = out[q] ** 0.5
        # an L2 normalisation's vector, n^-1/2 of the program's (its constant counted in the
        # logits' multiplier: normed.l2_into_scales)
        l2 = {v: e for _, info in scales for v, e in info.get("l2_vectors", {}).items()}
        for v, e in l2.items():
            out[v] = out.get(v, 1.0) * r ** float(e)
        return out

    def scale_values(self, model) -> tuple:
        """The scale attributes' values on ``model`` (scale_attr.py): a graph exported from it
        holds them, so the check exports one per set of values (µP's, or SP's as built)."""
        return tuple(getattr(model.get_submodule(p), s.attr, None)
                     for s in self.scale_attrs.values() for p in s.modules(self, model))

    def _patched_modules(self, model, p: Patch) -> list[str]:
        """The module of a patch, or of its block param in every layer of the model."""
        if p.nodes and p.in_layers:  # a block's vector of no param: its module in every layer
            return [self.stack.module_at(p.module, i) for i in range(self.depth_of(model))]
        if p.param is None:
            return [p.module]
        return [self.stack.at(p.param, i).module for i in range(self.depth_of(model))]

    def patch_factors(self, model) -> dict[str, list]:
        """Graph node -> [(factor, rows)] of the forward patches registered on the model (a
        block param's in every layer of the traced depth: the graph probed is the traced one);
        a layer may have several, one per block of its rows (MLA's q_b: each query part its
        own attention factor). A tied unembedding's with its own bias: (factor, rows, True), the
        bias (the node's third argument) kept out of the factor (``patches.scale_out``)."""
        if not self.patched(model):
            return {}
        r = self.width_of(model) / self.traced.base_width
        out: dict[str, list] = {}
        for p in self.patches:
            uses = self.stack.layers[p.param] if p.param else [p]
            # a block param's module called again in its layer (an attention layer applied
            # twice in each block): the hook scales each call, and so the probe each node
            for node in p.nodes or [n for u in uses for n in _calls(u)]:
                own = p.bias and not p.bias_after  # the node's own argument, kept out
                out.setdefault(node, []).append((p.at(r, self._rd.get(id(model), 1.0)), p.rows,
                                                 *((True,) if own else ())))
        return out


    def input_scales(self, model) -> dict[str, tuple]:
        """Graph node -> (scale, conv) of the column scales registered on the model (a block
        param's in every layer of the traced depth): the scale multiplies the node's input
        (its first argument) as the forward pre-hook multiplies the module's (columns.py)."""
        if not self.patched(model):
            return {}
        stack, out = self.traced.stack, {}
        held = {t: c for t, (c, _) in self._col_scales.get(id(model), {}).items()}
        for name, use in self.traced.params.items():
            for u in stack.layers[name] if stack and name in stack.layers else [use]:
                if u.cols is not None and u.target in held:
                    for node in (u.node, *(n for _, n in u.also)):  # every layer applying it
                        out[node] = (held[u.target].scale, held[u.target].conv)
        return out


def _calls(use) -> tuple[str, ...]:
    """The graph nodes of every call of a param's module (its first, and its module's calls
    again: ``ParamUse.also`` of that module; a Patch's node alone)."""
    again = (n for m, n in getattr(use, "also", ()) if m == use.module)
    return (use.node, *again)


def _layer_bias(p: Patch, name: str) -> str:
    """The bias a patch keeps out, in the layer ``name`` it is placed on: a block param's
    (``blocks.{i}.conv.bias`` on ``blocks.{i}.conv``) that layer's own."""
    if p.param is not None and p.module and p.bias.startswith(p.module + "."):
        return name + p.bias[len(p.module):]
    return p.bias


def _rows(use) -> str:
    if use.index is not None and not use.entries:  # one row of a table, a vector of its own
        return f"[row {use.index}]"
    each = " of each head" if use.groups or use.group_rows else ""
    rows = f"[{use.rows[0]}:{use.rows[1]} of rows{each}]" if use.rows else ""
    if use.row_consts:  # bounds f·S + c of the S rows (rows.py)
        (f0, f1), (c0, c1) = use.rows, use.row_consts
        rows = f"[{f0}·S{_signed(c0)}:{f1}·S{_signed(c1)} of the S rows]"
    return rows + (f"[columns of part {use.cols.index} of a cat]" if use.cols else "")


def _signed(c) -> str:
    """``c`` with its sign, as ``f"{c:+}"`` writes it: a Fraction has no such format before
    Python 3.12 (a TypeError there). The text keys the seed of rows drawn anew, so it is the
    same on every Python."""
    return f"{'+' if c >= 0 else ''}{c}"
