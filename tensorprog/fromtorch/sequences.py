"""Which sequence each input of a traced model runs over: the program's sequence dims.

A model of one sequence has the token ids ``tok : tokens[T, V]`` and maybe their positions
``pos : positions[T]``. An encoder-decoder reads a second sequence (the decoder's ids, of their
own length) and computes positions and relative position buckets for each. At the lookup the
walk does not know which sequence a table of positions or of buckets belongs to (two sequences
may have the same length), so each such lookup gets an input of its own, named provisionally,
and the sequences are read off the statements once the walk is done, by the rule the language
checks them with (ir/sequences.py): an elementwise instruction pairs tokens of one sequence,
``dot(q, k, dh)`` pairs q's tokens with k's, ``mix(p, v)`` sums v over p's keys and gives a
value on p's queries, and a causal softmax masks a sequence against itself. Inputs that meet
are of one sequence (union-find); a class holding the token ids is ``T``, another is named after
its token input (``T_decoder_input_ids``). Positions and buckets of one sequence become one
input. A wrong pairing cannot pass silently: the traced program is parsed, and the language
refuses any instruction that still mixes two sequences.
"""

from __future__ import annotations

import ast
import re

from ..errors import TraceError
from ..ir.program import RELATIVE_KINDS

# the provisional names of the walk's positions and bucket inputs (``_arr``: the positions a
# learned array of its own is read at, ops_encoder.py): a name the walk gives a value never
# starts with "_" (Walker.fresh strips it)
PROVISIONAL = re.compile(r"\b_(?:pos|rel|arr)\d+\b")


DIM = "dim:"  # a class member that names a sequence dim the walk declared (tokens(h, D))
KEYS = "_keys"  # the class member of a subsampled grid's keys (LeViT's offsets across two grids)
_SLOT = re.compile(r"\{s(\d+)\}")  # a dim's slot in the walk's statements


class _Classes:
    """Union-find over input names."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _meet(classes: _Classes, tags) -> tuple:
    """The tag of an elementwise combination of values tagged ``tags``: those over tokens are
    of one sequence (and pairs, of one pair of sequences)."""
    found = [t for t in tags if t]
    for t in found[1:]:
        if len(t) == len(found[0]):
            for a, b in zip(t, found[0], strict=True):
                classes.union(a, b)
    return max(found, key=len) if found else ()


def _tag(expr, tags: dict, classes: _Classes, causal: frozenset = frozenset()) -> tuple:
    """The sequence tag (input names) of an expression of the walk's statements; ``causal``:
    the logits a merged attention's mask makes causal."""
    if isinstance(expr, ast.Name):
        return tags.get(expr.id, ())
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        args = [_tag(a, tags, classes, causal) for a in expr.args]
        fn = expr.func.id
        if fn == "dot" and len(args) >= 2 and len(args[0]) == 1 and len(args[1]) == 1:
            return (args[0][0], args[1][0])
        if fn == "mix" and len(args) >= 2 and len(args[0]) == 2:  # (mix(p, v, dv, D) too)
            if args[1]:
                classes.union(args[0][1], args[1][0])
            return args[0][:1]
        if fn == "causal_softmax" and len(args) == 1 and len(args[0]) == 2:
            classes.union(*args[0])
            return args[0]
        if fn in ("softmax", "causal_softmax") and len(args) == 2 and all(
                len(a) == 2 for a in args):
            # one softmax over two sets of keys for the same queries (ops_merged.py): the
            # keys stay two sequences, and the set the model masks causally is the queries'
            classes.union(args[0][0], args[1][0])
            for a, arg in zip(expr.args, args, strict=True):
                if isinstance(a, ast.Name) and a.id in causal:
                    classes.union(*arg)
            return args[0]
        if fn == "tokens" and len(expr.args) == 2 and isinstance(expr.args[1], ast.Name):
            # an image's pixels read as the tokens of a sequence dim of the walk's (tokens(h,
            # {s3}), a slot: _slot_3 here): what runs over them, a bias on their pairs
            # included, runs over that dim
            return (DIM + expr.args[1].id,)
        if fn in ("first", "last", "mean"):  # one vector per sequence
            return ()
        if fn == "place" and len(args) == 3:  # v's tokens among h's: h's sequence, not v's
            return args[1]
        return _meet(classes, args)
    if isinstance(expr, ast.BinOp):
        return _meet(classes, [_tag(expr.left, tags, classes, causal),
                               _tag(expr.right, tags, classes, causal)])
    if isinstance(expr, ast.UnaryOp):
        return _tag(expr.operand, tags, classes, causal)
    return ()


