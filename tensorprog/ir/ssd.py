"""Mamba-2's selective state-space mixing (SSD) as mixing weights: ``ssd(cb, dt, A, P)``.

Per head h (values in heads of P coordinates), with a per-token step dt_t > 0 and a decay rate
A (Mamba-2's ``dt = softplus(dt_raw + dt_bias)``, ``A = -exp(A_log)``), the state recurrence

    state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_tᵀ,   y_t = state_t C_t

unrolls over the finitely many tokens into a token mixing, y = P x per head, with

    P_ts = exp(G_t - G_s) (C_t · B_s) dt_s  for s <= t (0 after),   G_t = Σ_{r<=t} dt_r A,

a smooth function of finitely many scalars per head and token pair: the dot C_t · B_s over the
finite state size N (``cb = dot(C, B, N)``), dt and A. The instruction is the Nonlin ``ssd``
with args (cb, dt, A) and ``over`` = P; ``mix(p, x, P)`` then mixes the values, and Mamba-2's
skip D x is ``spread(D, P) * x``.

Shapes: cb is a per-head dot's value (G heads: Mamba-2's ``ngroups`` groups of B and C); dt a
vector per token of dim H, one step per head of the output; A a value of dim H without tokens (a
param, or a function of one); H·P a declared dim, whose heads of P the output's heads are. The
G groups serve H/G consecutive heads each (``repeat_interleave``, as Mamba-2's B and C do), so
G divides H. Its dim is the heads axis ``heads_dim_name(D, P)`` with D the dim of H·P's size
(the dim ``spread(dt, P)`` would have).
"""

from __future__ import annotations

from .heads import heads_dim_name, split_heads_dim
from .spread import spread_dim

SSD = "ssd"

USAGE = ("write p = ssd(cb, dt, A, P): cb = dot(C, B, N) (C, B of ngroups·N per token), dt a "
          "vector per token of H (one step per head), A a param of H (Mamba-2's -exp(A_log)), "
          "P the values' head dim (H·P a declared dim); then mix(p, x, P)")


def ssd_dim(dims: dict, steps: str | None, ins) -> str | None:
    """The heads axis of ``ssd(cb, dt, A, over)`` (``ins``) for dt of dim ``steps``: the heads of
    ``over`` of the declared dim of steps·over's size; None where there is none (or the call has
    not its three arguments, which the verifier refuses)."""
    if len(ins.args) != 3 or not steps:
        return None
    whole = spread_dim(dims, steps, ins.over or "")
    return None if whole is None else heads_dim_name(whole, ins.over or "")


def groups_fit(groups, heads) -> str | None:
    """Why G = ``groups`` groups of B and C (a ``Dim``) cannot serve H = ``heads`` heads, each
    a whole run of H/G consecutive heads at every width; None when they can."""
    if groups.infinite and not heads.infinite:
        return "the groups grow with the width, the heads do not"
    if groups.infinite:
        ratio = heads.mult / groups.mult
        return None if ratio.denominator == 1 else "H/G is not a whole number"
    if heads.infinite:  # whole at the widths used: the lowering checks the base width
        return None
    return None if heads.size % groups.size == 0 else (
        f"{groups.size} groups do not divide {heads.size} heads")


def verify_ssd(program, ins, ops: list, errors) -> str | None:
    """ssd(cb, dt, A, P): cb a per-head dot's value, dt and A of one dim H, H·P declared, the
    groups dividing H. Returns its dim (the IR's value_dims), reporting any mismatch."""
    dims = program.dim_table
    if len(ins.args) != 3 or ins.over not in dims:
        errors.error(f"ssd takes (cb, dt, A) and the values' head dim; {USAGE}", ins.span)
        return None
    cb, dt, a = ops
    out = ssd_dim({k: v for k, v in dims.items() if "/" not in k}, dt, ins)
    if cb is None or "/" not in cb or cb not in dims:
        errors.error(f"ssd: {ins.args[0]} must be a per-head dot's value, one number per group "
                     f"and token pair; {USAGE}", ins.span)
    elif dt is None or "/" in dt or a is None or dims[a].key() != dims[dt].key():
        errors.error(f"ssd: {ins.args[1]} and {ins.args[2]} must be vectors of one dim H, one "
                     f"step and one rate per head; {USAGE}", ins.span)
    elif out is None or out not in dims:
        errors.error(f"ssd: no declared dim has {dt}·{ins.over}'s size (the values' heads); "
                     f"{USAGE}", ins.span)
    elif (why := groups_fit(dims[cb], dims[dt])) is not None:
        errors.error(f"ssd: {ins.args[0]}'s {split_heads_dim(cb)[0]}/{split_heads_dim(cb)[1]} "
                     f"groups cannot each serve a run of {dt}'s heads ({why})", ins.span)
    return out


def ssd_sequences(ins, ops: list, show, problem) -> tuple[str, ...]:
    """The sequence tag of ssd's output (cb's: one value per token pair), reporting a cb that is
    not on token pairs of one sequence (a recurrence runs over its own tokens), a dt not per
    token of that sequence, or an A with tokens (one rate per head)."""
    cb, dt, a = (tuple(t) for t in ops)
    if len(cb) != 2 or cb[0] != cb[1]:
        problem(f"ssd runs a recurrence over one sequence's tokens, but {ins.args[0]} runs over "
                f"{show(cb)}", ins, "take cb = dot(C, B, N) with C and B from the same tokens")
        return cb
    if dt != cb[:1]:
        problem(f"ssd's steps {ins.args[1]} must be one vector per token of {cb[0]}, but run "
                f"over {show(dt)}", ins, "compute dt per token, e.g. softplus(Wdt @ h + b)")
    if a:
        problem(f"ssd's rates {ins.args[2]} are one number per head, but run over {show(a)}",
                ins, "use a param of H (or a function of one), e.g. -1 * exp(Alog)")
    return cb
