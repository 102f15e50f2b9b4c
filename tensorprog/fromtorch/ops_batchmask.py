"""A constant boolean mask over the batch that keeps every example or none: ``h[mask]`` and
``out[mask] = y``.

X-MOD's adapter layer runs each language's adapter on that language's examples only::

    new = torch.zeros_like(h)
    for i, lang in enumerate(self.adapter_modules):
        mask = lang_ids == i                  # one entry per example
        new[mask] = self.adapter_modules[lang](h[mask])

With no ``lang_ids`` given, the model makes them itself, its default language's id for every
example (``default_lang_id * torch.ones(batch_size)``): each mask is a constant of the graph. The
default language's keeps every example: ``h[mask]`` is ``h`` itself, and ``new[mask] = y`` into
the zeros is ``y``. Every other language's keeps none: ``h[mask]`` holds no example, and so does
everything computed from it, example by example (:class:`Unselected`: export gives their first
axis one size, ``u0``, that it does not know, 0 here), and ``new[mask] = y`` leaves ``new`` as it
was. So the layer is the default language's adapter applied to every token, which is what the
program says; the other adapters reach no output, and their params are reported unused (they
get no gradient from a batch of the default language). A mask computed from ids given as an
input is a constant of the trace as a given attention mask is (walk.py): the example's language
is every input's.

Refused at the line: a mask that keeps part of the batch (examples that take different params,
a batch of several languages, are a different model per example, which one program cannot be),
one computed from the token ids (what it keeps then depends on the tokens), one (or what it is
computed from) written in place (``m[2:] = False``: the graph's ``eq`` does not show it), an op
on examples selected by none whose result is not of those examples alone (a sum over them),
and an assignment of all examples over anything but zeros, or through a slice or view of them
(``new[m, :, :n] = y``: the walker's check of in-place ops). Only a 1-D mask over the first
axis is followed.

Over the tokens, one assignment is followed: ``h[ids == k] = v`` into a lookup ``h`` of the same
ids in a table with no row k (T5Gemma 2's end-of-image vector, its id 256000 outside a smaller
vocabulary). No id the lookup takes is k, so no token is written, for every input: ``h``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine, Conc, Pointwise, Vec
from .where import CHECK_OPS, op_name, refuse, written_in_place

_HELP = ("give every example of the batch the same language (X-MOD: call "
         "model.set_default_language(lang) and pass no lang_ids); a model that runs other "
         "params on other examples is one model per example: trace one per language")
_PER_TOKEN = (Vec, Affine, Pointwise)
# ops of each token's vector alone, with numbers: between a lookup and an assignment to its tokens
_PER_TOKEN_OPS = {"mul", "div", "to", "_to_copy", "type_as", "clone", "alias", "detach",
                  "contiguous"}
# ops that give a tensor of one value, whatever its size, from operands of one value: a mask so
# computed keeps the same examples (all or none) at every batch size. Those that read their
# operand's shape alone (``ones_like``) are not followed further
_FILLS = {"ones", "zeros", "full", "scalar_tensor", "ones_like", "zeros_like", "full_like",
          "new_ones", "new_zeros", "new_full", "empty_like"}
_UNIFORM = {"mul", "add", "sub", "div", "rsub", "neg", "eq", "ne", "lt", "le", "gt", "ge",
            "logical_not", "bitwise_not", "logical_and", "logical_or", "bitwise_and",
            "bitwise_or", "to", "_to_copy", "type_as", "clone", "contiguous", "alias",
            "lift_fresh_copy", "detach", "expand", "view", "reshape", "_unsafe_view",
            "unsqueeze", "squeeze", "select", "slice"}


@dataclass
class Unselected:
    """Examples selected by a mask that keeps none (``h[mask]``), or a value computed from them
    example by example: no entry. ``size`` names the first axis's size that export gives them
    (``u0``), which every value computed from them alone keeps."""

    size: str


def _flat(args, kwargs) -> list:
    return [x for a in (*args, *kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])]


class BatchMaskOps:
    """``h[mask]`` and ``out[mask] = y`` with a constant mask over the first axis that keeps
    every entry (``h`` and ``y`` themselves) or none (no example, and ``out``)."""

    def call(self, node):
        if not getattr(self, "unselected", False) and not getattr(self, "whole_selections", {}):
            return super().call(node)  # (no mask over the batch so far)
        # the size export gives the examples selected (u0) is one it cannot compare: an op
        # whose handler decides by its shapes (a view) cannot tell where it stands
        from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

        try:
            return self._selected_call(node)
        except GuardOnDataDependentSymNode:
            raise refuse(node, f"a {op_name(node)} of examples selected by a mask over the "
                         "batch (X-MOD's h[lang_ids == k]), whose number export leaves unknown: "
                         "only ops of each example apart (a linear layer, a nonlinearity) are "
                         "followed on them", help=_HELP) from None

    def _selected_call(self, node):
        if not getattr(self, "unselected", False):
            return super().call(node)
        args, kwargs = self.args(node)
        empty = next((x for x in _flat(args, kwargs) if isinstance(x, Unselected)), None)
        op = op_name(node)
        if empty is None:
            return super().call(node)
        if op in CHECK_OPS:  # export's checks of the unknown size
            return None
        if op == "sym_size":
            return self.op_sym_size(node, *args, **kwargs)
        if op in ("index_put", "index_put_"):  # the selected examples assigned back
            return self.op_index_put(node, *args, **kwargs)
        val = node.meta.get("val")
        shape = getattr(val, "shape", ())
        if len(shape) and str(shape[0]) == empty.size:
            return empty  # still of the examples selected, none
        raise refuse(node, f"a {op} of examples selected by a mask that keeps none of the "
                     "batch (X-MOD's adapter of a language the batch does not hold) whose "
                     "result is not of those examples alone", help=_HELP)

    def _mask_keeps(self, node, v, indices, what: str) -> str | None:
        """"all" or "none" where ``indices`` is one constant boolean mask over the first axis
        of ``v`` (the node's first argument) that keeps every entry or none; a mask over it that
        keeps some is refused. None where the index is no such mask (an integer index,
        several, ...)."""
        import torch

        if len(indices) != 1 or not isinstance(indices[0], Conc):
            return None
        mask = indices[0].value
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            return None
        if indices[0].probe is not None:
            op = "a selection" if op_name(node) == "index" else "an assignment"
            raise refuse(node, f"{op} by a mask computed from the token ids (T5Gemma 2's "
                         "h[input_ids == eoi] = ...): what it keeps depends on the tokens' "
                         "values, which the program has no form for (an id k the lookup's "
                         "table has no row for, which no token takes, is traced as no "
                         "assignment)",
                         help="write what the mask picks as a lookup of the ids (a table read "
                         "at them), or leave that part out of the traced model")
        shape = tuple(node.args[0].meta["val"].shape)
        if mask.dim() != 1 or not shape or mask.shape[0] != shape[0]:
            raise refuse(node, f"{what} by a boolean mask of shape {list(mask.shape)} over a "
                         f"value of shape {list(shape)}: only a mask over the first axis alone "
                         "(one entry per example: X-MOD's lang_ids of shape (batch,)) is "
                         "followed; one over the tokens too gathers them into one axis, which "
                         "the program has no form for", help=_HELP)
        if not self._uniform(node.args[1][0]):
            raise refuse(node, f"{what} by a mask over the batch computed otherwise than from "
                         "one value for every example (X-MOD's default_lang_id * "
                         "torch.ones(batch)) or from ids given as an input, or written in "
                         "place after (m[2:] = False): what it keeps may differ at another "
                         "batch size", help=_HELP)
        kept = int(mask.sum())
        if 0 < kept < mask.numel():
            raise refuse(node, f"{what} by a mask over the batch that keeps {kept} of the "
                         f"{mask.numel()} of its examples (X-MOD's lang_ids == k, a batch of "
                         "several languages): examples that take different params are a "
                         "different model per example, which one program cannot be",
                         help=_HELP)
        return "all" if kept else "none"

    def _id_outside_table(self, node) -> bool:
        return id_outside_table(node)

    def _uniform(self, mask) -> bool:
        """Whether the graph computes ``mask`` from fills of one value (``torch.ones(batch)``),
        numbers and the integer inputs given (constants of the trace), by ops that keep a
        tensor of one value so: the same for every example at any batch size. Nothing on the
        way may be written in place (``m[2:] = False``: the graph's ``eq`` does not say it)."""
        todo, seen = [mask], set()
        while todo:
            node = todo.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            if written_in_place(node):
                return False
            if node.op == "placeholder":
                value = getattr(self, "env", {}).get(node.name)
                if node.name in self.given or (isinstance(value, Conc) and getattr(
                        value.value, "numel", lambda: 2)() == 1):
                    continue
                return False
            op = op_name(node)
            if op in _FILLS:
                continue
            if op not in _UNIFORM:
                return False
            todo.extend(node.all_input_nodes)
        return True

    def op_index(self, node, v, indices):
        """``h[mask]``, a mask keeping every example (``h``) or none (no example)."""
        keeps = self._mask_keeps(node, v, indices, "a selection of examples") if isinstance(
            v, _PER_TOKEN) else None
        if keeps == "none":
            self.unselected = True
            return Unselected(str(node.meta["val"].shape[0]))
        if keeps == "all":
            # its first axis's size is unknown to export (u0), to whatever reads it: by the
            # symbol, which every value computed from it keeps
            self.whole_selections = {**getattr(self, "whole_selections", {}),
                                     str(node.meta["val"].shape[0]): indices[0].value.numel()}
            return v
        return super().op_index(node, v, indices)

    def op_sym_size(self, node, v, dim=0):
        """The size export leaves unknown of ``h[mask]``'s first axis (or of a value computed
        from it): ``h``'s where the mask keeps every example, 0 where it keeps none."""
        if isinstance(v, Unselected) and dim == 0:
            return 0
        size = getattr(self, "whole_selections", {}).get(str(node.meta.get("val")))
        if size is None:
            raise refuse(node, "a size that export leaves unknown (the result of an op whose "
                         "shape depends on the values, a mask's count of its entries kept)")
        return size

    def op_index_put(self, node, v, indices, values, accumulate=False):
        """``out[mask] = y`` (in place, ``index_put_``): a mask keeping no example leaves
        ``out``; one keeping every example, over zeros (``zeros_like(h)``) with ``y`` of
        ``h``'s shape, is ``y``, written over (or added to) the zeros."""
        import torch

        if self._id_outside_table(node):
            return v  # no id the lookup can take is k: the assignment writes no token
        keeps = self._mask_keeps(node, v, indices, "an assignment to examples") if isinstance(
            v, (*_PER_TOKEN, Conc)) else None
        if keeps == "none" and isinstance(values, Unselected):
            return v
        if keeps != "all" or not isinstance(values, _PER_TOKEN):
            raise refuse(node, "an assignment by index (x[i] = y) other than of a per-token "
                         "vector to every example of zeros, or of the examples a mask keeping "
                         "none selects, by a constant mask over the batch", help=_HELP)
        zeros = isinstance(v, Conc) and isinstance(v.value, torch.Tensor) and v.probe is None \
            and not bool(v.value.any())
        shape = tuple(node.args[0].meta["val"].shape)
        given = tuple(node.args[2].meta["val"].shape)
        if not zeros or len(given) != len(shape) or given[1:] != shape[1:]:
            raise refuse(node, "an assignment by a mask of examples to anything but zeros of "
                         "the assigned vector's shape (X-MOD's torch.zeros_like(h)), which "
                         "would keep some of the old entries",
                         help="assign into torch.zeros_like(h) and add the rest after")
        return values


def id_outside_table(node) -> bool:
    """Whether ``node`` is ``h[ids == k] = v`` with ``h`` a lookup of the same ``ids`` in a
    table of fewer than k + 1 rows (or k < 0), by ops of each token alone (a scale, a cast):
    every id the lookup can take differs from k (any other fails the lookup), so the mask
    keeps no token, for every input, and the assignment leaves ``h``. T5Gemma 2's end-of-image
    token ``eoi_token_index`` (256000) outside a smaller vocabulary. One at an id the table
    holds is refused (``_mask_keeps``): those tokens take ``v`` for their row, a choice of
    vector by the token's value that the program has no form for."""
    mask = node.args[1][0] if isinstance(node.args[1], (list, tuple)) and len(
        node.args[1]) == 1 else None
    if mask is None or not hasattr(mask, "op") or op_name(mask) not in ("eq", "eq_"):
        return False
    ids, k = mask.args[0], mask.args[1]
    if not hasattr(ids, "op") or not isinstance(k, int) or isinstance(k, bool):
        return False
    h = node.args[0]
    while hasattr(h, "op") and op_name(h) in _PER_TOKEN_OPS:
        h = h.args[0]
    if not hasattr(h, "op") or op_name(h) != "embedding" or h.args[1] is not ids:
        return False
    rows = int(h.args[0].meta["val"].shape[0])
    return not 0 <= k < rows and not written_in_place(mask) and not written_in_place(ids)
