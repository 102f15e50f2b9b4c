"""Golden files: every example's derived table (adam, sgd and muon) and its IR text form.

Refresh after an intended change with ``UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and read the
diff in review.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REFUSED

import tensorprog as tp
from tensorprog.engine.derivation import derive_table
from tensorprog.errors import EngineError

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path.name}: run UPDATE_GOLDEN=1 pytest"
    assert text == path.read_text(), f"{path.name} changed; UPDATE_GOLDEN=1 refreshes it"


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "muon"])
def test_derived_table(example, optimizer):
    try:
        text = derive_table(tp.derive(tp.parse_file(example), optimizer))
    except EngineError as err:  # a refusal is golden too, where one is meant (conftest.REFUSED)
        if (example.stem, optimizer) not in REFUSED:
            raise
        text = "".join(f"refused: {d.message}\n" for d in err.diagnostics)
    _check(f"{example.stem}.{optimizer}.txt", text)


def test_ir_text(example):
    _check(f"{example.stem}.ir.tp", tp.to_text(tp.parse_file(example)))


def test_examples_say_what_they_show(example):
    first = example.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


def test_docs_table_covers_every_instruction():
    from tensorprog.ir.program import INSTRUCTIONS

    text = (Path(__file__).parent.parent / "docs" / "language.md").read_text()
    for cls in INSTRUCTIONS:
        assert f"| `{cls.__name__}`" in text, cls.__name__
