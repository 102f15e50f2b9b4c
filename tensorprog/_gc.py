"""A helper that imports nothing else from the package, so every stage may use it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one parse or engine run.

    Parsing and the engine's passes allocate many short-lived, acyclic objects (tokens, terms,
    sympy numbers). The collector's full passes rescan every live object, so on 10,000-instruction
    programs they made both superlinear; reference counting still frees everything here.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
