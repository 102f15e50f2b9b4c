"""Lowering ``first(h)``, the first token's vector of a sequence, and the bookkeeping it needs:
which values have one value per token (built from token inputs) and which are read at one
token (``first``, or built from such a value). The emitted module holds the first as
(batch, tokens, dim) tensors and the second as (batch, dim): combining the two, attending over
a token read, or reading a token of a value without tokens would compute something other than
what the engine's rules describe, so each is refused here with a position."""

from __future__ import annotations

from ..errors import Span


def mark_tokens(low, out: str, operands, span: Span, first: bool = False) -> None:
    """Record whether ``out`` has a sequence axis or is read at one token, refusing operands of
    both kinds (one sequence's vector paired with every token of another)."""
    if first:
        low.one_token.add(out)
        return
    per_token = [o for o in operands if o in low.tokenwise]
    one = [o for o in operands if o in low.one_token]
    if per_token and one:
        low.errors.error(f"{one[0]} is one token's vector (read by first), but {per_token[0]} "
                         "has one value per token: they cannot be combined", span,
                         "compute everything per token first, then read the token with "
                         "first(h) just before the layers that use it alone (a pooler, a "
                         "readout)")
    elif per_token:
        low.tokenwise.add(out)
    elif one:
        low.one_token.add(out)


def first_readable(low, arg: str, dim: str | None, node) -> bool:
    """Whether ``first`` may read ``arg`` (of dim ``dim``): a vector of a declared dim with one
    value per token, computed from the token inputs (not the one-hot ids themselves)."""
    problem = None
    if arg not in low.tokenwise:
        what = ("one token's vector already" if arg in low.one_token
                else "built from params and vector inputs alone")
        low.errors.error(f"first reads the first token of a sequence, but {arg} has no tokens "
                         f"({what})", node.span, "apply first to a value computed from a "
                         "`tokens` input, e.g. the last block's output")
        return False
    if dim is None:
        problem = "a scalar"
    elif dim in low.heads_dims:
        problem = "attention logits"
    elif arg in {i.name for i in low.inputs}:
        problem = f"the input {arg} (one-hot ids)"
    if problem is not None:
        low.errors.error(f"first reads a vector of a declared dim at the first token, not "
                         f"{problem}", node.span,
                         "apply first to a vector, e.g. the last block's output")
        return False
    return True
