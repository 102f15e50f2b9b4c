"""Derive µP: the desiderata as linear conditions in every param's (a, b, c), solved exactly.

The desiderata (TP4 §3; docs/theory.md): every vector O(1) at init and during training, every
(pre)activation Θ(1), and every param as large as that allows, at init and in its update
("maximal").

1. **Bounds.** Walking the program forward, each rule term that carries a param's initial entries
   S(p) = -(a+b) or its update entries U(p) must stay <= 0. Each is linear, so it bounds the slot;
   maximality takes the tightest bound with equality. A param used several times takes the min over
   its uses; the walk repeats until the bounds settle.
2. **Gradients.** With every S and U fixed, the backward pass gives each vector's gradient size.
3. **Equations.** Per param: ``a + b = -S`` (init), the optimizer's ``c + k·a = rhs`` (update) and
   the convention's equation, which picks one member of the abc-symmetry family. The system is
   solved exactly over the rationals (sympy's DomainMatrix over QQ).
4. **Verification.** The solution is classified from scratch; anything short of stable feature
   learning with every param maximal is an :class:`EngineError` naming the tensor and exponent.
"""

from __future__ import annotations

from sympy import QQ
from sympy.polys.matrices import DomainMatrix

from .._gc import paused_gc
from ..errors import Diagnostic, EngineError, Span
from ..ir.program import Dot, MatMul, Mix, Nonlin, Program
from ..ir.ssd import SSD
from .classify import classify, classify_depth, require_depth_pass, require_width
from .derivation import Bound, DepthDerivation, Derivation, Equation, zero_constants
from .exponents import ABC, HALF, INF, NEG_INF, ZERO, Exp, add, canon, emax, gt, power
from .optimizers import Optimizer
from .propagate import STREAM_ROUNDS, Analysis, prescaled, used_params
from .rules import CHANGE, INIT
from .rules_delta import refuse_growing_head_dim
from .ssd_init import refuse_forced
from .standardised import equations as std_equations
from .standardised import standardised
from .terms import Term, fan_in_infinite


def _table3(program: Program, param: str, size: Exp) -> tuple[tuple[int, int, int], Exp, str]:
    return (1, 0, 0), ZERO, "convention table3: every forward multiplier is 1 (a = 0)"


def _mup(program: Program, param: str, size: Exp) -> tuple[tuple[int, int, int], Exp, str]:
    # a param initialised below its fan-in (CLT) scale keeps a width-independent init and takes
    # the rest as a forward multiplier, as the mup package does for the readout (TP5 Table 8)
    clt = HALF if fan_in_infinite(program, param) else ZERO
    if gt(-size, clt):
        return (0, 1, 0), ZERO, ("convention mup: initialised below its fan-in scale, so the init "
                                 "is width-independent (b = 0) and the multiplier carries the "
                                 "scaling")
    return (1, 0, 0), ZERO, "convention mup: multiplier 1 (a = 0)"


def _tp4(program: Program, param: str, size: Exp) -> tuple[tuple[int, int, int], Exp, str]:
    return (0, 1, 0), HALF, "convention tp4: every init is N(0, σ²/n) (b = 1/2), as in TP4 Table 1"


CONVENTIONS = {"table3": _table3, "mup": _mup, "tp4": _tp4}


#: How a free depth exponent is resolved: where S_L (the init entries' size in L) sits in
#: [U_L, tightest bound]. completep: init as small as its update (S_L = U_L: CompleteP, arXiv
#: 2505.01618); depth-mup: init as large as stability allows (Depth-µP, TP6 arXiv 2310.02244).
DEPTH_CONVENTIONS = ("completep", "depth-mup")


def _bounds_for(an: Analysis, out: str, terms: list[Term]) -> list[Bound]:
    """Solve every term ``<= 0`` for each slot it carries, the other slots taken as known."""
    found = []
    for t in terms:
        for kind, p in set(t.slots):
            others = [s for s in t.slots if s != (kind, p)]
            mult = t.slots.count((kind, p))
            rest = an.value(Term(t.const, tuple(others), "", "", "flow"))
            if rest is NEG_INF or any(an.slot(k, q) is None for k, q in others):
                continue
            found.append(Bound(p, kind, -rest / mult, out, t))
    return found


