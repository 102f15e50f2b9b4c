"""A derivation's result and its rendering: the bounds and equations µP was solved from, the
solution in width (and depth), Adam's ε, and their table, JSON and explanation.

:class:`Derivation` follows the results' protocol (``as_dict()``, ``str()``); ``derive``'s
options (weight decay, ``--explain``) call the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.program import Program
from ..ir.text import render_instruction
from .classify import Classification
from .exponents import ABC, INF, NEG_INF, Exp, as_str, canon, power, scaled
from .optimizers import Optimizer
from .propagate import Analysis
from .report import (
    CONVENTION_LINE,
    depth_note,
    fan_text,
    param_formulas,
    program_depth_json,
    shape_text,
    table,
)
from .standardised import note as std_note
from .terms import Term, fan_dims, role


@dataclass(frozen=True)
class Bound:
    """``slot(param) <= value``, from one rule term of one instruction."""

    param: str
    slot: str  # "S" | "U"
    value: Exp
    instruction: str
    term: Term


@dataclass(frozen=True)
class Equation:
    """``coefs · (a, b, c) = rhs`` for one param, with its reason."""

    param: str
    coefs: tuple[int, int, int]
    rhs: Exp
    reason: str
    dim: str = ""  # "" for the width exponents, the depth's name for the depth exponents

    def render(self) -> str:
        parts = []
        for k, var in zip(self.coefs, "abc", strict=True):
            if k:
                sym = f"{var}_{self.dim + '_' if self.dim else ''}{self.param}"
                parts.append(sym if k == 1 else f"{k}·{sym}")
        return f"{' + '.join(parts)} = {self.rhs}"


# --- conventions: which member of the symmetry family to print ------------------------------------


@dataclass
class DepthDerivation:
    """The depth exponents (a_L, b_L, c_L) of every param, from the depth pass's desiderata."""

    convention: str
    abc: dict[str, ABC]
    free: dict[str, tuple[Exp, Exp]]  # param -> the range of a_L + b_L the desiderata leave
    equations: list[Equation]
    analysis: Analysis
    check: Classification


# --- the derivation -------------------------------------------------------------------------------


@dataclass
class Derivation:
    program: Program
    optimizer: Optimizer
    convention: str
    abc: dict[str, ABC]
    bounds: list[Bound]
    equations: list[Equation]
    analysis: Analysis
    check: Classification
    chosen: dict[str, dict[str, Bound]] = field(default_factory=dict)  # param -> slot -> bound
    depth: DepthDerivation | None = None
    depth_refused: str | None = None  # why a program with a depth has no depth exponents
    # Adam's ε per param as eps·n^-e (·L^-e_L): e where ε stays below the gradient entries;
    # empty under SGD (no ε); a param missing from eps_depth is explained in eps_depth_refused
    eps: dict[str, Exp] = field(default_factory=dict)
    eps_depth: dict[str, Exp] = field(default_factory=dict)
    eps_depth_refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """derive's JSON (see :func:`derive_json`)."""
        return derive_json(self)

    def __str__(self) -> str:
        """derive's table (see :func:`derive_table`)."""
        return derive_table(self)


def derived_depth_note(d: Derivation) -> str | None:
    """The depth line of ``derive``: the depth convention the exponents in L were derived in, or
    why there are none."""
    p = d.program
    if p.depth is None:
        return None
    L = p.depth.name
    if d.depth_refused is not None:
        return f"depth {L} (base {p.depth.base}): exponents in {L} not derived: {d.depth_refused}"
    if d.depth is None:
        return depth_note(p)
    return (f"depth {L} (base {p.depth.base}): exponents in {L} derived in the depth convention "
            f"{d.depth.convention} (W ∝ {L}^-a{L}, init std ∝ {L}^-b{L}, LR ∝ {L}^-c{L}; "
            f"b{L} = 0: the multiplier carries the depth scaling); derive -o emits a module "
            f"that applies them, each factor 1 at the base depth")


def free_depth_lines(d: Derivation) -> list[str]:
    """Each exponent the depth desiderata leave free, its range, and how it was resolved."""
    if d.depth is None:
        return []
    L = d.program.depth.name
    return [f"free in {L}: a{L} + b{L} of {q} anywhere in [{lo}, {hi}] (stable, maximal, init "
            f"not below its update); {d.depth.convention} takes "
            f"{hi if d.depth.convention == 'completep' else lo} (completep: {hi}, depth-mup: "
            f"{lo}; --depth-convention completep|depth-mup)"
            for q, (lo, hi) in d.depth.free.items()]


