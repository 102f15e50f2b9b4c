"""torch.vmap's levels in a graph of constants: transformers' masks built from a mask function
that is none of its own (T5Gemma 2's bidirectional sliding window, ``sliding_window_mask_function``)
are computed by ``_vmap_for_bhqkv``, which export records as ``_vmap_increment_nesting``,
``_add_batch_dim(x, 0, level)``, ops on the batched values, ``_remove_batch_dim`` and
``_vmap_decrement_nesting``. The walk computes the ops between on the CPU (their operands are
constants: positions, numbers); a batched value is one only inside its level, so the nesting
calls, which nothing reads, are made here as the graph makes them, in its order. A level that is
not the one the graph names (the walk itself run under a vmap) is not entered: the values
between stay unknown, and a mask of them is refused where it is read. An op under a level that
reads a program value (a param: the mask scaled by one) is refused at its line. Levels left
open by a refusal are closed when the walk ends."""

from __future__ import annotations

from .values import Aux, Conc
from .where import op_name, refuse

_NESTING = ("_vmap_increment_nesting", "_vmap_decrement_nesting")


class VmapOps:
    """The nesting calls of a vmap over constants, made as the graph makes them."""

    def call(self, node):
        name = getattr(node.target, "__name__", "")
        if node.op != "call_function" or name not in _NESTING:
            if getattr(self, "vmap_levels", None):
                self._constants_only(node)
            return super().call(node)
        from torch._C import _functorch

        levels = self.__dict__.setdefault("vmap_levels", [])
        if name == "_vmap_decrement_nesting":
            if levels:
                levels.pop()
                _functorch._vmap_decrement_nesting()
            return Aux()
        level = _functorch._vmap_increment_nesting(*node.args)
        if level != len(levels) + 1:  # another vmap around the walk: its levels are not these
            _functorch._vmap_decrement_nesting()
            return Aux()
        levels.append(level)
        return Aux()

    def _constants_only(self, node) -> None:
        """Inside a vmap's level the walk computes constants only: an op that reads a program
        value (a param, a vector of the model) there is refused at its line."""
        flat = [
            a
            for a in (*node.args, *node.kwargs.values())
            for a in (a if isinstance(a, (list, tuple)) else [a])
        ]
        other = [
            a
            for a in flat
            if hasattr(a, "op") and not isinstance(self.env.get(a.name), (Conc, Aux))
        ]
        if other:
            raise refuse(
                node,
                f"a {op_name(node)} under torch.vmap of a value computed from "
                "params or the model's vectors (transformers' mask functions "
                "vmapped over the positions): only constants are computed under it, "
                "the mask a model builds from positions and numbers",
                help="compute the mask from positions and numbers alone, or "
                "broadcast over the positions instead of vmapping",
            )

    def run(self):
        try:
            return super().run()
        finally:
            from torch._C import _functorch

            while getattr(self, "vmap_levels", None):
                self.vmap_levels.pop()
                _functorch._vmap_decrement_nesting()