def _settle_bounds(program: Program, an: Analysis, params: list[str]) -> list[Bound]:
    absorbed = prescaled(program)  # a scale downstream takes their size: no bounds from them
    an.S = {p: None for p in params}
    an.U = {p: None for p in params}
    backs = [s.back for s in program.streams if s.loops]

    def back_sizes() -> list[tuple[Exp, Exp]]:
        return [(an.init_.get(b, NEG_INF), an.change_.get(b, NEG_INF)) for b in backs]

    for rounds in range(len(program.body) + 5 + STREAM_ROUNDS):
        # a back edge is read before it is computed, so it holds the previous round's size
        before = (dict(an.S), dict(an.U), back_sizes(), an.channels_state())
        bounds: list[Bound] = []
        an.updates = {}
        for ins in program.body:
            init, change = INIT[type(ins)](ins, an), CHANGE[type(ins)](ins, an)
            # a param that reaches no output is left out (used_params warned about it)
            new = ([] if ins.out in absorbed else
                   [b for b in _bounds_for(an, ins.out, init + change) if b.param in an.S])
            bounds += new
            for b in new:
                table = an.S if b.slot == "S" else an.U
                if table[b.param] is None or gt(table[b.param], b.value):
                    table[b.param] = b.value
            # the terms do not depend on the slots, only their values do: evaluate them now
            an.record_init(ins.out, init)
            an.record_change(ins.out, change)
        # the depth pass's Stream reads each block value's change per channel (its own updates,
        # the stream's change): a no-op in the width pass, which has no stream over the depth
        an.record_channels()
        if (an.S, an.U, back_sizes(), an.channels_state()) == before:
            return bounds
        if rounds >= STREAM_ROUNDS:  # a back edge still growing compounds: see STREAM_ROUNDS
            for b, (i0, c0), (i1, c1) in zip(backs, before[2], back_sizes(), strict=True):
                if gt(i1, i0):
                    an.init_[b] = INF
                if gt(c1, c0):
                    an.change_[b] = an.train_[b] = INF
    raise EngineError("the init and update bounds did not settle (a param's uses keep tightening "
                      "each other)", help="check for a parameter that feeds its own scale")


def _refuse_compounding(program: Program, an: Analysis) -> None:
    """A back edge the bounds left unbounded: the block grows its input at every repetition
    whatever the params, so no parametrization holds the stream Θ(1) at any depth above 1."""
    found = []
    for s in program.streams:
        if s.loops and INF in (an.init_.get(s.back), an.change_.get(s.back)):
            when = "at init" if an.init_.get(s.back) is INF else "during training"
            found.append(Diagnostic(
                f"block {s.block} multiplies the size of its input by a power of "
                f"{program.width.name} {when}, so its repetitions compound it without bound",
                s.span, "route the block's branch through a param that can absorb its size, "
                "e.g. `return h + W @ relu(h)`"))
    if found:
        raise EngineError(found)


def derive(program: Program, optimizer: Optimizer, convention: str = "table3",
           depth_convention: str = "completep") -> Derivation:
    """The µP parametrization of a program for an optimizer, in a convention; with its depth
    exponents when it repeats a block over a depth."""
    with paused_gc():
        d = _derive(program, optimizer, convention, depth_convention)
        _refuse_unbounded_gradient(program, d)
        if program.repeats_over_depth:
            if optimizer.uses_gradient_scale:
                try:
                    require_depth_pass(program, optimizer)
                except EngineError as err:
                    d.depth_refused = err.diagnostics[0].message
            else:
                try:
                    d.depth = _derive_depth(program, optimizer, depth_convention)
                except EngineError as err:  # the width exponents stand at any fixed depth
                    d.depth_refused = err.diagnostics[0].message
        # the optimizers with Adam's ε in their step: Adam, AdamW, and the AdamW that steps
        # what Muon does not orthogonalise (its input matrix's gradient entries shrink as 1/n)
        if optimizer.name in ("adam", "adamw") or optimizer.matrix_rule is not None:
            d.eps = _adam_stepped(d, eps_exponents(d.check.analysis, d.abc))
            if d.depth is not None:
                shared = _shared_by_repetitions(program)
                d.eps_depth_refused = {
                    p: f"{p} is shared by every repetition of {shared[p]}: its gradient sums "
                       "over the depth, which the depth pass does not track" for p in shared
                    if p in d.eps}
                for p, (value, block) in _feeding_repetitions(program).items():
                    if p in d.eps and p not in shared:
                        shared[p] = block
                        d.eps_depth_refused[p] = (
                            f"{p} feeds {value}, which every repetition of {block} reads (an "
                            "encoder's output under cross-attention): its gradient sums over "
                            "the depth, which the depth pass does not track")
                exps = eps_exponents(d.depth.check.analysis, d.depth.abc)
                d.eps_depth = _adam_stepped(d, {p: e for p, e in exps.items() if p not in shared})
        return d


