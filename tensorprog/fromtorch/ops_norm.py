"""Norms written by hand, recognised as the language's ``layernorm`` and ``rmsnorm``.

Cohere's LayerNorm computes ``(x - mean(x)) * rsqrt(mean((x - mean(x))²) + eps)``, Gemma 4's
RMSNorm ``x * pow(mean(x²) + eps, -0.5)``, others ``x / sqrt(mean(x²) + eps)``: the same
functions of x as ``layernorm(x)`` and ``rmsnorm(x)`` (eps aside, as for torch's own norms), over
the vector's coordinates or each head's. The walk follows the pieces as values of their own
(:class:`Mean`, :class:`Centered`, :class:`MeanSq`) and emits the norm at the product that
completes it; a piece used any other way (a centred vector on its own, a mean that centres
another vector, a variance multiplying a vector that is not its own centred self) is refused
where it is used, since the language has no such vector.

An L2 normalisation over d coordinates (of the vector, or of each head): ``F.normalize(x,
dim=-1)`` (``x / max(|x|, eps)``: Swin V2's and YOSO's cosine attention, SwiftFormer's), ``x /
(|x| + eps)``, or a sum of squares, ``x * rsqrt((x * x).sum(-1, keepdim=True) + eps)`` (the FLA
library's ``l2norm``, nGPT's and Dory's), is ``d^-1/2 * rmsnorm(x)``: |x| = sqrt(d)·RMS(x), and
sum(x²) + eps = d·(mean(x²) + eps/d), an eps smaller still on the mean square. It is traced so,
d^-1/2 a constant read at both widths: over a head of a fixed dim it is one number; where d grows
with the width it is the model's own power n^-1/2 of it (trace.py's width constants), and
``normed.l2_into_scales`` reads it as part of the multiplier of the attention logits that alone
read the normalised vector (cosine attention's 1/d: µP's own), or leaves it to ``MuP``, which
refuses a factor nothing can take after the norm (normed.py).

A floor on the mean square, ``x / sqrt(mean(x²).clamp(min=f))`` (Gemma 3n's AltUp magnitudes),
is the same norm, the floor aside as eps is: sqrt(max(m, f)) and sqrt(m + eps) both equal
sqrt(m) wherever the mean square m is far above f and eps, and no exponent depends on either.
Where the vector is 0 at init (a zero-initialised layer makes it) the floor, not the vector, sets
the divisor while it trains away from 0, and the output is no norm's: refused there.
"""

from __future__ import annotations

import dataclasses

from .ops_arith import times_of
from .values import Affine, Centered, L2Norm, Mean, MeanSq, Pointwise, Vec, init_of
from .where import op_name, refuse, strip_prefix

_PIECE = "a piece of a norm written by hand"
#: the largest floor on a mean square read as a norm's eps (F.normalize's guard likewise)
MAX_FLOOR = 1e-3


