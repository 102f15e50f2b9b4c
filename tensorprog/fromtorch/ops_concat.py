"""A concatenation of vectors along their features fed to one linear layer, traced as the sum
it equals: ``W @ cat(a, b) + bias = W[:, :m] @ a + W[:, m:] @ b + bias``.

The language has no concatenation, but it has sums of matmuls, and the identity is exact for any
W, a and b. Each column block of W is a program param of its own (``W_cols0``, ``W_cols1``), so
the engine derives each block's exponents from the part it reads (an embedding's output and a
hidden vector, a class token and a mean of the tokens), as it would for two separate layers.
ParamUse.cols maps each block back to its columns of the one torch tensor: apply inits each
block at its own std (a slice of the tensor scaled), and a forward multiplier folds into a
block's init and LR as any param's does; a tensor has one LR (and one Adam eps), so blocks
whose derived LRs differ are carried by a scale of the columns (the tensor holds W / s, the
layer's input times s: columns.py), or refused at the concatenation's line.

Only a concatenation that every reader applies a linear layer to is read so: the parts are
looked at before the readers are walked. Any other use of the concatenated vector (a norm over
it, a sum with another vector) is the language's ``cat(a, b, D)``, which joins parts all of
finite dims (Perceiver's image input: a 1x1 convolution's 256 channels and 256 of learned
positions, normalised together) or all growing with the width (Reformer's axial positions):
whether a part grows with the width is known once both widths are traced, and one that does
beside one that does not is refused then, at the concatenation's line."""

from __future__ import annotations

import dataclasses

from .values import Affine, Columns, Joined, Parts, Pointwise, PRef, Vec
from .where import op_name, refuse, user_span


