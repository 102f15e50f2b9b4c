"""The infinite-width limit of a program at init: its NNGP kernel, by the Tensor Program master
theorem (TP1, Yang 2019; the NETSOR form of TP2).

As n → ∞ at init, every vector of a program has iid coordinates distributed as a random variable
Z (its *Z-variable*), and every Z is a function of jointly Gaussian ones:

* ``W @ u`` with an infinite fan-in gives a fresh Gaussian ``Z^{Wu}``, independent of every Z not
  built from W, with ``Cov(Z^{Wu}(x), Z^{Wv}(x')) = σ_W² E[Z^u(x) Z^v(x')]``: a reused W (an RNN,
  a weight applied twice) correlates its outputs through the kernel of its arguments;
* ``W @ x`` on an input of finite dim d is exactly Gaussian, with covariance ``σ_W² x·x'``;
* a Gaussian-initialised bias or gain is a Gaussian with the same value at every input;
* a nonlinearity applies coordinatewise, ``Z^{φ(h)} = φ(Z^h)``; sums and products are sums and
  products of Z's.

So the kernel of a vector, ``K(x, x') = E[Z(x) Z(x')]``, is built by one rule per instruction (the
table :data:`RULES`) from the kernels of Gaussians: closed forms where they exist (identity; the
relu arc-cosine kernel of Cho & Saul 2009; Stein's lemma for identity × relu), 2-D Gauss–Hermite
quadrature for a pair of inputs otherwise, with its error estimated by halving the order.

Widths enter through the emitted module's init (tensorprog/emit/module.py): a param is used as
``ratio^-a · W`` with ``W ~ N(0, (base_std · ratio^-b)²)`` and ``base_std² = 1/fan_in`` at the
base width, ratio = n / base. A sum over an infinite fan-in of n iid terms then has variance
``ratio^(1 - 2(a+b)) · E[Z²]``. Every value is kept as ``ratio^e · Z̃`` with an exact exponent e:
e = 0 has a finite, nonzero limit; e < 0 vanishes (µP's readout at init, ``(a+b) = 1``), and the
kernel reported is then ``K̃``, the limit of ``ratio^(-2e) K``, with e stated.

Refused with a positioned error: attention (per-head dot, mix, softmax), token, position and
image inputs, pooling, convolutions, a matrix used both as W and W.T (that needs NETSOR⊤'s
correction terms), and a nonlinearity of a variable that is not a function of one Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..emit.load import load_module
from ..emit.module import emit
from ..engine.exponents import ABC
from ..engine.optimizers import resolve
from ..engine.parametrization import choose
from ..errors import EngineError, Span, UsageError
from ..ir.functions import CAT, MUL, PART, PICK, PLACE, RMS
from ..ir.hdot import HDOT
from ..ir.program import (
    INSTRUCTIONS,
    Delta,
    Dot,
    LinComb,
    MatMul,
    Mean,
    Mix,
    Nonlin,
    Prepend,
    Program,
    Relayout,
    Route,
    RouteIn,
    Stream,
)
from ..ir.sizes import check_kernels
from ..ir.text import render_instruction
from .common import AT_ZERO, FNS, ID, ORDER, Fn, frac, gaussian_mean, gaussian_pair, read_inputs

# --- Gaussian sources, linear combinations, monomials ---------------------------------------------


@dataclass(eq=False)
class Source:
    """One Gaussian Z-variable: a matmul's output, or a Gaussian bias. Sources of one ``group``
    (the same weight) are correlated; sources of different groups are independent."""

    id: int
    group: str
    what: str
    arg: object = None  # the normalised Value fed to the weight, or input data (P, d)
    finite_fan_in: bool = False


@dataclass(frozen=True)
class Lin:
    """A centred Gaussian ``Σ_s c_s(x) G_s(x)``; a coefficient may depend on the input (norms)."""

    terms: tuple[tuple[int, np.ndarray], ...]

    @property
    def key(self) -> tuple:
        return tuple((s, c.tobytes()) for s, c in self.terms)

    def scaled(self, c: np.ndarray) -> Lin:
        return Lin(tuple((s, k * c) for s, k in self.terms))


@dataclass(frozen=True)
class Mono:
    """``coef(x) · Π_j f_j(L_j(x))`` with distinct L_j; no factors: a deterministic value."""

    coef: np.ndarray
    factors: tuple[tuple[Fn, Lin], ...] = ()


@dataclass(frozen=True)
class Value:
    """``ratio^exp · Σ monos``: a Z-variable at every input; no monos: exactly zero."""

    exp: Fraction | None
    monos: tuple[Mono, ...]

    @property
    def zero(self) -> bool:
        return not self.monos


def _lin_sum(lins: list[Lin]) -> Lin:
    acc: dict[int, np.ndarray] = {}
    for lin in lins:
        for s, c in lin.terms:
            acc[s] = acc[s] + c if s in acc else c
    return Lin(tuple(sorted((s, c) for s, c in acc.items() if np.any(c != 0))))


def _simplify(monos: list[Mono], ones: np.ndarray) -> tuple[Mono, ...]:
    """Fold Gaussian monos into one Lin, constants into one constant, and drop zeros."""
    gauss, const, rest = [], np.zeros_like(ones), []
    for m in monos:
        if not m.factors:
            const = const + m.coef
        elif len(m.factors) == 1 and m.factors[0][0] is ID:
            gauss.append(m.factors[0][1].scaled(m.coef))
        elif np.any(m.coef != 0):
            rest.append(m)
    out = []
    lin = _lin_sum(gauss)
    if lin.terms:
        out.append(Mono(ones, ((ID, lin),)))
    out += rest
    if np.any(const != 0):
        out.append(Mono(const))
    return tuple(out)


# --- the evaluator --------------------------------------------------------------------------------


@dataclass
class Step:
    """How one instruction's limit was computed."""

    line: str
    method: str
    error: float = 0.0


