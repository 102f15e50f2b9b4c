"""Codebooks: token ids of several streams given as one tensor (MusicGen's audio codes, K
codebooks of a sequence as K rows of the ids, (batch x K, T)), which the forward views as
(batch, K, T) and takes apart, each codebook read by an embedding of its own and the lookups
summed into one vector per token.

Each codebook is a token input of the program of its own (as segment ids given apart are,
ops_encoder.py), ``input codebook0 : tokens[T, V_codebook0]``, over the token ids' sequence, so
each table derives as the token embedding does (an input weight of finite fan-in). What a lookup
reads is known exactly: the graph from the token ids to the lookup's ids is replayed on ids that
are all different (every entry its own position), and it must consist of views and slices alone
and give rows b·K + k of the ids, for every b, for one fixed k. Ids of one codebook computed from
another's, a delay pattern built inside the forward, anything arithmetic on the ids, is no slice
and is refused at its lookup (ops_linear.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import Affine, Pointwise, Vec
from .where import op_name, refuse


@dataclass
class Stacked:
    """``torch.stack(parts, dim=1)`` of per-token vectors (B, T, V) each, (B, K, T, V): the K
    readouts of a model of K codebooks (MusicGen's lm_heads), ``flat`` once viewed (B·K, T, V)
    (row b·K + k part k of example b). Only the model's output reads it."""

    parts: list
    flat: bool = False


# ops that move or copy entries of the ids, never compute new ones
_INDEX_OPS = {"view", "reshape", "_unsafe_view", "unflatten", "flatten", "select", "slice",
              "unsqueeze", "squeeze", "clone", "contiguous", "alias", "lift_fresh_copy",
              "transpose", "permute", "t", "unbind", "split", "split_with_sizes", "chunk",
              "getitem"}


def _replay(node, start, ids):
    """The value of ``node`` with ``ids`` in place of the placeholder ``start``, through the
    index ops of ``_INDEX_OPS`` alone; None where anything else is on the way."""
    import torch.fx as fx

    if node is start:
        return ids
    if node.op != "call_function" or op_name(node) not in _INDEX_OPS:
        return None

    def arg(a):
        if isinstance(a, fx.Node):
            return _replay(a, start, ids)
        if isinstance(a, (list, tuple)):
            if any(isinstance(x, fx.Node) for x in a):
                return None
            return a
        return a

    args = [arg(a) for a in node.args]
    if any(a is None and b is not None for a, b in zip(args, node.args, strict=True)):
        return None
    if any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        return None
    try:
        return node.target(*args, **node.kwargs)
    except Exception:  # noqa: BLE001 - no slice we can read
        return None


class CodebookOps:
    def call(self, node):
        """A stack of readouts (:class:`Stacked`) is read by one view, (B, K, T, V) to
        (B·K, T, V), and the model's output alone."""
        import torch.fx as fx

        stacked = next((self.env.get(a.name) for a in node.all_input_nodes
                        if isinstance(self.env.get(a.name), Stacked)), None)
        if stacked is None:
            return super().call(node)
        shape = tuple(node.meta["val"].shape)
        old = self._shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if op_name(node) in ("view", "reshape", "_unsafe_view", "flatten") and not stacked.flat \
                and old is not None and shape == (old[0] * old[1], *old[2:]):
            return Stacked(stacked.parts, flat=True)
        raise refuse(node, f"the op {op_name(node)} on {len(stacked.parts)} readouts stacked "
                     "(torch.stack(..., dim=1)): the program reads them as outputs of their "
                     "own, stacked (and viewed (B·K, T, V)) as the model's output alone",
                     help="return the stack as the model's output (or its view (B·K, T, V)), "
                     "and compute any loss outside the forward")

    def op_stack(self, node, tensors, dim=0):
        """``torch.stack(readouts, dim=1)`` of per-token vectors (B, T, V) each: a
        :class:`Stacked`, each part an output of the program (MusicGen's K lm_heads)."""
        if len(tensors) < 2 or dim % 4 != 1 or not all(
                isinstance(t, (Vec, Affine, Pointwise)) for t in tensors):
            return super().op_stack(node, tensors, dim)
        parts = [self.vec(t, node) for t in tensors]
        if not all(p.tags == ("tok", "tok", "F") and p.dh is None for p in parts):
            return super().op_stack(node, tensors, dim)
        return Stacked(parts)

    def stacked_output(self, node, value: Stacked) -> None:
        """The model's output a stack of readouts: each part one output of the program, in
        order; with codebooks read, the stack's K must be theirs (row b·K + k of the output is
        codebook k's, as the ids' rows are)."""
        count = len(value.parts)
        books = {c for c, _ in self.out.codebooks.values()}
        if self.out.stacked is not None or books - {count}:
            raise refuse(node, f"an output of {count} readouts stacked in a model that "
                         + ("returns another stack" if self.out.stacked is not None else
                            f"reads {min(books)} codebooks of its ids"),
                         help="stack one readout per codebook, once, as the model's output")
        self.out.stacked = (count, value.flat)
        for p in value.parts:
            if p.name not in self.out.outputs:
                self.out.outputs.append(p.name)
    def codebook_of(self, node) -> tuple[int, int] | None:
        """(K, k) where the lookup ``node`` reads codebook k of K: the ids' rows b·K + k for
        every b (the token ids, (B·K, T), viewed as (B, K, T), ``[:, k]``); else None."""
        import torch

        from .values import Tok

        ids_node = node.args[1] if len(node.args) > 1 else None
        starts = [n for n in node.graph.nodes if n.op == "placeholder"
                  and isinstance(self.env.get(n.name), Tok)]
        if ids_node is None or len(starts) != 1 or self.tok_value is None \
                or self.tok_value.dim() != 2 or self.env[starts[0].name].tags != ("tok", "tok"):
            return None
        rows, seq = self.tok_value.shape
        unique = torch.arange(rows * seq).reshape(rows, seq)
        made = _replay(ids_node, starts[0], unique)
        if not isinstance(made, torch.Tensor) or made.dim() != 2 or made.shape[1] != seq \
                or made.shape[0] in (0, rows) or rows % made.shape[0]:
            return None
        batch = made.shape[0]
        count = rows // batch
        laid = unique.reshape(batch, count, seq)
        book = next(((count, k) for k in range(count) if torch.equal(made, laid[:, k])), None)
        if book is not None and batch < 2:
            # one example: row k of K rows is as well ids[k:k + 1], one row of any batch
            raise refuse(node, f"an embedding lookup of row {book[1]} of the token ids, traced "
                         "on one example: a codebook of it (rows b·K + k) or that row of "
                         "every batch, which one example cannot tell apart",
                         help="trace the model on two examples or more (token ids of 2·K "
                         "rows for K codebooks)")
        return book

    def codebook_lookup(self, node, w, book: tuple[int, int]) -> Vec:
        """The lookup of codebook k of K (``book``): its table read at a token input of its own,
        ``codebook{k}``, over the token ids' sequence (sequences.py)."""
        count, k = book
        other = {c for c, _ in self.out.codebooks.values()} - {count}
        if other or self.tokens_vocab is not None or w.t or w.rows or w.offset:
            also = f", or as {min(other)} codebooks" if other else ""
            raise refuse(node, "an embedding lookup of one codebook of the token ids (their "
                         f"rows b·{count} + {k}) in a model that also reads the ids otherwise "
                         f"(as a whole{also}, or a table that is not a plain param): the "
                         "program's token inputs are then of two batches",
                         help="read every codebook by a lookup of its own rows, (B·K, T) viewed "
                         "(B, K, T) and [:, k], and the ids in no other way")
        name = next((n for n, b in self.out.codebooks.items() if b == book), None)
        if name is None:
            name = self.fresh(f"codebook{k}")
            self.out.codebooks[name] = book
        table, _ = self.param(w, node, lookup=True)
        self.out.ids[name] = w.shape[0]
        self.out.seq_inputs[name] = ("tokens", int(self.tok_value.shape[1]), w.shape[0])
        out = self.emit_vector(node.name, f"{table} @ {name}", (table, None))
        return Vec(out, ("tok", "tok", "F"), w.shape[1])
