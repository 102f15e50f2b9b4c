"""The coordinate check of examples/ssd.tp (Mamba-2 with a group of C and B per head;
docs/theory.md, "State-space mixing"), pinned as measured (Adam, lr 0.01, 3 seeds, 3 steps,
widths 64..1024): under the derived µP every vector of the SSD branch is flat, and the one
failure is the logits' change, the readout's own transient (slopes -0.32, -0.21, -0.17 after
steps 1..3, shrinking towards 0 as they do in examples/llama.tp's check at these widths;
zero-initialising the readout flattens them to -0.08); under SP the SSD branch is among the
failures. Widths 128..1024 leave the second block's branch at the mercy of 3 seeds (slopes'
spread 0.17), so the fit keeps 64. Slow (under a minute of CPU for the two checks)."""

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402

TEXT = (ROOT / "examples" / "ssd.tp").read_text()
WIDTHS = (64, 128, 256, 512, 1024)
# the values computed from C, B and the weights, in either block (p_1, p_2: C and B; p_3: cb;
# p: the weights; y_1: the mixing; y and out_3: the sums and the gate that take it in)
BRANCH = {"p_1", "p_2", "p_3", "p", "y_1", "y", "out_3"}


def _branch(name: str) -> bool:
    return name.split(".")[-1] in BRANCH


@pytest.mark.slow
def test_mup_is_flat_in_the_ssd_branch_and_sp_is_not():
    mup = tp.check(tp.parse(TEXT), "adam", widths=WIDTHS)
    assert set(mup.failures) <= {"logits"}, list(mup.failures)
    assert -0.25 < mup.slope("logits", 3) < 0 and mup.slope("logits", 3) > mup.slope("logits", 1)
    for block in ("mamba.0", "mamba.1"):
        for step in (2, 3):
            assert abs(mup.slope(f"{block}.p", step)) <= 0.15
    sp = tp.check(tp.parse(TEXT), "adam", param="sp", widths=WIDTHS)
    assert not sp.passed and len(sp.failures) > 30
    assert {"mamba.0.p", "mamba.1.p", "mamba.0.y_1", "mamba.1.y_1"} <= set(sp.failures)