@dataclass
class Kernel:
    """The NNGP kernel of a program's outputs over a set of inputs, in the infinite-width limit.

    ``kernels[o][a, b] = lim ratio^(-2e) E[Z^o(x_a) Z^o(x_b)]`` with ``e = exponents[o]``; every
    coordinate of a finite output is an independent copy with this kernel. ``vectors`` holds the
    kernel of every vector the program computes (for comparing with a finite network)."""

    program: str
    parametrization: str
    kernels: dict[str, np.ndarray]
    exponents: dict[str, Fraction | None]
    vectors: dict[str, np.ndarray]
    vector_exponents: dict[str, Fraction | None]
    steps: list[Step]
    base_width: int

    @property
    def error(self) -> float:
        """The largest quadrature error estimate of any step (0 if all were closed forms)."""
        return max((s.error for s in self.steps), default=0.0)

    def status(self, output: str) -> str:
        e = self.exponents[output]
        if e is None:
            return "exactly zero at init (a zero-initialised weight)"
        if e == 0:
            return "finite and nonzero as n → ∞"
        trend = "vanishes" if e < 0 else "diverges"
        return (f"{trend} at init: the kernel at width n is (n/{self.base_width})^{2 * e} "
                f"times the one shown (the limit of the rescaled kernel)")

    def __str__(self) -> str:
        lines = [f"NNGP kernel at init of {self.program} under {self.parametrization}, "
                 f"{len(next(iter(self.kernels.values())))} inputs, n → ∞",
                 "", "method per instruction:"]
        lines += [f"  {s.line:<32} {s.method}"
                  + (f" (est. error {s.error:.1e})" if s.error else "") for s in self.steps]
        lines.append(f"largest quadrature error estimate: {self.error:.1e}")
        for o, k in self.kernels.items():
            lines += ["", f"output {o}: {self.status(o)}"]
            if self.exponents[o] is not None:
                with np.printoptions(precision=6, suppress=True, linewidth=100, threshold=64):
                    lines.append(str(k))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "program": self.program, "parametrization": self.parametrization,
            "base_width": self.base_width,
            "method": [{"instruction": s.line, "method": s.method, "error": s.error}
                       for s in self.steps],
            "error": self.error,
            "outputs": {o: {"exponent": None if self.exponents[o] is None
                            else str(self.exponents[o]),
                            "status": self.status(o),
                            "kernel": None if self.exponents[o] is None else k.tolist()}
                        for o, k in self.kernels.items()},
        }


