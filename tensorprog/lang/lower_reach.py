"""Lowering ``input rel : relative[T, B, r]``: T5's distance buckets whose softmax keeps the
keys fewer than r tokens from each query only (LongT5's block-local attention, blocks of r)."""

from __future__ import annotations

import dataclasses


def reach_input(low, st) -> None:
    """``relative[T, B, r]``: lowered as ``relative[T, B]`` (its checks), then given its reach
    r ≥ 1, a number of tokens (r = 1: each query attends its own token only)."""
    reach = st.value[3]
    if reach < 1:
        low.errors.error(f"relative {st.name}: its reach {reach} must be 1 or more", st.span,
                         "relative[T, B, r] keeps the keys fewer than r tokens from the query "
                         "(r = 1: the query's own token)")
        return
    before = len(low.inputs)
    low.stmt_sequence_input(dataclasses.replace(st, value=st.value[:3]))
    if len(low.inputs) > before:
        low.inputs[-1] = dataclasses.replace(low.inputs[-1], reach=reach)
