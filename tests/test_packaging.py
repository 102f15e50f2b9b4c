"""A normal (non-editable) install must find the grammar: it ships inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_contains_the_grammar(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        ".ruff_cache", "tests", "benchmarks", "docs"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("tensorprog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tensorprog/lang/grammar.lark" in names
    assert "tensorprog/lang/parse.py" in names
    assert "tensorprog/cli/main.py" in names
    assert "tensorprog/fromtorch/trace.py" in names
