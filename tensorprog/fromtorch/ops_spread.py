"""A vector param laid out as the per-head vector it is added to (DeBERTa's query and value
biases: ``q + transpose_for_scores(q_bias[None, None, :])``, the bias of n = H·dh features given
leading axes of 1, viewed as (1, 1, H, dh) and permuted to (1, H, 1, dh)). Coordinate i of
the bias still meets coordinate i of the vector's features (head i // dh, feature i % dh of
it), so the sum is ``q + b`` of the program's vector q and the param b : [n], whose µP the
engine derives as any vector param's. A param of an image's channels given two axes of 1 after
them ([C, 1, 1]: PoolFormer's layer scale ``g.unsqueeze(-1).unsqueeze(-1) * h`` of a [B, C, H,
W] image), or stored with axes of 1 before them ([1, 1, 1, C]: ConvNeXt V2's GRN gain on a [B,
H, W, C] image), meets channel i of every pixel: the program's gain ``g * h`` (or bias ``h +
g``). Any other layout (a bias whose features leave the last axes, Beam's gate_bias[None, None,
:, None] added to a per-head vector) keeps the refusal of an added axis on a param."""

from __future__ import annotations

import math

from .values import Affine, Pointwise, PRef, Spread, Vec
from .where import op_name, refuse

_HELP = ("use a vector param of the features it is added to or multiplies, as it is "
         "(b : [n], x + b)")


def _refuse_axis(node):
    return refuse(node, "an added axis on a param: a vector param joins a sum or a product "
                  "along the features (broadcast over batch and tokens), or one number per "
                  "head over its head's coordinates (b[None, None, :, None] against a vector "
                  "viewed as (..., H, dh)), so a param broadcast otherwise has no form",
                  help=_HELP)


def spread_of_view(node, v) -> Spread | None:
    """``b.view(1, 1, n)`` or ``b.view(1, 1, H, dh)`` of a plain 1-D param b (Kimi Linear's and
    Bailing's dt_bias, a bias of each head's channels): a Spread, as ``b[None, None, :]`` and
    its view per head are, since a view keeps the entries in their order; None for any other
    value or view (a table laid out as a grid: ops_grid.py), and where anything but a sum or a
    difference reads it (a view moved on, or settling back to the param: ops_grid.py's)."""
    if any(op_name(u) not in ("add", "sub") for u in node.users):
        return None
    if not (isinstance(v, PRef) and len(v.shape) == 1 and v.rows is None and not v.t and
            v.offset == 0 and v.period is None and v.part is None and v.expert is None and
            v.cols is None):
        return None
    shape, n = tuple(node.meta["val"].shape), v.shape[0]
    if len(shape) < 2 or math.prod(shape) != n:
        return None
    if shape[-1] == n:  # axes of 1, then the features
        return Spread(v, shape)
    if math.prod(shape[:-2]) == 1 and shape[-2] > 1 and shape[-1] > 1:  # then (H, dh)
        return Spread(v, shape, len(shape) - 2)
    return None