class NormOps:
    """Hooks the arithmetic ops call first (ops_arith.py); each returns None when its operands
    are no piece of a norm."""

    def norm_mean(self, node, x, dims, ndim: int):
        """``mean(-1)`` of a vector: its centre; of its centred square: its variance."""
        if [d % ndim for d in dims] != [ndim - 1]:
            return None
        if isinstance(x, Centered):
            if not x.sq:
                raise refuse(node, f"{_PIECE}: the mean of a centred vector (it is 0)")
            return MeanSq(x.src, centered=True)
        if isinstance(x, (Vec, Affine)):
            v = self.vec(x, node)
            if v.tags[-1] in ("F", "dh"):
                return Mean(v)
        return None

    def norm_center(self, node, u, v, alpha):
        """``x - mean(x)``: the centred vector, to be squared and normalised."""
        if not any(isinstance(t, (Mean, Centered)) for t in (u, v)):
            return None
        if isinstance(v, Mean) and alpha == -1 and isinstance(u, (Vec, Affine)):
            x = self.vec(u, node)
            if x.name == v.src.name:
                return Centered(v.src)
        raise refuse(
            node,
            f"{_PIECE}: a mean of a vector's coordinates added to or subtracted from anything "
            "but the vector it is the mean of (x - mean(x), a layer norm's centring)",
            help="normalise with torch's layer_norm, or write x - x.mean(-1, keepdim=True)",
        )

    def norm_pow(self, node, x, e):
        """A centred vector squared; a mean square to the power -1/2 (rsqrt) or 1/2 (sqrt)."""
        if isinstance(x, Centered) and e == 2 and not x.sq:
            return Centered(x.src, sq=True)
        if isinstance(x, MeanSq) and not (x.inv or x.root) and e in (-0.5, 0.5):
            return dataclasses.replace(x, inv=e < 0, root=e > 0)
        if isinstance(x, MeanSq) and (x.inv or x.root):
            raise refuse(node, f"{_PIECE}: a power {e} of {'an inverse' if x.inv else 'an'} RMS "
                         "(a norm takes the mean square's -1/2 or 1/2 once; x * rsqrt(sqrt(mean("
                         "x²))) divides by the RMS's root, which is no norm)")
        if isinstance(x, (Centered, MeanSq, Mean)):
            raise refuse(node, f"{_PIECE}: a power {e} of a mean or a centred vector (a norm "
                         "takes the centred vector's square, and its mean's -1/2 or 1/2)")
        return None

    def norm_sqrt(self, node, x):
        return self.norm_pow(node, x, 0.5)

    def norm_div(self, node, u, v):
        """``x / sqrt(mean(x²) + eps)``: the product with the mean square's inverse root;
        ``x / |x|`` (F.normalize): ``d^-1/2 * rmsnorm(x)``, d^-1/2 a constant of the width."""
        if isinstance(v, MeanSq) and v.root:
            return self.op_mul(node, u, dataclasses.replace(v, root=False, inv=True))
        if isinstance(v, L2Norm):
            x = self.vec(u, node) if isinstance(u, (Vec, Affine, Pointwise)) else None
            if x is None or x.name != v.src.name:
                raise refuse(node, f"{_PIECE}: a division by another vector's L2 norm (F."
                             "normalize divides a vector by its own)")
            d = int(self._shape(node.args[0])[-1])
            return self._l2(node, x, d, d**-0.5)
        return None

    def _l2(self, node, x: Vec, d: int, c: float) -> Vec:
        """``c * rmsnorm(x)``: x's L2 normalisation over its d coordinates (or each head's),
        c = d^-1/2 (times a constant the forward put in the squares), a slot the merge reads at
        both widths (a power of the width where d grows: normed.l2_into_scales)."""
        slot = self.coefficient(c, node, "")
        info = self.out.coefs[len(self.out.slots) - 1]
        name = self.emit_vector(node.name, f"{slot} * rmsnorm({self.norm_args(x)})")
        info.update(out=name, norm=d)
        return Vec(name, x.tags, x.dim, x.dh)

    def _l2_mul(self, node, u, v):
        """``x * rsqrt(sum(x²) + eps)`` (FLA's l2norm): :meth:`_l2`; ``(c x) * rsqrt(sum((c
        x)²))`` likewise. A vector times another's inverse L2 norm, or times an L2 norm (not
        its inverse), is refused."""
        for a, b in ((u, v), (v, u)):
            if not (isinstance(b, MeanSq) and b.over):
                continue
            if not b.inv:
                raise refuse(node, "a product with a vector's sum of squares or L2 norm, "
                             "sqrt(sum(x²)) (a normalisation divides by the norm)", help="divide "
                             "by the norm (x / x.norm(dim=-1, keepdim=True)), or take the mean "
                             "for an RMS (rms(h, D))")
            if isinstance(a, (Vec, Affine)) and self.vec(a, node).name == b.src.name:
                return self._l2(node, self.vec(a, node), b.over, b.k**-0.5)
            if isinstance(a, Pointwise) and a.src.name == b.src.name and times_of(
                    a.f, (b.k / b.over) ** 0.5):
                return self._l2(node, self.vec(a, node), b.over, b.over**-0.5)
            raise refuse(node, "a product with another vector's inverse L2 norm (an L2 "
                         "normalisation multiplies a vector by its own, x * rsqrt(sum(x²)))")
        return None

    def norm_l2(self, node, x) -> L2Norm:
        """``torch.linalg.vector_norm(x, 2, -1, keepdim=True)`` of a vector's coordinates (or a
        head's): F.normalize's divisor, read only as that."""
        return L2Norm(self.vec(x, node))

    def op_reciprocal(self, node, x):
        """``1 / |x|`` of F.normalize's divisor (Zaya's ``c / x.norm(...)``, which export
        writes as a reciprocal times c): the inverse root of x's sum of squares over its d
        coordinates, what an L2 normalisation multiplies x by (``_l2_mul``)."""
        if isinstance(x, L2Norm):
            # back to the norm's node, past what keeps an L2Norm (its guard's clamp_min or eps
            # added, casts, an expand to x's shape): d is the norm's input's last axis, not
            # that of a value after it (|x| + eps is [.., 1])
            norm = node.args[0]
            while hasattr(norm, "op") and op_name(norm) != "linalg_vector_norm" and norm.args:
                norm = norm.args[0]
            if not hasattr(norm, "op") or op_name(norm) != "linalg_vector_norm":
                raise refuse(node, "a reciprocal of an L2 norm whose torch.linalg.vector_norm "
                             "the trace cannot find before it", help="divide by the norm, x / "
                             "x.norm(dim=-1, keepdim=True)")
            d = int(self._shape(norm.args[0])[-1])  # the coordinates normalised over
            return MeanSq(x.src, inv=True, k=float(d), over=d)
        raise refuse(node, "a reciprocal of anything but a vector's L2 norm (1 / |x|, an L2 "
                     "normalisation's factor)", help="divide by the norm, x / x.norm(dim=-1, "
                     "keepdim=True), or write the model as a program")

    def op_clamp_min(self, node, x, lo):
        """``clamp_min(|x|, eps)``: F.normalize's guard against a division by 0, eps aside; of
        a mean square, a floor (:meth:`norm_floor`)."""
        if not isinstance(lo, (int, float)) or isinstance(lo, bool):
            raise refuse(node, "a clamp_min at a bound that is a tensor, not a number",
                         help="clamp at a number (x.clamp_min(1e-6))")
        if isinstance(x, L2Norm) and 0 <= lo <= MAX_FLOOR:
            return x
        if isinstance(x, MeanSq):
            return self.norm_floor(node, x, float(lo), None)
        raise refuse(node, f"a clamp_min to {lo} of anything but a vector's L2 norm (F."
                     "normalize's guard)", help="clamp with relu (min 0) or relu6")

    def eps_added(self, node, x: MeanSq, eps: float | None) -> MeanSq:
        """``mean(x²) + eps`` under a root (a norm's eps, aside as torch's norms' is), or a
        small one on a sum of squares or after a root (``sum(x²) + eps``, ``sqrt(sum(x²)) +
        eps``, eps <= MAX_FLOOR, as ``|x| + eps``): the norm, eps aside (module docstring). A
        number subtracted, or added to the inverse root, or a larger eps on a sum of squares
        or after a root (where the program's norm would not compute the model's) is refused."""
        if eps is not None and 0 <= eps and not x.inv and (
                eps <= MAX_FLOOR or not (x.root or x.over)):
            return x
        what = ("a subtraction with" if eps is None or eps < 0 else "a number added to the "
                "inverse root of" if x.inv else f"an eps of {eps:g} (above {MAX_FLOOR:g}) added "
                "to" + " the root of" * x.root)
        raise refuse(node, f"{what} a vector's {'sum of squares' if x.over else 'mean square'}"
                     ": a norm divides by sqrt(mean(x²) + eps), "
                     "eps aside where small", help="add a small eps under the root (x * torch."
                     "rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)), or use F.normalize")

    def norm_floor(self, node, x: MeanSq, lo: float | None, hi: float | None) -> MeanSq:
        """``mean(x²).clamp(min=f)`` (or its root's, ``rms.clamp(min=f)``, a floor f² on the
        mean square), f² <= MAX_FLOOR: the norm it completes is the language's, the floor
        aside as a norm's eps is (module docstring). A ceiling, a higher floor, a clamp of the
        inverse root, or a floor under a vector that is 0 at init is refused."""
        # a floor at or below 0 is no bound: a mean square and its root are never negative
        floor = None if lo is None else max(lo, 0.0) ** (2 if x.root else 1)
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        what = (f"{'an inverse RMS' if x.inv else 'an RMS' if x.root else 'a mean square'} "
                f"clamped to {bounds}")
        if hi is not None or floor is None or x.inv or not 0 <= floor <= MAX_FLOOR:
            raise refuse(node, f"{what}: the language's norms divide by sqrt(mean(x²) + eps), "
                         "which a floor on the mean square of at most "
                         f"{MAX_FLOOR:g} matches where the mean square is far above it; a "
                         "ceiling, a higher floor or a clamp of its inverse changes the norm "
                         "where vectors are of size 1",
                         help="floor the mean square at a small number (mean(x²).clamp(min="
                         "1e-5)) or add an eps (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) "
                         "+ eps))")
        zero = self._zero_at_init(x.src)
        if floor > 0 and zero is not None:
            raise refuse(node, f"{what} of a vector that is 0 at init ({zero} is zero-"
                         "initialised): the floor, not the vector, sets the divisor while the "
                         "vector trains away from 0, so the output is not of size 1 as a norm's",
                         help="initialise the layer that makes the vector at random, or add an "
                         "eps (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) and "
                         "accept what a norm of a vector near 0 does")
        return x

    def _zero_at_init(self, v: Vec) -> str | None:
        """The torch name of the zero-initialised weight whose ``W @ x (+ b)`` is v (its bias,
        if any, zero too), or None."""
        w, b = self.out.producers.get(v.name, (None, None))
        uses = [self.out.params.get(p) for p in (w, b) if p is not None]
        if w is None or None in uses:
            return None
        if all(init_of(self.base, u.target, u.index) == ("const", 0.0) for u in uses):
            return strip_prefix(uses[0].target)
        return None

    def norm_mul(self, node, u, v):
        """The product that completes a norm: the centred vector times the inverse root of its
        own variance is ``layernorm(x)``; a centred vector times itself, its square; a vector
        times another's RMS, rescaled to it (ops_rescale.py)."""
        if self._summed_square(node, u):  # x * x, summed over its coordinates
            return Pointwise(self.vec(u, node), lambda t: t * t)
        for a, b in ((u, v), (v, u)):  # c / |x| = 1 / |x / c|: of the squares of x / c
            if isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 and \
                    isinstance(b, MeanSq) and b.inv and b.over:
                return dataclasses.replace(b, k=b.k / a**2)
        l2 = self._l2_mul(node, u, v)  # FLA's l2norm, x * rsqrt(sum(x²) + eps)
        if l2 is not None:
            return l2
        rescaled = self.rescale_mul(node, u, v)  # Gemma 3n's AltUp magnitudes
        if rescaled is not None:
            return rescaled
        for a, b in ((u, v), (v, u)):
            if isinstance(a, Centered) and isinstance(b, Centered) and a.src.name == b.src.name \
                    and not (a.sq or b.sq):
                return Centered(a.src, sq=True)
            if isinstance(b, MeanSq) and b.inv and b.centered:
                if not (isinstance(a, Centered) and not a.sq and a.src.name == b.src.name):
                    raise refuse(node, f"{_PIECE}: the inverse standard deviation of a vector "
                                 "multiplying anything but that vector centred (a layer norm)")
                return self._hand_norm(node, "layernorm", a.src)
            if isinstance(b, MeanSq) and b.inv and b.k != 1 and not isinstance(a, Pointwise):
                # x * rsqrt(mean((c x)²)) is rmsnorm(x) / c: a constant after the norm, which
                # the program (rmsnorm(x)) would leave out
                raise refuse(node, f"{_PIECE}: a vector times the inverse RMS of a multiple of "
                             "it (rmsnorm(x) divided by a constant)")
            if isinstance(b, MeanSq) and not b.inv and isinstance(a, (Vec, Affine, Pointwise)):
                raise refuse(node, "a vector times a vector's mean square, mean(h²) (a norm "
                             "divides by its root, a rescaling multiplies by it: rms(h, D))",
                             help="take the root (sqrt(mean(h²))) or its inverse (a norm)")
        if any(isinstance(t, (Centered, Mean, L2Norm)) for t in (u, v)):
            raise refuse(node, f"{_PIECE}: a product of a mean, a centred vector or an L2 norm "
                         "with anything but the inverse root of its variance (a layer norm)")
        return None

    def _summed_square(self, node, u) -> bool:
        """Whether ``node`` is ``x * x`` of a vector, read only by sums over its last axis (FLA's
        l2norm, ``x * rsqrt((x * x).sum(-1, keepdim=True) + eps)``): a square, for the sum to
        complete as a norm's (:meth:`op_sum`), not a product of two vectors."""
        last = ([-1], [len(self._shape(node)) - 1])
        return op_name(node) == "mul" and len(node.args) == 2 and node.args[0] is node.args[
            1] and isinstance(u, (Vec, Affine)) and bool(
            node.users) and all(op_name(s) == "sum" and len(s.args) > 1 and list(
                s.args[1] or ()) in last for s in node.users)

    def _hand_norm(self, node, fn: str, x: Vec) -> Vec:
        name = self.emit_vector(node.name, f"{fn}({self.norm_args(x)})")
        return Vec(name, x.tags, x.dim, x.dh)

    def op_sqrt(self, node, x):
        root = self.norm_sqrt(node, x)
        if root is None:
            return self.coordinatewise(node, x, lambda t: t.sqrt())
        return root

    def op_sum(self, node, x, dims=None, keepdim=False, **kw):
        ndim = len(self._shape(node.args[0]))
        axes = list(dims) if dims else list(range(ndim))
        pooled = self.token_sum(node, x, [d % ndim for d in axes], keepdim)  # (ops_pool.py)
        if pooled is not None:
            return pooled
        if isinstance(x, Pointwise) and [d % ndim for d in axes] == [ndim - 1]:
            k = square_factor(x.f)
            if k is None:
                raise refuse(node, "a sum over a vector's coordinates of anything but its "
                             "squares (an L2 norm's sum(x²), FLA's l2norm)", help="normalise "
                             "with x * rsqrt(x.pow(2).sum(-1, keepdim=True) + eps), or "
                             "F.normalize")
            d = int(self._shape(node.args[0])[-1])
            return MeanSq(x.src, k=k * d, over=d)  # d·mean((√k x)²): a norm's, if anything
        raise refuse(node, "a sum over axes of a traced value (the language's vectors are per "
                     "token; a norm takes the mean of the coordinates)")


def square_factor(f) -> float | None:
    """k where the coordinatewise f(t) = k·t², k > 0 (a square, (c x)² = c² x²), else None."""
    import torch

    t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    k = float(f(torch.ones(1, dtype=torch.float64)))
    return k if k > 0 and torch.allclose(f(t), k * t * t) else None
