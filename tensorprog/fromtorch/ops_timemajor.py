"""Time-major per-token vectors: fairseq's layout (tokens, batch, features), FSMT's.

``x.transpose(0, 1)`` of a (batch, tokens, features) vector lays it out tokens first. The
language's vectors have no layout, so per-token ops (linear layers, norms, coordinatewise
functions, sums of vectors laid out alike, dropout) are the same program either way; what reads
the token axis is not. Such a value is tagged 'T' (its tokens) and 'B' (its batch) instead of
'tok', and only the ops that cannot read its tokens as the batch are let through
(:meth:`TimeMajorOps.time_major_op`): its views into heads, (T, B, H, dh) or (T, B·H, dh), and
back, and the transposes and permutes that lay it out batch-major again, as fairseq's attention
does before its ``bmm`` (``q.view(T, B·H, dh).transpose(0, 1)``). Everything else that meets it
(attention, masks, positions, pooling, a broadcast against another layout) is refused."""

from __future__ import annotations

import dataclasses
import operator

from .values import Affine, Centered, Conc, L2Norm, Mean, MeanSq, Parts, Pointwise, PRef, Tok, Vec
from .walk import IDENTITY_OPS, VIEW_OPS
from .where import CHECK_OPS, op_name, refuse

# the time-major layouts traced: a vector, its heads, its heads merged with the batch
TIME_MAJOR = (("T", "B", "F"), ("T", "B", "H", "dh"), ("T", "H", "dh"))  # (in messages)
# the batch-major layouts a time-major one may be laid out as again (channels first too:
# (batch, features, tokens), as x.transpose(1, 2) of (batch, tokens, features) is tagged)
_BATCH_MAJOR = {("tok", "tok", "F"), ("tok", "F", "tok"), ("tok", "H", "tok", "dh"),
                ("tok", "tok", "H", "dh"), ("H", "tok", "dh")}
# ops that act on each coordinate alone: the layout is theirs to keep
_COORDINATEWISE = {"abs", "clamp", "clamp_min", "elu", "erf", "exp", "expm1", "gelu", "hardsigmoid",
                   "hardswish", "hardtanh", "neg", "pow", "relu", "relu6", "rsqrt", "sigmoid",
                   "silu", "softplus", "sqrt", "square", "tanh"}
_SUMS = {"add", "sub", "mul", "div"}
# the walk's views and the ops it reads as the value itself (walk.py), and the transposes
_RELAYOUTS = VIEW_OPS | {"transpose", "permute", "t"}
_HELP = ("lay the value out batch-major, (batch, tokens, features), before this op: "
         "x.transpose(0, 1)")


def layout_tags(x) -> tuple | None:
    """The tags of a value's torch axes, or of the vector it is computed from (a function of
    it, its mean square, ...); None for a value of neither."""
    for v in (x, getattr(x, "src", None), getattr(getattr(x, "src", None), "src", None)):
        tags = getattr(v, "tags", None)
        if tags is not None:
            return tuple(tags)
    return None


def time_major(x) -> bool:
    """Whether ``x`` is (or is computed from) a per-token value laid out tokens first."""
    if isinstance(x, Parts):
        return any(time_major(i) for i in x.items)
    tags = layout_tags(x)
    return tags is not None and "T" in tags


def _named(tags) -> tuple | None:
    """Batch-major tags with the batch ('B') and tokens ('T') named: the first 'tok' of a
    (batch, ...) value is its batch, the second its tokens; a value whose heads are merged with
    its batch, (B·H, tokens, dh), has its batch in the heads axis. None for any other."""
    tags = tuple(tags)
    if tags and tags[0] == "tok" and tags.count("tok") == 2:
        second = tags.index("tok", 1)
        return tuple("B" if i == 0 else "T" if i == second else t for i, t in enumerate(tags))
    if tags and tags[0] == "H" and tags.count("tok") == 1:
        return tuple("T" if t == "tok" else t for t in tags)
    return None


def _settled(tags) -> tuple:
    """Named tags as the walk keeps them: 'tok' for both where the tokens come after the axis
    that holds the batch (batch-major again), 'T' and 'B' where they come before it."""
    holder = "B" if "B" in tags else "H"
    if holder in tags and tags.index("T") > tags.index(holder):
        return tuple("tok" if t in ("T", "B") else t for t in tags)
    return tuple(tags)


def _layout(tags) -> str:
    said = {"T": "tokens", "B": "batch", "tok": "tokens", "H": "heads", "dh": "head dim",
            "F": "features"}
    return "(" + ", ".join(said.get(t, t) for t in tags) + ")"


