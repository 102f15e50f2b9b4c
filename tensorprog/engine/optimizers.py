"""Optimizers as update rules: the exponent of a param's update entries (TP4 §3, TP4b, SPEC).

W = n^-a w, and w moves by -η n^-c times the optimizer's step. So the effective weight W moves by
n^-a times that. An optimizer gives each param one :class:`Rule`, chosen from the param's shape
(:class:`ParamShape`: whether it is a matrix, and which of its fans are infinite):

* ``gradient`` (SGD, SGD with momentum): the step is the gradient of w, n^-a ∂f/∂W = n^-a (df/dy)xᵀ,
  so ΔW entries = -c - 2a + max over uses (e(df/dy) + e(x)). Momentum averages a few steps'
  gradients: the same size.
* ``normalised`` (Adam, AdamW, Lion's sign): the step's entries are Θ(1) whatever the gradient's
  scale (ε negligible), so ΔW entries = -c - a. Lion's sign(·) is this rule exactly: Adam's
  exponents, other constants.
* ``spectral`` (Muon: the step is the momentum's orthogonalisation UVᵀ): unit spectral norm,
  whatever the gradient's scale, so its entries are 1/√(fan_in·fan_out):
  ΔW entries = -c - a - ½·[fan_in infinite] - ½·[fan_out infinite]. UVᵀ keeps the gradient's row
  and column spaces (rank <= batch), so ΔW·x still sums its fan-in coherently (the LLN of the
  matmul rule): ΔW·x = Θ(√(fan_in/fan_out))·x per unit step, the spectral condition of Yang,
  Simon & Bernstein (arXiv 2310.17813) when η n^-c ∝ √(fan_out/fan_in).

Each rule also gives the linear equation in (a, c) that pins the update entries to a target (what
the derivation solves) and the c-shift of the abc-symmetry (a+θ, b-θ, c-kθ): k = 2 for ``gradient``
(the step carries n^-a once more through the gradient), 1 for the others (scale-free steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .exponents import HALF, NEG_INF, ZERO, Exp, add, emax


@dataclass(frozen=True)
class ParamShape:
    """What an update rule may depend on besides the gradient: the param's role in the width
    (``input``, ``hidden``, ``output``, ``finite``, ``scale``), whether it is a matrix an
    orthogonalising optimizer can take (2-D, used only as a matmul weight, never a token or
    position lookup), and which of its fans are infinite in the pass at hand (in the depth pass
    none is)."""

    role: str
    matrix: bool
    fan_in: bool
    fan_out: bool


@dataclass(frozen=True)
class Rule:
    name: str
    a_coef: int  # the update entries are -c - a_coef·a (+ gradient or shape terms)
    uses_gradient_scale: bool
    spectral: bool  # entries 1/√(fan_in·fan_out) per unit spectral norm

    def _shape_term(self, shape: ParamShape) -> Exp:
        if not self.spectral:
            return ZERO
        return -HALF * (int(shape.fan_in) + int(shape.fan_out))

    def update_entry(self, a: Exp, c: Exp, sources: list[tuple[Exp, Exp]],
                     shape: ParamShape) -> Exp:
        """Exponent of ΔW's entries, given (e(df/dy), e(x)) for every use of the param."""
        if not sources:
            return NEG_INF
        grad = emax(add(g, e) for g, e in sources)
        if grad is NEG_INF:
            return NEG_INF  # its gradient is exactly zero (none reaches it, or x = 0): no move
        base = add(add(-c, -self.a_coef * a), self._shape_term(shape))
        return add(base, grad) if self.uses_gradient_scale else base

    def equation(self, u: Exp, sources: list[tuple[Exp, Exp]],
                 shape: ParamShape) -> tuple[int, Exp]:
        """(k, rhs) such that the update entries equal n^u  <=>  c + k·a = rhs."""
        rhs = -u + self._shape_term(shape)
        if self.uses_gradient_scale:
            rhs = rhs + emax(add(g, e) for g, e in sources)
        return self.a_coef, rhs


