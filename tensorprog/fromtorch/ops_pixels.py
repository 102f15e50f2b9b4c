"""An image's pixels read as tokens, and tokens laid back out as an image: a vision model's
``x.flatten(2).transpose(1, 2)`` (or ``x.permute(0, 2, 3, 1).reshape(B, H·W, C)``) of an image
[B, C, H, W], the language's ``tokens(h, T)``, and ``t.transpose(1, 2).reshape(B, C, H, W)``
(or ``t.reshape(B, H, W, C).permute(0, 3, 1, 2)``) of tokens [B, T, C], its ``image(t, H,
W)``. Both relabel the same vectors (pixel i·W + j is token i·W + j, row-major as torch
flattens), so they are traced exactly, whichever layout the model keeps them in.
"""

from __future__ import annotations

from .ops_conv import IMAGE
from .values import Vec
from .where import op_name

PIXELS_LAST = ("tok", "px", "px", "F")  # an image laid out channels-last, [B, H, W, C]
# ops that keep a value's layout and entries
KEEP_LAYOUT = {"contiguous", "clone", "alias", "dropout", "to", "_to_copy", "type_as",
               "lift_fresh_copy"}
# ops applied at each pixel of an image laid out channels-last (its features last)
_AT_EACH_PIXEL = {"linear", "layer_norm", "gelu", "relu", "silu", "tanh", "sigmoid"}


def _to_channels_first(node) -> bool:
    """Whether every reader of ``node`` [B, H, W, C] permutes it to [B, C, H, W], or keeps
    its layout (contiguous, clone, dropout) or applies a layer or function at each pixel (a
    linear layer, a layer norm, gelu) and is so read in turn."""
    def reads(u) -> bool:
        op = op_name(u)
        if not u.args or u.args[0] is not node:
            return False
        if op == "permute":
            return tuple(d % 4 for d in u.args[1]) == (0, 3, 1, 2)
        return (op in KEEP_LAYOUT or op in _AT_EACH_PIXEL) and _to_channels_first(u)

    return bool(node.users) and all(reads(u) for u in node.users)


def read_as_image(node, image_model: bool) -> bool:
    """Whether a view of tokens [B, T, C] as their grid [B, H, W, C] (``node``) is an image
    laid out channels-last, ``image(t, H, W)``, not Swin's tokens in windows: it reaches a
    permute to channels-first (through ops that keep its layout and ops at each pixel), or, in an
    image model (``image_model``: no token vocabulary), its readers are all linear layers
    applied at each pixel (FocalNet's)."""
    shape = tuple(node.meta["val"].shape)
    return _to_channels_first(node) or image_model and min(shape[1:3]) > 1 and bool(
        node.users) and all(op_name(u) == "linear" and u.args[0] is node for u in node.users)


class PixelTokenOps:
    """tokens(h, T) and image(t, H, W) from the views that flatten pixels or unflatten tokens."""

    def pixels_to_tokens(self, node, v) -> Vec | None:
        """A view of an image [B, C, H, W] as [B, C, H·W] (``flatten(2)``), or of one laid out
        channels-last [B, H, W, C] as [B, H·W, C]: ``tokens(h, T)`` with T a dim of H·W tokens;
        None for any other view."""
        shape = tuple(node.meta["val"].shape)
        old = tuple(node.args[0].meta["val"].shape)
        x = self.vec(v, node)
        if x.tags == IMAGE and shape == (*old[:2], old[2] * old[3]):
            tags, (h, w) = ("tok", "F", "tok"), old[2:]
        elif x.tags == PIXELS_LAST and shape == (old[0], old[1] * old[2], old[3]):
            tags, (h, w) = ("tok", "tok", "F"), old[1:3]
        else:
            return None
        # the sequence of as many tokens where there is one (an image laid out from its tokens
        # read back: FocalNet's, whose residual stream stays on the patches' T)
        seq = self.sequences().get(h * w) or self.dim(h * w)
        name = self.emit_vector(node.name, f"tokens({x.name}, {seq})")
        return Vec(name, tags, x.dim)

    def tokens_to_image(self, node, v, old, shape) -> Vec | None:
        """A view of tokens [B, C, T] (transposed) as [B, C, H, W], or of tokens [B, T, C] as
        [B, H, W, C] read as an image (:func:`read_as_image`): ``image(t, H, W)`` (T = H·W);
        None for any other view (a [B, T, C] viewed [B, H, W, C] and cut into windows keeps
        its tokens)."""
        if len(shape) != 4 or len(old) != 3 or shape[0] != old[0]:
            return None
        tags = self._tags(v, node)
        if tags == ("tok", "F", "tok") and shape[1] == old[1] and shape[2] * shape[3] == old[2]:
            new, (h, w) = IMAGE, shape[2:]
        elif tags == ("tok", "tok", "F") and shape[3] == old[2] \
                and shape[1] * shape[2] == old[1] and read_as_image(node,
                                                                   self.tokens_vocab is None):
            new, (h, w) = PIXELS_LAST, shape[1:3]
        else:
            return None
        x = self.vec(v, node)
        name = self.emit_vector(node.name, f"image({x.name}, {self.dim(h)}, {self.dim(w)})")
        return Vec(name, new, x.dim)
