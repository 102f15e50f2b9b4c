"""A per-token vector times a constant vector over its features: a gain that never trains.

Falcon-H1 multiplies its Mamba in_proj's output by ``mup_vector``, a float buffer the build
fills from the config's ``ssm_multipliers``, one number per block of rows (z, x, B, C, dt):

    projected_states = in_proj(h) * mup_vector,   mup_vector [1, 1, D] of Θ(1) entries.

A product with a fixed vector of Θ(1) coordinates changes no exponent (each coordinate is a
number times the vector's), but the program must compute it, and apply must leave it alone (it
is no param). The language writes a number times a vector (``c * v``, a coefficient slot read at
both traced widths, so a number that changes with the width is a width constant, trace.py), not
a frozen vector of several values. So the product is read as:

* every entry 1: the identity, exactly (the layer's output itself, still split into blocks),
  unless the other traced width has numbers there (convert.py's coefficient nodes): then as
  below, with numbers of 1;
* one value c everywhere: ``c * v``;
* of a linear layer's output (not yet emitted): :class:`Gained`, the layer's output with its
  gain, which a split along the features (or a depthwise convolution split after it,
  ops_tconv.py) cuts into row blocks with the matching entries of the gain. Each block is
  emitted as ``c_j * (W_j @ h + b_j)`` where its entries are one value c_j (Falcon-H1's, by
  construction); a block, or the whole, read with entries of several values is refused at the
  product's line, as is any other product with a constant vector of several values.
"""

from __future__ import annotations

from .gained import Gained, block_of
from .ops_layout import read_by_conv1d, split_along
from .values import Affine, Conc, FixedTable, Given, Parts, Pointwise, Vec
from .where import refuse

_HELP = ("multiply by a number (one value for the whole vector), or by a gain that never trains "
         "laid out in blocks of one value each, split right after the layer it multiplies (as "
         "Falcon-H1's mup_vector over in_proj's z, x, B, C and dt); or make the gain a trained "
         "param")


class FixedGainOps:
    """Products with a constant vector over the features; the splits and transposes of them."""

    def fixed_gain(self, node, u, v):
        """``x * g`` (either order) with g a float constant [1, ..., 1, D] over x's D features
        (module docstring); None where neither factor is such a constant. A constant computed
        from the token ids or another input is none: the walk computes it from zeros in the
        ids' place, and it changes with them (the padding mask's ops read it)."""
        import torch

        for at, (x, m) in enumerate(((u, v), (v, u))):
            value = getattr(m, "value", None) if isinstance(m, (Conc, FixedTable)) else None
            if isinstance(m, Conc) and (m.probe is not None or m.given or isinstance(m, Given)):
                continue  # computed from the token ids or another input: it changes with them
            if not (isinstance(value, torch.Tensor) and value.is_floating_point()
                    and isinstance(x, (Vec, Affine, Pointwise, Gained))):
                continue
            shape = tuple(node.args[at].meta["val"].shape)
            if not shape or value.dim() > len(shape) or value.shape[-1] != shape[-1] or \
                    shape[-1] < 2 or any(s != 1 for s in value.shape[:-1]) or \
                    tuple(node.meta["val"].shape) != shape or self._tags(x, node)[-1] != "F":
                continue
            gain = value.detach().double().reshape(-1)
            buffer = getattr(m, "buffer", "") or "a constant"
            if isinstance(x, Gained):  # two gains: their product
                return Gained(x.out, x.gain * gain, x.buffer, node.name, x.at)
            # all 1s: the identity, unless the other width wrote numbers here (convert.py)
            if bool((gain == 1).all()) and node.name not in self.keep_coefficients:
                return x
            if isinstance(x, Affine) and not x.dh and x.w.period is None:
                return Gained(x, gain, buffer, node.name, node.name)
            if bool((gain == gain[0]).all()):
                p = self.pointwise(node, x)
                return Pointwise(p.src, lambda t, f=p.f, c=float(gain[0]): c * f(t))
            raise self.refuse_gain(node, gain, buffer)
        return None

    def refuse_gain(self, node, gain, buffer: str):
        import torch

        values = torch.unique(gain).tolist()
        shown = ", ".join(f"{c:g}" for c in values[:4]) + (", ..." if len(values) > 4 else "")
        return refuse(node, f"a product with {buffer}, a constant vector of {len(values)} "
                      f"values ({shown}) over the features, read as one vector: the language "
                      "has no gain that never trains, only a number times a vector, so such a "
                      "product is traced only on a linear layer's output split into blocks "
                      "of one value each", help=_HELP)

    def emit_gained(self, v: Gained, node) -> Vec:
        """``c * (W @ h + b)``, the layer's output times its gain of one value c; refused where
        the gain has several."""
        key = ("gained", v.node, v.out.node, v.out.w.rows)  # (a block of rows: its own)
        if key in self._made:
            return self._made[key]
        if not bool((v.gain == v.gain[0]).all()):
            raise self.refuse_gain(self.by_name.get(v.node, node), v.gain, v.buffer)
        a = self.emit_affine(v.out, v.node)
        self.out.vectors.pop(a.name, None)  # no value of the model's holds it without its gain
        made = self.emit_times(Pointwise(a, lambda t: t, v.node), node, float(v.gain[0]),
                               a.name, a.name, slot=True)  # (a slot even at 1: as any width)
        self.out.coefficient_nodes.add(v.at)  # the product: a gain at every width (convert.py)
        if a.name in self.out.producers:  # linear in W and b: a width constant folds there
            self.out.producers[made.name] = self.out.producers[a.name]
        self._made[key] = made = Vec(made.name, v.out.tags, a.dim, v.out.dh or a.dh)
        return made

    def vec(self, v, node) -> Vec:
        if isinstance(v, Gained):
            return self.emit_gained(v, node)
        return super().vec(v, node)

    def gained_parts(self, node, v: Gained, sizes, dim):
        """A split of a gained layer's output along its features: the layer's row blocks, each
        with its entries of the gain (the layer's own split, ops_layout.py)."""
        parts = super()._split(node, v.out, sizes, dim)
        if not isinstance(parts, Parts) or not all(isinstance(q, Affine) for q in parts.items):
            # (not the layer's row blocks, each of which takes its entries of the gain: read
            # as a vector, so that no part goes on without its gain)
            return super()._split(node, self.vec(v, node), sizes, dim)
        lo, items = 0, []
        for s, item in zip(sizes, parts.items, strict=True):
            items.append(block_of(v, item, lo, lo + s))
            lo += s
        parts.items = items
        return parts

    def _split(self, node, v, sizes, dim):
        if isinstance(v, Gained):
            if v.out.dh or dim % len(v.tags) != len(v.tags) - 1:
                return super()._split(node, self.vec(v, node), sizes, dim)
            return self.gained_parts(node, v, sizes, dim)
        return super()._split(node, v, sizes, dim)

    def op_transpose(self, node, v, d0, d1):
        """A gained layer's output transposed channels-first to be split (or convolved then
        split, ops_tconv.py) along its features stays gained; any other transpose reads it as
        a vector."""
        if not isinstance(v, Gained):
            return super().op_transpose(node, v, d0, d1)
        tags = list(v.tags)
        tags[d0], tags[d1] = tags[d1], tags[d0]
        if "F" in tags and (split_along(node, tags.index("F")) or read_by_conv1d(node)):
            out = super().op_transpose(node, v.out, d0, d1)
            if isinstance(out, Affine):
                return Gained(out, v.gain, v.buffer, v.node, v.at)
        return super().op_transpose(node, self.vec(v, node), d0, d1)
