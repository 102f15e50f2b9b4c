"""A per-pair attention bias computed from params over a window's constant offsets, read into the
language's ``input c : offsets[B, E]`` and ``at(g, win)`` (Swin V2's continuous position bias).

Swin V2 (transformers' Swinv2SelfAttention) holds the log-spaced coordinates of its window's
(2w-1)² offsets as a constant buffer (``relative_coords_table``, [1, 2w-1, 2w-1, 2]), maps them by
a small MLP (``continuous_position_bias_mlp``: Linear(2, 512), ReLU, Linear(512, heads)) to a
table [offsets, heads], reads it at ``relative_position_index`` (every (query, key) pair's
offset), permutes it to [heads, w², w²] and adds ``16 * sigmoid`` of it to the attention logits.

The buffer, where its entries are exactly the emitted module's ``_window_coords`` (reshaped), is
the program's offsets input: a value with one row per offset, which the layers act on row by row
as on tokens. What is computed from it is tracked by name (the program vectors whose statements
read it); each op on such a value must be a per-offset one (a linear layer, a bias, a
coordinatewise function, a number times it, a view) or the lookup of its rows at Swin's offset
ids, which makes it Swin's bias (ops_windows.py's :class:`WinTable`) over this computed table,
traced on to the logits as the param table is. A coordinatewise function or a number applied
after the lookup (16 · sigmoid) is applied to the table's rows before it, where it computes the
same numbers, since the lookup only copies entries and ``at`` adds the windows' mask last.
Anything else done to the offsets' values, mixing them with the tokens, or coordinates other
than Swin V2's, is refused at its line.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re

from ..emit.templates import HELPERS
from .ops_windows import WinTable
from .values import Affine, Conc, FixedTable, OffsetTable, Pointwise, PRef, Vec
from .where import op_name, refuse

_HELP = ("compute the bias as Swin V2 does: its MLP of relative_coords_table (Linear, ReLU, "
         "Linear), viewed [(2w-1)², heads], read at relative_position_index, permuted to "
         "[heads, w², w²], 16 * sigmoid, added to the logits; or write the model as a Tensor "
         "Program with `input c : offsets[B, E]` and `at(g, win)` (examples/swinv2_cpb.tp)")
# the ops that act on each offset's row alone, as on a token's vector
_PER_OFFSET = {"linear", "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "add", "mul", "div",
               "view", "reshape", "_unsafe_view", "contiguous", "clone", "_to_copy", "alias",
               "detach", "index", "embedding"}
# what a lookup's bias may go through before the logits: a function of each entry
_AFTER_LOOKUP = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "silu": "silu"}


@functools.cache
def _emitted_coords():
    import torch

    space = {"torch": torch, "math": math}
    exec("\n".join(HELPERS["_window_coords"]), space)  # noqa: S102 - the emitted helper
    return space["_window_coords"]


def window_coords(value) -> int | None:
    """The window side w where ``value`` holds exactly the emitted module's coordinates of its
    (2w-1)² offsets (``_window_coords``, as transformers' Swin V2 computes them), laid out
    [..., 2w-1, 2w-1, 2] or [(2w-1)², 2] (leading axes of 1); else None."""
    import torch

    if value is None or not value.is_floating_point() or value.dim() < 2 or value.shape[-1] != 2:
        return None
    rows = value.numel() // 2
    side = math.isqrt(rows)
    window = (side + 1) // 2
    if side * side != rows or side % 2 == 0 or window < 2 or math.prod(value.shape[:-1]) != rows:
        return None
    lead = [s for s in value.shape[:-1] if s != 1]
    if lead not in ([rows], [side, side]):
        return None
    want = _emitted_coords()(window, torch.empty(0, dtype=value.dtype))
    return window if torch.equal(value.detach().cpu().reshape(rows, 2), want) else None


class OffsetOps:
    """The offsets' coordinates as the program's ``offsets`` input, the per-offset layers on
    them, and the lookup of their result at Swin's offset ids."""

    def offsets_input(self, node, x) -> Vec:
        """A linear layer's constant input: Swin V2's coordinates of a window's offsets, the
        program's ``input c : offsets[B, E]`` (one per window size); refused otherwise."""
        value = x.value if isinstance(x, (Conc, FixedTable)) else None
        window = window_coords(value)
        if window is None:
            raise refuse(node, "a linear layer applied to a constant tensor "
                         f"{list(self._shape(node.args[0]))}, not to the input's tokens, whose "
                         "entries are not Swin V2's log-spaced coordinates of a window's "
                         "(2w-1)² offsets (d/(w-1)·8, then sign·log2(|·| + 1)/3, [(2w-1)², 2] "
                         "or [1, 2w-1, 2w-1, 2]; a pretrained window w' scaling d/(w'-1) is "
                         "none): the language's only constant table of a per-pair bias is "
                         "`input c : offsets[B, E]`", help=_HELP)
        made = self.__dict__.setdefault("_offsets_inputs", {})
        if window not in made:
            name = self.fresh(f"offsets{window}")
            rows = (2 * window - 1) ** 2
            self.out.decls.append(f"input {name} : offsets[{self.dim(rows)}, {self.dim(2)}]")
            self.__dict__.setdefault("_offset_names", set()).add(name)
            made[window] = name
        tags = ("tok",) * (value.dim() - 1) + ("F",)
        return Vec(made[window], tags, 2)

    def emit_vector(self, node_name: str, expr: str, producer: tuple | None = None) -> str:
        name = super().emit_vector(node_name, expr, producer)
        rows = self.__dict__.get("_offset_names")
        if rows and rows & set(re.findall(r"[A-Za-z_][\w.]*", expr)):
            rows.add(name)  # computed from the offsets' values
        return name

    def over_offsets(self, v) -> bool:
        """Whether ``v`` is a value computed from the offsets input (one row per offset)."""
        rows = self.__dict__.get("_offset_names")
        if not rows:
            return False
        if isinstance(v, Affine):
            v = v.x
        if isinstance(v, Pointwise):
            v = v.src
        return isinstance(v, Vec) and v.name in rows

    def call(self, node):
        if node.target is operator.getitem or not self.__dict__.get("_offset_names"):
            return super().call(node)
        args, kwargs = self.args(node)
        flat = [x for a in (*args, *kwargs.values())
                for x in (a if isinstance(a, (list, tuple)) else [a])]
        if not any(self.over_offsets(x) for x in flat):
            return super().call(node)
        op = op_name(node)
        # besides the offsets' values: params (weights, biases), numbers, the lookup's ids
        others = [x for x in flat if not self.over_offsets(x) and not isinstance(
            x, (PRef, int, float, bool, type(None))) and not (
            isinstance(x, Conc) and op in ("index", "embedding"))]
        if op not in _PER_OFFSET or others or op in ("mul", "div") and any(
                isinstance(x, PRef) for x in flat):
            what = ("mixed with another traced value" if others and op in _PER_OFFSET else
                    f"read by {op or node.target}")
            raise refuse(node, "values computed from the coordinates of a window's offsets "
                         f"(Swin V2's continuous position bias) {what}: the language computes "
                         "over the offsets with per-offset layers (linear layers, biases, "
                         "coordinatewise functions, numbers) and reads the result only at each "
                         "(query, key) pair's offset, added to attention logits (`at(g, win)`)",
                         help=_HELP)
        return super().call(node)

    def offsets_lookup(self, node, t, window: int):
        """``table[relative_position_index]`` of a table computed over the offsets, viewed
        [(2w-1)², heads]: Swin's bias (ops_windows.py) over that table."""
        shape = tuple(self._shape(node.args[0]))
        rows = (2 * window - 1) ** 2
        if len(shape) != 2 or shape[0] != rows:
            raise refuse(node, f"a table computed over a window's offsets, of shape "
                         f"{list(shape)}, read at Swin's offset ids: the lookup reads a table "
                         f"[(2w-1)², heads], here [{rows}, heads]", help=_HELP)
        vec = self.vec(t, node)
        if vec.tags[-1] != "F" or vec.dh is not None:
            raise refuse(node, "a table computed over a window's offsets read at Swin's offset "
                         "ids other than one row of heads per offset", help=_HELP)
        axes = ("qk", "H") if self._shape(node)[0] == window**4 else ("q", "k", "H")
        return WinTable(OffsetTable(vec, shape), window, node.name, axes)

    def after_lookup(self, node, b, op: str, args):
        """A coordinatewise function of Swin's bias over a computed table, or a number times it
        (``16 * sigmoid(bias)``): the same function of the table's rows, before the lookup; None
        for any other op (one after its mask is added, a function of the bias and the mask)."""
        t = b.ref
        numbers = [a for a in args if a is not b]
        if b.mask is not None or sum(a is b for a in args) != 1:
            return None
        slot = None
        if op in _AFTER_LOOKUP and not numbers:
            expr = f"{_AFTER_LOOKUP[op]}({t.vec.name})"
        elif op in ("mul", "div") and len(numbers) == 1 and isinstance(
                numbers[0], (int, float)) and not isinstance(numbers[0], bool) \
                and numbers[0] != 0 and (op == "mul" or args[0] is b):  # not c / bias
            c = 1 / numbers[0] if op == "div" else numbers[0]
            slot = self.coefficient(float(c), node, t.vec.name)  # as any number times a vector
            expr = f"{slot} * {t.vec.name}"
        else:
            return None
        index = len(self.out.slots) - 1
        name = self.emit_vector(node.name, expr)
        if slot is not None:
            self.out.coefs[index]["out"] = name
        return dataclasses.replace(b, ref=OffsetTable(dataclasses.replace(t.vec, name=name),
                                                      t.shape))

    def offsets_bias(self, table: OffsetTable, rel: str, node_name: str) -> str:
        """The program vector ``at(g, win)`` of a computed table read at win's offsets."""
        name = self.fresh(node_name)
        self.out.stmts.append(f"{name} = at({table.vec.name}, {rel})")
        self.out.vectors[name] = (node_name, "out")
        return name
