"""Weight standardisation under µP: what is free and what is pinned.

A standardised param W (``param K : [m, k, kh, kw] standardised(eps)``; BiT's
WeightStandardizedConv2d, timm's StdConv2d) is read through Ŵ = (W − mean_row W) /
sqrt(var_row W + eps), each row (one output's k·kh·kw fan-in entries) of mean 0 and variance 1.
With W = n^-a w, w initialised with std σ·n^-b and trained with LR η·n^-c:

* **Init.** Ŵ's entries are Θ(1) whatever σ·n^-b (eps negligible), so the effective weight
  n^-a·Ŵ has entries n^-a: the init size is the multiplier's alone, S = −a (a plain weight's is
  −(a+b)). b does not move the forward at all.
* **Update.** Ŵ is the row's direction: a small ΔW moves it by ΔŴ = (ΔW − mean_row ΔW −
  ⟨ΔW, Ŵ⟩_row Ŵ / k) / std(W), to first order. For the low-rank updates of training (ΔW built
  from the vectors it later meets, u·vᵀ per row) the mean's removal turns vᵀx′ into the
  centred Σ (v_j − v̄) x′_j, the same LLN order k as long as v and x′ are not constant over their
  coordinates; the radial part ⟨u_i v, Ŵ_i⟩ Ŵ_i / k is a CLT sum over Ŵ_i (drawn apart from v):
  entries Θ(u_i/√k), meeting x′ through Ŵ_i (another CLT sum, √k), so its effect is 1/k of the
  update's (tests/engine/test_standardised.py measures both). So ΔŴ ≈ ΔW / (σ n^-b): the
  effective LR is multiplied by n^b, once under Adam-like updates (entries set by the LR alone)
  and twice under SGD (the gradient reaching w is also Ŵ's over std(W)).

Hence a standardised (a, b, c) scales as a plain weight's (a, 0, c − k·b) does, k the
optimizer's ``a_coef``; its symmetry is (a, b+θ, c+kθ) (a is pinned by the init), and the
convention that picks one member of it is b = 0: w's init std width-independent (the model's
own at the base width), which also keeps var_row(W) far above eps at every width. The engine
runs the plain weight's analysis on the effective (a, 0, c − k·b)."""

from __future__ import annotations

from ..errors import EngineError
from ..ir.program import Program
from .exponents import ABC, INF, ZERO, Exp, add


def standardised(program: Program, param: str) -> bool:
    p = program.param_table.get(param)
    return p is not None and p.standardised is not None


def effective(program: Program, abc: dict[str, ABC], k: int) -> dict[str, ABC]:
    """``abc`` with every standardised param's (a, b, c) replaced by the plain (a, 0, c − k·b)
    it trains as; a zero init (b = oo) of one is refused: Ŵ of a zero W is 0/sqrt(eps), a
    weight with no direction."""
    out = dict(abc)
    for p, x in abc.items():
        if not standardised(program, p):
            continue
        if x.b is INF:
            raise EngineError(f"{p} is standardised and cannot be initialised to zero: its "
                              "rows would have no direction (Ŵ = 0 / sqrt(eps))",
                              span=program.param_table[p].span,
                              help="zero-initialise only a plain param")
        out[p] = ABC(x.a, ZERO, add(x.c, -k * x.b))
    return out


def equations(param: str, size: Exp, k: int, rhs: Exp, init_why: str, update_why: str):
    """The three conditions on a standardised param's (a, b, c): its init size (the multiplier
    alone), its update (c − k·b + k·a, ΔŴ ≈ n^b·ΔW) and the convention b = 0, each
    ``(coefs, rhs, reason)``."""
    return [
        ((1, 0, 0), -size, f"init maximal: {init_why} is Θ(1) at most; standardised, W's rows "
                           "are read at variance 1 whatever its init, so the multiplier n^-a "
                           "alone sets it"),
        ((k, -k, 1), rhs, f"update maximal: {update_why} is Θ(1); standardised, ΔŴ ≈ ΔW / "
                          f"std(W) = n^b·ΔW, so the LR's exponent enters as c − {k}·b"),
        ((0, 1, 0), ZERO, "standardised: the init std of W is free (only c − k·b counts); "
                          "convention b = 0, the model's own init at every width, whose row "
                          "variance stays far above eps"),
    ]


def note(program: Program, k: int) -> list[str]:
    """derive's line on the standardised params: what is pinned, what is free and the
    convention taken (empty without any)."""
    names = [p.name for p in program.params if p.standardised is not None]
    if not names:
        return []
    shift = "c+2θ" if k == 2 else "c+θ"
    return [f"Standardised {', '.join(names)}: each row is read at mean 0 and variance 1 "
            "whatever W's init, so the multiplier n^-a alone sets the forward's size (pinned by "
            "the init condition), and the init std n^-b moves only the update (ΔŴ ≈ ΔW / "
            f"std(W)): their symmetry is (a, b+θ, {shift}), fixed by b = 0 whatever the "
            "convention."]