def depth_json(p: Program, d: Derivation | None = None) -> dict | None:
    """The depth; ``"exponents": null`` unless a derivation gives them (per param, under
    ``"depth"``), with the depth convention and the free exponents it resolved."""
    if p.depth is None:
        return None
    if d is None:
        return program_depth_json(p)
    if d.depth is None:
        return {"name": p.depth.name, "base": p.depth.base, "exponents": None,
                "note": derived_depth_note(d)}
    return {"name": p.depth.name, "base": p.depth.base,
            "exponents": {"convention": d.depth.convention, "free": {
                q: {"a+b": [as_str(lo), as_str(hi)]} for q, (lo, hi) in d.depth.free.items()}},
            "note": derived_depth_note(d)}


def blocks_json(p: Program) -> dict:
    counts = {s.block: s.count for s in p.streams}
    return {b.name: {"repeat": counts[b.name], "params": list(b.params)} for b in p.blocks}


# --- weight decay ---------------------------------------------------------------------------------

DECAY_MODES = ("coupled", "decoupled", "independent")


def weight_decay_scaling(d: Derivation, name: str, mode: str) -> dict:
    """How a fixed weight decay λ acts on one param as the width (and depth) grow, under ``mode``.

    decoupled shrinks w by η·λ·n^-c per step, independent by λ; coupled adds λw to the gradient:
    under SGD that is decoupled's shrink, under a normalising update (Adam, Lion, Muon) it competes
    with the gradient inside the normaliser, with weight n^(e(w) - e(∂f/∂w)) against it."""
    x = d.abc[name]
    y = d.depth.abc[name] if d.depth is not None else None
    an = d.check.analysis
    rule = d.optimizer.rule_for(an.shape(name))
    if x.c is INF:
        return {"per_step": "-", "width": None, "depth": None, "meaning": "never trained"}
    if mode == "independent":
        return {"per_step": "λ", "width": "0", "depth": "0" if y else None,
                "meaning": "shrink of w per step"}
    if mode == "decoupled" or rule.uses_gradient_scale:
        return {"per_step": scaled("η·λ", -x.c), "width": as_str(-x.c),
                "depth": as_str(-y.c) if y else None, "meaning": "shrink of w per step"}
    grads = [g + e for g, e in an.sources(name)]
    grad = max(grads) - x.a if grads else NEG_INF
    if x.b is INF or grad is NEG_INF:
        return {"per_step": "-", "width": None, "depth": None,
                "meaning": "no weight or no gradient to compare"}
    rel = -x.b - grad
    return {"per_step": scaled("λ", rel) + " vs ∂f/∂w", "width": as_str(rel), "depth": None,
            "meaning": "λw against the gradient inside the normaliser"}


# --- derive ---------------------------------------------------------------------------------------

def _eps(exps: dict[str, Exp], name: str) -> str:
    return as_str(exps[name]) if name in exps else "-"


def eps_lines(d: Derivation) -> list[str]:
    """What the eps columns mean (Adam and AdamW), and any depth exponent left out."""
    if not d.eps:
        return []
    n = d.program.width.name
    L = d.program.depth.name if d.depth is not None else None
    scale = f"{n}^-eps" + (f"·{L}^-eps{L}" if L else "")
    lines = ["", f"Adam's eps: eps·{scale} per param, as its gradient entries scale, so that "
                 "eps stays below them at every size (a fixed eps swamps them as they shrink); "
                 "'-': no gradient reaches it"
                 + (f", or {d.optimizer.name} steps it (no Adam eps: those are AdamW's)."
                    if d.optimizer.matrix_rule is not None else ".")]
    lines += [f"  eps{L} of {p}: not derived: {why}" for p, why in d.eps_depth_refused.items()]
    return lines


