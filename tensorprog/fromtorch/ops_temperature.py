"""A param transformed before its use, where the language says it: Swin V2's per-head
temperature of its cosine attention, ``logits * torch.clamp(logit_scale, max=log(100)).exp()``.

transformers' Swinv2SelfAttention multiplies head h's logits (the cosine similarities of its
queries and keys: F.normalize, ops_norm.py) by exp(min(τ_h, c)), c = log 100, τ = logit_scale a
param [heads, 1, 1]. Head h's logit is a sum over its coordinates of q·k, so g_h times it is
the same sum with q times g_h: the program writes ``dot(spread(exp(c * cap(τ / c)), dh) * q, k,
dh)`` (cap(t) = min(t, 1), so c·cap(τ/c) = min(τ, c)), the model's value exactly.

Why τ keeps a vector param's exponents (the engine derives them, nothing here sets them): exp
and cap are fixed functions of the width-independent argument τ, Θ(1) at init (log 10) and
after its updates; exp(x) is Θ(1) with a Θ(1) slope wherever x is O(1) (the 'exponential'
class, ir/functions.py), cap passes a change on (slope 1 below the clamp), so τ's size and its
change pass through as they would for τ itself, and back to τ_h comes the sum of head h's
gradient over its dh coordinates (finite for a fixed head dim: +0), a bias of one entry per
head. Past the clamp (τ_h ≥ c) the slope is 0: τ_h gets no gradient and stops moving, at every
width alike, since whether τ_h reaches c depends only on Θ(1) quantities (its init, its Θ(1)
steps): the clamp changes which steps move τ, not how any size scales with the width.

``exp`` and a clamp at numbers (ops_pointwise.op_clamp's forms) of a whole param are kept as a
:class:`ParamFn` (ops_paramfn.py, which also traces such functions used as a gain) and
consumed here as that temperature.
"""

from __future__ import annotations

import dataclasses

from .values import ParamFn, PRef, Scores, Vec
from .where import op_name, refuse, strip_prefix

_HELP = ("make the transformed tensor the param (initialise it as the transform of today's "
         "init), or trace the model without this part; a temperature of attention logits "
         "within windows is traced as Swin V2's: logits * clamp(logit_scale, max=c).exp(), "
         "logit_scale [heads, 1, 1], before the bias is added")


class TemperatureOps:
    """exp and clamp of a param alone (ops_paramfn.py), kept until they multiply attention
    logits per head."""

    def temperature(self, node, args):
        """``logits * g`` (or ``g * logits``) of eager logits within windows and a param
        [heads, 1, 1] (or a kept function of one): the logits with the per-head gain ``gain``;
        None where the product is no such."""
        from .ops_windows import WinScores

        if op_name(node) != "mul" or len(args) != 2:
            return None
        scores = next((a for a in args if isinstance(a, WinScores)), None)
        g = next((a for a in args if isinstance(a, (ParamFn, PRef))), None)
        plain = next((a for a in args if isinstance(a, Scores)), None)
        if scores is None and plain is not None and g is not None:
            # a window as large as the grid (Swin V2's later stages): the tokens in their own
            # order, one window, whose bias and mask follow
            i = next(i for i, a in enumerate(args) if a is plain)
            scores = self.one_grid_scores(plain, self._shape(node.args[i]))
            args = [scores if a is plain else a for a in args]
        if scores is None or g is None:
            return None
        ref = g.ref if isinstance(g, ParamFn) else g
        heads = self._shape(node.args[next(i for i, a in enumerate(args) if a is scores)])
        shape = tuple(ref.shape)
        while len(shape) > 3 and shape[0] == 1:
            shape = shape[1:]
        if scores.bias is not None or scores.split or scores.probs or scores.gain is not None \
                or len(heads) != 4 or shape != (heads[1], 1, 1) or len(ref.shape) > len(heads):
            # (a param of more axes than the logits broadcasts them to more: [1, 1, H, 1, 1])
            raise refuse(node, f"the param {strip_prefix(ref.target)} of shape "
                         f"{list(ref.shape)} multiplying attention logits within windows "
                         f"{list(heads)}: traced only as one number per head, [heads, 1, 1], "
                         "times q @ k.T (or its scale) before the bias and mask are added",
                         help=_HELP)
        g = g if isinstance(g, ParamFn) else ParamFn(ref, "{}", "mul")
        return dataclasses.replace(scores, gain=g, node=node.name)

    def tempered_query(self, node, q: Vec, gain: ParamFn) -> Vec:
        """The queries times their head's temperature: ``spread(f(τ), dh) * q``, whose dot with
        the keys is the model's logits times f(τ) (the logits' own node, ``_within``)."""
        heads = q.dim // q.dh
        tau = self.vector_param(PRef(gain.ref.target, (heads,)), node)
        name = self.fresh("tq")  # no torch node holds it: the logits that follow do
        form = gain.form.replace("{}", tau)
        self.out.stmts.append(f"{name} = spread({form}, {self.dim(q.dh)}) * {q.name}")
        return Vec(name, q.tags, q.dim, q.dh)
