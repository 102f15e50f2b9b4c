"""The names of attention's heads axes: ``q/dh`` for the heads of a ``dot(q, k, dh)`` of q, k of
dim ``q`` (a dim of the program's table, :meth:`tensorprog.ir.program.Program.dim_table`)."""

from __future__ import annotations


def heads_dim_name(dim: str, over: str) -> str:
    """The name of the heads axis of ``dot(q, k, over)`` for q, k of dim ``dim``."""
    return f"{dim}/{over}"


def split_heads_dim(name: str) -> tuple[str, str]:
    """(dim, over) of a heads axis named by :func:`heads_dim_name`."""
    dim, _, over = name.partition("/")
    return dim, over