def derive_json(d: Derivation) -> dict:
    p = d.program
    params = {}
    for name, x in d.abc.items():
        fin, fout = fan_dims(p, name)
        params[name] = {"shape": list(p.param_table[name].shape), "role": role(p, name),
                        "fan_in": fan_text(fin), "fan_out": fan_text(fout), **x.as_dict(),
                        **param_formulas(x.a, x.b, x.c)}
        if name in d.eps:
            params[name]["eps"] = as_str(d.eps[name])
        if d.depth is not None:
            params[name]["depth"] = d.depth.abc[name].as_dict()
            if name in d.eps_depth:
                params[name]["depth"]["eps"] = as_str(d.eps_depth[name])
        if d.optimizer.matrix_rule is not None:
            params[name]["update"] = _update_name(d, name)
        params[name]["weight_decay"] = {m: weight_decay_scaling(d, name, m) for m in DECAY_MODES}
    an = d.check.analysis
    vectors = {ins.out: {"dim": p.value_dims[ins.out] or "scalar",
                         "init": as_str(an.init_[ins.out]), "update": as_str(an.change_[ins.out]),
                         "grad": as_str(an.grad(ins.out))} for ins in p.body}
    return {
        "program": p.name, "width": {"name": p.width.name, "base": p.width.base},
        "depth": depth_json(p, d), "blocks": blocks_json(p),
        "optimizer": d.optimizer.name, "convention": d.convention,
        "parametrization": CONVENTION_LINE, "symmetry": d.optimizer.symmetry(),
        "parameters": params, "vectors": vectors,
        "conditions": [{"param": e.param, "equation": e.render(), "reason": e.reason}
                       for e in d.equations],
        "regime": d.check.regime, "r": as_str(d.check.r),
    }


def _update_name(d: Derivation, name: str) -> str:
    """Which optimizer steps the param, for an optimizer with a rule per shape (Muon)."""
    if d.abc[name].c is INF:
        return "-"  # a scale, never trained
    spectral = d.optimizer.rule_for(d.check.analysis.shape(name)).spectral
    return d.optimizer.name if spectral else "adamw"


def derive_table(d: Derivation, decay: str | None = None) -> str:
    p = d.program
    head = (f"µP for {p.name}: optimizer {d.optimizer.name}, convention {d.convention}, "
            f"width {p.width.name} (base {p.width.base})")
    L = p.depth.name if d.depth is not None else None
    eps = bool(d.eps)  # Adam and AdamW: ε's exponent, "-" for a param no gradient reaches
    rows = [["param", "shape", "role", "init std", "multiplier", "LR", "a", "b", "c",
             *(["eps"] if eps else []), *([f"a{L}", f"b{L}", f"c{L}"] if L else []),
             *([f"eps{L}"] if eps and L else [])]]
    mixed = d.optimizer.matrix_rule is not None
    if mixed:
        rows[0].insert(3, "update")
    if decay:
        rows[0] += [f"wd ({decay})"] + ([f"wd in {L}"] if L else [])
    for name, x in d.abc.items():
        f = param_formulas(x.a, x.b, x.c)
        y = d.depth.abc[name] if L else None
        rows.append([name, shape_text(p, name), role(p, name), f["init_std"], f["multiplier"],
                     f["lr"], as_str(x.a), as_str(x.b), as_str(x.c),
                     *([_eps(d.eps, name)] if eps else []),
                     *([as_str(y.a), as_str(y.b), as_str(y.c)] if y else []),
                     *([_eps(d.eps_depth, name)] if eps and L else [])])
        if mixed:
            rows[-1].insert(3, _update_name(d, name))
        if decay:
            w = weight_decay_scaling(d, name, decay)
            rows[-1] += [w["per_step"]] + ([power(canon(w["depth"]), L) if w["depth"] else "-"]
                                           if L else [])
    an = d.check.analysis
    vec_rows = [["vector", "dim", "at init", "change", "gradient"]]
    for ins in p.body:
        v = ins.out
        vec_rows.append([v, p.value_dims[v] or "scalar", power(an.init_[v]),
                         power(an.change_[v]), power(an.grad(v))])
    note = [derived_depth_note(d), *free_depth_lines(d)] if p.depth is not None else []
    return "\n".join([
        head, CONVENTION_LINE, *note, "", table(rows), *eps_lines(d), "",
        f"Regime: {d.check.regime.replace('_', ' ')} (r = {d.check.r}); every param updated "
        "maximally.",
        f"Symmetry: {d.optimizer.symmetry()}; other conventions: --convention table3|mup|tp4.",
        *std_note(p, d.optimizer.a_coef), "", "Coordinate sizes (Θ of):", table(vec_rows), ""])


