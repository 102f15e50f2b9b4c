"""Pooling a sequence's tokens into one vector per sequence: ``h.mean(1)`` (I-JEPA's head) and
``h[:, k:].mean(1)`` (BEiT's and data2vec-vision's pooler, DINOv2's and CLIP's mean of the patch
tokens after the class token), traced as the language's ``mean(h)`` and ``mean(h, k)``.

A slice of the tokens ``h[:, k:]`` is held as :class:`TokensFrom`, which only a mean over the
token axis reads: any other use refuses (its value is no per-token vector of the program, whose
sequences keep all their tokens). The mean's rules are the language's (``Mean``: a mean of
finitely many tokens is as large as one, and sends each its share of the gradient), so a layer
after it is what its dims make it, as after ``first(h)``.
"""

from __future__ import annotations

from .ops_attention import layout_text
from .values import Affine, OverTokens, Pointwise, PRef, TokensFrom, Vec
from .where import op_name, refuse, repeat_sizes

_HELP = ("pool the (batch, tokens, features) output of the per-token layers with h.mean(1), or "
         "h[:, k:].mean(1) for the tokens from k on (the patches after a class token)")


def _per_token(tags) -> bool:
    return tuple(tags or ()) == ("tok", "tok", "F")


class PoolOps:
    """``h[:, k:]`` as a slice of the tokens, then ``mean(1)`` of it or of ``h`` itself."""

    def token_slice(self, node, v: Vec, start, end, step) -> TokensFrom:
        """``h[:, start:end:step]`` of a (batch, tokens, features) vector: held for a mean when
        it keeps every token from ``start`` to the last, one by one; the tokens before ``end``
        (``h[:, :k]``) are held for a concatenation that puts learned tokens after them
        (DINOv2's registers: ops_encoder.py), which alone reads them."""
        size = int(self._shape(node.args[0])[1])
        lo = 0 if start is None else (start + size if start < 0 else start)
        hi = size if end is None else min(size, end + size if end < 0 else end)
        if step != 1 or not 0 <= lo < hi or lo and hi < size:
            raise refuse(node, "a slice of the tokens of a (batch, tokens, features) vector "
                         "other than the tokens from one on to the last, h[:, k:], which a mean "
                         "over the tokens reads, or those before one, h[:, :k], before learned "
                         "tokens (the language reads the first token, first(h), every token, "
                         "or their mean from a token on, mean(h, k))", help=_HELP)
        kept = TokensFrom(v, lo, None if hi == size else hi, size)
        self._token_slices = getattr(self, "_token_slices", {})
        self._token_slices[id(kept)] = (kept, node)  # (kept alive, so its id stays its own)
        return kept

    def token_tail(self, node, x: TokensFrom) -> Vec:
        """``h[:, k:]`` read by ``node``, an op other than a mean, where h runs over a sequence
        that learned tokens made k tokens longer than one of the program's (CPM-Ant's output,
        its prompt's P tokens cut off after the last layer): ``tail(h, T)``, the last tokens of
        h as that sequence again, exactly those kept (every exponent passes through). Any other
        slice so read is refused (:meth:`refuse_token_slice`)."""
        seq = self.sequences().get(x.size - x.start) if x.end is None else None
        longer = self.sequences().get(x.size)
        if seq is None or longer is None or seq == longer:
            raise self.refuse_token_slice(node, x)
        at = getattr(self, "_token_slices", {}).get(id(x), (None, node))[1]
        made = self.__dict__.setdefault("_tails", {})
        if at.name not in made:
            made[at.name] = self.emit_vector(at.name, f"tail({x.vec.name}, {seq})")
        return Vec(made[at.name], x.vec.tags, x.vec.dim)

    def refuse_token_slice(self, node, x: TokensFrom):
        """The refusal of ``x`` read by ``node``, an op other than the mean or the
        concatenation that alone read such a slice: at the slice's line, saying which tokens
        it keeps and what reads it."""
        at = getattr(self, "_token_slices", {}).get(id(x), (None, node))[1]
        reader = "the model's output" if node.op == "output" else f"the op {op_name(node)}"
        if x.end is None:
            kept = f"the tokens from token {x.start} on, h[:, {x.start}:],"
            only = ("a mean over them, mean(h, k), or, where P learned tokens put before a "
                    "sequence made h longer, by any op as that sequence again, h[:, P:] "
                    "(tail(h, T))")
            todo = f"average them, h[:, {x.start}:].mean(1)"
        else:
            kept = f"the tokens before token {x.end}, h[:, :{x.end}],"
            only = "a concatenation that puts learned tokens after them (registers)"
            todo = "read the first token with h[:, 0]" if x.end == 1 else ""
        todo = ", or ".join(filter(None, (todo, "apply the op to every token and slice after "
                                         "the last layer that reads tokens, outside the model")))
        return refuse(at, f"a slice of a sequence's tokens, {kept} read by {reader}: the "
                      "program's sequences keep all their tokens, and such a slice is read "
                      f"only by {only}", help=todo)

    def token_mean(self, node, x, axes: list[int], keepdim: bool) -> Vec | None:
        """``mean(1)`` of a per-token vector or of its tokens from k on, as ``mean(h)`` or
        ``mean(h, k)``; None if ``x`` is neither (its refusal is the caller's)."""
        if isinstance(x, TokensFrom) and x.end is not None:
            raise refuse(node, f"a mean of the tokens before token {x.end} (h[:, :k]): the "
                         "language averages the tokens from one on to the last, mean(h, k)",
                         help=_HELP)
        if isinstance(x, TokensFrom):
            v, start = x.vec, x.start
        elif isinstance(x, (Vec, Affine, Pointwise)):
            v, start = x, 0
            if tuple(self._tags(x, node)) == ("tok", "F", "tok") and axes == [2] and not keepdim:
                axes = [1]  # an image's pixels read as tokens, (B, C, T): SwiftFormer's mean(-1)
            elif not _per_token(self._tags(x, node)):
                return None
        else:
            return None
        if axes != [1] or keepdim:
            raise refuse(node, f"a mean of a (batch, tokens, features) vector over axes {axes}"
                         f"{' keeping them' if keepdim else ''}: the language averages the "
                         "tokens, axis 1, into one vector per sequence", help=_HELP)
        h = self.vec(v, node)
        args = h.name if start == 0 else f"{h.name}, {start}"
        return Vec(self.emit_vector(node.name, f"mean({args})"), ("tok", "F"), h.dim)

    def token_sum(self, node, x, axes: list[int], keepdim: bool):
        """``h.sum(1)`` of a per-token vector (SigLIP2's masked mean ``sum(h * mask, 1) /
        sum(mask, 1)`` under a mask of ones): T times ``mean(h)``, a finite factor; None if
        ``x`` is no per-token vector. A sum of ``h * mask`` whose mask drops a token is the
        kept tokens' sum, no mean of the language: refused."""
        import torch

        if not isinstance(x, (Vec, Affine, Pointwise)) or not _per_token(self._tags(x, node)) \
                or axes != [1] or keepdim:
            return None
        src = node.args[0]
        if getattr(src, "target", None) is not None and str(src.target).startswith("aten.mul"):
            masks = [self.env.get(getattr(a, "name", None)) for a in src.args]
            for m in masks:
                value = getattr(m, "value", None)
                if isinstance(value, torch.Tensor) and not bool((value == 1).all()):
                    raise refuse(node, "a sum over the tokens of a vector times a mask that "
                                 "drops some of them: the kept tokens' sum, which the "
                                 "language has no form for (it averages every token of a "
                                 "sequence, mean(h), or those from k on, mean(h, k))",
                                 help=_HELP)
        count = int(self._shape(node.args[0])[1])
        mean = self.token_mean(node, x, axes, keepdim)
        return Pointwise(mean, lambda t, c=count: c * t)

    def op_repeat(self, node, v, *sizes):
        """Refuses ``repeat``, naming SigLIP's attention-pooling probe (a learned query token
        repeated over the batch, then attention from it to every token): what it needs is a
        query sequence of one learned token, which the language has no form for."""
        if isinstance(v, OverTokens):  # a vector per sequence, over the tokens (ops_global)
            return self.over_tokens_repeat(node, v, sizes)
        if isinstance(v, PRef) and len(v.shape) == 3 and v.shape[:2] == (1, 1):
            name = v.target.removeprefix("m.")
            raise refuse(node, f"a learned token ({name}) repeated over the batch as the query "
                         "of attention to every token (SigLIP's attention-pooling probe): "
                         "the language's attention reads its queries from a sequence's tokens, "
                         "and has no query sequence of one learned token",
                         help="pool with the class token or the mean of the tokens (h.mean(1)), "
                         "or trace the model without this head")
        tags = getattr(v, "tags", None) or ()
        sizes = repeat_sizes(sizes)
        tiled = self.tiled_heads(node, v, sizes)
        if tiled is not None:
            return tiled
        if "H" in tags and len(sizes) == len(tags) and sizes[tags.index("H")] > 1:
            grouped = getattr(v, "group", 1) != 1 and tags == ("tok", "H", "tok", "dh")
            how = ("after each was repeated in place (repeat_interleave or repeat_kv before "
                   "torch's repeat)" if grouped else f"in a value laid out {layout_text(tags)} "
                   f"(repeat{tuple(sizes)}), other than v.repeat(1, r, 1, 1) of (batch, heads, "
                   "tokens, head dim) heads alone")
            raise refuse(node, f"attention heads tiled {sizes[tags.index('H')]} times {how}: "
                         "the language tiles a "
                         "vector of whole heads, copies of it side by side (cat(v, v, D)), and "
                         "groups query heads on a key/value head once, in the attention",
                         help="tile the heads before repeating them in place (DiffLlama's "
                         "v.repeat(1, 2, 1, 1) of a layer's heads, then repeat_kv), or give "
                         "the model separate key/value heads for each query head")
        raise refuse(node, "the op repeat")

    def tiled_heads(self, node, v, sizes) -> Vec | None:
        """``v.repeat(1, r, 1, 1)`` of per-head values (batch, heads, tokens, head dim): r
        copies of the h heads one after another, head j again at j + h, j + 2h, ... (DiffLlama's
        halved values). Heads are laid out one after another in the features, so the tiled
        heads are r copies of the whole vector side by side, exactly ``cat(v, ..., v, D)``;
        grouped attention then pairs them with consecutive query heads as the model's
        repeat_kv does. None for any other repeat (tokens, the head dim, heads already grouped:
        the caller refuses it)."""
        tags = getattr(v, "tags", None) or ()
        if not isinstance(v, (Vec, Affine)) or tags != ("tok", "H", "tok", "dh") or (
                len(sizes) != 4 or sizes[1] < 2 or any(sizes[i] != 1 for i in (0, 2, 3))):
            return None
        x = self.vec(v, node)
        if x.dh is None or x.group != 1:
            return None
        copies = self.cat_statement(node, [x] * sizes[1])
        return Vec(copies.name, x.tags, copies.dim, x.dh)

    def op_adaptive_avg_pool1d(self, node, x, size):
        """``nn.AdaptiveAvgPool1d(1)`` of tokens transposed to (batch, features, tokens)
        (FocalNet's and Swin's pooler): their mean, ``mean(h)``, with an axis of 1 after it."""
        size = tuple(size) if isinstance(size, (list, tuple)) else (size,)
        v = self.vec(x, node) if isinstance(x, (Vec, Affine, Pointwise)) else None
        if size != (1,) or v is None or tuple(v.tags) != ("tok", "F", "tok"):
            raise refuse(node, f"an adaptive average pool to {list(size)} of a value that is not "
                         "tokens transposed to (batch, features, tokens)", help=_HELP)
        return Vec(self.emit_vector(node.name, f"mean({v.name})"), ("tok", "F", "one"), v.dim)
