"""Rotary position embeddings (RoPE), recognised as what they are: an exact rotation.

``x * cos(θ) + rotate_half(x) * sin(θ)`` turns each pair of a head's coordinates (i, i + dh/2)
by an angle θ that depends on the token's position and the pair, never on a param. A rotation
keeps every vector's norm per head and token exactly, and ``q_t · k_s`` becomes
``q_t · R(θ_s − θ_t) k_s``: a fixed orthogonal map between two vectors, whose size grows with
the width as ``q · k``'s does (coherently when q and k are correlated, which training makes them
along the rotated directions). So every exponent of the network is that of the same network
without the rotation, and the program writes the rotated vector as the vector itself; the
traced source says so in a comment. Anything else built from slices, concatenations or cos/sin
tables is refused.
"""

from __future__ import annotations

from .values import Half, RopeTerm, Rotated, Trig, Vec
from .where import refuse


class RotaryOps:
    """Rotary position embeddings: slices into halves, rotate_half, cos/sin products, their sum."""

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        v = self.vec(v, node) if not isinstance(v, Vec) else v
        last = len(v.tags) - 1
        if v.tags[-1] == "dh" and dim % len(v.tags) == last and step == 1 and v.dh:
            lo, hi = start or 0, min(v.dh if end is None else end, v.dh)
            if (lo, hi) == (0, v.dh // 2):
                return Half(v, 0)
            if (lo, hi) == (v.dh // 2, v.dh):
                return Half(v, 1)
        raise refuse(node, "a slice of a vector's coordinates (other than rotary's two halves)")

    def op_cat(self, node, tensors, dim=0):
        if len(tensors) == 2 and all(isinstance(t, Half) for t in tensors):
            a, b = tensors
            same = a.src.name == b.src.name and dim % len(a.src.tags) == len(a.src.tags) - 1
            if same and (a.part, a.sign, b.part, b.sign) == (1, -1, 0, 1):
                return Rotated(a.src)
        raise refuse(node, "a concatenation of vectors (other than rotary's rotate_half)")

    def rope_term(self, node, x, table: Trig):
        if table.kind == "cos" and not isinstance(x, (Half, Rotated, RopeTerm)):
            x = self.vec(x, node)
            if x.tags[-1] == "dh":
                return RopeTerm(x, "cos", table.angle)
        if table.kind == "sin" and isinstance(x, Rotated):
            return RopeTerm(x.src, "sin", table.angle)
        raise refuse(node, f"a product with a {table.kind} table outside a rotary embedding")

    def rope_sum(self, node, u: RopeTerm, v: RopeTerm, alpha) -> Vec:
        kinds = {u.kind, v.kind}
        if u.src.name != v.src.name or u.angle != v.angle or kinds != {"cos", "sin"} or alpha != 1:
            raise refuse(node, "a sum of cos and sin terms that is not a rotation of one vector")
        if u.src.name not in self.out.rotary:
            self.out.rotary.append(u.src.name)
        return u.src
