"""Attention sinks and softmaxes written by hand (docs/torch.md, "Attention sinks").

A sink is one learned logit per head beside every row of the head's logits: the row's weights are
``exp(s_ts) / (exp(z_h) + sum_s' exp(s_ts'))``, the program's ``causal_softmax(s, z)``. Models
write it two ways, each traced as that softmax where it is exactly one:

* gpt-oss and MiMo-V2-Flash: ``cat([s, z.reshape(1, H, 1, 1).expand(b, H, t, 1)], -1)``, a
  softmax, and the sink's column sliced off (``probs[..., :-1]``);
* Granite (SWA): ``softmax(s) @ v * sigmoid(logsumexp(s) - z)``, the same weights since
  ``sigmoid(lse - z) = Z / (Z + exp(z))`` for ``Z = sum_s exp(s_ts)``.

A softmax stabilised by hand, ``s - s.max(-1, keepdim=True).values`` (or ``amax``), is read as s
when only a softmax reads it: a softmax is unchanged by a shift of its row. Every other use of
these pieces (a sink elsewhere, a max of anything but the logits it is subtracted from, the
logsumexp's scale on anything but the mix of the same logits' softmax) is refused at its line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TraceError
from .ops_merged import MergedKV, merged_parts
from .values import PRef, Probs, Scores, Spread, Vec
from .where import refuse

_HELP = ("write the sink as gpt-oss does (cat([logits, sinks.reshape(1, -1, 1, 1).expand(b, -1, "
         "t, -1)], -1), softmax, probs[..., :-1]) or as Granite does (softmax(logits) @ v * "
         "sigmoid(logsumexp(logits, -1) - sinks.view(1, -1, 1)).unsqueeze(-1))")


@dataclass
class SinkRef:
    """A per-head vector param (the sinks) given axes of 1 around its heads axis ``axis``."""

    ref: PRef
    shape: tuple
    axis: int


@dataclass
class SinkScores:
    """Attention logits with the sinks as one more key column, first or last (``at``)."""

    scores: Scores
    sink: PRef
    at: int  # 0 or -1


@dataclass
class RowMax:
    """The max of logits over their key axis, kept (``keepdim``): only subtracted from them."""

    of: Scores | SinkScores


@dataclass
class Shifted:
    """Logits minus their row's max: only a softmax reads them (it is unchanged by the shift)."""

    of: Scores | SinkScores


@dataclass
class SinkProbs:
    """The softmax of logits with a sink column, before that column is sliced off."""

    probs: Probs
    at: int


@dataclass
class SinkGate:
    """Granite's ``sigmoid(logsumexp(s) - z)`` (``stage`` lse, gap, gate, then gate with an
    axis for the head dim): the share of each row the sink leaves to the logits."""

    scores: Scores
    sink: PRef | None
    stage: str


# with two sequences' keys side by side, for one softmax over both (ops_merged.py)
SINK_VALUES = (SinkRef, SinkScores, RowMax, Shifted, SinkProbs, SinkGate, MergedKV)


def _as_spread(x):
    """A per-head param viewed with one axis of 1 after its heads, ``b.view(1, 1, H, 1)``, as the
    :class:`Spread` that ``b[None, None, :, None]`` is (a per-head bias, ops_gate.py); any other
    value as it is."""
    if isinstance(x, SinkRef) and x.axis == len(x.shape) - 2:
        return Spread(x.ref, x.shape, after=1)
    return x


