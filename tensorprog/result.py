"""The protocol every result object follows: ``as_dict()`` for JSON, ``str()`` for people.

A derivation, a classification, a coordinate check, a transfer sweep, a limit and the report of
applying µP to a model each render both ways, so the command line prints ``str(result)`` or
``json.dumps(result.as_dict())`` and nothing else needs to know how a result is laid out. Exponents
appear in ``as_dict()`` as strings sympy parses ("1/2", "-1", "oo"). Imports nothing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Result(Protocol):
    def as_dict(self) -> dict:
        """The result as plain JSON-serialisable data."""
        ...

    def __str__(self) -> str:
        """The result as text for people (what the command line prints)."""
        ...