def _refuse_unbounded_gradient(program: Program, d: Derivation) -> None:
    """Refuse a derivation in which the gradient reaching a trained param grows faster than any
    power of the width (an exponent of ∞: a back edge whose gradient grows round after round
    through a block's repetitions, as behind a layer of fixed size between layers of the
    width). Its exponents would hold at no depth, and Adam's ε would have nothing to follow."""
    an = d.check.analysis
    grown = [p for p, x in d.abc.items() if x.c is not INF
             and emax(add(gy, e) for gy, e in an.sources(p)) is INF]
    if not grown:
        return
    more = f" (and {len(grown) - 1} more params)" if grown[1:] else ""
    raise EngineError(Diagnostic(
        f"the gradient that reaches {grown[0]}{more} grows with the width faster than any "
        "power: it compounds through the repetitions of a block, so no exponents of the width "
        "hold at any depth", program.param_table[grown[0]].span,
        "look for a layer of a fixed size between layers of the width (a bottleneck) inside "
        "the repeated block: let it grow with the width (a dim ∝ n)"))


def _adam_stepped(d: Derivation, eps: dict[str, Exp]) -> dict[str, Exp]:
    """eps without the params Muon orthogonalises: its step has no Adam ε (torch's Muon's own
    eps only guards the orthogonalisation's normalisation)."""
    an = d.check.analysis
    return {p: e for p, e in eps.items() if not d.optimizer.rule_for(an.shape(p)).spectral}


def eps_exponents(an: Analysis, abc: dict[str, ABC]) -> dict[str, Exp]:
    """Adam's ε per trained param as ε·n^-e: e = minus the exponent of the entries of the
    gradient Adam sees, ∂f/∂w = n^-a ∂f/∂W, whose entries are n^-a times the largest
    e(df/dy) + e(x) over the param's uses (as SGD's update, optimizers.py). With ε ∝ those
    entries, ε/√v is the same at every width: ε never swamps the gradient (at large width a
    fixed ε does, wherever the entries shrink, and Adam turns into SGD with a tiny LR) nor
    vanishes relative to it. A param no gradient reaches, or never trained, has none."""
    out = {}
    for p, x in abc.items():
        if x.c is INF:
            continue
        g = emax(add(gy, e) for gy, e in an.sources(p))
        if g is NEG_INF:
            continue
        out[p] = canon(-add(-x.a, g))
    return out


def _shared_by_repetitions(program: Program) -> dict[str, str]:
    """Params used inside a block repeated over the depth but not its own (a tied matrix):
    param -> block."""
    out = {}
    for s in program.streams:
        if not (s.loops and s.count == program.depth.name):
            continue
        block = program.block_table[s.block]
        own = set(block.params)
        for v in block.values:
            ins = program.producer[v]
            for n in (getattr(ins, "weight", None), *ins.operands):
                if n in program.param_table and n not in own:
                    out[n] = block.name
    return out


