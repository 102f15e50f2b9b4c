"""A class token split off the other tokens and put back (CvT's attention and stages).

CvT keeps its class token in the last stage's sequence, but its queries, keys and values come
from convolutions over the image's tokens: ``cls, h = torch.split(x, [1, H·W], 1)``, the image
tokens laid out as the image for the convolutions, and ``torch.cat((cls, q), dim=1)`` after
them; the stage ends with the same split, and the classifier reads ``layernorm(cls).mean(1)``.
The split is traced as the language's ``first(x)`` (the class token's vector) and ``tail(x,
S)`` (the tokens after it, a sequence S of their own: each token's vector as it was, so every
exponent passes through), and the concatenation as ``prepend(first(x), q, T1)``, the token put
back before the tokens computed from the others. The first part is held as :class:`OneToken`
(its token axis of 1 kept), which only that concatenation, a norm over its features, a mean over
its one token and ``cls[:, 0]`` read; any other reader, and a split into other parts (more than
one token first, or more than two parts), is refused at its line.
"""

from __future__ import annotations

from .values import Affine, OneToken, Parts, Pointwise, Vec
from .where import op_name, refuse

_HELP = ("split a class token off the tokens as torch.split(h, [1, T - 1], dim=1), and put it "
         "back as torch.cat((cls, x), dim=1), or read it with h[:, 0]")


class ClassTokenOps:
    """``torch.split(h, [1, T - 1], 1)`` as ``first(h)`` and ``tail(h, S)``; the first part's
    readers."""

    def op_split_with_sizes(self, node, v, sizes, dim=-1):
        split = self._split_tokens(node, v, list(sizes), dim)
        return split if split is not None else super().op_split_with_sizes(node, v, sizes, dim)

    def op_split(self, node, v, size, dim=-1):
        if isinstance(size, int):
            return super().op_split(node, v, size, dim)
        split = self._split_tokens(node, v, list(size), dim)
        return split if split is not None else super().op_split(node, v, size, dim)

    def _split_tokens(self, node, v, sizes: list[int], dim) -> Parts | None:
        """A split of a (batch, tokens, features) vector along its tokens into its first token
        and the rest: ``first(h)`` (held with its token axis, :class:`OneToken`) and ``tail(h,
        S)``; None where ``v`` is no such vector or the split is along another axis."""
        if not isinstance(v, (Vec, Affine, Pointwise)) or not isinstance(dim, int) \
                or tuple(self._tags(v, node)) != ("tok", "tok", "F") or dim % 3 != 1:
            return None
        if len(sizes) != 2 or sizes[0] != 1:
            raise refuse(node, f"a split of a sequence's tokens into parts of "
                         f"{', '.join(map(str, sizes))}: the language reads a sequence's first "
                         "token, first(h), and the tokens after it, tail(h, S), not other "
                         "groups of tokens", help=_HELP)
        h = self.vec(v, node)
        first = self.emit_vector(node.name, f"first({h.name})")
        rest = self.emit_vector(node.name, f"tail({h.name}, {self.dim(sizes[1])})")
        # each part is measured (check.py) at the node that picks it out of the split's list,
        # the first token's [B, 1, n] as first(h)'s [B, n] (the same entries); an unread part
        # at none
        picks = {u.args[1]: u.name for u in node.users
                 if op_name(u) == "getitem" and isinstance(u.args[1], int)}
        for i, name in enumerate((first, rest)):
            if i in picks:
                self.out.vectors[name] = (picks[i], "out")
            else:
                del self.out.vectors[name]
        return Parts([OneToken(Vec(first, ("tok", "F"), h.dim)), Vec(rest, h.tags, h.dim)])

    def op_layer_norm(self, node, x, shape, w=None, b=None, *rest):
        if not isinstance(x, OneToken):
            return super().op_layer_norm(node, x, shape, w, b, *rest)
        # over the features of the one token: the norm of its vector, the token axis kept
        out = super().op_layer_norm(node, x.vec, shape, w, b, *rest)
        return OneToken(self.vec(out, node))

    def op_mean(self, node, x, dims=None, keepdim=False, **kw):
        if not isinstance(x, OneToken):
            return super().op_mean(node, x, dims, keepdim)
        ndim = len(self._shape(node.args[0]))
        if [d % ndim for d in dims or range(ndim)] != [1]:
            raise self.refuse_one_token(node, x)
        return x if keepdim else x.vec  # a mean over one token is that token, exactly

    def op_select(self, node, v, dim, index):
        if not isinstance(v, OneToken):
            return super().op_select(node, v, dim, index)
        if not isinstance(dim, int) or dim % 3 != 1 or index not in (0, -1):
            raise self.refuse_one_token(node, v)
        return v.vec  # cls[:, 0]: its one token's vector

    def refuse_one_token(self, node, x: OneToken):
        """The refusal of the split-off first token ``x`` read by ``node``."""
        reader = "the model's output" if node.op == "output" else f"the op {op_name(node)}"
        return refuse(node, f"the first token split off a sequence (torch.split(h, [1, T - 1], "
                      f"1)[0], first({x.vec.name}) with its token axis) read by {reader}: it is "
                      "read only by a concatenation that puts it back before tokens "
                      "(torch.cat((cls, x), dim=1)), a layer norm over its features, a mean "
                      "over its one token, or cls[:, 0]", help=_HELP)
