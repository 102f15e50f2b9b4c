"""Sums, products and coordinatewise functions of per-token vectors."""

from __future__ import annotations

import dataclasses
import math

from .ops_conv import is_image
from .ops_headcat import refuse_param_dot
from .ops_layout import one_axis_averaged
from .values import (
    Affine,
    Aux,
    Conc,
    HeadGate,
    L2Norm,
    Looked,
    MeanSq,
    ParamFn,
    PEntry,
    Pointwise,
    PRef,
    RopeTerm,
    Scores,
    Strided,
    Sub,
    Trig,
    Vec,
    Zeroed,
)
from .walk import IDENTITY_OPS, VIEW_OPS
from .where import op_name, refuse, strip_prefix


def flat_param(x):
    """A param of one axis of features and axes of 1 (``[1, 1, n]``, checked against the other
    operand by ``_elementwise``) as the vector param it is; anything else as it is."""
    if isinstance(x, PRef) and len(x.shape) > 1 and x.rows is None and not x.t and \
            x.expert is None and x.cols is None and math.prod(x.shape) == max(x.shape):
        return PRef(x.target, (max(x.shape),))
    return x


def _zeros(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point() and not value.any()


class ArithOps:
    """Sums, products and coordinatewise functions of per-token vectors."""

    # -- sums and products -------------------------------------------------------------------
    def op_add(self, node, u, v, alpha=1):
        return self._lincomb(node, u, v, alpha)

    def op_sub(self, node, u, v, alpha=1):
        return self._lincomb(node, u, v, -alpha)

    def _lincomb(self, node, u, v, alpha):
        u, v = as_number(u), as_number(v)
        if isinstance(u, PEntry) or isinstance(v, PEntry):
            raise self.refuse_entry(node, "a sum with")
        scaled = self.scaled_param_added(node, u, v, alpha)  # c*v + c*p (ops_scaledparam)
        if scaled is not None:
            return scaled
        centred = self.norm_center(node, u, v, alpha)  # x - mean(x): a norm by hand (ops_norm)
        if centred is not None:
            return centred
        for x, c in ((u, v), (v, u)):  # u + alpha * v: w + alpha * c, or c + alpha * w
            if isinstance(x, PRef) and isinstance(c, (int, float)):
                return self._shifted(node, x, alpha * c if x is u else c, 1 if x is u else alpha)
        if isinstance(u, RopeTerm) and isinstance(v, RopeTerm):
            return self.rope_sum(node, u, v, alpha)
        for x, c in ((u, v), (v, u)):  # x + 0 is x, whatever x is (DeBERTa's logits + rel_att,
            # rel_att = 0 without relative attention): attention logits stay logits
            if isinstance(c, (int, float)) and not isinstance(c, bool) and c == 0 and not \
                    isinstance(x, (int, float)) and (x is u or alpha == 1):
                return x
        if isinstance(u, (int, float)) or isinstance(v, (int, float)):
            c = u if isinstance(u, (int, float)) else v
            x = v if isinstance(u, (int, float)) else u
            eps = alpha * c if x is u else c if alpha == 1 else None  # |x| + eps, eps + |x|
            if isinstance(x, MeanSq):
                return self.eps_added(node, x, eps)  # + eps under a root (ops_norm.py)
            if isinstance(x, L2Norm) and eps is not None and 0 < eps <= 1e-3:
                return x  # x / (|x| + eps): F.normalize's, eps aside (ops_norm.py)
            p = self.pointwise(node, x)
            sign = alpha if x is u else 1
            first = 1 if x is u else alpha
            return Pointwise(p.src, lambda t, f=p.f: first * f(t) + sign * c)
        if isinstance(u, Scores) and isinstance(v, Conc):
            return self._masked(node, u, v.value, additive=True)
        if isinstance(u, Zeroed) and isinstance(v, Conc):  # OpenAI GPT's mask completed
            return self.unzeroed(node, u, v, alpha)
        bias = self.head_bias(node, u, v, alpha)  # + b[None, None, :, None] (ops_gate.py)
        if bias is not None:
            return bias
        u, v = self.channel_params(node, u, v)  # image + b[:, None, None] (ops_spread.py)
        spread = self.spread_added(node, u, v, alpha)  # + a param per head (ops_spread.py)
        if spread is not None:
            return spread
        added = self.table_added(node, u, v)  # + a fixed table's rows (ops_tables.py)
        if added is not None:
            return self._lincomb(node, *added, alpha)
        for x, c in ((u, v), (v, u)):  # + a constant of zeros (BART's final_logits_bias)
            if isinstance(c, Conc) and not isinstance(x, (Conc, Aux)) and _zeros(c.value):
                return x
        self.refuse_gate_in_sum(node, u, v)  # a gate's broadcast added: no product (ops_gate)
        pair = self._same_source(node, u, v)
        if pair:
            return Pointwise(pair[0].src, lambda t, f=pair[0].f, g=pair[1].f: f(t) + alpha * g(t))
        self.refuse_image_broadcast(node, u, v, product=False)  # (ops_conv.py)
        self._elementwise(node, u, v, "sum")
        u, v = (x if isinstance(x, PRef) and len(x.shape) == 3 else flat_param(x) for x in (u, v))
        terms = []
        for x, c in ((u, 1), (v, alpha)):
            if isinstance(x, PRef) and len(x.shape) == 3:  # ViT's positions (ops_conv.py)
                terms.append((c, self.position_table(node, x)))
            elif isinstance(x, PRef):
                terms.append((c, self.vector_param(x, node)))
            else:
                terms.append((c, self.vec(x, node)))
        if not any(isinstance(t, Vec) for _, t in terms):  # p + q, p + p: no vector of the
            # program to add them to (a param read as a vector op's operand or a matmul's)
            raise refuse(node, "a sum of two params (or of a param with itself): the "
                         "language's params enter the program as they are, each read by a "
                         "vector op or a matmul", help="add each param to the vector in "
                         "turn, (x + p) + q, or fold the sum into one param")
        # the widest (a row of a param, no tokens, broadcast over another's: _elementwise)
        vec = max((t for _, t in terms if isinstance(t, Vec)), key=lambda t: len(t.tags))
        expr = ""
        for c, t in terms:
            name = t.name if isinstance(t, Vec) else t
            sign = "-" if c < 0 else "+"
            coef = "" if abs(c) == 1 else f"{abs(c)!r} * "
            expr += f" {sign} {coef}{name}" if expr else f"{'-' if c < 0 else ''}{coef}{name}"
        made = None  # W @ x (no bias of its own) plus a vector param b: linear in (W, b)
        for (_, t), (_, p), ref in ((terms[0], terms[1], v), (terms[1], terms[0], u)):
            if isinstance(t, Vec) and isinstance(p, str) and isinstance(ref, PRef) \
                    and len(ref.shape) == 1:
                made = self.added_bias(t.name, p)
        name = self.emit_vector(node.name, expr, made)
        return Vec(name, vec.tags, vec.dim, vec.dh)

    def added_bias(self, x: str, b: str) -> tuple | None:
        """(W, b) where the program's vector ``x`` is a layer's ``W @ x'`` with no bias of its
        own and ``b`` a vector param added to it (DeBERTa's ``q + q_bias``, the bias a param of
        the attention's, not of its ``in_proj``): the sum is linear in W and b as ``W @ x' +
        b`` of one layer is, so a multiplier on it (attention's scale on a query) can move
        into both (apply folds it into b apart where a patch on the layer's output scales W @
        x' alone: query_fold.py); None otherwise (a gain's product, a bias of its own, or
        W @ x' times a number first: a width constant there would scale W @ x' and not b,
        which the check's reading of the layer's vectors, each carrying every fold, is not)."""
        w, bias = self.out.producers.get(x, (None, None))
        rhs = next((st.partition(" = ")[2] for st in self.out.stmts
                    if st.partition(" = ")[0] == x), "")
        if w is None or bias is not None or not rhs.startswith(f"{w} @ ") or "+" in rhs:
            return None
        return (w, b)

    def _elementwise(self, node, u, v, what: str) -> None:
        """Refuses a sum or product that the program's ``u + v`` / ``u * v`` would not compute
        as torch does: a vector param's entries broadcast over an axis other than the other
        operand's features (or head dim), or two vectors of different dims. Torch
        broadcasts a param of T entries over the tokens of ``x.transpose(1, 2)`` and a vector of
        one feature over another's n; the program would scale features, or not parse."""
        for i, (p, x) in enumerate(((u, v), (v, u))):
            if isinstance(p, PRef) and len(p.shape) != 3 and not isinstance(x, PRef):
                self._param_broadcast(node, i, p, x, what)
        if isinstance(u, PRef) or isinstance(v, PRef):
            return
        a, b = self.vec(u, node), self.vec(v, node)
        if a.dim != b.dim:
            raise refuse(node, f"a {what} of a vector of {a.dim} features and one of {b.dim} "
                         "(torch broadcasts the one of a single feature over the other's; the "
                         "language combines vectors coordinate by coordinate)",
                         help="give both terms the same features (e.g. a linear layer to n "
                         "features rather than 1), or write the model as a program")
        short, long = sorted((a, b), key=lambda x: len(x.tags))
        if short.tags == ("F",) and long.tags != ("F",) and (long.tags[-1] != "F" or tuple(
                node.meta["val"].shape) != self._shape(node.args[(a, b).index(long)])):
            # a vector of no tokens (a row of a param read as it is, ops_entries.py) is the
            # same for every token only where it falls on the other's features
            raise refuse(node, f"a {what} of a vector of axes {list(short.tags)} with one of "
                         f"axes {list(long.tags)}: torch broadcasts the one over the other's "
                         "axes other than its features, which the language's vectors, one "
                         "value per token, do not say",
                         help="give both terms the same axes, or write the model as a program")

    def _param_broadcast(self, node, i, ref: PRef, x, what: str) -> None:
        arg, other = node.args[i], node.args[1 - i]
        while op_name(arg) in IDENTITY_OPS and arg.args:  # HRM's z.expand_as(x).contiguous()
            arg = arg.args[0]
        if op_name(arg) == "expand_as":  # b.expand_as(x) + x: torch's own broadcast of b
            arg = arg.args[0]  # (GPT-NeoX-Japanese's attention bias), read as b's shape
        shape = tuple(getattr(getattr(arg, "meta", {}).get("val"), "shape", ref.shape))
        xshape = tuple(getattr(getattr(other, "meta", {}).get("val"), "shape", ()))
        tags = tuple(self._tags(x, node))
        vec = self.vec(x, node)
        axes = [k for k, s in enumerate(shape) if s != 1]
        ok = xshape == tuple(node.meta["val"].shape) and len(shape) <= len(tags)
        if ok and axes:
            tag = tags[len(tags) - len(shape) + axes[-1]]
            ok = len(axes) == 1 and (tag == "F" and shape[axes[0]] == vec.dim or
                                     tag == "dh" and shape[axes[0]] == vec.dh)
        elif ok:  # one entry: one number for every coordinate, as the program's [f1] param
            ok = len(shape) > 0
        if not shape:
            raise refuse(node, f"a {what} with the 0-d param {strip_prefix(ref.target)} (the "
                         "language's params have at least one axis)",
                         help="give it one entry, nn.Parameter(torch.ones(1)): a number for "
                         "every coordinate")
        if not ok:
            raise refuse(node, f"a {what} of the param {strip_prefix(ref.target)} of shape "
                         f"{list(shape)} with a value of shape {list(xshape)} whose features "
                         "are not the axis the param's entries fall on: torch broadcasts it "
                         "over another axis (the tokens, the batch), which the language's "
                         "vector param, one entry per feature, does not",
                         help="lay the param out along the features (the last axis of a "
                         "(batch, tokens, features) value), or write the model as a program")

    def _shifted(self, node, ref: PRef, offset: float, coef) -> PRef:
        """``w + c``: a param of its own in the program, whose init is w's plus c (Gemma's
        RMSNorm gain ``1 + w``, w initialised to 0, is a gain of init 1). µP is the gain's, and
        w's init and LR get it: adding a constant changes neither its updates nor its
        gradient."""
        init = self.base.get(ref.target, ("normal", 1.0))
        if coef != 1 or len(ref.shape) != 1 or init[0] != "const":
            raise refuse(
                node,
                "a constant added to a param other than a vector param of constant init "
                "(as Gemma's gain 1 + w, w = 0 at init)",
                help="add the constant to a vector param initialised to a constant, or fold "
                "the constant into the param's init",
            )
        return dataclasses.replace(ref, offset=ref.offset + offset)

    def _same_source(self, node, u, v):
        """Both operands as functions of one vector, when one is already such a function."""
        kinds = (Vec, Affine, Pointwise)
        if not (isinstance(u, kinds) and isinstance(v, kinds)) or not (
            isinstance(u, Pointwise) or isinstance(v, Pointwise)
        ):
            return None
        pu, pv = self.pointwise(node, u), self.pointwise(node, v)
        return (pu, pv) if pu.src.name == pv.src.name else None

    def pointwise(self, node, x) -> Pointwise:
        if isinstance(x, Pointwise):
            return x
        x = self.vec(x, node)
        return Pointwise(x, lambda t: t)

    def op_multiply(self, node, u, v):  # torch.multiply, torch.mul's alias (ConvBERT's)
        return self.op_mul(node, u, v)

    def op_mul(self, node, u, v):
        u, v = as_number(u), as_number(v)
        entry = self.entry_product(node, u, v)  # p[i] * h: a 1-D param's entry (ops_entries)
        if entry is not None:
            return entry
        norm = self.norm_mul(node, u, v)  # a layer norm written by hand (ops_norm.py)
        if norm is not None:
            return norm
        rope = self.table_rope(node, u, v)  # rotary's cos or sin from a table (ops_tables.py)
        if rope is not None:
            return rope
        gained = self.fixed_gain(node, u, v)  # a constant vector over the features
        if gained is not None:  # (ops_fixedgain.py)
            return gained
        kept = self.token_mask(node, u, v)  # a padding mask (ops_pointwise.py)
        if kept is not None:
            return kept
        zeroed = self.zeroed(node, u, v)  # logits times a 0/1 mask (ops_attention.py)
        if zeroed is not None:
            return zeroed
        self.lightning_decay(node, u, v)  # scores times a fixed decay (ops_lightning.py)
        if any(isinstance(x, (Aux, Looked)) for x in (u, v)):  # (a table's rows: no rotary)
            aux = next(x for x in (u, v) if isinstance(x, (Aux, Looked)))
            buffer = aux.buffer if isinstance(aux, Aux) else strip_prefix(aux.target)
            what = f"the buffer {buffer}" if buffer else "a buffer"
            if getattr(aux, "lost", ""):  # a rotary's table rearranged (NeoMME's M-RoPE)
                raise refuse(node, "a product with a rotary cos/sin table that the trace lost "
                             f"track of at {aux.lost}: it follows one through casts, added "
                             "axes, slices, a repeat_interleave and a product with a number, "
                             "so it cannot tell what rotation the product makes",
                             help="compute cos and sin of the angles laid out as Llama's "
                             "(cat(freqs, freqs).cos()), or write the model as a program")
            raise refuse(
                node,
                f"a product with {what}, of more than one float entry: the trace reads a "
                "buffer's entries only where it holds one number (a constant of the width), "
                "integer ids (positions, token types) or 0s and 1s (an attention mask), so it "
                "cannot tell what the product does (a table of rotary sin/cos, a mask of "
                "other values)",
                help="mask attention with sdpa's is_causal=True or masked_fill with a boolean "
                "mask; compute a rotary embedding's cos and sin in the forward from the "
                "positions (as HF Llama's does); or multiply by a number or a one-entry buffer",
            )
        for a, b in ((u, v), (v, u)):
            if isinstance(b, Trig):
                return self.rope_term(node, a, b)
            if isinstance(a, (Sub, Strided)) and b in (1, -1):  # rotate_half's negated half
                return dataclasses.replace(a, sign=a.sign * int(b))
        if isinstance(v, (int, float)) or isinstance(u, (int, float)):
            c, x = (v, u) if isinstance(v, (int, float)) else (u, v)
            if isinstance(x, Scores) and x.cap is not None:  # c * tanh(logits): the cap's
                return self.capped_scores(node, x, lambda t: c * t)
            if isinstance(x, Scores) and x.bias is not None:  # c * (s + b): not c's logits
                raise refuse(node, "a number multiplying attention logits after a relative "
                             "position bias was added to them", help="scale the logits before "
                             "adding the bias (T5's order), or write the model as a program")
            if isinstance(x, Scores):
                return Scores(x.q, x.k, x.factor * c, node.name, x.tags, x.causal)
            if isinstance(x, PRef):  # c * p kept for c * v + c * p (ops_scaledparam.py)
                kept = self.scaled_param(node, x, c)
                if kept is None:
                    raise _refuse_param_times_number(node, x, c)
                return kept
            p = self.pointwise(node, x)
            return Pointwise(p.src, lambda t, f=p.f: c * f(t))
        for a, b in ((u, v), (v, u)):
            if isinstance(b, MeanSq) and b.inv:
                scaled = isinstance(a, Pointwise) and a.src.name == b.src.name and times_of(
                    a.f, b.k**0.5)
                if _reads(a, b.src) and b.k == 1 and not b.centered and not b.over:
                    # (W @ x) * rsqrt(mean(x²) + eps) = W @ rmsnorm(x): a layer of the norm's
                    # input, normalised after it (HY v4's and DeepSeek-V4's hyper-connection
                    # weights, F.linear(flat, fn) * input_norm(flat))
                    normed = self.fresh(f"{node.name}_normed")  # no graph node holds it
                    self.out.stmts.append(f"{normed} = rmsnorm({b.src.name})")
                    x = Vec(normed, b.src.tags, b.src.dim)
                    return dataclasses.replace(a, x=x, node=node.name, layer=a.layer or a.node)
                a = self.vec(a, node)
                if a.name != b.src.name and not scaled:
                    raise refuse(node, "a product with another vector's inverse RMS")
                name = self.emit_vector(node.name, f"rmsnorm({self.norm_args(a)})")
                return Vec(name, a.tags, a.dim, a.dh)
        # x * g.unsqueeze(-1) of g per head, an image times a gate per pixel (ops_gate.py)
        gated = self.head_gated(node, u, v) or self.pixel_gated(node, u, v) or \
            self.head_bias(node, u, v, 1, product=True) or \
            self.over_tokens_mul(node, u, v)  # a vector per sequence times each token's
        if gated is not None:
            return gated
        pair = self._same_source(node, u, v)
        if pair:
            return Pointwise(pair[0].src, lambda t, f=pair[0].f, g=pair[1].f: f(t) * g(t))
        u, v = self.channel_params(node, u, v)  # g[:, None, None] * image (ops_spread.py)
        self.refuse_image_broadcast(node, u, v, product=True)  # (ops_conv.py)
        offset = self.offset_product(node, u, v)  # (g(x) + c) * y (ops_pointwise.py)
        if offset is not None:
            return offset
        if isinstance(u, PRef) and isinstance(v, PRef):
            refuse_param_dot(node, u, v)
            raise refuse(node, "a product of two params (or of a param with itself): the "
                         "language's params enter the program as they are, each read by a "
                         "vector op or a matmul", help="multiply a vector by each param in "
                         "turn, g1 * (g2 * x), or write the model as a program")
        self._elementwise(node, u, v, "product")
        u, v = flat_param(u), flat_param(v)  # a layer scale stored as [1, 1, n]: the vector param
        names = []
        for x in (u, v):
            names.append(
                self.vector_param(x, node) if isinstance(x, PRef) else self.vec(x, node).name
            )
        vec = max((self.vec(x, node) for x in (u, v) if not isinstance(x, PRef)),
                  key=lambda t: len(t.tags))  # the widest, as in a sum
        name = self.emit_vector(node.name, f"{names[0]} * {names[1]}")
        gains = [n for n, x in zip(names, (u, v), strict=True) if isinstance(x, PRef)]
        if len(gains) == 1:
            # g * x is linear in the gain g as W @ x is in W: a multiplier on the product
            # (attention's scale on a normalised query) folds into g's init and LR
            self.out.producers[name] = (gains[0], None)
        return Vec(name, vec.tags, vec.dim, vec.dh)

    def op_div(self, node, u, v):
        v = as_number(v)
        if isinstance(v, Conc) and self._shape(node) == self._shape(node.args[0]):
            v = _equal_entries(v)  # a count per sequence, the same for each (ops_pool.py)
        norm = self.norm_div(node, u, v)  # x / sqrt(mean(x²) + eps) (ops_norm.py)
        if norm is not None:
            return norm
        if not isinstance(v, (int, float)):
            raise refuse(node, "a division by a tensor")
        return self.op_mul(node, u, 1.0 / v)

    def op_neg(self, node, u):
        return self.op_mul(node, u, -1.0)

    def _apply(self, node, x, fn):
        if isinstance(x, Scores):  # a function of attention logits (a soft-cap)
            return self.capped_scores(node, x, fn)
        if isinstance(x, (PRef, ParamFn)):  # sigmoid(w): a function of a param (ops_paramfn)
            return self.coordinatewise(node, x, fn)
        if isinstance(x, HeadGate):  # f(g.view(..., H, 1)): a per-head gate still (ops_gate)
            return self.head_gate_fn(node, x, fn)
        p = self.pointwise(node, x)
        return Pointwise(p.src, lambda t, f=p.f: fn(f(t)))

    def op_gelu(self, node, x, approximate="none"):
        import torch

        return self._apply(node, x, lambda t: torch.nn.functional.gelu(t, approximate=approximate))

    def op_relu(self, node, x):
        return self._apply(node, x, lambda t: t.clamp(min=0))

    def op_silu(self, node, x):
        return self._apply(node, x, lambda t: t * t.sigmoid())

    def op_tanh(self, node, x):
        return self._apply(node, x, lambda t: t.tanh())

    def op_sigmoid(self, node, x):
        return self._apply(node, x, lambda t: t.sigmoid())

    def op_hardswish(self, node, x):
        """``F.hardswish`` (``nn.Hardswish``), x·relu6(x + 3)/6: its kinks at ±3 lie inside
        the [-4, 4] on which a chain is identified, so its values name it."""
        return self._apply(node, x, lambda t: t * (t + 3).clamp(0, 6) / 6)

    def op_hardsigmoid(self, node, x):
        """``F.hardsigmoid`` (``nn.Hardsigmoid``), relu6(x + 3)/6, identified likewise."""
        return self._apply(node, x, lambda t: (t + 3).clamp(0, 6) / 6)

    def op_elu(self, node, x, alpha=1.0, scale=1.0, input_scale=1.0):
        """``F.elu`` (``nn.ELU``): at alpha 1 the language's elu, identified by its values as
        any chain is; another alpha or scale is no multiple of it, and is refused there."""
        import torch

        return self._apply(node, x, lambda t: scale * torch.nn.functional.elu(
            input_scale * t, alpha))

    def op_erf(self, node, x):
        return self._apply(node, x, lambda t: t.erf())

    def op_pow(self, node, x, e):
        norm = self.norm_pow(node, x, e)  # Gemma 4's pow(mean(x²) + eps, -0.5) (ops_norm.py)
        if norm is not None:
            return norm
        if e == 2 and isinstance(x, (Vec, Affine)):
            p = self.pointwise(node, x)
            return Pointwise(p.src, lambda t, f=p.f: f(t) ** 2)
        p = self.pointwise(node, x)
        return Pointwise(p.src, lambda t, f=p.f: f(t) ** e)

    def op_mean(self, node, x, dims=None, keepdim=False, **kw):
        ndim = len(self._shape(node.args[0]))
        if op_name(node.args[0]) in VIEW_OPS and one_axis_averaged(node.args[0]):
            return x  # an axis of 1 a view added, averaged: x itself (ops_layout.py)
        dims = list(dims) if dims else list(range(ndim))  # none given: every entry's mean
        if is_image(x):  # over the pixels: a global pool (ops_conv.py)
            return self.image_mean(node, x, dims, keepdim)
        norm = self.norm_mean(node, x, dims, ndim)  # a layer norm's mean (ops_norm.py)
        if norm is not None:
            return norm
        # a mean square over the last axis is a norm's only where that axis is the vector's
        # coordinates (a head's): of a channels-first [B, C, T] value it is over the tokens
        if isinstance(x, Pointwise) and [d % ndim for d in dims] == [ndim - 1] \
                and tuple(getattr(x.src, "tags", ()))[-1:] in (("F",), ("dh",)):
            import torch

            t = torch.linspace(-3, 3, 13, dtype=torch.float64)
            k = float(x.f(torch.ones(1, dtype=torch.float64)))  # (c * x)² = c² x²: Gemma's
            if k > 0 and torch.allclose(x.f(t), k * t * t):  # embedding times sqrt(d) is normed
                return MeanSq(x.src, k=k)
        axes = sorted(d % ndim for d in dims)
        pooled = self.token_mean(node, x, axes, keepdim)  # over the tokens (ops_pool.py)
        if pooled is not None:
            return pooled
        tags = getattr(x.src if isinstance(x, Pointwise) else x, "tags", None)
        said = {
            "tok": "a token axis, batch or sequence",
            "F": "the vector's coordinates",
            "H": "the heads",
            "dh": "a head's coordinates",
        }
        what = ", ".join(
            f"axis {d} ({said.get(tags[d], tags[d]) if tags and d < len(tags) else 'unknown'})"
            for d in axes
        )
        if tags and any(d < len(tags) and tags[d] == "tok" for d in axes):
            raise refuse(
                node,
                f"a mean over {what}: the language's vectors are per token, and pooling over "
                "tokens is not one of its ops",
                help="keep the forward per token (e.g. read out every token's logits, and pool "
                "the loss instead)",
            )
        raise refuse(node, f"a mean over {what} other than RMSNorm's mean square of the last axis")

    def op_rsqrt(self, node, x):
        if isinstance(x, MeanSq):  # of the mean square itself, not of its root or inverse
            return self.norm_pow(node, x, -0.5)
        raise refuse(node, "rsqrt of anything but a mean square")


def as_number(x):
    """A one-entry constant tensor (``torch.tensor(d ** 0.5)``) as the number it holds."""
    if isinstance(x, Conc) and getattr(x.value, "numel", lambda: 0)() == 1:
        return float(x.value)
    return x


def _equal_entries(x: Conc):
    """A constant tensor of one value repeated (SigLIP2's token count per image, [B, 1]) that
    divides a value of the quotient's shape: that number; else the constant as it is."""
    import torch

    value = x.value
    if isinstance(value, torch.Tensor) and value.numel() and \
            x.probe is None and bool((value == value.flatten()[0]).all()):
        return float(value.flatten()[0])
    return x


def times_of(f, c: float) -> bool:
    """Whether f(t) = ±c·t: the vector a mean square of (c·x)² was taken of."""
    import torch

    t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    return bool(torch.allclose(f(t).abs(), c * t.abs(), rtol=1e-9, atol=1e-12))


def _reads(a, x) -> bool:
    """Whether ``a`` is a linear layer of ``x`` with no bias: a whole param [out, in] (a bias
    would not commute with the norm's factor)."""
    return isinstance(a, Affine) and isinstance(a.x, Vec) and a.x.name == x.name and \
        a.b is None and isinstance(a.w, PRef) and not (a.w.rows or a.w.cols or a.w.period
                                                       or a.w.expert is not None or a.dh)


def _refuse_param_times_number(node, x, c):
    return refuse(node, f"a param ({strip_prefix(x.target)}) times a number ({c:g}) before its "
                  "use: the language's params enter the program as they are, so a number on a "
                  "param itself (nGPT's scales: Dory's sqk * sqk_scale, a number that may change "
                  "with the width) would be its multiplier, which the trace does not read from "
                  "the forward", help="fold the number into the param (its init times the "
                  "number, and under Adam its LR too: the same training), or multiply the "
                  "vector the param multiplies by it instead, w * (c * h), h a layer's output")
