"""A param times a number, added to a vector times the same number: Funnel's (and Transformer-XL's)
query biases, read as the common factor of the sum.

transformers' FunnelRelMultiheadAttention writes

    q_head = q_head * self.scale                 # q = W @ x viewed (..., H, dh)
    r_w_bias = self.r_w_bias * self.scale        # a param [H, dh]
    content_score = einsum("bind,bjnd->bnij", q_head + r_w_bias, k_head)

(likewise ``r_r_bias`` and ``r_s_bias``, each added to the same scaled query). The language's
params enter the program as they are, so ``c * p`` alone has no form: a number on a param would
be its multiplier, which the trace does not read. But the sum is exactly

    c·q + c·p = c·(q + p),

the program's ``q + p`` (p a vector param of the query's H·dh features, laid out as its heads
are: coordinate (h, i) of p meets coordinate (h, i) of q) times the number c, which the trace
writes as any number on a vector: a coefficient read at both traced widths, so that a scale the
forward computes from the width (1/sqrt(dh), with dh = n/H) gets its measured exponent. ``q +
p`` is linear in q's layer and p as ``W @ x + b`` is, so a multiplier on it folds into both.

Only that exact form is read: ``c * p`` kept (a :class:`~.values.ScaledParam`) while every
reader of the product is a sum, the other term ``k * v`` for a vector v and the same number
k = c, and p a plain param of v's features (``[n]``, or ``[H, dh]`` where v is viewed per head).
Any other use (a product, another number on the vector, a param laid out otherwise) is refused
at the line that writes it."""

from __future__ import annotations

import math

from .identify import identify
from .values import Affine, Pointwise, PRef, ScaledParam, Vec
from .where import op_name, refuse, strip_prefix

_HELP = (
    "multiply the sum by the number once, c * (x + p), or fold the number into the param "
    "(its init times c, and under Adam its LR too: the same training)"
)


def _linear_coefficient(f) -> float | None:
    """k where f(t) = k·t (a vector times a number), else None: fitted as any chain of
    coordinatewise ops is (identify.py), on points far out too, since a chain linear near 0
    alone (``relu(q + 4) - 4``, a clamp at 5) is no number times the vector."""
    found = identify(f)
    return found[1] if found is not None and found[0] == "identity" else None


class ScaledParamOps:
    """``c * p`` kept till the sum ``c * v + c * p`` that reads it, traced as ``c * (v + p)``."""

    def scaled_param(self, node, ref: PRef, c: float) -> ScaledParam | None:
        """``c * p`` of a plain param whose every reader is a sum or a difference: kept; None
        otherwise (the caller refuses the product)."""
        plain = not (
            ref.t
            or ref.rows
            or ref.offset
            or ref.expert is not None
            or ref.cols
            or ref.period
            or ref.std is not None
        )
        if not plain or not node.users or any(op_name(u) not in ("add", "sub") for u in node.users):
            return None
        return ScaledParam(ref, float(c), node.name)

    def scaled_param_added(self, node, u, v, alpha):
        """``c * v + c * p`` (``u + alpha * v``, alpha 1 or -1 with the param second, 1 with
        it first): the program's ``c * (v + p)``; None where neither term is a kept product."""
        if not any(isinstance(x, ScaledParam) for x in (u, v)):
            return None
        s, x = (u, v) if isinstance(u, ScaledParam) else (v, u)
        target = strip_prefix(s.ref.target)
        if isinstance(x, ScaledParam) or (s is u and alpha != 1) or alpha not in (1, -1):
            raise refuse(
                node,
                f"a sum of the param {target} times {s.c:g} with "
                f"{'another param' if isinstance(x, ScaledParam) else 'a vector'} "
                "other than x + c * p or c * p + x: the sum is read only as c * (x + "
                "p) of a vector x",
                help=_HELP,
            )
        k = (
            _linear_coefficient(x.f)
            if isinstance(x, Pointwise)
            else (1.0 if isinstance(x, (Vec, Affine)) else None)
        )
        if k is None or not math.isclose(k, s.c, rel_tol=1e-9, abs_tol=0.0):
            said = f"times {k:g}" if k is not None else "not a vector times a number"
            raise refuse(
                node,
                f"a sum of the param {target} times {s.c:g} with a vector "
                f"{said}: c * v + c * p is c * (v + p), but with another number (or "
                "none) on the vector the number on the param would be its own "
                "multiplier, which the trace does not read from the forward",
                help=_HELP,
            )
        src = self.vec(x.src if isinstance(x, Pointwise) else x, node)
        b = self.vector_param(self._laid_as(node, s, src), node)
        name = self.fresh(f"{node.name}_summed")  # the node's value is c times this
        self.out.stmts.append(f"{name} = {src.name} {'+' if alpha == 1 else '-'} {b}")
        made = self.added_bias(src.name, b)
        if made is not None:  # q + p linear in (W, p): a multiplier on it folds into both
            self.out.producers[name] = made
        return Pointwise(Vec(name, src.tags, src.dim, src.dh), lambda t, c=s.c: c * t)

    def _laid_as(self, node, s: ScaledParam, x: Vec) -> PRef:
        """The param of ``s`` as the vector param of x's features it is: ``[n]`` against x's
        last axis of features, ``[H, dh]`` against x's last two axes as its heads; refused
        otherwise (torch would broadcast it over another axis)."""
        shape, tags = tuple(s.ref.shape), tuple(x.tags)
        out = tuple(node.meta["val"].shape)
        fits = out == tuple(
            self._shape(node.args[0] if s.node != node.args[0].name else node.args[1])
        )
        if len(shape) == 1:
            fits = fits and tags[-1:] == ("F",) and x.dim == shape[0]
        else:
            fits = (
                fits
                and len(shape) == 2
                and tags[-2:] == ("H", "dh")
                and x.dh == shape[1]
                and x.dim == math.prod(shape)
            )
        if not fits:
            raise refuse(
                node,
                f"a sum of a vector and the param {strip_prefix(s.ref.target)} "
                f"of shape {list(shape)} times {s.c:g}, laid out other than as the "
                f"vector's features (its axes {list(tags)}): torch broadcasts it over "
                "another axis, which the program's vector param, one entry per "
                "feature, does not",
                help=_HELP,
            )
        return PRef(s.ref.target, (math.prod(shape),))
