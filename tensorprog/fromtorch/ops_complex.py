"""Rotary embeddings written with complex numbers (Meta's Llama reference code, HF's DeepSeek-V2
and Llama 4): the interleaved rotary (ops_rotary.py) in another notation.

``view_as_complex(x.reshape(..., d/2, 2))`` reads the pairs (2i, 2i + 1) of each head as the
complex numbers x_2i + i·x_2i+1; a product with z = cos θ + i sin θ turns each one by θ, and
``view_as_real(...).flatten(-2)`` lays the pairs out again where they were. That is a rotation of
each pair exactly when |z| = 1, which is checked on the table's entries (computed on the CPU
from the positions and the model's inverse frequencies: ``torch.polar(ones, θ)``), never assumed
from the ops that built it: a table of any other modulus (a rope scaling's ``attention_scaling``
≠ 1) scales q and k, and is refused. So, as for the real forms, the rotated vector is the vector
itself; any other op on the pairs or their complex view is refused at its line.
"""

from __future__ import annotations

import dataclasses

from .values import Computed, Conc, Paired, Sub, Vec
from .where import refuse

_ROTATION_TOL = 1e-5  # float32 cos/sin (torch.polar): |z| is 1 within a few ulps
_CARRIERS = {"to", "_to_copy", "type_as", "contiguous", "clone", "alias"}  # casts, copies
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten"}
_HELP = ("rotate q and k with the complex form's exact steps (view_as_complex of x.reshape(..., "
         "-1, 2), a product with a table torch.polar(ones, angles), view_as_real, flatten), or "
         "with cos and sin tables (x * cos + rotate_half(x) * sin)")


class ComplexOps:
    """A head's coordinate pairs, their complex view, its product with a table of unit complex
    numbers, and the pairs flattened back: the interleaved rotary."""

    def pairs_view(self, node, v) -> Paired | None:
        """``x.reshape(..., d/2, 2)`` of a head vector (or of a part of each head, MLA's rotary
        part) as its pairs (2i, 2i + 1); None for any other view."""
        if not isinstance(v, (Vec, Sub)) or getattr(v, "sign", 1) != 1:
            return None
        src = v.src if isinstance(v, Sub) else v
        old, new = self._shape(node.args[0]), tuple(node.meta["val"].shape)
        if src.tags[-1] != "dh" or not src.dh or old[-1] % 2 or new != (
                *old[:-1], old[-1] // 2, 2):
            return None
        return Paired(v)

    def complex_op(self, node, op: str, args: list):
        """``op`` with a head's pairs among its arguments: the complex rotary's steps, each
        checked; anything else refused."""
        x = args[0] if args and isinstance(args[0], Paired) else None
        val = node.meta["val"]
        if x is not None and op == "view_as_complex" and not x.complex:
            return dataclasses.replace(x, complex=True)
        if x is not None and op == "view_as_real" and x.complex:
            return dataclasses.replace(x, complex=False)
        if op == "mul" and len(args) == 2:
            return self._turned(node, *args)
        same = x is not None and tuple(val.shape) == self._shape(node.args[0])
        # a cast to a real type would drop the imaginary parts: no carrier
        if same and op in _CARRIERS and val.dtype.is_complex == x.complex:
            return x
        if x is not None and op in _VIEWS and not x.complex:
            old, new = self._shape(node.args[0]), tuple(val.shape)
            if new == (*old[:-2], old[-2] * old[-1]):  # the pairs where they were
                return self._rotated(x.src) if x.turned else x.src
            if new == old:
                return x
        raise refuse(node, f"the op {op} on a head's coordinate pairs (x.reshape(..., -1, 2)) or "
                     "their complex view (a complex rotary embedding is traced as view_as_complex, "
                     "a product with a table of unit complex numbers, view_as_real and the "
                     "flatten back, and nothing else)", help=_HELP)

    def _turned(self, node, u, v) -> Paired:
        """The complex pairs times a table z: turned by arg z where every |z| = 1 and the
        table broadcasts to the pairs (one angle per head, position and pair at most)."""
        import torch

        x, table = (u, v) if isinstance(u, Paired) else (v, u)
        if not (isinstance(x, Paired) and x.complex) or isinstance(table, Paired):
            raise refuse(node, "a product of a head's coordinate pairs other than their complex "
                         "view times a table of unit complex numbers", help=_HELP)
        value = table.value if isinstance(table, (Conc, Computed)) else None
        shape = tuple(node.meta["val"].shape)
        if not isinstance(value, torch.Tensor) or not value.is_complex():
            what = "a value the trace does not know" if value is None else "real numbers"
            raise refuse(node, f"a product of a head's coordinate pairs, as complex numbers, with "
                         f"{what}: only a known table of unit complex numbers turns each pair",
                         help="compute the table in the forward from the positions and a buffer "
                         "of inverse frequencies, torch.polar(torch.ones_like(angles), angles) "
                         "(HF Llama 4's rotary embedding)")
        try:
            fits = torch.broadcast_shapes(tuple(value.shape), shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise refuse(node, f"a product of a head's complex pairs {list(shape)} with a table "
                         f"of shape {list(value.shape)}, which does not broadcast to them",
                         help=_HELP)
        modulus = value.to(torch.complex128).abs()
        if float((modulus - 1).abs().max()) > _ROTATION_TOL:
            raise refuse(node, "a product of a head's coordinate pairs, as complex numbers, with "
                         f"a table whose entries have modulus {float(modulus.min()):.6g} to "
                         f"{float(modulus.max()):.6g}: only |z| = 1 turns a pair without "
                         "scaling it (a rope scaling's attention_scaling multiplies q and k)",
                         help="build the table as torch.polar(torch.ones_like(angles), angles) "
                         "and scale the attention logits instead (sdpa's scale)")
        return dataclasses.replace(x, turned=True)
