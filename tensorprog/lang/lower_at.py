"""Lowering ``at(g, win)``: a value g over a window's offsets read at each (query, key) token
pair's offset in the windows ``win``, plus win's shifted mask: a per-pair attention bias that is
a function of params over constant offsets (Swin V2's continuous position bias).

Swin V2 computes its bias table by a small MLP of each offset's log-spaced coordinates,
``16 * sigmoid(W2 @ relu(W1 @ c + b1))`` with ``input c : offsets[B, E]``: one row per offset,
per-offset layers as per-token ones are. ``at`` reads that table's row at each pair's offset, as
``R @ win`` reads a param table's column: g must run over win's offset dim B (the sequences'
check, ``tensorprog.ir.sequences``, reported at the call). The result is one value per head and
token pair, added to attention logits as ``R @ win`` is; anything computed after the read
(sigmoid, a scale) is written before it, on g, where it computes the same numbers.
"""

from __future__ import annotations

import math

from ..ir.functions import AT
from ..ir.program import Input, Nonlin
from .ast import Call

_USAGE = ("write at(g, win): g computed from `input c : offsets[B, E]` by per-offset layers "
          "(e.g. 16 * sigmoid(W2 @ relu(W1 @ c + b1))), win an input `windows[T, B, H, W, s]` "
          "of the same offsets B")


def at_operands(low, node: Call):
    """(the operands to lower, the state): g, and the windows input's name."""
    if len(node.args) != 2:
        low.errors.error(f"at takes 2 arguments, got {len(node.args)}", node.span, _USAGE)
        return None, None
    win = node.args[1]
    found = next((i for i in low.inputs if type(win).__name__ == "Var" and i.name == win.name),
                 None)
    if found is None or found.kind != "windows":
        low.errors.error("the second argument of at must be a windows input", win.span, _USAGE)
        return None, None
    return node.args[:1], (AT, found)


def lower_at(low, node: Call, args: list, win, vec: type):
    """The Nonlin ``at`` of a call, or None (errors reported)."""
    (g,) = args
    if g is None:
        return None
    if not isinstance(g, vec) or g.dim is None or g.dim not in low.dims \
            or g.dim in low.heads_dims:
        low.errors.error("at reads a vector of a declared dim (one entry per head) at each "
                         "pair's offset", node.args[0].span, _USAGE)
        return None
    arg = low.name_of(g, node.span)
    out = low.emit(Nonlin(low.fresh(low.target), AT, (arg, win.name), node.span), g.dim)
    return low.relative_bias(out, g.dim)


def offsets_input(low, st) -> None:
    """``input c : offsets[B, E]``: the E = 2 log-spaced coordinates (dy's, dx's) of each of
    the B = (2w-1)² offsets of a window of w x w tokens (Swin V2's relative_coords_table):
    one row per offset, a sequence of its own that per-offset layers keep and ``at(g,
    win)`` reads at each token pair's offset."""
    _, *toks = st.value
    dims = [low.dim_ref(t, low.tok_span(t)) for t in toks]
    if any(d is None for d in dims):
        return
    offsets, coords = dims
    side = math.isqrt(offsets.size) if not offsets.infinite else 0
    if offsets.infinite or side * side != offsets.size or side % 2 == 0 or side < 3:
        low.errors.error(f"offsets {st.name}: the offset dim {offsets.name} is not (2w-1)² "
                         "for a window of w x w tokens, w ≥ 2", st.span,
                         "e.g. `dim B = 49` for windows of 4 x 4")
        return
    if coords.infinite or coords.size != 2:
        low.errors.error(f"offsets {st.name}: an offset has 2 coordinates (dy's and dx's), "
                         f"not {coords.name}", st.span,
                         "declare `dim E = 2`, then `input c : offsets[B, E]`")
        return
    if low.define(st.name, st.name_span):
        low.inputs.append(Input(st.name, coords.name, st.span, "offsets", offsets.name))
        low.tokenwise.add(st.name)
        low.values[st.name] = coords.name
