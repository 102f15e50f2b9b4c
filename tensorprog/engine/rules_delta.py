"""Scaling rules of the gated delta rule's weights, ``delta(sq, sk, b, g)`` (ir/delta.py). Split
from :mod:`.rules`, whose tables (``INIT``, ``CHANGE``, ``GRAD``) they join; docs/theory.md ("The
gated delta rule") derives each term.

Per head, over the T tokens, with D_ts = exp(G_t - G_s) (s <= t) and L = D ⊙ sk below the
diagonal, P = A·N with A = D ⊙ sq and N = (I + diag(b) L)⁻¹ diag(b). Every entry is a smooth
function of finitely many scalars (the dots of this head's token pairs, b and g at its tokens),
so no sum over the width appears here: the dots brought theirs. A is linear in sq; N is
diag(b) - diag(b) L diag(b) + ... (a finite series, T - 1 powers of b·L), so to first order
linear in b and Θ(b) while b·sk = O(1). Hence, with sizes e(·):

* init: e(P₀) = e(sq₀) + e(b₀), and e(sq₀) + e(b₀) + (T - 1)(e(b₀) + e(sk₀)) should b·sk grow
  (that term is below the first while b·sk = O(1)). D is Θ(1) while g = O(1): a g that grows
  is refused at its own instruction, as every value must be O(1);
* change: ΔP is ΔA·N + A·ΔN: Δsq·b, sq·Δg·b (ΔD = D·ΔG, a finite sum of Δg), sq·Δb and
  sq·b·Δsk·b (ΔN ∋ -diag(b) ΔL diag(b)): each input's change through a Θ(1) derivative,
  times the sizes of the factors P has besides it;
* gradient: dsq = D ⊙ (dP Nᵀ) ~ dP·b; db ~ dP·sq; dg ~ dP·sq·b; dsk ~ dP·sq·b·b, each a
  finite sum over the head's token pairs (+0), and each head's b and g read only their own
  head's weights (no sum over heads).

Should b·sk grow, the series multiplies every change and gradient term as it does P₀: by
(b·sk)^(T-1), or ^(T-2) in sk's own terms (one factor b·L is the one that moved); the sizes of
autograd's derivatives of the emitted helper show exactly these slopes
(tests/engine/test_delta_derive.py). Derive never meets it (b and sk are values, O(1)), but a
classified parametrization may, and then P's rows must not understate it.

With sq, b = Θ(1) (a fixed head dim: the dots are finite sums) this is softmax's rule: P₀ =
Θ(1), ΔP as large as the largest input change, each input's gradient as large as dP's.
``delta(sq, sk, b)`` has no g (D = 1) and so no g terms; its dots may be ``ddot``s, whose own
rules (rules_ddot.py) carry a decay per key channel.
"""

from __future__ import annotations

from ..errors import Diagnostic, EngineError
from ..ir.ddot import DDOT
from ..ir.delta import Delta
from ..ir.program import Dot, Nonlin, Program
from .exponents import ZERO, add
from .terms import Mono, Sizes, Term, terms


def _tokens(ins: Delta, sz: Sizes) -> int:
    """T, the tokens of the sequence the delta rule runs over (its dots' pairs)."""
    return sz.program.dim_table[sz.program.seq].size if sz.program.seq else 1


def _power(u: list[Mono], v: list[Mono], k: int) -> list[Mono]:
    """The alternatives of (u·v)^k, multiplied out one factor at a time with repeats merged, so
    that a long sequence costs k steps, not (alternatives)^(2k) terms."""
    if k <= 0:
        return []
    out = {Mono(ZERO)}
    for _ in range(k):
        out = {Mono(add(a.const, x.const, y.const), tuple(sorted(a.slots + x.slots + y.slots)))
               for a in out for x in u for y in v}
    return sorted(out, key=lambda m: (str(m.const), m.slots))


def init_delta(ins: Delta, sz: Sizes) -> list[Term]:
    sq, sk, b = ins.scores, ins.keys, ins.beta
    first = terms(f"tril(D⊙{sq}₀)·diag({b}₀)", f"P is linear in {sq} and, to first order, in "
                  f"{b}: N = (I + diag({b})L)⁻¹diag({b}) = diag({b})(1 + O({b}·{sk}))", "auto",
                  sz.init(sq), sz.init(b))
    power = _power(sz.init(b), sz.init(sk), _tokens(ins, sz) - 1)
    series = terms(f"{sq}₀·{b}₀·({b}₀·{sk}₀)^(T-1)", "the inverse's finite series over the "
                   "tokens: its highest power, above the first term only if b·sk grows",
                   "auto", sz.init(sq), sz.init(b), power) if power else []
    return first + series


def _series(b: list[Mono], sk: list[Mono], k: int) -> list[Mono]:
    """The inverse's series beside a first-order term: 1 or (b·sk)^k, whichever is larger (the
    powers between them are never above both)."""
    return [Mono(ZERO)] + _power(b, sk, k)