def resolve(trace, fresh, tokens_seq: int | None) -> None:
    """Gives every input of ``trace`` over a sequence (``trace.seq_inputs``, provisional for
    positions and buckets) its sequence, merges the positions and the buckets of one sequence
    into one input each, and renames them in the statements. ``fresh(name)`` draws a name no
    value has; ``tokens_seq`` is the token ids' length (``T``)."""
    if not trace.seq_inputs:
        return
    classes = _Classes()
    tags: dict[str, tuple] = {"tok": ("tok",), "pos": ("tok",)}
    # float vectors per token (an image cut into patches) run over T as the token ids do: so
    # do positions added to them (SigLIP's lookup of position ids, with no class token)
    tags.update({m.group(1): ("tok",) for d in trace.decls
                 if (m := re.match(r"input (\w+) : patches\[T,", d))})
    for name, (kind, _, rows) in trace.seq_inputs.items():
        # pairs of a sequence's tokens; a subsampled grid's queries with its keys (LeViT's
        # subsampling attention: rows = (offsets, stride, keys)) pair two sequences
        tags[name] = ((name, name + KEYS) if _across(kind, rows) else (name, name)
                      if kind in RELATIVE_KINDS else (name,))
    # codebooks of the token ids (ops_codebooks.py) run over the ids' sequence
    for name in getattr(trace, "codebooks", {}):
        classes.union(name, "tok")
    causal = frozenset(getattr(trace, "causal_keys", ()))
    for stmt in trace.stmts:
        target, _, expr = stmt.partition(" = ")
        try:
            tree = ast.parse(_SLOT.sub(r"_slot_\1", expr), mode="eval").body
        except SyntaxError:  # no form the walk writes; the language checks it all the same
            continue
        tags[target] = _tag(tree, tags, classes, causal)
    lengths = {"tok": tokens_seq}
    lengths.update({name: length for name, (_, length, _) in trace.seq_inputs.items()})
    lengths.update({name + KEYS: rows[2] for name, (kind, _, rows) in trace.seq_inputs.items()
                    if _across(kind, rows)})
    dim_of: dict[str, str] = {classes.find("tok"): "T"}
    declared = {classes.find(k): k[len(DIM):] for k in list(classes.parent) if k.startswith(DIM)}
    for root, dim in declared.items():  # tokens(h, D): D, declared by the walk
        dim_of.setdefault(root, "{s" + dim.removeprefix("_slot_") + "}" if dim.startswith(
            "_slot_") else dim)
    for name, (kind, _, _) in trace.seq_inputs.items():  # a class of a token input: its name
        if kind in ("tokens", "patches"):  # (patches beside the ids: an image's, ops_place.py)
            dim_of.setdefault(classes.find(name), f"T_{name}")
    for name in lengths:
        dim_of.setdefault(classes.find(name), f"T_{name.lstrip('_')}")
    seen: dict[str, int] = {}
    for name, length in lengths.items():
        dim = dim_of.get(classes.find(name))
        if dim is None or length is None:
            continue
        if seen.setdefault(dim, length) != length:
            raise TraceError(
                f"the traced attention pairs a sequence of {seen[dim]} tokens with one of "
                f"{length} as if they were one sequence",
                help="trace the model with example inputs whose sequences the model reads "
                "as their own (an encoder-decoder's source and target ids)")
    renames: dict[str, str] = {}
    merged: dict[tuple, str] = {}
    inputs: dict[str, tuple[str, str, int]] = {}
    for name, (kind, _, rows) in trace.seq_inputs.items():
        dim = dim_of[classes.find(name)]
        if kind in ("tokens", "patches"):
            inputs[name] = (kind, dim, rows)
            continue
        if _across(kind, rows):  # the keys' sequence for the queries' offsets
            rows = (*rows[:2], dim_of[classes.find(name + KEYS)])
        key = (kind, dim, rows)
        if key not in merged:
            base = {"positions": "pos", "axial": "ax", "causal_relative": "rel_causal"}.get(
                kind, "rel")
            base += "_sub" if _across(kind, rows) else ""  # a subsampled grid's queries'
            final = base if dim == "T" and kind == "positions" else fresh(
                f"{base}_{dim[2:]}" if dim.startswith("T_") else base)
            merged[key] = final
            inputs[final] = key
        renames[name] = merged[key]
    trace.seq_inputs = inputs
    trace.seq_dims = {d: seen[d] for d in dim_of.values()
                      if d != "T" and d in seen and d.startswith("T_")}
    trace.stmts = [PROVISIONAL.sub(lambda m: renames.get(m.group(0), m.group(0)), s)
                   for s in trace.stmts]
    # a positions table's fan-in is its sequence's dim (declared with the provisional name)
    dims = {name: dim_of[classes.find(name)] for name in lengths if name != "tok"}
    trace.decls = [PROVISIONAL.sub(lambda m: dims.get(m.group(0), m.group(0)), d)
                   for d in trace.decls]
    for name, (kind, dim, _) in inputs.items():  # declared by the walk over a name of its own
        if kind == "patches":
            trace.decls = [d.replace(f"input {name} : patches[T_{name},",
                                     f"input {name} : patches[{dim},") for d in trace.decls]