class SinkOps:
    """Attention sinks (gpt-oss's, Granite's) and a softmax stabilised by hand."""

    def _heads_axis(self, s: Scores) -> int:
        return s.tags.index("H") if "H" in s.tags else -1

    def view(self, node, v):
        shape = tuple(node.meta["val"].shape)
        if isinstance(v, PRef) and len(v.shape) == 1 and v.rows is None and len(shape) > 1 and [
                d for d in shape if d != 1] == [v.shape[0]] and v.shape[0] > 1 and shape[-1] == 1:
            # one number per head, axes of 1 around it and after it (a vector param's features
            # stay last: ops_spread.py): the heads axis, checked where it meets the logits
            return SinkRef(v, shape, shape.index(v.shape[0]))
        if isinstance(v, SinkGate) and v.stage == "gate" and shape[:-1] == tuple(
                node.args[0].meta["val"].shape) and shape[-1] == 1:
            return SinkGate(v.scores, v.sink, "axis")
        return super().view(node, v)

    def op_unsqueeze(self, node, v, dim):
        if isinstance(v, SinkGate) and v.stage == "gate" and dim % (len(
                node.meta["val"].shape)) == len(node.meta["val"].shape) - 1:
            return SinkGate(v.scores, v.sink, "axis")
        return super().op_unsqueeze(node, v, dim)

    def op_expand(self, node, v, sizes, *rest):
        if isinstance(v, SinkRef):
            new = tuple(node.meta["val"].shape)
            if len(new) == len(v.shape) and new[v.axis] == v.shape[v.axis] and new[-1] == 1:
                return SinkRef(v.ref, new, v.axis)
            raise refuse(node, "a per-head param expanded otherwise than over the batch and "
                         "query tokens, with one key column", help=_HELP)
        return super().op_expand(node, v, sizes, *rest)

    def op_cat(self, node, tensors, dim=0):
        kinds = [type(t) for t in tensors]
        if SinkRef not in kinds:
            try:
                return super().op_cat(node, tensors, dim)
            except TraceError:
                merged = merged_parts(self, node, tensors, dim)  # T5Gemma 2's (ops_merged.py)
                if merged is None:
                    raise
                return merged
        ndim = len(node.meta["val"].shape)
        if len(tensors) != 2 or kinds.count(SinkRef) != 1 or dim % ndim != ndim - 1:
            raise refuse(node, "a per-head param concatenated to anything but attention "
                         "logits, as one more key column (an attention sink)", help=_HELP)
        at = 0 if isinstance(tensors[0], SinkRef) else -1
        sink, s = (tensors[0], tensors[1]) if at == 0 else (tensors[1], tensors[0])
        if not isinstance(s, Scores) or s.cap is not None or self._heads_axis(s) != sink.axis \
                or len(sink.shape) != len(s.tags):
            raise refuse(node, "a per-head param concatenated to attention logits but not one "
                         "number per head (on their heads axis) beside every row", help=_HELP)
        return SinkScores(s, sink.ref, at)

    def op_max(self, node, s, other=None, *rest):
        if getattr(node.target, "_overloadname", "") == "dim" and isinstance(
                s, (Scores, SinkScores)):
            return self._row_max(node, s, other, rest[0] if rest else False)
        return super().op_max(node, s, other, *rest)

    def op_amax(self, node, s, dim=(), keepdim=False):
        if isinstance(s, (Scores, SinkScores)):
            dims = dim if isinstance(dim, (list, tuple)) else [dim]
            return self._row_max(node, s, dims[0] if len(dims) == 1 else None, keepdim)
        raise refuse(node, "the op amax (other than a row max of attention logits, subtracted "
                     "from them before their softmax)")

    def _row_max(self, node, s, dim, keepdim):
        ndim = len(node.args[0].meta["val"].shape)
        if not isinstance(dim, int) or dim % ndim != ndim - 1 or not keepdim:
            raise refuse(node, "a max of attention logits other than over their keys, kept "
                         "(s.max(dim=-1, keepdim=True)), as a softmax stabilised by hand takes")
        return RowMax(s)

    def _lincomb(self, node, u, v, alpha):
        if isinstance(u, RowMax) or isinstance(v, RowMax):
            if isinstance(v, RowMax) and v.of is u and alpha == -1:
                return Shifted(u)  # s - max(s): a softmax's own stabilisation
            raise refuse(node, "the row max of attention logits used otherwise than "
                         "subtracted from those logits (s - s.max(-1, keepdim=True).values)")
        if isinstance(u, SinkGate) and isinstance(v, SinkRef) and u.stage == "lse" and \
                alpha == -1:
            if self._heads_axis(u.scores) != v.axis or len(v.shape) != len(u.scores.tags) - 1:
                raise refuse(node, "logsumexp of attention logits minus a per-head param not "
                             "on their heads axis", help=_HELP)
            return SinkGate(u.scores, v.ref, "gap")
        if isinstance(u, SinkRef) or isinstance(v, SinkRef):
            u, v = (_as_spread(x) for x in (u, v))  # b.view(1, 1, H, 1): b[None, None, :, None]
        if any(isinstance(x, (SinkRef, SinkGate, Shifted, SinkScores)) for x in (u, v)):
            raise refuse(node, "a sum with attention logits' sink, logsumexp or row max "
                         "other than an attention sink's", help=_HELP)
        return super()._lincomb(node, u, v, alpha)

    def op_logsumexp(self, node, s, dim, keepdim=False):
        ndim = len(node.args[0].meta["val"].shape)
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        if not isinstance(s, Scores) or s.cap is not None or len(dims) != 1 or \
                dims[0] % ndim != ndim - 1 or keepdim:
            raise refuse(node, "a logsumexp of anything but attention logits over their keys "
                         "(Granite's attention sink)", help=_HELP)
        return SinkGate(s, None, "lse")

    def op_sigmoid(self, node, x):
        if isinstance(x, SinkGate) and x.stage == "gap":
            return SinkGate(x.scores, x.sink, "gate")
        return super().op_sigmoid(node, x)

    def op_softmax(self, node, s, dim=-1, *rest):
        at = None
        ndim = len(node.args[0].meta["val"].shape)
        # the sink column and the row max are along the keys (op_cat, _row_max): a softmax over
        # another axis (the queries, the heads) is no attention's, and traced as one it would
        # be a wrong program
        if isinstance(s, (Shifted, SinkScores)) and dim % ndim != ndim - 1:
            raise refuse(node, "a softmax of attention logits with a sink column or minus "
                         "their row max over another axis than their keys (the last)",
                         help=_HELP)
        if isinstance(s, Shifted):
            s = s.of
        if isinstance(s, SinkScores):
            at, sink, s = s.at, s.sink, s.scores
        p = super().op_softmax(node, s, dim if at is None else -1, *rest)
        if at is None:
            return p
        z = self.vector_param(sink, node)
        fn, _, logits = p.name.partition("(")
        return SinkProbs(Probs(p.scores, f"{fn}({logits[:-1]}, {z})"), at)

    op__softmax = op_softmax

    def op_slice(self, node, v, dim=0, start=None, end=None, step=1):
        if not isinstance(v, SinkProbs):
            return super().op_slice(node, v, dim, start, end, step)
        ndim = len(node.meta["val"].shape)
        size = node.args[0].meta["val"].shape[-1]
        lo, hi = ((start or 0) % size if start else 0, size if end is None or end >= size
                  else end % size)
        keep = (1, size) if v.at == 0 else (0, size - 1)
        if dim % ndim != ndim - 1 or step != 1 or (lo, hi) != keep:
            raise refuse(node, "a slice of attention weights with a sink other than the one "
                         "that drops the sink's column", help=_HELP)
        return v.probs

    def mix(self, node, p: Probs, v: Vec) -> Vec:
        out = super().mix(node, p, v)
        # Granite's gate multiplies this mix afterwards: where its statement is, and its logits
        self._mixes = getattr(self, "_mixes", {})
        self._mixes[out.name] = (p, len(self.out.stmts) - 1, node)
        return out

    def op_mul(self, node, u, v):
        gate = next((x for x in (u, v) if isinstance(x, SinkGate)), None)
        if gate is None:
            if any(isinstance(x, SINK_VALUES) for x in (u, v)):
                raise refuse(node, "a product with attention logits' sink, row max or "
                             "logsumexp other than Granite's gate on the attention output",
                             help=_HELP)
            return super().op_mul(node, u, v)
        y = v if gate is u else u
        found = getattr(self, "_mixes", {}).get(getattr(y, "name", None))
        # the mix read by this product alone: its program vector then stands for the product
        if gate.stage != "axis" or found is None or found[0].scores is not gate.scores or set(
                found[2].users) != {node}:
            raise refuse(node, "sigmoid(logsumexp(logits) - sinks) times anything but the mix "
                         "of the same logits' softmax with the values, read by nothing else, "
                         "per head and query (Granite's attention sink)", help=_HELP)
        p, index, _ = found
        z = self.vector_param(gate.sink, node)
        fn, _, logits = p.name.partition("(")
        # the mix's statement takes the sink, and its vector is now this product's value, which
        # the check compares with this node's
        self.out.stmts[index] = self.out.stmts[index].replace(
            f"mix({p.name},", f"mix({fn}({logits[:-1]}, {z}),", 1)
        self.out.vectors[y.name] = (node.name, "out")
        del self._mixes[y.name]
        return y

