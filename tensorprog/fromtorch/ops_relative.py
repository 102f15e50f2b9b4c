"""Relative position biases in a traced model: recognised at their table's lookup and refused,
saying what to do.

T5 (and its descendants: mT5, LongT5, UMT5, Pop2Piano) add to each head's attention logits a
learned number per distance bucket of the (query, key) pair, ``relative_attention_bias(buckets)``
with ``buckets`` a [queries, keys] matrix of ids built from two ``arange``s. The language writes
it as ``R @ rel`` with ``input rel : relative[T, B]`` (docs/language.md; examples/t5.tp), but
the tracer does not yet carry the lookup's [keys, heads] layout into the attention's additive
mask (T5 hands the bias to ``scaled_dot_product_attention`` as ``attn_mask``). Rather than refuse
the lookup as ids of no known kind, it is recognised by its ids, T5's buckets at some count, and
refused by name with the way to write the model.
"""

from __future__ import annotations

import math

from .where import refuse

MAX_DISTANCE = 128  # T5's relative_attention_max_distance, the one the language builds


def t5_buckets(queries: int, keys: int, buckets: int, bidirectional: bool, torch):
    """T5's bucket of each (query, key) pair's distance (transformers'
    ``T5Attention._relative_position_bucket``), the emitted module's ``_relative_buckets``."""
    distance = torch.arange(keys)[None, :] - torch.arange(queries)[:, None]
    bucket = torch.zeros_like(distance)
    if bidirectional:
        buckets //= 2
        bucket += (distance > 0).long() * buckets
        distance = distance.abs()
    else:
        distance = -distance.clamp(max=0)
    exact = buckets // 2
    far = exact + (torch.log(distance.float() / exact) / math.log(MAX_DISTANCE / exact)
                   * (buckets - exact)).long()
    return bucket + torch.where(distance < exact, distance, far.clamp(max=buckets - 1))


def relative_kind(ids, rows: int) -> str | None:
    """``relative`` or ``causal_relative`` when ``ids`` (the concrete ids of a lookup in a table
    of ``rows`` rows, any leading axes of 1) are T5's buckets of a [queries, keys] grid; else
    None."""
    import torch  # the tracer's ids are torch tensors already

    grid = ids
    while grid.dim() > 2 and grid.shape[0] == 1:
        grid = grid[0]
    if grid.dim() != 2 or grid.dtype.is_floating_point or rows < 2:
        return None
    queries, keys = grid.shape
    for kind, bidirectional in (("relative", True), ("causal_relative", False)):
        if bidirectional and rows < 4:
            continue
        if torch.equal(grid.cpu(), t5_buckets(queries, keys, rows, bidirectional, torch)):
            return kind
    return None


def refuse_relative(node, kind: str, rows: int):
    """The TraceError for a relative position bias's lookup (raise it)."""
    causal = kind == "causal_relative"
    return refuse(
        node, f"a relative position bias (T5's: {rows} {'causal ' if causal else ''}distance "
        "buckets of every token pair, looked up in a [buckets, heads] table)",
        help="the tracer does not read relative position biases yet; write the model as a "
        f"Tensor Program: input rel : {kind}[T, {rows}], then tau * dot(q, k, dh) + R @ rel "
        "with R : [H, B] (examples/t5.tp is a T5 encoder-decoder; docs/language.md), and "
        "derive it with tensorprog derive")
