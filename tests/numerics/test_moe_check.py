"""The coordinate check of examples/moe.tp, small (widths 64-512, 1 seed; the full run is in
docs/check.md): under µP with the readouts zero-initialised (the router is one, so every input
starts with the same experts at every width) the router logits, the gates, the experts and the
output move by Θ(1); under SP at a constant Adam LR the router logits and the layer blow up."""

from __future__ import annotations

from conftest import ROOT

import tensorprog as tp

LAYER = ("g_1", "g", "m_1", "m_3", "m", "y", "out")  # logits, gates, expert 1, layer, output


def test_moe_check_is_flat_under_mup_and_blows_up_under_sp():
    program = tp.parse_file(ROOT / "examples" / "moe.tp")
    kw = dict(widths=(64, 128, 256, 512), seeds=1, steps=3, readout_zero_init=True)
    mup = tp.check(program, "adam", **kw)
    # the layer as a whole, within ±0.2 (the check's ±0.15 is for widths to 2048 and 3 seeds; one
    # seed to 512 measured at most 0.16 here). An expert's own values also depend on how many of
    # the 16 inputs pick it, which at these widths varies with the seed (docs/check.md)
    assert {v: round(mup.slope(v, 3), 2) for v in LAYER if abs(mup.slope(v, 3)) >= 0.2} == {}
    sp = tp.check(program, "adam", param="sp", **kw)
    assert {"g_1", "m", "out"} <= set(sp.failures)
    assert sp.slope("g_1", 3) > 0.6 and sp.slope("m", 3) > 0.6
