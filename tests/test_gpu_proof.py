"""benchmarks/gpu_proof.py --dry: every part of the GPU proof runs its code path at tiny sizes on
the CPU and writes its section of the report (the run on a GPU uses the same functions)."""

import importlib
import importlib.util
import re
import sys

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PARTS = ("cuda tests", "coordinate check", "transfer", "bench_gpt", "zoo")


def test_dry_run_writes_every_section(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_proof", ROOT / "benchmarks" /
                                                  "gpu_proof.py")
    proof = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_proof", proof)  # its dataclasses look it up
    spec.loader.exec_module(proof)
    out = tmp_path / "proof.md"
    assert proof.main(["--dry", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    report = out.read_text()
    sections = dict(re.findall(r"^## (.+)\n\nstatus: (.+)$", report, re.M))
    assert list(sections) == list(PARTS)
    assert sections.pop("cuda tests") == ("skipped: no CUDA" if not torch.cuda.is_available()
                                          else "skipped: --dry runs on the CPU only")
    assert set(sections.values()) == {"ok"}, sections
    assert f"torch {torch.__version__}" in report
    # the coordinate check: 3 programs x fp32/bf16 x µP/SP, each with a verdict and a time
    rows = re.findall(r"^\| (mlp|gpt|llama), (fp32|bf16), (mup|sp) \| 32–64 \| (pass|FAIL) \|",
                      report, re.M)
    assert len(rows) == 12
    assert re.search(r"^\| 64 \| [-+][\d.]+.* \| [-+][\d.]+", report, re.M)  # optima per width
    assert "| emitted |" in report and "| hand-written |" in report and "tokens/s" in report
    assert "mup is " in report  # installed or not, the bench section says which
    # grouped-query attention: traced, or refused with the tracer's message and MHA checked
    assert ("grouped-query attention: traced" in report
            or "**refused by the tracer**" in report and "multi-head attention" in report)
    assert re.search(r"^\| traced Llama \| 32–64 \| (pass|FAIL) \|", report, re.M)


@pytest.mark.slow  # a process of its own (3 s); the dry run above covers every section
def test_a_part_in_its_own_process_hands_back_its_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the spawned process imports it
    proof = importlib.import_module("gpu_proof")
    run = proof.Run(dry=True, device="cpu", out=tmp_path / "r.md", budget=60)
    part = proof.Part("cuda tests", cap=60, deadline=proof.time.time() + 60)
    proof.in_child(run, part)
    assert part.status == ("skipped: no CUDA" if not torch.cuda.is_available()
                           else "skipped: --dry runs on the CPU only")
    # past its deadline, a part is stopped, and says so
    late = proof.Part("coordinate check", cap=0, deadline=proof.time.time() - 1)
    proof.in_child(run, late, grace=0.1)
    assert late.status.startswith("stopped at its cap")
