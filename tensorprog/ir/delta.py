"""The IR's gated delta rule (linear attention's token mixing as Gated DeltaNet computes it),
re-exported by program.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Delta:
    """``out = delta(scores, keys, beta, decay)``: per head, the weights P of the gated delta
    rule's token mixing, ``o = mix(P, v)`` (Gated DeltaNet: Qwen3-Next, Qwen3.5, OLMo-hybrid).

    The recurrence S_t = a_t S_{t-1} (I - b_t k_t k_tᵀ) + b_t v_t k_tᵀ, o_t = S_t q_t, with
    a_t = exp(g_t), unrolled over the finitely many tokens: with G the cumulative sum of g,
    D_ts = exp(G_t - G_s) for s <= t (else 0), ``scores`` sq_ts = q_t·k_s and ``keys``
    sk_ts = k_t·k_s (per-head dots), L = D ⊙ sk strictly below the diagonal,

        P = (D ⊙ sq) (I + diag(b) L)⁻¹ diag(b),   o_t = sum_s P_ts v_s.

    ``beta`` (b) and ``decay`` (g) are vectors per token with one entry per head, or the
    same for every token (of no sequence: params of the heads, or one per sequence).
    ``delta(sq, sk, b)`` has no decay per head (D = 1): DeltaNet's rule, or Kimi Delta
    Attention's, whose decay per key channel is inside its dots, ``ddot(q, k, g, dk)``
    (ir/ddot.py).
    ``delta(sq, sk, b, g, dv, D)``: P per head of values of dim D in heads of dv, r times as
    many as the dots' heads (grouped value heads, Qwen3-Next's: r value heads share each
    query/key head, consecutive as ``repeat_interleave`` lays them out); b and g then have the
    values' heads, and ``mix(P, v, dv)`` reads values of dim D.

    Scaling (docs/theory.md, "The gated delta rule"): P is a smooth function of finitely many
    scalars per head (the dots, b, g over the tokens), linear in sq and, to first order, in b:
    P = tril(D ⊙ sq) diag(b) (1 + O(b·sk)). So P₀ is as large as sq₀·b₀, it changes with
    any input (each through a Θ(1) derivative) and sends each input dP times the others'
    sizes, summed over finitely many token pairs (+0) and, grouped, over the r value heads
    that share a key head (+0: r is finite).
    """

    out: str
    scores: str
    keys: str
    beta: str
    decay: str | None  # None: delta(sq, sk, b), no decay per head (D = 1)
    span: Span | None = _span()
    head: str | None = None  # delta(..., dv, D): the values' head dim
    dim: str | None = None  # and their dim: P has D / dv heads

    @property
    def operands(self) -> tuple[str, ...]:
        return (self.scores, self.keys, self.beta) + ((self.decay,) if self.decay else ())
