"""Lowering ``input rel : relative[T, B, r]``: T5's distance buckets whose softmax keeps the
keys fewer than r tokens from each query only (LongT5's block-local attention, blocks of r)."""

from __future__ import annotations

import dataclasses


def reach_input(low, st) -> None:
    """``relative[T, B, r]``: lowered as ``relative[T, B]`` (its checks), then given its reach
    r ≥ 2, a number of tokens. r = 1 would keep each query's own token only: a softmax over one
    key is the constant 1, no gradient reaches its logits (refused as attention over a
    sequence of 1 token is, ir/sequences.py)."""
    reach = st.value[3]
    if reach < 2:
        low.errors.error(
            f"relative {st.name}: its reach {reach} must be 2 or more",
            st.span,
            "relative[T, B, r] keeps the keys fewer than r tokens from the query; "
            "r = 1 keeps its own token only, whose softmax is the constant 1",
        )
        return
    before = len(low.inputs)
    low.stmt_sequence_input(dataclasses.replace(st, value=st.value[:3]))
    if len(low.inputs) > before:
        low.inputs[-1] = dataclasses.replace(low.inputs[-1], reach=reach)
