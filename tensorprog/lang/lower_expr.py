"""Expressions to IR: one ``expr_<Class>`` per expression node, and the ``op_<operator>`` rules.

Lowering an expression gives a pending value: a constant, a matrix param (only ``@`` applies it), or
a linear combination of named vectors that the consuming node may extend. The statement lowering
(:mod:`tensorprog.lang.lower`) inherits :class:`ExpressionLowering` and sets up its state.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from fractions import Fraction

from ..errors import Span
from ..ir.functions import AT, CAT, DWCONV, MUL, NONLINEARITIES, PART, POOLS, SHIFT, SPREAD, pooled
from ..ir.program import (
    FLOAT_MAX,
    FLOAT_MIN,
    RELATIVE_KINDS,
    Dot,
    LinComb,
    MatMul,
    Mean,
    Nonlin,
    Prepend,
    heads_dim,
    in_float_range,
    per_head,
)
from .ast import BinOp, Call, Neg, Num, Repeat, Transpose, Var
from .lower_arity import GROUP_NORMS, arity_fits, norm_group
from .lower_at import at_operands, lower_at
from .lower_cat import cat_operands, lower_cat
from .lower_conv import CONV, lower_conv
from .lower_ddot import DDOT, ddot_operands, lower_ddot
from .lower_delta import DELTA, delta_operands, lower_delta
from .lower_dwconv import depthwise_misuse, lower_dwconv
from .lower_first import MEAN, first_readable, lower_mean, mark_tokens, mean_start
from .lower_hdot import HDOT, hdot_operands, lower_hdot
from .lower_mix import lower_mix, mix_operands
from .lower_part import lower_part, part_operands
from .lower_pick import PICK, lower_pick, pick_operands
from .lower_place import PLACE, lower_place, place_operands
from .lower_prepend import PREPEND, lower_prepend, prepend_seq
from .lower_relayout import RELAYOUTS, lower_relayout, relayout_operands
from .lower_rms import RMS, lower_rms, rms_operands
from .lower_route import ROUTES, lower_route
from .lower_shift import lower_shift, shift_operands
from .lower_sink import SINKS, lower_sink
from .lower_spread import lower_spread, spread_operands
from .lower_ssd import SSD, lower_ssd, ssd_operands
from .lower_tconv import TCONV, lower_tconv, tconv_operands
from .lower_wkv import WKV, lower_wkv, wkv_operands
from .pending import Matrix, Scalar, Vec
from .syntax import magnitude

# besides values: dims (spread, part, cat, pick, rms), an index (part), tokens (shift, place),
# windows (at), a kernel's first token (tconv)
_OPERANDS = {SPREAD: spread_operands, PART: part_operands, SHIFT: shift_operands,
             TCONV: tconv_operands,
             CAT: cat_operands, AT: at_operands, PLACE: place_operands, PICK: pick_operands,
             RMS: rms_operands, SSD: ssd_operands, DDOT: ddot_operands, WKV: wkv_operands,
             HDOT: hdot_operands}
FUNCTIONS = (NONLINEARITIES + ("dot", "mix", DELTA) + ROUTES
             + (PREPEND, MEAN, CONV, DWCONV, SPREAD, PART)
             + (SHIFT, TCONV, CAT, AT, PLACE, PICK, RMS, SSD, DDOT, WKV, HDOT) + RELAYOUTS)


class ExpressionLowering:
    """The expression half of the lowering (a mixin of :class:`tensorprog.lang.lower._Lowering`)."""

    def name_of(self, v: Vec, span: Span) -> str:
        """A single name for a pending combination, emitting a LinComb if it is not one already."""
        name = v.single()
        if name is not None:
            return name
        self.check_coefficients(v, span)
        return self.emit(LinComb(self.fresh(self.target), v.items(), span, v.const), v.dim)

    def check_coefficients(self, v: Vec, span: Span) -> None:
        """Coefficients multiply out exactly; later stages need them as floats."""
        self.in_range(v, v.terms.values(), span)

    def vec(self, name: str, dim: str | None) -> Vec:
        """One named value as a pending combination."""
        pixels = frozenset() if name in self.param_names else frozenset((self.pixels.get(name),))
        return Vec({name: Fraction(1)}, dim, pixels)

    def emit(self, ins, dim: str | None) -> str:
        self.body.append(ins)
        self.values[ins.out] = dim
        mark_tokens(self, ins.out, ins.operands, ins.span,
                    getattr(ins, "fn", None) in ("first", "last") or isinstance(ins, Mean),
                    getattr(ins, "fn", None) == MUL or isinstance(ins, Prepend))
        sizes = {self.pixels[o] for o in ins.operands if o in self.pixels}
        fn = getattr(ins, "fn", None)
        if sizes and fn != "global_pool":  # still has an image's spatial axes
            (h, w), = sizes if len(sizes) == 1 else [max(sizes)]
            self.pixels[ins.out] = pooled(fn, (h, w)) if fn in POOLS else (h, w)
        return ins.out

    def expr(self, root):
        """Lower an expression tree bottom-up: operands first, left to right, then the node.

        An explicit stack instead of recursion: a sum of thousands of terms, or a thousand nested
        calls, is a tree that deep. ``enter_<Class>`` names a node's operands (and any state its
        ``expr_<Class>`` needs); ``expr_<Class>(node, operands, state)`` combines their values.
        """
        results: list = []
        stack: list = [(root, None, None)]  # (node, operands or None before entering, state)
        while stack:
            node, operands, state = stack.pop()
            kind = type(node).__name__
            if operands is None:
                enter = getattr(self, f"enter_{kind}", None)
                operands, state = enter(node) if enter is not None else ((), None)
                if operands is None:  # refused before its operands were looked at
                    results.append(None)
                    continue
                stack.append((node, operands, state))
                stack.extend((op, None, None) for op in reversed(operands))
                continue
            values = results[len(results) - len(operands):]
            del results[len(results) - len(operands):]
            results.append(getattr(self, f"expr_{kind}")(node, values, state))
        (value,) = results
        return value

    def expr_Num(self, node: Num, _values, _state):
        return Scalar(node.value)

    def expr_Var(self, node: Var, _values, _state):
        name = self.resolve(node.name)
        if name in self.poisoned:
            return None  # its definition already reported an error
        if name in self.values:
            return self.vec(name, self.values[name])
        if name in self.matrices:
            return Matrix(name)
        if self.depth is not None and name == self.depth.name:
            self.errors.error(f"'{name}' is the depth, not a vector", node.span,
                              f"the depth only counts repetitions: `repeat {name} blk(h0)`")
            return None
        if name in self.block_defs:
            self.errors.error(f"'{name}' is a block, not a vector", node.span,
                              f"apply it: `{name}(h0)` once, or `repeat L {name}(h0)`")
            return None
        if node.name in self.dims:
            self.errors.error(f"'{node.name}' is a dim, not a vector", node.span,
                              "dims appear only in shapes; width-dependent constants are derived "
                              "by the engine, not written")
            return None
        self.undefined(node.name, node.span)
        return None

    def expr_Transpose(self, node: Transpose, _values, _state):
        name = self.resolve(node.name)
        if name in self.matrices and len(self.matrices[name].shape) == 4:
            self.errors.error(f"'{node.name}.T': a convolution kernel cannot be transposed",
                              node.span, "tie only matrices [m, k]")
            return None
        if name in self.matrices:
            return Matrix(name, transposed=True)
        if node.name in self.values or node.name in self.dims:
            self.errors.error(f"'{node.name}.T': only a matrix param can be transposed", node.span,
                              "write `W.T @ x` for a param `W : [m, k]` and x of dim m")
            return None
        self.undefined(node.name, node.span)
        return None

    def enter_Neg(self, node: Neg):
        return (node.arg,), None

    def expr_Neg(self, node: Neg, values, _state):
        return self.scale(values[0], Fraction(-1), node.span)

    def scale(self, v, k: Fraction, span: Span):
        """``k * v``: a constant folds, a combination's coefficients multiply."""
        if v is None:
            return None
        if isinstance(v, Scalar):
            return self.in_range(Scalar(v.value * k), [v.value * k], span)
        if isinstance(v, Matrix):
            self.errors.error(f"cannot scale the matrix {v.name} directly", span,
                              f"scale the product instead: `k * ({v.name} @ x)`")
            return None
        if k == 0:
            self.errors.error("multiplying by 0 gives a zero vector", span,
                              "remove the term: a zero vector carries nothing for the engine "
                              "to scale")
            return None
        out = Vec({n: c * k for n, c in v.terms.items()}, v.dim, v.pixels, v.const * k)
        return self.in_range(out, [*out.terms.values(), *([out.const] if out.const else [])],
                             span)

    def in_range(self, v, coefficients, span: Span):
        """``v``, or None (reported here) if a coefficient left the float range. Checked at
        every product, not only where a combination is named: a chain of 15,000 divisions
        would otherwise multiply out a fraction of thousands of digits, ever slower, before
        the one check saw it."""
        bad = next((c for c in coefficients if not in_float_range(c)), None)
        if bad is None:
            return v
        self.errors.error(f"a coefficient here, about {magnitude(bad)}, is out of range", span,
                          f"a nonzero coefficient must lie between {FLOAT_MIN:.3g} and "
                          f"{FLOAT_MAX:.3g} in size (a float's normal range)")
        return None

    def enter_BinOp(self, node: BinOp):
        return (node.left, node.right), None

    def expr_BinOp(self, node: BinOp, values, _state):
        left, right = values
        if left is None or right is None:
            return None
        return getattr(self, {"+": "op_add", "-": "op_sub", "*": "op_mul", "/": "op_div",
                              "@": "op_matmul"}[node.op])(left, right, node)

    def matrix_misuse(self, m: Matrix, node) -> None:
        self.errors.error(f"the matrix param {m.name} can only be applied with @", node.span,
                          f"write `{m.name} @ x` for a vector x of its fan-in dim")

    def pixel_clash(self, vecs, node, gate=False) -> bool:
        """Vectors combined elementwise must agree on their pixels (a param broadcasts; in a
        product, ``gate``, a vector of no pixels scales every pixel of an image alike)."""
        sizes = frozenset().union(*(v.pixels for v in vecs if isinstance(v, Vec)))
        if gate and len(sizes) == 2 and None in sizes:  # a gate per channel (squeeze-excite)
            return False
        if len(sizes) > 1:
            text = ", ".join("no pixels" if z is None else f"{z[0]}x{z[1]} pixels"
                             for z in sorted(sizes, key=str))
            self.errors.error(f"these values have different spatial sizes ({text})", node.span,
                              "combine values of the same image size; pool first, or "
                              "global_pool both")
            return True
        return False

    def elementwise_refused(self, a, b, node, gate=False) -> bool:
        """Whether the operands of a sum or a product are refused (and reported): a matrix
        param, or images of different sizes."""
        for v in (a, b):
            if isinstance(v, Matrix):
                self.matrix_misuse(v, node)
                return True
        return self.pixel_clash((a, b), node, gate)

    def op_add(self, a, b, node, sign=Fraction(1)):
        if self.elementwise_refused(a, b, node):
            return None
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return Scalar(a.value + sign * b.value)
        if isinstance(a, Scalar) or isinstance(b, Scalar):
            return self.shifted(a, b, node, sign)
        dim = a.dim
        if not self.same_dim(a.dim, b.dim):
            # a vector param of a head dim (a QK-layernorm's bias, Persimmon's): added to every
            # head alike, as a per-head gain multiplies them
            dim = self.per_head_gain(a, b)
            if dim is None:
                self.errors.error(f"shape mismatch in '{'+' if sign > 0 else '-'}': "
                                  f"{self.dim_text(a.dim)} and {self.dim_text(b.dim)}", node.span,
                                  "both sides of an elementwise sum need the same dim")
                return None
            if self.heads(dim, b.dim if dim == a.dim else a.dim, node) is None:
                return None
        merged = a.terms  # a is consumed here: extend it in place
        for n, c in b.terms.items():
            total = merged.get(n, 0) + sign * c
            if total:
                merged[n] = total
            else:
                merged.pop(n, None)
        if not merged:
            self.errors.error("this sum cancels to zero", node.span, "remove it")
            return None
        return Vec(merged, dim, a.pixels | b.pixels, a.const + sign * b.const)

    def shifted(self, a, b, node, sign: Fraction):
        """``c + v`` (or ``v + c``, ``c - v``): a number added to every coordinate of v, only
        where v is computed from params alone (a function of a gain: Ergo's ``sqrt(1 +
        sigmoid(w))``); a per-token vector takes a bias param instead."""
        c, v = (a, b) if isinstance(a, Scalar) else (b, a)
        if not self.of_params(v):
            self.errors.error("cannot add a constant to a vector computed from the inputs (only "
                              "to a function of params, as in 1 + sigmoid(w))", node.span,
                              "use a bias param instead: `param b : [n]` and `h = W @ x + b`")
            return None
        if v is b:  # c ± v
            v = self.scale(v, sign, node.span) if sign != 1 else v
            shift = c.value
        else:  # v ± c
            shift = sign * c.value
        if v is None:
            return None
        return Vec(dict(v.terms), v.dim, v.pixels, v.const + shift)

    def of_params(self, v: Vec) -> bool:
        """Is every term of v a param, or computed from params alone (ir/ranges.of_params)?"""
        made = set(self.param_names)
        for ins in self.body:
            if isinstance(ins, (LinComb, Nonlin)) and all(o in made for o in ins.operands):
                made.add(ins.out)
        return all(n in made for n in v.terms)

    def op_sub(self, a, b, node):
        return self.op_add(a, b, node, Fraction(-1))

    def op_mul(self, a, b, node):
        if self.elementwise_refused(a, b, node, gate=True):
            return None
        if isinstance(a, Scalar):
            return self.scale(b, a.value, node.span)
        if isinstance(b, Scalar):
            return self.scale(a, b.value, node.span)
        if (a.dim is None) != (b.dim is None):  # a scale (or a scalar) times a vector
            names = (self.name_of(a, node.span), self.name_of(b, node.span))
            dim = a.dim if a.dim is not None else b.dim
            out = self.emit(Nonlin(self.fresh(self.target), MUL, names, node.span), dim)
            return self.vec(out, dim)
        gain = self.per_head_gain(a, b)
        if gain is not None:  # each head times the same gain (QK-norm's): the heads' dim
            if self.heads(gain, b.dim if gain == a.dim else a.dim, node) is None:
                return None
            names = (self.name_of(a, node.span), self.name_of(b, node.span))
            out = self.emit(Nonlin(self.fresh(self.target), MUL, names, node.span), gain)
            return self.vec(out, gain)
        if not self.same_dim(a.dim, b.dim):
            self.errors.error(f"shape mismatch in '*': {self.dim_text(a.dim)} and "
                              f"{self.dim_text(b.dim)}", node.span,
                              "an elementwise product needs two vectors of the same dim")
            return None
        names = (self.name_of(a, node.span), self.name_of(b, node.span))
        out = self.emit(Nonlin(self.fresh(self.target), MUL, names, node.span), a.dim)
        return self.vec(out, a.dim)

    def per_head_gain(self, a: Vec, b: Vec) -> str | None:
        """The dim of the product when one factor is a vector param of a head dim that divides
        the other's dim (a per-head gain, as a QK-norm's): every head times the same gain."""
        if a.dim in self.heads_dims or b.dim in self.heads_dims:
            return None
        for g, v in ((a, b), (b, a)):
            if g.single() in self.param_names and per_head(self.dims, g.dim, v.dim):
                return v.dim
        return None

    def op_div(self, a, b, node):
        if isinstance(b, Scalar):
            if b.value == 0:
                self.errors.error("division by zero", node.span)
                return None
            if isinstance(a, Matrix):
                self.matrix_misuse(a, node)
                return None
            return self.scale(a, 1 / b.value, node.span)
        self.errors.error("only division by a number is supported", node.span,
                          "write a product with an elementwise function instead")
        return None

    def op_matmul(self, a, b, node, geometry=None, pixels=None):
        if not isinstance(a, Matrix):
            self.errors.error("the left side of @ must be a matrix param", node.span,
                              "declare it as `param W : [fan_out, fan_in]` and write `W @ x`")
            return None
        if not isinstance(b, Vec):
            self.errors.error("the right side of @ must be a vector", node.span)
            return None
        if depthwise_misuse(self, a.name, node.span, "it is applied by dwconv or tconv, not @"):
            return None
        fan_out, fan_in = self.matrices[a.name].shape[:2]
        if a.transposed:
            fan_out, fan_in = fan_in, fan_out
        if geometry is not None and geometry.groups > 1:
            pass  # a grouped kernel's fan-in is the channels over its groups (lower_conv)
        elif not self.same_dim(b.dim, fan_in):
            which = "first" if a.transposed else "last"
            self.errors.error(
                f"shape mismatch in '@': {a.name}{'.T' * a.transposed} is [{fan_out}, {fan_in}] "
                f"but the vector is {self.dim_text(b.dim)}", node.span,
                f"the vector's dim must equal {a.name}'s {which} dim ({fan_in})")
            return None
        arg = self.name_of(b, node.span)
        if len(self.matrices[a.name].shape) == 4 and arg not in self.pixels:
            self.errors.error(f"{a.name} is a convolution kernel, but {arg} is not an image",
                              node.span, "apply kernels to values computed from an `image` "
                              "input, before global_pool; use a matrix [out, in] otherwise")
            return None
        out = self.emit(MatMul(self.fresh(self.target), a.name, arg, node.span, a.transposed,
                               geometry), fan_out)
        if geometry is not None:  # conv(...): its own pixels, where K @ h keeps its input's
            self.pixels[out] = pixels
        relative = next((i for i in self.inputs if i.name == arg and i.kind in RELATIVE_KINDS),
                        None)
        if relative is not None:
            return self.relative_bias(out, fan_out)
        return self.vec(out, fan_out)

    def relative_bias(self, out: str, fan_out: str) -> Vec:
        """``R @ rel``, a relative input's buckets looked up in R [heads, buckets]: one value
        per head and token pair, added to attention logits, so its dim is a heads axis (the
        logits' last axis is the key tokens, not a vector's dim)."""
        name = f"{fan_out} per token pair"
        self.heads_dims.setdefault(name, replace(self.dims[fan_out], name=name))
        return self.vec(out, name)

    def compares_tokens(self, args, node) -> bool:
        """Attention (a per-head dot, mix) pairs tokens, so each side must vary over them: a
        value built from params alone has no sequence axis to compare."""
        flat = [a for a in args if not any(t in self.tokenwise for t in a.terms)]
        one = next((t for a in flat for t in a.terms if t in self.one_token), None)
        if one is not None:
            self.errors.error(f"{node.fn} pairs tokens, but {one} is one token's vector (read "
                              "by first): it has no tokens to pair", node.span,
                              "read the token with first(h) after attention, not before")
        elif flat:
            self.errors.error(f"{node.fn} pairs tokens, but an argument does not depend on any "
                              "token or position input", node.span,
                              "build queries, keys and values from the token stream (e.g. "
                              "from the embedding of a `tokens` input)")
        return not flat

    def head_dim(self, node) -> str | None:
        """The head dim named by the third argument of ``dot(q, k, dh)`` (``mix(p, v, dv)``:
        the values' own)."""
        if type(node).__name__ == "Var" and node.name in self.dims:
            if self.seq() is None and not self.tokenwise:
                self.errors.error("dot(q, k, dh) compares tokens, but the program has no sequence",
                                  node.span, "declare token inputs: `input tok : tokens[T, V]`")
                return None
            return node.name
        self.errors.error("the third argument of dot must be the head dim", node.span,
                          "e.g. `dim dh = n / 4` (4 heads) or `dim dh = 64`, then dot(q, k, dh)")
        return None

    def in_domain(self, fn: str, v: Vec, node) -> bool:
        """Whether the engine's rule for ``fn`` describes what the emitted module computes on
        ``v``. Normalising functions act over the last axis of the value: a vector's dim, the key
        tokens of attention logits, and the batch (or tokens) of a scalar; the rules hold only
        where that axis is the one the docs name (see docs/language.md)."""
        logits = v.dim in self.heads_dims
        size = None if v.dim is None or logits else self.dims[v.dim].size  # None: infinite
        what = ("a scalar" if v.dim is None else "attention logits" if logits
                else f"a vector {self.dim_text(v.dim)}")
        problem = help_ = None
        if fn == "softmax" and not logits:
            if v.dim is None:
                problem = ("softmax of a scalar would normalise over the batch (or the tokens), "
                           "which the engine does not model")
            elif size is None:
                problem = (f"softmax over the width-proportional dim {v.dim} makes every entry "
                           "Θ(1/n), which the engine does not model")
            elif size < 2:
                problem = f"softmax over the single entry of {v.dim} is the constant 1"
            help_ = ("softmax normalises attention logits over key tokens (`softmax(tau * "
                     "dot(q, k, dh))`) or a vector of a finite dim of 2 or more (class "
                     "probabilities: `softmax(W @ h)` with `W : [d_out, n]`); for a bounded "
                     "coordinatewise function use sigmoid or tanh")
        elif fn == "causal_softmax" and not logits:
            problem = ("causal_softmax masks future key tokens, so it needs attention logits "
                       f"(one value per head and token pair), not {what}")
            help_ = ("write `causal_softmax(tau * dot(q, k, dh))`; for a finite dim's "
                     "probabilities use softmax")
        elif fn == "batchnorm" and (v.dim is None or logits):
            problem = (f"batchnorm normalises each coordinate of a vector over the batch (and "
                       f"an image's pixels), not {what}")
            help_ = "write `batchnorm(h)` of a vector of a declared dim (a convolution's output)"
        elif fn in ("layernorm", "rmsnorm"):
            if v.dim is None or logits:
                axis = "key tokens" if logits else "the batch (or the tokens)"
                problem = (f"{fn} of {what} would normalise over {axis}, not over a vector's "
                           "dim as the engine models")
                help_ = (f"normalise vectors of a declared dim, e.g. `{fn}(h)`; "
                         "use softmax or causal_softmax on attention logits")
            elif size is not None and size < 2:
                result = "0" if fn == "layernorm" else "the sign of its input"
                problem = (f"{fn} over the single coordinate of {v.dim} is {result}: it never "
                           "changes, which the engine does not model")
                help_ = "normalise over a dim of 2 or more coordinates, or drop the norm"
        if problem is None:
            return True
        self.errors.error(problem, node.span, help_)
        return False

    def seq(self) -> str | None:
        return next((i.seq for i in self.inputs if i.seq is not None), None)

    def heads(self, dim: str, over: str, node) -> str | None:
        h = heads_dim(self.dims, dim, over)
        if h is None:
            self.errors.error(f"the head dim {over} does not divide {dim}", node.span,
                              "heads = dim / head dim must be a whole number (fixed head count: "
                              "dh = n / H; fixed head dim: dh = 64)")
            return None
        base = self.width.base if self.width else 1  # no width: every dim is finite
        total, head = self.dims[dim].size_at(base), self.dims[over].size_at(base)
        if total % head:
            self.errors.error(f"at the base width {base}, the head dim {over} = {head} does not "
                              f"divide {dim} = {total}", node.span,
                              "pick a head dim that divides the width (or a base width that "
                              "the head dim divides)")
            return None
        self.heads_dims.setdefault(h.name, h)
        return h.name

    def grouped(self, query: str, kv: str, over: str, node, what: str = "keys") -> bool:
        """Grouped-query attention: ``kv`` is a whole number of heads of dim ``over``, and each
        serves a whole group of dim(query) / dim(kv) consecutive query heads (finite, or
        growing with the width: one key/value head, or a fixed number of them)."""
        base = self.width.base if self.width else 1
        sizes = {d: self.dims[d].size_at(base) for d in (query, kv, over)}
        if heads_dim(self.dims, kv, over) is None or sizes[kv] % sizes[over]:
            self.errors.error(
                f"the {what}' dim {kv} = {sizes[kv]} is not a whole number of heads of "
                f"{over} = {sizes[over]}", node.span,
                f"give the {what} whole heads: `dim {kv} = H * {over}` for H key/value heads")
            return False
        if heads_dim(self.dims, query, kv) is None or sizes[query] % sizes[kv]:
            self.errors.error(
                f"the queries' dim {query} = {sizes[query]} is not a whole multiple of the "
                f"{what}' dim {kv} = {sizes[kv]}", node.span,
                "grouped-query attention shares each key/value head among a whole group of "
                f"query heads: dim({query}) = g * dim({kv}), e.g. `dim {kv} = n / 4`, or "
                f"`dim {kv} = {over}` for a single key/value head")
            return False
        return True

    def enter_Call(self, node: Call):
        """The operands to lower, or None when the call is wrong whatever they are; the state is
        the head dim of a ``dot(q, k, dh)``."""
        if node.fn in self.block_defs or node.fn in self.poisoned and node.fn in self.later \
                and self.later[node.fn].kind == "block":
            if len(node.args) != 1:
                self.errors.error(f"block {node.fn} takes 1 argument, got {len(node.args)}",
                                  node.span, f"write {node.fn}(h)")
                return None, None
            return node.args, "block"
        later = self.later.get(node.fn)
        if later is not None and later.kind == "block":
            self.errors.error(f"block {node.fn} is used before it is defined (line "
                              f"{later.span.line})", node.fn_span,
                              "define a block before the statement that applies it")
            return None, None
        if node.fn not in FUNCTIONS:
            close = difflib.get_close_matches(node.fn, FUNCTIONS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.errors.error(f"unknown function '{node.fn}'", node.fn_span,
                              f"{hint}known functions: {', '.join(FUNCTIONS)}")
            return None, None
        if node.fn in ROUTES or node.fn in (CONV, DWCONV):  # lower_route/conv/dwconv check them
            return node.args, None
        if node.fn == PREPEND:  # its third argument is a dim, not a value
            seq = prepend_seq(self, node)
            return (None, None) if seq is None else (node.args[:2], (PREPEND, seq))
        if node.fn in RELAYOUTS:  # the arguments after the value are dims
            return relayout_operands(self, node)
        if node.fn in _OPERANDS:  # arguments besides the values: dims, an index, a count
            return _OPERANDS[node.fn](self, node)
        if node.fn == MEAN:  # its second argument is a token index, not a value
            start = mean_start(self, node)
            return (None, None) if start is None else (node.args[:1], (MEAN, start))
        if not arity_fits(self, node):
            return None, None
        if node.fn == "mix" and len(node.args) > 2:  # the values' own head dim: lower_mix.py
            return mix_operands(self, node)
        if node.fn == DELTA and len(node.args) == 6:  # grouped value heads: lower_delta.py
            return delta_operands(self, node)
        if node.fn == "dot" and len(node.args) == 3:
            over = self.head_dim(node.args[2])
            return (None, None) if over is None else (node.args[:2], over)
        if node.fn in GROUP_NORMS and len(node.args) == 2:
            over = norm_group(self, node)
            return (None, None) if over is None else (node.args[:1], ("norm", over))
        return node.args, None

    def expr_Call(self, node: Call, args, over):
        if over == "block":
            return self.apply_block(node.fn, node.fn_span, args[0], None, node)
        if node.fn in ROUTES:
            return lower_route(self, node, args, Scalar, Vec)
        if node.fn == CONV:
            return lower_conv(self, node, args, Scalar, Vec)
        by_state = {PREPEND: lower_prepend, MEAN: lower_mean, SPREAD: lower_spread, AT: lower_at,
                    PART: lower_part, SHIFT: lower_shift, TCONV: lower_tconv, CAT: lower_cat,
                    PLACE: lower_place, PICK: lower_pick, RMS: lower_rms, SSD: lower_ssd,
                    DDOT: lower_ddot, WKV: lower_wkv, HDOT: lower_hdot,
                    **dict.fromkeys(RELAYOUTS, lower_relayout)}
        if node.fn in by_state:  # a call whose arguments after its values enter_Call read
            return by_state[node.fn](self, node, args, over[1], Vec)
        if node.fn == DWCONV:
            return lower_dwconv(self, node, args, Vec, Matrix, Scalar)
        if any(a is None for a in args):
            return None
        for a in args:
            if not isinstance(a, Vec):
                what = "a matrix" if isinstance(a, Matrix) else "a constant"
                self.errors.error(f"{node.fn} needs vector arguments, got {what}", node.span)
                return None
        if node.fn == "dot":
            if any(a.dim in self.heads_dims for a in args):
                self.errors.error("dot contracts a vector's dim, but attention logits or weights "
                                  "hold one value per head and (query, key) token pair",
                                  node.span, "combine attention weights with values by "
                                  "mix(p, v); dot applies to vectors of a declared dim")
                return None
            # per head, keys may have fewer heads than the queries (grouped-query attention)
            grouped = (over is not None and args[1].dim is not None
                       and not self.same_dim(args[0].dim, args[1].dim))
            if args[0].dim is None or not grouped and not self.same_dim(args[0].dim,
                                                                        args[1].dim):
                self.errors.error(
                    f"shape mismatch in dot: {self.dim_text(args[0].dim)} and "
                    f"{self.dim_text(args[1].dim)}", node.span,
                    "dot contracts two vectors of the same dim into a scalar")
                return None
            dim = None
            if over is not None:
                if not self.compares_tokens(args, node):
                    return None
                dim = self.heads(args[0].dim, over, node)
                if dim is None or grouped and not self.grouped(args[0].dim, args[1].dim, over,
                                                               node):
                    return None
            names = [self.name_of(a, node.span) for a in args]
            out = self.emit(Dot(self.fresh(self.target), names[0], names[1], node.span, over),
                            dim)
            return self.vec(out, dim)
        if node.fn == "mix":  # attention's token mixing: lower_mix.py
            return lower_mix(self, node, args, over, Vec)
        if node.fn == DELTA:  # the gated delta rule's weights: lower_delta.py
            return lower_delta(self, node, args, over, Vec)
        if node.fn in SINKS and len(args) == 2:
            return lower_sink(self, node, args, Vec)
        if not self.in_domain(node.fn, args[0], node):
            return None
        group = over[1] if isinstance(over, tuple) else None  # a norm per head
        if group is not None and self.heads(args[0].dim, group, node) is None:
            return None
        arg = self.name_of(args[0], node.span)
        if node.fn in ("first", "last") and not first_readable(self, arg, args[0].dim, node):
            return None
        if node.fn in POOLS or node.fn in ("groupnorm", "grn"):  # their stats span the pixels
            size = self.pixels.get(arg)
            if size is None:
                self.errors.error(f"{node.fn} needs an image, but {arg} has no pixels", node.span,
                                  "layernorm(h) normalises a vector without pixels"
                                  if node.fn not in POOLS else
                                  "pool values computed from an `image` input")
                return None
            if POOLS.get(node.fn) is not None and 0 in pooled(node.fn, size):
                self.errors.error(f"{node.fn} of a {size[0]}x{size[1]} image leaves no pixel",
                                  node.span, "pool fewer times, or use global_pool")
                return None
        out = self.emit(Nonlin(self.fresh(self.target), node.fn, (arg,), node.span, group),
                        args[0].dim)
        return self.vec(out, args[0].dim)


    def enter_Repeat(self, node: Repeat):
        if isinstance(node.count, int):
            if node.count == 0:
                self.errors.error("`repeat 0` applies the block no times", node.count_span,
                                  "repeat at least once, or use the argument itself")
                return None, None
        elif self.depth is None or node.count != self.depth.name:
            what = ("the width" if self.width is not None and node.count == self.width.name
                    else "a dim" if node.count in self.dims else "not declared")
            declared = (f"the depth is {self.depth.name}" if self.depth is not None
                        else "the program declares no depth")
            self.errors.error(f"`repeat {node.count}`: {node.count} is not the depth ({what}; "
                              f"{declared})", node.count_span,
                              "repeat over the depth, declared once as `depth L = 4` (its base "
                              "value), or a fixed number of times, `repeat 3 blk(h0)`")
            return None, None
        if node.block not in self.block_defs:
            later = self.later.get(node.block)
            if node.block in self.poisoned:
                pass  # its definition already reported an error
            elif later is not None and later.kind == "block":
                self.errors.error(f"block {node.block} is used before it is defined (line "
                                  f"{later.span.line})", node.block_span,
                                  "define a block before the statement that applies it")
            else:
                close = difflib.get_close_matches(node.block, list(self.block_defs), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.errors.error(f"unknown block '{node.block}'", node.block_span,
                                  f"define it first: `block {node.block}(h) {{ ... return ... }}`"
                                  f"{hint}")
            return None, None
        return (node.arg,), None

    def expr_Repeat(self, node: Repeat, values, _state):
        return self.apply_block(node.block, node.block_span, values[0], node.count, node)

