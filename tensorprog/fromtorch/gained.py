"""A linear layer's output times a constant vector over its features, held till it is split
or read (fromtorch/ops_fixedgain.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine


@dataclass
class Gained:
    """A linear layer's output (``out``) times a constant vector over its features (``gain``,
    float64 [D]), from the buffer ``buffer``; ``node``: the node whose value it is (the
    product's, a split's item), ``at``: the product's (ops_fixedgain.py)."""

    out: Affine
    gain: object
    buffer: str
    node: str
    at: str

    @property
    def tags(self):
        return self.out.tags


def block_of(v: Gained, out: Affine, lo: int, hi: int) -> Gained:
    """The row block ``out`` (rows lo..hi of v's layer) times its entries of v's gain: one of
    its own even where they are all 1, so that a block is written alike at every width."""
    return Gained(out, v.gain[lo:hi], v.buffer, v.node, v.at)