class _Limit:
    """Evaluates a program's Z-variables at P inputs, one rule per IR class."""

    def __init__(self, program: Program, abc: dict[str, ABC], inputs: dict[str, np.ndarray],
                 order: int):
        self.program, self.abc, self.order = program, abc, order
        self.data = inputs
        self.P = len(next(iter(inputs.values())))
        self.ones = np.ones(self.P)
        self.sources: list[Source] = []
        self.by_key: dict[tuple, int] = {}
        self.cross: dict[tuple[int, int], np.ndarray] = {}
        self.values: dict[str, Value] = {}
        self.steps: list[Step] = []
        self.errors: list[float] = []
        self.methods: set[str] = set()

    # --- sources and their covariances
    def source(self, key: tuple, group: str, what: str, arg=None, finite=False) -> int:
        if key not in self.by_key:
            self.by_key[key] = len(self.sources)
            self.sources.append(Source(len(self.sources), group, what, arg, finite))
        return self.by_key[key]

    def source_cov(self, s: int, t: int) -> np.ndarray:
        """Cov(G_s(x_a), G_t(x_b)) for all pairs of inputs."""
        a, b = self.sources[s], self.sources[t]
        if a.group != b.group:
            return np.zeros((self.P, self.P))
        if (s, t) not in self.cross:
            if (t, s) in self.cross:
                self.cross[s, t] = self.cross[t, s].T
            elif a.arg is None:  # a Gaussian bias: the same draw at every input
                self.cross[s, t] = np.ones((self.P, self.P))
            elif a.finite_fan_in:
                self.cross[s, t] = a.arg @ b.arg.T / a.arg.shape[1]
            else:
                self.cross[s, t] = self.expect(a.arg, b.arg)
        return self.cross[s, t]

    def lin_cov(self, u: Lin, v: Lin) -> np.ndarray:
        out = np.zeros((self.P, self.P))
        for s, c in u.terms:
            for t, d in v.terms:
                if self.sources[s].group == self.sources[t].group:
                    out += c[:, None] * d[None, :] * self.source_cov(s, t)
        return out

    def lin_var(self, u: Lin) -> np.ndarray:
        return np.diag(self.lin_cov(u, u)).copy()

    def dependent(self, u: Lin, v: Lin) -> bool:
        groups = {self.sources[s].group for s, _ in u.terms}
        return any(self.sources[t].group in groups for t, _ in v.terms)

    # --- expectations
    def expect(self, u: Value, v: Value) -> np.ndarray:
        """E[Z̃^u(x_a) Z̃^v(x_b)] for all pairs of inputs (normalised: exponents left out)."""
        out = np.zeros((self.P, self.P))
        for m in u.monos:
            for k in v.monos:
                out += self.expect_mono(m, k)
        return out

    def expect_mono(self, m: Mono, k: Mono) -> np.ndarray:
        items = [(0, f, lin) for f, lin in m.factors] + [(1, f, lin) for f, lin in k.factors]
        parent = list(range(len(items)))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i

        for i in range(len(items)):
            for j in range(i):
                if self.dependent(items[i][2], items[j][2]):
                    parent[find(i)] = find(j)
        out = m.coef[:, None] * k.coef[None, :]
        for root in {find(i) for i in range(len(items))}:
            block = [items[i] for i in range(len(items)) if find(i) == root]
            left = [(f, lin) for side, f, lin in block if side == 0]
            right = [(f, lin) for side, f, lin in block if side == 1]
            if len(left) > 1 or len(right) > 1:
                raise _Refuse("a product of dependent Gaussians (e.g. two uses of one weight "
                              "multiplied together) needs a higher-dimensional integral",
                              "the NNGP rules here integrate over one Gaussian per input")
            if left and right:
                (f, u), (g, v) = left[0], right[0]
                val, err, method = gaussian_pair(f, g, self.lin_var(u), self.lin_var(v),
                                         self.lin_cov(u, v), self.order)
                self.errors.append(err)
                self.methods.add(method)
                out = out * val
            else:
                (f, u), = left or right
                mean, _ = gaussian_mean(f, self.lin_var(u), self.order)
                out = out * (mean[:, None] if left else mean[None, :])
        return out

    # --- values of names
    def value(self, name: str, span: Span | None) -> Value:
        if name in self.values:
            return self.values[name]
        if name in self.data:
            raise _Refuse(f"{name} is an input of finite dim: its coordinates are data, not iid "
                          "copies of one Z-variable", "read inputs with a weight (W @ x)", span)
        p = self.program.param_table[name]  # inputs and computed values are in self.values
        return self.param_value(p.name, span)

    def param_value(self, name: str, span: Span | None) -> Value:
        p = self.program.param_table[name]
        x = self.abc[name]
        a, b = frac(x.a), frac(x.b)
        if p.is_scale:
            base = float(p.base) if p.base is not None else 1.0
            return Value(-a, (Mono(base * self.ones),))
        if b is None:
            return Value(None, ())
        if a is None:
            raise _Refuse(f"{name} has an infinite multiplier exponent", "give a finite a", span)
        uses = {type(u) for u in self.program.uses(name)}
        if Dot in uses and len(uses) > 1:
            raise _Refuse(f"{name} is used both as a readout vector in dot and elementwise",
                          "use two params", span)
        if p.base is not None:  # a constant init: every coordinate equals init · ratio^-(a+b)
            return Value(-(a + b), (Mono(float(p.base) * self.ones),))
        if self.program.dim(p.shape[0]).infinite:  # iid N(0, 1) coordinates (base_std = 1)
            s = self.source(("param", name), name, name)
            return Value(-(a + b), (Mono(self.ones, ((ID, Lin(((s, self.ones),))),)),))
        raise _Refuse(f"{name} is a random vector of finite dim: its coordinates are not iid "
                      "copies of one Z-variable across the network", "use it only as an output "
                      "bias (y = W @ h + b) or give it an infinite dim", span)

    def add(self, parts: list[tuple[Fraction, Value]]) -> Value:
        live = [(c, v) for c, v in parts if not v.zero]
        if not live:
            return Value(None, ())
        top = max(v.exp for _, v in live)
        monos = [Mono(float(c) * m.coef, m.factors) for c, v in live if v.exp == top
                 for m in v.monos]
        monos = _simplify(monos, self.ones)
        return Value(top if monos else None, monos)

    def times(self, u: Value, v: Value) -> Value:
        if u.zero or v.zero:
            return Value(None, ())
        monos = []
        for m in u.monos:
            for k in v.monos:
                factors: dict[tuple, tuple[Fn, Lin]] = {}
                for f, lin in m.factors + k.factors:
                    if lin.key in factors:
                        g = factors[lin.key][0]
                        factors[lin.key] = (_product(g, f), lin)
                    else:
                        factors[lin.key] = (f, lin)
                monos.append(Mono(m.coef * k.coef, tuple(factors.values())))
        return Value(u.exp + v.exp, _simplify(monos, self.ones))

    def apply(self, fn: str, v: Value, span: Span | None) -> Value:
        phi = FNS[fn]
        if v.zero:
            c = AT_ZERO[fn]
            return Value(Fraction(0), (Mono(c * self.ones),)) if c else Value(None, ())
        if v.exp != 0 and fn not in ("relu", "identity"):
            trend = "vanishes" if v.exp < 0 else "blows up"
            raise _Refuse(f"the argument of {fn} {trend} at init (exponent {v.exp}) under this "
                          "parametrization", "only relu and identity are homogeneous; choose a "
                          "parametrization whose pre-activations are Θ(1) at init", span)
        if fn == "identity":
            return v
        uniform = all(np.all(m.coef == m.coef[0]) for m in v.monos)
        lins = {lin.key: lin for m in v.monos for _, lin in m.factors}
        if len(lins) == 1 and uniform:  # a function of one Gaussian: compose
            (lin,) = lins.values()
            return Value(v.exp, (Mono(self.ones, ((_compose(phi, v.monos), lin),)),))
        if fn == "relu" and len(v.monos) == 1 and np.all(v.monos[0].coef > 0):
            m = v.monos[0]  # relu(c·a·b) = c·(relu(a) relu(b) + relu(-a) relu(-b)) for c > 0
            monos = [Mono(m.coef, tuple(fs)) for fs in _relu_product(list(m.factors))]
            return Value(v.exp, _simplify(monos, self.ones))
        raise _Refuse(f"the argument of {fn} is not a function of one Gaussian in the limit "
                      "(it mixes independent Gaussian and non-Gaussian terms)",
                      "the NNGP rules integrate φ over one Gaussian per input; put a matmul "
                      "before the nonlinearity", span)


