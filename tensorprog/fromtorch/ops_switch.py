"""A traced value compared with 0, the switch of a piecewise function: traced where its pieces
meet at 0, refused elsewhere.

``torch.where(x > 0, a, b)`` with a and b computed coordinatewise from x (xIELU's, Apertus'
activation) is a function chosen by x's sign. Where the pieces meet, a(0) = b(0) = 0, it is
exactly

    where(x > 0, a(x), b(x)) = a(relu(x)) + b(min(x, 0))

for every x (for x > 0 the second term is b(0) = 0, for x <= 0 the first is a(0) = 0), and so
is ``x >= 0`` (at x = 0 both pieces give 0), and ``x < 0``, ``x <= 0`` with the pieces' roles
swapped. So the where is traced as its two pieces, each walked again from relu(x) and min(x, 0)
= x - relu(x) in x's place: the program's functions and products of them, whose exponents the
engine derives (a product of vectors adds them: x·x of a Θ(1) vector is Θ(1)). The compared
value's pieces are not walked from x itself: nothing but the where may read them.

Refused, at their lines: a comparison with a number other than 0 (x - c > 0 needs a number
added to a per-token vector, which the language has not), a comparison read by anything but
one where's condition, a piece that reads another vector or whose value something else reads,
pieces that meet at a number other than 0 (their sum would count it twice, and the language
adds no number to a per-token vector), and pieces that do not meet. A gap is no rounding
matter: where the pieces differ by g at the switch, a coordinate whose sign a change flips
jumps by g however small the change, so a change of size n^e < 1 moves the output by about
g·n^{e/2} (the root of the fraction of coordinates flipped, which is of the change's size for
a value of bounded density at the switch), which no exponent rule of the engine (sums of slots,
linear in a, b, c) states.

One approximation, stated and bounded: xIELU's negative piece is ``alpha_n * (expm1(min(x,
eps)) - x) + beta * x`` with eps = -1e-6, so its pieces differ by alpha_n·expm1(eps) at 0. In
the negative piece, whose x is min(x, 0) <= 0, a ``min(x, c)`` (``clamp(x, max=c)``) of the
compared value at a number c in [-1e-5, 0] is traced as x itself, which is min(x, 0) exactly:
the two differ by at most |c|, and only where x lies in (c, 0]. The traced function is then
continuous and the model's differs from it only there; the walk checks, on the graph, that the
piece changes by at most ``TOLERANCE`` there (at the params' values and at random ones, since
training moves them: alpha_n·|expm1(eps)| < 1e-5 for alpha_n < 10), and that the pieces so
traced meet at 0 exactly. In xIELU, elu writes expm1 of the negative part: expm1(min(x, 0)) =
elu(x) - relu(x), so the negative piece is ``alpha_n * (elu(x) - x) + beta * min(x, 0)``, each
factor a function plus a multiple of x (ops_pointwise.py's ``c * fn(x) + k * x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TraceError
from .gained import Gained
from .values import Affine, Aux, Conc, ParamFn, PEntry, Pointwise, PRef, Vec
from .where import op_name, refuse

_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}

#: a param's entries where the graph holds none (a model built on the meta device): the gap
#: is measured there, which is enough to tell a gap from pieces that meet at every value
_FILL = 0.5

#: the most a min(x, c) of the negative piece traced as x may change the piece (see above)
TOLERANCE = 1e-5
#: the numbers c of a min(x, c) so traced: [-_CAP, 0]
_CAP = 1e-5
#: the ops that write min(x, c) of a number c
_MINS = ("min", "minimum", "clamp_max", "clamp")
#: the ops a piece may apply: coordinatewise ones (each coordinate from x's same coordinate),
#: casts and copies
_PIECE_OPS = frozenset({
    "add", "sub", "rsub", "mul", "div", "neg", "square", "pow", "abs", "exp", "expm1", "erf",
    "relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "elu", "hardswish", "hardsigmoid",
    "hardtanh", "relu6", "min", "minimum", "max", "maximum", "clamp", "clamp_min",
    "clamp_max", "to", "_to_copy", "type_as", "clone", "alias", "zeros_like", "ones_like"})
#: the least threshold of a softplus written out with a where (SoftSwitch)
_SOFT_FROM = 12.0
#: the ops of a softplus written out (log(1 + exp(x)), log1p(exp(x)), softplus(x)) and casts:
#: smooth and increasing, so a piece of them that is softplus on SoftSwitch's grid is it
#: between the points and below them too (no relu, min or clamp to make a kink the grid misses)
_SOFT_OPS = frozenset({"exp", "log", "log1p", "add", "softplus", "to", "_to_copy", "type_as",
                       "clone", "alias"})
#: the grid SoftSwitch checks its piece on: from _SOFT_LOW to the threshold
_SOFT_LOW = -60.0
#: what a piece may read besides the compared value and the piece's own ops: params, functions
#: of them, numbers and constants
_FIXED = (PRef, ParamFn, PEntry, Conc, int, float)


class _Unknown(Exception):
    """A value the pieces read that is neither the compared one, a param nor a constant."""


@dataclass
class Switch:
    """``x > 0`` (``x >= 0``; ``x < 0``, ``x <= 0``: ``positive`` False) of the value of node
    ``src``, read by one where alone, whose pieces' nodes (``cones``, by the where's argument,
    each in graph order) are walked there."""

    src: str
    positive: bool  # the where's first piece is x's where x > 0
    cones: tuple


@dataclass
class SoftSwitch:
    """``x > c`` (c >= ``_SOFT_FROM``) read by one ``where(x > c, x, softplus(x))``, softplus
    written out (``log(1 + exp(x))``): torch's own softplus, whose threshold is 20. Where c is
    not 20 the two differ between c and 20 by log(1 + exp(-x)) <= log(1 + exp(-c)) < 1e-5, a
    rounding at the widths' Θ(1) values, never a jump: at c both give x within that."""

    src: str
    cone: tuple  # the written-out softplus's nodes, walked no more


