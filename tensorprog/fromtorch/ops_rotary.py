"""Rotary position embeddings (RoPE), recognised as what they are: an exact rotation.

``x * cos(θ) + rotate_half(x) * sin(θ)`` turns each pair of a head's coordinates (i, i + dh/2)
by an angle θ that depends on the token's position and the pair, never on a param. A rotation
keeps every vector's norm per head and token exactly, and ``q_t · k_s`` becomes
``q_t · R(θ_s − θ_t) k_s``: a fixed orthogonal map between two vectors, whose size grows with
the width as ``q · k``'s does (coherently when q and k are correlated, which training makes them
along the rotated directions). So every exponent of the network is that of the same network
without the rotation, and the program writes the rotated vector as the vector itself; the
traced source says so in a comment. Partial rotary (HF's ``partial_rotary_factor``: Phi,
GPT-NeoX, StableLM) rotates the first r coordinates of each head and concatenates the rest back
unchanged: still an exact rotation of some coordinate pairs, so the same holds. The interleaved
form (GPT-J's ``rotate_every_two``: ``stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)``, with
each angle repeated for its pair, ``cos[..., :d/2].repeat_interleave(2, -1)``: GLM, Helium,
ERNIE 4.5, Cohere) turns the pairs (2i, 2i + 1) instead: a rotation too. Anything else built
from slices, concatenations, stacks or cos/sin tables is refused.
"""

from __future__ import annotations

import dataclasses
import math

from .ops_rescale import Rescaled
from .values import (
    Affine,
    Aux,
    Conc,
    OneToken,
    PairHalf,
    PairStack,
    Pointwise,
    PRef,
    RopeTerm,
    Rotated,
    Strided,
    Sub,
    TokenParam,
    Trig,
    Vec,
)
from .where import CHECK_OPS, op_name, refuse, user_span

# ops that carry a cos/sin table unchanged (casts, added axes, broadcasts)
_TRIG_CARRIERS = {"to", "_to_copy", "unsqueeze", "expand", "contiguous", "clone", "alias",
                  # an interleaved rotary's table: its first half, each angle repeated for a pair
                  "slice", "repeat_interleave"}

# ops that move a cos/sin table's entries (NeoMME's M-RoPE: a select of each axis, their
# strided halves stacked and flattened, the result concatenated twice)
_REARRANGE = {"select", "stack", "cat", "view", "_unsafe_view", "reshape", "flatten"}


def _canon(a):
    """An op's argument as a comparable value: a table as its angle and path."""
    if isinstance(a, Trig):
        return ("table", a.angle, a.path)
    if isinstance(a, (list, tuple)):
        return tuple(_canon(x) for x in a)
    return a if a is None or isinstance(a, (int, float, str)) else repr(a)


def _empty(arg) -> bool:
    val = getattr(arg, "meta", {}).get("val")
    return val is not None and val.numel() == 0


def _key(x) -> tuple:
    """What a (part of a) head vector is: its name and coordinate range."""
    if isinstance(x, Strided):
        return ("strided", *_key(x.src), x.start, x.sign)
    return (x.src.name, x.lo, x.hi, x.sign) if isinstance(x, Sub) else (x.name,)


def _same_node(x, y, depth: int = 0) -> bool:
    """Whether two graph nodes compute the same values: one node, or the same op of the same
    args (recursively, a few ops deep); inputs (placeholders) only as themselves."""
    import torch.fx

    if x is y:
        return True
    if depth > 16 or x.op != "call_function" or y.op != "call_function" or x.target != y.target:
        return False

    def same(a, b) -> bool:
        if isinstance(a, torch.fx.Node) or isinstance(b, torch.fx.Node):
            return isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node) and \
                _same_node(a, b, depth + 1)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(p, q) for p, q in zip(a, b, strict=True))
        return type(a) is type(b) and a == b

    return same(list(x.args), list(y.args)) and x.kwargs.keys() == y.kwargs.keys() and all(
        same(x.kwargs[k], y.kwargs[k]) for k in x.kwargs)


