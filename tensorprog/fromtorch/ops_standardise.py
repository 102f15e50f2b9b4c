"""Weight standardisation: a kernel whose rows are standardised before each use.

BiT's WeightStandardizedConv2d (and timm's StdConv2d) compute, in their forward,

    w = F.batch_norm(self.weight.reshape(1, out, -1), None, None, training=True,
                     momentum=0.0, eps=eps).reshape_as(self.weight)
    y = F.conv2d(x, w, ...)

a batch norm of the weight laid out as one channel per output (its fan-in entries): each row
minus its mean, over sqrt(its biased variance + eps); or the same written out, ``v, m =
torch.var_mean(w, dim=[1, ...], unbiased=False, keepdim=True)`` then ``(w - m) /
torch.sqrt(v + eps)`` (:class:`RowStatOps`, each step followed exactly). The program says
the same with ``param K : [...] standardised(eps)`` (docs/language.md), whose every use reads the
standardised rows; the engine derives what standardisation leaves free (engine/standardised.py).

The trace follows the param's entries exactly (ops_grid.Laid: the param's flat index of each
entry) and takes the batch norm only where each of its channels holds exactly one whole row of
the param, with no gain, bias or running statistics, in training mode (the statistics the
value's own); the result, laid back out in the param's own shape by moves alone, is a
:class:`Standardised` param that only a convolution's kernel may read. Anything else (a gain on
the standardised rows, timm's ScaledStdConv2d; statistics over anything but whole rows; the
standardised weight read by another op; the same param read raw elsewhere) is refused at its
line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .values import PRef
from .where import op_name, refuse, strip_prefix

STD_HELP = ("standardise the weight as BiT's WeightStandardizedConv2d does: F.batch_norm("
         "w.reshape(1, out, -1), None, None, training=True, momentum=0.0, eps=eps)"
         ".reshape_as(w), read only as the kernel of one F.conv2d (no gain, no other use)")


@dataclass(frozen=True)
class Standardised:
    """A whole param whose rows are standardised (mean 0, variance 1, eps), in its own shape."""

    ref: PRef
    eps: float


def standardised_rows(node, laid, args) -> float:
    """The eps of ``batch_norm`` of a param's entries laid out as one channel per row (the
    same entries, marked standardised: ops_grid.Laid), or a refusal."""
    import torch

    ref = laid.ref
    x, weight, bias, mean, var, training, _momentum, eps = (*args, None, None, None, None,
                                                            None, None, None, None)[:8]
    if laid.eps is not None or x is not laid or any(
            a is not None for a in (weight, bias, mean, var)) or training is not True:
        raise refuse(node, f"a batch norm of the param {strip_prefix(ref.target)}'s entries "
                     "with a gain, a bias or running statistics, or out of training mode, or "
                     "of entries already standardised: traced only as weight standardisation "
                     "(its statistics the entries' own, no affine part)", help=STD_HELP)
    index = laid.index
    out = ref.shape[0]
    fan_in = index.numel() // out if len(ref.shape) > 1 else 0
    if index.dim() < 2 or len(ref.shape) < 2 or fan_in < 3:
        # a row of two entries standardises to ±1 whatever the weight: nothing to train
        raise refuse(node, f"a batch norm of the param {strip_prefix(ref.target)}'s entries "
                     f"laid out as {list(index.shape)}: weight standardisation is over each "
                     "row of a matrix or kernel of three entries or more (a row of two "
                     "standardises to ±1 whatever the weight, and has nothing to train)",
                     help=STD_HELP)
    channels = index.movedim(1, 0).reshape(index.shape[1], -1)
    rows = channels // fan_in
    whole = channels.shape[1] == fan_in and bool((rows == rows[:, :1]).all()) and all(
        len(torch.unique(c)) == fan_in for c in channels)
    if not whole:
        raise refuse(node, f"a batch norm of the param {strip_prefix(ref.target)} "
                     f"{list(ref.shape)} laid out as {list(index.shape)}: its channels are not "
                     "each one whole row of the param (an output's fan-in entries), so its "
                     "statistics are not a row's, which is what weight standardisation "
                     "divides by", help=STD_HELP)
    return float(eps)


class StandardiseOps:
    """A standardised param read as a convolution's kernel, and refused anywhere else."""

    def standardised_kernel(self, node, w):
        """(the kernel's PRef marked with its eps, for ``param``), or the PRef as it is."""
        if isinstance(w, Standardised):
            return PRef(w.ref.target, w.ref.shape, std=w.eps)
        return w

    def refuse_standardised(self, node, x: Standardised):
        return refuse(node, f"the standardised param {strip_prefix(x.ref.target)} read by "
                      f"{op_name(node) or node.target}: a standardised weight is traced only as "
                      "the kernel of a convolution of one group (conv2d)", help=STD_HELP)