def _product(f: Fn, g: Fn) -> Fn:
    return Fn(f"{f.name}·{g.name}", lambda x: f.f(x) * g.f(x))


def _compose(phi: Fn, monos: tuple[Mono, ...]) -> Fn:
    """φ(Σ_k c_k f_k(z)): one function of the one Gaussian z every mono depends on."""
    if len(monos) == 1 and len(monos[0].factors) == 1 and monos[0].coef[0] == 1:
        f = monos[0].factors[0][0]
        if f is ID:
            return phi
        if phi is ID:
            return f
    parts = [(float(m.coef[0]), m.factors[0][0] if m.factors else None) for m in monos]

    def inner(x):
        return sum(c * (f.f(x) if f is not None else 1.0) for c, f in parts)

    text = " + ".join(f"{c:g}" if f is None else (f.name if c == 1 else f"{c:g}·{f.name}")
                      for c, f in parts)
    return Fn(f"{phi.name}({text})", lambda x: phi.f(inner(x)))


def _neg(f: Fn) -> Fn:
    return Fn(f"-{f.name}", lambda x: -f.f(x))


def _relu_of(f: Fn) -> Fn:
    if f is ID:
        return FNS["relu"]
    return Fn(f"relu({f.name})", lambda x: np.maximum(f.f(x), 0.0))


