"""Column blocks of one torch tensor (a linear layer fed a concatenation, ops_concat.py): their
bounds over the widths, the block of a tensor they are, and the LRs a tensor's blocks may have.

A block's columns are traced at two widths as numbers. Each part of the concatenation is of a
constant size or of one that grows in proportion to the width, so each bound is c + f·n, and so
is the tensor's input size S (not constant unless every bound is): each bound is then exactly
c' + f'·S, which the two widths determine. apply reads a block's columns of any model built by
the traced build from its tensor's size alone."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import TraceError, UsageError
from .values import Columns, ParamUse


def merge_columns(name: str, u1: ParamUse, u2: ParamUse) -> ParamUse:
    """``u1`` with its columns as bounds (c, f) of the input size S, c + f·S, from the two
    widths' numbers (``u2``: the second width's use); ``u1`` itself where it has none."""
    c1, c2 = u1.cols, u2.cols
    if c1 is None:
        return u1
    if c1.size == c2.size:  # every part of a constant size
        if (c1.lo, c1.hi) != (c2.lo, c2.hi):
            raise TraceError(f"{name}: columns {c1.lo}..{c1.hi} of {c1.size} at one width and "
                             f"{c2.lo}..{c2.hi} at the other, of a tensor of the same size")
        bounds = [(Fraction(c1.lo), Fraction(0)), (Fraction(c1.hi), Fraction(0))]
    else:
        bounds = []
        for a, b in ((c1.lo, c2.lo), (c1.hi, c2.hi)):
            f = Fraction(b - a, c2.size - c1.size)
            bounds.append((a - f * c1.size, f))
    cols = Columns(c1.index, bounds[0], bounds[1], None, c1.span)
    return dataclasses.replace(u1, cols=cols)


def column_range(cols: Columns, size: int) -> tuple[int, int]:
    """The columns lo..hi of a block of a tensor whose input axis has ``size`` columns."""
    lo, hi = (c + f * size for c, f in (cols.lo, cols.hi))
    if lo.denominator != 1 or hi.denominator != 1 or not 0 <= lo <= hi <= size:
        raise UsageError(
            f"a tensor of {size} input columns has no block {float(lo):g}..{float(hi):g} as the "
            "traced concatenation's parts would have",
            help="pass a model built by the traced build(width)",
        )
    return int(lo), int(hi)


def column_block(t, use: ParamUse):
    """The block of torch tensor ``t`` (a whole param, or its rows) that ``use`` is: itself, or
    its columns (the program's input axis: torch's last, or first if the use is transposed)."""
    if use.cols is None:
        return t
    # a kernel [out, in, kh, kw] (a convolution of a concatenation of images): in, its axis 1
    axis = 0 if use.transposed else 1 if t.dim() == 4 else t.dim() - 1
    lo, hi = column_range(use.cols, t.shape[axis])
    return t.narrow(axis, lo, hi - lo)


def check_shared_lr(mup) -> None:
    """Refuses blocks of one tensor whose derived LR exponents differ where apply cannot give
    each its own (a torch tensor has one optimizer group, and so one LR): row blocks (a fused
    layer's split: rows.py), at the layer's line; column blocks, at the concatenation's line,
    unless their LRs are carried by column scales (:func:`column_scales`), which needs every
    use of the tensor to be one of its column blocks and the row blocks of each column block
    to share their LR; and under Muon any column blocks (the program steps each on its own,
    torch's Muon the tensor as one matrix). Their init and forward multipliers may differ
    (each block is scaled on its own; a multiplier folds into the init and LR as for any
    param), and so may their Adam eps (a scale of the tensor's gradient: gradscale.py)."""
    params = mup.traced.params
    blocks: dict[str, list[str]] = {}
    for name, use in params.items():
        if (use.cols is not None or use.rows is not None) and name in mup.lr_exp:
            blocks.setdefault(use.target, []).append(name)
    opt = mup.derivation.optimizer
    for target, names in blocks.items():
        cols = next((params[n].cols for n in names if params[n].cols is not None), None)
        if cols is not None and any(r.spectral for r in opt.rules):
            raise UsageError(
                f"{target} is applied to a concatenation, whose column blocks the program "
                f"steps as params of their own; {opt.name} orthogonalises a tensor's update as "
                "one matrix (or leaves it to AdamW), which gives no block its own update",
                cols.span,
                help="apply a separate nn.Linear to each part of the concatenation and "
                "add their outputs, or train with Adam",
            )
        found = {n: (mup.lr_exp.get(n, 0), mup.lr_exp_L.get(n, 0)) for n in names}
        if len(set(found.values())) <= 1:
            continue
        said = ", ".join(f"{n} (n/base)^-{e[0]}" + (f" (L/base)^-{e[1]}" if e[1] else "")
                         for n, e in found.items())
        use = params[names[0]]
        if use.cols is None:
            # a fused layer's row blocks, e.g. a key of a fixed size (a finite output of a
            # growing fan-in, as a readout) beside a query that grows, under SGD
            raise UsageError(
                f"{target} is split into row blocks, and µP gives them different LRs: "
                f"{said}; one torch tensor has one LR",
                use.span,
                help="use a separate nn.Linear for each block of the fused layer's output "
                "(each then takes its own LR)",
            )
        why = _uncarried(mup, target, names, found)
        if why:
            raise UsageError(
                f"{target} is applied to a concatenation, and µP gives its column blocks "
                f"different LRs: {said}; one torch tensor has one LR, and {why}",
                use.cols.span,
                help="apply a separate nn.Linear to each part of the concatenation and "
                "add their outputs (each then takes its own LR)",
            )


def _uncarried(mup, target: str, names: list[str], found: dict) -> str | None:
    """Why column scales cannot carry the different LRs ``found`` of the column blocks
    ``names`` of ``target``, or None."""
    other = [n for n, u in mup.traced.params.items() if u.target == target and u.cols is None]
    if other:
        return (f"the model also reads it whole ({other[0]}), where a scale of the "
                "concatenation's parts cannot reach")
    by_cols: dict = {}
    for n in names:
        cols = mup.traced.params[n].cols
        if by_cols.setdefault((cols.lo, cols.hi), found[n]) != found[n]:
            return (f"the row blocks of its columns of part {cols.index} need different LRs "
                    "as well, which a scale of the columns cannot give")
    return None


@dataclass
class ColumnScale:
    """A tensor W whose column blocks need different LRs, carried by a scale s of its input
    columns: the tensor holds V = W / s (each block b's columns divided by s_b) and its
    modules' input is multiplied by s (a forward pre-hook), so the layer computes
    V (s ⊙ x) = W x, the model's function. The gradient of V's block b is s_b times W's, so
    an optimizer whose step is k-homogeneous in it (an Adam-like step, k = 1: scale-free;
    SGD and momentum, k = 2: linear) moves W's block by s_b^k times the step of V's group LR
    ``lr``: the abc-symmetry of a forward multiplier s_b (docs/theory.md), so s_b = (lr_b /
    lr)^(1/k). The block of the most columns is the reference (s = 1)."""

    scale: object  # a float64 tensor, one entry per input column
    lr: float  # the tensor's group LR factor: the reference block's
    modules: list[str]  # the modules applying the tensor, whose input the scale multiplies
    conv: bool  # a kernel [out, in, kh, kw]: its input's channels, not its last axis
    span: object = None  # the concatenation's line


def column_scales(mup, model, base_depth: int | None = None) -> dict[str, ColumnScale]:
    """Per torch param name whose column blocks need different LRs at this model's width and
    depth: its :class:`ColumnScale` (none at the base width and depth, where every LR factor
    is 1). A UsageError where a module applying the tensor is no stock nn.Linear or nn.Conv2d
    whose weight it is (its input is what the scale multiplies), or where two concatenations
    it is applied to put columns of different scales together."""
    import torch

    r = mup.width_of(model) / mup.traced.base_width
    rd = mup._depth_ratio(model, base_depth)
    k = mup.derivation.optimizer.a_coef
    found: dict[int, tuple[str, list]] = {}  # by tensor, as a tied one may go by two names
    for name, use, _ in mup._uses(model):
        if use.cols is not None and name in mup.lr_exp:
            m = r ** -float(mup.lr_exp[name]) * rd ** -float(mup.lr_exp_L.get(name, 0))
            t = model.get_parameter(use.target)
            found.setdefault(id(t), (use.target, []))[1].append((use, m))
    out = {}
    for target, blocks in found.values():
        if all(math.isclose(m, blocks[0][1]) for _, m in blocks):
            continue
        t = model.get_parameter(target)
        size = t.shape[1]
        ranges = [(column_range(use.cols, size), m) for use, m in blocks]
        ref = max(ranges, key=lambda b: b[0][1] - b[0][0])[1]  # the first widest
        scale = torch.ones(size, dtype=torch.float64)
        given = torch.zeros(size, dtype=torch.bool)
        for ((lo, hi), m), (use, _) in zip(ranges, blocks, strict=True):
            s = (m / ref) ** (1 / k)
            if given[lo:hi].any() and not all(math.isclose(float(x), s)
                                              for x in scale[lo:hi][given[lo:hi]]):
                raise UsageError(
                    f"{target} is applied to concatenations whose parts need different scales "
                    f"of the same columns {lo}..{hi}: its column blocks' LRs cannot be carried",
                    use.cols.span,
                    help="apply a separate nn.Linear to each part of the concatenations",
                )
            scale[lo:hi], given[lo:hi] = s, True
        held: dict[int, str] = {}  # one hook per module instance, under its first name
        for name in sorted(_appliers(model, t, [use for use, _ in blocks])):
            _check_module(model, name, t, target, blocks[0][0].cols.span)
            held.setdefault(id(model.get_submodule(name)), name)
        modules = list(held.values())
        out[target] = ColumnScale(scale, ref, modules, t.dim() == 4, blocks[0][0].cols.span)
    return out


def _appliers(model, t, uses: list) -> set[str]:
    """The modules the pre-hook of tensor ``t`` goes on: each the trace saw apply one of its
    column blocks ``uses`` (a weight tied across two nn.Linear: both), and each that holds
    it as a param (V (s ⊙ x) = W x whatever x, so its forward stays the model's even where the
    trace did not see it run); :func:`_check_module` refuses any that is not an nn.Linear or
    nn.Conv2d of weight ``t``."""
    found = {use.module for use in uses} | {m for use in uses for m, _ in use.also}
    found |= {name.rpartition(".")[0] for name, p in
              model.named_parameters(remove_duplicate=False) if p is t}
    return found


def _check_module(model, name: str, t, target: str, span) -> None:
    """A UsageError unless module ``name`` is a stock nn.Linear or nn.Conv2d whose weight is
    ``t``: the one whose input the forward pre-hook can scale, its forward torch's own."""
    import torch

    m = model.get_submodule(name)
    stock = (torch.nn.Linear, torch.nn.Conv2d)
    if not any(isinstance(m, c) and type(m).forward is c.forward for c in stock) \
            or m.weight is not t:
        raise UsageError(
            f"{target}: its column blocks need different LRs, which apply carries by a scale "
            f"of the concatenation's columns on the input of the module that applies it; but "
            f"{name or 'the model'} ({type(m).__name__}) is no nn.Linear or nn.Conv2d of "
            "weight " + target + " with torch's own forward",
            span,
            help="apply the tensor with an nn.Linear (its .weight), or a separate nn.Linear "
            "to each part of the concatenation",
        )


def block_scale(scales: dict, use) -> float:
    """The column scale s of the block ``use`` (1 where its tensor has none)."""
    cs = scales.get(use.target)
    if cs is None or use.cols is None:
        return 1.0
    return float(cs.scale[column_range(use.cols, len(cs.scale))[0]])


def scale_input(x, scale, conv: bool):
    """``x`` with its columns (a kernel's input: its channels, axis -3) times ``scale``,
    moved to x's device and dtype."""
    s = scale.to(x.device, x.dtype)
    return x * (s.view(-1, 1, 1) if conv else s)


def input_hook(scale, conv: bool):
    """A forward pre-hook multiplying the module's input by ``scale`` (cached on the input's
    device and dtype: a model moved after apply keeps its modules, and so its hooks), given
    by position or by keyword (``self.mix(input=x)``): register it ``with_kwargs=True``."""
    held = {}

    def scaled(module, args, kwargs):
        if not args and "input" not in kwargs:
            return None  # no input to scale: torch's forward then refuses the call itself
        x = args[0] if args else kwargs["input"]
        key = (x.device, x.dtype)
        if key not in held:
            held[key] = scale.to(x.device, x.dtype)
        x = scale_input(x, held[key], conv)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "input": x})

    return scaled
