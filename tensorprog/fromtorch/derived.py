"""derive for a traced model: its refusals placed at the user's line of the layer they name, and
given with the trace's notes, which name a cause (a width dim fixed by the config) where the
engine sees only its effect."""

from __future__ import annotations

from ..engine.derive import derive
from ..errors import Diagnostic, EngineError
from .trace import Traced


def derive_traced(traced: Traced, program, optimizer, convention: str):
    """derive, whose refusal of a traced program also gives the trace's notes (a width dim
    fixed by the config): they name the cause where the engine sees only its effect, a vector
    that vanishes at init."""
    notes = [Diagnostic(f"the trace noted: {note}", severity="note") for note in traced.notes]
    try:
        d = derive(program, optimizer, convention)
    except EngineError as err:
        found = [_at_layer(traced, program, d) for d in err.diagnostics]
        if not notes and found == err.diagnostics:
            raise
        raise EngineError(found + notes) from None
    return d


def _at_layer(traced: Traced, program, d: Diagnostic) -> Diagnostic:
    """A refusal at a matmul of the traced program (derive's bottleneck) placed at the user's
    line of the layer it applies, the program's line kept in the message."""
    ins = next((i for i in program.body if d.span is not None and i.span == d.span), None)
    use = traced.params.get(getattr(ins, "weight", None))
    if use is None or use.span is None:
        return d
    where = f" (traced.tp:{d.span.line}: {d.span.source_line().strip()})"
    return Diagnostic(d.message + where, use.span, d.help, d.severity)