def _relu_product(factors: list[tuple[Fn, Lin]]) -> list[list[tuple[Fn, Lin]]]:
    """relu(Π f_j) as a sum of products of univariate functions: relu(a·b) = relu(a) relu(b) +
    relu(-a) relu(-b), applied recursively (exact: at most one term is nonzero)."""
    return _sign_split(factors, positive=True)


def _sign_split(factors, positive: bool):
    (f, lin), rest = factors[0], factors[1:]
    if not rest:
        return [[(_relu_of(f if positive else _neg(f)), lin)]]
    out = []
    for sign_f in (True, False):  # relu(±a·b): split on the sign of a
        g = _relu_of(f if sign_f else _neg(f))
        for tail in _sign_split(rest, positive == sign_f):
            out.append([(g, lin), *tail])
    return out


class _Refuse(Exception):
    def __init__(self, message: str, help: str, span: Span | None = None):
        super().__init__(message)
        self.message, self.help, self.span = message, help, span


# --- one rule per IR class ------------------------------------------------------------------------


def _matmul(ev: _Limit, ins: MatMul) -> tuple[Value, str]:
    prog = ev.program
    w = prog.param_table[ins.weight]
    if len(w.shape) == 4:
        raise _Refuse("convolutions have no NNGP rule here", "use a dense program", ins.span)
    if len({u.transposed for u in prog.uses(ins.weight) if isinstance(u, MatMul)}) == 2:
        raise _Refuse(f"{ins.weight} is used both as {ins.weight} and {ins.weight}.T: their "
                      "Z-variables need NETSOR⊤'s correction terms, not implemented",
                      "untie the matrices to get the kernel of the untied network", ins.span)
    x = ev.abc[ins.weight]
    a, b = frac(x.a), frac(x.b)
    if b is None:
        return Value(None, ()), "zero (zero-initialised weight)"
    s = a + b
    fan_in = w.shape[0] if ins.transposed else w.shape[1]
    if not prog.dim(fan_in).infinite:
        if ins.arg not in ev.data:
            raise _Refuse(f"{ins.weight} has a finite fan-in, and {ins.arg} is not an input: "
                          "a finite sum of random terms is not Gaussian in the limit",
                          "feed finite-fan-in weights with program inputs only", ins.span)
        src = ev.source(("mm", ins.weight, ins.arg), ins.weight, ins.out, ev.data[ins.arg],
                        finite=True)
        return (Value(-s, (Mono(ev.ones, ((ID, Lin(((src, ev.ones),))),)),)),
                "closed form (input layer: σ² x·x')")
    u = ev.value(ins.arg, ins.span)
    if u.zero:
        return Value(None, ()), "zero (zero argument)"
    src = ev.source(("mm", ins.weight, ins.arg), ins.weight, ins.out, u)
    ev.source_cov(src, src)  # now, so that this step states its method and error
    return (Value(u.exp + Fraction(1, 2) - s, (Mono(ev.ones, ((ID, Lin(((src, ev.ones),))),)),)),
            "Gaussian: Cov = σ² E[Z^u Z^u']")


