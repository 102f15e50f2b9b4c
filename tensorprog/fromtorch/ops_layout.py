"""Layout ops: views, transposes, permutes, and the split of a fused layer's output."""

from __future__ import annotations

import math

from .values import Affine, Aux, Conc, KVRepeat, Parts, Pointwise, PRef, Scores, Vec
from .where import refuse


class LayoutOps:
    """Layout ops: views, transposes, permutes, and the split of a fused layer's output."""

    # -- layout ops --------------------------------------------------------------------------
    def view(self, node, v):
        shape = tuple(node.meta["val"].shape)
        if isinstance(v, (Conc, Aux)):
            return self.concrete(node, *self.args(node))
        if isinstance(v, PRef):
            raise refuse(node, "a reshaped param")
        if isinstance(v, KVRepeat) or getattr(v, "group", 1) != 1:  # grouped-query attention
            return self.repeat_kv_merge(node, v)
        tags = self._tags(v)
        old = self._shape(node.args[0])
        feat = [s for s, t in zip(old, tags, strict=True) if t != "tok"]
        lead = [s for s, t in zip(old, tags, strict=True) if t == "tok"]
        if shape[-1] == old[-1] and tags[-1] in ("F", "dh") and "H" not in tags:
            new = ("tok",) * (len(shape) - 1) + (tags[-1],)
            if math.prod(shape[:-1]) != math.prod(lead):
                raise refuse(node, f"a view from {list(old)} to {list(shape)}")
            return self._retag(v, new)
        if (
            tags[-1] == "F"
            and len(shape) == len(old) + 1
            and shape[:-2] == tuple(old[:-1])
            and shape[-2] * shape[-1] == old[-1]
        ):
            v = self.vec(v, node)
            return Vec(v.name, ("tok",) * (len(shape) - 2) + ("H", "dh"), v.dim, shape[-1])
        if tags[-2:] == ("H", "dh") and len(shape) == len(old) - 1 and shape[-1] == math.prod(feat):
            return Vec(v.name, ("tok",) * (len(shape) - 1) + ("F",), v.dim)
        if tags == tuple("tok" if i != len(tags) - 1 else "dh" for i in range(len(tags))) or (
            shape == tuple(old)
        ):
            return v
        raise refuse(node, f"a view from {list(old)} to {list(shape)}")

    def _shape(self, a):
        return tuple(a.meta["val"].shape)

    def _tags(self, v):
        return v.tags if hasattr(v, "tags") else v.src.tags

    def _retag(self, v, tags):
        if isinstance(v, Pointwise):
            return Pointwise(Vec(v.src.name, tags, v.src.dim, v.src.dh), v.f)
        if isinstance(v, (Vec, Affine, Scores)):
            return type(v)(**{**v.__dict__, "tags": tags})
        raise AssertionError(v)

    def op_transpose(self, node, v, d0, d1):
        if isinstance(v, PRef):
            return PRef(v.target, v.shape, not v.t, v.rows)
        tags = list(self._tags(v))
        tags[d0], tags[d1] = tags[d1], tags[d0]
        return self._retag(self.vec(v, node) if isinstance(v, Affine) else v, tuple(tags))

    def op_t(self, node, v):
        return self.op_transpose(node, v, 0, 1)

    def op_permute(self, node, v, dims):
        if isinstance(v, PRef) and len(dims) == 2:
            return self.op_t(node, v)
        tags = self._tags(v)
        return self._retag(self.vec(v, node), tuple(tags[d] for d in dims))

    def op_split(self, node, v, size, dim=-1):
        sizes = (
            [size] * (self._shape(node.args[0])[dim] // size)
            if isinstance(size, int)
            else list(size)
        )
        return self._split(node, v, sizes, dim)

    def op_split_with_sizes(self, node, v, sizes, dim=-1):
        return self._split(node, v, list(sizes), dim)

    def _split(self, node, v, sizes, dim):
        ndim = len(self._shape(node.args[0]))
        if not isinstance(v, Affine) or dim % ndim != ndim - 1:
            raise refuse(node, "a split of anything but a linear layer's output features")
        items, start = [], 0
        for s in sizes:
            rows = (start, start + s)
            wr = PRef(v.w.target, v.w.shape, v.w.t, rows)
            br = PRef(v.b.target, v.b.shape, v.b.t, rows) if v.b is not None else None
            items.append(Affine(v.x, wr, br, v.node, v.tags, v.layer or v.node))
            start += s
        return Parts(items)

    def op_unsqueeze(self, node, v, dim):
        if "H" in self._tags(v):  # HF's repeat_kv: v[:, :, None].expand(...).reshape(...)
            return self.repeat_kv_axis(node, v, dim)
        raise refuse(node, "an added axis on a per-token vector")
