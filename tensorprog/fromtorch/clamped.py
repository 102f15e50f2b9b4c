"""A clamp of a linear layer's output, held until a split reads it (ops_pointwise makes it,
ops_layout splits it): a value type of its own, so both read it without importing each other."""

from __future__ import annotations

import dataclasses

from .values import Affine


@dataclasses.dataclass
class ClampedRows:
    """A clamp of a linear layer's output that is only split (DBRX's fused qkv clamped to
    ±clip_qkv, then split into q, k, v): coordinatewise, the clamp of each row block is the
    block of the clamp, so the split makes the blocks and clamps each (:meth:`split_clamped`)."""

    a: Affine
    lo: float | None
    hi: float | None
    node: str = ""