class ConcatOps:
    """``cat`` of vectors along their features (see the module's doc)."""

    def feature_cat(self, node, tensors, dim) -> Joined | None:
        """The concatenation ``node`` of ``tensors`` along the features, where every reader of it
        is a linear layer's input; None for anything else (the caller refuses it)."""
        kinds = (Vec, Affine, Pointwise, Joined)
        if len(tensors) < 2 or not all(isinstance(t, kinds) for t in tensors):
            return None
        ndim = len(node.meta["val"].shape)
        if not _along_features(node, dim) or not _read_by_linears(node):
            return None
        tags = [t.src.tags if isinstance(t, Pointwise) else t.tags for t in tensors]
        if tags[0][-1] != "F" or len(tags[0]) != ndim or any(t != tags[0] for t in tags):
            return None  # per-head parts (MLA's, ops_mla.py), or parts of different sequences
        # a concatenation of concatenations (RoCBert's embeddings, one part at a time) is one
        parts = [p for t in tensors
                 for p in (t.parts if isinstance(t, Joined) else [self.vec(t, node)])]
        return Joined(parts, node.name, tags[0])

    def finite_cat(self, node, tensors, dim) -> Vec | None:
        """``cat(a, b, ..., D)`` of per-token (or per-sequence) vectors along their features
        that something other than a linear layer reads (Perceiver's image input, a 1x1
        convolution's channels beside learned positions, read by a layer norm); None if
        ``tensors`` are no such vectors. The language joins parts all finite or all growing
        with the width (Reformer's axial positions, n/4 and 3n/4 features): D's size slot and
        the parts' sizes are kept, and growing.refuse_growing_cats refuses, once both widths
        are traced, one with a part that grows beside one that does not."""
        if len(tensors) < 2 or not all(isinstance(t, (Vec, Affine, Pointwise)) for t in tensors):
            return None
        tags = {t.src.tags if isinstance(t, Pointwise) else t.tags for t in tensors}
        if len(tags) != 1 or next(iter(tags))[-1] != "F" or not _along_features(node, dim):
            return None
        parts = [self.vec(t, node) for t in tensors]
        if any(p.dh is not None or p.group != 1 for p in parts):
            return None
        return self.cat_statement(node, parts)

    def cat_statement(self, node, parts: list[Vec], held: bool = True) -> Vec:
        """``cat(a, b, ..., D)`` of ``parts``, the value of ``node`` where ``held`` (else a
        value no node of the graph holds: tables of a grid's axes concatenated before their
        rows are laid out per token, ops_axial.py), kept for growing.refuse_growing_cats."""
        size = sum(p.dim for p in parts)
        d = self.dim(size)
        readers = sorted({op_name(u) for u in node.users} - {"linear"})
        expr = f"cat({', '.join(p.name for p in parts)}, {d})"
        if held:
            name = self.emit_vector(node.name, expr)
        else:
            name = self.fresh(f"{node.name}_cat")
            self.out.stmts.append(f"{name} = {expr}")
        self.out.cats[name] = (len(self.out.slots) - 1, node.name, ", ".join(readers),
                               parts[0].tags == ("tok", "F"), tuple(p.dim for p in parts))
        self.cat_parts[name] = parts
        return Vec(name, parts[0].tags, size)

    @property
    def cat_parts(self) -> dict[str, list[Vec]]:
        """Each ``cat(...)`` statement's parts, by its name (a split of it gives them back)."""
        if not hasattr(self, "_cat_parts"):
            self._cat_parts = {}
        return self._cat_parts

    def split_cat(self, node, v, sizes, dim) -> Parts | None:
        """A split of a concatenation along its features at its parts' bounds (Reformer's
        reversible stream, ``chunk(cat([h, h], -1), 2, -1)``): the parts themselves, exactly;
        None for any other split."""
        parts = self.cat_parts.get(v.name) if isinstance(v, Vec) else None
        ndim = len(node.args[0].meta["val"].shape)
        if parts is None or dim % ndim != ndim - 1 or list(sizes) != [p.dim for p in parts]:
            return None
        return Parts(list(parts))

    def joined_linear(self, node, x: Joined, w, b=None) -> Affine:
        """``W @ cat(parts) + b``, lazy as any linear layer's output (a split of its rows, a
        fused query and gate, makes row blocks of every column block): emit_joined writes it."""
        if not isinstance(w, PRef) or w.t or w.rows or w.expert is not None or w.offset \
                or len(w.shape) != 2 or w.shape[1] != sum(p.dim for p in x.parts):
            raise refuse(node, "a linear layer on a concatenation whose weight is not a whole "
                         "param [out, in] of the concatenation's features",
                         help="apply a separate nn.Linear to each part and add their outputs")
        return Affine(x, w, b, node.name, x.tags[:-1] + ("F",))

    def emit_joined(self, a: Affine, node_name: str) -> Vec:
        """The statement of ``W @ cat(parts) + b`` (W, b: the whole param or a row block of it):
        the sum of W's column blocks applied to the parts, each block a param of its own."""
        node = self._node(a.layer or a.node)
        sizes = [p.dim for p in a.x.parts]
        span = user_span(self.by_name.get(a.x.node, node))
        terms, names, lo = [], [], 0
        for k, (part, size) in enumerate(zip(a.x.parts, sizes, strict=True)):
            cols = Columns(k, lo, lo + size, sum(sizes), span)
            name, _ = self.param(dataclasses.replace(a.w, cols=cols), node)
            names.append(name)
            terms.append(f"{name} @ {part.name}")
            lo += size
        rows = a.w.rows
        dim = (rows[1] - rows[0]) if rows else a.w.shape[0]
        if rows and a.w.period:  # the block of every head's rows
            dim *= a.w.shape[0] // a.w.period
        bias = self.vector_param(a.b, node) if a.b is not None else None
        expr = " + ".join(terms) + (f" + {bias}" if bias else "")
        # its producer (a query's, where attention's factor goes): apply patches the layer's
        # output for a param with columns, since no one block's init and LR can take it
        return Vec(self.emit_vector(node_name, expr, (names[0], bias)), a.tags, dim)

def _along_features(node, dim) -> bool:
    ndim = len(node.meta["val"].shape)
    return dim % ndim == ndim - 1


def _read_by_linears(node) -> bool:
    """Whether every reader of ``node`` is a linear layer taking it as its input, or another
    concatenation along the features that is itself read so."""
    for u in node.users:
        if op_name(u) == "cat" and node in u.args[0] and node not in u.args[1:]:
            cat_dim = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)
            if not (_along_features(u, cat_dim) and _read_by_linears(u)):
                return False
        elif not (op_name(u) == "linear" and u.args[0] is node and node not in u.args[1:]):
            return False
    return bool(node.users)
