"""The traced program read back before from_torch returns it: a statement the language refuses
(a combination the trace's recognisers did not foresee: tokens of one sequence added to those
of another) is refused at the model's line that made it, as any op the trace cannot say is,
never left to raise from the program's first reader."""

from __future__ import annotations

from ..errors import TensorProgError, TraceError
from .where import refuse


def read_back(source: str, vectors: dict, nodes: dict) -> None:
    """Parse ``source``; where the language refuses it, a TraceError at the graph node
    (``nodes``, by name) of the statement at fault, found by the vector it defines
    (``vectors``: vector -> (node, kind)); unpositioned (then at the user's build) where
    the statement defines none."""
    from ..lang.parse import parse

    try:
        parse(source, "traced.tp")
    except TensorProgError as err:
        d = err.diagnostics[0]
        lines = source.splitlines()
        line = lines[d.span.line - 1] if d.span and 0 < d.span.line <= len(lines) else ""
        name = line.split("=")[0].split(":")[0].strip() if "=" in line else ""
        node = nodes.get(vectors.get(name, (name,))[0])
        what = (f"{line.strip()!r}: the traced program does not read back ({d.message}); "
                "this form is not one the trace recognises")
        help = ("rewrite this part with ops docs/torch.md lists, or write the model as a "
                "Tensor Program")
        if node is None:
            raise TraceError(f"cannot trace {what}", None, help=help) from None
        raise refuse(node, what, help=help) from None