def explain(d: Derivation) -> str:
    """The derivation in words, instruction by instruction, then the equations and solution."""
    p, an = d.program, d.analysis
    out = [f"Derivation of µP for {p.name} under {d.optimizer.name} ({d.optimizer.summary}).",
           "S(p) = -(a+b) is the size of p's initial entries, U(p) that of its update entries; "
           "every term must stay O(1), and maximality takes the largest allowed.",
           *([derived_depth_note(d)] if p.depth is not None else []), ""]
    chosen = {(b.instruction, b.param, b.slot, b.term) for per in d.chosen.values()
              for b in per.values()}
    for ins in p.body:
        out.append(render_instruction(ins))
        for label, ts in (("init", an.init_terms[ins.out]), ("change", an.change_terms[ins.out])):
            for t, v in ts:
                line = f"  {label:6} {t.what} = Θ({power(v)}): {t.why}"
                for k, q in sorted(set(t.slots)):
                    if (ins.out, q, k, t) in chosen and p.param_table[q].is_scale:
                        line += (f"; this fixes the scale {q}: -a = {an.S[q]} (the largest "
                                 f"keeping {ins.out} O(1) at init and in training)")
                    elif (ins.out, q, k, t) in chosen:
                        slot = "its init" if k == "S" else "its update"
                        size = "-a" if p.param_table[q].standardised is not None else "-(a+b)"
                        line += (f"; this fixes {q}: {size if k == 'S' else 'U'} = "
                                 f"{an.S[q] if k == 'S' else an.U[q]} (the largest keeping "
                                 f"{ins.out} O(1), so {slot} is maximal)")
                out.append(line)
        out.append(f"  so {ins.out} is Θ({power(an.init_[ins.out])}) at init and moves by "
                   f"Θ({power(an.change_[ins.out])})")
    out += ["", "Gradients (backward pass, during training):"]
    out += [f"  d{ins.out} = Θ({power(an.grad(ins.out))})" for ins in p.body]
    out += ["", f"Conditions, linear in (a, b, c), solved exactly ({d.convention} convention):"]
    out += [f"  {e.render():28} {e.reason}" for e in d.equations]
    out += ["", "Solution:"]
    out += [f"  {name}: a = {x.a}, b = {x.b}, c = {x.c}" for name, x in d.abc.items()]
    out += ["", f"Check: classified from scratch the solution is {d.check.regime} with r = "
            f"{d.check.r} and every param updated maximally.",
            f"Symmetry: {d.optimizer.symmetry()}.", *std_note(p, d.optimizer.a_coef)]
    if d.depth is not None:
        L = p.depth.name
        out += ["", f"Depth: the same rules with only {L} infinite (a sum over the {L} branches "
                f"is a CLT sum, +1/2, at init and an LLN sum, +1, for their own updates); "
                f"conditions in (a{L}, b{L}, c{L}):"]
        out += [f"  {e.render():28} {e.reason}" for e in d.depth.equations]
        out += free_depth_lines(d)
        out += [f"  {name}: a{L} = {x.a}, b{L} = {x.b}, c{L} = {x.c}"
                for name, x in d.depth.abc.items()]
        out += [f"Check in {L}: classified from scratch the solution is {d.depth.check.regime} "
                f"with every param updated maximally."]
    return "\n".join(out) + "\n"


def zero_constants(program: Program, abc: dict[str, ABC]) -> dict[str, ABC]:
    """``abc`` with b = oo (zero init) for the vector params the program initialises to the
    constant 0 (``param g : [n] = 0``). The derivation counts a constant init as Θ(1), an upper
    bound; a check needs the exact size: a vector made of such params alone is exactly 0 at
    init at every width (ConvNeXt V2's GRN ``gg * grn(u) + gb``, both zero, as HF's), which
    is µP with those params zero-initialised. A sum with any other term keeps that term's size,
    so a zero bias changes no other expectation."""
    table = program.param_table
    return {p: ABC(x.a, "oo", x.c) if p in table and table[p].base == 0 else x
            for p, x in abc.items()}
