"""Normalised vectors that turn: a coordinate check's run past the small-update regime.

A LayerNorm's or RMSNorm's output has a size its gain fixes, so the RMS of its change in one
step, over its size, measures how far the step turned it. The judge (``judge.py``) reports the
runs where such a vector turns by more than TURNED in a step from step 2 on (``CheckResult.
turned``, ``regime_warning``); a traced model's check measures the turns (fromtorch/check.py)."""

from __future__ import annotations

from ..ir.program import LinComb, Nonlin, Program
from .judge import repetitions

PER_TOKEN = ("layernorm", "rmsnorm")  # norms over each token's features (not a batch's)

# A normalised vector (a LayerNorm's or RMSNorm's output, its gain and bias applied) has a size
# its gain fixes, so its change in one step measures a turn: RMS(h_t − h_t-1)/RMS(h_t-1) =
# √(2(1 − cos)) while the gain has not moved. A first step may turn it far (HF's 0.02 init
# leaves every layer's output small beside Adam's first update): the final norm of Llama, Qwen3
# and GPT-2 turns by 1.01 to 1.05 of its size in step 1 at lr 3e-3, and their checks pass. Past
# 1 in a later step (cos < 1/2, a turn of 60° again), the features every later layer reads are
# replaced step after step, and a readout's own update ΔW·h, an LLN sum over the coordinates only
# as far as h stays correlated with the h its gradient was built from, stops scaling as µP's.
# Measured at lr 3e-3 (widths 256..1024, 2 seeds; the LM head's LayerNorm, steps 2 and 3):
# xlm-roberta-xl 1.17 and up to 1.37, ESM up to 1.17, their decoders' own update then reading
# -1.30 and -0.27 where µP requires 0; Llama's final norm at most 0.65, BERT's and RoBERTa's
# heads 0.41, 0.42. A sign, not a verdict: flex_olmo's norm on its MLP's output turns by 1.07 at
# lr 1e-3, where its check passes (docs/check.md, "The masked LMs' heads").
TURNED = 1.0


def normalised(program: Program) -> set[str]:
    """The program's normalised vectors (under their repetitions' names too): a layernorm's or
    rmsnorm's output, and what its gain and bias make of it (``g * norm(h)``, ``+ b``: params
    alone beside it)."""
    params = {p.name for p in program.params}
    out = {i.out for i in program.body if isinstance(i, Nonlin) and i.fn in PER_TOKEN}
    for ins in program.body:
        if isinstance(ins, Nonlin) and ins.fn == "mul" and any(a in out for a in ins.args) \
                and all(a in out or a in params for a in ins.args):
            out.add(ins.out)
        elif isinstance(ins, LinComb) and any(v in out for _, v in ins.terms) \
                and all(v in out or v in params for _, v in ins.terms):
            out.add(ins.out)
    return out | {name for v, name in repetitions(program) if v in out}


def turned(turns: dict, widths, seeds) -> list[tuple[str, int, int, float]]:
    """``turns``: (vector, step, width, seed) -> RMS(h_t − h_t-1) / RMS(h_t-1). Returns (vector,
    width, step, turn) for each normalised vector that turned by more than TURNED in one step
    from step 2 on (mean over the seeds). The first step is left out: HF's small inits let it
    turn far in checks that pass."""
    out = []
    for v, t in dict.fromkeys((v, t) for v, t, _, _ in turns):
        if t < 2:
            continue
        for w in widths:
            turn = sum(turns[(v, t, w, s)] for s in seeds) / len(seeds)
            if turn > TURNED:
                out.append((v, w, t, turn))
    return out
