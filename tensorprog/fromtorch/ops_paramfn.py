"""Functions of a param alone, then used as a gain: Ergo's residual gates.

transformers' ErgoResidualGate has a param w [hidden] (zeros at init) and returns
``sigmoid(w) * h + sqrt(1 + sigmoid(w)) * exp(-0.5 * softplus(w)) * residual``. Each gate is a
fixed function of w, computed from w alone, then multiplied into a per-token vector. The
program says the same: the language's functions apply to a vector param as to any vector, a
number may be added to a value of params alone, and ``sqrt`` is taken of a value its functions
keep above a positive number (docs/language.md, ir/ranges.py). So the trace keeps a
:class:`ParamFn`, the language's expression of the function with ``{}`` for the param, through
each op on it, and writes ``g = (f(w)) * h`` where it multiplies a per-token vector: the model's
value, op for op.

Why w keeps a gain's exponents (the engine derives them, nothing here sets them): w is a
trained number per feature, Θ(1) at init and in its Adam steps; sigmoid, softplus, exp, tanh
have a Θ(1) slope wherever their input is O(1), and sqrt one above its positive bound; numbers
times it and added to it keep sizes. So f(w) is Θ(1) and moves by Θ(Δw), and its gradient
reaches w through a Θ(1) slope: a gain's µP for w. No multiplier folds into w through f (a
product with f(w) is not linear in w), so the product names no producer.

Only ops that the language writes exactly are followed: the functions of ``FUNCTION_OPS`` (and
Swin V2's exp and clamp, ops_temperature.py), a number times, plus or minus it, a product or sum
of two functions of the same param, and the casts that keep it. Any other use, a function of two
params, or one added to a per-token vector, is refused at its line.
"""

from __future__ import annotations

import math

from ..ir.functions import FUNCTIONS
from ..ir.ranges import ANY, added, product, scaled
from .ops_arith import as_number, flat_param
from .ops_pixels import KEEP_LAYOUT
from .values import Affine, ParamFn, Pointwise, PRef, Vec
from .where import CHECK_OPS, casts_to_integers, op_name, refuse, strip_prefix

#: torch ops that are the language function of the same name, applied to a function of a param
#: (the walker's op methods take them there: ops_arith._apply, ops_pointwise.coordinatewise)
FUNCTION_OPS = ("sigmoid", "tanh", "softplus", "exp", "sqrt")

_HELP = ("make the transformed tensor the param (initialise it as the transform of today's "
         "init), or trace the model without this part; a function of a param traces where it "
         "is built of sigmoid, tanh, softplus, exp, sqrt, numbers times and plus it, of one "
         "param, and multiplies a per-token vector as a gain (Ergo's residual gates), or "
         "attention logits per head (Swin V2's temperature)")


def refuse_param_fn(node, x: ParamFn | PRef, op: str | None = None):
    ref = x.ref if isinstance(x, ParamFn) else x
    what = x.op if isinstance(x, ParamFn) else op
    return refuse(node, f"{what} of a param alone ({strip_prefix(ref.target)}) used by "
                  f"{op_name(node) or node.target}: the language's params enter the program "
                  "as they are or through functions of them used as a gain, so this use of a "
                  "param transformed before its use (Mamba's A = -exp(A_log)) has no "
                  "place in it", help=_HELP)


def _form(x) -> str:
    return x.form if isinstance(x, ParamFn) else "{}"


def _bounds(x) -> tuple[float, float]:
    return x.bounds if isinstance(x, ParamFn) else ANY  # a param: training moves it anywhere