def refuse_mixed_standardised(node, ref: PRef):
    return refuse(node, f"the param {strip_prefix(ref.target)} read both standardised and as "
                  "it is (or standardised with two eps): the program's param is one or the "
                  "other at every use", help="standardise it at every use, or give the other "
                  "use a param of its own")


# --- the same standardisation written out: torch.var_mean, then (w - mean) / sqrt(var + eps) ---


@dataclass(frozen=True)
class RowStat:
    """A statistic of each row of a whole param (its fan-in entries, kept as [out, 1, ...]):
    its biased variance (plus ``eps`` once added), its mean, sqrt(var + eps) (``std``) or its
    inverse (``inv``)."""

    ref: PRef
    kind: str  # "var", "mean", "std", "inv"
    eps: float = 0.0


@dataclass(frozen=True)
class RowPair:
    """torch.var_mean's (var, mean) of a param's rows, before getitem takes one."""

    items: tuple


@dataclass(frozen=True)
class RowCentred:
    """A whole param minus its rows' means."""

    ref: PRef


ROW_VALUES = (RowStat, RowPair, RowCentred)


def _whole(ref) -> bool:
    return isinstance(ref, PRef) and not ref.t and ref.rows is None and not ref.offset and \
        ref.period is None and ref.expert is None and ref.cols is None and len(ref.shape) >= 2


class RowStatOps:
    """``v, m = torch.var_mean(w, dim=[1, ...], unbiased=False, keepdim=True)`` and
    ``(w - m) / torch.sqrt(v + eps)`` (or ``* torch.rsqrt(v + eps)``): the standardised param,
    as the batch norm computes it; any other step refused at its line."""

    def op_var_mean(self, node, x, dim=None, unbiased=True, keepdim=False, *, correction=None):
        axes = tuple(range(1, len(getattr(x, "shape", ()))))
        dims = sorted(d % len(x.shape) for d in (dim or ())) if _whole(x) else None
        biased = (correction == 0) if correction is not None else unbiased is False
        if not _whole(x) or tuple(dims) != axes or not biased or not keepdim \
                or math.prod(x.shape[1:]) < 3:
            raise refuse(node, "torch.var_mean of a param traced only as weight "
                         "standardisation: of a whole matrix or kernel, over every axis but its "
                         "first (each output's fan-in entries, three or more: a row of two "
                         "standardises to ±1, with nothing to train), biased (unbiased=False "
                         "or correction=0), keepdim=True", help=STD_HELP)
        return RowPair((RowStat(x, "var"), RowStat(x, "mean")))

    def row_stat_op(self, node, op: str, args, kwargs):
        """An op on a row statistic or a centred param: the next step of the standardisation,
        or refused."""
        a = args[0] if args else None
        b = args[1] if len(args) > 1 else None
        ref = next(x.ref for x in (a, b) if isinstance(x, (RowStat, RowCentred)))
        number = isinstance(b, (int, float)) and not isinstance(b, bool)
        if not kwargs and op == "add" and isinstance(a, RowStat) and a.kind == "var" \
                and not a.eps and number and b > 0:
            return RowStat(ref, "var", float(b))
        if not kwargs and op in ("sqrt", "rsqrt") and len(args) == 1 and isinstance(a, RowStat) \
                and a.kind == "var" and a.eps:
            return RowStat(ref, "std" if op == "sqrt" else "inv", a.eps)
        if not kwargs and op == "sub" and len(args) == 2 and isinstance(b, RowStat) and \
                b.kind == "mean" and _whole(a) and (a.target, a.shape) == (ref.target, ref.shape):
            return RowCentred(ref)
        if not kwargs and isinstance(a, RowCentred) and isinstance(b, RowStat) and \
                b.ref == a.ref and (op, b.kind) in (("div", "std"), ("mul", "inv")):
            return Standardised(ref, b.eps)
        raise refuse(node, f"the op {op} on the row statistics of the param "
                     f"{strip_prefix(ref.target)}: traced only as weight standardisation, "
                     "(w - mean) / sqrt(var + eps) (or times rsqrt(var + eps)) with torch."
                     "var_mean's biased statistics and an eps above 0", help=STD_HELP)
