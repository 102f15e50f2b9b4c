"""Reading exponents the user writes: the per-param a, b, c of an ``--abc`` JSON file (with a
param's depth exponents under ``"depth"``), and one exact exponent such as ``--c``'s.

Exponents are exact (``"1/2"``, ``"-1"``, ``"oo"``), never floats: a float exponent would make
the engine's comparisons of exponents inexact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..engine.exponents import ABC, canon
from ..errors import UsageError

DEPTH_EXAMPLE = ('e.g. "res.W2": {"a": "0", "b": "0", "c": "0", "depth": {"a": "1", "b": "0", '
                 '"c": "0"}}: W = n^-a L^-a_L w, w ~ N(0, (n^-b L^-b_L)^2), LR n^-c L^-c_L')


def read_abc(path: str) -> tuple[dict[str, ABC], dict[str, ABC]]:
    """The width exponents of each param in the file, and the depth exponents of those that give
    a ``"depth"`` object."""
    example = 'e.g. {"W2": {"a": "0", "b": "1/2", "c": "1"}} ("oo" for b: zero init)'
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise UsageError(f"--abc {path}: cannot read it: {err.strerror}",
                         help="check the path of the exponents file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"--abc {path}: not UTF-8 text (byte {err.start})",
                         help="save the file as UTF-8 JSON") from None

    def pairs(items: list[tuple]) -> dict:
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise UsageError(f"--abc {path}: {', '.join(map(repr, twice))} given twice",
                             help="give each param, and each of its a, b, c, once")
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}",
                         help=example) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected an object mapping param names to {{a, b, c}}, "
                         f"not a JSON {type(data).__name__}", help=example)
    out, depth = {}, {}
    for name, entry in data.items():
        why = _keys_problem(entry, optional={"depth"})
        if why:
            raise UsageError(f"{path}: param {name!r} needs exactly the keys a, b, c ({why})",
                             help='e.g. "W2": {"a": "0", "b": "1/2", "c": "1"}; a program that '
                                  'repeats a block over its depth also takes "depth": '
                                  '{"a": ..., "b": ..., "c": ...}')
        out[name] = _abc(entry, f"{path}: param {name!r}", example)
        if "depth" in entry:
            where = f"{path}: param {name!r}, key 'depth'"
            why = _keys_problem(entry["depth"])
            if why:
                raise UsageError(f"{where} needs exactly the keys a, b, c ({why})",
                                 help=DEPTH_EXAMPLE)
            depth[name] = _abc(entry["depth"], where, DEPTH_EXAMPLE)
    return out, depth


def _keys_problem(entry, optional: set[str] = frozenset()) -> str | None:
    """Why a JSON value is not an object with the keys a, b, c (and some of ``optional``)."""
    if not isinstance(entry, dict):
        return f"got a JSON {type(entry).__name__}"
    missing = sorted({"a", "b", "c"} - set(entry))
    extra = sorted(set(entry) - {"a", "b", "c"} - optional)
    if not missing and not extra:
        return None
    return "; ".join([f"missing {', '.join(missing)}"] * bool(missing)
                     + [f"unknown {', '.join(map(repr, extra))}"] * bool(extra))


def _abc(entry: dict, where: str, example: str) -> ABC:
    exps = [exponent(entry[k], f"{where}, key {k!r}") for k in "abc"]
    try:
        return ABC(*exps)
    except ValueError as err:
        raise UsageError(f"{where}: {err}", help=example) from None


def exponent(value, where: str):
    """An exact exponent from a JSON value: a string ("1/2", "-1", "oo") or an integer."""
    help = 'an exact rational as a string, e.g. "1/2", "-1", "0", or "oo" (b: zero init)'
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise UsageError(f"{where}: not an exponent: {json.dumps(value)}", help=help)
    try:
        return canon(str(value))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{where}: not an exact exponent: {json.dumps(value)}",
                         help=help) from None