def _feeding_repetitions(program: Program) -> dict[str, tuple[str, str]]:
    """Params that feed a value computed outside a block repeated over the depth and read by
    its repetitions (not through the stream: an encoder's output that a decoder block's
    cross-attention reads): param -> (value, block). Such a value's gradient is a sum over
    the L repetitions, as a shared param's is, so neither has a depth exponent of ε."""
    out: dict[str, tuple[str, str]] = {}
    for s in program.streams:
        if not (s.loops and s.count == program.depth.name):
            continue
        block = program.block_table[s.block]
        inside = set(block.values) | {s.out}
        read = sorted({o for v in block.values for o in program.producer[v].operands
                       if o not in inside and o not in program.param_table})
        for value in read:
            todo, seen = [value], set()
            while todo:  # everything upstream of the value read
                v = todo.pop()
                if v in seen:
                    continue
                seen.add(v)
                ins = program.producer.get(v)
                for n in (getattr(ins, "weight", None), *ins.operands) if ins else ():
                    if n in program.param_table:
                        out.setdefault(n, (value, block.name))
                    elif n is not None:
                        todo.append(n)
    return {p.name: out[p.name] for p in program.params if p.name in out}  # program order


def _derive(program: Program, optimizer: Optimizer, convention: str,
            depth_convention: str = "completep") -> Derivation:
    if convention not in CONVENTIONS:
        raise EngineError(f"unknown convention '{convention}'",
                          help=f"choose one of {', '.join(CONVENTIONS)}")
    if depth_convention not in DEPTH_CONVENTIONS:
        raise EngineError(f"unknown depth convention '{depth_convention}'",
                          help=f"choose one of {', '.join(DEPTH_CONVENTIONS)}")
    require_width(program)
    refuse_growing_head_dim(program)  # the delta rule: rules_delta.py
    _refuse_shared_finite_heads(program)
    params = used_params(program)
    an = Analysis(program, optimizer)
    bounds = _settle_bounds(program, an, params)
    _refuse_compounding(program, an)
    _require_fixed(program, an, params)
    an.V = dict(an.U)  # stable by construction: capped and first-order updates are U
    an.F = dict(an.U)
    an.backward()
    chosen: dict[str, dict[str, Bound]] = {}
    for b in bounds:
        table = an.S if b.slot == "S" else an.U
        if b.value == table[b.param]:
            chosen.setdefault(b.param, {}).setdefault(b.slot, b)

    equations: list[Equation] = []
    scales = {p for p in params if program.param_table[p].is_scale}
    for p in params:
        need = ("S",) if p in scales else ("S", "U")
        missing = [k for k in need if k not in chosen.get(p, {})]
        if missing:  # e.g. a matrix used both ways whose two uses bound each other in a circle
            what = " and ".join("init" if k == "S" else "update" for k in missing)
            raise EngineError(
                f"no single condition fixes the {what} of {p}: its uses only bound it through "
                "each other",
                span=program.param_table[p].span,
                help="tie a matrix only as an embedding (W @ one-hot) and a scaled "
                     "unembedding (s * (W.T @ h)), or give each use its own param")
    for p in params:
        if p in scales:
            s_bound = chosen[p]["S"]
            equations.append(Equation(p, (1, 0, 0), -an.S[p],
                                      f"scale: its multiplier n^-a takes {s_bound.term.what} in "
                                      f"{s_bound.instruction} to Θ(1) at most (never trained)"))
            continue
        s_bound, u_bound = chosen[p]["S"], chosen[p]["U"]
        if standardised(program, p):
            k, rhs = optimizer.equation(an.U[p], an.sources(p), an.shape(p))
            equations += [Equation(p, coefs, value, why) for coefs, value, why in std_equations(
                p, an.S[p], k, rhs, f"{s_bound.term.what} in {s_bound.instruction}",
                f"{u_bound.term.what} in {u_bound.instruction}")]
            continue
        equations.append(Equation(p, (1, 1, 0), -an.S[p],
                                  f"init maximal: {s_bound.term.what} in {s_bound.instruction} "
                                  f"is Θ(1) at most"))
        k, rhs = optimizer.equation(an.U[p], an.sources(p), an.shape(p))
        equations.append(Equation(p, (k, 0, 1), rhs,
                                  f"update maximal ({optimizer.name}): {u_bound.term.what} in "
                                  f"{u_bound.instruction} is Θ(1)"))
        coefs, value, why = CONVENTIONS[convention](program, p, an.S[p])
        equations.append(Equation(p, coefs, value, why))
    _refuse_unbounded(program, optimizer, equations)
    abc = _solve([p for p in params if p not in scales],
                 [e for e in equations if e.param not in scales])
    abc.update({p: ABC(-an.S[p], ZERO, "oo") for p in params if p in scales})
    abc = {p: abc[p] for p in params}
    check = classify(program, optimizer, abc)
    refuse_forced(program, check)  # an SSD's mixing that every stable µP has vanish at init
    if any(isinstance(ins, Nonlin) and ins.fn == SSD for ins in program.body):
        # a constant 0 init counts as Θ(1) above, an upper bound: where C or B reach Θ(1) at
        # init only through a bias of 0 (HF Mamba-2's short conv), the mixing is forced too
        refuse_forced(program, classify(program, optimizer, zero_constants(program, abc)))
    if check.violations:
        _refuse_bottleneck(program, check)
        # a headline, then one diagnostic per violation at the instruction (or param) concerned
        last = len(check.violations) - 1
        advice = "every width-dependent sum needs a param (or a scale) that can absorb it"
        found = [Diagnostic(v.message, _span_of(program, v.tensor), advice if i == last else None)
                 for i, v in enumerate(check.violations)]
        raise EngineError(
            [Diagnostic("no parametrization makes every vector Θ(1) with maximal updates")]
            + found)
    return Derivation(program, optimizer, convention, abc, bounds, equations, an, check, chosen)


