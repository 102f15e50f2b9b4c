"""Swin's windowed attention in a traced model, read into the language's ``windows`` input.

Swin (transformers' SwinLayer) lays its tokens [B, H·W, C] out as the grid [B, H, W, C], rolls
it by -s (its shifted blocks), cuts it into w x w windows folded into the batch
(``window_partition``: view, transpose, view to [B·nW, w², C]), attends within each window with
a learned bias per head read at each pair's offset (``relative_position_bias_table[
relative_position_index]``) plus, shifted, a constant -100 between the regions the roll brought
together, then puts the windows back (``window_reverse``, the roll undone). All of the
relayouts are a constant permutation of the tokens, which every per-token op (linear layers,
norms, heads) commutes with; the attention within the windows is attention over all of the
grid's tokens under a constant mask: the language's ``R @ win`` with ``input win : windows[T,
B, H, W, s]`` added to the logits (docs/language.md).

The walk carries a value so laid out as :class:`Windowed`: the value as the walk would have it
with the torch tensor's token axes' ``index`` (the token, b·T + t, at each position), moved by
every relayout of the token axes and kept by per-token ops. Attention (sdpa) over such values
is traced when the pairs it attends, the bias ids and the mask it adds are, token pair for
token pair, those of the ``windows`` input of one shift (:func:`window_buckets`, the emitted
module's ``_window_buckets``); once the index is the tokens' own order again the value is the
walk's. Anything else done to a windowed value, or attention over other groups of tokens, is
refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from dataclasses import dataclass

from ..emit.templates import HELPERS
from ..errors import TraceError
from .ops_pixels import KEEP_LAYOUT, read_as_image
from .values import Conc, OffsetTable, ParamFn, Pointwise, PRef, RelBias, Scores, Vec
from .where import op_name, refuse

_HELP = ("lay the tokens out as Swin does: view [B, H, W, C], roll by -shift, window_partition "
         "to [B·windows, w², C], sdpa with the relative position bias (plus the shifted "
         "windows' mask), window_reverse, roll back; or write the model as a Tensor Program "
         "with `input win : windows[T, B, H, W, shift]` (docs/language.md, examples/swin.tp)")
_MERGE_HELP = ("merge patches as Swin does, torch.cat([x[:, r::2, c::2, :] for c in range(2) "
               "for r in range(2)], -1) of the grid [B, H, W, C] (H, W even); or write the "
               "model as a Tensor Program with merge2x2(image(t, H, W), D) (docs/language.md)")
_UNROLL_HELP = ("write the model as a Tensor Program with its tokens in the grid's own order: "
                "attention over them (Hiera's mask unit as large as the grid), its pooled queries "
                "and residual tokens(maxpool(image(h, H, W)), S), a 2x2 max of the grid "
                "(docs/language.md); or use a model whose tokens keep their grid's order")
_SAME = KEEP_LAYOUT  # ops that keep a value's layout and entries
_VIEWS = {"view", "reshape", "_unsafe_view"}
# per-token ops: they commute with any permutation of the tokens
_PER_TOKEN = {"linear", "layer_norm", "rms_norm", "gelu", "relu", "silu", "tanh", "sigmoid",
              "hardswish", "hardsigmoid",
              "add", "sub", "mul", "div", "transpose", "permute", *_VIEWS, *_SAME,
              # F.normalize of each head (cosine attention, Swin V2's): ops_norm.py's L2Norm
              "linalg_vector_norm", "clamp_min", "expand_as"}


@dataclass
class Windowed:
    """A per-token value (as the walk has it, ``inner``) whose torch token axes hold the grid's
    tokens in another order: ``index`` (int64, the token axes' shape) holds the token b·T + t at
    each position, ``grid`` = (B, H, W) the image's tokens."""

    inner: object
    index: object
    grid: tuple[int, int, int]


@dataclass
class GridPart:
    """Every other row (``row``, from 0 or 1) and/or column (``col``) of a grid of tokens in
    its own order, a part of Swin's patch merging (``x[:, row::2, col::2, :]``)."""

    grid: Windowed
    row: int | None = None
    col: int | None = None


@dataclass
class WinScores:
    """Eager attention within windows (DonutSwin's): ``q @ k.T`` of windowed queries and keys
    times ``factor``, plus Swin's bias ``bias`` (and its mask); ``split``: viewed with the
    windows apart from the batch, for the mask; ``probs``: their softmax."""

    q: Windowed
    k: Windowed
    factor: float = 1.0
    bias: WinTable | None = None
    split: bool = False
    probs: bool = False
    node: str = ""  # the node of the scaled logits, factor · q @ k.T (what check measures)
    gain: ParamFn | None = None  # a temperature per head (Swin V2's, ops_temperature.py)


# the order Swin's patch merging concatenates a 2x2 block's pixels in
_MERGED = [(0, 0), (1, 0), (0, 1), (1, 1)]


@dataclass
class WinTable:
    """Swin's relative position bias: ``ref`` [(2w-1)², heads] read at each (query, key)
    pair's offset in a window of w x w, its torch axes ``axes`` ('qk' the flat pairs, 'q', 'k',
    'H', '1'), plus ``mask`` [windows, w², w²] (additive, Swin's shifted windows) or None."""

    ref: PRef
    window: int
    node: str
    axes: tuple
    mask: object = None


def swin_index(window: int, torch):
    """Swin's relative_position_index of a window of window x window tokens, [w², w²]."""
    y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y, x = y.flatten(), x.flatten()
    return (y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + x[:, None] - x[None, :] \
        + window - 1


def window_buckets(height: int, width: int, window: int, shift: int, torch, mask: int = 100):
    """The ``windows`` input's offset ids and additive mask over the height·width tokens
    (-``mask`` between the roll's regions, -inf between windows, in float64): the emitted
    module's own ``_window_buckets`` (emit/templates.py) run here, so that the trace accepts
    exactly what the module builds."""
    ids, regions, outside = _emitted_buckets()(height, width, window, shift, None, mask)
    return ids, regions.double() + outside.double()


@functools.cache
def _emitted_buckets():
    import torch

    space = {"torch": torch}
    exec("\n".join(HELPERS["_window_buckets"]), space)  # noqa: S102 - the emitted helper
    return space["_window_buckets"]


def window_lookup(ids, rows: int) -> int | None:
    """The window side w when ``ids`` (a lookup's constant ids in a table of ``rows`` rows) are
    Swin's relative_position_index of w x w windows, flat or [w², w²]; else None."""
    import torch

    if ids.dtype.is_floating_point or ids.dim() not in (1, 2):
        return None
    side = math.isqrt(rows)
    window = (side + 1) // 2
    if side * side != rows or side % 2 == 0 or window < 2 or ids.numel() != window**4:
        return None
    return window if torch.equal(ids.cpu().reshape(window**2, window**2),
                                 swin_index(window, torch)) else None


class WindowOps:
    """Swin's windows: the grid's relayouts, its per-token ops and its attention."""

    def call(self, node):
        if node.target is operator.getitem:
            return super().call(node)
        args, kwargs = self.args(node)
        flat = [x for a in (*args, *kwargs.values())
                for x in (a if isinstance(a, (list, tuple)) else [a])]
        if any(isinstance(x, WinScores) for x in flat):
            return self._scores_op(node, args)
        if any(isinstance(x, ParamFn) for x in flat) and any(isinstance(x, Scores) for x in flat):
            # Swin V2's temperature on the logits of a window as large as the grid
            tempered = self.temperature(node, args)
            if tempered is not None:
                return tempered
        if any(isinstance(x, ParamFn) for x in flat):  # Swin V2's temperature, on its way
            kept = self.param_fn_op(node, args, kwargs)
            return kept if kept is not None else super().call(node)
        if any(isinstance(x, WinTable) for x in flat):
            return self._table_op(node, args, kwargs)
        if any(isinstance(x, GridPart) for x in flat):
            return self._merge_op(node, args)
        wins = [x for x in flat if isinstance(x, Windowed)]
        if not wins:
            grid = self._grid_view(node, args)
            return grid if grid is not None else super().call(node)
        op = op_name(node)
        if op == "scaled_dot_product_attention":
            return self._attention(node, args, kwargs)
        if op == "matmul" and len(args) == 2 and all(isinstance(x, Windowed) for x in args):
            return self._logits(node, *args)  # q @ k.T: eager (_scores_op)
        if args[0] is wins[0] and op == "slice" and self._shape(node) != self._shape(
                node.args[0]):
            return self._grid_part(node, GridPart(wins[0]), args)
        if args[0] is wins[0] and self._token_only(wins[0]):
            moved = self._relayout(node, op, wins[0], args)
            if moved is not None:
                return self._settled(node, moved)
        return self._per_token(node, op, wins, args, flat)

    # -- the grid and its relayouts ----------------------------------------------------------
    def _grid_view(self, node, args):
        """A view of tokens [B, T, C] as their grid [B, H, W, C] (H·W = T) not read as an image
        (ops_pixels.read_as_image): a Windowed value."""
        import torch

        if op_name(node) not in _VIEWS or not args or not hasattr(node.args[0], "meta"):
            return None
        v = args[0]
        tags = getattr(v, "tags", None)
        old, new = self._shape(node.args[0]), self._shape(node)
        if tags != ("tok", "tok", "F") or len(new) != 4 or new[0] != old[0] or new[3] != old[2] \
                or new[1] * new[2] != old[1] or min(new[1:3]) < 2:
            return None
        if read_as_image(node, self.tokens_vocab is None):  # image(t, H, W), ops_pixels.py
            return None
        index = torch.arange(old[0] * old[1]).reshape(new[:3])
        v = v if type(v).__name__ in ("Vec", "Affine") else self.vec(v, node)
        return Windowed(self._retag(v, ("tok",) * 3 + ("F",)), index, tuple(new[:3]))

    def _token_only(self, w: Windowed) -> bool:
        tags = self._tags(w.inner)
        return all(t == "tok" for t in tags[:-1]) and tags[-1] == "F"

    def _relayout(self, node, op, w: Windowed, args) -> Windowed | None:
        """A relayout of the token axes alone (the features last, in place): the index moved
        as the tokens are; None for an op that is none (a per-token op)."""
        if not hasattr(node.meta.get("val"), "shape"):  # (a max's values and indices)
            return None
        old, new = self._shape(node.args[0]), self._shape(node)
        last = len(old) - 1
        index = None
        if op in _SAME:
            index = w.index
        elif (op in _VIEWS or op == "flatten") and new[-1] == old[-1]:  # (Hiera's unroll
            # flattens its strides into the batch)
            index = w.index.reshape(new[:-1])
        elif op == "transpose" and last not in (args[1] % len(old), args[2] % len(old)):
            index = w.index.transpose(args[1] % len(old), args[2] % len(old))
        elif op == "permute" and args[1][-1] % len(old) == last:
            index = w.index.permute(*(d % len(old) for d in args[1][:-1]))
        elif op == "roll":
            dims = args[2] if len(args) > 2 else ()
            dims = [dims] if isinstance(dims, int) else list(dims)
            if not dims or any(d % len(old) == last for d in dims):
                raise refuse(node, "a roll of a windowed grid's features or of its flat "
                             "entries (Swin rolls its tokens' rows and columns)", help=_HELP)
            index = w.index.roll(list(args[1]) if isinstance(args[1], (list, tuple))
                                 else args[1], dims)
        elif op == "pad":
            if any(int(p) != 0 for p in args[1]):
                raise refuse(node, f"a pad by {[int(p) for p in args[1]]} of a grid of tokens "
                             "(Swin's padding to whole windows adds tokens of zeros, whose "
                             "keys and values its windows attend; the language's windows "
                             "tile the grid whole)", help="choose an image whose grid of "
                             "tokens the window divides (Swin pads by nothing then)")
            index = w.index
        elif op == "slice" and new == old:
            index = w.index
        if index is None:
            return None
        # (a lazy coordinatewise function made here: retagged, it would lose its node)
        inner = w.inner if type(w.inner).__name__ in ("Vec", "Affine") else \
            self.vec(w.inner, node)
        return Windowed(self._retag(inner, ("tok",) * (len(new) - 1) + ("F",)), index, w.grid)

    def _settled(self, node, w: Windowed):
        """The value itself once its tokens are in their own order again, [B, T, C]."""
        import torch

        b, h, wd = w.grid
        if tuple(w.index.shape) == (b, h * wd) and torch.equal(
                w.index, torch.arange(b * h * wd).reshape(b, h * wd)):
            return w.inner
        return w

    def _per_token(self, node, op, wins, args, flat):
        """A per-token op of windowed values, all laid out alike (and params, numbers): the
        walk's op of their inner values, laid out as they were."""
        import torch

        first = wins[0]
        # params: a layer's weight, or a vector (a bias, a gain) the same for every token; a
        # table of one row per token (positions) would meet each window's tokens alike
        others = [x for x in flat if not isinstance(x, (Windowed, PRef, int, float, bool,
                                                        type(None), str))
                  and not (isinstance(x, Conc) and getattr(x.value, "numel", lambda: 1)() == 1)
                  or isinstance(x, PRef) and len(x.shape) > 1 and op not in (
                      "linear", "layer_norm", "rms_norm")]
        if op not in _PER_TOKEN or others or any(
                not torch.equal(x.index, first.index) for x in wins):
            what = (f"{op} of values laid out otherwise (other windows or orders, not "
                    "windowed, or a table of one row per token)" if op in _PER_TOKEN
                    else f"{op or node.target}")
            if _unrolled(first):  # Hiera's order, not Swin's windows
                raise _refuse_unrolled(node, first, f"cannot trace {what}")
            raise refuse(node, f"{what} of tokens cut into windows (Swin's layout): only "
                         "per-token ops, relayouts of the tokens and attention within the "
                         "windows are traced there", help=_HELP)
        # (a linear layer over the tokens: the walk's refusal says it)
        last = [self._tags(w.inner)[-1] for w in wins]
        if op != "linear" and any(isinstance(x, PRef) for x in flat) and any(
                t not in ("F", "dh") for t in last):
            axis = next(t for t in last if t not in ("F", "dh"))
            what = {"tok": "their tokens", "H": "the heads"}.get(axis, repr(axis))
            raise refuse(node, f"{op} of a param and tokens cut into windows whose last "
                         f"axis is {what}, not their features (a param of one number per "
                         "position of a window or per head, or a layer over each window's "
                         "tokens)",
                         help="keep the features last where a param meets windowed tokens; "
                         "or write the model as a Tensor Program")
        saved = {}
        for a in node.all_input_nodes:
            if isinstance(self.env.get(a.name), Windowed):
                saved[a.name] = self.env[a.name]
                self.env[a.name] = saved[a.name].inner
        try:
            out = super().call(node)
        except TraceError as e:
            if not _unrolled(first):
                raise
            raise _refuse_unrolled(node, first, e.diagnostics[0].message) from e
        finally:
            self.env.update(saved)
        tags = getattr(out, "tags", None) or getattr(getattr(out, "src", None), "tags", None)
        shape = self._shape(node)
        if tags is None or len(tags) != len(shape) or [
                s for s, t in zip(shape, tags, strict=True) if t == "tok"] != list(
                first.index.shape):
            raise refuse(node, f"a {op} of tokens cut into windows that moves their tokens",
                         help=_HELP)
        if isinstance(out, Pointwise):  # its node, as the walk gives one it keeps (walk.py)
            out = Pointwise(out.src, out.f, node.name)
        return Windowed(out, first.index, first.grid)

    # -- patch merging -------------------------------------------------------------------------
    def _grid_part(self, node, part: GridPart, args) -> GridPart:
        """``x[:, r::2]`` or ``x[:, :, c::2]`` of a grid of tokens [B, H, W, C] in their own
        order, H and W even (Swin pads an odd grid by a row or column of zeros first); or, from
        the first, of an odd one too (LeViT's subsample of its queries keeps the last row)."""
        import torch

        g = part.grid
        b, h, w = g.grid
        ident = torch.arange(b * h * w).reshape(b, h, w)
        dim, start, end, step = (list(args[1:]) + [0, None, 1])[:4]
        dim = dim % 4
        size = (h, w)[dim - 1] if dim in (1, 2) else None
        taken = getattr(part, ("row", "col")[dim - 1]) if size else None
        if size is None or size % 2 and start != 0 or step != 2 or start not in (0, 1) or \
                taken is not None \
                or not (end is None or end >= size) or not self._token_only(g) or not (
                    tuple(g.index.shape) == (b, h, w) and torch.equal(g.index, ident)):
            raise refuse(node, f"a slice [{start}:{end}:{step}] of axis {dim} of a grid of "
                         "tokens: traced only as Swin's patch merging takes every other row "
                         "and column of an even grid in its tokens' own order, x[:, r::2, "
                         "c::2, :], concatenated along the features", help=_MERGE_HELP)
        return dataclasses.replace(part, **{("row", "col")[dim - 1]: start})

    def _merge_op(self, node, args):
        """The parts of a grid: a slice of one more axis, or their concatenation along the
        features in Swin's order, ``merge2x2(image(t, H, W), D)``."""
        op = op_name(node)
        part = args[0] if isinstance(args[0], GridPart) else None
        if part is not None and op == "slice":
            if self._shape(node) == self._shape(node.args[0]):
                return part
            return self._grid_part(node, part, args)
        if op == "cat" and isinstance(args[0], (list, tuple)):
            parts, dim = args[0], (args[1] if len(args) > 1 else 0)
            g = parts[0].grid if isinstance(parts[0], GridPart) else None
            if g is not None and dim % 4 == 3 and len(parts) == 4 and all(
                    isinstance(p, GridPart) and p.grid is g for p in parts) and [
                    (p.row, p.col) for p in parts] == _MERGED:
                x = self.vec(g.inner, node)
                b, h, w = g.grid
                name = self.emit_vector(node.name, f"merge2x2(image({x.name}, {self.dim(h)}, "
                                        f"{self.dim(w)}), {self.dim(4 * x.dim)})")
                return Vec(name, ("tok", "px", "px", "F"), 4 * x.dim)
        if part is not None and op in _VIEWS and (part.row, part.col) == (0, 0):
            subsampled = self._subsampled(node, part)
            if subsampled is not None:
                return subsampled
        raise refuse(node, f"every other row and column of a grid of tokens used other than "
                     f"concatenated along the features, all four, in Swin's order (by "
                     f"{op or node.target})", help=_MERGE_HELP)

    def _subsampled(self, node, part: GridPart) -> Vec | None:
        """``x[:, ::2, ::2].reshape(B, -1, C)`` of a grid of tokens (LeViT's LevitSubsample of
        its queries, stride 2): the grid's every other row and column, from the first, read
        back as tokens, row-major: ``tokens(subsample(image(t, H, W)), S)``, S a sequence of
        ⌈H/2⌉·⌈W/2⌉ tokens (an odd grid's last row and column kept, as subsample keeps
        them). A relabelling of finitely many of the tokens' vectors: exponents pass through.
        None for any other view of the part."""
        b, h, w = part.grid.grid
        shape = self._shape(node)
        if len(shape) != 3 or shape[:2] != (b, (h + 1) // 2 * ((w + 1) // 2)):
            return None
        x = self.vec(part.grid.inner, node)
        seq = self.sequences().get(shape[1]) or self.dim(shape[1])
        name = self.emit_vector(node.name, f"tokens(subsample(image({x.name}, {self.dim(h)}, "
                                f"{self.dim(w)})), {seq})")
        return Vec(name, ("tok", "tok", "F"), x.dim)

    # -- the bias and the attention ----------------------------------------------------------
    def window_table(self, node, w: PRef, window: int) -> WinTable:
        """``table[relative_position_index]`` (ops_linear.op_embedding): Swin's bias."""
        if w.t or w.rows or w.offset or len(w.shape) != 2:
            raise refuse(node, "Swin's relative position bias read from part of a table",
                         help=_HELP)
        axes = ("qk", "H") if self._shape(node)[0] == window**4 else ("q", "k", "H")
        return WinTable(w, window, node.name, axes)

    def _table_op(self, node, args, kwargs):
        b = next(x for x in (*args, *kwargs.values()) if isinstance(x, WinTable))
        op = op_name(node)
        shape = self._shape(node)
        if op == "scaled_dot_product_attention":
            return self._attention(node, args, kwargs)
        if args[0] is b and op in _SAME:
            return b
        if isinstance(b.ref, OffsetTable) and (made := self.after_lookup(node, b, op, args)):
            return made  # 16 * sigmoid(bias) of a computed table: on its rows (ops_offsets)
        if args[0] is b and op in _VIEWS and b.axes in (("qk", "H"), ("q", "k", "H")) and \
                shape == (b.window**2, b.window**2, b.ref.shape[1]):  # (a 2-D index's: as is)
            return dataclasses.replace(b, axes=("q", "k", "H"))
        if args[0] is b and op == "permute" and "qk" not in b.axes:
            return dataclasses.replace(b, axes=tuple(b.axes[d] for d in args[1]))
        if args[0] is b and op == "unsqueeze":
            axes = list(b.axes)
            axes.insert(args[1] % (len(axes) + 1), "1")
            return dataclasses.replace(b, axes=tuple(axes))
        if op == "add" and len(args) == 2 and b.mask is None:
            other = args[1] if args[0] is b else args[0]
            if isinstance(other, Scores) and not other.causal and other.bias is None and \
                    other.cap is None and b.axes[-3:] == ("H", "q", "k"):
                return self._one_window_scores(node, other, b)
            if isinstance(other, Conc) and b.axes[-3:] == ("H", "q", "k"):
                import torch

                m = torch.as_tensor(other.value).to(torch.float64)
                area = b.window**2
                if m.dim() == 4 and tuple(m.shape[1:]) == (1, area, area):
                    return dataclasses.replace(b, mask=m[:, 0], axes=("tok", *b.axes[-3:]))
        raise refuse(node, f"Swin's relative position bias ({b.ref.shape[0]} offsets of a "
                     f"window of {b.window} x {b.window}, per head) used other than added to "
                     f"attention logits within the windows (by {op or node.target})",
                     help=_HELP)

    def _attention(self, node, args, kwargs):
        """sdpa of windowed queries, keys and values with Swin's bias (and mask)."""
        names = ("q", "k", "v", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        call = dict(zip(names, args, strict=False)) | kwargs
        q, k, v, b = (call.get(x) for x in ("q", "k", "v", "attn_mask"))
        if isinstance(b, WinTable) and not any(isinstance(x, Windowed) for x in (q, k, v)):
            q, k, v = (self._one_window(self._shape(a), x, b.window)
                       for a, x in zip(node.args[:3], (q, k, v), strict=True))
        if call.get("is_causal"):
            raise refuse(node, "causal attention within windows", help=_HELP)
        return self._within(node, q, k, v, b, call.get("scale"))

    def _within(self, node, q, k, v, b, factor, eager=False, gain=None):
        """Attention over the grid's tokens with the ``windows`` input's bias, when the
        windows, the bias and its mask are that, pair for pair; ``eager``: the keys are
        transposed (_logits saw them so)."""
        if not all(isinstance(x, Windowed) for x in (q, k, v)) or not isinstance(b, WinTable) \
                or b.axes[-3:] != ("H", "q", "k"):
            raise refuse(node, "attention over tokens cut into windows other than Swin's: "
                         "windowed queries, keys and values, and its relative position bias "
                         "(plus its mask) as the additive mask, not causal", help=_HELP)
        import torch

        index = q.index
        if index.dim() == 3 and index.shape[1] == 1:  # [windows, w², 1, C] transposed
            raise refuse(node, "attention within windows of one head: its queries, keys and "
                         f"values viewed [windows, 1, {index.shape[2]}, C], whose axis of 1 the "
                         "trace reads as one more axis of tokens, not as heads", help="split "
                         "the features into two or more heads, as Swin's configs do; or write "
                         "the model as a Tensor Program with `input win : windows[T, B, H, W, "
                         "shift]` (docs/language.md, examples/swin.tp)")
        if any(not torch.equal(x.index, index) for x in (k, v)) or index.dim() != 2 or \
                index.shape[1] != b.window**2:
            raise refuse(node, "attention over windowed tokens whose queries, keys and values "
                         f"are laid out differently, or not in windows of {b.window**2} "
                         "tokens (its bias's)", help=_HELP)
        shift, mask = self._shift(node, index, b, q.grid)
        batch, height, width = q.grid
        name = self.fresh("win")
        # the tokens' sequence: the patches' (a stride-p convolution's, T) or an image's
        # pixels read as tokens, tokens(h, D) over a dim of their count
        seq = "T" if getattr(self, "tokens_seq", None) == height * width else self.dim(
            height * width)
        dims = [seq, *(self.dim(x) for x in (b.ref.shape[0], height, width))]
        shift = f"{shift}, {mask}" if mask != 100 else shift  # the regions' -mask
        self.out.decls.append(f"input {name} : windows[{', '.join(dims)}, {shift}]")
        rel = RelBias(b.ref, name, b.node, ("1", "H", "q", "k"), (b.window**2,) * 2)
        qv, kv, vv = (self.vec(x.inner, node) for x in (q, k, v))
        if qv.dh is None:
            raise refuse(node, "attention over values not split into heads", help=_HELP)
        if eager:  # eager's k.transpose(-1, -2): the keys as the queries are
            kv = Vec(kv.name, qv.tags, kv.dim, kv.dh)
        if gain is not None:  # a temperature per head: on the queries (ops_temperature.py)
            qv = self.tempered_query(node, qv, gain)
        if kv.tags != qv.tags:  # sdpa(q, k.mT, v): valid in torch for a head size of w²
            raise refuse(node, "attention within windows whose keys are laid out otherwise "
                         f"than its queries: {list(kv.tags)}, not {list(qv.tags)}", help=_HELP)
        self.grouped(node, qv, kv, "keys")
        if factor is None:
            factor = qv.dh**-0.5
        return Windowed(self.attend(node, qv, kv, vv, rel, False, factor), index, q.grid)

    def _logits(self, node, q: Windowed, k: Windowed) -> WinScores:
        """``q @ k.transpose(-1, -2)`` of windowed queries and keys split into heads: the keys'
        last two axes are the queries' swapped (``q @ k`` of a head size equal to the window's
        token count is a valid matmul of another value, refused)."""
        qt, kt = self._tags(q.inner), self._tags(k.inner)
        if len(qt) < 2 or qt[-2] != "tok" or qt[-1] == "tok" or kt != (*qt[:-2], qt[-1], "tok"):
            raise refuse(node, "a matmul of windowed values other than the queries times the "
                         "keys transposed, q @ k.transpose(-1, -2), each split into heads "
                         f"(the operands' axes: {list(qt)} and {list(kt)})", help=_HELP)
        return WinScores(q, k, node=node.name)

    def _scores_op(self, node, args):
        """Eager attention's ops on the logits of windowed queries and keys: a scale, Swin's
        bias, its mask (the windows viewed apart from the batch and back), the softmax, and
        the weights' matmul with windowed values."""
        op = op_name(node)
        tempered = self.temperature(node, args)  # Swin V2's, per head (ops_temperature.py)
        if tempered is not None:
            return tempered
        s = args[0] if isinstance(args[0], WinScores) else None
        other = args[1] if len(args) > 1 else None
        shape, old = self._shape(node), self._shape(node.args[0])
        if s is not None and not s.probs:
            # a scale of q @ k.T alone: once the bias (or mask) is added it would scale them too
            if op in ("div", "mul") and isinstance(other, (int, float)) and s.bias is None:
                return dataclasses.replace(s, factor=s.factor / other if op == "div" else
                                           s.factor * other, node=node.name)
            if op in ("div", "mul") and isinstance(other, (int, float)):
                raise refuse(node, f"a {op} of attention logits within windows after Swin's "
                             "bias (or its mask) is added to them: the bias and mask would be "
                             "scaled too, and the language scales q @ k.T alone", help="scale "
                             "q @ k.transpose(-1, -2) before adding the bias, as Swin does")
            if op == "add" and isinstance(other, WinTable) and s.bias is None and not s.split \
                    and other.mask is None and other.axes[-3:] == ("H", "q", "k"):
                return dataclasses.replace(s, bias=other)
            if op in _VIEWS and s.bias is not None and len(old) + 1 == len(shape) == 5 and \
                    shape[0] * shape[1] == old[0] and shape[2:] == old[1:] and not s.split:
                return dataclasses.replace(s, split=True)
            if op in _VIEWS and s.split and len(shape) == 4 and old[0] * old[1] == shape[0]:
                return dataclasses.replace(s, split=False)
            if op == "add" and s.split and isinstance(other, Conc):
                import torch

                m = torch.as_tensor(other.value).to(torch.float64)
                area = s.bias.window**2
                if m.dim() == 5 and m.shape[0] == m.shape[2] == 1 and tuple(m.shape[3:]) == (
                        area, area) and m.shape[1] == old[1]:
                    # window n of the batch's B·nW is window n % nW of the image; a mask added
                    # again (transformers' Swin V2 adds its -100s twice) adds up, and _shift
                    # reads the sum's magnitude
                    mask = m[0, :, 0].repeat(old[0], 1, 1)
                    mask = mask if s.bias.mask is None else s.bias.mask + mask
                    return dataclasses.replace(s, bias=dataclasses.replace(s.bias, mask=mask))
            if op in ("softmax", "_softmax") and not s.split and args[1] in (-1, len(old) - 1):
                return dataclasses.replace(s, probs=True)
        if s is not None and s.probs and op in _SAME:
            return s
        if s is not None and s.probs and op == "matmul" and not isinstance(other, Windowed):
            other = self._one_window(self._shape(node.args[1]), other,
                                     s.bias.window if s.bias else 0)
        if s is not None and s.probs and op == "matmul" and isinstance(other, Windowed):
            out = self._within(node, s.q, s.k, other, s.bias, s.factor, eager=True,
                               gain=s.gain)
            # the logits are the scaled q @ k.T's node, not sdpa's q and k (check.py)
            self.out.vectors.update({v: (s.node, "out") for v, (n, kind) in list(
                self.out.vectors.items()) if n == node.name and kind == "sdpa_logits"})
            return out
        raise refuse(node, f"attention logits within windows used other than eager attention "
                     f"uses them with Swin's bias and mask (by {op or node.target})",
                     help=_HELP)

    def _one_window_scores(self, node, s: Scores, b: WinTable) -> WinScores:
        """Eager logits [B, heads, w², w²] of tokens in their own order plus Swin's bias: one
        window of the whole w x w grid (DonutSwin's later stages)."""
        import torch

        shape, area = self._shape(node), b.window**2
        if len(shape) != 4 or shape[-2:] != (area, area):
            raise refuse(node, "Swin's relative position bias added to attention logits of "
                         f"other than {area} tokens (its window's)", help=_HELP)
        index = torch.arange(shape[0] * area).reshape(shape[0], area)
        grid = (shape[0], b.window, b.window)
        return WinScores(Windowed(s.q, index, grid), Windowed(s.k, index, grid), s.factor, b,
                         node=s.node)

    def one_grid_scores(self, s: Scores, shape) -> WinScores | None:
        """Eager logits [B, heads, T, T] of tokens in their own order, T = w² (no bias, cap or
        causal mask yet): one window of the whole w x w grid, whose bias is still to come (a
        temperature first: Swin V2's later stages); None for any other."""
        import torch

        side = math.isqrt(shape[-1]) if len(shape) == 4 and shape[-1] == shape[-2] else 0
        if side < 2 or side * side != shape[-1] or s.causal or s.cap or s.bias is not None:
            return None
        index = torch.arange(shape[0] * side * side).reshape(shape[0], side * side)
        grid = (shape[0], side, side)
        return WinScores(Windowed(s.q, index, grid), Windowed(s.k, index, grid), s.factor,
                         node=s.node)

    def _one_window(self, shape, x, window: int):
        """Queries, keys or values [B, heads, w², dh] in their tokens' own order, a grid of w x w
        tokens that is one window (Swin's window as large as the grid: its last stages')."""
        import torch

        tags = getattr(x, "tags", None)
        if tags is None or len(tags) != len(shape) or [
                s for s, t in zip(shape, tags, strict=True) if t == "tok"] != [
                shape[0], window**2]:
            return x
        return Windowed(x, torch.arange(shape[0] * window**2).reshape(shape[0], window**2),
                        (shape[0], window, window))

    def _shift(self, node, index, b: WinTable, grid) -> tuple[int, int]:
        """The shift whose ``windows`` input pairs the tokens as the windows ``index`` do,
        with the bias ids and the mask ``b`` adds, and the mask's magnitude (100 for Swin's
        -100, 200 for a mask added twice); refused where none does."""
        import torch

        batch, height, width = grid
        tokens = height * width
        flat = index.flatten()
        if not torch.equal(flat.sort().values, torch.arange(batch * tokens)):
            raise refuse(node, "attention over windows that do not hold every token of the "
                         "grid once", help=_HELP)
        rel = swin_index(b.window, torch)
        mask = b.mask if b.mask is not None else torch.zeros(1, *rel.shape, dtype=torch.float64)
        if mask.shape[0] not in (1, index.shape[0]):
            raise refuse(node, f"a mask of {mask.shape[0]} windows over attention within "
                         f"{index.shape[0]} windows", help=_HELP)
        size = batch * tokens
        ids = torch.zeros(size, size, dtype=torch.long)
        add = torch.full((size, size), float("-inf"), dtype=torch.float64)
        rows, cols = index[:, :, None].expand(-1, -1, index.shape[1]), index[:, None, :].expand(
            -1, index.shape[1], -1)
        ids[rows, cols] = rel.expand(index.shape[0], -1, -1)
        add[rows, cols] = mask.expand(index.shape[0], -1, -1)
        blocks = [(ids[i * tokens:(i + 1) * tokens, i * tokens:(i + 1) * tokens],
                   add[i * tokens:(i + 1) * tokens, i * tokens:(i + 1) * tokens])
                  for i in range(batch)]
        across = add.clone()
        for i in range(batch):
            across[i * tokens:(i + 1) * tokens, i * tokens:(i + 1) * tokens] = float("-inf")
        if bool((across != float("-inf")).any()):
            raise refuse(node, "attention within windows that hold tokens of several images",
                         help=_HELP)
        # the mask's one magnitude, a whole number (else no windows input's: refused below)
        values = mask[(mask != 0) & mask.isfinite()].unique()
        magnitude = 100
        if values.numel() == 1 and float(-values[0]).is_integer() and float(values[0]) < 0:
            magnitude = int(-values[0])
        for shift in range(b.window):
            want_ids, want_add = window_buckets(height, width, b.window, shift, torch,
                                                magnitude)
            kept = want_add != float("-inf")
            if all(torch.equal(a, want_add) and torch.equal(i[kept], want_ids[kept])
                   for i, a in blocks):
                return shift, magnitude
        raise refuse(node, f"attention within windows of {b.window} x {b.window} tokens of a "
                     f"{height} x {width} grid that are not Swin's of any shift (its windows, "
                     "its offsets' ids and its mask, pair for pair)", help=_HELP)


def _unrolled(w: Windowed) -> bool:
    """Whether ``w``'s tokens are on one axis per image, each image's own, in an order other
    than its grid's: Hiera's ``unroll`` (the pixels of every stride block moved apart, so that a
    max over a view's axis pools the block), never a window partition's [B·windows, w², C]."""
    import torch

    b, h, wd = w.grid
    if w.index.numel() != b * h * wd or w.index.dim() < 2 or w.index.shape[0] != b:
        return False
    index = w.index.reshape(b, h * wd)  # (its token axis split in two: a view's groups)
    own = torch.equal(index // (h * wd), torch.arange(b)[:, None].expand(b, h * wd))
    return own and not torch.equal(index, torch.arange(b * h * wd).reshape(b, h * wd))


def _refuse_unrolled(node, w: Windowed, said: str) -> TraceError:
    """The refusal of an op the walk cannot follow on tokens in an unrolled order: what it said
    of the op, and what the order is."""
    b, h, wd = w.grid
    first = [int(t) for t in w.index.reshape(b, h * wd)[0, :8]]
    what = said.removeprefix("cannot trace ").split(" (in ")[0]
    return refuse(node, f"{what}, of tokens in an unrolled order (each image's {h * wd} tokens "
                  f"of its {h}x{wd} grid on one axis, reordered: Hiera's unroll, its first "
                  f"positions holding the grid's tokens {first}): the trace follows per-token "
                  "ops on them, Hiera's attention over one mask unit of them and its max "
                  "pooling of the grid's 2 x 2 blocks (ops_maskunit.py), and relayouts that "
                  "put them back in the grid's order", help=_UNROLL_HELP)