class SwitchOps:
    """x > 0, x >= 0, x < 0, x <= 0 of a traced value read by a where's condition: the where
    traced as its pieces at relu(x) and min(x, 0); any other comparison refused."""

    deferred: frozenset = frozenset()  # the nodes of a switch's pieces, walked at its where

    def call(self, node):
        """A switch's piece: nothing till its where, which is walked as its pieces."""
        if node.name in self.deferred:
            return Aux()
        cond = self.env.get(getattr(node.args[0], "name", None)) if node.args else None
        if op_name(node) == "where" and isinstance(cond, SoftSwitch):
            import torch

            # torch's softplus, whose own threshold (20) is the language's (see SoftSwitch)
            self.deferred = self.deferred - {n.name for n in cond.cone}
            return self._apply(node, self.env[cond.src], torch.nn.functional.softplus)
        if op_name(node) == "where" and isinstance(cond, Switch):
            a, b = (self.env[x.name] if hasattr(x, "op") else x for x in node.args[1:3])
            return self.switch_where(node, cond, a, b)
        return super().call(node)

    def op_gt(self, node, x, other):
        return self.switch(node, x, other)

    def op_ge(self, node, x, other):
        return self.switch(node, x, other)

    def op_lt(self, node, x, other):
        return self.switch(node, x, other)

    def op_le(self, node, x, other):
        return self.switch(node, x, other)

    def switch(self, node, x, other) -> Switch:
        """The comparison as a switch, its where's pieces deferred to the where: only ``x ⋚
        0`` of a per-token vector read by one where's condition alone."""
        wheres = list(node.users)
        soft = self.soft_switch(node, x, other, wheres)
        if soft is not None:
            return soft
        if _number(other) != 0.0 or not isinstance(x, (Vec, Affine, Pointwise, Gained)) or \
                len(wheres) != 1 or op_name(wheres[0]) != "where" or \
                wheres[0].args[0] is not node:
            raise self.refuse_switch(node, other)
        where, src = wheres[0], node.args[0]
        cones = tuple(_cone(src, piece) for piece in where.args[1:3])
        inside = {n for cone in cones for n in cone}
        for n in (n for cone in cones for n in cone):
            outside = [u for u in n.users if u not in inside and u is not where]
            if outside:
                raise refuse(outside[0], "a value computed from a piece of a piecewise "
                             f"function (torch.where(x {_SYMBOLS[op_name(node)]} 0, a, b)) "
                             "read by anything but the where: the where is traced as its "
                             "pieces at relu(x) and min(x, 0), so the piece's own value at x "
                             "is none of the program's",
                             help="read the where's output, or compute the value again "
                             "outside the where's pieces")
        self.deferred = self.deferred | {n.name for n in inside}
        return Switch(src.name, op_name(node) in ("gt", "ge"), cones)

    def soft_switch(self, node, x, other, wheres) -> SoftSwitch | None:
        """``x > c`` read by one ``where(x > c, x, p(x))`` whose p is softplus, written out
        (Kimi Linear's ``torch.where(g > 20.0, g, torch.log(1.0 + torch.exp(g)))``): a
        :class:`SoftSwitch`, its piece deferred; None for any other comparison. p must be
        coordinatewise in x alone, of ``_SOFT_OPS`` (smooth, increasing), and softplus within
        ``TOLERANCE`` (relative above 1) on [``_SOFT_LOW``, c] in float64 and in float32, and c
        at least ``_SOFT_FROM``: the language's softplus switches to x at 20, and between c and
        20 the two differ by log(1 + exp(-x)) < 1e-5."""
        import torch

        c = _number(other)
        if c is None or c < _SOFT_FROM or op_name(node) not in ("gt", "ge", "lt", "le") or \
                len(wheres) != 1 or op_name(wheres[0]) != "where" or \
                wheres[0].args[0] is not node or \
                not isinstance(x, (Vec, Affine, Pointwise, Gained)):
            return None
        src, (a, b) = node.args[0], wheres[0].args[1:3]
        ident, piece = (a, b) if op_name(node) in ("gt", "ge") else (b, a)
        cone = _cone(src, piece)
        if ident is not src or not cone or any(
                op_name(n) not in _SOFT_OPS or n.kwargs.get("alpha", 1) != 1 or any(
                    hasattr(r, "op") and r is not src and r not in cone
                    for r in _flat(n.args) + _flat(list(n.kwargs.values())))
                or any(u not in cone and u is not wheres[0] for u in n.users) for n in cone):
            return None
        # in float32 too: a model that runs the piece there (Kimi's g.float()) overflows
        # exp(x) from 88.7 on, to inf where softplus is x
        for dtype in (torch.float64, torch.float32):
            grid = torch.linspace(_SOFT_LOW, c, 1201, dtype=dtype)[:, None]
            try:
                p = torch.as_tensor(self._value(piece, src, grid, {}), dtype=torch.float64)
            except (_Unknown, RuntimeError, TypeError, ValueError, IndexError):
                return None
            want = torch.nn.functional.softplus(grid.double())
            if p.shape != want.shape or not bool(
                    ((p - want).abs() <= TOLERANCE * want.clamp(min=1.0)).all()):
                return None
        self.deferred = self.deferred | {n.name for n in cone}
        return SoftSwitch(src.name, tuple(cone))

    def switch_where(self, node, cond: Switch, a, b):
        """``where(x > 0, a, b)``: ``a(relu(x)) + b(min(x, 0))``, where the pieces meet at 0."""
        src = self.by_name[cond.src]
        pieces = [(node.args[1], a, cond.cones[0]), (node.args[2], b, cond.cones[1])]
        if not cond.positive:
            pieces.reverse()
        for arg, value, cone in pieces:
            if not cone and arg is not src and not _zero(value):
                raise refuse(node, "a piece of a piecewise function (torch.where(x > 0, a, "
                             "b)) that is neither 0 nor a function of x: the language has no "
                             "vector chosen by another's sign", help="compute both pieces "
                             "from the compared value x, its params and numbers")
            for n in cone:
                self._reads_no_vector(n, src, cone)
        self._meet(node, src, pieces)
        self.deferred = self.deferred - {n.name for cone in cond.cones for n in cone}
        x = self.pointwise(node, self.env[cond.src])
        subs = (Pointwise(x.src, lambda t, f=x.f: f(t).clamp(min=0), cond.src),
                Pointwise(x.src, lambda t, f=x.f: f(t).clamp(max=0), cond.src))
        before = set(self.out.vectors)
        values = [self._rewalk(src, arg, value, cone, sub, negative=i == 1)
                  for i, ((arg, value, cone), sub) in enumerate(zip(pieces, subs, strict=True))]
        values = [v for v in values if not _zero(v)]
        if not values:
            raise refuse(node, "a piecewise function whose pieces are both 0",
                         help="use 0 itself, or trace the model without this part")
        if len(values) == 1:
            self._unread(before)
            return values[0]
        a, b = values
        if isinstance(a, Pointwise) and isinstance(b, Pointwise) and a.src.name == b.src.name:
            self._unread(before)
            try:  # one function of x (elu's pieces: x and expm1(min(x, 0)))
                return self.vec(Pointwise(a.src, lambda t, f=a.f, g=b.f: f(t) + g(t),
                                          node.name), node)
            except TraceError:
                pass
        # each piece a vector: their sum needs no one function of x for both
        values = [self.vec(v, node) if isinstance(v, (Pointwise, Affine)) else v
                  for v in values]
        self._unread(before)
        return self._lincomb(node, *values, 1)

    def _unread(self, before: set) -> None:
        """The vectors made since ``before`` left unread by the check: made at x's pieces,
        none is a value the model holds."""
        for made in set(self.out.vectors) - before:
            del self.out.vectors[made]

    def _rewalk(self, src, arg, value, cone, sub, negative: bool):
        """The piece ``arg`` walked again from ``sub`` in x's place: each node of its cone
        called as the walk calls it, with a ``min(x, c)`` of the negative piece as x."""
        if arg is src:
            return sub
        if not cone:
            return value
        saved = {n.name: self.env.get(n.name) for n in (src, *cone)}
        self.env[src.name] = sub
        try:
            for n in cone:
                if negative and _min_at(n, src, self.env) is not None:
                    out = sub
                else:
                    out = self.call(n)
                if isinstance(out, Pointwise):
                    out = Pointwise(out.src, out.f, n.name)
                self.env[n.name] = out
            return self.env[cone[-1].name]
        finally:
            self.env.update(saved)

    def _reads_no_vector(self, n, src, cone) -> None:
        """Refuses a piece's op that is not coordinatewise (a matmul, a mean or a view of x:
        a(relu(x)) is then not a(x) where x > 0), or that reads a vector other than x."""
        if op_name(n) not in _PIECE_OPS:
            raise refuse(n, f"the op {op_name(n)} in a piece of a piecewise function "
                         "(torch.where(x > 0, a, b)): the where is traced as its pieces at "
                         "relu(x) and min(x, 0), which holds only where each coordinate of a "
                         "piece is computed from the same coordinate of x alone (sums, "
                         "products, numbers, params per feature, coordinatewise functions)",
                         help="compute the pieces coordinate by coordinate, or move this op "
                         "out of the where")
        for a in _flat(n.args) + _flat(list(n.kwargs.values())):
            if hasattr(a, "op") and a is not src and a not in cone and \
                    not isinstance(self.env.get(a.name), (*_FIXED, Aux)):
                raise refuse(n, "a piece of a piecewise function (torch.where(x > 0, a, b)) "
                             "that reads a vector other than x: the where is traced as its "
                             "pieces at relu(x) and min(x, 0), which holds only where each "
                             "piece is a function of x alone", help="compute both pieces "
                             "from the compared value x, params and numbers")

    def _meet(self, node, src, pieces) -> None:
        """Refuses pieces that do not meet at 0 once a negative piece's min(x, c) is x, or
        meet at a number other than 0, or whose min(x, c) so traced changes the negative
        piece by more than ``TOLERANCE``; at the params' values (or ``_FILL``) and at three
        random draws of them."""
        import torch

        (pos, *_), (neg, *_) = pieces
        # x as a column: a param per feature broadcasts along its rows
        zero = torch.zeros(1, 1, dtype=torch.float64)
        near = torch.tensor([0.0, -1e-7, -1e-6, -3e-6, -1e-5, -2e-5], dtype=torch.float64)[:, None]
        gen = torch.Generator().manual_seed(0)
        for draw in range(4):
            self._draw, self._filled = ((gen, {}) if draw else None), False
            try:
                at_a = self._value(pos, src, zero, {})
                at_b = self._value(neg, src, zero, {}, approx=True)
                model = self._value(neg, src, near, {})
                traced = self._value(neg, src, near, {}, approx=True)
            except (_Unknown, RuntimeError, TypeError, ValueError, IndexError):
                raise self.refuse_switch(node.args[0], 0.0) from None
            finally:
                self._draw = None
            at_a, at_b = (torch.as_tensor(v, dtype=torch.float64) for v in (at_a, at_b))
            level = float(at_a.abs().max())
            gap = float((at_a - at_b).abs().max())
            moved = float((torch.as_tensor(model) - torch.as_tensor(traced)).abs().max())
            if not all(math.isfinite(v) for v in (level, gap, moved)) or \
                    gap > 1e-12 * max(1.0, level) or moved > TOLERANCE:
                raise self.refuse_switch(node.args[0], 0.0)
            if level > 1e-12:
                at_a = float(at_a.reshape(-1)[at_a.reshape(-1).abs().argmax()])
                raise refuse(node, f"a piecewise function whose pieces meet at {at_a:.6g}, "
                             "not 0: it is traced as a(relu(x)) + b(min(x, 0)), which would "
                             "count that number twice, and the language adds no number to a "
                             "per-token vector", help="write the pieces so that both are 0 "
                             "at x = 0 (move the constant out of the where), or trace the "
                             "model without this part")

    def refuse_switch(self, node, other):
        """The comparison ``node`` refused, with what stands in the way: a number other than 0,
        a reader other than one where's condition, or pieces that do not meet (their gap at
        the switch, the params at their values or ``_FILL``)."""
        rhs = _number(other)
        sym = _SYMBOLS[op_name(node)]
        what = f"x {sym} {rhs!r}" if rhs is not None else f"x {sym} y"
        self._filled = False
        gap = self._gap(node, rhs) if rhs is not None else None
        filled = f", its params set to {_FILL} (the trace holds no values)" if self._filled else ""
        wheres = [u for u in node.users if op_name(u) == "where" and u.args[0] is node]
        if rhs != 0.0:
            told = ("; it is traced against 0 alone (x - c > 0 would need a number added to "
                    "a per-token vector, which the language has not)")
            if rhs is not None and rhs >= _SOFT_FROM:
                told += (", or as softplus where it reads where(x > c, x, log(1 + exp(x))) "
                         "that is softplus in float64 and float32 from -60 to c, of exp, log, "
                         "log1p, softplus, sums and casts alone")
        elif len(wheres) != 1 or len(node.users) != 1:
            told = "; it is traced as the condition of one where alone"
        elif gap is not None and gap > 0:
            told = (f"; here the pieces differ by {gap:.3g} at x = 0{filled} once a min(x, c) "
                    f"of the negative piece at c in [-{_CAP:g}, 0] is x, a jump")
        else:
            told = "; here the pieces are no functions of x, params and numbers the trace reads"
        return refuse(node, f"a comparison of a traced value ({what}), the switch of a "
                      "piecewise function (torch.where(x > 0, a, b)): the language has no "
                      "function chosen by a vector's sign, so the where is traced as a(relu(x)) "
                      "+ b(min(x, 0)), which is it only where the pieces meet at 0, and pieces "
                      "that do not meet jump at the switch by the whole gap under a change "
                      "however small (about n^(e/2) of a change n^e < 1), which no exponent "
                      f"rule of the engine states{told}",
                      help="compare with 0 in one where whose pieces are both 0 at x = 0 and "
                      "computed from x, params and numbers alone; or use one of the language's "
                      "functions (relu, elu, gelu, silu, ...; docs/language.md), or trace the "
                      "model without this part")

    def _gap(self, node, at: float) -> float | None:
        """The largest |a - b| at x = ``at`` over the ``where(node, a, b)`` that read the
        comparison (a min(x, c) of the negative piece as x, at 0), the params at their values
        (``_FILL`` where the graph holds none); None if no where reads it or a piece reads
        anything but x, params and constants."""
        import torch

        src = node.args[0]
        gaps = []
        for user in node.users:
            if op_name(user) != "where" or user.args[0] is not node:
                continue
            x = torch.tensor([[at]], dtype=torch.float64)
            negative = 2 if op_name(node) in ("gt", "ge") else 1
            try:
                a, b = (self._value(user.args[i], src, x, {}, approx=at == 0 and i == negative)
                        for i in (1, 2))
                gaps.append(float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max()))
            except (_Unknown, RuntimeError, TypeError, ValueError, IndexError):
                return None
        finite = [g for g in gaps if math.isfinite(g)]
        return max(finite) if finite and len(finite) == len(gaps) else None

    def _value(self, n, src, x, memo: dict, approx: bool = False):
        """n's value with ``src`` set to x (float64), by running its ops on it; ``approx``: a
        min(x, c) of src at c in [-_CAP, 0] taken as x (the negative piece's, x <= 0); the
        params drawn from ``self._draw`` where it is (a generator, the draws so far)."""
        import torch

        if isinstance(n, (list, tuple)):
            return type(n)(self._value(a, src, x, memo, approx) for a in n)
        if not hasattr(n, "op"):
            return n  # a number, a dtype, None
        if n is src:
            return x
        if n.name in memo:
            return memo[n.name]
        if n.op == "placeholder":
            value = self.env.get(n.name)
            if isinstance(value, PRef):
                held = self.ep.state_dict.get(value.target)
                draw = getattr(self, "_draw", None)
                if draw is not None:  # one draw per param for all the pieces' values
                    gen, drawn = draw
                    out = drawn.setdefault(value.target, torch.randn(
                        value.shape, generator=gen, dtype=torch.float64))
                else:
                    self._filled |= held is None or held.device.type == "meta"
                    out = (held.detach().double() if held is not None and
                           held.device.type != "meta"
                           else torch.full(value.shape, _FILL, dtype=torch.float64))
            elif isinstance(value, Conc):
                out = value.value
                out = out.detach().double() if isinstance(out, torch.Tensor) else out
            else:
                raise _Unknown(n.name)
        elif n.op == "call_function" and approx and _min_at(n, src, self.env) is not None:
            out = x
        elif n.op == "call_function":
            args = [self._value(a, src, x, memo, approx) for a in n.args]
            kwargs = {k: self._value(v, src, x, memo, approx) for k, v in n.kwargs.items()
                      if k not in ("device", "dtype")}
            out = n.target(*args, **kwargs)
        else:
            raise _Unknown(n.name)
        memo[n.name] = out
        return out