class RotaryOps:
    """Rotary position embeddings: slices into halves, rotate_half, cos/sin products, their sum;
    partial rotary (the first r coordinates of each head rotated, the rest passed through) as
    a part of each head, rotated, and concatenated back with the rest."""

    def trig_table(self, node, args, flat):
        """A cos/sin table made, or carried through casts, unsqueezes and a product with 1;
        False when the node is no such thing."""
        op = op_name(node)
        if op in ("cos", "sin") and isinstance(args[0], (Aux, Conc)):
            return Trig(op, node.args[0].name)
        tables = [x for x in flat if isinstance(x, Trig)]
        if not tables:
            return False
        if op in CHECK_OPS:
            return None
        others = [x for x in flat if isinstance(x, (Aux, Conc))]
        numbers = [x for x in flat if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if op == "mul" and len(tables) == 1 == len(numbers) == len(flat) - 1 and \
                math.isfinite(numbers[0]) and numbers[0] > 0:
            # a table times a number (YaRN's attention_scaling): that number times a rotation
            return dataclasses.replace(tables[0], factor=tables[0].factor * float(numbers[0]))
        if len(tables) == 1 and not others and op in _TRIG_CARRIERS:
            return self.carried_table(op, args, tables[0])
        moved = self.rearranged_table(node, op, args, tables, others)  # NeoMME's M-RoPE
        if moved is not None:
            return moved
        span = user_span(node)  # where the table is lost, for the refusal of its product
        return Aux(lost=f"{op} at {span.filename.rsplit('/', 1)[-1]}:{span.line}" if span else op)

    def head_slice(self, node, v, dim=0, start=None, end=None, step=1):
        if not isinstance(v, (Vec, Sub)):
            v = self.vec(v, node)
        src = v.src if isinstance(v, Sub) else v
        size = v.hi - v.lo if isinstance(v, Sub) else src.dh
        last = dim % len(src.tags) == len(src.tags) - 1
        if src.tags[-1] == "dh" and src.dh and last and step == 2 and size % 2 == 0 and (
            (end is None or end >= size) and start in (None, 0, 1)
        ):
            return Strided(v, start or 0)  # one of each pair (2i, 2i + 1): rotate_every_two
        if src.tags[-1] == "dh" and src.dh and last and step == 1 and getattr(v, "sign", 1) == 1:
            lo, hi = (
                min(size, max(0, e + size if e < 0 else e))
                for e in (start or 0, size if end is None else end)
            )
            off = v.lo if isinstance(v, Sub) else 0
            if lo <= hi:  # empty: Phi-3's pass-through part x[..., dh:] under full rotary
                return src if (off + lo, off + hi) == (0, src.dh) else Sub(src, off + lo, off + hi)
        if src.tags == ("tok", "tok", "F") and dim % 3 == 1:  # h[:, 1:]: tokens, not features
            return self.token_slice(node, src, start, end, step)  # for a mean (ops_pool.py)
        axis = dim % len(src.tags)
        if src.tags[axis] in ("tok", "px"):  # (a channels-first value's last axis: its tokens)
            raise refuse(node, f"a slice along axis {axis} of a value laid out {list(src.tags)}: "
                         "a batch, token or pixel axis, not its features; the tracer slices "
                         "tokens only as h[:, k:] of a (batch, tokens, features) vector",
                         help="slice the tokens of the per-token vector before it is laid out "
                         "otherwise (before transposing it channels-first)")
        raise refuse(
            node,
            "a slice of a vector's coordinates (other than a fused layer's output features, "
            "rotary's halves or a part of each head that a partial rotary turns)",
        )

    def op_cat(self, node, tensors, dim=0):
        # an empty constant (a key/value cache's first update, cat((empty, k))) adds nothing,
        # nor does an empty param (MobileBERT's unembedding, the tied embedding's rows beside
        # a param of the width's rows past the embedding's: none where they are one size)
        tensors = [t for t, a in zip(tensors, node.args[0], strict=True)
                   if not (isinstance(t, (Conc, Aux, PRef)) and _empty(a))]
        if len(tensors) == 1 and isinstance(tensors[0], (Vec, Sub, PRef)):
            return tensors[0]
        if any(isinstance(t, (TokenParam, OneToken)) for t in tensors):  # a class token
            # (ops_encoder.py), learned or put back (ops_classtoken.py)
            return self.prepend_tokens(node, tensors, dim)
        if len(tensors) == 2 and all(isinstance(t, PairHalf) for t in tensors) and (
            [t.start for t in tensors] == [0, 1] and _key(tensors[0].src) == _key(tensors[1].src)
            and tensors[0].halves == tensors[1].halves
            and tensors[0].factor == tensors[1].factor
            and self._same_angles(tensors[0].angle, tensors[1].angle)
        ):  # each pair (2i, 2i + 1) turned, put at (i, i + d/2): the same layout for q and k
            # (or each head's halves turned, put back in their place), both halves by one
            # table of angles
            return self._rotated(tensors[0].src, tensors[0].factor, node)
        if len(tensors) == 2 and all(isinstance(t, PairHalf) for t in tensors):
            raise refuse(node, "a concatenation of a head's two turned halves that is not "
                         "one rotation (the halves turned by different cos and sin tables, "
                         "angles or numbers, or put back out of order): each pair's map is "
                         "then no rotation", help="turn both halves by the same cos and sin "
                         "tables (one angle per pair)")
        parts = [t for t in tensors if not (isinstance(t, Sub) and t.lo == t.hi)]
        if len(parts) == 1 and len(tensors) > 1 and isinstance(parts[0], (Vec, Sub)):
            return parts[0]  # the rest was empty
        if not parts or not all(isinstance(t, Sub) for t in parts):
            parts = []
        src = parts[0].src if parts else None
        if parts and all(t.src.name == src.name for t in parts) and (
            dim % len(src.tags) == len(src.tags) - 1
        ):
            # rotate_half, or its negation cat((x2, -x1)) (NanoChat's): then a rotation by the
            # opposite angles, as exact a rotation (q and k turned alike)
            if len(parts) == 2 and (parts[0].sign, parts[1].sign) in ((-1, 1), (1, -1)):
                (mid, hi), (lo, mid2) = (parts[0].lo, parts[0].hi), (parts[1].lo, parts[1].hi)
                if mid == mid2 and mid - lo == hi - mid:  # rotate_half of lo..hi
                    return Rotated(src if (lo, hi) == (0, src.dh) else Sub(src, lo, hi))
            ranges = [(t.lo, t.hi) for t in parts]
            # a head's parts back together, in order, is the vector itself (a part a rotary
            # turned is that part still: rope_sum)
            if (
                all(t.sign == 1 for t in parts)
                and ranges[0][0] == 0
                and ranges[-1][1] == src.dh
                and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            ):
                return src
        joined = self.feature_cat(node, tensors, dim)  # into linear layers: ops_concat.py
        if joined is None:  # images along their channels into convolutions: ops_conv.py
            joined = self.image_cat(node, tensors, dim)
        if joined is not None:
            return joined
        joined = self.finite_cat(node, tensors, dim)  # read by more: cat(a, b, D), ops_concat
        if joined is not None:
            return joined
        cat = self.head_cat(node, tensors, dim)  # parts of other vectors: MLA's (ops_mla.py)
        if cat is not None:
            return cat
        if any(isinstance(t, PRef) for t in tensors):
            raise refuse(node, "a concatenation of params into one matrix (MobileBERT's "
                         "masked-LM head: the tied embedding's rows beside a param's, "
                         "h.matmul(cat([E.t(), dense.weight]))): the language reads a param "
                         "whole, and a tied readout reads the whole embedding",
                         help="apply each param to its part of the vector and add the results, "
                         "or give the embedding the model's width (no rows beside it)")
        ndim = len(node.meta["val"].shape)
        if isinstance(dim, int) and ndim == 3 and dim % ndim == 1 and len(tensors) > 1 and all(
                isinstance(t, (Vec, Affine, Pointwise)) and self._tags(t, node) == (
                    "tok", "tok", "F") for t in tensors):
            raise refuse(node, "a concatenation of sequences along their tokens into one "
                         "longer sequence (ProphetNet's main and predicting streams side by "
                         "side): a program's sequences keep their own tokens, and one made of "
                         "several has no form of the language (learned tokens before a "
                         "sequence are prepend, a sequence's tokens in place of another's "
                         "place)", help="run each sequence through the layers on its own, or "
                         "write the model as a program")
        raise refuse(
            node,
            "a concatenation of vectors (other than rotary's rotate_half, a head's parts "
            "put back together, per-head vectors of the same heads along the head, or vectors "
            "along their features, into linear layers or side by side)",
        )

    def _same_angles(self, a: str, b: str) -> bool:
        """Whether two angle nodes (Trig.angle) are one table: the same node, or the same ops
        of the same buffers and constants (``pos * inv`` computed twice)."""
        return bool(a and b) and (a == b or a in self.by_name and b in self.by_name and
                                  _same_node(self.by_name[a], self.by_name[b]))

    def op_stack(self, node, tensors, dim=0):
        """rotate_every_two's ``stack((-x2, x1), -1)`` of one (part of a) head vector's odd
        coordinates negated and its even ones; its flatten makes the rotated vector."""
        if len(tensors) == 2 and all(isinstance(t, Strided) for t in tensors):
            odd, even = tensors
            src = even.src
            ndim = len((src.src if isinstance(src, Sub) else src).tags) + 1
            if (odd.start, odd.sign, even.start, even.sign) == (1, -1, 0, 1) and (
                _key(odd.src) == _key(src) and dim % ndim == ndim - 1
            ):
                return PairStack(src)
        if tensors and all(isinstance(t, (Vec, Affine, Pointwise, Rescaled)) for t in tensors):
            raise refuse(node, f"a stack of {len(tensors)} per-token vectors on an axis of their "
                         "own other than first or before the features (Gemma 3n's AltUp "
                         "streams, torch.stack([h0, h1, ...]), are traced there: ops_streams.py)",
                         help="stack them first (dim=0) or before the features (dim=2), keep "
                         "them in a list, or write the model as a program")
        raise refuse(node, "a stack of vectors (other than an interleaved rotary's "
                     "rotate_every_two, stack((-x[..., 1::2], x[..., ::2]), -1))")

    def pairs_flattened(self, node, v: PairStack):
        old, new = self._shape(node.args[0]), tuple(node.meta["val"].shape)
        if tuple(old[:-2]) + (old[-2] * old[-1],) != new:
            raise refuse(node, f"a view from {list(old)} to {list(new)} of rotate_every_two's "
                         "stacked pairs (other than their flatten)")
        return Rotated(v.src, interleaved=True)

    def carried_table(self, op: str, args, table: Trig) -> Trig:
        """A table through a cast, an added axis or a slice: the same table, the op recorded."""
        return dataclasses.replace(table, path=(*table.path, (op, _canon(args[1:]))))

    def rearranged_table(self, node, op: str, args, tables: list, others: list) -> Trig | None:
        """A table whose entries an index op moves (select, stack, cat, view) after cos and
        sin: cos and sin commute with any such op, so the same ops on the same angles give
        cos and sin of one rearranged table of angles, whatever the ops; ``angle`` spells them
        out (the tables' angles and paths with every argument), so a cos and a sin term pair
        up only where both went through the same. ``halves``: the last op concatenates one
        table twice along the last axis, so coordinates i and i + d/2 share each angle, as
        rotate_half pairs them. None for any other op."""
        if op not in _REARRANGE or others or len({(t.kind, t.factor) for t in tables}) != 1:
            return None
        halves = False
        if op == "cat" and len(args[0]) == 2 and _canon(args[0][0]) == _canon(args[0][1]):
            ndim = len(node.meta["val"].shape)
            halves = (args[1] if len(args) > 1 else 0) % ndim == ndim - 1
        return Trig(tables[0].kind, repr((op, _canon(args))), tables[0].factor,
                    rearranged=True, halves=halves)

    def _rearranged_term(self, node, x, table: Trig):
        """A product with a rearranged table: a rotation of the pairs (i, i + d/2) only where
        the table is one table twice along the last axis, carried after by casts and added
        axes alone, times a head vector (cos) or its rotate_half (sin)."""
        moved = any(op in ("slice", "repeat_interleave") for op, _ in table.path)
        angle = table.angle + repr(table.path)  # the ops after it must match too
        if table.halves and not moved:
            if table.kind == "cos" and isinstance(x, Sub) and x.sign == 1:  # a partial rotary's
                return RopeTerm(x, "cos", angle, factor=table.factor)  # part (NeoMME's global)
            if table.kind == "cos" and not isinstance(x, (Sub, Rotated, RopeTerm, Strided)):
                x = self.vec(x, node)
                if x.tags[-1] == "dh":
                    return RopeTerm(x, "cos", angle, factor=table.factor)
            if table.kind == "sin" and isinstance(x, Rotated) and not x.interleaved:
                return RopeTerm(x.src, "sin", angle, factor=table.factor)
        raise refuse(node, f"a product with a {table.kind} table rearranged after cos and sin "
                     "other than a whole head, or its first part (a partial rotary), times one "
                     "table twice along the last axis (or its rotate_half): only then does it "
                     "turn coordinates i and i + d/2 by one angle",
                     help="compute cos and sin of the angles laid out as Llama's "
                     "(cat(freqs, freqs).cos()), or write the model as a program")

    def rope_term(self, node, x, table: Trig):
        if table.rearranged:  # its entries moved after cos and sin (NeoMME's M-RoPE)
            return self._rearranged_term(node, x, table)
        if isinstance(x, Strided) and x.sign == 1:  # a half of each pair, by either table
            return RopeTerm(x, table.kind, table.angle, factor=table.factor)
        if table.kind == "cos" and isinstance(x, Sub) and x.sign == 1:
            return RopeTerm(x, "cos", table.angle, factor=table.factor)
        if table.kind == "cos" and not isinstance(x, (Sub, Rotated, RopeTerm)):
            x = self.vec(x, node)
            if x.tags[-1] == "dh":
                return RopeTerm(x, "cos", table.angle, factor=table.factor)
        if table.kind == "sin" and isinstance(x, Rotated):
            return RopeTerm(x.src, "sin", table.angle, factor=table.factor)
        if table.kind == "sin" and isinstance(x, Sub) and x.sign == 1:  # a half of each head
            return RopeTerm(x, "sin", table.angle, pairs="chunk",  # (_chunk_half)
                            factor=table.factor)
        raise refuse(node, f"a product with a {table.kind} table outside a rotary embedding")

    def rope_sum(self, node, u: RopeTerm, v: RopeTerm, alpha):
        if u.factor != v.factor:
            raise refuse(node, "a sum of cos and sin terms of tables scaled by different "
                         "numbers (no rotation times one number)")
        half = self._pair_half(u, v, alpha) or self._chunk_half(u, v, alpha)
        if half is not None:
            return half
        if "chunk" in (u.pairs, v.pairs):
            raise refuse(node, "a sum of cos and sin terms of a head's halves that is not one "
                         "half of a rotation (x1·cos − x2·sin, x2·cos + x1·sin with x1, x2 = "
                         "chunk(x, 2, -1))")
        kinds = {u.kind, v.kind}
        same = _key(u.src) == _key(v.src) and u.angle == v.angle
        if u.table is not None or v.table is not None:  # read from a table: ops_tables.py
            same = _key(u.src) == _key(v.src) and self.tables_rotate(node, u, v)
        if not same or kinds != {"cos", "sin"} or alpha != 1:
            raise refuse(node, "a sum of cos and sin terms that is not a rotation of one vector")
        return self._rotated(u.src, u.factor, node)

    def _rotated(self, src, factor: float = 1.0, node=None):
        """``src`` turned by a rotary: itself, its vector recorded as rotated; times
        ``factor`` where the tables were scaled (YaRN's attention_scaling: a number times a
        rotation, a coefficient on the vector)."""
        whole = src.src if isinstance(src, Sub) else src
        if whole.name not in self.out.rotary:
            self.out.rotary.append(whole.name)
        if factor == 1:
            return src
        if isinstance(src, Sub):
            raise refuse(node, "a partial rotary whose cos and sin tables are scaled by a "
                         "number (the turned part alone scaled)",
                         help="scale the whole head after the rotary, or the query instead")
        return Pointwise(src, lambda t, c=factor: c * t, node.name)

    @staticmethod
    def _chunk_half(u: RopeTerm, v: RopeTerm, alpha) -> PairHalf | None:
        """``x1·cos − x2·sin`` (the first half of each head turned) or ``x2·cos + x1·sin`` (the
        second), x1, x2 = chunk(x, 2, -1), both tables of one angle of d/2 entries: rotate_half's
        rotation of x, each angle the pair (i, i + d/2)'s, written out by halves (gpt-oss's);
        None for anything else."""
        cos, sin = (u, v) if u.kind == "cos" else (v, u)
        if not ((cos.kind, sin.kind, sin.pairs) == ("cos", "sin", "chunk")
                and isinstance(cos.src, Sub) and isinstance(sin.src, Sub)
                and cos.src.sign == sin.src.sign == 1 and cos.angle == sin.angle
                and cos.table is None and sin.table is None
                and _key(cos.src.src) == _key(sin.src.src)):
            return None
        if sin is u and alpha != 1:  # sin + alpha·cos: cos's coefficient is not 1
            return None
        sign = alpha if sin is v else 1  # sin's coefficient
        lo, hi = sorted(((cos.src.lo, cos.src.hi), (sin.src.lo, sin.src.hi)))
        if lo[1] != hi[0] or lo[1] - lo[0] != hi[1] - hi[0]:
            return None  # not the two halves of one range
        start = 0 if (cos.src.lo, sign) == (lo[0], -1) else 1 if (
            cos.src.lo, sign) == (hi[0], 1) else None
        if start is None:
            return None
        src = cos.src.src
        whole = src if (lo[0], hi[1]) == (0, src.dh) else Sub(src, lo[0], hi[1])
        return PairHalf(whole, start, halves=True, factor=cos.factor, angle=cos.angle)

    @staticmethod
    def _pair_half(u: RopeTerm, v: RopeTerm, alpha) -> PairHalf | None:
        """``x_e·cos − x_o·sin`` (the even coordinates of each pair turned) or
        ``x_o·cos + x_e·sin`` (the odd ones), x_e = x[..., ::2], x_o = x[..., 1::2], both
        tables of one angle; None for anything else."""
        if not (isinstance(u.src, Strided) and isinstance(v.src, Strided)
                and u.angle == v.angle and u.table is None and v.table is None
                and _key(u.src.src) == _key(v.src.src)):
            return None
        cos, sin = (u, v) if u.kind == "cos" else (v, u)
        if (cos.kind, sin.kind) != ("cos", "sin") or cos.src.start == sin.src.start:
            return None
        if sin is u and alpha != 1:  # sin + alpha·cos: cos's coefficient is not 1
            return None
        sign = alpha if sin is v else 1  # sin's coefficient
        if (cos.src.start, sign) in ((0, -1), (1, 1)):
            return PairHalf(cos.src.src, cos.src.start, factor=cos.factor, angle=cos.angle)
        return None
