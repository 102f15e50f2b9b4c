"""The zoo's second, wider check (benchmarks/zoo.py): which rows get it, and how a row and the
totals read it, on fake rows (no model runs)."""

import pytest
from conftest import ROOT, import_file


@pytest.fixture(scope="module")
def zoo():
    return import_file(ROOT / "benchmarks" / "zoo.py", "zoo")


def _row(family, status="fail", logits_only=True, wider=None, **more):
    row = {"family": family, "scaling": "heads", "status": status, "time": 10.0,
           "detail": "1 vectors: h.1 logits -0.30", "sp": "fails (9 vectors)", **more}
    if status == "fail":
        row.update(failures={"h.1 logits": -0.3}, logits_only=logits_only)
    if wider:
        row["wider"] = {"widths": [1024, 2048, 4096], "time": 90.0, "detail": "", **wider}
    return row


def test_only_a_check_failing_on_attention_logits_alone_is_checked_wider(zoo):
    assert zoo.wants_wider(_row("a"))
    assert not zoo.wants_wider(_row("b", logits_only=False))  # a readout fails too
    assert not zoo.wants_wider(_row("c", status="pass"))
    assert not zoo.wants_wider(_row("d", status="refused"))
    # apply not bit-identical: a fail with no failing vectors
    assert not zoo.wants_wider({"status": "fail", "detail": "apply changes its params"})


def test_a_row_says_both_results_and_the_totals_keep_wider_passes_apart(zoo):
    rows = [_row("passes"), _row("wide", wider={"status": "pass"}),
            _row("still", wider={"status": "fail", "detail": "1 vectors: h.1 logits -0.2"}),
            _row("moe", wider={"status": "skipped", "detail": "1.2G params"}),
            _row("other", logits_only=False)]
    rows[0].update(status="pass", detail="")
    assert [zoo.result_cell(r) for r in rows] == [
        "pass", "fail; pass (wider)", "fail; fail (wider)", "fail; skipped (wider)", "fail"]
    count, built, share = zoo._counts(rows)
    assert (count["pass"], count["fail"], count["wider"], count["wider_pass"]) == (1, 4, 3, 1)
    assert share == "20%"  # a pass at the wider widths is not a pass
    lines = zoo._section(zoo.MAPPINGS["causal"], {r["family"]: {s: dict(r, scaling=s)
                                                               for s in zoo.SCALINGS}
                                                  for r in rows})
    text = "\n".join(lines)
    assert "1 pass (0 by the split" in text and "4 fail" in text
    assert "1 of the 3 that fail on attention logits alone pass at widths 1024, 2048, 4096: " \
           "pass (wider)" in text
    assert "| wide | fail; pass (wider) |" in text
    assert "at widths 1024, 2048, 4096 (90 s): fail, 1 vectors: h.1 logits -0.2" in text


def test_a_model_too_large_at_4096_is_not_checked_wider(zoo):
    # 30 bytes a param at the widest width (gpt_neox's peak: 11.4 GiB for 0.405G params); a
    # mixture of 4 experts at 4096 has 1.2G: skipped, said so, and no model is built
    torch = pytest.importorskip("torch")
    out = zoo._wider(None, lambda n: torch.nn.Linear(n, 72 * n), zoo.WIDER_WIDTHS, {})
    assert out["status"] == "skipped"
    assert out["detail"].startswith("1.2G params at width 4096: about 34 GiB, past the 12 GiB")


def test_the_wider_check_runs_in_a_process_of_its_own(zoo):
    """Its memory goes back with the process: a result comes back, an error is raised here, and
    a child that dies without a result (killed for memory) is an error, not a pass."""
    import os

    assert zoo._in_child(lambda: (True, "")) == (True, "")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        zoo._in_child(lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="died without a result"):
        zoo._in_child(lambda: os._exit(9))


def test_a_check_that_left_the_small_update_regime_is_run_again_at_the_lr_it_suggests(zoo):
    warned = "not in the small-update regime: the LM head turns"
    passed = _row("esm", status="pass", regime=warned, lr=0.001, detail="",
                  lower_lr={"lr": 0.001, "from": 0.003, "status": "pass", "detail": ""})
    still = _row("xl", logits_only=False, regime=warned,
                 lower_lr={"lr": 0.001, "from": 0.003, "status": "fail",
                           "detail": "1 vectors: lm_head -0.40"})
    assert [zoo.result_cell(r) for r in (passed, still)] == ["pass (lr 0.001)", "fail"]
    count, built, share = zoo._counts([passed, still])
    assert (count["pass"], count["lower_lr"], share) == (1, 1, "50%")
    text = "\n".join(zoo._section(zoo.MAPPINGS["masked"], {
        r["family"]: {s: dict(r, scaling=s) for s in zoo.SCALINGS} for r in (passed, still)}))
    assert "1 pass (0 by the split of a vector's change: finite-width drift; 1 at the lower lr" \
        in text
    assert ("| esm | pass (lr 0.001) | fails (9 vectors) | 10 | at lr 0.003, the check's "
            f"default, it failed and warned: {warned}; the row is its run at lr 0.001 |") in text
    assert (f"the check warns: {warned}; at lr 0.001, which the check suggested: fail, "
            "1 vectors: lm_head -0.40 |") in text


def test_only_a_pass_inside_the_small_update_regime_replaces_the_first_run(zoo):
    class Result:
        def __init__(self, passed, warning=""):
            self.passed, self.warning = passed, warning

        def regime_warning(self):
            return self.warning

    assert zoo._verdict(Result(True)) == "pass"
    assert zoo._verdict(Result(True, "still turns")) == "warns"
    assert zoo._verdict(Result(False)) == "fail"
    assert zoo._lower_lr(type("R", (), {"settings": {"lr": 3e-3}})()) == pytest.approx(1e-3)
