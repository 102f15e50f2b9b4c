"""RWKV's time mixing, per channel: ``wkv(g, u, k, v)`` (RWKV-4's WKV).

Per channel c of one sequence, with g[c] <= 0 the log of the decay per token, u[c] the bonus
of the current token and k, v vectors per token of one dim D,

    wkv_t = (Σ_{s<t} e^{(t-1-s) g + k_s} v_s + e^{u + k_t} v_t)
            / (Σ_{s<t} e^{(t-1-s) g + k_s} + e^{u + k_t}),

each channel its own (no sum over D): an average of the values of the tokens up to t, weighed
by a softmax over s of the logits L_ts = k_s + (t-1-s) g (s < t), u + k_t (s = t). That is
transformers' ``rwkv_linear_attention`` (its max-stabilised loop over the tokens is this
softmax) with g = -exp(time_decay), u = time_first.

The instruction is the Nonlin ``wkv`` with args (g, u, k, v): g and u values of dim D without
tokens (params, or functions of params: ``-1 * exp(w)``), k and v vectors per token of one
sequence, of dim D. Its value is a vector per token of dim D.
"""

from __future__ import annotations

WKV = "wkv"

USAGE = (
    "write wkv(g, u, k, v): g (the log decay per token, <= 0, e.g. -1 * exp(w)) and u (the "
    "current token's bonus) params of dim D, or functions of params, without tokens; k and v "
    "vectors per token of dim D"
)


def verify_wkv(program, ins, ops: list, key, errors) -> str | None:
    """g, u, k and v of one dim. Returns it (the IR's value_dims)."""
    if len(ins.args) != 4 or any(o is None for o in ops) or len({key(o) for o in ops}) != 1:
        errors.error(
            f"wkv needs g, u, k and v of one dim (each channel its own); {USAGE}", ins.span
        )
        return None
    return ops[2]


def wkv_sequences(ins, ops: list, show, problem) -> tuple[str, ...]:
    """The tag of wkv's value, k's: k and v vectors per token of one sequence (a recurrence over
    its tokens), g and u one number per channel for every token."""
    g, u, k, v = (tuple(t) for t in ops)
    if len(k) != 1 or v != k:
        problem(
            f"wkv runs a recurrence over one sequence's tokens, but its keys and values run "
            f"over {show(k)} and {show(v)}",
            ins,
            "compute k and v per token of the same sequence (e.g. Wk @ h, Wv @ h)",
        )
        return k
    for name, tag in ((ins.args[0], g), (ins.args[1], u)):
        if tag:
            problem(
                f"wkv's decay and bonus are one number per channel, but {name} runs over "
                f"{show(tag)}",
                ins,
                "use a param of the keys' dim (or a function of one)",
            )
    return k
