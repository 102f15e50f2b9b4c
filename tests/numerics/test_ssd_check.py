"""The coordinate check of examples/ssd.tp (Mamba-2, ngroups fixed; docs/theory.md, "State-space
mixing"), pinned as measured: SP fails everywhere; the derived µP fails in the SSD branch alone
(the mixing's change shrinks with the width over the first steps: the limit's Θ(1) change of cb
is ΔC·ΔB, second order in the step, behind first-order terms that vanish as n^-1/2); with
ngroups growing with the heads nothing vanishes and the branch passes. Slow (about a minute of
CPU for the three checks)."""

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
def test_sp_fails_and_mup_fails_only_in_the_ssd_branch():
    sp = tp.check(tp.parse(TEXT), "adam", param="sp", widths=WIDTHS)
    assert not sp.passed and len(sp.failures) > 30
    mup = tp.check(tp.parse(TEXT), "adam", widths=WIDTHS)
    assert not mup.passed and all(_branch(n) for n in mup.failures), list(mup.failures)
    assert {"mamba.0.p", "mamba.1.p"} <= set(mup.failures)


@pytest.mark.slow
def test_groups_that_grow_with_the_heads_pass_in_the_ssd_branch():
    text = TEXT.replace("dim N = 8 ", "dim N = 16").replace("WB : [N, n]", "WB : [di, n]")
    result = tp.check(tp.parse(text.replace("WC : [N, n]", "WC : [di, n]")), "adam",
                      widths=WIDTHS)
    assert not any(_branch(n) for n in result.failures), list(result.failures)
