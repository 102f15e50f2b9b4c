"""Lowering ``first(h)``, the first token's vector of a sequence, and ``mean(h)`` or
``mean(h, k)``, the mean of its token vectors (from token k on), and the bookkeeping they need:
which values have one value per token (built from token inputs) and which are one vector per
sequence (``first``, ``mean``, or built from such a value). The emitted module holds the first as
(batch, tokens, dim) tensors and the second as (batch, dim): combining the two, attending over
a token read, or reading a token of a value without tokens would compute something other than
what the engine's rules describe, so each is refused here with a position."""

from __future__ import annotations

from ..errors import Span
from ..ir.program import Mean

MEAN = "mean"
_MEAN_USAGE = ("write mean(h) for the mean over every token of h, or mean(h, k) from token k on "
               "(mean(h, 1): the patch tokens after a class token)")


def mark_tokens(low, out: str, operands, span: Span, first: bool = False,
                product: bool = False) -> None:
    """Record whether ``out`` has a sequence axis or is read at one token, refusing operands of
    both kinds (one sequence's vector paired with every token of another), except in a product
    (``product``): a vector per sequence times a vector per token scales every token alike
    (SwiftFormer's global query times its keys), as a pooled vector times an image scales every
    pixel; and ``prepend(first(h), x, T1)`` puts the one vector before the tokens (CvT's class
    token put back), its output a vector per token."""
    if first:
        low.one_token.add(out)
        return
    per_token = [o for o in operands if o in low.tokenwise]
    one = [o for o in operands if o in low.one_token]
    if per_token and one and product:
        low.tokenwise.add(out)
    elif per_token and one:
        low.errors.error(f"{one[0]} is one vector per sequence (read by first or mean), but "
                         f"{per_token[0]} has one value per token: they are combined only in a "
                         "product", span,
                         "compute everything per token first, then read the token with "
                         "first(h) just before the layers that use it alone (a pooler, a "
                         "readout)")
    elif per_token:
        low.tokenwise.add(out)
    elif one:
        low.one_token.add(out)


def first_readable(low, arg: str, dim: str | None, node, fn: str | None = None) -> bool:
    """Whether ``first`` or ``last`` (the call's, or ``mean``, ``fn``) may read ``arg`` (of dim
    ``dim``): a vector of a declared dim with one value per token, computed from the token
    inputs (not the one-hot ids themselves)."""
    fn = fn or node.fn
    what_fn = (f"reads the {fn} token of a sequence" if fn in ("first", "last")
               else "averages the tokens of a sequence")
    problem = None
    if arg not in low.tokenwise:
        what = ("one vector per sequence already" if arg in low.one_token
                else "built from params and vector inputs alone")
        low.errors.error(f"{fn} {what_fn}, but {arg} has no tokens "
                         f"({what})", node.span, f"apply {fn} to a value computed from a "
                         "`tokens` input, e.g. the last block's output")
        return False
    if dim is None:
        problem = "a scalar"
    elif dim in low.heads_dims:
        problem = "attention logits"
    elif arg in {i.name for i in low.inputs}:
        problem = f"the input {arg} (one-hot ids)"
    if problem is not None:
        where = f" at the {fn} token" if fn in ("first", "last") else " over its tokens"
        low.errors.error(f"{fn} reads a vector of a declared dim{where}, not "
                         f"{problem}", node.span,
                         f"apply {fn} to a vector, e.g. the last block's output")
        return False
    return True


def mean_start(low, node) -> int | None:
    """The token ``mean(h, k)`` starts at (0 for ``mean(h)``), or None (reported)."""
    if len(node.args) not in (1, 2):
        low.errors.error(f"mean takes 1 or 2 arguments, got {len(node.args)}", node.span,
                         _MEAN_USAGE)
        return None
    if len(node.args) == 1:
        return 0
    k = node.args[1]
    if type(k).__name__ != "Num" or k.value.denominator != 1 or k.value < 0:
        low.errors.error("the second argument of mean must be a token index, a whole number "
                         ">= 0", k.span, _MEAN_USAGE)
        return None
    return int(k.value)


def lower_mean(low, node, args: list, start: int, vec: type):
    """The Mean instruction of a ``mean`` call, or None (errors reported): like ``first``, it
    reads a vector of a declared dim with one value per token and gives one per sequence."""
    (h,) = args
    if h is None:
        return None
    if not isinstance(h, vec):
        low.errors.error("mean needs a vector per token", node.span, _MEAN_USAGE)
        return None
    arg = low.name_of(h, node.span)
    if not first_readable(low, arg, h.dim, node, MEAN):
        return None
    out = low.emit(Mean(low.fresh(low.target), arg, start, node.span), h.dim)
    return low.vec(out, h.dim)
