"""Hiera's mask-unit attention (transformers' HieraMaskUnitAttention) over tokens in any order.

Hiera's ``qkv(x).reshape(B, T / U, U, 3, heads, dh).permute(3, 0, 4, 2, 1, 5).unbind(0)`` cuts
its fused projection into the query, key and value, each [B, heads, U, T / U, dh]: U mask
units, token t·U + u in unit u. With one unit (U = 1: a masked_unit_size as large as the
image's grid of tokens, as at the zoo's image size) the attention is over all of the image's
tokens, which commutes with any order they are in: its queries keep theirs, its keys and
values need only be in one order, each image's own tokens all. So it is traced on the walk's
values (ops_windows.Windowed: Hiera's unrolled tokens), its output in the queries' order.
More units are attention within groups of tokens with no bias: refused.

Hiera pools its queries, and its residual, entering a stage by a max over a view's axis of
stride blocks: ``q.view(B, heads, U, s, T / s, dh).max(dim=3)``, ``x.view(B, s, T / s,
C).max(dim=1)``. Where each group of s = 4 is the 2 x 2 block of the grid (as Hiera's unroll
puts them), this is ``tokens(maxpool(image(h, H, W)), S)``, exactly (the language's maxpool
takes the max of each 2 x 2 block); the pooled tokens keep the order the groups are in.
"""

from __future__ import annotations

import dataclasses
import math
import operator

from .ops_windows import Windowed
from .values import Affine, Parts, Pointwise, Probs, Scores, Vec
from .where import op_name, refuse

_VIEWS = {"view", "reshape", "_unsafe_view"}
# Hiera's per-head layouts of one unit: [B, heads, 1, T, dh] and, transposed, [B, T, 1, heads, dh]
_UNIT_HEADS = ("tok", "H", "tok", "tok", "dh")
_TOKENS_HEADS = ("tok", "tok", "tok", "H", "dh")
_UNIT_KEYS = ("tok", "H", "tok", "dh", "tok")  # the keys transposed, [B, heads, 1, dh, T]
# ops on one unit's logits and weights (held in the grid's order, torch's in the unrolled one)
# that are the same whatever order the tokens are in: coordinatewise, or the softmax over all
# the keys; anything else (a causal or padding mask, a bias, a slice) reads their order
_ORDER_FREE = {
    "softmax",
    "_softmax",
    "dropout",
    "native_dropout",
    "clone",
    "contiguous",
    "detach",
    "alias",
    "to",
    "_to_copy",
    "tanh",
    "mul",
    "div",
    "matmul",
}
_UNITS_HELP = (
    "choose an image whose grid of tokens one mask unit covers (a masked_unit_size "
    "as large as the grid of tokens: one unit per image), or write the model as a "
    "Tensor Program"
)


@dataclasses.dataclass
class _Fused:
    """A fused qkv [B, T, k·heads·dh] viewed [B, T, 1, k, heads, dh] (``value``, Windowed or
    the walk's), read only by one permute that moves the k axis first."""

    value: object
    shape: tuple


@dataclasses.dataclass
class _Groups:
    """A Windowed value viewed with one token axis split in two, ``axis`` the first (groups of
    s tokens), read only by a max over that axis."""

    value: Windowed
    axis: int
    index: object  # the value's index with its token axis split so


@dataclasses.dataclass
class _Max:
    """The max over the groups (torch's (values, indices)), read by taking its values."""

    groups: _Groups


@dataclasses.dataclass
class _Keys:
    """The order of the keys of traced logits (None: the walk's own) and the queries'
    (Windowed, or None: the walk's own)."""

    keys: object
    queries: Windowed | None


