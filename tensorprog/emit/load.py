"""Executing emitted source as a module, in process: nothing is written to disk.

The source is registered with ``linecache`` under the module's file name (as torch.fx does for
the code it generates), so a traceback through the emitted code, a shape error in ``forward``
say, shows the emitted lines as it would for a file on disk.
"""

from __future__ import annotations

import linecache
import types

from .module import Emitted
from .names import module_name


def load_module(emitted: Emitted, name: str) -> types.ModuleType:
    """Execute emitted source as a fresh module under a name that is a plain identifier whatever
    the program file was called, its lines registered for tracebacks."""
    name = module_name(name)
    filename = _register(f"<tensorprog {name}>", emitted.source)
    module = types.ModuleType(name)
    exec(compile(emitted.source, filename, "exec"), module.__dict__)  # noqa: S102
    return module


def _register(filename: str, source: str) -> str:
    """``filename``, or the first free ``filename #k`` when another source holds it, with
    ``source``'s lines in linecache. No mtime: ``linecache.checkcache`` keeps such entries."""
    lines = source.splitlines(keepends=True)
    candidate, k = filename, 1
    while (held := linecache.cache.get(candidate)) is not None and held[2] != lines:
        k += 1
        candidate = f"{filename[:-1]} #{k}>"
    linecache.cache[candidate] = (len(source), None, lines, candidate)
    return candidate
