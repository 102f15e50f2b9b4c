"""A coordinatewise map of a linear layer's output, viewed per head and split into parts of each
head: MiniMax's lightning attention, ``act(qkv_proj(x))`` viewed (..., H, 3·dh) and split into
q, k and v; LeViT's ``MLPLayerWithBN``, a linear layer and a batch norm of its channels, viewed
(..., H, 2·dk + dv) and split likewise.

Each coordinate of such a map depends on that coordinate of the layer's output alone (a
function applied to each, or a batch norm: each channel normalised over the batch and tokens,
times its own gain, plus its own bias). So the rows of each head's block of the map are the map
of those rows of the layer, ``f(W x)[rows] = f(W[rows] x)``: the split makes the layer's blocks
of rows, as a split of the layer's own output does (ops_heads.py), and maps each, a batch norm
with the same rows of its gain and bias. Each part is then the per-head vector the model
computes, exactly. The value is held, as a :class:`Mapped`, from the map's first op to the
split, and made only where every op between is such a map, a cast, or a view that keeps the
features last and whole, and the view into heads is only split along each head's features
(what the graph says before the walk reaches them). Anything else that mixes coordinates (a
layer norm, a softmax over the features) keeps the refusal at the split (ops_layout.py).
"""

from __future__ import annotations

import dataclasses

from .ops_heads import split_last
from .ops_pointwise import PartNode
from .values import Affine, Parts, Pointwise, PRef, Vec
from .where import op_name, refuse

#: functions of one coordinate (their rules: ops_arith.py); a batch norm of a [N, C] value, whose
#: channels are the features, normalises each over the examples alone (ops_conv.py)
_FUNCTIONS = {"silu", "relu", "gelu", "tanh", "sigmoid", "hardswish", "hardsigmoid", "elu", "erf"}
_NORMS = {"batch_norm"}
_CARRIERS = {"contiguous", "clone", "alias", "to", "_to_copy", "type_as", "dropout"}
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as"}
_SPLITS = {"split", "split_with_sizes", "chunk", "slice"}


@dataclasses.dataclass
class Mapped:
    """The coordinatewise map ``steps`` (graph nodes, in order) of the linear layer output
    ``a``, held till a split of each head reads it; ``a`` is per head once the view into heads
    is met (``heads``)."""

    a: Affine
    steps: tuple
    heads: bool = False


def _maps(node) -> bool:
    """Whether ``node`` maps each feature of its first argument alone."""
    op = op_name(node)
    shape = _shape(node.args[0]) if node.args else None
    return op in _FUNCTIONS or op in _NORMS and shape is not None and len(shape) == 2  # [N, C]


def _shape(node) -> tuple | None:
    """The shape of ``node``'s one tensor (None for a split's list of them, or no tensor)."""
    val = getattr(node, "meta", {}).get("val")
    return tuple(val.shape) if hasattr(val, "shape") else None


def _layer(step) -> tuple | None:
    """The layer output that the map ``step`` (its first) reads: (its features, the leading
    axes it has had), those of the value read and of each value it is a view of (LeViT's
    flatten of the batch and tokens for its batch norm, from the layer's (B, T, ·))."""
    src, leads = step.args[0], []
    while src is not None and _shape(src) is not None:
        leads.append(_shape(src)[:-1])
        src = src.args[0] if op_name(src) in _VIEWS and src.args else None
        src = src if hasattr(src, "meta") else None
    return (_shape(step.args[0])[-1], leads) if leads else None


def _head_view(node, layer: tuple) -> bool:
    """Whether ``node`` views a value of the ``layer`` output's features as heads (..., H, m)
    only split along each head's features after, its leading axes ones the layer's output had
    (a view (T, B, H, m) of a (B, T, ·) output reorders the tokens, which the parts, each made
    of the layer's rows, would not)."""
    shape = _shape(node)
    width, leads = layer
    return (
        op_name(node) in _VIEWS
        and shape is not None
        and len(shape) >= 3
        and shape[:-2] in leads
        and shape[-1] != width
        and (shape[-2] * shape[-1] == width)
        and split_last(node, len(shape))
    )


def _mapped_to_heads(node) -> bool:
    """Whether the graph from ``node`` (a map of a layer's output) is maps, casts and views that
    keep the features last and whole, each the one reader of the one before, up to a view into
    heads split along each head's features."""
    layer = _layer(node)
    while layer is not None:
        op = op_name(node)
        if _head_view(node, layer):
            return True
        readers = [u for u in node.users if not _shape_only(u, node)]
        shape = _shape(node)  # (a split's items are no single tensor: no map held)
        if (
            shape is None
            or not (_maps(node) or op in _CARRIERS or op in _VIEWS and shape[-1] == layer[0])
            or len(readers) != 1
        ):
            return False
        if not readers[0].args or readers[0].args[0] is not node:
            return False
        node = readers[0]
    return False