class SpreadParamOps:
    """A vector param given axes of 1 and viewed per head, then added to a per-head vector."""

    def spread(self, node, v):
        """``b[None]``/``b.unsqueeze(d)`` of a 1-D param (or of one so spread): a Spread while
        its features stay the last axis; refused otherwise, as there is no form for it."""
        shape = tuple(node.meta["val"].shape)
        ref = v.ref if isinstance(v, Spread) else v
        if not (isinstance(ref, PRef) and len(ref.shape) == 1 and ref.rows is None
                and v is ref or isinstance(v, Spread) and v.heads is None):
            raise _refuse_axis(node)
        n = ref.shape[0]
        after = next((k for k in range(len(shape)) if shape[len(shape) - 1 - k] != 1), 0)
        if after > 2 or shape[-1 - after] != n or math.prod(shape) != n:
            raise _refuse_axis(node)
        return Spread(ref, shape, after=after)

    def spread_view(self, node, v: Spread):
        """A spread param viewed as (1, ..., H, dh): its features as the heads of dh they are
        in the vector it joins; refused for any other view."""
        shape = tuple(node.meta["val"].shape)
        n = v.ref.shape[0]
        if v.after:
            raise _refuse_axis(node)
        if v.heads is None and len(shape) >= 2 and shape[-2] * shape[-1] == n and math.prod(
                shape[:-2]) == 1:
            return Spread(v.ref, shape, len(shape) - 2)
        if math.prod(shape[:-1]) == 1 and shape[-1] == n:
            return Spread(v.ref, shape)
        raise refuse(node, f"a view of the param {v.ref.target} given axes of 1 to "
                     f"{list(shape)}: only its features as (heads, head features) are traced",
                     help=_HELP)

    def spread_permute(self, node, v: Spread, dims):
        """A permute that keeps the head features last and moves the heads axis (or only
        axes of 1): the same layout of the features."""
        dims = [d % len(v.shape) for d in dims]
        if dims[-1] != len(v.shape) - 1 or v.after:
            raise _refuse_axis(node)
        heads = dims.index(v.heads) if v.heads is not None else None
        return Spread(v.ref, tuple(v.shape[d] for d in dims), heads)

    def spread_added(self, node, u, v, alpha):
        """``x + b`` of a per-token vector and a spread param laid out as x's features are
        (the heads at x's heads axis, dh = x's head dim): the program's ``x + b``; None
        where neither term is a spread param."""
        for x, s in ((u, v), (v, u)):
            if not isinstance(s, Spread):
                continue
            if isinstance(x, Spread):
                break
            x = self.vec(x, node)
            tags = x.tags
            lead = len(tags) - len(s.shape)  # torch broadcasts from the last axis
            if lead < 0:
                break
            n = s.ref.shape[0]
            if s.heads is None:
                fits = tags[-1] == "F" and "H" not in tags and x.dim == n
            else:
                fits = (tags[-1] == "dh" and tags[lead + s.heads] == "H" and x.dim == n
                        and x.dh == s.shape[-1])
            # x + b, x - b, b + x (b - x would be a sum with -x: none of the zoo's)
            sign = "+" if alpha == 1 else "-" if alpha == -1 and s is v else None
            if not fits or sign is None:
                break
            b = self.vector_param(s.ref, node)
            expr = f"{x.name} {sign} {b}"
            name = self.emit_vector(node.name, expr, self.added_bias(x.name, b))
            return Vec(name, x.tags, x.dim, x.dh)
        else:
            return None
        raise refuse(node, f"a sum of a vector and the param {s.ref.target} laid out other "
                     "than as the vector's features (per head where the vector is)",
                     help=_HELP)

    def channel_params(self, node, u, v) -> tuple:
        """(u, v) with a param of an image's channels laid out to broadcast over its pixels as
        the param itself: one given two axes of 1 after its channels ([C, 1, 1]: PoolFormer's
        layer scale) against a channels-first image, or one stored with axes of 1 before them
        ([1, 1, 1, C]: ConvNeXt V2's GRN gain and bias) against a channels-last one. Torch
        broadcasts it as the program's ``g * h`` and ``h + b`` do, channel by channel. A
        spread param any other way is refused: it has no form."""
        for s, x in ((u, v), (v, u)):
            if isinstance(s, Spread) and s.after:
                ref, shape = s.ref, s.shape
            elif isinstance(s, PRef) and len(s.shape) > 1 and s.rows is None and not s.t and \
                    math.prod(s.shape) == max(s.shape) > 1 and _image(self, x, node):
                ref, shape = PRef(s.target, (max(s.shape),)), s.shape
            else:
                continue
            tags = tuple(self._tags(x, node)) if _image(self, x, node) else ()
            k = len(shape)
            axis = max(range(k), key=lambda i: shape[i])
            if not tags or k > len(tags) or tags[len(tags) - k + axis] != "F" \
                    or self.vec(x, node).dim != ref.shape[0]:
                raise _refuse_axis(node)
            return (ref, x) if s is u else (x, ref)
        return u, v


def _image(walker, x, node) -> bool:
    """Whether x is an image-valued vector (its axes tagged with pixels)."""
    return isinstance(x, (Vec, Affine, Pointwise)) and "px" in tuple(walker._tags(x, node))
