"""What only the two widths' traces together tell: a value the first width's walk wrote that
the language says at one size and not at another. A grouped convolution whose groups grow with
the width (or are depthwise at one width only), and a concatenation ``cat(a, b, D)`` with a
part that grows (the language joins finite parts only), a sum over a growing number of a
vector's parts (a mean over heads that grow); each refused at the user's line,
before the widths' sizes are named (a dim of 12 + n is neither finite nor proportional)."""

from __future__ import annotations

import re

from ..errors import TraceError
from .values import Trace
from .where import user_span


def refuse_growing_groups(t1: Trace, t2: Trace, widths, nodes=None) -> None:
    """Refuses, naming it, a grouped convolution whose groups differ between the widths: a
    fixed group width (RegNet's groups_width), its groups growing with the width, each output
    reading a finite number of channels, which the language's ``conv(..., g)`` (g fixed, each
    group's share of the channels ∝ n) does not say; or a fixed number of groups that is the
    channel count at one width (depthwise there, ``dwconv``) and not at the other. At the
    user's line of the convolution (``nodes``: the first width's graph nodes by name)."""
    grouped = re.compile(r"^\w+ = conv\((\w+), [^()]*, (\d+)\)")
    depthwise = re.compile(r"^\w+ = dwconv\((\w+), ")
    for a, b in zip(t1.stmts, t2.stmts, strict=False):
        m1, m2 = (grouped.match(x) if x.count(",") == 8 else None for x in (a, b))
        d1, d2 = (depthwise.match(x) for x in (a, b))
        if a == b or not (m1 or m2):
            continue
        g1, g2 = (int(m[2]) if m else 1 for m in (m1, m2))
        dw = "depthwise (a group per channel)"
        first = dw if d1 else "in one group" if g1 == 1 else f"in {g1} groups"
        # "in 2 groups at width 16 and 4 at 32"; after "depthwise", the second said in full
        second = dw if d2 else ("in one group" if g2 == 1 else f"in {g2} groups") if d1 else (
            "one" if g2 == 1 else str(g2))
        said = [first, second]
        param = (m1 or m2)[1]
        use = t1.params.get(param) or t2.params.get(param)
        grow = "its groups grow with the width, each of a fixed number of channels" if not (
            d1 or d2) else "a fixed number of groups, depthwise at one width only"
        raise TraceError(
            f"a convolution {said[0]} at width {widths[0]} and {said[1]} at {widths[1]}"
            f"{f' ({use.module})' if use else ''}: {grow}, which the language's grouped "
            "convolution (a fixed number of groups, each of channels ∝ n) and its depthwise "
            "one (a group per channel at every width) do not say",
            user_span(nodes[use.node]) if use and nodes and use.node in nodes else None,
            help="build the model with a fixed number of groups (their width growing with "
            "the model's: RegNet's groups_width ∝ width), groups equal to the channels at "
            "every width (depthwise), or groups=1",
        )


def refuse_growing_cats(t1, t2, nodes=None) -> None:
    """Refuses, at its line, a concatenation traced as ``cat(a, b, D)`` (in traces ``t1`` and
    ``t2`` of the two widths) with a part that grows with the width beside one that does not:
    the language joins parts all finite or all growing. ``nodes``: the first width's graph
    nodes by name, for the user's line."""
    for name, (slot, node, readers, per_sequence, parts) in t1.cats.items():
        other = t2.cats.get(name)
        grows = [a != b for a, b in zip(parts, other[4], strict=True)] if other and len(
            other[4]) == len(parts) else [t1.slots[slot] != t2.slots[slot]]
        if not any(grows) or all(grows):
            continue
        # a norm's statistics span every part: it is no function of each part alone
        norm = " (its statistics span every part)" if "norm" in readers else ""
        what, example = ("vectors per sequence", " (DINOv2's head, cat([h[:, 0], h[:, "
                         "1:].mean(1)], -1))") if per_sequence else ("vectors", "")
        raise TraceError(
            f"cannot trace a concatenation of {what} along their features read by "
            f"{readers or 'nothing'}{norm}, with a part that grows with the width beside one "
            "that does not: the language joins parts all finite or all growing (cat(a, b, D)), "
            "and a concatenation of such parts only as the input of linear layers"
            f"{example}, the sum W[:, :m] @ a + W[:, m:] @ b of their column blocks",
            user_span(nodes[node]) if nodes and node in nodes else None,
            help="feed the concatenation straight to linear layers, or apply what reads it to "
            "each part")


def refuse_growing_part_sums(t1: Trace, t2: Trace, widths, nodes=None) -> None:
    """Refuses, naming it, a sum (or mean) over the k parts of a vector viewed as (..., k, d)
    whose k differs between the widths (a mean over heads of a fixed dim, n/d of them): the
    language's ``part(x, d, i)`` takes parts of a fixed number k, so the sum is of k terms."""
    for name, (node, k1) in t1.part_sums.items():
        k2 = t2.part_sums.get(name, (node, k1))[1]
        if k1 == k2:
            continue
        raise TraceError(
            f"a sum or mean over {k1} parts of a vector at width {widths[0]} and {k2} at "
            f"{widths[1]} (an axis of a (..., k, d) view that grows with the width, heads of a "
            "fixed dim): the language sums a fixed number of a vector's parts, part(x, d, i)",
            user_span(nodes[node]) if nodes and node in nodes else None,
            help="average over an axis of a fixed size (m streams of n features each), or "
            "over the heads' coordinates within each head",
        )


def refuse_growing_part_counts(t1: Trace, t2: Trace, widths, nodes=None) -> None:
    """Refuses, at its line, a concatenation of k1 parts at the first width and k2 at the
    second: copies of a vector whose number grows (``x.repeat(1, 1, n // 8)``; the weighted
    copies of ``(x.unsqueeze(-1) * w.unsqueeze(-2)).flatten(-2)``, the streams' layout read
    the other way round, n copies of w): the language's ``cat`` joins a fixed number of parts,
    and the traces, one statement longer per part, would only say that the graphs differ."""
    for name, (_, node, _, _, parts) in t1.cats.items():
        other = t2.cats.get(name)
        if other is None or len(other[4]) == len(parts):
            continue
        raise TraceError(
            f"a concatenation (or repeat) of {len(parts)} parts at width {widths[0]} and "
            f"{len(other[4])} at {widths[1]}: the number of copies grows with the width, and "
            "the language's cat(a, b, ..., D) joins a fixed number of parts",
            user_span(nodes[node]) if nodes and node in nodes else None,
            help="repeat a vector a fixed number of times (m streams: x.repeat(1, 1, m)), and "
            "weight m copies of a block's output as x.unsqueeze(-2) * w.unsqueeze(-1), w of m "
            "entries",
        )