class ParamFnOps:
    """A function of a param alone, kept op by op until it multiplies a per-token vector."""

    def param_fn(self, node, x, form: str, bounds=ANY) -> ParamFn:
        """``form`` (``{}`` for its argument) applied to a whole param or to a function of one
        already kept, its values in ``bounds``; a slice, a transpose or a shifted param is
        refused, and so is sqrt of a function not kept above a positive number (the language's
        rule, ir/ranges.py)."""
        ref = x.ref if isinstance(x, ParamFn) else x
        if ref.t or ref.rows or ref.offset or ref.expert is not None or ref.cols is not None:
            raise refuse_param_fn(node, ref, op_name(node))
        fn = form.partition("(")[0]
        if fn in FUNCTION_OPS:
            bounds = FUNCTIONS[fn].bounds
        if fn == "sqrt" and not _bounds(x)[0] > 0:
            lo, hi = _bounds(x)
            raise refuse(node, f"sqrt of a function of the param {strip_prefix(ref.target)} "
                         f"whose values are only known to lie in [{lo:g}, {hi:g}]: near 0 the "
                         "slope of √x grows without bound, so the language takes sqrt only of "
                         "a value its functions keep above a positive number",
                         help="take sqrt of a number plus a function bounded below, as Ergo's "
                         "sqrt(1 + sigmoid(w)), or write the model as a program")
        op = x.op if isinstance(x, ParamFn) else op_name(node)
        return ParamFn(ref, form.replace("{}", _form(x)), op, bounds)

    def op_rsub(self, node, u, v, alpha=1):
        """``c - w`` of a vector param w (RWKV's token-shift mix, ``shifted * (1 - mix)``): the
        function of the param ``c - w``, then a gain; any other ``v - alpha * u`` as the sum."""
        u, v = as_number(u), as_number(v)
        if isinstance(u, PRef) and _real(v) and _real(alpha):
            return self.param_fn(node, u, f"{float(v)!r} - {float(alpha)!r} * ({{}})",
                                 added((v, v), scaled(-alpha, ANY)))
        return self.op_sub(node, v, u, alpha)

    def param_fn_op(self, node, args, kwargs=None):
        """An op with a kept function of a param among its arguments (the temperature's
        product aside): the kept function it makes, the gain product it is (a Vec), or None
        for the walker's own op method (the functions, ops_pointwise's clamp and softplus,
        which read their own keywords); anything else is refused, and so is a keyword the
        form does not write (``rounding_mode``)."""
        op = op_name(node)
        if op in CHECK_OPS:  # export's check of a cast's dtype (NeoMME's tanh(alpha).to(..)),
            return None  # which holds no value: the walker's
        kwargs = dict(kwargs or {})
        args = [as_number(a) for a in (*args, *kwargs.values())]
        x = next(a for a in args if isinstance(a, ParamFn))
        if op in KEEP_LAYOUT and casts_to_integers(node):  # tanh(w).to(torch.int32): 0
            raise refuse(node, f"a cast to an integer type of a function of the param "
                         f"{strip_prefix(x.ref.target)}: it rounds the values the program's "
                         "form computes", help=_HELP)
        if op in KEEP_LAYOUT and args[0] is x:
            return x
        if op in _AXES_OF_ONE and args[0] is x and _same_entries(
                self._shape(node.args[0]), self._shape(node)):
            return x  # g[None, None, :], g.view(1, 1, -1): where its entries fall is checked
            # against the vector it multiplies (ops_arith._param_broadcast)
        if op in FUNCTION_OPS or op in ("clamp", "ssd_scan", "wkv"):  # A, g: ops_ssd, ops_wkv
            return None
        if set(kwargs) - {"alpha"} or (kwargs and op not in ("add", "sub", "rsub")):
            raise refuse_param_fn(node, x)
        u = args[0]
        v = args[1] if len(args) > 1 else None
        if op == "neg":
            return self.param_fn(node, x, "-({})", scaled(-1, x.bounds))
        if op in ("add", "sub", "rsub"):
            alpha = args[2] if len(args) > 2 else 1
            return self._param_fn_sum(node, u, v, alpha, op)
        if op == "mul":
            return self._param_fn_product(node, u, v)
        if op == "div" and _real(v) and v != 0 and u is x:
            return self.param_fn(node, x, f"{1.0 / v!r} * ({{}})", scaled(1.0 / v, x.bounds))
        raise refuse_param_fn(node, x)

    def _param_fn_sum(self, node, u, v, alpha, op: str):
        """x + c, x - c, c - x (rsub) and the sum of two functions of one param."""
        if not _real(alpha):
            raise refuse_param_fn(node, u if isinstance(u, ParamFn) else v)
        sign = -alpha if op == "sub" else alpha
        if op == "rsub" and isinstance(u, ParamFn) and _real(v):  # v - alpha * u
            return self.param_fn(node, u, f"{float(v)!r} - {float(alpha)!r} * ({{}})",
                                 added((v, v), scaled(-alpha, u.bounds)))
        if isinstance(u, ParamFn) and _real(v):
            return self.param_fn(node, u, f"({{}}) + {float(sign * v)!r}",
                                 added(u.bounds, (sign * v, sign * v)))
        if _real(u) and isinstance(v, ParamFn) and op != "rsub":
            return self.param_fn(node, v, f"{float(u)!r} + {float(sign)!r} * ({{}})",
                                 added((u, u), scaled(sign, v.bounds)))
        ref = self._one_param(node, u, v)
        if ref is None:
            x = u if isinstance(u, ParamFn) else v
            raise refuse(node, f"a sum of a function of the param {strip_prefix(x.ref.target)} "
                         "with anything but a number or a function of the same param: the "
                         "language reads a function of a param as a gain (in a product)",
                         help=_HELP)
        if op == "rsub":  # v - alpha * u
            u, v, sign = v, u, -alpha
        form = f"({_form(u)}) + {float(sign)!r} * ({_form(v)})"
        return ParamFn(ref, form, u.op if isinstance(u, ParamFn) else v.op,
                       added(_bounds(u), scaled(sign, _bounds(v))))

    def _param_fn_product(self, node, u, v):
        """c * x, the product of two functions of one param, or a gain times a per-token
        vector: ``(f(w)) * h``."""
        for a, b in ((u, v), (v, u)):
            if isinstance(a, ParamFn) and _real(b):
                return self.param_fn(node, a, f"{float(b)!r} * ({{}})", scaled(b, a.bounds))
        ref = self._one_param(node, u, v)
        if ref is not None:
            return ParamFn(ref, f"({_form(u)}) * ({_form(v)})",
                           u.op if isinstance(u, ParamFn) else v.op,
                           product(_bounds(u), _bounds(v)))
        for i, (g, x) in enumerate(((u, v), (v, u))):
            if isinstance(g, ParamFn) and isinstance(x, (Vec, Affine, Pointwise)):
                return self._gain(node, i, g, x)
        gated = self.head_dot_gain(node, u, v)  # f(w) of a per-head dot's gate (ops_headdot)
        if gated is not None:
            return gated
        raise refuse_param_fn(node, u if isinstance(u, ParamFn) else v)

    def _one_param(self, node, u, v) -> PRef | None:
        """The param both operands are functions of (a param itself counts: ``{}``); None if
        they are not both such; refused if they are of two params."""
        if not all(isinstance(a, (ParamFn, PRef)) for a in (u, v)):
            return None
        ru, rv = (a.ref if isinstance(a, ParamFn) else a for a in (u, v))
        if (ru.target, tuple(ru.shape)) != (rv.target, tuple(rv.shape)) or any(
                r.t or r.rows or r.offset or r.expert is not None or r.cols is not None
                for r in (ru, rv)):
            raise refuse(node, f"a function of two params ({strip_prefix(ru.target)} and "
                         f"{strip_prefix(rv.target)}), or of a slice of one: the trace keeps a "
                         "function of one whole param", help=_HELP)
        return ru if isinstance(u, ParamFn) else rv

    def _gain(self, node, i: int, g: ParamFn, x) -> Vec:
        """``(f(w)) * h``: the function of the vector param w as a gain of h (its entries on
        h's features, as a plain gain's are checked: ops_arith._param_broadcast); of a param
        of one entry, one number for all of h's, ``spread(f(w), d) * h`` (spread of one head
        over h's d coordinates: its gradient sums over them, a readout's)."""
        ref = flat_param(g.ref)
        if len(ref.shape) != 1:
            raise refuse(node, f"a function of the param {strip_prefix(ref.target)} of shape "
                         f"{list(g.ref.shape)} multiplying a vector: traced as a gain, one "
                         "entry per feature (a vector param)", help=_HELP)
        vec = self.vec(x, node)
        if self._gain_per_head(node, i, ref, vec):  # (1, 1, H, 1) over (..., H, dh): each
            w = self.vector_param(ref, node)  # head's coordinates times its own number
            f = f"spread({g.form.replace('{}', w)}, {self.dim(vec.dh)})"
            name = self.emit_vector(node.name, f"({f}) * {vec.name}")
            return Vec(name, vec.tags, vec.dim, vec.dh)
        self._param_broadcast(node, i, ref, x, "product")
        if ref.shape[0] not in (1, vec.dim):  # a head dim's: a plain param's form only
            raise refuse(node, f"a function of the param {strip_prefix(ref.target)} of "
                         f"{ref.shape[0]} entries multiplying a vector of {vec.dim} features: "
                         "traced as a gain of one entry per feature, or one number for all "
                         "(the language broadcasts a param of a head dim only as it is)",
                         help=_HELP)
        w = self.vector_param(ref, node)
        f = g.form.replace("{}", w)
        if ref.shape[0] == 1 != vec.dim:  # one number for every feature (xIELU's alpha)
            f = f"spread({f}, {self.dim(vec.dim)})"
        name = self.emit_vector(node.name, f"({f}) * {vec.name}")
        return Vec(name, vec.tags, vec.dim, vec.dh)

    def _gain_per_head(self, node, i: int, ref: PRef, vec: Vec) -> bool:
        """Whether the function of ``ref`` (H entries) multiplies ``vec`` laid out (..., H,
        dh) one entry per head, broadcast over the head's dh coordinates: torch's shape (...,
        H, 1) against the vector's heads (Kimi Linear's and Bailing's decay rate exp(A_log)
        of the heads times the per-channel gate), the program's ``spread(f(w), dh) * x``."""
        shape = self._shape(node.args[i])
        tags = tuple(vec.tags)
        return len(tags) >= 2 and tags[-2:] == ("H", "dh") and bool(vec.dh) and \
            len(shape) >= 2 and len(shape) <= len(tags) and shape[-1] == 1 and \
            math.prod(shape[:-2]) == 1 and shape[-2] == ref.shape[0] > 1 and \
            shape[-2] * vec.dh == vec.dim and \
            self._shape(node) == self._shape(node.args[1 - i])


#: ops that may only add or drop axes of 1 (a full slice, ``[None, None, :]``'s, among them)
_AXES_OF_ONE = ("view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "slice")


def _same_entries(old, new) -> bool:
    return [s for s in old if s != 1] == [s for s in new if s != 1]


def _real(c) -> bool:
    return isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
