"""The coordinate check of examples/t5.tp, an encoder-decoder: under µP the attention logits of
both stacks (self-attention with the relative bias, and cross-attention) and what cross-attention
carries into the decoder move by Θ(1) at every width; under SP they blow up.

A small check (widths 64-256, one seed, 2 steps: a few seconds). The full one, `tensorprog check
examples/t5.tp --widths 64,128,256,512,1024 --seeds 2`, passes every vector (docs/check.md); at
these widths the output logits still carry their n^-1/2 init remainder (slope -0.19 here), and
the bias tables (a few dozen entries, no batch axis) read as seed noise at init, so only the
vectors below are judged here."""

from __future__ import annotations

import pytest
from conftest import ROOT

import tensorprog as tp

pytest.importorskip("torch")

ATTENTION = ("es1", "es2", "ds1", "ds2", "cs1", "cs2")  # encoder, decoder, cross logits
CARRIED = ("enc", "g1", "g2")  # the encoder's output, and the decoder after cross-attention
TOLERANCE = 0.15  # the check's default


def test_t5_mup_keeps_attention_and_cross_attention_theta_1_and_sp_blows_them_up():
    program = tp.parse_file(ROOT / "examples" / "t5.tp")
    kw = dict(widths=(64, 128, 256), seeds=1, steps=2)
    mup, sp = tp.check(program, "adam", **kw), tp.check(program, "adam", param="sp", **kw)
    for name in ATTENTION + CARRIED:  # measured: every slope within ±0.11
        assert abs(mup.slope(name, 2)) <= TOLERANCE, (name, mup.slope(name, 2))
    # SP (init 1/√fan-in, one constant LR): measured +0.97 to +0.99 for the
    # first blocks' logits, +0.59 and +0.62 after each cross-attention
    for name in ("es1", "ds1", "g1", "g2"):
        assert sp.slope(name, 2) > 0.4, (name, sp.slope(name, 2))
