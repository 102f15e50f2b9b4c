"""One number per head over its head's coordinates (the program's ``spread(g, dh)``).

Laguna's per-head attention gate, ``(o.view(..., H, dh) * gate.unsqueeze(-1)).view(..., -1)``
with ``gate = softplus(g_proj(h))`` of H entries per token, is ``o * spread(gate, dh)``; Beam's
per-head gate bias, ``g_proj(h).view_as(o) + gate_bias[None, None, :, None]`` with a param of H
entries, is ``g + spread(gate_bias, dh)``; FocalNet's gate of one channel per pixel times an
image of C channels, ``ctx * gates[:, l:l + 1]``, is ``ctx * spread(g, C)`` (H = 1, dh = C), and
times a pooled vector (its global context, ``ctx_global * gates[:, L:]``) is ``ctx_global *
spread(g, C)``, a pooled vector scaling each pixel as the language's product of an image and a
vector of no pixels does. Each is traced only where torch broadcasts the
number of head h over exactly head h's dh coordinates: the other factor or term viewed per head
with its H heads at the axis before its head dim, the gate (or the param) with H entries at
that axis and an axis of 1 after it. Any other layout is refused with its shapes.
"""

from __future__ import annotations

from .ops_conv import is_image
from .values import HeadGate, OverTokens, Pointwise, Spread, Vec
from .where import op_name, refuse

_HELP = ("give the gate or bias one entry per head, H of them, with an axis of 1 after them "
         "against a vector viewed as (..., H, dh): gate.unsqueeze(-1), b[None, None, :, None]")


def _per_head(x) -> bool:
    """A vector viewed per head: its heads at the axis before its last, its head dim."""
    return isinstance(x, Vec) and len(x.tags) >= 2 and x.tags[-1] == "dh" and \
        x.tags[-2] == "H" and bool(x.dh)