def _shape_only(user, node) -> bool:
    """Whether ``user`` reads only the shape of ``node`` (LeViT's ``bn(h).reshape_as(h)``)."""
    return op_name(user) in ("reshape_as", "view_as", "expand_as") and user.args[0] is not node


class MappedRowsOps:
    """A coordinatewise map of a linear layer's output held till each head is split."""

    def call(self, node):
        if op_name(node) == "getitem" or not node.args:
            return super().call(node)
        first = self.env.get(getattr(node.args[0], "name", None))
        if isinstance(first, Mapped):
            return self._mapped_op(node, first)
        if (
            isinstance(first, Affine)
            and first.dh is None
            and first.tags[-1:] == ("F",)
            and (
                first.w.rows is None
                and first.w.period is None
                and first.w.cols is None
                and first.w.expert is None
                and all(t == "tok" for t in first.tags[:-1])
            )
            and _maps(node)
            and _mapped_to_heads(node)
        ):
            return Mapped(first, (node,))
        return super().call(node)

    def _mapped_op(self, node, v: Mapped):
        op = op_name(node)
        if not v.heads and (_maps(node) or op in _CARRIERS):
            return dataclasses.replace(v, steps=v.steps + ((node,) if _maps(node) else ()))
        if not v.heads and _head_view(node, _layer(v.steps[0])):
            shape = tuple(node.meta["val"].shape)
            tags = ("tok",) * (len(shape) - 2) + ("H", "dh")
            return dataclasses.replace(
                v, a=self._per_head(v.a, shape[-1], node.name, tags), heads=True
            )
        if not v.heads and op in _VIEWS:  # (LeViT's flatten of the batch and tokens, and back)
            return v
        args, kwargs = self.args(node)
        if v.heads and op in ("transpose", "permute"):
            moved = getattr(self, f"op_{op}")(node, v.a, *args[1:], **kwargs)
            if isinstance(moved, Affine):
                return dataclasses.replace(v, a=moved)
        if v.heads and op in _SPLITS:
            made = getattr(self, f"op_{op}")(node, v.a, *args[1:], **kwargs)
            items = made.items if isinstance(made, Parts) else [made]
            mapped = [self._map_block(node, v, b, k) for k, b in enumerate(items)]
            return Parts(mapped) if isinstance(made, Parts) else mapped[0]
        raise refuse(
            node,
            f"a {op} of a coordinatewise map of a linear layer's output held "
            "till a split of each head's features reads it",
            help="split the mapped layer's output right after its view into heads",
        )

    def _map_block(self, node, v: Mapped, block, k: int):
        """Block ``k`` of the layer's rows that ``node`` splits off, mapped by each step (a
        batch norm with its gain's and bias's rows of the block). Each block of rows is mapped
        once, numbered in the order the map's splits first made it: a second split of other
        sizes has blocks of its own, which a part's place in its split would name alike (and
        the walk makes a value once per name)."""
        rows = block.w if isinstance(block, Affine) else None
        made = self._made.setdefault(("mapped rows", v.steps[0].name), {})
        key = (rows.rows, rows.period) if rows is not None else (node.name, k)
        if key in made:
            return made[key]
        k = len(made)
        if isinstance(block, Affine):  # one name each: a vector is made once per name
            block = dataclasses.replace(block, node=f"{node.name}#part{k}")
        x = block
        for step in v.steps:
            args, kwargs = self.args(step)
            if op_name(step) in _NORMS:
                args[1:3] = [_rows_of(p, rows, step) for p in args[1:3]]
            x = getattr(self, f"op_{op_name(step)}")(PartNode(step, k), x, *args[1:], **kwargs)
            if isinstance(x, Vec) and x.dh is None:  # (a norm's vector keeps the block's heads)
                x = dataclasses.replace(x, dh=block.dh)
            if isinstance(x, Pointwise):  # named by its step, as the walk names a node's
                x = Pointwise(x.src, x.f, PartNode(step, k).name)
        made[key] = x
        return x


def _rows_of(p, rows: PRef | None, step):
    """A batch norm's gain or bias ``p`` (None, or a param of the channels) at ``rows`` (None:
    a slice of each head, which makes a vector, no rows of the layer)."""
    if p is None:
        return None
    if rows is None:
        raise refuse(
            step,
            "a batch norm with a gain or bias of a linear layer's output sliced per head: "
            "its rows of the gain and bias are read where a split or chunk makes each head's "
            "parts, not at a slice",
            help="split each head with torch.split or chunk instead of slicing it",
        )
    if not isinstance(p, PRef) or len(p.shape) != 1:
        raise refuse(
            step,
            "a batch norm of a split linear layer's output whose gain or bias "
            "is not a param of its channels",
            help="give the batch norm affine params",
        )
    return PRef(p.target, p.shape, p.t, rows.rows, period=rows.period, part=rows.part)