def _number(c) -> float | None:
    """A comparison's right side as a number (a Python number, or a one-entry constant)."""
    value = getattr(c, "value", c)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    numel = getattr(value, "numel", None)
    return float(value) if numel is not None and numel() == 1 else None


def _zero(v) -> bool:
    """Whether v is the number 0 or a constant of zeros (``zeros_like(x)``)."""
    if isinstance(v, Conc):
        v = v.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v == 0
    return bool(getattr(v, "is_floating_point", lambda: False)() and not v.any())


def _min_at(n, src, env: dict) -> float | None:
    """c where node n is ``min(src, c)`` (``clamp(src, max=c)``) of a number c in [-_CAP, 0]
    (a one-entry buffer's or constant's among them: its value in ``env``); else None."""
    if op_name(n) not in _MINS or not n.args or n.args[0] is not src:
        return None
    if op_name(n) == "clamp":
        if len(n.args) > 1 and n.args[1] is not None or n.kwargs.get("min") is not None:
            return None
        c = n.args[2] if len(n.args) > 2 else n.kwargs.get("max")
    else:
        c = n.args[1] if len(n.args) > 1 else None
    c = _number(env.get(c.name) if hasattr(c, "op") else c)
    return c if c is not None and -_CAP <= c <= 0 else None


def _cone(src, root) -> list:
    """The nodes between ``src`` and ``root`` (root among them, src not): computed from src
    and read on the way to root, in graph order; empty if root is src or does not read it."""
    if not hasattr(root, "op") or root is src:
        return []
    below, stack = set(), [root]
    while stack:  # root and everything it reads
        n = stack.pop()
        if n in below:
            continue
        below.add(n)
        stack.extend(a for a in _flat(n.args) + _flat(list(n.kwargs.values()))
                     if hasattr(a, "op"))
    above, stack = set(), [src]
    while stack:  # everything computed from src
        n = stack.pop()
        for u in n.users:
            if u not in above:
                above.add(u)
                stack.append(u)
    inside = below & above
    return [n for n in root.graph.nodes if n in inside]


def _flat(args) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out
