"""Lowering ``softmax(s, z)`` and ``causal_softmax(s, z)``: attention with a sink.

A sink is one learned logit per head (gpt-oss's and MiMo-V2-Flash's ``sinks``, Granite's
``s_aux``): every row of the head's weights is normalised with ``exp(z_h)`` beside its logits,
``p_ts = exp(s_ts) / (exp(z_h) + sum_s' exp(s_ts'))``, and the sink's own weight is dropped, so
a row may give less than 1 in all to the values. z is a vector param with one entry per head of
the logits (a finite dim ``H`` for a fixed head count, ``n / dh`` when the head dim is fixed).
The engine derives it as a logit (docs/theory.md, "Attention sinks"); anything else in the
second argument is refused here, at the call.
"""

from __future__ import annotations

from ..ir.program import Nonlin
from .ast import Call

SINKS = ("softmax", "causal_softmax")
_USAGE = ("write {fn}(s, z): s attention logits (tau * dot(q, k, dh)), z a vector param with "
          "one logit per head, `param z : [H]` with H the heads (`dim H = 4` for dh = n / 4)")


def lower_sink(low, node: Call, args: list, vec: type):
    """The Nonlin of a softmax with a sink, or None (errors reported); ``vec`` is the
    lowering's pending vector type. The Nonlin's args are (logits, sink)."""
    s, z = args
    usage = _USAGE.format(fn=node.fn)
    if not isinstance(s, vec) or s.dim not in low.heads_dims:
        what = low.dim_text(s.dim) if isinstance(s, vec) else "a constant"
        low.errors.error(f"a sink joins the softmax of attention logits (one value per head "
                         f"and token pair), not of {what}", node.span, usage)
        return None
    name = z.single() if isinstance(z, vec) else None
    param = next((p for p in low.params if p.name == name), None)
    if param is None or len(param.shape) != 1:
        low.errors.error(f"the sink of {node.fn} must be a vector param, one logit per head",
                         node.span, usage)
        return None
    heads = low.heads_dims[s.dim]
    if low.dims[param.shape[0]].key() != heads.key():
        count = heads.expr(low.width.name if low.width else "n")
        low.errors.error(f"the sink {name} is [{param.shape[0]}], but the logits have "
                         f"{count} heads", node.span,
                         f"give the sink one entry per head: `param {name} : [H]` with "
                         f"`dim H = {count}`")
        return None
    logits = low.name_of(s, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), node.fn, (logits, name), node.span), s.dim)
    return low.vec(out, s.dim)