def _refuse_shared_finite_heads(program: Program) -> None:
    """Refuse grouped-query attention whose keys or values have a finite dim while the queries'
    grows with the width (a fixed number of key/value heads of a fixed head dim, or one such
    head: MQA), with the reason the desiderata cannot be met.

    Such keys are ``Wk @ a`` with Wk of a finite fan-out: the update of whatever feeds ``a``
    is then built from Wk₀ᵀ (backprop through a finite fan-out), so Wk₀ meets it in an LLN sum,
    exactly as a readout meets its input's change (TP4: a_{L+1} + b_{L+1} + r >= 1). Stable
    feature learning then needs Wk initialised as an output weight (std ∝ 1/n), which leaves the
    keys, the logits of the g ∝ n query heads sharing them and the attention output vanishing
    at init, against the desideratum that every vector be Θ(1) there. Measured in a one-block
    decoder (Adam, MHA's exponents, widths 128..2048): the keys' change grows as n^0.29 and the
    attention output's as n^0.37; with Wk, Wv at std 1/n both stay flat (docs/theory.md)."""
    dims = program.value_dims
    diagnostics = []
    for ins in program.body:
        if isinstance(ins, Dot) and ins.over is not None:
            query, kv, what = dims[ins.left], dims[ins.right], "keys"
        elif isinstance(ins, Mix):
            query, kv, what = dims[ins.out], dims[ins.values], "values"
        else:
            continue
        if program.dim(query).infinite and not program.dim(kv).infinite:
            name = ins.right if what == "keys" else ins.values
            diagnostics.append(Diagnostic(
                f"the {what} {name} have the finite dim {kv} but serve query heads whose number "
                f"grows with the width: what projects them has a finite fan-out, so it must be "
                "initialised as a readout (std ∝ 1/n) for stable feature learning, and then the "
                f"{what} and the attention {'logits' if what == 'keys' else 'output'} vanish at "
                "init, so no µP has every vector Θ(1) at init",
                ins.span,
                f"let the {what}' dim grow with the width: a fixed number of heads of a growing "
                "dim (`dim dh = n / 8` and `dim kv = n / 4`), or heads of a fixed dim growing in "
                "number (`dim kv = n / 2`); `classify` still judges a given parametrization"))
    if diagnostics:
        raise EngineError(diagnostics)


