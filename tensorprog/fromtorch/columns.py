"""Column blocks of one torch tensor (a linear layer fed a concatenation, ops_concat.py): their
bounds over the widths, the block of a tensor they are, and the one LR they must share.

A block's columns are traced at two widths as numbers. Each part of the concatenation is of a
constant size or of one that grows in proportion to the width, so each bound is c + f·n, and so
is the tensor's input size S (not constant unless every bound is): each bound is then exactly
c' + f'·S, which the two widths determine. apply reads a block's columns of any model built by
the traced build from its tensor's size alone."""

from __future__ import annotations

import dataclasses
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
    """Refuses blocks of one tensor whose derived LR exponents differ, at the concatenation's
    line for column blocks, at the layer's for row blocks (a fused layer's split: rows.py): a
    torch tensor has one optimizer group, and so one LR. Their init and forward multipliers may
    differ (each block is scaled on its own; a multiplier folds into the init and LR as for any
    param), and so may their Adam eps (a scale of the tensor's gradient gives each block its
    own: gradscale.py), so blocks whose LRs agree apply exactly."""
    blocks: dict[str, list[str]] = {}
    for name, use in mup.traced.params.items():
        if (use.cols is not None or use.rows is not None) and name in mup.lr_exp:
            blocks.setdefault(use.target, []).append(name)
    for target, names in blocks.items():
        found = {n: (mup.lr_exp.get(n, 0), mup.lr_exp_L.get(n, 0)) for n in names}
        if len(set(found.values())) > 1:
            said = ", ".join(f"{n} (n/base)^-{e[0]}" + (f" (L/base)^-{e[1]}" if e[1] else "")
                             for n, e in found.items())
            use = mup.traced.params[names[0]]
            if use.cols is not None:
                raise UsageError(
                    f"{target} is applied to a concatenation, and µP gives its column blocks "
                    f"different LRs: {said}; one torch tensor has one LR",
                    use.cols.span,
                    help="apply a separate nn.Linear to each part of the concatenation and "
                    "add their outputs (each then takes its own LR)",
                )
            # a fused layer's row blocks, e.g. a key of a fixed size (a finite output of a
            # growing fan-in, as a readout) beside a query that grows, under SGD
            raise UsageError(
                f"{target} is split into row blocks, and µP gives them different LRs: "
                f"{said}; one torch tensor has one LR",
                use.span,
                help="use a separate nn.Linear for each block of the fused layer's output "
                "(each then takes its own LR)",
            )
