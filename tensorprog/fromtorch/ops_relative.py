"""Relative position biases in a traced model: T5's, read into the language's ``R @ rel``.

T5 (and its descendants: mT5, LongT5, UMT5, Pop2Piano) add to each head's attention logits a
learned number per distance bucket of the (query, key) pair, ``relative_attention_bias(buckets)``
with ``buckets`` a [queries, keys] matrix of ids built from two ``arange``s. The language writes
it as ``R @ rel`` with ``input rel : relative[T, B]`` (``causal_relative`` for a decoder's,
which buckets only earlier keys) and ``R : [H, B]`` (docs/language.md; examples/t5.tp): a
lookup of one bucket, whose init and LR derive as an embedding's. The trace recognises the
lookup by its ids, not by a name: they are a constant of the trace (a function of the positions
only), and they must equal T5's buckets of a [queries, keys] grid, both ways or causal, at the
table's bucket count (:func:`relative_kind`). The lookup is then carried (:class:`RelBias`)
through the permute to [heads, queries, keys], the added batch axis and HF's masks (a mask that
keeps every key, or the causal one: ``where(mask, bias, min)``) to the logits it is added to
(``scores + bias`` or sdpa's ``attn_mask``), where it becomes ``attn * dot(q, k, dh) + b`` with
``b = R @ rel``. Used any other way it is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

from ..emit.templates import HELPERS
from .inplace import in_place
from .values import Conc, Given, OffsetTable, PRef, RelBias, Scores
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


def grid_stride(ids, rows: int) -> int | None:
    """The stride s when ``ids`` [queries, keys] (the constant ids of a lookup in a table of
    ``rows`` offsets) are LeViT's offset of every (query, key) pair, the keys an r x r grid of
    tokens (r² = ``rows``), the queries that grid subsampled by s (1: the keys themselves;
    LeViT's subsampling attention: 2): the emitted module's own ``_grid_offsets`` run here, so
    that the trace accepts exactly what the module builds; else None."""
    import torch

    side = math.isqrt(rows)
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.shape[1] != rows or \
            side * side != rows:
        return None
    for stride in range(1, side + 1):
        out = (side - 1) // stride + 1
        if ids.shape[0] == out * out and torch.equal(
                ids.cpu(), _emitted_grid()(out * out, rows, rows, stride, None)):
            return stride
    return None


@functools.cache
def _emitted_grid():
    import torch

    space = {"torch": torch, "math": math}
    exec("\n".join(HELPERS["_grid_offsets"]), space)  # noqa: S102 - the emitted helper
    return space["_grid_offsets"]


_HELP = ("add the bias to attention logits as T5 does (scores + bias, or sdpa's attn_mask), or "
         "write the model as a Tensor Program: input rel : relative[T, B], then "
         "tau * dot(q, k, dh) + R @ rel with R : [H, B] (examples/t5.tp; docs/language.md)")
_GRID_HELP = ("read the whole table [heads, offsets] at LeViT's attention_bias_idxs and add it to "
              "the attention logits, or write the model as a Tensor Program: input g : "
              "grid_offsets[T, B], then tau * dot(q, k, dh) + R @ g with R : [H, B] "
              "(examples/levit.tp; docs/language.md)")
# ops that carry the bias unchanged
_CARRIERS = {"contiguous", "clone", "alias", "to", "_to_copy", "type_as", "dropout"}


def relaid(b, op: str, args):
    """A bias value (``axes`` naming its layout) whose axes a permute or an unsqueeze of it
    moves, laid out anew; None for any other op. T5's bias and LongT5's blocked one alike."""
    if op == "permute" and args[0] is b:
        return dataclasses.replace(b, axes=tuple(b.axes[d] for d in args[1]))
    if op == "unsqueeze" and args[0] is b:
        axes = list(b.axes)
        axes.insert(args[1] % (len(axes) + 1), "1")
        return dataclasses.replace(b, axes=tuple(axes))
    return None

class RelativeOps:
    """A relative position bias from its lookup to the logits it is added to (the module)."""

    def relative_lookup(self, node, w: PRef, kind: str, ids) -> RelBias:
        """``table(buckets)`` with T5's buckets of a [queries, keys] grid: the bias, axes
        (q, k, H), its input one of buckets over the queries' sequence (sequences.py)."""
        if w.t or w.rows or w.offset or len(w.shape) != 2:
            raise refuse(node, "a relative position bias read from part of a table", help=_HELP)
        grid = tuple(int(s) for s in ids.shape[-2:])
        rel = self.sequence_input("_rel", kind, grid[0], w.shape[0])
        axes = ("1",) * (ids.dim() - 2) + ("q", "k", "H")
        return RelBias(w, rel, node.name, axes, grid)

    def grid_lookup(self, node, w: PRef, ids, stride: int) -> RelBias:
        """``table[:, ids]`` with LeViT's ids, each (query, key) pair's offset on a grid of
        r x r tokens: the table [heads, offsets] read at each pair, (H, q, k), its input the
        ``grid_offsets`` of the queries' sequence. As T5's bias, ``R @ g`` with ``R`` the table
        as it is ([heads, offsets]: a lookup whose fan-in is the offsets)."""
        if w.t or w.rows or w.offset or len(w.shape) != 2:
            raise refuse(node, "a position bias on a grid read from part of a table",
                         help=_GRID_HELP)
        grid = (int(ids.shape[0]), int(ids.shape[1]))
        # a subsampled grid's queries pair with the keys of another sequence: the input's
        # rows say the offsets, the stride and the keys' count (sequences.py)
        rows = w.shape[1] if stride == 1 else (w.shape[1], stride, grid[1])
        rel = self.sequence_input("_rel", "grid_offsets", grid[0], rows)
        return RelBias(dataclasses.replace(w, t=True), rel, node.name, ("H", "q", "k"), grid)

    def call(self, node):
        if node.target is not operator.getitem:
            args, kwargs = self.args(node)
            flat = [x for a in (*args, *kwargs.values())
                    for x in (a if isinstance(a, (list, tuple)) else [a])]
            bias = next((x for x in flat if isinstance(x, RelBias)), None)
            if bias is not None:
                return self._relative(node, bias, args, kwargs)
        return super().call(node)

    def op_gather(self, node, v, dim, index, *rest, **kwargs):
        refuse_gathered_bias(node, v, dim, index)

    def _relative(self, node, b: RelBias, args, kwargs):
        op = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        shape = tuple(node.meta["val"].shape) if hasattr(node.meta.get("val"), "shape") else ()
        if op == "scaled_dot_product_attention":  # the bias as sdpa's additive mask
            return self.op_scaled_dot_product_attention(node, *args, **kwargs)
        if op in _CARRIERS and args[0] is b:
            return b
        moved = relaid(b, op, args)
        if moved is not None:
            return moved
        if op in ("expand", "slice") and args[0] is b and len(shape) == len(b.axes):
            old = tuple(node.args[0].meta["val"].shape)
            # the bias expanded over the batch (an added axis), or sliced whole (HF's crop)
            if all(o == s or a == "1" and op == "expand" for o, s, a in zip(
                    old, shape, b.axes, strict=True)):
                return dataclasses.replace(b, axes=tuple(
                    "tok" if a == "1" and s != 1 else a for a, s in zip(b.axes, shape,
                                                                          strict=True)))
        if op == "where" and len(args) == 3 and args[1] is b and isinstance(args[0], Conc) \
                and isinstance(args[2], (int, float)) and args[2] <= -1e4:
            return self._bias_masked(node, b, args[0].value, shape)  # HF's sdpa mask
        if op == "add_" and len(args) == 2 and isinstance(args[0], Scores):
            # scores += bias (MPNet's): the add, where nothing else reads the scores before it
            # (the walker's check of an in-place op, which refuses otherwise)
            in_place(self, node, op)
            op = "add"
        if op == "add" and len(args) == 2:
            other = args[1] if args[0] is b else args[0]
            if isinstance(other, Scores):  # scores + bias: eager attention
                return self.with_bias(node, other, b)
            if isinstance(other, Conc):  # bias + an additive mask (0 or -inf)
                import torch

                keep = torch.as_tensor(other.value) > -1e4
                return self._bias_masked(node, b, keep, shape)
        what = (f"LeViT's: a [heads, offsets] table read at each token pair's offset on a "
                f"grid of {b.table.shape[1]} tokens" if b.table.t else
                f"T5's: {b.table.shape[0]} distance buckets of every token pair, looked up in a "
                "[buckets, heads] table")
        raise refuse(node, f"a relative position bias ({what}) used other than added to "
                     f"attention logits (by {op or node.target})",
                     help=_GRID_HELP if b.table.t else _HELP)

    def _bias_masked(self, node, b: RelBias, keep, shape) -> RelBias:
        """The bias under a mask of the keys kept: every key (nothing changes) or the causal
        mask (the attention it meets becomes causal); any other (padding) is refused."""
        import torch

        q, k = b.grid
        keep = torch.as_tensor(keep).to(torch.bool).expand(shape).reshape(-1, q, k)
        first = keep[0]
        causal = torch.ones(q, k, dtype=torch.bool).tril()
        if bool((keep == first).all()) and bool(first.all()):
            return b
        if bool((keep == first).all()) and q == k and bool((first == causal).all()):
            return dataclasses.replace(b, causal=True)
        raise refuse(node, "a relative position bias under an attention mask that is neither "
                     "the causal mask nor one that keeps every key (a padding mask hides keys "
                     "per example, which the language's attention over all tokens cannot say)",
                     help="trace with example inputs without padding: no attention_mask, or "
                     "one of all ones; the µP derived holds for padded batches too")

    def with_bias(self, node, s: Scores, b: RelBias) -> Scores:
        """Logits ``s`` plus the bias: ``b = R @ rel`` emitted (once per lookup), its heads and
        grid checked against the logits', and the logits made causal if a causal mask came
        with it."""
        lead = b.axes[:-3]
        heads = s.q.dim // s.q.dh if s.q.dh else None
        # T5's table is [buckets, heads]; LeViT's [heads, offsets] is read transposed (t)
        if b.axes[-3:] != ("H", "q", "k") or any(a not in ("1", "tok") for a in lead) or (
                heads != b.table.shape[0 if b.table.t else 1]) or s.bias is not None:
            raise refuse(node, "a relative position bias added to attention logits other than "
                         "one number per head and (query, key) pair, [batch, heads, queries, "
                         "keys], once", help=_GRID_HELP if b.table.t else _HELP)
        made = self.__dict__.setdefault("_biases", {})  # lookup node -> its program vector
        if b.node not in made and isinstance(b.table, OffsetTable):  # at(g, win): ops_offsets
            made[b.node] = self.offsets_bias(b.table, b.rel, b.node)
        if b.node not in made:
            table, _ = self.param(b.table, self.by_name[b.node], lookup=True)
            name = self.fresh(b.node)
            self.out.stmts.append(f"{name} = {table} @ {b.rel}")
            self.out.vectors[name] = (b.node, "out")
            self.out.producers[name] = (table, None)
            made[b.node] = name
        return dataclasses.replace(s, bias=made[b.node], causal=s.causal or b.causal)


def refuse_gathered_bias(node, v, dim, index):
    """``rel_logits.gather(-1, distance)`` (Inkling's relative logits): each query token's own
    numbers per distance, ``r_proj(h_i) @ P`` (a finite vector per token and head), read at
    each key's distance i - j. The language's relative bias is ``R @ rel``, a learnt number per
    head and distance bucket, the same for every token; a bias that the query's hidden state
    sets has no form in it (it would be a dot of a per-token vector with the pair's one-hot
    distance). Any other gather of a traced value by an index is refused as the op it is."""
    import torch

    ids = getattr(index, "value", None)
    if not isinstance(index, Conc) or ids is None or ids.dim() < 2 or isinstance(v, Conc):
        raise refuse(node, "the op gather")
    grid = ids.reshape(-1, *ids.shape[-2:])[0]
    q, k = grid.shape
    top = int(grid.max())
    distance = (torch.arange(q)[:, None] - torch.arange(k)[None, :]).clamp(0, top)
    if dim % ids.dim() != ids.dim() - 1 or not torch.equal(grid.cpu(), distance):
        raise refuse(node, "the op gather")
    extent = tuple(node.args[0].meta["val"].shape)[-1]  # the numbers per distance
    raise refuse(
        node,
        "a relative position bias gathered at each (query, key) pair's distance from numbers "
        f"per distance that a traced value gives each query token ({extent} distances; "
        "Inkling's rel_logits = r_proj(h) @ proj): the language's relative bias, R @ rel, is "
        "a learnt number per head and distance, the same for every token, and has no form for "
        "one the query's hidden state sets",
        help="use a learnt bias per head and distance (T5's relative_attention_bias, traced as "
        "R @ rel), or drop the relative logits (a rotary embedding), or write the model as a "
        "program",
    )


def refuse_grid_ids(node, w: PRef, ids):
    """``table[:, ids]`` of a param [heads, offsets] at ids other than LeViT's: ids the network
    computes (a traced value), ids that differ per example (a leading batch axis), or constant
    ids of another layout. Each would be a bias the language's ``R @ g`` does not build."""
    value = getattr(ids, "value", None) if isinstance(ids, Conc) else None
    given = getattr(ids, "input", "") or getattr(ids, "given", "")
    probe = getattr(ids, "probe", None)
    if value is not None and (given or probe is not None and not (
            probe.shape == value.shape and bool((probe == value).all()))):
        what = (f"ids given to the forward or computed from its input {given}" if given else
                "ids computed from the token ids")
        what += ", whose example values the trace sees, not constants of the grid"
    elif value is None:
        what = "ids the network computes (a traced value), not constants of the grid"
    elif value.dim() != 2:
        what = (f"constant ids of shape {list(value.shape)}, not one id per (query, key) pair "
                "[tokens, tokens] shared by every example")
    else:
        what = (f"constant ids {list(value.shape)} other than LeViT's offsets, |dy|·r + |dx| "
                f"of each pair of an r x r grid of tokens, in a table of {w.shape[-1]} offsets")
    return refuse(node, f"a param table {list(w.shape)} read column-wise at {what}: the "
                  "language's position bias on a grid is one learnt number per head and "
                  "(|dy|, |dx|) offset of a square grid of tokens, the same for every example",
                  help=_GRID_HELP)


def built_ids(ids) -> bool:
    """Whether a lookup's ids are constants the model builds itself (T5's buckets, Swin's and
    LeViT's offsets, from positions): not given to the forward (a Given, or computed from one)
    nor varying with the token ids (the probe's differ). The emitted module builds such ids
    itself, so ids fed at each call, seen by the trace at the example's values alone, would be
    dropped there."""
    import torch

    if not isinstance(ids, Conc) or isinstance(ids, Given) or ids.given:
        return False
    probe = ids.probe
    return probe is None or (isinstance(probe, torch.Tensor) and probe.shape == ids.value.shape
                             and torch.equal(probe, ids.value))


def refuse_fed_ids(node, ids, pattern: str, help: str = ""):
    """A lookup of ids given to the forward (or computed from its inputs) whose example values
    are ``pattern`` (T5's buckets, Swin's window offsets): the emitted module builds those ids
    itself and would read the pattern whatever ids the forward is fed."""
    given = getattr(ids, "input", "") or getattr(ids, "given", "")
    what = (f"ids given to the forward or computed from its input {given}" if given else
            "ids computed from the token ids")
    return refuse(node, f"a lookup of {what}, whose example values are {pattern}: the "
                  "program builds those ids itself from the positions and would drop the "
                  "ids fed at each call",
                  help=help or "compute the ids inside the model from the positions (as "
                  "T5's _relative_position_bucket and Swin's relative_position_index do), not "
                  "as an input of the forward")