def _lincomb(ev: _Limit, ins: LinComb) -> tuple[Value, str]:
    if ins.const:
        raise _Refuse(f"{ins.out} adds a number to a function of params: functions of gains "
                      "have no kernel rule here", "write the network without the gain", ins.span)
    return ev.add([(c, ev.value(name, ins.span)) for c, name in ins.terms]), "sum"


def _nonlin(ev: _Limit, ins: Nonlin) -> tuple[Value, str]:
    dims = ev.program.value_dims
    if ins.fn in (PART, CAT, PLACE, PICK, RMS):
        what = {PART: "part(x, d, i) (a part of a vector's coordinates)",
                CAT: "cat(a, b, D) (finite vectors side by side)", PLACE: "place(v, h, k) (one "
                "sequence's tokens in place of another's)", PICK: "pick(y, D, i1, ...) (chosen "
                "coordinates of a finite vector)", RMS: "rms(x, D) (a vector's RMS, one number per "
                "token)"}[ins.fn] + " has no NNGP rule here"
        raise _Refuse(what,
                      "the kernel is computed for dense programs: matmul, sums, products, dot "
                      "and coordinatewise nonlinearities", ins.span)
    if ins.over is not None or (
        ins.fn == MUL and any(dims.get(a) not in (None, dims.get(ins.out)) for a in ins.args)
    ):  # over a finite head dim the per-head RMS does not concentrate: no Gaussian limit
        what = ("a dot over each head's coordinates of one token" if ins.fn == HDOT
                else "a norm or gain over each head's coordinates")
        raise _Refuse(f"{ins.fn} per head has no NNGP rule here ({what})", "the kernel is "
                      "computed for whole-dim dots, norms and gains; write dot(u, v, n), "
                      "rmsnorm(h) and a gain of the vector's dim", ins.span)
    if ins.fn == MUL:
        u, v = (ev.value(a, ins.span) for a in ins.args)
        return ev.times(u, v), "product"
    if ins.fn in ("layernorm", "rmsnorm"):
        return _norm(ev, ins), f"{ins.fn}: an affine map per input"
    if ins.fn not in FNS:
        raise _Refuse(f"{ins.fn} has no NNGP rule here (it acts across coordinates or tokens)",
                      "the kernel is computed for dense programs: matmul, sums, products, dot "
                      "and coordinatewise nonlinearities", ins.span)
    return ev.apply(ins.fn, ev.value(ins.args[0], ins.span), ins.span), ins.fn


def _norm(ev: _Limit, ins: Nonlin) -> Value:
    """layernorm(h) → (Z - E Z(x)) / √(Var Z(x) + ε); rmsnorm(h) → Z / √(E Z(x)² + ε): per
    input, an affine map of Z (the mean over n coordinates is the expectation in the limit)."""
    v = ev.value(ins.args[0], ins.span)
    if v.zero or v.exp != 0:
        raise _Refuse(f"the argument of {ins.fn} is not Θ(1) at init", "normalise a Θ(1) vector",
                      ins.span)
    second = np.diag(ev.expect(v, v)).copy()
    eps = 1e-6 if ins.fn == "rmsnorm" else 1e-5  # as the emitted module
    if ins.fn == "layernorm":
        mean = np.zeros(ev.P)
        for m in v.monos:
            term = m.coef.copy()
            for f, lin in m.factors:
                term = term * gaussian_mean(f, ev.lin_var(lin), ev.order)[0]
            mean += term
        v = ev.add([(Fraction(1), v), (Fraction(-1), Value(Fraction(0), (Mono(mean),)))])
        second = second - mean**2
    scale = 1.0 / np.sqrt(second + eps)
    return Value(Fraction(0), _simplify([Mono(m.coef * scale, m.factors) for m in v.monos],
                                        ev.ones))