def input_lines(trace, vocab: int | None, bucket_dim) -> list[str]:
    """The declarations of the sequence dims besides ``T`` and of the inputs over them (after
    :func:`resolve`); ``bucket_dim(rows)`` names a table's finite dim."""
    lines = [f"dim {d} = {size}" for d, size in trace.seq_dims.items()]
    for name, (kind, dim, rows) in trace.seq_inputs.items():
        if kind == "patches":  # declared among the walk's statements (ops_conv.py)
            continue
        if kind == "tokens":
            v = "V" if rows == vocab else f"V_{name}"
            if v != "V":
                lines.append(f"dim {v} = {rows}")
            lines.append(f"input {name} : tokens[{dim}, {v}]")
        elif kind == "positions":
            if name != "pos":  # the token ids' positions are declared with them (trace.py)
                lines.append(f"input {name} : positions[{_named(trace, dim, bucket_dim)}]")
        elif kind == "relative" and isinstance(rows, tuple):  # buckets and a reach
            lines.append(f"input {name} : relative[{dim}, {bucket_dim(rows[0])}, {rows[1]}]")
        elif kind == "axial":  # rows: the axis's size and its stride (ops_axial.py)
            lines.append(f"input {name} : axial[{dim}, {bucket_dim(rows[0])}, {rows[1]}]")
        elif _across(kind, rows):  # a subsampled grid's queries, its keys (LeViT's)
            queries, keys = (_named(trace, d, bucket_dim) for d in (dim, rows[2]))
            lines.append(f"input {name} : {kind}[{queries}, {keys}, {bucket_dim(rows[0])}, "
                         f"{rows[1]}]")
        else:
            lines.append(f"input {name} : {kind}[{_named(trace, dim, bucket_dim)}, "
                         f"{bucket_dim(rows)}]")
    return lines


def _named(trace, dim: str, bucket_dim) -> str:
    """A sequence dim as declared: a walk's dim (its slot, tokens(h, {s3})) named by the size
    of its tokens as the finite dims are."""
    slot = _SLOT.fullmatch(dim)
    return bucket_dim(trace.slots[int(slot.group(1))][1]) if slot else dim


def _across(kind: str, rows) -> bool:
    """Whether an input's rows say a subsampled grid's offsets (LeViT's: offsets, stride,
    keys), an input on pairs of two sequences (axial's rows are a pair too: its axis, its
    stride)."""
    return kind == "grid_offsets" and isinstance(rows, tuple)