GRADIENT = Rule("gradient", 2, True, False)
NORMALISED = Rule("normalised", 1, False, False)
SPECTRAL = Rule("spectral", 1, False, True)


@dataclass(frozen=True)
class Optimizer:
    """An update rule per param. ``matrices`` names the roles whose matrices take
    ``matrix_rule`` (Muon's hidden matrices, and by choice its input and output ones); every other
    param takes ``rule``."""

    name: str
    rule: Rule
    summary: str
    matrix_rule: Rule | None = None
    matrices: tuple[str, ...] = ()

    def rule_for(self, shape: ParamShape) -> Rule:
        if self.matrix_rule is not None and shape.matrix and shape.role in self.matrices:
            return self.matrix_rule
        return self.rule

    def update_entry(self, a: Exp, c: Exp, sources: list[tuple[Exp, Exp]],
                     shape: ParamShape) -> Exp:
        return self.rule_for(shape).update_entry(a, c, sources, shape)

    def equation(self, u: Exp, sources: list[tuple[Exp, Exp]],
                 shape: ParamShape) -> tuple[int, Exp]:
        return self.rule_for(shape).equation(u, sources, shape)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return (self.rule,) if self.matrix_rule is None else (self.rule, self.matrix_rule)

    @property
    def uses_gradient_scale(self) -> bool:
        return any(r.uses_gradient_scale for r in self.rules)

    @property
    def a_coef(self) -> int:
        """The symmetry's c-shift k, the same for every param of every optimizer defined here."""
        (k,) = {r.a_coef for r in self.rules}
        return k

    def symmetry(self) -> str:
        shift = "c-2θ" if self.a_coef == 2 else "c-θ"
        return (f"(a, b, c) -> (a+θ, b-θ, {shift}) for any θ, per param, leaves the network and "
                f"its {self.name} training trajectory unchanged")


SGD = Optimizer("sgd", GRADIENT, "SGD: update = -η·n^-c·∂f/∂w")
MOMENTUM = Optimizer("momentum", GRADIENT, "SGD with momentum: a running mean of gradients, "
                     "SGD's exponents")
ADAM = Optimizer("adam", NORMALISED, "Adam: update entries Θ(η·n^-c), ε negligible")
ADAMW = Optimizer("adamw", NORMALISED, "AdamW: as Adam; decoupled weight decay keeps the exponents")
LION = Optimizer("lion", NORMALISED, "Lion: update = sign(momentum), entries ±η·n^-c: Adam's "
                 "exponents")
MUON = Optimizer("muon", NORMALISED, "Muon: hidden matrices take the orthogonalised momentum "
                 "(unit spectral norm, entries 1/√(fan_in·fan_out)); other params AdamW",
                 SPECTRAL, ("hidden",))


def muon(io: bool = False) -> Optimizer:
    """Muon; with ``io`` its input and output matrices are orthogonalised too (not token or
    position lookups, which stay with AdamW)."""
    if not io:
        return MUON
    return Optimizer("muon", NORMALISED, "Muon: every matrix (input, hidden, output; not a "
                     "lookup) takes the orthogonalised momentum; other params AdamW",
                     SPECTRAL, ("input", "hidden", "output"))


OPTIMIZERS = {o.name: o for o in (SGD, MOMENTUM, ADAM, ADAMW, LION, MUON)}


def resolve(optimizer: str | Optimizer, *, io: bool = False) -> Optimizer:
    """The one place an optimizer's name becomes its :class:`Optimizer` (an Optimizer is returned
    as given, e.g. ``muon(io=True)``); ``io`` asks for Muon on the input and output matrices too.
    Everything past argv and the facade takes the Optimizer."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}",
                         help=f"choose one of {', '.join(OPTIMIZERS)}")
    return muon(io=True) if io and optimizer == "muon" else OPTIMIZERS[optimizer]