class MaskUnitOps:
    """Hiera's fused qkv cut per unit, its attention over reordered tokens, its max pooling."""

    def call(self, node):
        if node.target is operator.getitem:
            src = self.env.get(getattr(node.args[0], "name", None))
            if isinstance(src, _Max) and node.args[1] == 0:  # its values, at their node
                return self._unit_pooled(node, src.groups)
            if isinstance(src, _Max) and node.users:
                raise refuse(node, "the indices of a max pooling of tokens", help=_UNITS_HELP)
            if isinstance(src, Parts) and src.items and isinstance(src.items[0], Windowed):
                w = src.items[node.args[1]]
                inner = (
                    self.head_part(dataclasses.replace(w.inner, node=node.name), node)
                    if isinstance(w.inner, Affine)
                    else w.inner
                )
                return Windowed(inner, w.index, w.grid)
            return super().call(node)
        args, kwargs = self.args(node)
        op = op_name(node)
        self._unit_order_free(node, op, args, kwargs)
        if args and isinstance(args[0], _Fused):
            return self._unit_fused_parts(node, args[0])
        if args and isinstance(args[0], _Groups):
            return self._unit_max(node, args[0])
        if op in _VIEWS and args and _layout(args[0]) is not None:
            made = self._unit_fused_view(node, args[0])
            if made is None and "H" in _layout(args[0]):
                made = self._unit_head_view(node, args[0])
            if made is None and isinstance(args[0], Windowed):
                made = self._unit_grouped_view(node, args[0])
            if made is not None:
                return made
        if op in ("transpose", "permute") and args and "H" in (_layout(args[0]) or ()):
            made = self._unit_moved(node, args[0], args)
            if made is not None:
                return made
        if (
            op == "matmul"
            and len(args) == 2
            and (
                any(isinstance(a, Windowed) for a in args)
                # (weights over reordered keys applied to values in the grid's order: refused there)
                or isinstance(args[0], Probs)
                and _key_name(args[0].scores) in getattr(self, "_unit_keys", {})
            )
        ):
            return self._unit_attention(node, *args)
        if op == "matmul" and len(args) == 2 and not isinstance(args[0], (Scores, Probs)):
            made = self._unit_logits(node, *args)
            if made is not None:
                return made
        return super().call(node)

    def _unit_order_free(self, node, op, args, kwargs) -> None:
        """Refuses an op on the logits or weights of attention over reordered tokens (traced
        in the grid's order) unless it is the same in any order of the tokens: coordinatewise
        with numbers, the softmax, the weights applied to the values (checked there)."""
        units = getattr(self, "_unit_keys", {})
        flat = [
            x
            for a in (*args, *kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        held = [
            x
            for x in flat
            if isinstance(x, Scores)
            and _key_name(x) in units
            or isinstance(x, Probs)
            and _key_name(x.scores) in units
        ]
        if not held:
            return
        others = [x for x in flat if x not in held and not isinstance(x, (int, float, bool))]
        if (
            op in _ORDER_FREE
            and (op != "matmul" or isinstance(args[0], Probs))
            and (op not in ("mul", "div") or not others)
        ):
            return
        raise refuse(
            node,
            f"{op or node.target} of attention logits over tokens in an unrolled order (the "
            "trace holds them in the grid's order: a mask, a bias or a slice of them would "
            "meet other tokens)",
            help="attend over the unrolled tokens with no mask or bias (Hiera's mask unit), "
            "or write the model as a Tensor Program",
        )

    def _unit_logits(self, node, q, k) -> Scores | None:
        """``q @ k.transpose(-1, -2)`` of queries and keys [B, heads, 1, T, dh] (Hiera's one
        mask unit): the walk's logits, the unit's axis of 1 one more batch axis."""
        tq, tk = (
            getattr(x, "tags", None) or getattr(getattr(x, "src", None), "tags", None)
            for x in (q, k)
        )
        if (
            tq is None
            or tk is None
            or tuple(tq[-4:]) != ("H", "tok", "tok", "dh")
            or tuple(tk[-4:]) != ("H", "tok", "dh", "tok")
            or len(tq) != len(tk)
            or self._shape(node.args[0])[-3] != 1
            or self._shape(node.args[1])[-3] != 1
        ):
            return None
        factor = _times(q)  # (q * scale) @ k.T: the scale the logits' factor, as sdpa's
        if factor is not None:
            q = q.src
        x, w = self.vec(q, node), self.vec(k, node)
        return Scores(x, w, factor or 1.0, node.name, x.tags[:-1] + ("tok",))

    # -- the fused qkv -------------------------------------------------------------------------
    def _unit_fused_view(self, node, v) -> _Fused | None:
        """Hiera's ``qkv(x).reshape(B, T / U, U, 3, heads, dh)``, read by a permute that moves
        the 3 first, then unbound: a _Fused for one unit; more units refused."""
        inner = v.inner if isinstance(v, Windowed) else v
        if not (
            isinstance(inner, Affine)
            and inner.dh is None
            and inner.tags == ("tok", "tok", "F")
            and inner.w.rows is None
            and inner.w.period is None
        ):
            return None
        old, shape = self._shape(node.args[0]), self._shape(node)
        if (
            len(shape) != 6
            or shape[0] != old[0]
            or shape[1] * shape[2] != old[1]
            or math.prod(shape[3:]) != old[2]
        ):
            return None
        users = list(node.users)
        if (
            len(users) != 1
            or op_name(users[0]) != "permute"
            or users[0].args[1][0] % 6 != 3
            or users[0].args[1][-1] % 6 != 5
            or not all(
                op_name(u) == "unbind" and (u.args[1] if len(u.args) > 1 else 0) == 0
                for u in users[0].users
            )
        ):
            return None
        if shape[2] != 1:
            raise refuse(
                node,
                f"a fused qkv viewed {list(shape)}: Hiera's {shape[2]} mask "
                f"units of {shape[1]} tokens each (token t·{shape[2]} + u in unit u), "
                "each unit attended apart with no bias: the language attends within "
                "groups of tokens only as Swin's windows, with their learned bias; "
                "one unit (all of an image's tokens) is traced",
                help=_UNITS_HELP,
            )
        return _Fused(v, shape)

    def _unit_fused_parts(self, node, f: _Fused) -> Parts:
        """The permute of the view: the k parts, each a block of every head's rows (the query,
        the key, the value), laid out as the permute leaves them."""
        perm = [d % 6 for d in node.args[1]]
        tags6 = ("tok", "tok", "tok", "k", "H", "dh")
        tags = tuple(tags6[d] for d in perm[1:])
        w = f.value if isinstance(f.value, Windowed) else None
        inner = w.inner if w else f.value
        k, heads, dh = f.shape[3:]
        m = heads * dh
        items = []
        for i in range(k):
            block = dataclasses.replace(
                self.row_block(inner, i * m, (i + 1) * m, node.name), tags=tags, dh=dh
            )
            if w is not None:  # the tokens' index laid over the permuted token axes
                index = w.index.reshape(f.shape[:3]).permute(*[d for d in perm if d < 3])
                block = Windowed(block, index, w.grid)
            items.append(block)
        return Parts(items)

    # -- relayouts of reordered tokens split into heads ----------------------------------------
    def _unit_walk(self, node, values: dict):
        """The walk's own op at ``node`` with its Windowed inputs read as ``values`` (their
        inner values: the op commutes with the tokens' order, or the caller orders its
        result)."""
        saved = {}
        for a in node.all_input_nodes:
            if a.name in values:
                saved[a.name], self.env[a.name] = self.env[a.name], values[a.name]
        try:
            return super().call(node)
        finally:
            self.env.update(saved)

    def _unit_inners(self, node) -> dict:
        return {
            a.name: self.env[a.name].inner
            for a in node.all_input_nodes
            if isinstance(self.env.get(a.name), Windowed)
        }

    def _unit_moved(self, node, v, args):
        """A transpose or permute of tokens split into heads with a unit axis of 1 (Hiera's
        attention output, [B, heads, 1, T, dh] to [B, T, 1, heads, dh]) that keeps the order
        of the token axes other than those of 1: the value retagged, a Windowed one's index
        moved as its tokens are; None for any other."""
        w = v if isinstance(v, Windowed) else None
        inner = w.inner if w else v
        tags, old = self._tags(inner, node), self._shape(node.args[0])
        n = len(tags)
        if op_name(node) == "transpose":
            perm = list(range(n))
            a, b = args[1] % n, args[2] % n
            perm[a], perm[b] = perm[b], perm[a]
        else:
            perm = [d % n for d in args[1]]
        tok = [i for i, t in enumerate(tags) if t == "tok"]
        moved = [d for d in perm if d in tok]
        # (any other transpose of heads is the walk's: one it refuses swaps two token axes,
        # here only past the unit's axis of 1)
        if (
            tags not in (_UNIT_HEADS, _TOKENS_HEADS)
            or old[2] != 1
            or moved == tok
            or perm[-1] != n - 1
            or [d for d in moved if old[d] != 1] != [d for d in tok if old[d] != 1]
        ):
            return None
        x = self.vec(inner, node)
        out = Vec(x.name, tuple(tags[d] for d in perm), x.dim, x.dh)
        if w is None:
            return out
        index = w.index.permute(*[tok.index(d) for d in moved])
        return self._settled_units(Windowed(out, index, w.grid))

    def _unit_head_view(self, node, v):
        """A view of tokens split into heads that merges the heads back, dropping the token
        axes of 1 (Hiera's [B, T, 1, heads, dh] to [B, T, heads·dh]): the vector, a Windowed
        one's index viewed as its tokens are."""
        w = v if isinstance(v, Windowed) else None
        inner = w.inner if w else v
        tags = self._tags(inner, node)
        old, shape = self._shape(node.args[0]), self._shape(node)
        if (
            tags != _TOKENS_HEADS
            or old[2] != 1
            or tuple(shape) != (old[0], old[1], old[3] * old[4])
        ):
            return None
        x = self.vec(inner, node)
        out = Vec(x.name, ("tok",) * (len(shape) - 1) + ("F",), x.dim)
        if w is None:
            return out
        return self._settled_units(Windowed(out, w.index.reshape(shape[:-1]), w.grid))

    def _settled_units(self, w: Windowed):
        """The value itself once its tokens are in their own order again."""
        import torch

        if torch.equal(w.index.flatten(), torch.arange(w.index.numel())):
            return w.inner
        return w

    # -- pooling by a max over stride blocks ---------------------------------------------------
    def _unit_grouped_view(self, node, w: Windowed) -> _Groups | None:
        """A view splitting one token axis of reordered tokens in two (s, T / s), read only by
        a max over the first: Hiera's pooling (its queries', its residual's)."""
        tags = self._tags(w.inner)
        old, shape = self._shape(node.args[0]), self._shape(node)
        if len(shape) != len(old) + 1:
            return None
        axis = next((i for i in range(len(old)) if shape[i] != old[i]), None)
        if (
            axis is None
            or tags[axis] != "tok"
            or shape[axis] * shape[axis + 1] != old[axis]
            or tuple(shape[axis + 2 :]) != tuple(old[axis + 1 :])
        ):
            return None
        users = list(node.users)
        if (
            len(users) != 1
            or op_name(users[0]) not in ("max", "amax")
            or _dim(users[0]) is None
            or _dim(users[0]) % len(shape) != axis
            or users[0].kwargs.get("keepdim")
            or any(a is True for a in users[0].args[2:])
        ):
            return None
        t = tags[:axis].count("tok")
        index = w.index.reshape(
            *w.index.shape[:t], shape[axis], shape[axis + 1], *w.index.shape[t + 1 :]
        )
        return _Groups(w, t, index)

    def _unit_max(self, node, g: _Groups) -> _Max:
        """The max over each group, where every group is a 2 x 2 block of the grid (Hiera's
        unroll puts each block's tokens T / 4 apart); any other groups refused."""
        b, h, wd = g.value.grid
        members = g.index.movedim(g.axis, -1)
        image, local = members // (h * wd), members % (h * wd)
        block = (local // wd // 2) * (wd // 2) + local % wd // 2
        s = members.shape[-1]
        if (
            s != 4
            or h % 2
            or wd % 2
            or not bool((image == image[..., :1]).all() and (block == block[..., :1]).all())
        ):
            raise refuse(
                node,
                f"a max over groups of {s} tokens of a {h}x{wd} grid that are "
                "not each a 2 x 2 block of it (Hiera's pooling of its unrolled tokens "
                "by (2, 2) strides is maxpool(image(h, H, W)), exactly)",
                help="pool with query_stride (2, 2), as Hiera's configs do, or write "
                "the model as a Tensor Program",
            )
        if op_name(node) == "amax":  # its values alone
            return self._unit_pooled(node, g)
        return _Max(g)

    def _unit_pooled(self, node, g: _Groups):
        """``tokens(maxpool(image(h, H, W)), S)`` (S the blocks), in the order the groups are
        in: the max pooling's values, at the node that takes them."""
        b, h, wd = g.value.grid
        members = g.index.movedim(g.axis, -1)
        image, local = members[..., 0] // (h * wd), members[..., 0] % (h * wd)
        block = (local // wd // 2) * (wd // 2) + local % wd // 2
        x = self.vec(g.value.inner, node)
        seq = self.sequences().get(h * wd // 4) or self.dim(h * wd // 4)
        name = self.emit_vector(
            node.name, f"tokens(maxpool(image({x.name}, {self.dim(h)}, {self.dim(wd)})), {seq})"
        )
        made = self.out.producers.get(x.name)
        if made is not None:
            # a max is positively homogeneous, maxpool(c·h) = c·maxpool(h) for c > 0: a
            # multiplier on the pooled W @ x + b (attention's scale on a pooled query) folds
            # into W and b as it does on their output
            self.out.producers[name] = made
        pooled = Vec(name, x.tags, x.dim, x.dh)
        return self._settled_units(
            Windowed(pooled, image * (h * wd // 4) + block, (b, h // 2, wd // 2))
        )

    # -- attention over all of each image's tokens ---------------------------------------------
    def _unit_attention(self, node, a, b):
        """``q @ k.transpose(-1, -2)`` of queries and keys [B, heads, 1, T, dh] (Hiera's one
        unit) where the keys are each image's tokens all, in one order, and ``probs @ v`` of its
        weights and values in the keys' order: the walk's attention of the inner values, its
        output in the queries' order. Any other matmul of reordered tokens (Swin's windows) is
        the other rules'."""
        import torch

        if isinstance(a, Probs):
            keys = getattr(self, "_unit_keys", {}).get(_key_name(a.scores))
            if keys is None:
                return super().call(node)
            order = b.index if isinstance(b, Windowed) else None
            if (order is None) != (keys.keys is None) or (
                order is not None and not torch.equal(order, keys.keys)
            ):
                raise refuse(
                    node,
                    "attention weights over tokens in one order applied to values in another",
                    help=_UNITS_HELP,
                )
            out = self._unit_walk(node, self._unit_inners(node))
            q = keys.queries
            return Windowed(out, q.index, q.grid) if q is not None else out
        if (
            not _one_unit(b, _UNIT_KEYS)
            or isinstance(a, Windowed)
            and not _one_unit(a, _UNIT_HEADS)
        ):
            return super().call(node)
        bb, h, wd = b.grid
        if not torch.equal(
            b.index[:, 0].sort(dim=1).values, torch.arange(bb * h * wd).reshape(bb, h * wd)
        ):
            raise refuse(
                node,
                "attention logits over keys that are not each image's tokens all, in one unit",
                help=_UNITS_HELP,
            )
        out = self._unit_logits(node, a.inner if isinstance(a, Windowed) else a, b.inner)
        if out is None:
            return super().call(node)
        if not hasattr(self, "_unit_keys"):
            self._unit_keys = {}
        self._unit_keys[out.k.name] = _Keys(b.index, a if isinstance(a, Windowed) else None)
        return out


def _one_unit(w, tags) -> bool:
    """Whether ``w`` is reordered tokens laid out ``tags`` in Hiera's one unit: its index
    [B, 1, T] over the grid's B images."""
    return (
        isinstance(w, Windowed)
        and _layout(w) == tags
        and w.index.dim() == 3
        and w.index.shape[:2] == (w.grid[0], 1)
    )


def _dim(node) -> int | None:
    """The one axis a reduction is over (None: several, or all)."""
    d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(d, (list, tuple)):  # (amax's dims)
        d = d[0] if len(d) == 1 else None
    return d


def _layout(v) -> tuple | None:
    """The torch axes' tags of a value (of a Windowed one's inner value), where it has them."""
    v = v.inner if isinstance(v, Windowed) else v
    return getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", None)


def _times(v) -> float | None:
    """c where ``v`` is c times a vector (a lazy product with a number), else None."""
    import torch

    if not isinstance(v, Pointwise):
        return None
    c = float(v.f(torch.ones((), dtype=torch.float64)))
    t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    return c if c > 0 and bool(torch.allclose(v.f(t), c * t, rtol=1e-12, atol=0)) else None


def _key_name(scores) -> str | None:
    """The name of the keys the logits ``scores`` were made of, or None where they are no one
    vector (MLA's keys, a cat of per-head parts): such keys are never a unit's reordered ones."""
    return getattr(scores.k, "name", None)
