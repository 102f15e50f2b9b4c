"""A per-head dot decayed channel by channel: ``ddot(q, k, g, dk)`` (Kimi Delta Attention's
scores and key-key products).

Per head (dk coordinates) and token pair (t, s) of one sequence, with G the cumulative sum over
the tokens of the log decay g (one number per token and key channel: a vector of q's dim),

    ddot_ts = Σ_c q_t[c] k_s[c] exp(G_t[c] - G_s[c])   for s <= t, 0 after,

the dot ``dot(q, k, dk)`` with each channel's product weighted by the decay it accumulated from
token s to token t. Kimi Delta Attention's recurrence S_t = (I - b_t k_t k_tᵀ) diag(exp(g_t))
S_{t-1} + b_t k_t v_tᵀ, o_t = S_tᵀ q_t (the decay applied before the update, as fla's
chunk_kda and transformers' torch fallback do) unrolls into ``delta(ddot(q, k, g, dk),
ddot(k, k, g, dk), b)``: S_t = diag(exp(g_t)) S_{t-1} + k_t w_tᵀ with w_t = b_t (v_t -
(diag(exp(g_t)) S_{t-1})ᵀ k_t), so S_t = Σ_{s<=t} diag(exp(G_t - G_s)) k_s w_sᵀ, o_t = Σ_s
A_ts w_s and w = diag(b)(v - L w), A and L these decayed dots (L strictly below the diagonal):
the delta rule's P with D = 1 (docs/theory.md, "The gated delta rule").

The instruction is the Nonlin ``ddot`` with args (q, k, g) and ``over`` = dk; its value is a
per-head dot's (one number per head and token pair, the heads axis of q's dim by dk). q, k and g
have one dim (no grouped keys); g is a vector per token of the same sequence.
"""

from __future__ import annotations

from .heads import heads_dim_name

DDOT = "ddot"

USAGE = (
    "write ddot(q, k, g, dk): q, k and the log decay g (<= 0) vectors per token of one dim "
    "H·dk, one decay per key channel; then delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, "
    "g, dk), b)"
)


def ddot_dim(dims: dict, ins) -> str | None:
    """The heads axis of ``ddot(q, k, g, dk)``: q's dim in heads of dk."""
    q = dims.get(ins.args[0]) if ins.args else None
    return heads_dim_name(q, ins.over) if q and ins.over else None


def verify_ddot(program, ins, ops: list, key, errors) -> str | None:
    """q, k and g of one dim that dk divides, on a program with a sequence. Returns the heads
    axis (the IR's value_dims)."""
    out = ddot_dim(program.value_dims, ins)
    if len(ins.args) != 3 or any(o is None for o in ops) or len({key(o) for o in ops}) != 1:
        errors.error(
            f"ddot needs q, k and g of one dim (one decay per key channel); {USAGE}", ins.span
        )
        return None
    if out not in program.dim_table:
        errors.error(
            f"ddot over {ins.over}: it must be a dim that divides {ops[0]}; {USAGE}", ins.span
        )
        return None
    return out


def ddot_sequences(ins, ops: list, show, problem) -> tuple[str, ...]:
    """The tag of ddot's value, (T, T): q, k and g each a vector per token of one sequence T (the
    decay accumulates over the tokens between s and t, so they must be one sequence's)."""
    q, k, g = (tuple(t) for t in ops)
    if len(q) != 1 or k != q or g != q:
        problem(
            f"ddot weighs token pairs of one sequence by the decay accumulated between "
            f"them, but q, k and g run over {show(q)}, {show(k)} and {show(g)}",
            ins,
            "compute q, k and g per token of the same sequence (e.g. Wq @ h, Wk @ h, "
            "-softplus(Wg @ h))",
        )
        return ()
    return (q[0], q[0])