def _refuse_bottleneck(program: Program, check) -> None:
    """Refuse, naming the cause, a program whose vectors vanish at init because a matmul of a
    finite fan-out from a vector of infinite dim narrows the network to a finite dim that
    layers of infinite dim read again (a bottleneck: UltraBERT's prediction head, n -> 768 ->
    n at every width).

    As for MQA's keys (above), such a matrix W meets its input's change in an LLN sum (the
    input's update is built from W₀ᵀ: backprop through a finite fan-out), so stable feature
    learning needs W initialised as a readout (std ∝ 1/n, TP4: a + b + r >= 1 for an output
    weight); then ``z = W @ x`` is Θ(1/√n) at init and so is every vector computed from it
    (no bias or function away from 0 lifts it), against the desideratum that every vector be
    Θ(1) there. Only called where the solution already fails: a bottleneck whose reader is
    lifted (a router's softmax, a sigmoid gate) derives as before."""
    dims, an = program.value_dims, check.analysis
    reads: dict[str, tuple[str, ...]] = {ins.out: ins.operands for ins in program.body}
    vanishing = [v.tensor for v in check.violations if v.condition == "vanishing_init"]
    for ins in program.body:
        if not isinstance(ins, MatMul) or program.dim(dims[ins.out]).infinite or \
                not program.dim(dims[ins.arg]).infinite or ins.out in program.outputs or \
                not gt(ZERO, an.init_[ins.out]):
            continue
        found = [v for v in vanishing if _reads(reads, v, ins.out)]
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise EngineError(Diagnostic(
                f"{ins.out} = {ins.weight} @ {ins.arg} narrows the width to the finite dim "
                f"{dims[ins.out]} inside the network: {ins.weight} has a finite fan-out, so it "
                "must be initialised as a readout (std ∝ 1/n) for stable feature learning, and "
                f"then {ins.out} vanishes at init as {power(an.init_[ins.out])} and so does "
                f"every vector of the width computed from it ({shown}), so no µP has every "
                "vector Θ(1) at init",
                ins.span,
                f"let {dims[ins.out]} grow with the width (a dim ∝ n), or make {ins.out} an "
                "output; `classify` still judges a given parametrization"))


def _reads(reads: dict, v: str, z: str) -> bool:
    """Whether vector v is computed from vector z (through any instructions)."""
    seen, todo = set(), [v]
    while todo:
        x = todo.pop()
        if x == z:
            return True
        if x not in seen:
            seen.add(x)
            todo.extend(reads.get(x, ()))
    return False


def _require_fixed(program: Program, an: Analysis, params: list[str], where: str = "") -> None:
    """Every param's init, and every trained param's update, must be bounded by some term."""
    unset = [p for p in params
             if an.S[p] is None or (an.U[p] is None and not program.param_table[p].is_scale)]
    if unset:
        raise EngineError([
            Diagnostic(f"no condition{where} fixes the {'init' if an.S[p] is None else 'update'} "
                       f"scale of {p}", program.param_table[p].span,
                       "each param must reach an output through something it can move")
            for p in unset])


