"""A linear layer's outputs delayed by k tokens, its output at zeros in front: traced as the
language's ``shift(y, k)``.

Zaya's value path carries half of each value head from the token before::

    delayed = self.v_proj_delayed(h)
    first = self.v_proj_delayed(h.new_zeros(batch, 1, n))  # the state before the first token
    value_delayed = torch.cat([first, delayed[:, :-1]], dim=1)

Without a bias the layer maps zeros to zeros, so token t holds y_{t-1} and the first token 0:
``shift(y, 1)`` exactly (y_t = delayed_{t-k} for k such tokens in front). With a bias the first
token holds b where the shift gives 0, which the language has no form for: refused at the
concatenation's line, as is any other concatenation of such a layer's output at zeros (another
layer, fewer tokens cut than put in front).
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine, Conc, Pointwise, PRef, TokensFrom, Vec
from .where import op_name, refuse

_PER_TOKEN = ("tok", "tok", "F")
_HELP = (
    "put the layer's output at zeros before its outputs cut by as many tokens, with no "
    "bias: torch.cat([layer(h.new_zeros(B, k, n)), layer(h)[:, :-k]], dim=1)"
)


@dataclass
class AtZeros:
    """``layer(zeros)``: a linear layer applied to ``tokens`` token vectors of zeros (the
    graph's weight and bias nodes); only a concatenation before the layer's own outputs reads
    it."""

    weight: object
    bias: object
    tokens: int


class DelayedOps:
    """``new_zeros`` of a per-token vector's shape, a linear layer of it, and the concatenation
    that puts it before the same layer's outputs: a shift of those by k tokens."""

    def op_new_zeros(self, node, v, size, *rest, **kwargs):
        src = v.src if isinstance(v, Pointwise) else v
        if (
            not isinstance(v, (Vec, Affine, Pointwise))
            or tuple(getattr(src, "tags", ())) != _PER_TOKEN
        ):
            raise refuse(
                node,
                "the op new_zeros of a value other than a (batch, tokens, "
                "features) vector (Zaya's zeros before its delayed values)",
                help=_HELP,
            )
        import torch

        # a constant of the shape and dtype asked for (a linear layer reads it, below; a
        # bool or integer one is a mask or ids, computed from as such)
        val = node.meta["val"]
        return Conc(torch.zeros(tuple(val.shape), dtype=val.dtype))

    def op_linear(self, node, x, w, b=None):
        if (
            isinstance(x, Conc)
            and getattr(x, "probe", None) is None
            and isinstance(w, PRef)
            and hasattr(x.value, "dim")
            and x.value.dim() == 3
            and x.value.is_floating_point()
            and not bool(x.value.any())
            and _read_before_own_outputs(node)
        ):
            return AtZeros(
                node.args[1], node.args[2] if len(node.args) > 2 else None, int(x.value.shape[1])
            )
        return super().op_linear(node, x, w, b)

    def op_cat(self, node, tensors, dim=0):
        if len(tensors) == 2 and isinstance(tensors[0], AtZeros):
            return self.delayed(node, tensors[0], tensors[1], dim)
        return super().op_cat(node, tensors, dim)

    def delayed(self, node, zeros: AtZeros, rest, dim) -> Vec:
        """``shift(y, k)`` for ``cat([layer(zeros of k tokens), y[:, :-k]], dim=1)``, y the same
        layer's outputs, without a bias; refused otherwise."""
        cut = node.args[0][1]
        src = cut.args[0] if hasattr(cut, "args") and cut.args else None
        k = zeros.tokens
        same = (
            src is not None
            and op_name(src) == "linear"
            and src.args[1] is zeros.weight
            and (src.args[2] if len(src.args) > 2 else None) is zeros.bias
        )
        ok = (
            isinstance(rest, TokensFrom)
            and rest.start == 0
            and rest.end == rest.size - k
            and 0 < k < rest.size
            and dim % 3 == 1
            and same
            and zeros.bias is None
        )
        if not ok:
            why = (
                "the layer has a bias (its output at zeros, b, is no zero the shift puts in front)"
                if same and zeros.bias is not None
                else "only its own outputs without their last k tokens, along the tokens, "
                "make a shift of them"
            )
            raise refuse(
                node,
                f"a concatenation of a linear layer's output at zeros of {k} "
                f"tokens before another value: {why}",
                help=_HELP,
            )
        h = rest.vec
        return Vec(self.emit_vector(node.name, f"shift({h.name}, {k})"), h.tags, h.dim)


def _read_before_own_outputs(node) -> bool:
    """Whether the only reader of ``node`` is a concatenation that puts it first."""
    users = list(node.users)
    return len(users) == 1 and op_name(users[0]) == "cat" and users[0].args[0][0] is node
