"""Lowering ``input r : axial[T, A, s]``: the positions of T laid out row-major on a grid, read
along one of its axes (Reformer's axial position embeddings, examples/axial_positions.tp); and
``input g : grid_offsets[T, B]``, each token pair's offset on such a grid (LeViT's,
examples/levit.tp)."""

from __future__ import annotations

import math

from ..ir.program import Input


def axial_input(low, st) -> None:
    """``input r : axial[T, A, s]``: T's positions on a grid, row-major, read along one
    axis: position t's coordinate (t // s) mod A, one-hot over A (Reformer's axial position
    embeddings: a grid of A x B positions, its rows ``axial[T, A, B]``, its columns
    ``axial[T, B, 1]``). A and T finite, s ≥ 1."""
    _, seq_tok, axis_tok, stride = st.value
    seq, axis = (low.dim_ref(t, low.tok_span(t)) for t in (seq_tok, axis_tok))
    if seq is None or axis is None:
        return
    if seq.infinite or axis.infinite or stride < 1:
        low.errors.error(f"axial {st.name}: its sequence and axis must be finite dims, its "
                         "stride a positive number of positions", st.span,
                         "e.g. `input r : axial[T, A, 4]` with dim T = 8, A = 2: the rows "
                         "of a 2 x 4 grid of positions (`axial[T, B, 1]` its columns)")
        return
    if low.define(st.name, st.name_span):
        low.inputs.append(Input(st.name, axis.name, st.span, "axial", seq.name,
                                stride=stride))
        low.tokenwise.add(st.name)
        low.values[st.name] = axis.name


def grid_input(low, st) -> None:
    """``input g : grid_offsets[T, B]``: LeViT's offset of every (query, key) pair of T's
    tokens laid out row-major on a square grid of side r, ``|dy|·r + |dx|``, one-hot over
    B = r² offsets (transformers' ``attention_bias_idxs``). T and B finite and equal, a
    square: the grid is fixed by the image, so is its table of offsets.
    ``grid_offsets[S, T, B, s]``: the queries S those of the grid subsampled by s (every s-th
    row and column from the first: q = (r - 1) // s + 1 of each, S = q²), each pair's offset
    (|s·qy - ky|, |s·qx - kx|), numbered as T's (LeViT's subsampling attention)."""
    queries_tok, (seq_tok, offsets_tok), stride = (
        (st.value[1], st.value[2:4], st.value[4]) if len(st.value) == 5
        else (None, st.value[1:3], 1))
    seq, offsets = (low.dim_ref(t, low.tok_span(t)) for t in (seq_tok, offsets_tok))
    queries = low.dim_ref(queries_tok, low.tok_span(queries_tok)) if queries_tok else seq
    if seq is None or offsets is None or queries is None:
        return
    side = 0 if seq.infinite else math.isqrt(seq.size)
    if offsets.infinite or side * side != seq.size or offsets.size != seq.size:
        low.errors.error(f"grid_offsets {st.name}: its tokens must be a finite square number, "
                         "r x r on a grid, and its offsets as many (|dy|, |dx| < r: r² of "
                         "them)", st.span, "e.g. `input g : grid_offsets[T, B]` with dim T = "
                         "16, B = 16: a 4 x 4 grid of tokens")
        return
    out = (side - 1) // stride + 1 if stride >= 1 else 0
    if queries_tok and (stride < 2 or queries.infinite or queries.size != out * out):
        low.errors.error(f"grid_offsets {st.name}: its queries must be the {side} x {side} "
                         f"grid subsampled by a stride of 2 or more, (({side} - 1) // s + 1)² "
                         "tokens", st.span, "e.g. `input g : grid_offsets[S, T, B, 2]` with "
                         "dim S = 4, T = 16, B = 16")
        return
    if low.define(st.name, st.name_span):
        low.inputs.append(Input(st.name, offsets.name, st.span, "grid_offsets", seq.name,
                                stride=stride if queries_tok else None,
                                queries=queries.name if queries_tok else None))
        low.tokenwise.add(st.name)
        low.values[st.name] = offsets.name
