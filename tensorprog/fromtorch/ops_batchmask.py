"""A boolean mask over the batch that keeps every example: ``h[mask]`` and ``out[mask] = y``.

X-MOD's adapter layer runs each language's adapter on that language's examples only::

    new = torch.zeros_like(h)
    for i, lang in enumerate(self.adapter_modules):
        mask = lang_ids == i                  # one entry per example
        new[mask] = self.adapter_modules[lang](h[mask])

With no ``lang_ids`` given, the model makes them itself, its default language's id for every
example (``default_lang_id * torch.ones(batch_size)``): the mask is a constant of the graph, all
true, and ``h[mask]`` is ``h`` itself, as ``new[mask] = y`` into the zeros is ``y``. So the layer
is its one adapter applied to every token, which is what the program says. A mask computed from
ids given as an input is a constant of the trace as a given attention mask is (walk.py): the
example's language is every input's.

A mask that keeps part of the batch is refused: examples that take different params (a batch of
several languages) are a different model per example, which one program cannot be. So are a mask
that keeps nothing (an adapter of a language the batch does not hold: its params would reach no
output through it) and one computed from the token ids (what it keeps then depends on the
tokens). Only a 1-D mask over the first axis is followed.
"""

from __future__ import annotations

from .values import Affine, Conc, Pointwise, Vec
from .where import refuse

_HELP = ("give every example of the batch the same language (X-MOD: call "
         "model.set_default_language(lang) and pass no lang_ids), and build the model with that "
         "language's adapter only (config.languages = [lang]); a model that runs other params on "
         "other examples is one model per example: trace one per language")


class BatchMaskOps:
    """``h[mask]`` and ``out[mask] = y`` with a constant mask over the first axis that keeps
    every entry: ``h`` and ``y`` themselves."""

    def _whole_mask(self, node, v, indices, what: str) -> bool:
        """Whether ``indices`` is one boolean mask over the first axis of ``v`` (the node's
        first argument) that keeps every entry; a mask over it that keeps fewer is refused.
        False where the index is no such mask (an integer index, several, ...)."""
        import torch

        if len(indices) != 1 or not isinstance(indices[0], Conc):
            return False
        mask = indices[0].value
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            return False
        if not isinstance(v, (Vec, Affine, Pointwise, Conc)):
            return False
        shape = tuple(node.args[0].meta["val"].shape)
        if not shape or mask.shape[0] != shape[0]:
            return False
        if indices[0].probe is not None:
            raise refuse(node, f"{what} by a mask computed from the token ids: what it keeps "
                         "depends on the tokens", help=_HELP)
        kept = int(mask.sum())
        if kept == 0:
            raise refuse(node, f"{what} by a mask over the batch that keeps none of its "
                         "examples (X-MOD's adapter of a language the batch does not hold): "
                         "what it computes reaches no output, and the program would not say "
                         "that its params stay untrained", help=_HELP)
        if kept != mask.numel():
            raise refuse(node, f"{what} by a mask over the batch that keeps {kept} of the "
                         f"{mask.numel()} of its examples (X-MOD's lang_ids == k, a batch of "
                         "several languages): examples that take different params are a "
                         "different model per example, which one program cannot be",
                         help=_HELP)
        return True

    def op_index(self, node, v, indices):
        """``h[mask]``, a mask keeping every example: ``h``."""
        if isinstance(v, (Vec, Affine, Pointwise)) and self._whole_mask(
                node, v, indices, "a selection of examples"):
            # its first axis's size is unknown to export (u0), to whatever reads it
            self.whole_selections = {**getattr(self, "whole_selections", {}),
                                     node.name: int(indices[0].value.numel())}
            return v
        return super().op_index(node, v, indices)

    def op_sym_size(self, node, v, dim=0):
        """The size export leaves unknown of ``h[mask]``'s first axis: ``h``'s, all kept."""
        size = getattr(self, "whole_selections", {}).get(node.args[0].name)
        if size is None or dim != 0:
            raise refuse(node, "a size that export leaves unknown (the result of an op whose "
                         "shape depends on the values, a mask's count of its entries kept)")
        return size

    def op_index_put(self, node, v, indices, values, accumulate=False):
        """``zeros_like(h)[mask] = y`` (in place, ``index_put_``), a mask keeping every
        example and ``y`` of ``h``'s shape: ``y``, written over (or added to) zeros."""
        import torch

        zeros = isinstance(v, Conc) and isinstance(v.value, torch.Tensor) and v.probe is None \
            and not bool(v.value.any())
        if not isinstance(values, (Vec, Affine, Pointwise)) or not self._whole_mask(
                node, v, indices, "an assignment to examples"):
            raise refuse(node, "an assignment by index (x[i] = y) other than of a per-token "
                         "vector to every example of zeros by a mask that keeps them all",
                         help=_HELP)
        shape = tuple(node.args[0].meta["val"].shape)
        given = tuple(node.args[2].meta["val"].shape)
        if not zeros or len(given) != len(shape) or given[1:] != shape[1:]:
            raise refuse(node, "an assignment by a mask of examples to anything but zeros of "
                         "the assigned vector's shape (X-MOD's torch.zeros_like(h)), which "
                         "would keep some of the old entries",
                         help="assign into torch.zeros_like(h) and add the rest after")
        return values
