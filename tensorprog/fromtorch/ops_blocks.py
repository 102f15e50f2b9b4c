"""LongT5's block-local attention in a traced model, read as the attention over the sequence
that it computes.

LongT5 (transformers' LongT5LocalAttention, its encoder's default) pads each head's queries,
keys and values [B, T, H, dh] with zero tokens to whole blocks of b (``_split_into_blocks``),
views them [B, T'/b, b, H, dh], gives each block of queries the keys and values of its own
block and its two neighbours (``_concatenate_3_blocks``: a pad by a block of zeros on each
side, three slices, a cat: [B, blocks, 3b, H, dh]), adds T5's relative position bias of the
3b x b grid (``compute_bias``) and a mask (-1e10 at padding keys and at pairs b or more apart),
takes the softmax over the 3b keys, mixes the values, views the heads back and cuts the pad.

Every relayout there only copies tokens, so the walk carries such a value as
:class:`Blocked`: the value as the walk has it over the sequence, with ``index`` holding the
token at each position of the torch tensor's token axes (-1 for a token of zeros). Logits of
blocked queries and keys (the einsum) carry the token pair of every entry; the bias's bucket
ids and the mask are constants of the trace. At the softmax the attention is read exactly:
for every real query the entries the mask keeps must be the keys fewer than r tokens away
(all of the sequence's, or a band: LongT5's r is its block length), each exactly once, none a
padding key, and the bias at each the bucket T5's ``relative`` gives that pair; the attention
is then ``mix(softmax(dot(q, k, dh) + R @ rel), v)`` over the whole sequence, with ``input rel
: relative[T, B, r]`` (``relative[T, B]`` where every key is kept), the padded queries' rows
being cut before anything else reads them (the value is the walk's again only once its index
is the tokens' own order). Keys kept otherwise (by block, not by distance), a band with no
bias, and anything else done to blocked values are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .ops_attention import refuse_one_key
from .ops_relative import relaid, t5_buckets
from .values import Affine, Aux, Conc, Pointwise, PRef, Probs, RelBias, Scores, Vec
from .where import CHECK_OPS, op_name, refuse

_HELP = (
    "give the sequence no more tokens than one block's reach (LongT5's local_radius + 1), "
    "or use attention over the whole sequence with T5's relative position bias "
    "(encoder_attention_type is LongT5's local attention; examples/t5.tp)"
)
# ops that keep a value's layout and entries
_CARRIERS = {"contiguous", "clone", "alias", "to", "_to_copy", "type_as", "dropout"}
_VIEWS = {"view", "reshape", "_unsafe_view"}


@dataclass
class Blocked:
    """A per-token value (``inner``, as the walk has it over the sequence) whose torch token
    axes (after the batch, before the features: [H, dh] or [F]) hold its tokens cut into
    blocks: ``index`` the token at each position, -1 a token of zeros (a pad)."""

    inner: object
    index: object
    what: str  # the pad that started it, for messages
    length: int  # the sequence's tokens, all of which the walk's value holds


@dataclass
class BlockBias:
    """T5's bias looked up at LongT5's 3-block grid: ``ids`` [b, 3b] the buckets, ``axes``
    naming the torch axes ('q', 'k', 'H', '1'), ``mask`` an additive constant added to it."""

    table: PRef
    ids: object
    node: str
    axes: tuple
    mask: object = None


@dataclass
class BlockScores:
    """Logits of blocked queries and keys, [B, blocks, H, q, k]: the walk's ``scores`` of the
    inner values, ``qi`` [blocks, q] and ``ki`` [blocks, k] the tokens of each entry; ``bias``
    and ``mask`` what was added to them; ``length`` the tokens of the queries' and keys'
    sequence, every one of which the attention over it reads."""

    scores: Scores
    qi: object
    ki: object
    length: int
    bias: BlockBias | None = None
    mask: object = None


@dataclass
class BlockProbs:
    """The softmax of :class:`BlockScores`, read as the attention over the whole sequence."""

    probs: Probs
    qi: object
    ki: object


def three_block_ids(block: int, buckets: int, torch):
    """T5's bidirectional buckets of LongT5's [b, 3b] grid (``compute_bias``): key 3-block
    position minus the query's (its block's middle third)."""
    full = t5_buckets(3 * block, 3 * block, buckets, True, torch)
    return full[block : 2 * block]


class BlockOps:
    """Block-local attention (LongT5's): blocked values, their logits, bias, mask and softmax."""

    def call(self, node):
        import operator

        import torch

        if node.target is operator.getitem:
            return super().call(node)
        args, kwargs = self.args(node)
        flat = [
            x
            for a in (*args, *kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        op = op_name(node)
        if op in CHECK_OPS or not node.users and not op.endswith("_"):
            return super().call(node)  # nothing reads it (the walker's)
        if any(isinstance(x, (Blocked, BlockBias, BlockScores, BlockProbs)) for x in flat):
            return self._blocked_op(node, op, args, flat)
        if op == "pad" and args:
            started = self._block_pad(node, *args)
            if started is not None:
                return started
        if op in _VIEWS and args and self._block_view(node, args[0]):
            # a sequence of whole blocks is not padded (LongT5's _split_into_blocks): its
            # view into blocks starts them
            t = int(self._shape(node.args[0])[1])
            index = torch.arange(t).reshape(self._shape(node)[1:3])
            return Blocked(args[0], index, f"a sequence's {t} tokens", t)
        return super().call(node)

    def _block_view(self, node, x) -> bool:
        """Whether ``node`` views each head's tokens [B, T, H, dh] as blocks [B, T/b, b, H, dh]
        for LongT5's block-local attention."""
        if not isinstance(x, (Vec, Affine, Pointwise)):
            return False
        tags = tuple(getattr(x.src if isinstance(x, Pointwise) else x, "tags", ()) or ())
        old, new = tuple(self._shape(node.args[0])), tuple(self._shape(node))
        return (
            tags == ("tok", "tok", "H", "dh")
            and len(new) == 5
            and new[0] == old[0]
            and new[3:] == old[2:]
            and new[1] * new[2] == old[1]
            and new[2] > 1
            # read by LongT5's logits (the queries) or its 3-block pad (the keys, values) alone
            and {op_name(u) for u in node.users} <= {"pad", "einsum"}
            and bool(node.users)
        )

    def op_einsum(self, node, equation, operands):
        """LongT5's transient-global aggregates (``_create_global_aggregates``), refused as
        what they are; any other einsum is the next class's."""
        if (
            equation.replace(" ", "") == "...nd,...ng->...gd"
            and len(operands) == 2
            and isinstance(operands[1], (Conc, Aux))  # the one-hot of each token's block
        ):
            g = int(self._shape(node)[-2])
            raise refuse(
                node,
                f"the sum of each of {g} blocks' token vectors into a token of a "
                "sequence of its own (LongT5's transient-global aggregates, which "
                "every token attends beside its block's neighbours): the language's "
                "sequences keep their length, and its attention reads the keys of one "
                "sequence at a time",
                help="use LongT5's local attention "
                "(encoder_attention_type='local'), traced as attention with "
                "relative[T, B, r]",
            )
        return super().op_einsum(node, equation, operands)

    def op_embedding(self, node, w, idx, *rest):
        ids = getattr(idx, "value", None) if isinstance(idx, Conc) else None
        if (
            isinstance(w, PRef)
            and ids is not None
            and ids.dim() == 2
            and not ids.is_floating_point()
            and ids.shape[1] == 3 * ids.shape[0]
            and len(w.shape) == 2
            and w.shape[0] >= 4
        ):
            import torch

            if torch.equal(ids.cpu(), three_block_ids(int(ids.shape[0]), w.shape[0], torch)):
                if w.t or w.rows or w.offset:
                    raise refuse(
                        node, "a relative position bias read from part of a table", help=_HELP
                    )
                return BlockBias(w, ids.cpu(), node.name, ("q", "k", "H"))
        return super().op_embedding(node, w, idx, *rest)

    # -- the pad that cuts a sequence into blocks ----------------------------------------------
    def _block_pad(self, node, x, pad, mode="constant", value=None):
        """``F.pad`` of each head's tokens [B, T, H, dh] by zeros after them: the first step of
        LongT5's ``_split_into_blocks``; None for any other pad (the next class's)."""
        import torch

        if not isinstance(x, (Vec, Affine, Pointwise)):
            return None
        tags = tuple(getattr(x.src if isinstance(x, Pointwise) else x, "tags", ()) or ())
        pads = [int(p) for p in pad]
        if (
            tags != ("tok", "tok", "H", "dh")
            or len(pads) not in (6, 8)
            or any(pads[:4])
            or any(pads[6:])
            or pads[4] != 0
            or pads[5] <= 0
            or mode != "constant"
            or value not in (None, 0)
        ):
            return None
        t = int(self._shape(node.args[0])[1])
        index = torch.cat([torch.arange(t), torch.full((pads[5],), -1)])
        what = f"a sequence's {t} tokens padded by {pads[5]} zero tokens to {t + pads[5]}"
        return Blocked(x, index, what, t)

    # -- ops on blocked values -----------------------------------------------------------------
    def _blocked_op(self, node, op, args, flat):
        x = args[0] if args else None
        if op in _CARRIERS and isinstance(x, (Blocked, BlockScores, BlockProbs)):
            return x
        if op == "einsum":
            return self._blocks_einsum(node, args[0], args[1])
        if isinstance(x, Blocked):
            moved = self._blocks_relayout(node, op, x, args)
            if moved is not None:
                return moved
        if op == "cat" and all(isinstance(b, Blocked) for b in args[0]):
            return self._blocks_cat(node, args[0], args[1] if len(args) > 1 else 0)
        if op in ("add", "add_") and isinstance(x, BlockScores) and len(args) == 2:
            if op == "add_" and len(node.args[0].users) != 1:
                raise refuse(
                    node,
                    "blocked logits added to in place where something else reads them too",
                    help=_HELP,
                )
            return self._blocks_plus(node, x, args[1])
        if any(isinstance(v, BlockBias) for v in flat):
            return self._blocks_bias_op(node, op, args)
        if op in ("softmax", "_softmax") and isinstance(x, BlockScores):
            return self._blocks_softmax(node, x, args[1] if len(args) > 1 else -1)
        what = next(v for v in flat if isinstance(v, (Blocked, BlockBias, BlockScores, BlockProbs)))
        raise refuse(
            node,
            f"the op {op or node.target} of {_describe(what)}: the trace reads "
            "a sequence padded to whole blocks only as LongT5's block-local attention "
            "(the blocks' relayouts, the 3-block keys and values, the logits with T5's "
            "bias and the mask, their softmax, the mix, the heads merged and the pad "
            "cut)",
            help=_HELP,
        )

    def _blocks_token_axes(self, x: Blocked) -> int:
        return x.index.dim()

    def _blocks_relayout(self, node, op, x: Blocked, args) -> Blocked | Vec | None:
        """A pad, view, slice of the token axes (the features kept), or the heads merged."""
        import torch

        old, new = self._shape(node.args[0]), self._shape(node)
        k = self._blocks_token_axes(x)
        feat = len(old) - 1 - k  # the features' axes after the token axes
        index = None
        if op == "pad":
            pads = [int(p) for p in args[1]]
            pairs = [pads[i : i + 2] for i in range(0, len(pads), 2)]  # from the last axis
            padded = [len(old) - 1 - i for i, p in enumerate(pairs) if p != [0, 0]]
            mode = args[2] if len(args) > 2 else "constant"
            value = args[3] if len(args) > 3 else None
            if (
                len(padded) == 1
                and 1 <= padded[0] <= k
                and min(pairs[len(old) - 1 - padded[0]]) >= 0
                and mode == "constant"
                and value in (None, 0)
            ):
                before, after = pairs[len(old) - 1 - padded[0]]
                axis = padded[0] - 1
                index = torch.nn.functional.pad(
                    x.index, [0, 0] * (k - 1 - axis) + [before, after], value=-1
                )
        elif (
            op in _VIEWS
            and len(new) - feat >= 2  # the batch and a token axis at least
            and new[0] == old[0]
            and tuple(new[-feat:]) == tuple(old[-feat:])
        ):
            index = x.index.reshape(new[1 : len(new) - feat])
        elif (
            op in _VIEWS
            and feat == 2
            and new[0] == old[0]
            and len(new) == 3
            and new[1] == x.index.numel()
            and new[2] == old[-1] * old[-2]
        ):
            # the heads merged back, [B, T', H·dh]: one token axis, the features flat
            inner = self.vec(x.inner, node)
            merged = Vec(inner.name, ("tok", "tok", "F"), inner.dim)
            return self._blocks_settled(
                dataclasses.replace(x, inner=merged, index=x.index.reshape(-1))
            )
        elif op == "slice" and 1 <= args[1] % len(old) <= k:
            axis = args[1] % len(old) - 1
            start, end = (list(args[2:4]) + [None, None])[:2]
            step = args[4] if len(args) > 4 else 1
            sl = [slice(None)] * k
            sl[axis] = slice(start, end, step)
            index = x.index[tuple(sl)]
        if index is None:
            return None
        if list(index.shape) != list(new[1 : 1 + k + (len(new) - len(old))]):
            raise refuse(
                node,
                f"a {op} from {list(old)} to {list(new)} of {_describe(x)} "
                "that the trace cannot follow token by token",
                help=_HELP,
            )
        return self._blocks_settled(dataclasses.replace(x, index=index))

    def _blocks_settled(self, x: Blocked):
        """The walk's value once its tokens are the sequence's in their own order again."""
        import torch

        t = x.length  # all of them: a cut of real tokens keeps the value blocked (refused)
        tags = tuple(getattr(x.inner, "tags", ()) or ())
        if (
            x.index.dim() == 1
            and torch.equal(x.index, torch.arange(t))
            and tags == ("tok", "tok", "F")
        ):
            return x.inner
        return x

    def _blocks_cat(self, node, parts, dim) -> Blocked:
        import torch

        first = parts[0]
        k = self._blocks_token_axes(first)
        axis = dim % len(self._shape(node)) - 1
        if not 0 <= axis < k or any(p.inner is not first.inner for p in parts):
            raise refuse(
                node,
                "a cat of blocked values other than copies of one value along "
                "its token axes (LongT5's 3-block keys and values)",
                help=_HELP,
            )
        return dataclasses.replace(first, index=torch.cat([p.index for p in parts], axis))

    # -- logits, bias, mask, softmax, mix --------------------------------------------------------
    def _blocks_einsum(self, node, equation, operands):
        eq = equation.replace(" ", "")
        if (
            eq == "...qhd,...khd->...hqk"
            and len(operands) == 2
            and all(isinstance(o, Blocked) for o in operands)
        ):
            q, k = operands
            if q.index.dim() != 2 or k.index.dim() != 2 or q.index.shape[0] != k.index.shape[0]:
                raise refuse(
                    node,
                    "logits of blocked queries and keys not laid out [batch, "
                    "blocks, tokens, heads, head dim] alike",
                    help=_HELP,
                )
            qv, kv = self.vec(q.inner, node), self.vec(k.inner, node)
            if qv.dh is None or qv.dh != kv.dh or qv.dim != kv.dim:
                raise refuse(node, "logits of blocked queries and keys in other heads", help=_HELP)
            s = Scores(qv, kv, 1.0, node.name, ("tok", "tok", "H", "tok", "tok"))
            if q.length != k.length:
                raise refuse(
                    node,
                    "logits of blocked queries and keys of sequences of other lengths",
                    help=_HELP,
                )
            return BlockScores(s, q.index, k.index, q.length)
        if (
            eq == "...hqk,...khd->...qhd"
            and len(operands) == 2
            and isinstance(operands[0], BlockProbs)
            and isinstance(operands[1], Blocked)
        ):
            return self._blocks_mix(node, *operands)
        raise refuse(
            node,
            f"an einsum {equation!r} of blocked values other than LongT5's "
            "logits ('...qhd,...khd->...hqk') and mix ('...hqk,...khd->...qhd')",
            help=_HELP,
        )

    def _blocks_bias_op(self, node, op, args):
        b = next(a for a in args if isinstance(a, BlockBias))
        moved = relaid(b, op, args)
        if moved is not None:
            return moved
        if op in ("add", "add_") and len(args) == 2 and b.mask is None:
            other = args[1] if args[0] is b else args[0]
            if isinstance(other, Conc):  # the mask, -1e10 where a pair is dropped
                return dataclasses.replace(b, mask=_additive(node, other.value))
            if isinstance(other, BlockScores):
                return self._blocks_plus(node, other, b)
        raise refuse(
            node,
            f"T5's bias of LongT5's blocks used by {op or node.target} other "
            "than added to their logits (with the blocks' mask)",
            help=_HELP,
        )

    def _blocks_plus(self, node, s: BlockScores, other) -> BlockScores:
        if s.bias is not None or s.mask is not None:
            raise refuse(
                node, "a second term added to the logits of blocked queries and keys", help=_HELP
            )
        if isinstance(other, BlockBias):
            if other.axes[-3:] != ("H", "q", "k") or any(a != "1" for a in other.axes[:-3]):
                raise refuse(
                    node,
                    "T5's bias added to blocked logits laid out other than "
                    "[.., heads, queries, keys]",
                    help=_HELP,
                )
            return dataclasses.replace(s, bias=other, mask=other.mask)
        if isinstance(other, Conc):
            return dataclasses.replace(s, mask=_additive(node, other.value))
        raise refuse(
            node,
            "a term added to the logits of blocked queries and keys other "
            "than T5's bias and the blocks' mask",
            help=_HELP,
        )

    def _blocks_softmax(self, node, s: BlockScores, dim) -> BlockProbs:
        import torch

        shape = tuple(self._shape(node))
        if dim not in (-1, len(shape) - 1) or len(shape) != 5:
            raise refuse(node, "a softmax of blocked logits over other than their keys", help=_HELP)
        qi, ki = s.qi, s.ki
        t = s.length  # all of its tokens: the attention over it reads them all
        if not torch.equal(qi[qi >= 0].sort().values, torch.arange(t)):
            raise refuse(
                node,
                f"blocked attention whose queries are not each of the {t} tokens once",
                help=_HELP,
            )
        keep = (
            torch.ones(shape, dtype=torch.bool)
            if s.mask is None
            else (torch.as_tensor(s.mask).expand(shape) > -1e4)
        )
        if not bool((keep == keep[:1, :, :1]).all()):
            raise refuse(
                node,
                "a mask of blocked logits that differs between examples or heads (a padding mask)",
                help="trace with example inputs without "
                "padding: no attention_mask, or one of all ones",
            )
        keep = keep[0, :, 0]  # [blocks, q, k]
        # the entries of real queries the mask keeps (a padding query's row is cut before
        # anything reads it), and the token pair of each
        kept = keep & (qi >= 0)[:, :, None]
        tq, tk = qi[:, :, None].expand(kept.shape)[kept], ki[:, None, :].expand(kept.shape)[kept]
        if bool((tk < 0).any()):
            raise refuse(
                node,
                f"blocked attention in which token {int(tq[tk < 0][0])} attends "
                "a padding key (a zero key the mask keeps adds to the softmax's "
                "denominator)",
                help=_HELP,
            )
        if s.bias is not None:
            read = s.bias.ids[None].expand(kept.shape)[kept]
            wrong = read != _buckets(t, s.bias.table.shape[0])[tq, tk]
            if bool(wrong.any()):
                raise refuse(
                    node,
                    f"T5's bias read for tokens ({int(tq[wrong][0])}, "
                    f"{int(tk[wrong][0])}) at another pair's bucket",
                    help=_HELP,
                )
        pairs = torch.zeros(t, t, dtype=torch.long)  # how often each (query, key) is kept
        pairs.index_put_((tq, tk), torch.ones_like(tq), accumulate=True)
        if bool((pairs == 1).all()):
            return self._blocks_attention_over(node, s, t, None)
        distance = (torch.arange(t)[None, :] - torch.arange(t)[:, None]).abs()
        reach = int(distance[pairs == 1].max()) + 1 if bool((pairs == 1).any()) else 0
        if reach > 0 and bool((pairs == (distance < reach).long()).all()):
            # each query attends the keys fewer than reach tokens away, each once: the
            # language's relative[T, B, reach], whose softmax masks the others
            return self._blocks_attention_over(node, s, t, reach)
        raise refuse(
            node,
            f"blocked attention over {t} tokens whose mask keeps pairs other "
            "than every key once for every query",
            help=_HELP,
        )

    def _blocks_attention_over(self, node, s: BlockScores, t: int, reach: int | None) -> BlockProbs:
        """Every query attends every key (``reach`` None), or every key fewer than ``reach``
        tokens away, once: attention over the sequence with T5's bias (of that reach)."""
        refuse_one_key(node, t if reach is None else min(t, 2 * reach - 1))  # keys per query
        scores = s.scores
        if reach is not None and s.bias is None:
            raise refuse(
                node,
                f"block-local attention over {t} tokens in which each token "
                f"attends the keys fewer than {reach} tokens away, with no relative "
                "position bias: the language's reach is that of T5's bias, "
                "relative[T, B, r]",
                help=_HELP,
            )
        if s.bias is not None:
            b = s.bias
            rows = b.table.shape[0] if reach is None else (b.table.shape[0], reach)
            rels = self.__dict__.setdefault("_block_rels", {})  # one input per lookup: the
            if b.node not in rels:  # layers after the first read the first's bias again
                rels[b.node] = (self.sequence_input("_rel", "relative", t, rows), reach)
            rel, made = rels[b.node]
            if made != reach:
                raise refuse(
                    node,
                    f"T5's bias of LongT5's blocks read under a reach of "
                    f"{reach} tokens here and {made} where it was looked up",
                    help=_HELP,
                )
            scores = self.with_bias(
                node, scores, RelBias(b.table, rel, b.node, ("H", "q", "k"), (t, t))
            )
        logits = self.logits(scores.q, scores.k, scores.factor, scores.node, "out", scores.bias)
        return BlockProbs(Probs(scores, f"softmax({logits})"), s.qi, s.ki)

    def _blocks_mix(self, node, p: BlockProbs, v: Blocked):
        import torch

        vv = self.vec(v.inner, node)
        q = p.probs.scores.q
        if (
            v.index.shape != p.ki.shape
            or not torch.equal(v.index, p.ki)
            or vv.dh != q.dh
            or vv.dim != q.dim
        ):
            raise refuse(
                node,
                "blocked values laid out otherwise than the keys, or in other "
                "heads than the queries'",
                help=_HELP,
            )
        name = self.emit_vector(node.name, f"mix({p.probs.name}, {vv.name})")
        out = Vec(name, ("tok", "tok", "H", "dh"), q.dim, vv.dh)
        return dataclasses.replace(v, inner=out, index=p.qi)


def _buckets(t: int, rows: int):
    import torch

    return t5_buckets(t, t, rows, True, torch)


def _additive(node, value):
    """A mask added to logits: 0 at the pairs kept, -1e4 or less at those dropped."""
    import torch

    m = torch.as_tensor(value)
    if m.is_floating_point() and bool(((m == 0) | (m <= -1e4)).all()):
        return m
    raise refuse(
        node,
        "a term added to blocked logits that is no mask (0 at the pairs kept, "
        "-1e4 or less at the others)",
        help=_HELP,
    )


def _describe(x) -> str:
    if isinstance(x, Blocked):
        return f"{x.what} (whole blocks, as LongT5's block-local attention pads them)"
    if isinstance(x, BlockBias):
        return "T5's bias at LongT5's 3-block grid"
    if isinstance(x, BlockScores):
        return "the logits of blocked queries and keys"
    return "the softmax of blocked logits"