def _dot(ev: _Limit, ins: Dot) -> tuple[Value, str]:
    prog = ev.program
    if ins.over is not None:
        raise _Refuse("per-head dot (attention) has no NNGP rule here",
                      "the kernel is computed for dense programs", ins.span)
    dim = prog.dim(prog.value_dims[ins.left])
    params = [n for n in (ins.left, ins.right) if n in prog.param_table
              and not prog.param_table[n].is_scale and prog.param_table[n].base is None]
    if params and dim.infinite:  # a readout vector: a 1 x n matrix
        w = params[0]
        other = ins.right if w == ins.left else ins.left
        a, b = frac(ev.abc[w].a), frac(ev.abc[w].b)
        if b is None:
            return Value(None, ()), "zero (zero-initialised readout)"
        u = ev.value(other, ins.span)
        if u.zero:
            return Value(None, ()), "zero"
        src = ev.source(("dot", w, other), w, ins.out, u)
        ev.source_cov(src, src)
        return (Value(u.exp + Fraction(1, 2) - a - b,
                      (Mono(ev.ones, ((ID, Lin(((src, ev.ones),))),)),)),
                "Gaussian readout: Cov = σ² E[Z^u Z^u']")
    if not dim.infinite:
        raise _Refuse("a dot over a finite dim is a random finite sum, not a Z-variable",
                      "use dot over an infinite dim", ins.span)
    u, v = ev.value(ins.left, ins.span), ev.value(ins.right, ins.span)
    if u.zero or v.zero:
        return Value(None, ()), "zero"
    # law of large numbers: Σ_i u_i v_i = n E[Z^u Z^v] + O(√n), deterministic per input
    size = float(dim.mult) * prog.width.base
    inner = np.diag(ev.expect(u, v)).copy()
    return Value(u.exp + v.exp + 1, (Mono(size * inner),)), "deterministic (LLN: n E[Z^u Z^v])"


# the instructions of sequences and experts, which the kernel of dense programs does not cover
_SEQUENCE_OPS = {
    Mix: "mix (attention's token mixing) has no NNGP rule here",
    Delta: "delta (the gated delta rule's token mixing, linear attention) has no NNGP rule "
           "here: its weights are a ratio of finite sums over tokens, not a Z-variable",
    Route: "route (a mixture of experts' top-k) has no NNGP rule here: the selection is not a "
           "Gaussian computation",
    Prepend: "prepend (a learned token before a sequence) has no NNGP rule here",
    Mean: "mean (a mean over a sequence's tokens) has no NNGP rule here",
    Relayout: "tokens, image and tail (an image's pixels read as tokens, and back; a sequence's "
              "last tokens) have no NNGP rule here",
}
_SEQUENCE_OPS[RouteIn] = _SEQUENCE_OPS[Route]


def _refused(ev: _Limit, ins) -> tuple[Value, str]:
    raise _Refuse(_SEQUENCE_OPS[type(ins)], "the kernel is computed for dense programs", ins.span)


def _stream(ev: _Limit, ins: Stream) -> tuple[Value, str]:
    # the IR holds one generic repetition; its kernel depends on every repetition before it
    raise _Refuse(f"block {ins.block} has no NNGP rule here: the kernel of a repeated block "
                  "needs its repetitions, which the program does not unroll",
                  "write the repetitions out as separate statements to get their kernel",
                  ins.span)


