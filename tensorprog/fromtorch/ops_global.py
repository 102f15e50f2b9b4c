"""A vector per sequence multiplying every token's vector (SwiftFormer's additive attention).

SwiftFormer's ``EfficientAdditiveAttention`` computes ``w = softmax(q @ w_g * s, dim=-1)``,
``g = sum(w * q, dim=1)``, ``g.unsqueeze(1).repeat(1, T, 1) * k``. The softmax runs over the
last axis, of size 1 (``q @ w_g`` is one number per token): it is the constant 1 (exp(x)/exp(x),
exactly), no gradient reaches ``w_g``, and ``g`` is the sum of the queries over the tokens, T
times ``mean(q)``. It is traced so: the softmax of one entry as the number 1, and the per-sequence
vector broadcast back over the tokens as the program's product ``k * g`` of a vector per token
and one per sequence (docs/language.md), which the emitted module broadcasts over the tokens.
"""

from __future__ import annotations

from .values import OverTokens, Pointwise, Vec
from .where import op_name, refuse, repeat_sizes

_HELP = ("multiply each token's vector by the per-sequence vector given back its token axis "
         "(g.unsqueeze(1) * k, or g.unsqueeze(1).repeat(1, T, 1) * k)")


def _per_sequence(tags) -> bool:
    return tuple(tags or ()) == ("tok", "F")


class GlobalOps:
    """A softmax over one entry, and a vector per sequence multiplying every token's."""

    def one_entry_softmax(self, node, dim) -> float | None:
        """softmax over an axis of one entry: the number 1, exactly; None otherwise."""
        shape = tuple(node.meta["val"].shape)
        return 1.0 if shape and shape[dim] == 1 else None

    def over_tokens(self, node, v, dim) -> OverTokens | None:
        """``g.unsqueeze(1)`` of a vector per sequence, every reader a repeat over the tokens or
        a product; None for another value."""
        if not isinstance(v, (Vec, Pointwise)) or dim % 3 != 1 or not _per_sequence(
                self._tags(v, node)):
            return None
        if not node.users or any(op_name(u) not in ("repeat", "mul")
                                 for u in node.users):
            raise refuse(node, "a vector per sequence given a token axis, read other than "
                         "by a product with each token's vector", help=_HELP)
        return OverTokens(self.vec(v, node))

    def over_tokens_repeat(self, node, v: OverTokens, sizes) -> OverTokens:
        """``repeat(1, T, 1)`` of it: every token alike."""
        shape = tuple(node.meta["val"].shape)
        sizes = repeat_sizes(sizes)
        if len(sizes) != 3 or sizes[0] not in (1, -1) or sizes[2] not in (1, -1) or \
                len(shape) != 3 or any(op_name(u) != "mul" for u in node.users):
            raise refuse(node, "a vector per sequence repeated other than over the tokens, "
                         "or read other than by a product", help=_HELP)
        return v

    def over_tokens_mul(self, node, u, v):
        """``g * x`` of a vector per sequence over the tokens and a vector per token of its
        dim: the program's ``x * g``; None where neither is such a vector."""
        for g, x in ((u, v), (v, u)):
            if not isinstance(g, OverTokens):
                continue
            x = self.vec(x, node) if not isinstance(x, OverTokens) else None
            if x is None or tuple(x.tags) != ("tok", "tok", "F") or x.dim != g.src.dim:
                raise refuse(node, "a vector per sequence times a value that is not a vector "
                             "per token of its dim", help=_HELP)
            name = self.emit_vector(node.name, f"{x.name} * {g.src.name}")
            return Vec(name, x.tags, x.dim)
        return None
