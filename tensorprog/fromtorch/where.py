"""Where a graph node comes from: the user's source line and module, for positioned errors."""

from __future__ import annotations

import linecache
import re

from ..errors import Span, TraceError


def user_span(node) -> Span | None:
    """The innermost frame of the node's stack outside torch: the user's line."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    for path, line in reversed(frames):
        if "/torch/" in path or path.startswith("<"):
            continue
        text = linecache.getline(path, int(line))
        if not text:
            continue
        lines = linecache.getlines(path)
        col = len(text) - len(text.lstrip()) + 1
        return Span(int(line), col, int(line), len(text.rstrip("\n")) + 1, "".join(lines), path)
    return None


def refuse(node, what: str, help: str | None = None) -> TraceError:
    module = module_of(node)
    where = f" (in {module})" if module else ""
    return TraceError(
        f"cannot trace {what}{where}",
        user_span(node),
        help
        or "the Tensor Program language has no such op; rewrite this part "
        "with supported ops (docs/torch.md lists them)",
    )


def module_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""
