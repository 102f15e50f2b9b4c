"""A vector rescaled to another's RMS, traced with the language's ``rms(x, D)``.

Gemma 3n's AltUp makes each of its streams from the embedding e, ``h = W @ e``, rescaled to the
embedding's magnitude: ``h * sqrt(mean(e²)) / sqrt(mean(h²).clamp(min=1e-5))``. The RMS of e is
one number per token, which the program holds as ``rms(e, D)``, a vector of ``dim D = 1``, laid
over h's coordinates by ``spread(r, n)``: the whole is ``spread(rms(e, D), n) * rmsnorm(h)``
(the floor read as the norm's eps, ops_norm.py). The walk keeps ``h * RMS(e)`` as a
:class:`Rescaled` value: divided by h's own RMS it is that rescaled norm; read any other way it
is the product ``spread(rms(e, D), n) * h``, which is what it computes. The RMS of a multiple
of a vector, ``c * e`` (Gemma's embedding times sqrt(d)), is the RMS of that program vector,
the one the forward reads elsewhere. Over each head's coordinates (a per-head RMS) there is no
such form: refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine, MeanSq, Pointwise, Vec
from .where import refuse

_HELP = ("rescale a whole vector (its last axis, not viewed per head) by another whole "
         "vector's RMS, sqrt(mean(e²)), or write the model as a program")


@dataclass
class Rescaled:
    """``x * RMS(e)`` of per-token vectors: ``r`` the program's ``rms(e, D)`` (D of one
    coordinate), ``node`` the product's."""

    x: Vec
    r: str
    node: str


class RescaleOps:
    """The products of a vector with a vector's RMS (a :class:`MeanSq` with its root taken)."""

    def rescale_mul(self, node, u, v):
        """``x * sqrt(mean(e²))``: a :class:`Rescaled`; ``(x * RMS(e)) * rsqrt(mean(x²))`` of x's
        own mean square: the rescaled norm. None where neither operand is such a value."""
        for a, b in ((u, v), (v, u)):
            if isinstance(a, Rescaled) and isinstance(b, MeanSq):
                return self._rescaled_norm(node, a, b)
            if isinstance(a, Rescaled) or not isinstance(b, MeanSq) or b.inv or not b.root:
                continue
            if not isinstance(a, (Vec, Affine, Pointwise)):
                return None
            x, e = self.vec(a, node), self._rms_source(node, b)
            if x.tags[-1] == "dh" or e.tags[-1] == "dh" or b.centered:
                raise refuse(node, "a vector times a standard deviation or an RMS over each "
                             "head's coordinates: the language's rms(x, D) is over a whole "
                             "vector's", help=_HELP)
            r = self.fresh(f"{node.name}_rms")
            self.out.stmts.append(f"{r} = rms({e.name}, {self.dim(1)})")
            return Rescaled(x, r, node.name)
        return None

    def _rms_source(self, node, b: MeanSq) -> Vec:
        """The program vector whose RMS ``b``'s root is: its source, or the multiple
        ``sqrt(k) * src`` of it the forward computed (and the program holds) where the mean
        square is of that multiple."""
        if b.k == 1:
            return b.src
        c = b.k**0.5  # the multiple's coefficient, as the walk identified it (to 1e-9)
        made = [v for key, v in self._made.items() if isinstance(key, tuple) and len(key) == 3
                and key[1] == b.src.name and abs(key[2] - c) <= 1e-9 * c and isinstance(v, Vec)]
        if not made:
            raise refuse(node, f"a vector times the RMS of {b.k**0.5:g} times a vector that "
                         "the program holds no multiple of (the trace reads the RMS of a "
                         "vector the forward computes and reads elsewhere)", help=_HELP)
        return made[0]

    def _rescaled_norm(self, node, a: Rescaled, b: MeanSq):
        """``x * RMS(e) / RMS(x)``: ``spread(rms(e, D), n) * rmsnorm(x)``."""
        if not b.inv or b.centered or b.k != 1 or b.src.name != a.x.name:
            raise refuse(node, "a vector rescaled to another's RMS, then multiplied by "
                         "anything but the inverse RMS of itself (x * RMS(e) / RMS(x), Gemma "
                         "3n's AltUp magnitudes)", help=_HELP)
        x = a.x
        normed = self.fresh(f"{node.name}_normed")
        self.out.stmts.append(f"{normed} = rmsnorm({x.name})")
        name = self.emit_vector(node.name, f"spread({a.r}, {self.dim(x.dim)}) * {normed}")
        return Vec(name, x.tags, x.dim, x.dh)

    def emit_rescaled(self, v: Rescaled) -> Vec:
        """``x * RMS(e)`` read as anything else: ``spread(rms(e, D), n) * x``, once."""
        if v.node not in self._made:
            name = self.emit_vector(v.node, f"spread({v.r}, {self.dim(v.x.dim)}) * {v.x.name}")
            self._made[v.node] = Vec(name, v.x.tags, v.x.dim, v.x.dh)
        return self._made[v.node]