def _derive_depth(program: Program, optimizer: Optimizer, convention: str) -> DepthDerivation:
    """The depth exponents, from the depth pass's desiderata (the same bounds as in the width,
    with only the depth infinite): every term O(1) in L; every update maximal in L (its tightest
    bound, with equality); and every init at least as large as its own update in L (S_L >= U_L),
    so that no weight is dominated by its accumulated update. The init is then anywhere in
    [U_L, its tightest bound]: a range of more than one point is a free exponent, which the depth
    convention resolves. The symmetry (a_L+θ, b_L-θ, c_L-θ) is fixed by b_L = 0."""
    require_depth_pass(program, optimizer)
    L = program.depth.name
    params = used_params(program)
    an = Analysis(program, optimizer, depth_pass=True)
    _settle_bounds(program, an, params)
    _refuse_compounding(program, an)
    scales = {p for p in params if program.param_table[p].is_scale}
    _require_fixed(program, an, params, f" in {L}")
    free: dict[str, tuple[Exp, Exp]] = {}
    equations: list[Equation] = []
    for p in params:
        if p in scales:
            equations.append(Equation(p, (1, 0, 0), -an.S[p], f"scale: its multiplier "
                                      f"{L}^-a_{L} takes its term to Θ(1) in {L} at most", L))
            continue
        top, low = an.S[p], an.U[p]  # U_L <= S_L <= top
        if gt(low, top):
            raise EngineError(
                f"{p}'s update is maximal in {L} only above the largest init stability allows "
                f"({L}^{low} > {L}^{top}): the weight would be dominated by its own update",
                span=program.param_table[p].span,
                help="route the block's branch through a param that can absorb its size")
        if gt(top, low):
            free[p] = (-top, -low)
        s_l = low if convention == "completep" else top
        why = (f"init not below its update in {L} (S_{L} = U_{L})" if s_l == low and s_l != top
               else f"init at its tightest bound in {L}" if s_l != low
               else f"init bound in {L} = its update (S_{L} = U_{L})")
        equations.append(Equation(p, (1, 1, 0), -s_l, f"{why}; convention {convention}"
                                  if p in free else why, L))
        k, rhs = optimizer.equation(an.U[p], [], an.shape(p))
        equations.append(Equation(p, (k, 0, 1), rhs, f"update maximal in {L} ({optimizer.name})",
                                  L))
        equations.append(Equation(p, (0, 1, 0), ZERO, f"the multiplier carries the depth scaling "
                                  f"(b_{L} = 0), as TP6 and CompleteP do", L))
    abc = _solve([p for p in params if p not in scales],
                 [e for e in equations if e.param not in scales])
    abc.update({p: ABC(-an.S[p], ZERO, INF) for p in params if p in scales})
    abc = {p: abc[p] for p in params}
    check = classify_depth(program, optimizer, abc)
    if check.violations or check.regime != "feature_learning":
        last = len(check.violations) - 1
        found = [Diagnostic(v.message, _span_of(program, v.tensor),
                            "the depth rules do not cover this block's form (e.g. a "
                            "nonlinearity on the branch's output)"
                            if i == last else None)
                 for i, v in enumerate(check.violations)]
        raise EngineError(
            [Diagnostic(f"the derived depth exponents are not feature learning with every param "
                        f"updated maximally as {L} grows (regime: {check.regime})",
                        program.depth.span)] + found)
    return DepthDerivation(convention, abc, free, equations, an, check)


def _refuse_unbounded(program: Program, optimizer: Optimizer, equations: list[Equation]) -> None:
    """An EngineError at the first param whose maximal update has no finite exponent: under an
    optimizer whose step carries the gradient's size (SGD), a gradient the analysis finds
    unbounded (+∞: e.g. a vector that vanishes at init, then divided by its own size in a norm)
    leaves no learning rate to solve for. Adam's step does not carry it, and its derivation names
    the vector that causes it."""
    for eq in equations:
        if eq.rhs in (INF, NEG_INF):
            raise EngineError(
                f"under {optimizer.name} no learning-rate exponent makes the update of {eq.param} "
                f"maximal ({eq.reason}): the gradient it is made of has no finite size at any "
                "init this program allows",
                span=_span_of(program, eq.param),
                help="derive it with adam: where a vector vanishes at init and a norm then "
                     "divides by its size, adam's derivation names that vector")


def _span_of(program: Program, tensor: str) -> Span | None:
    """Where a vector is computed or a param declared, for an error's position."""
    if tensor in program.param_table:
        return program.param_table[tensor].span
    ins = program.producer.get(tensor)
    return ins.span if ins is not None else None


def _solve(params: list[str], equations: list[Equation]) -> dict[str, ABC]:
    """Solve all equations at once, exactly, over QQ; the system must determine every unknown."""
    index = {(p, v): 3 * i + j for i, p in enumerate(params) for j, v in enumerate("abc")}
    n = len(index)
    rows: dict[int, dict[int, object]] = {}
    for r, eq in enumerate(equations):
        row = {index[(eq.param, v)]: QQ(k) for k, v in zip(eq.coefs, "abc", strict=True) if k}
        row[n] = QQ(int(eq.rhs.p), int(eq.rhs.q))
        rows[r] = row
    system = DomainMatrix(rows, (len(equations), n + 1), QQ)
    reduced, pivots = system.rref()
    if len(pivots) < n or n in pivots:
        raise EngineError("the conditions do not determine every exponent",
                          help="this is a bug in a convention; please report it")
    solution = reduced.to_sdm()
    values = {}
    for r, col in enumerate(pivots):
        q = solution.get(r, {}).get(n, QQ(0))
        values[col] = canon(f"{q.numerator}/{q.denominator}")
    return {p: ABC(values[index[(p, "a")]], values[index[(p, "b")]], values[index[(p, "c")]])
            for p in params}


