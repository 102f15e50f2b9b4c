"""Lowering ``cat(a, b, ..., D)``: the coordinates of a, then b's, ..., a vector of D.

Perceiver's image input is 256 channels of a 1x1 convolution and 256 of learned positions side
by side, normalised together and then projected to the latents' width: torch's
``torch.cat([x, pos], dim=-1)``. Every part's dim is finite, or every part's grows with the
width (Reformer's axial positions, n/4 features of one axis's table beside 3n/4 of the other's),
and D (a declared dim) is their sum: the verifier's checks (``tensorprog.ir.verify``), reported
here at the call. Either way each part is a fixed proportion of the whole, whose RMS is then its
largest part's. A part that grows beside a finite one is refused: the finite part's share of the
coordinates vanishes, and the whole's RMS is no longer its largest part's (a linear layer reading
such a concatenation is the sum of its column blocks, which the program writes as such:
``Wa @ a + Wb @ b``).
"""

from __future__ import annotations

from ..ir.functions import CAT
from ..ir.heads import cat_heads_error
from ..ir.program import Dim, Nonlin
from .ast import Call

_USAGE = ("write cat(a, b, D): vectors a and b of finite dims (`dim da = 256`, `dim db = 256`), "
          "or both growing with the width (`dim da = n / 4`, `dim db = 3 * n / 4`), and D the "
          "declared dim of their sizes summed (`dim D = 512`, `dim D = n`); cat(a, b, D, dv) "
          "puts them side by side in each head of dv coordinates")


def cat_operands(low, node: Call):
    """(the operands to lower, the state): the parts, and the dim named by the last argument."""
    if len(node.args) < 3:
        low.errors.error(f"cat takes two or more vectors and a dim, got {len(node.args)} "
                         "arguments", node.span, _USAGE)
        return None, None
    d, heads = node.args[-1], None
    if _is_dim(low, node.args[-2]) and _is_dim(low, d) and len(node.args) >= 4:
        d, heads = node.args[-2], d.name  # cat(a, b, D, dv): side by side in each head of dv
    if not _is_dim(low, d):
        low.errors.error("the last argument of cat must be a declared dim (the concatenation's "
                         "coordinates)", d.span, _USAGE)
        return None, None
    return node.args[: -1 - (heads is not None)], (CAT, (d.name, heads))


def _is_dim(low, arg) -> bool:
    return type(arg).__name__ == "Var" and arg.name in low.dims


def lower_cat(low, node: Call, args: list, state: tuple[str, str | None], vec: type):
    """The Nonlin ``cat`` of a call, or None (errors reported): with a head dim dv
    (``cat(a, b, D, dv)``), D's coordinates in heads of dv, each head a's heads' coordinates
    then b's (torch's ``torch.cat([a, b], -1)`` of (..., H, d) views: DiffLlama's two
    attention outputs side by side in each head). A permutation of the plain cat's
    coordinates, so every rule of the engine is the plain cat's."""
    d, heads = state
    if any(a is None for a in args):
        return None
    dims = low.dims
    for a, arg in zip(args, node.args, strict=False):
        if not isinstance(a, vec) or a.dim is None or a.dim not in dims \
                or a.dim in low.heads_dims:
            low.errors.error("cat needs vectors", arg.span, _USAGE)
            return None
        if a.single() in low.param_names:
            low.errors.error(f"cat of a param ({a.single()}): a part is a vector computed per "
                             "example", arg.span, "concatenate a value computed from it, e.g. "
                             "a lookup `P @ pos`")
            return None
    growing = [a for a in args if dims[a.dim].infinite]
    if growing and len(growing) < len(args):
        a, arg = next((a, arg) for a, arg in zip(args, node.args, strict=False)
                      if dims[a.dim].infinite)
        low.errors.error(
            f"cat of a part of dim {a.dim}, which grows with the width, beside a finite part: "
            "cat joins parts all finite or all growing (the finite part's share of the "
            "coordinates would vanish)", arg.span,
            "a linear layer on a concatenation is the sum of its column blocks: write "
            "Wa @ a + Wb @ b")
        return None
    if len({a.pixels for a in args}) > 1:
        low.errors.error("cat of parts with different pixels (an image's values beside "
                         "another's, or beside a vector without pixels)", node.span, _USAGE)
        return None
    if growing:  # parts proportional to the width: D is the sum of their proportions
        total = sum(dims[a.dim].mult for a in args)
        if not dims[d].infinite or dims[d].mult != total:
            said = Dim(d, mult=total).expr("n")
            low.errors.error(f"cat({', '.join(a.dim for a in args)}, {d}): the parts have "
                             f"{said} coordinates in all, {d} has {dims[d].expr('n')}",
                             node.span, f"declare `dim {d} = {said}`")
            return None
    else:
        total = sum(dims[a.dim].size for a in args)
        if dims[d].infinite or dims[d].size != total:
            low.errors.error(f"cat({', '.join(a.dim for a in args)}, {d}): the parts have "
                             f"{total} coordinates in all, {d} has {dims[d].expr('n')}",
                             node.span, f"declare `dim {d} = {total}`")
            return None
    why = heads and cat_heads_error([dims[a.dim] for a in args], dims[d], dims[heads],
                                      low.width.base if low.width else 1)
    if why:
        low.errors.error(f"cat(..., {d}, {heads}): {why}", node.span, _USAGE)
        return None
    names = tuple(low.name_of(a, node.span) for a in args)
    out = low.emit(Nonlin(low.fresh(low.target), CAT, names, node.span, d, heads=heads), d)
    return low.vec(out, d)
