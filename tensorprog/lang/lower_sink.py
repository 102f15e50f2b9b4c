"""Lowering ``softmax(s, z)`` and ``causal_softmax(s, z)``: attention with a sink.

A sink is one learned logit per head (gpt-oss's and MiMo-V2-Flash's ``sinks``, Granite's
``s_aux``): every row of the head's weights is normalised with ``exp(z_h)`` beside its logits,
``p_ts = exp(s_ts) / (exp(z_h) + sum_s' exp(s_ts'))``, and the sink's own weight is dropped, so
a row may give less than 1 in all to the values. z is a vector param with one entry per head of
the logits (a finite dim ``H`` for a fixed head count, ``n / dh`` when the head dim is fixed).
The engine derives it as a logit (docs/theory.md, "Attention sinks"); anything else in the
second argument is refused here, at the call.

The second argument may instead be attention logits of the same queries and heads over the keys
of another sequence (T5Gemma 2's merged attention: the decoder's queries against its own keys
and the encoder's, under one softmax). ``softmax(a, b)`` is then the weights on a's keys of the
softmax over a's and b's keys together, ``p_ts = exp(a_ts) / (sum_s' exp(a_ts') + sum_r
exp(b_tr))``, and ``softmax(b, a)`` the weights on b's keys of the same softmax: the sink
generalised from one constant logit per head to a second sequence of keys. ``causal_softmax``
masks the later keys of the queries' own sequence, whichever argument holds them (the
sequences' check, ir/sequences.py, says which one does, and refuses a causal one where neither
does). The output of ``mix(softmax(a, b), v) + mix(softmax(b, a), c)`` is then exactly the
attention over the concatenated keys [a's; b's] with values [v; c].
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
    if isinstance(z, vec) and z.dim in low.heads_dims:
        return _merged(low, node, s, z, vec)
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


def _merged(low, node: Call, a, b, vec):
    """``softmax(a, b)`` over two sets of attention logits: the weights on a's keys of one
    softmax over both. The two must have the same heads (their queries' pairing with the
    tokens is the sequences' check's)."""
    if low.heads_dims[a.dim].key() != low.heads_dims[b.dim].key():
        low.errors.error(f"{node.fn}(a, b) normalises a's logits with b's beside them, per "
                         "head, but a and b have different heads", node.span,
                         "take both from the same queries in the same heads: "
                         "dot(q, k, dh) and dot(q, kc, dh)")
        return None
    names = (low.name_of(a, node.span), low.name_of(b, node.span))
    out = low.emit(Nonlin(low.fresh(low.target), node.fn, names, node.span), a.dim)
    return low.vec(out, a.dim)
