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
    square: the grid is fixed by the image, so is its table of offsets."""
    _, seq_tok, offsets_tok = st.value
    seq, offsets = (low.dim_ref(t, low.tok_span(t)) for t in (seq_tok, offsets_tok))
    if seq is None or offsets is None:
        return
    side = 0 if seq.infinite else math.isqrt(seq.size)
    if offsets.infinite or side * side != seq.size or offsets.size != seq.size:
        low.errors.error(f"grid_offsets {st.name}: its tokens must be a finite square number, "
                         "r x r on a grid, and its offsets as many (|dy|, |dx| < r: r² of "
                         "them)", st.span, "e.g. `input g : grid_offsets[T, B]` with dim T = "
                         "16, B = 16: a 4 x 4 grid of tokens")
        return
    if low.define(st.name, st.name_span):
        low.inputs.append(Input(st.name, offsets.name, st.span, "grid_offsets", seq.name))
        low.tokenwise.add(st.name)
        low.values[st.name] = offsets.name
