"""Sweeps along the batch size, the sequence length and the number of steps at one width
(``transfer --axis``): each value's trial is the trial a width sweep runs with that setting,
loss for loss (same seed, same batches). Tiny: width 16, 2-3 steps, 3 learning rates, in this
process. The refusals are in tests/test_error_catalogue.py."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.transfer import render, sweep

pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"
DECODER = ROOT / "examples" / "transformer.tp"  # dim T = 4
LRS = [1e-3, 4e-3, 1.6e-2]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # a sweep of one job trains in this process with a thread per core; on a loaded machine two
    # threads spin waiting for each other (a trial here: 1 s of CPU with 2, 0.05 s with 1)
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 1)


def _sweep(path, data, **kw):
    kw = {"params": ("mup",), "values": LRS, "seeds": 1, "jobs": 1, "cache": None, **kw}
    return sweep(tp.parse_file(path), OPTIMIZERS["adam"], data, **kw)


def test_each_value_along_an_axis_is_the_width_sweeps_trial_with_that_setting(tmp_path):
    by_width = _sweep(MLP, "digits", widths=[16, 32], steps=3, batch_size=4)
    batch = _sweep(MLP, "digits", axis="batch", at=[4, 8], width=16, steps=3)
    steps = _sweep(MLP, "digits", axis="steps", at=[2, 3], width=16, batch_size=4,
                   cache=tmp_path)
    for along, value in ((batch, 4), (steps, 3)):
        assert along.losses["mup"][value] == by_width.losses["mup"][16]
    assert batch.losses["mup"][8] != batch.losses["mup"][4]
    assert batch.settings["axis"] == "batch" and batch.widths == [4, 8]
    # each trial trained its own number of steps (and was cached so)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "transfer").glob("*.json")]
    assert sorted(r["steps"] for r in runs) == [2, 2, 2, 3, 3, 3]
    text = render(steps)
    assert "across step counts, at width 16" in text and "S=2" in text
    assert "drift across step counts" in text


def test_a_sequence_sweep_past_the_programs_length_emits_the_longest():
    # T = 4 in the program: the module is emitted with T = 8, and each trial reads sequences of
    # its own length (a length past the position table would fail in forward)
    longer = _sweep(DECODER, "text", axis="seq", at=[4, 8], width=16, steps=2, batch_size=2)
    assert "--axis seq: T = 8, the longest (the program says 4)" in render(longer)
    assert all(v < float("inf") for row in longer.losses["mup"].values() for v in row.values())


def test_a_sequence_length_trial_is_the_width_sweeps_at_that_length():
    by_width = _sweep(DECODER, "text", widths=[16, 32], steps=2, batch_size=2)
    seq = _sweep(DECODER, "text", axis="seq", at=[2, 4], width=16, steps=2, batch_size=2)
    assert seq.losses["mup"][4] == by_width.losses["mup"][16]  # T = 4: the program's own
