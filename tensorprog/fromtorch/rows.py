"""Row blocks of one fused torch tensor (a split of a linear layer's output features) whose share
of the rows changes with the width: a block of a fixed number of rows beside one that grows
(multi-query attention's one key and one value head of a fixed dim beside the query's n rows:
Falcon's ``query_key_value``, GPT-BigCode's ``c_attn``; MLA's rotary key rows beside the
compressed kv in ``kv_a_proj_with_mqa``).

A block's rows are traced at two widths as numbers. Each part of the split is of a constant
size or of one that grows in proportion to the width, and so is the sum of them, the tensor's
out size S: each bound is then exactly f·S + c, which the two widths determine (the column
blocks of a concatenation are merged alike: columns.py). A block that is the same share of the
rows at both widths has c = 0 and keeps ``rows`` = its share (f) alone, as before; the others
get ``row_consts`` = (c_lo, c_hi). Each block is a param of its own, derived from its own dims,
so apply rescales each block's rows to its own std; one torch tensor still has one LR and one
Adam eps, which columns.check_shared_lr requires the blocks to share."""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

from ..errors import TraceError, UsageError
from .values import ParamUse
from .where import strip_prefix


def merge_rows(name: str, u1: ParamUse, u2: ParamUse, widths) -> ParamUse:
    """``u1`` with its rows as bounds f·S + c of the tensor's out size S, from the two widths'
    numbers (``u2``: the second width's use), where its share of the rows differs between them.
    A block of every head's rows (a fused qkv laid out per head: MLA's q_b, each head's query
    without rotary beside its rotary part of a fixed dim) is so within each head's rows, of a
    head count that must then be the same at both widths."""
    w1, w2 = widths
    n1, n2 = u1.row_numbers, u2.row_numbers
    if (u1.groups is not None and u1.groups != u2.groups) or n1 is None or n2 is None \
            or n1[2] == n2[2]:
        raise TraceError(
            f"{name} is rows {u1.rows[0]}..{u1.rows[1]} of "
            + ("each head's rows of " if u1.groups is not None else "")
            + f"{strip_prefix(u1.target)} at width {w1} and {u2.rows[0]}..{u2.rows[1]} at {w2}"
            + (f", over {u1.groups} heads and {u2.groups}" if u1.groups is not None else "")
            + ": a block of a fused layer that is neither the same share of its rows at every "
            "width nor a fixed number of rows beside blocks that grow, within a fixed number of "
            "heads",
            u1.span,
            help="split the fused layer into blocks each of a fixed share of its rows or of a "
            "fixed size, over a fixed head count, or use separate layers",
        )
    (lo1, hi1, s1), (lo2, hi2, s2) = n1, n2
    bounds = []
    for a, b in ((lo1, lo2), (hi1, hi2)):
        f = Fraction(b - a, s2 - s1)
        bounds.append((f, a - f * s1))
    (f_lo, c_lo), (f_hi, c_hi) = bounds
    return dataclasses.replace(u1, rows=(f_lo, f_hi), row_consts=(c_lo, c_hi))


def row_range(rows, consts, size: int) -> tuple[int, int]:
    """The rows lo..hi of a block of ``size`` rows (of a tensor's out axis, or of one group of
    it): ``rows`` the bounds' shares of ``size``, ``consts`` None or the rows added to each."""
    c_lo, c_hi = consts or (0, 0)
    lo, hi = rows[0] * size + c_lo, rows[1] * size + c_hi
    if Fraction(lo).denominator != 1 or Fraction(hi).denominator != 1 or not 0 <= lo <= hi <= size:
        raise UsageError(
            f"a tensor of {size} rows has no block {float(lo):g}..{float(hi):g} as the traced "
            "fused layer's blocks would have",
            help="pass a model built by the traced build(width)",
        )
    return int(lo), int(hi)


_PART = re.compile(r"\b\w*_part\d+\w*\b")
# the part number alone: the rest of a block's name is its layer's (walk.py), which must match
_NUMBER = re.compile(r"(?<=_part)\d+")


def renumber_slices(t1, t2) -> None:
    """Name the second width's row blocks as the first's where the two programs differ only in
    the blocks' part numbers. A slice of a fused layer's rows (``y[..., n:n + 13]``) is named
    by its place, lo / its size (walk.py), which moves with the width when a block of a fixed
    size follows one that grows (a split names each block by its order instead); the programs
    being otherwise the same, each block of one is the block of the other at its place. Only
    the number is renamed: a block of one layer is never taken for another layer's."""
    lines1, lines2 = t1.decls + t1.stmts, t2.decls + t2.stmts
    if lines1 == lines2 or len(lines1) != len(lines2) or any(
            _NUMBER.sub("", a) != _NUMBER.sub("", b)
            for a, b in zip(lines1, lines2, strict=True)):
        return
    names: dict[str, str] = {}
    for a, b in zip(lines1, lines2, strict=True):
        for x, y in zip(_PART.findall(a), _PART.findall(b), strict=False):
            if names.setdefault(y, x) != x:
                return  # not one renaming: the graphs differ, as _combine then says
    if len(set(names.values())) != len(names):
        return
    t2.decls, t2.stmts = list(t1.decls), list(t1.stmts)
    t2.params = {names.get(k, k): u for k, u in t2.params.items()}