def change_delta(ins: Delta, sz: Sizes) -> list[Term]:
    sq, sk, b, g = ins.scores, ins.keys, ins.beta, ins.decay
    tokens = _tokens(ins, sz)
    full, less = (_series(sz.train(b), sz.train(sk), k) for k in (tokens - 1, tokens - 2))
    why = "P is a smooth function of finitely many scalars: a change passes through a Θ(1) "
    series = " (times the inverse's series, 1 while b·sk = O(1))"
    return (terms(f"Δ{sq}·{b}", why + f"derivative, times N ~ {b}" + series, "auto",
                  sz.change(sq), sz.train(b), full)
            + (terms(f"{sq}·Δ{g}·{b}", why + "derivative (ΔD = D·ΔG, a finite sum of Δg)" +
                     series, "auto", sz.train(sq), sz.change(g), sz.train(b), full) if g else [])
            + terms(f"{sq}·Δ{b}", why + "derivative (N is linear in b to first order)" + series,
                    "auto", sz.train(sq), sz.change(b), full)
            + terms(f"{sq}·{b}·Δ{sk}·{b}", why + "derivative (ΔN ∋ -diag(b)ΔL diag(b))" + series,
                    "auto", sz.train(sq), sz.train(b), sz.change(sk), sz.train(b), less))


def grad_delta(ins: Delta, sz: Sizes) -> list[tuple[str, Term]]:
    sq, sk, b, g = ins.scores, ins.keys, ins.beta, ins.decay
    dp = [Mono(sz.grad(ins.out))]
    tokens = _tokens(ins, sz)
    full, less = (_series(sz.first_order_train(b), sz.first_order_train(sk), k)
                  for k in (tokens - 1, tokens - 2))
    fin = "a finite sum over the head's token pairs (+0); times the inverse's series (1 while "
    fin += "b·sk = O(1))"
    return ([(sq, t) for t in terms(f"D⊙(d{ins.out}·Nᵀ)", f"N ~ {b}; {fin}", "auto", dp,
                                    sz.first_order_train(b), full)]
            + [(b, t) for t in terms(f"∂P/∂{b}·d{ins.out}", f"∂N/∂b = Θ(1), A ~ {sq}; each "
                                     f"head's {b} reads its own weights only, {fin}", "auto",
                                     dp, sz.first_order_train(sq), full)]
            + [(g, t) for t in terms(f"∂P/∂{g}·d{ins.out}", f"∂P/∂G ~ P ~ {sq}·{b}; {fin}",
                                     "auto", dp, sz.first_order_train(sq),
                                     sz.first_order_train(b), full) if g]
            + [(sk, t) for t in terms(f"-Aᵀd{ins.out}·(bN)ᵀ", f"∂P/∂L = -A(I+bL)⁻¹ ... diag(b)"
                                      f" ~ {sq}·{b}·{b}; {fin}", "auto", dp,
                                      sz.first_order_train(sq), sz.first_order_train(b),
                                      sz.first_order_train(b), less)])


def refuse_growing_head_dim(program: Program) -> None:
    """Refuse a delta rule whose dots sum over a head dim that grows with the width (a fixed
    number of heads), naming why its exponents are not derived.

    P is linear in sq (unlike a softmax, whose weights stay Θ(1) as the logits shrink). Over a
    head dim dk ∝ n, q·k of independent queries and keys is a CLT sum at init (√dk) and an
    LLN sum after training (dk): a scale that keeps the trained sq O(1) (∝ 1/dk) leaves sq₀,
    P₀ and the layer's output Θ(n^-1/2) at init, so no parametrization has every vector Θ(1)
    there. The dot rule takes normalised queries and keys as correlated at init (it can only
    overestimate, which is harmless under a softmax), so it would report P₀ = Θ(1) instead:
    refused rather than derived wrong."""
    for ins in program.body:
        if not isinstance(ins, Delta):
            continue
        over = _scores_dim(program, ins.scores)
        if over is not None and program.dim_table[over].infinite:
            raise EngineError(Diagnostic(
                f"delta over heads of {over}, a dim that grows with the width: its weights are "
                f"linear in the scores {ins.scores}, whose dot over {over} is a CLT sum at init "
                "and an LLN sum after training, so a scale that keeps them O(1) in training "
                "leaves the weights and the layer's output vanishing at init as n^-1/2; the "
                "engine does not derive such a layer",
                ins.span,
                "give the heads a fixed dim (`dim dk = 128`, heads `dim H = n / 128`), as "
                "Gated DeltaNet's layers have; docs/theory.md, \"The gated delta rule\""))
    for ins in program.body:  # a decayed dot outside a delta rule: the same sums
        if isinstance(ins, Nonlin) and ins.fn == DDOT and program.dim_table[ins.over].infinite:
            raise EngineError(Diagnostic(
                f"ddot over heads of {ins.over}, a dim that grows with the width: the engine "
                "derives a decayed dot over a fixed head dim only (a finite sum per head, read "
                "by the delta rule)", ins.span,
                "give the heads a fixed dim (`dim dk = 128`, heads `dim H = n / 128`); "
                "docs/theory.md, \"The gated delta rule\""))


def _is_dot(ins) -> bool:
    return isinstance(ins, Dot) or isinstance(ins, Nonlin) and ins.fn == DDOT


def _scores_dim(program: Program, name: str) -> str | None:
    """The head dim the per-head dot (or decayed dot, ``ddot``) behind ``name`` (alone or times
    scales) sums over."""
    ins = program.producer.get(name)
    if isinstance(ins, Nonlin) and ins.fn != DDOT:
        ins = next((program.producer.get(a) for a in ins.args
                    if _is_dot(program.producer.get(a))), None)
    return ins.over if _is_dot(ins) else None