class HeadGateOps:
    """A gate or bias of one number per head broadcast over its head's coordinates."""

    def head_gate(self, node, v) -> HeadGate:
        """``g.unsqueeze(-1)`` of a vector of H entries per token, whose every use multiplies a
        per-head vector (checked by the caller and by :meth:`head_gated`)."""
        g = self.vec(v, node)
        if g.tags[-1] != "F" or "H" in g.tags or g.dh:
            raise refuse(node, "a per-head gate whose last axis is not its H entries (a gate "
                         "transposed, or split into heads itself)", help=_HELP)
        return HeadGate(g, node.name)

    def head_gate_fn(self, node, g: HeadGate, fn) -> HeadGate:
        """``f(g.view(b, t, H, 1))`` of a coordinatewise f (Dots's ``gate.sigmoid()`` after
        the view): f(g) with the axis of 1 after it, f(g).unsqueeze(-1), so the gate of f(g),
        its vector emitted here (the one f of the language it must be)."""
        return HeadGate(self.vec(Pointwise(g.src, fn, node.name), node), node.name)

    def refuse_gate_axis(self, node, dim) -> None:
        """Refuses ``g.unsqueeze(-1)`` read other than as a factor of products with a vector
        viewed per head (added, divided by, squared), naming the op that reads it: only
        ``x * g.unsqueeze(-1)`` is a per-head gate. Returns where the axis is not last."""
        shape = tuple(node.meta["val"].shape)
        if dim % len(shape) != len(shape) - 1 or len(shape) < 3 or not node.users:
            return
        other = sorted({op_name(u) for u in node.users} - {"mul"})
        if not other and len(node.users) == 1:
            return
        what = f"by {', '.join(other)}" if other else "more than once"
        raise refuse(node, "an axis of 1 after a per-token vector's last (g.unsqueeze(-1), a "
                     f"per-head gate) read {what}: a per-head gate is traced only as the "
                     "factor of one product with a vector viewed as (..., H, dh)",
                     help="multiply the per-head view by the gate once (o.view(b, t, H, dh) "
                     "* g.unsqueeze(-1)) and compute anything else from g itself, or add a "
                     "param of one entry per head as b[None, None, :, None]")

    def head_gated(self, node, u, v):
        """``x * g.unsqueeze(-1)`` of a per-head vector x and a :class:`HeadGate` g of x's
        head count: the program's ``x * spread(g, dh)``; None where neither is a HeadGate."""
        for x, g in ((u, v), (v, u)):
            if not isinstance(g, HeadGate):
                continue
            x = self.vec(x, node) if not isinstance(x, HeadGate) else None
            shape = tuple(node.meta["val"].shape)
            if x is None or not _per_head(x) or x.dim != g.src.dim * x.dh or \
                    len(g.src.tags) + 1 != len(x.tags) or g.src.tags[:-1] != x.tags[:-2] or \
                    shape[-2:] != (g.src.dim, x.dh):
                raise refuse(node, "a per-head gate multiplying a vector not viewed as (..., "
                             f"H, dh) with its H = {g.src.dim} heads before its head dim",
                             help=_HELP)
            name = self.emit_vector(node.name, f"{x.name} * spread({g.src.name}, "
                                    f"{self.dim(x.dh)})")
            return Vec(name, x.tags, x.dim, x.dh)
        return None

    def head_bias(self, node, u, v, alpha, product: bool = False):
        """``x + b[None, None, :, None]`` of a per-head vector x and a param b of one entry per
        head of x: the program's ``x + spread(b, dh)``; with ``product``, ``x * b[None, None,
        :, None]`` (Mamba-2's skip D x): ``spread(b, dh) * x``, b a gain of each head's
        coordinates. None where no term is such a param."""
        for x, s in ((u, v), (v, u)):
            if not (isinstance(s, Spread) and s.heads is None and s.after == 1):
                continue
            x = self.vec(x, node) if not isinstance(x, Spread) else None
            heads = s.ref.shape[0]
            sign = "*" if product else "+" if alpha == 1 else "-" if alpha == -1 and s is v \
                else None
            if x is None or not _per_head(x) or x.dim != heads * x.dh or sign is None or \
                    len(s.shape) > len(x.tags):
                if product:  # an image's channels' gain [C, 1, 1], or no form (ops_spread.py)
                    return None
                raise refuse(node, f"a sum of a vector and the param {s.ref.target} of one "
                             "entry per head, laid out other than as the heads of a vector "
                             "viewed as (..., H, dh)", help=_HELP)
            b = self.vector_param(s.ref, node)
            expr = f"spread({b}, {self.dim(x.dh)}) * {x.name}" if product else \
                f"{x.name} {sign} spread({b}, {self.dim(x.dh)})"
            name = self.emit_vector(node.name, expr)
            return Vec(name, x.tags, x.dim, x.dh)
        return None

    def refuse_gate_in_sum(self, node, u, v) -> None:
        """Refuses a sum (or difference) with a gate's broadcast: ``x + g.unsqueeze(-1)`` of a
        per-head gate, an image plus a one-channel image, a vector per sequence given back a
        token axis plus each token's. Each is a product's factor to the recognisers above
        (``x * spread(g, dh)``); added, torch adds g_h to each of head h's coordinates, which
        no product computes."""
        if any(isinstance(x, HeadGate) for x in (u, v)):
            what, fix = ("a per-head gate g.unsqueeze(-1) (one number per head)", "multiply "
                         "by the gate (x * g.unsqueeze(-1)), add a param of one entry per "
                         "head (b[None, None, :, None]), or write the model as a program with "
                         "x + spread(g, dh)")
        elif any(isinstance(x, OverTokens) for x in (u, v)):
            what, fix = ("a vector per sequence given back a token axis", "multiply each "
                         "token's vector by it, or write the model as a program")
        elif self._one_channel(node, u, v) is not None:
            what, fix = ("a gate of one channel per pixel (an image of one channel)",
                         "multiply the image by the gate, give the added image as many "
                         "channels as the other (e.g. nn.Conv2d(c, c, 1)), or write the model "
                         "as a program with x + spread(g, C)")
        else:
            return
        raise refuse(node, f"a sum or difference with {what}: the trace reads it only as a "
                     "factor of a product (every coordinate it broadcasts over multiplied by "
                     "it); torch adds it to each of them instead", help=fix)

    def _one_channel(self, node, u, v):
        """Both operands images of 4 axes, one of a single channel and the other of more: the
        shapes and tags of each, the one-channel one first, and whether it is u; None
        otherwise."""
        if not (is_image(u) and is_image(v)):
            return None
        found = []
        for a, x in zip(node.args[:2], (u, v), strict=True):
            shape = tuple(getattr(getattr(a, "meta", {}).get("val"), "shape", ()))
            tags = tuple(self._tags(x, node))
            if len(shape) != 4 or len(tags) != 4 or "F" not in tags:
                return None
            found.append((shape, tags))
        channels = [shape[tags.index("F")] for shape, tags in found]
        if sorted(channels)[0] != 1 or max(channels) == 1:
            return None
        return (*found, True) if channels[0] == 1 else (*found[::-1], False)

    def pixel_gated(self, node, u, v):
        """``x * g`` of an image x of C channels and a gate g of one channel at each of x's
        pixels (either may be pooled, one pixel: a vector of no pixels): the program's ``x *
        spread(g, C)``; None where the product is not of an image and a one-channel image."""
        found = self._one_channel(node, u, v)
        if found is None:
            return None
        (gs, gt), (xs, xt), first = found
        g, x = (u, v) if first else (v, u)
        f = gt.index("F")
        pixels = [k for k in range(1, 4) if k != f]
        # either may be pooled (one pixel: a vector of no pixels, scaling every pixel alike)
        x_pooled, g_pooled = (all(s[k] == 1 for k in pixels) for s in (xs, gs))
        if xt.index("F") != f or not (x_pooled or g_pooled) and any(
                xs[k] != gs[k] for k in pixels):
            raise refuse(node, f"a product of a gate of one channel {list(gs)} and an image "
                         f"{list(xs)} laid out otherwise: a gate of one channel multiplies "
                         "every channel of its pixel", help=_HELP)
        g, x = self.vec(g, node), self.vec(x, node)
        name = self.emit_vector(node.name, f"{x.name} * spread({g.name}, {self.dim(x.dim)})")
        return Vec(name, gt if x_pooled else xt, x.dim)
