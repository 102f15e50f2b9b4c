"""A linear layer's output times a constant vector over its features, held till it is split
or read (fromtorch/ops_fixedgain.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine


@dataclass
class Gained:
    """A linear layer's output (``out``) times a constant vector over its features (``gain``,
    float64 [D]), from the buffer ``buffer``; ``node``: the product's node (ops_fixedgain.py)."""

    out: Affine
    gain: object
    buffer: str
    node: str

    @property
    def tags(self):
        return self.out.tags


def gained(out: Affine, gain, buffer: str, node: str):
    """``out`` times ``gain``: the layer's output itself where every entry is 1."""
    return out if bool((gain == 1).all()) else Gained(out, gain, buffer, node)
