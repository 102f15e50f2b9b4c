"""Coordinatewise functions beyond the language's named ones, and broadcasts of a vector.

A chain of coordinatewise ops on one vector is a :class:`Pointwise` (ops_arith.py), identified
when consumed by its values as one of the language's functions times a constant. This module
adds the ops such chains are written with in today's decoders (``square``: the relu² of
Nemotron, Arcee, BitNet, Jais2; ``exp``, ``expm1``, ``softplus``, ``abs``) and the one form the
language says without a function of its own: an integer power ``c·φ(x)^k`` of a recognised φ,
written as the product ``φ(x) * φ(x) * ...`` (``Nonlin mul``). That is the computation itself,
not an approximation, and the engine's rule for a product (exponents add) is exactly how a power
scales: relu(x)² of a vector of size n^e has size n^2e, at initialisation and in its change.
A chain that is a language function plus a multiple of its input, ``c·φ(x) + k·x`` (xIELU's
``elu(x) - x``, a leaky relu's ``0.9·relu(x) + 0.1·x``), is written as that sum, fitted to
float64's rounding: the engine's rule for a sum takes the larger of the two terms' sizes.

A function of a param alone is kept as a :class:`ParamFn` (ops_paramfn.py) where the language
writes it (sigmoid, tanh, softplus, exp, sqrt, a clamp), till it is used as a gain (Ergo's
residual gates) or a per-head temperature (Swin V2's, ops_temperature.py); any other function
of a param, or another use of one (Mamba's ``A = -exp(A_log)`` in its scan), is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from ..errors import TraceError
from ..ir.functions import torch_function
from .clamped import ClampedRows
from .identify import (
    RECOGNISED,
    agrees_far,
    identify,
    identify_power,
    identify_scaled,
    sample_points,
)
from .ops_paramfn import FUNCTION_OPS, refuse_param_fn
from .values import (
    Affine,
    Aux,
    Conc,
    L2Norm,
    MeanSq,
    ParamFn,
    Parts,
    Pointwise,
    PRef,
    Scores,
    Vec,
)
from .walk import IDENTITY_OPS
from .where import CHECK_OPS, op_name, refuse

#: integer powers of a recognised function tried, in this order, when none matches alone
POWERS = (2, 3, 4)
_SPLITS = {"split", "split_with_sizes", "chunk"}


@dataclasses.dataclass
class PartNode:
    """A graph node as seen by block i of its splits (``node#part{i}``, the i-th block of
    rows they make): each block's clamp is a vector of its own, which no tensor of the model
    holds alone."""

    node: object
    part: int
    name: str = dataclasses.field(init=False)

    def __post_init__(self):
        self.name = f"{self.node.name}#part{self.part}"

    def __getattr__(self, attr):
        return getattr(self.node, attr)


#: functions of linear growth with φ(0) = 0, by φ''(0): stretched, c·φ(t / s), they write
#: CLIP's quick_gelu t·σ(1.702 t) = silu(1.702 t) / 1.702 (and GELU's sigmoid approximation)
_STRETCHABLE = {"silu": 0.5, "gelu": 2 / math.sqrt(2 * math.pi)}


def identify_stretched(f) -> tuple[str, float, float] | None:
    """(fn, c, s) with f(t) = c * fn(t / s) on [-4s, 4s] for silu or gelu, or None.

    The engine's rule for these needs φ(0) = 0, φ'(0) finite and nonzero and φ(x) ~ x far out
    (size passes through, at init and in a change); a stretch keeps all three, and the numbers
    c and 1/s are width-independent multipliers. c/s is f's slope far out (φ(t) ~ t as
    t → +∞), s comes from the curvature at 0: f''(0) = c φ''(0) / s²."""
    import torch

    big = 1e4
    far = f(torch.tensor([big], dtype=torch.float64))
    h = 1e-2  # central second differences at h and h/2, Richardson-combined: O(h⁴)
    near = f(torch.tensor([-h, -h / 2, 0.0, h / 2, h], dtype=torch.float64)).tolist()
    wide, narrow = ((near[i] - 2 * near[2] + near[4 - i]) / (h / (1 + i)) ** 2 for i in (0, 1))
    slope, curve = float(far[0]) / big, (4 * narrow - wide) / 3
    if not (math.isfinite(slope) and math.isfinite(curve)) or slope <= 0 or curve <= 0:
        return None
    for name, bend in _STRETCHABLE.items():
        s = slope * bend / curve
        if not 1e-2 <= s <= 1e2:  # far from the function's own scale: a relu or a square
            continue
        c = slope * s
        t = torch.linspace(-4, 4, 161, dtype=torch.float64) * max(s, 1.0)
        ref = c * torch_function(torch, name)(t / s)
        if float((f(t) - ref).abs().max()) < 2e-3 * max(1.0, float(ref.abs().max())) and \
                agrees_far(f, lambda u, c=c, fn=name, s=s: c * torch_function(torch, fn)(u / s),
                           max(s, 1.0), max(1.0, float(ref.abs().max()))):
            return name, float(f"{c:.9g}"), float(f"{s:.9g}")
    return None


def identify_plus_linear(f: Callable) -> tuple[str, float, float] | None:
    """(function, c, k) with f(t) = c * function(t) + k * t to 1e-9 of each value (against its
    own size, at least 1) at values.sample_points, c and k not 0, or None: a language function
    plus a multiple of its input (elu(t) - t, xIELU's negative piece; a leaky relu, 0.9 relu(t)
    + 0.1 t). Exact up to float64's rounding, not identify's float32 allowance: two functions
    fitted at once could otherwise absorb a small difference that neither fits alone."""
    import torch

    t = sample_points()
    y = f(t)
    if not bool(torch.isfinite(y).all()):
        return None
    for name in RECOGNISED:
        if name == "identity":
            continue
        basis = torch.stack([torch_function(torch, name)(t), t], dim=1)
        c, k = (float(v) for v in torch.linalg.lstsq(basis, y[:, None]).solution[:, 0])
        c, k = float(f"{c:.12g}"), float(f"{k:.12g}")
        err = float(((y - c * basis[:, 0] - k * t).abs() / y.abs().clamp(min=1.0)).max())
        if abs(c) > 1e-12 and abs(k) > 1e-12 and err < 1e-9:
            return name, c, k
    return None


class PointwiseOps:
    """square, exp, expm1, softplus, abs of a per-token vector; an integer power of a recognised
    function emitted as a product; ``expand_as`` of a vector over the batch."""

    def coordinatewise(self, node, x, fn):
        if isinstance(x, (PRef, ParamFn)):  # a function of a param alone (ops_paramfn.py)
            if op_name(node) in FUNCTION_OPS:
                return self.param_fn(node, x, f"{op_name(node)}({{}})")
            raise refuse_param_fn(node, x, op_name(node))
        return self._apply(node, x, fn)

    def op_square(self, node, x):
        return self.coordinatewise(node, x, lambda t: t * t)

    def op_exp(self, node, x):
        return self.coordinatewise(node, x, lambda t: t.exp())

    def op_expm1(self, node, x):
        return self.coordinatewise(node, x, lambda t: t.expm1())

    def op_softplus(self, node, x, beta=1, threshold=20):
        import torch

        if isinstance(x, (PRef, ParamFn)) and beta != 1 and threshold == 20:
            if not (isinstance(beta, (int, float)) and beta > 0):
                raise refuse_param_fn(node, x, "softplus")
            # torch's softplus(w, β) is softplus(β·w) / β, its threshold on β·w as the
            # language's: exactly (1/β) * softplus(β * w)
            inner = self.param_fn(node, x, f"{float(beta)!r} * ({{}})")
            return self.param_fn(node, inner, f"{1.0 / beta!r} * softplus({{}})", (0.0, math.inf))
        if threshold != 20:  # x itself beyond it: the program's softplus is torch's default
            raise refuse(node, f"a softplus of threshold {threshold!r} (it returns its input "
                         "beyond the threshold, which the language's softplus, torch's "
                         "default threshold of 20, does not)",
                         help="leave threshold at its default (20), or write the model as a "
                         "program")
        return self.coordinatewise(
            node, x, lambda t: torch.nn.functional.softplus(t, beta, threshold)
        )

    def op_abs(self, node, x):
        return self.coordinatewise(node, x, lambda t: t.abs())

    def op_hardtanh(self, node, x, min_val=-1.0, max_val=1.0):
        """``F.relu6`` (``nn.ReLU6``, MobileNet's), which torch writes as hardtanh(x, 0, 6), and
        ``nn.Hardtanh``: a clamp (:meth:`op_clamp`)."""
        return self.op_clamp(node, x, min_val, max_val)

    def op_relu6(self, node, x):
        """``F.relu6`` as its own op (nn.ReLU6 exports as hardtanh(x, 0, 6) instead)."""
        return self.op_clamp(node, x, 0.0, 6.0)

    def op_clamp(self, node, x, min=None, max=None):  # noqa: A002 (torch's keyword names)
        """``x.clamp(min, max)`` at constant bounds, named from the op: a chain of coordinatewise
        ops is identified by its values on [-4, 4] (values.identify), where a clamp at 6 or 7 is
        relu or the identity, and their rules would pass on a growth the clamp caps (a silent
        wrong answer). So the input is made a program vector and the clamp written with the
        language's functions, exactly: to [0, 6] ``relu6(x)``; at 0 from below ``relu(x)``; to
        [-c, c] ``c * hardtanh(x / c)`` (gpt-oss's and MiniMax's up projection); from above
        at c > 0 or from below at c < 0 ``c * cap(x / c)``, cap(t) = min(t, 1) (their gate's
        ``clamp(max=swiglu_limit)``); from below at c > 0 or from above at c < 0
        ``c * atleast(x / c)``, atleast(t) = max(t, 1) (Mamba-2's steps clamped to
        ``time_step_limit``, ssd_kernel.py). c is a coefficient slot, read at both widths as any
        number multiplying a vector. An infinite bound is no bound (``clamp(max=inf)`` is the
        identity, ``clamp(0, inf)`` relu): no ``inf`` reaches the program. Any other clamp has
        no form: refused."""
        if any(b is not None and not isinstance(b, (int, float)) for b in (min, max)):
            raise refuse(node, "a clamp at bounds that are tensors, not numbers",
                         help="clamp at numbers (x.clamp(max=c), x.clamp(-c, c))")
        lo, hi = (None if b is None else float(b) for b in (min, max))
        lo = None if lo == -math.inf else lo
        hi = None if hi == math.inf else hi
        if isinstance(x, MeanSq) and (lo, hi) != (None, None):
            # Gemma 3n's AltUp: sqrt(mean(x²).clamp(min=1e-5)), a floor on the RMS it divides by
            return self.norm_floor(node, x, lo, hi)  # (ops_norm.py)
        if (lo, hi) == (None, None):  # no finite bound: the identity, exactly
            return x
        if isinstance(x, Affine) and node.users and all(
                op_name(u) in _SPLITS and u.args[0] is node for u in node.users):
            return ClampedRows(x, lo, hi, node.name)  # split before it is clamped
        form = None
        if (lo, hi) == (0.0, 6.0):
            form = ("relu6", 1.0)
        elif (lo, hi) == (0.0, None):
            form = ("relu", 1.0)
        elif lo is not None and hi is not None and hi > 0 and lo == -hi:
            form = ("hardtanh", hi)
        elif lo is None and hi is not None and hi > 0:
            form = ("cap", hi)
        elif hi is None and lo is not None and lo < 0:
            form = ("cap", lo)
        elif hi is None and lo is not None and lo > 0:
            form = ("atleast", lo)
        elif lo is None and hi is not None and hi < 0:
            form = ("atleast", hi)
        if form is None:
            raise refuse(
                node,
                f"a clamp to [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]: "
                "the language clamps to [0, 6] (relu6), [0, inf) (relu), [-c, c] "
                "(c * hardtanh(x / c)), (-inf, c] for c > 0 and [c, inf) for c < 0 "
                "(c * cap(x / c)), [c, inf) for c > 0 and (-inf, c] for c < 0 "
                "(c * atleast(x / c)), at numbers",
                help="clamp at one of these (nn.ReLU6, x.clamp(max=c), x.clamp(-c, c)), or use "
                "a relu, tanh or sigmoid",
            )
        fn, c = form
        if isinstance(x, (PRef, ParamFn)):  # kept for Swin V2's temperature (ops_temperature)
            return self.param_fn(node, x, f"{fn}({{}})" if c == 1.0 else
                                 f"{c!r} * {fn}(({{}}) / {c!r})")
        x = self.vec(x, node)  # what is no vector is refused there
        if c == 1.0:
            return Vec(self.emit_vector(node.name, f"{fn}({x.name})"), x.tags, x.dim, x.dh)
        v = Pointwise(x, lambda t: t, node.name)
        return self.emit_times(v, node, c, f"{fn}({x.name} / {c!r})", slot=True)

    def split_clamped(self, node, v: ClampedRows, sizes, dim) -> Parts:
        """The blocks of a clamped linear layer's output, each clamped: exactly the split of
        the clamp, where the split is one of the layer's own output into blocks of it
        (:meth:`_split`); any other split (a rotary's halves) of the clamp made whole, as
        before."""
        at = self.by_name.get(v.node, node)  # the clamp's line, where it is refused
        try:
            blocks = self._split(node, v.a, sizes, dim)
        except TraceError:
            blocks = None
        if isinstance(blocks, Parts) and all(isinstance(b, Affine) for b in blocks.items):
            # each block of rows clamped once, named by the order the clamp's splits first
            # made it: a second split of other sizes has its own blocks (a part's place in
            # its split would name two blocks alike, and the walk makes a value once per name)
            made = self._made.setdefault(("clamped rows", v.node), {})
            items = []
            for b in blocks.items:
                rows = (b.w.rows, b.w.period)
                if rows not in made:
                    k = len(made)
                    made[rows] = self.op_clamp(PartNode(at, k), dataclasses.replace(
                        b, node=f"{b.node}#part{k}"), v.lo, v.hi)
                items.append(made[rows])
            return Parts(items)
        return self._split(node, self.op_clamp(at, self.vec(v.a, at), v.lo, v.hi), sizes, dim)

    def emit_form(self, v: Pointwise, node) -> Vec | None:
        """The program vector of a chain no language function matches alone: an integer power
        of one (a product of copies), or tanh of a scaled input (a soft-cap); None if neither."""
        power = identify_power(v.f)
        if power is not None:
            return self.emit_power(v, node, *power)
        scaled = identify_scaled(v.f) or identify_stretched(v.f)
        if scaled is not None:
            return self.emit_scaled(v, node, *scaled)
        plus = identify_plus_linear(v.f)
        if plus is not None:
            return self.emit_plus_linear(v, node, *plus)
        return None

    def emit_plus_linear(self, v: Pointwise, node, fn: str, c: float, k: float) -> Vec:
        """``c * fn(src) + k * src``: a sum of two Nonlins of one vector (the engine's rules for
        a sum: the larger exponent), each number a coefficient slot as ``emit_times``'s."""
        key = (v.node, fn, "+ t", round(c, 12), round(k, 12))
        if key in self._made:
            return self._made[key]
        at = self.by_name.get(v.node, node)
        first = self.coefficient(c, at, "")
        index = len(self.out.slots) - 1
        second = self.coefficient(k, at, v.src.name)
        name = self.emit_vector(v.node, f"{first} * {fn}({v.src.name}) + {second} * "
                                f"{v.src.name}")
        for i in (index, index + 1):
            self.out.coefs[i]["out"] = name
        self.out.coefficient_nodes.add(v.node)
        self._made[key] = Vec(name, v.src.tags, v.src.dim, v.src.dh)
        return self._made[key]

    def emit_scaled(self, v: Pointwise, node, fn: str, c: float, s: float) -> Vec:
        """``c * fn(src / s)``: Gemma 2's soft-cap of its output logits, ``30 * tanh(x / 30)``
        (the engine's rule for tanh, bounded with a Θ(1) slope at 0, of a multiple of src), or
        CLIP's quick_gelu ``x * sigmoid(1.702 x) = silu(1.702 x) / 1.702`` (silu's rule)."""
        key = (v.node, fn, s, round(c, 12))
        if key not in self._made:  # a slot even at c = 1: the form is always c * tanh(x / s)
            self._made[key] = self.emit_times(v, node, c, f"{fn}({v.src.name} / {s!r})",
                                              slot=True)
        return self._made[key]

    def emit_power(self, v: Pointwise, node, fn: str, c: float, k: int) -> Vec:
        """``c * fn(src)^k`` as ``g = fn(src)`` and the product of k copies of g: Nonlin mul,
        whose rule adds its factors' exponents, as a power's do."""
        key = (v.node, fn, k, round(c, 12))
        if key in self._made:
            return self._made[key]
        src = v.src
        base = src.name
        if fn != "identity":
            base = self.fresh(f"{v.node}_{fn}")
            self.out.stmts.append(f"{base} = {fn}({src.name})")
        self._made[key] = self.emit_times(v, node, c, " * ".join([base] * k))
        return self._made[key]

    def offset_product(self, node, u, v) -> Vec | None:
        """``(g(x) + c) * y`` of a vector y of another source (gpt-oss's and MiniMax's
        ``(up + 1) * glu``): the language adds no number to a vector, so the product is
        written distributed, ``g(x) * y + c * y``, which is the same computation. Only where
        g = f - f(0) is a language function and f itself none (a sigmoid gate stays one
        function). None: no such product."""
        import torch

        for a, b in ((u, v), (v, u)):
            if not (isinstance(a, Pointwise) and isinstance(b, (Vec, Affine, Pointwise))):
                continue
            c = float(a.f(torch.zeros(1, dtype=torch.float64))[0])
            g = Pointwise(a.src, lambda t, f=a.f, c=c: f(t) - c, a.node)
            if c == 0 or not math.isfinite(c) or identify(a.f) is not None or \
                    identify(g.f) is None:
                continue
            prod = self.op_mul(node, g, b)
            y = self.vec(b, node)
            name = self.emit_vector(node.name, f"{prod.name} + {c!r} * {y.name}")
            return Vec(name, prod.tags, prod.dim, prod.dh)
        return None

    def token_mask(self, node, u, v):
        """``x * mask[..., None]`` with a constant mask of 0s and 1s per token (XLM's padding
        mask, computed from the inputs): where it keeps every token, the identity, which the
        program describes (a mask of the token ids read at the example's own ids, not the
        walk's zeros: ids != image_id zeroes the example's placeholders). One that zeroes a
        token is refused: the zeroed vector is read on (a residual, the next layer), so the
        program without the mask would compute something else, and the language has no
        per-token constant. None: no such product."""
        for at, (x, m) in enumerate(((u, v), (v, u))):
            value = getattr(m, "value", None)
            if isinstance(m, Conc) and hasattr(value, "shape") and isinstance(
                    x, (Vec, Affine, Pointwise)):
                tags = self._tags(x)
                ones = bool(((value == 0) | (value == 1)).all())
                per_token = value.dim() == len(tags) and value.shape[-1] == 1 and all(
                    s == 1 or t == "tok" for s, t in zip(value.shape, tags, strict=True))
                if ones and per_token and bool((value == 1).all()) and m.probe is not None \
                        and getattr(self, "traced_ids", False):
                    # computed from the token ids: the walk's are zeros, so the mask is the
                    # one of the example's own ids (an image's placeholders, ids != image_id)
                    mine = self.with_example_ids(node.args[1 - at])
                    try:
                        value = mine.to(value.dtype).expand(value.shape)
                    except (AttributeError, RuntimeError):  # unknown (None), or other shape
                        pass
                if ones and per_token and bool((value == 1).all()):
                    return x
                if ones and per_token:
                    dropped = int((value == 0).sum())
                    raise refuse(node, f"a product with a mask of 0s and 1s per token that "
                                 f"zeroes {dropped} of them: the language's sequences keep "
                                 "every token's vector, so only a mask that keeps every token "
                                 "(the identity) is traced",
                                 help="trace with example inputs without padding (no "
                                 "attention_mask, or one of all ones); a constant mask that "
                                 "drops tokens has no form in the language")
                raise refuse(node, "a product with a constant tensor other than a mask of 0s "
                             "and 1s per token (a padding mask)")
        return None

    # -- a function of attention logits: Gemma 2's soft-cap ------------------------------------
    def capped_scores(self, node, s: Scores, fn) -> Scores:
        """``fn`` of the logits ``s`` (of the function already applied to them): Gemma 2's
        soft-cap ``c * tanh(logits / c)``. The logits are Θ(1) under µP and a coordinatewise
        function of them is a Nonlin like any other (the engine's rule for tanh, times a
        number), so the program writes ``y = c * tanh(attn * dot(q, k, dh))`` and the softmax
        of y; the attention scale's exponent is derived through it."""
        f = s.cap[0] if s.cap else (lambda t: t)
        # (a relative bias kept: the function is of the logits with it)
        return dataclasses.replace(s, cap=(lambda t, f=f: fn(f(t)), node.name))

    def capped_logits(self, s: Scores, logits: str) -> str:
        """The program vector the softmax takes: the logits, or the function of them."""
        if s.cap is None:
            return logits
        f, at = s.cap
        heads = Vec(logits, s.tags, s.q.dim, None)
        return self.vec(Pointwise(heads, f, at), self.by_name[at]).name

    def op_zeros_like(self, node, v, *rest, **kwargs):
        """``zeros_like(x)`` (GIT's token types, ``zeros_like(h, dtype=int)[..., 0]``): a
        constant of x's shape, whatever x holds, so no value of the program."""
        import torch

        val = node.meta["val"]
        return Conc(torch.zeros(tuple(val.shape), dtype=val.dtype))

    def op_ones_like(self, node, v, *rest, **kwargs):
        import torch

        val = node.meta["val"]  # (zeros + 1 of a bool dtype is an integer 1, whose ~ is -2)
        return Conc(torch.ones(tuple(val.shape), dtype=val.dtype))

    def op_new_ones(self, node, v, *rest, **kwargs):
        """``x.new_ones(size)`` (Funnel's mask of the tokens but its class token, padded): a
        constant of the size and dtype given, which reads x's dtype alone."""
        return self.op_ones_like(node, v)

    def op_expand_as(self, node, v, other):
        """A vector the same for every sequence (a positions embedding, [1, T, n]) broadcast
        over the batch: each token's vector unchanged, so the vector itself."""
        old = tuple(node.args[0].meta["val"].shape)
        new = tuple(node.meta["val"].shape)
        if isinstance(v, L2Norm):  # F.normalize's divisor, to its vector's shape (ops_norm.py)
            return v
        if isinstance(v, Conc):  # a mask computed from the inputs, to the logits' shape (XLM's)
            return Conc(v.value.expand(new))
        if isinstance(v, Aux):
            return Aux()
        if isinstance(v, PRef) and len(old) == 1 and v.shape == old and new[-1] == old[0]:
            # a vector param over every token (GPT-NeoX-Japanese's attention bias): the same
            # param in the sum (product) it joins, a bias, whose broadcast that op checks on the
            # param's own shape (ops_arith); read otherwise (viewed, sliced), the expanded
            # tensor would be read as the param's n entries
            # (read through its copies: HRM's initial state, z.expand_as(x).contiguous(),
            # then added to x; or handed to a torch.no_grad region, whose rules take it or
            # refuse the region, ops_nograd.py)
            if node.users and all(op_name(u) in _PARAM_SUMS | {"wrap_with_set_grad_enabled"}
                                  for u in _through_copies(node)):
                return v
            raise refuse(node, f"an expand_as from {list(old)} to {list(new)} of a param read "
                         "by anything but a sum or product with a value (torch's own "
                         "broadcast of the param, which the language's vector param is)",
                         help="add (or multiply) the param itself, x + b, or the expanded "
                         "one right away, x + b.expand_as(x)")
        if isinstance(v, (Vec, Affine, Pointwise)) and len(old) == len(new):
            tags = self._tags(v)
            if all(a == b or (a == 1 and tags[i] == "tok")
                   for i, (a, b) in enumerate(zip(old, new, strict=True))):
                return v
        raise refuse(node, f"an expand_as from {list(old)} to {list(new)} of anything but a "
                     "per-token vector over the batch")


# the ops that read a param expand_as'd into a value's shape as the param (ops_arith's
# _param_broadcast checks its own shape against the other operand's axes)
_PARAM_SUMS = {"add", "sub", "rsub", "mul", "add_", "sub_", "mul_"}


def _through_copies(node) -> list:
    """The ops that read ``node``'s value, through the ops that copy it unchanged, export's
    checks left out."""
    out, todo = [], list(node.users)
    while todo:
        u = todo.pop()
        if op_name(u) in IDENTITY_OPS and u.users:
            todo.extend(u.users)
        elif op_name(u) not in CHECK_OPS:  # export's checks of dtypes and shapes read nothing
            out.append(u)
    return out
