"""Optimizers as update rules: the exponent of a param's update entries (TP4 §3, TP4b).

W = n^-a w, and w moves by -η n^-c times the optimizer's step. So the effective weight W moves by
n^-a times that:

* SGD: the step is the gradient of w, n^-a ∂f/∂W = n^-a (df/dy)xᵀ, so
  ΔW entries = -c - 2a + max over uses (e(df/dy) + e(x)).
* Adam (and AdamW, whose decoupled decay does not change exponents): the step is normalised,
  entries Θ(1) whatever the gradient's scale (ε negligible), so ΔW entries = -c - a.

Each rule also gives the linear equation in (a, c) that pins the update entries to a target, which
is what the derivation solves, and the c-shift of the abc-symmetry (a+θ, b-θ, c-kθ).
"""

from __future__ import annotations

from dataclasses import dataclass

from .exponents import NEG_INF, Exp, add, emax


@dataclass(frozen=True)
class Optimizer:
    name: str
    a_coef: int  # the update entries are -c - a_coef·a (+ gradient terms for SGD)
    uses_gradient_scale: bool
    summary: str

    def update_entry(self, a: Exp, c: Exp, sources: list[tuple[Exp, Exp]]) -> Exp:
        """Exponent of ΔW's entries, given (e(df/dy), e(x)) for every use of the param."""
        if not sources:
            return NEG_INF
        base = add(-c, -self.a_coef * a)
        if self.uses_gradient_scale:
            return add(base, emax(add(g, e) for g, e in sources))
        if emax(add(g, e) for g, e in sources) is NEG_INF:
            return NEG_INF  # its gradient is exactly zero (none reaches it, or x = 0): no move
        return base

    def equation(self, u: Exp, sources: list[tuple[Exp, Exp]]) -> tuple[int, Exp]:
        """(k, rhs) such that the update entries equal n^u  <=>  c + k·a = rhs."""
        rhs = -u
        if self.uses_gradient_scale:
            rhs = rhs + emax(add(g, e) for g, e in sources)
        return self.a_coef, rhs

    def symmetry(self) -> str:
        shift = "c-2θ" if self.a_coef == 2 else "c-θ"
        return (f"(a, b, c) -> (a+θ, b-θ, {shift}) for any θ, per param, leaves the network and "
                f"its {self.name} training trajectory unchanged")


SGD = Optimizer("sgd", 2, True, "SGD: update = -η·n^-c·∂f/∂w")
ADAM = Optimizer("adam", 1, False, "Adam: update entries Θ(η·n^-c), ε negligible")
ADAMW = Optimizer("adamw", 1, False, "AdamW: as Adam; decoupled weight decay keeps the exponents")

OPTIMIZERS = {o.name: o for o in (SGD, ADAM, ADAMW)}
