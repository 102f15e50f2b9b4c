"""The arity of the language's functions that take a fixed number of values (dot, mix, the norms,
the sinks), and the head dim of a norm over each head's coordinates: checked as a call is entered
(:meth:`tensorprog.lang.lower_expr.ExpressionLowering.enter_Call`), with the usage in the error."""

from __future__ import annotations

from .ast import Call
from .lower_sink import SINKS

GROUP_NORMS = ("layernorm", "rmsnorm", "groupnorm")  # over each head, or group, of a dim's size


def arity_fits(low, node: Call) -> bool:
    """Whether the call has one of its function's numbers of arguments; if not, says which."""
    arity = {"dot": (2, 3), "mix": (2, 3, 4), "delta": (3, 4, 6),
             **dict.fromkeys(GROUP_NORMS, (1, 2)), **dict.fromkeys(SINKS, (1, 2))}.get(
                 node.fn, (1,))
    if len(node.args) not in arity:
        usage = {"dot": "dot(u, v) or dot(q, k, dh)",
                 "mix": "mix(p, v), mix(p, v, dv) or mix(p, v, dv, D)",
                 "delta": "delta(tau * dot(q, k, dk), kap * dot(k, k, dk), b, g), or with values "
                          "in heads of their own, delta(sq, sk, b, g, dv, D), or with dots "
                          "decayed per key channel, delta(sq, sk, b)",
                 **{f: f"{f}(s) or {f}(s, z) with a sink z" for f in SINKS}}.get(
            node.fn, f"{node.fn}(h) or {node.fn}(q, dh)" if len(arity) > 1 else
            f"{node.fn}(h)")
        n = " or ".join([", ".join(map(str, arity[:-1])), str(arity[-1])] if len(arity) > 1
                        else [str(arity[0])])
        low.errors.error(f"{node.fn} takes {n} argument{'s' * (arity[-1] > 1)}, "
                          f"got {len(node.args)}", node.span, f"write {usage}")
        return False
    return True


def norm_group(low, node: Call) -> str | None:
    """The head dim of ``rmsnorm(q, dh)``: a declared dim of 2 or more coordinates."""
    arg = node.args[1]
    if type(arg).__name__ != "Var" or arg.name not in low.dims:
        low.errors.error(f"the second argument of {node.fn} must be the head dim", arg.span,
                          f"e.g. `dim dh = 64`, then {node.fn}(q, dh): a norm over each "
                          "head's dh coordinates")
        return None
    size = low.dims[arg.name].size
    if size is not None and size < 2 and node.fn != "groupnorm":  # its pixels still vary
        low.errors.error(f"{node.fn} over heads of {size} coordinate is constant: it never "
                          "changes, which the engine does not model", arg.span,
                          "normalise over heads of 2 or more coordinates, or drop the norm")
        return None
    return arg.name