#: One rule per IR class: evaluate the instruction's Z-variable from its operands'.
RULES: dict[type, Callable[[_Limit, object], tuple[Value, str]]] = {
    MatMul: _matmul, LinComb: _lincomb, Nonlin: _nonlin, Dot: _dot, Stream: _stream,
    **dict.fromkeys(_SEQUENCE_OPS, _refused),
}
assert set(RULES) == set(INSTRUCTIONS)


# --- entry point ----------------------------------------------------------------------------------


def nngp_kernel(program: Program, inputs, *, param: str = "sp", optimizer: str = "sgd",
                convention: str = "table3", order: int = ORDER,
                all_vectors: bool = False) -> Kernel:
    """The NNGP kernel at init of ``program``'s outputs over ``inputs`` (an (P, dim) array for a
    one-input program, else a dict of them), in the infinite-width limit, under the init of the
    module ``tensorprog derive -o`` emits for ``param`` (sp, ntp or mup; µP's init does not
    depend on the optimizer except through the readout). ``all_vectors`` also keeps the kernel
    of every computed vector; ``order`` is the Gauss–Hermite order. See :class:`Kernel`."""
    opt = resolve(optimizer)
    if not isinstance(order, int) or order < 4:
        raise UsageError("the quadrature order must be an integer >= 4")
    data = read_inputs(program, inputs)
    # a P x P kernel for every vector and one cross-covariance for every pair of matmuls
    matmuls = sum(isinstance(ins, MatMul) for ins in program.body)
    check_kernels(len(next(iter(data.values()))), len(program.body) + matmuls**2)
    chosen = choose(program, opt, param, convention, depth_convention=None)
    abc, label = chosen.abc, chosen.label
    ev = _Limit(program, abc, data, order)
    vectors, vexps = {}, {}
    try:
        for ins in program.body:
            ev.errors.clear()
            ev.methods.clear()
            value, method = RULES[type(ins)](ev, ins)
            ev.values[ins.out] = value
            if all_vectors or ins.out in program.outputs:
                vexps[ins.out] = value.exp
                vectors[ins.out] = (np.zeros((ev.P, ev.P)) if value.zero
                                    else ev.expect(value, value))
            if ev.methods:
                method += "; " + ", ".join(sorted(ev.methods))
            ev.steps.append(Step(_line(ins), method, max(ev.errors, default=0.0)))
    except _Refuse as r:
        raise EngineError(f"no infinite-width limit: {r.message}", r.span, help=r.help) from None
    kernels = {o: vectors[o] for o in program.outputs}
    exps = {o: vexps[o] for o in program.outputs}
    return Kernel(program.name, label, kernels, exps, vectors, vexps, ev.steps,
                  program.width.base)


def _line(ins) -> str:
    return render_instruction(ins)


def finite_kernels(program: Program, inputs, width: int, *, seeds=range(8), param: str = "sp",
                   optimizer: str = "sgd", convention: str = "table3") -> dict[str, np.ndarray]:
    """The same kernels measured on the emitted module at a finite ``width``, one per seed: for
    every vector v, an array (seeds, P, P) of ``(1/dim) Σ_i v_i(x_a) v_i(x_b)``. For a vector of
    infinite dim this is one network's empirical kernel, which tends to the limit as n^-1/2; for
    a finite output it averages only its few coordinates (average over seeds too). Imports torch.
    """
    import torch  # heavy: the kernels at init are numpy; only the finite network needs it

    data = read_inputs(program, inputs)
    opt = resolve(optimizer)
    chosen = choose(program, opt, param, convention, depth_convention=None)
    abc, label = chosen.abc, chosen.label
    module = load_module(emit(program, abc, optimizer=opt, label=label,
                              command="tensorprog limit"), f"limit_{program.name}")
    program.check_widths([width])
    model = module.Model(width, dtype=torch.float64)
    args = [torch.as_tensor(data[i.name]) for i in program.inputs]
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for seed in seeds:
            model.reset_parameters(generator=torch.Generator().manual_seed(int(seed)))
            for name, v in model.vectors(*args).items():
                v = v.reshape(len(args[0]), -1)
                out.setdefault(name, []).append((v @ v.T / v.shape[1]).numpy())
    return {name: np.stack(ks) for name, ks in out.items()}
