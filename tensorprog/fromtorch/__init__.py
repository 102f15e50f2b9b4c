"""Bring your own PyTorch model: trace it into a Tensor Program, derive its µP, apply it in place.

The stages, each importing only the ones before it: ``values`` (what a tensor is to the
language) and ``where`` (the user's source line) → ``walk`` and the ``ops_*`` op tables →
``convert`` (one graph to one width's statements) → ``trace`` (two widths to one program,
``from_torch``) → ``apply`` (µP init, LR groups and forward patches on the user's model) →
``check`` (the coordinate check of the user's own model). Imports torch when used.
"""

from __future__ import annotations

from .apply import MuP, Report
from .check import coord_check, probe
from .trace import Traced, from_torch

__all__ = ["MuP", "Report", "Traced", "coord_check", "from_torch", "probe"]
