"""Lowering ``ssd(cb, dt, A, P)``: Mamba-2's state-space mixing weights (``tensorprog.ir.ssd``).

cb is a per-head dot over the state size, ``dot(C, B, N)`` with C and B of ngroups·N per token
(one head per group); dt a vector per token of dim H, one step per head; A a value of dim H
without tokens (``-1 * exp(Alog)`` with ``param Alog : [H]``); P the values' head dim, H·P a
declared dim. The result is mixing weights over H heads of P, read by ``mix(p, x, P)``. Each
group serves H/G consecutive heads (Mamba-2's ``repeat_interleave`` of B and C). What is
refused here is said at the argument at fault; the sequence checks are the verifier's.
"""

from __future__ import annotations

from ..ir.program import Nonlin
from ..ir.spread import spread_dim
from ..ir.ssd import SSD, USAGE, groups_fit
from .ast import Call


def ssd_operands(low, node: Call):
    """(the operands to lower, the state): cb, dt, A, and the head dim named by the fourth."""
    if len(node.args) != 4:
        low.errors.error(f"ssd takes 4 arguments, got {len(node.args)}", node.span, USAGE)
        return None, None
    p = node.args[3]
    if type(p).__name__ != "Var" or p.name not in low.dims:
        low.errors.error("the fourth argument of ssd must be a declared dim, the values' head "
                         "dim", p.span, USAGE)
        return None, None
    return node.args[:3], (SSD, p.name)


def lower_ssd(low, node: Call, args: list, over: str, vec: type):
    """The Nonlin ``ssd`` of a call, or None (errors reported)."""
    if any(a is None for a in args):
        return None
    cb, dt, a = args
    spans = [arg.span for arg in node.args]
    if not isinstance(cb, vec) or cb.dim not in low.heads_dims:
        low.errors.error("ssd's first argument must be a per-head dot of C and B over the state "
                         "size, dot(C, B, N): one number per group and token pair", spans[0],
                         USAGE)
        return None
    for i, (v, what) in enumerate(((dt, "steps"), (a, "rates")), 1):
        if not isinstance(v, vec) or v.dim is None or v.dim not in low.dims:
            low.errors.error(f"ssd's {what} must be a vector of a declared dim H, one per head",
                             spans[i], USAGE)
            return None
    if any(t in low.tokenwise or t in low.one_token for t in a.terms):
        low.errors.error("ssd's rates are one number per head, the same at every token of every "
                         "sequence, but this one is computed from the inputs", spans[2],
                         "use a param of H, or a function of one: -1 * exp(Alog)")
        return None
    if not low.same_dim(dt.dim, a.dim):
        low.errors.error(f"ssd's steps are [{dt.dim}] but its rates [{a.dim}]: one of each per "
                         "head", spans[2], USAGE)
        return None
    width = low.width.name if low.width is not None else None
    dims = {**({width: low.dims[width]} if width in low.dims else {}), **low.dims}
    whole = spread_dim(dims, dt.dim, over)
    if whole is None:
        both = dims[dt.dim].infinite and dims[over].infinite
        low.errors.error(f"ssd: {dt.dim} heads of {over} coordinates each: " + (
            "both grow with the width, n² coordinates" if both else
            f"no declared dim has {dt.dim}·{over}'s size"), spans[3],
            "declare the values' dim (`dim d = ...`), heads times their head dim")
        return None
    groups, heads = low.heads_dims[cb.dim], dims[dt.dim]
    base = low.width.base if low.width else 1
    why = groups_fit(groups, heads) or (
        None if heads.size_at(base) % groups.size_at(base) == 0 else
        f"{groups.size_at(base)} groups do not divide {heads.size_at(base)} heads at the base "
        "width")
    if why is not None:
        low.errors.error(f"ssd: the {groups.size_at(base)} groups of cb cannot each serve a run "
                         f"of consecutive heads of {dt.dim} ({why})", spans[0],
                         "give C and B ngroups·N coordinates with ngroups dividing the heads")
        return None
    out_dim = low.heads(whole, over, node)
    if out_dim is None:
        return None
    names = [low.name_of(v, node.span) for v in args]
    out = low.emit(Nonlin(low.fresh(low.target), SSD, tuple(names), node.span, over), out_dim)
    return low.vec(out, out_dim)
