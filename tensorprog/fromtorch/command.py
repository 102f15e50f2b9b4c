"""``tensorprog trace FILE.py:FUNCTION``: trace the user's ``build(width)`` into a .tp file.

The file is imported as a module; ``FUNCTION(width)`` returns the model. Its inputs come from a
function named by ``--inputs`` in the same file (default ``example_inputs``, if defined), else
images of shape [2, C, H, W] (``--image C,H,W``) or token ids of shape [2, --seq-len]. A missing
file or function, a build that raises and an op outside the language are positioned errors,
never tracebacks.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from ..errors import TensorProgError, UsageError
from .trace import from_torch
from .where import exception_span


def load(spec: str, inputs: str | None):
    """(build, example_inputs) from ``FILE.py:FUNCTION`` (``inputs``: a function of that file)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UsageError(
            f"{spec!r}: expected FILE.py:FUNCTION",
            help="e.g. tensorprog trace model.py:build --widths 128,256",
        )
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file", help="give the Python file defining the build")
    module = _import(path)
    build = _function(module, path, name, "the function building the model at a width")
    given = inputs or ("example_inputs" if hasattr(module, "example_inputs") else None)
    if given is None:
        return build, None
    return build, _function(module, path, given, "the function giving the model's inputs")


def _import(path: str):
    name = f"_tensorprog_trace_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file failed: say where
        sys.modules.pop(name, None)
        raise UsageError(
            f"importing {path} failed: {type(err).__name__}: {err}",
            exception_span(err, path),
            help="the file must import without error (run it with python to see)",
        ) from None
    return module


def _function(module, path: str, name: str, what: str):
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UsageError(
            f"{path} has no function {name!r} ({what})",
            help=f"functions defined there: {', '.join(found) or 'none'}",
        )
    return fn


def _guarded(fn, path: str, shown, help: str):
    """``fn`` (the user's build or example_inputs), with a failure reported at the user's line;
    ``shown(arg)``: the call as the message names it."""

    @functools.wraps(fn)  # errors about what it returns point at the user's function
    def call(arg):
        try:
            return fn(arg)
        except TensorProgError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's function failed: say where
            raise UsageError(
                f"{shown(arg)} failed: {type(err).__name__}: {err}",
                exception_span(err, path) or exception_span(err),
                help=help,
            ) from None

    return call


def trace_command(
    spec: str, widths: list[int], output: str | None, inputs: str | None, seq_len: int,
    image: tuple[int, int, int] | None = None,
) -> str:
    """The traced program's text (written to ``output`` when given); ``image`` (C, H, W): the
    default inputs are a batch of 2 such images rather than token ids."""
    import torch

    if len(widths) != 2:
        raise UsageError(
            f"--widths: give exactly two widths, got {len(widths)}",
            help="e.g. --widths 128,256 (the first is the base width)",
        )
    build, example_inputs = load(spec, inputs)
    path = spec.rpartition(":")[0]
    if example_inputs is None and image is not None:

        def example_inputs(model):
            return (torch.zeros(2, *image),)

    elif example_inputs is None:

        def example_inputs(model):
            return (torch.zeros(2, seq_len, dtype=torch.long),)

    else:
        given = inputs or "example_inputs"  # the name in the user's file (a lambda's too)
        example_inputs = _guarded(
            example_inputs, path, lambda model: f"{given}(model)",
            "it must return the forward's inputs for the model built at any width",
        )
    name = spec.rpartition(":")[2]
    build = _guarded(build, path, lambda width: f"{name}({width})",
                     "build(width) must return the model at any width the trace asks for")
    traced = from_torch(build, tuple(sorted(widths)), example_inputs)
    if output is not None:
        try:
            Path(output).write_text(traced.source)
        except OSError as err:
            raise UsageError(f"-o {output}: cannot write it: {err.strerror}") from None
    return traced.source