class TimeMajorOps:
    """Time-major vectors: their relayouts, views, and the ops allowed to read them."""

    def call(self, node):
        """Every op that meets a time-major value (but the token ids' own, which walk.py lays
        out) is checked here, before any other mixin takes it."""
        if node.op == "call_function" and node.target is not operator.getitem and \
                op_name(node) not in CHECK_OPS:
            args, kwargs = self.args(node)
            flat = [x for a in (*args, *kwargs.values())
                    for x in (a if isinstance(a, (list, tuple)) else [a])]
            if any(time_major(x) and not isinstance(x, Tok) for x in flat):
                self.time_major_op(node, op_name(node), args)
        return super().call(node)

    def batch_major_output(self, node, value) -> None:
        """Refuses an output of the forward laid out time-major: the program's are (batch,
        tokens, ...), and the emitted module's would be the model's transposed."""
        if time_major(value):
            raise refuse(node, "an output laid out time-major, (tokens, batch, ...): the "
                         "program's outputs are (batch, tokens, ...)", help="transpose it to "
                         "(batch, tokens, ...) before returning it: x.transpose(0, 1)")

    @staticmethod
    def laid_ids(ids, tok: Tok):
        """The token ids' values (or the probe's) as ``tok`` lays them out: transposed where it
        is the ids tokens first."""
        return ids.t() if tok.tags == ("T", "B") else ids

    def time_major_relayout(self, node, v, perm):
        """A transpose or permute (``perm``: the old axis of each new one) that lays a per-token
        value out tokens first, or a time-major one out anew; None where neither is time-major
        (the batch-major relayouts of ops_layout.py)."""
        if not isinstance(v, (Vec, Affine, Pointwise)):
            return None
        tags = tuple(self._tags(v, node))
        was = "T" in tags
        named = tags if was else _named(tags)
        if named is None:
            return None
        new = _settled(tuple(named[i] for i in perm))
        if not was and "T" not in new:
            return None  # batch-major before and after
        if new in TIME_MAJOR or was and new in _BATCH_MAJOR:
            if isinstance(v, Affine):
                v = self.vec(v, node)
            return self._retag(v, new)
        if not was:
            return None  # a swap of the batch and tokens into no layout traced (ops_layout)
        raise refuse(node, f"a transpose or permute of a time-major value {_layout(tags)} to "
                     f"{_layout(new)}: only the layouts {', '.join(map(_layout, TIME_MAJOR))} "
                     "and their batch-major counterparts are traced",
                     help="transpose it back to (batch, tokens, features) first, or to "
                     "(batch, heads, tokens, head dim) for attention")

    def time_major_view(self, node, v, old, shape):
        """A view of a time-major value: into heads (T, B, H, dh) or heads merged with the
        batch (T, B·H, dh, fairseq's query), and back to (T, B, C); any other view refused (it
        would mix tokens of different sequences)."""
        tags = tuple(self._tags(v, node))
        old, shape = tuple(old), tuple(shape)
        x = self.vec(v, node)
        if shape == old:
            return x
        new = dh = None
        if len(shape) in (3, 4) and shape[0] == old[0]:
            if tags == ("T", "B", "F") and len(shape) == 4 and shape[1] == old[1] and \
                    shape[2] * shape[3] == old[2]:
                new, dh = ("T", "B", "H", "dh"), shape[3]
            elif tags == ("T", "B", "F") and len(shape) == 3 and old[2] % shape[2] == 0 and \
                    shape[1] == old[1] * (old[2] // shape[2]):
                new, dh = ("T", "H", "dh"), shape[2]
            elif tags == ("T", "B", "H", "dh") and len(shape) == 3 and shape[1] == old[1] \
                    and shape[2] == old[2] * old[3]:
                new = ("T", "B", "F")
            elif tags == ("T", "B", "H", "dh") and len(shape) == 3 and \
                    shape[1] == old[1] * old[2] and shape[2] == old[3]:
                new, dh = ("T", "H", "dh"), old[3]
            elif tags == ("T", "H", "dh") and x.dh == old[2] and x.dim % old[2] == 0:
                heads = x.dim // old[2]
                batch, rest = divmod(old[1], heads)
                if rest == 0 and shape == (old[0], batch, x.dim):
                    new = ("T", "B", "F")
                elif rest == 0 and shape == (old[0], batch, heads, old[2]):
                    new, dh = ("T", "B", "H", "dh"), old[2]
        if new is None:
            raise refuse(node, f"a view from {list(old)} to {list(shape)} of a time-major value "
                         f"{_layout(tags)}: only its views into heads, (tokens, batch, heads, "
                         "head dim) or (tokens, batch x heads, head dim), and back to (tokens, "
                         "batch, features) are traced", help=_HELP)
        return dataclasses.replace(x, tags=new, dh=dh)

    def time_major_tok(self, node, op: str, ids: Tok) -> Tok:
        """The token ids transposed (XLNet's ``input_ids.transpose(0, 1)``) or viewed: a lookup
        of them is laid out as they are, tokens first after a transpose of (batch, tokens)."""
        old, shape = self._shape(node.args[0]), self._shape(node)
        if shape == old and op not in ("transpose", "permute", "t"):
            return ids
        swap = op in ("transpose", "permute", "t") and len(old) == 2 and shape == old[::-1] \
            and (op != "transpose" or sorted(d % 2 for d in node.args[1:3]) == [0, 1])
        if swap:
            return Tok(("T", "B") if ids.tags == ("tok", "tok") else ("tok", "tok"))
        if ids.tags == ("T", "B") or len(shape) == len(old) and shape != old and 1 not in shape:
            # (a view of (B, T) ids as (T, B) deals them out anew: no layout either way; one
            # as (B·T, 1) keeps their order, a flatten)
            raise refuse(node, f"a {op} of the token ids from {list(old)} to {list(shape)}"
                         + (" (laid out tokens first)" if ids.tags == ("T", "B") else ""),
                         help="transpose them (ids.transpose(0, 1)) rather than view them "
                         "as another shape, or transpose them back to (batch, tokens) first")
        return Tok(("tok",) * len(shape))

    def time_major_op(self, node, op: str, args: list) -> None:
        """Refuses an op that meets a time-major value unless it reads each token's vector
        alone, as the program would: a coordinatewise function, a linear layer, a norm, a sum
        or product with a number, a vector param or a vector laid out alike, a mean or split
        along the features, a relayout (time_major_view, time_major_relayout)."""
        base = op[:-1] if op.endswith("_") and op[:-1] in _SUMS else op
        if base in IDENTITY_OPS | _RELAYOUTS | _COORDINATEWISE:
            return
        ndim = len(self._shape(node.args[0])) if hasattr(node.args[0], "meta") else 0
        if base in ("linear", "matmul", "mm", "bmm", "addmm"):
            weight = args[2] if base == "addmm" else args[1]
            if isinstance(weight, PRef) and time_major(args[1 if base == "addmm" else 0]):
                return
        elif base in ("embedding", "index"):
            return  # of time-major ids: laid out as they are (op_embedding keeps their tags)
        elif base in ("layer_norm", "rms_norm"):
            return  # over the last axis alone (ops_attention._norm refuses any other)
        elif base in ("mean", "split", "split_with_sizes", "chunk"):
            at = 1 if base == "mean" else 2  # (a split's and a chunk's dim is 0 if not given)
            dims = node.args[at] if len(node.args) > at else node.kwargs.get("dim", 0)
            dims = dims if isinstance(dims, (list, tuple)) else [dims]
            if ndim and [d % ndim for d in dims] == [ndim - 1]:
                return
        elif base in _SUMS:
            self._time_major_terms(node, op, args)
            return
        elif base == "einsum" and any(isinstance(a, PRef) and len(a.shape) == 3
                                      for a in args[1]):
            shape = next(list(a.shape) for a in args[1] if isinstance(a, PRef))
            raise refuse(node, f"an einsum {args[0]!r} of a time-major value with a 3-D param "
                         f"{shape}: a projection whose weight is laid out (features, heads, head "
                         "dim) (XLNet's) is no linear layer the tracer reads (its weights are "
                         "matrices)", help="write the projection as nn.Linear(d, heads * "
                         "head_dim) and view its output into heads")
        elif base == "unsqueeze" and op_name(node.args[0]) == "unflatten":
            # nn.MultiheadAttention's packed projection: linear(x, in_proj_weight).unflatten(-1,
            # (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2), then q, k, v = proj[0], ...
            raise refuse(node, "a packed q/k/v projection unflattened into its blocks and "
                         "given an axis on a time-major value (nn.MultiheadAttention's "
                         "in_proj): its blocks are not followed through that relayout",
                         help="project q, k and v with nn.Linear layers of their own and "
                         "attend with F.scaled_dot_product_attention on (batch, heads, tokens, "
                         "head dim)")
        raise refuse(node, f"the op {op} on a time-major value (tokens, batch, ...): the "
                     "tracer follows such a value through per-token ops alone (linear layers, "
                     "norms, coordinatewise functions, sums of values laid out alike), its "
                     "views into heads and its transposes back to batch-major, and this op may "
                     "read its tokens as the batch", help=_HELP)

    def _time_major_terms(self, node, op, args) -> None:
        """The terms of a sum or product with a time-major value: numbers, one-entry
        constants, params of one entry per feature, and values laid out alike (of its shape,
        or with the features reduced to 1: a mean square over them); anything else refused."""
        out = self._shape(node)
        ref = next(layout_tags(a) for a in args if time_major(a))
        for i, a in enumerate(args[:2]):
            arg = node.args[i] if i < len(node.args) else None
            shape = tuple(arg.meta["val"].shape) if hasattr(arg, "meta") and \
                hasattr(arg.meta.get("val"), "shape") else None
            if isinstance(a, (int, float)) or isinstance(a, Conc) and \
                    getattr(a.value, "numel", lambda: 1)() == 1:
                continue
            if isinstance(a, PRef) and shape is not None and all(s == 1 for s in shape[:-1]):
                continue  # one entry per feature (ops_arith checks which axis it falls on)
            if time_major(a) and layout_tags(a) == ref and shape is not None and (
                    shape == out or shape == out[:-1] + (1,) and isinstance(
                        a, (MeanSq, Mean, L2Norm, Centered))):
                continue
            kind = "a value laid out batch-major" if layout_tags(a) and not time_major(a) else \
                f"a {type(a).__name__} value" + (f" of shape {list(shape)}" if shape else "")
            raise refuse(node, f"a {op} of a time-major value {_layout(ref)} with {kind}: "
                         "torch would broadcast or pair their axes by position, tokens with "
                         "batch", help="lay both out alike (x.transpose(0, 1)) before "
                         "combining them")
