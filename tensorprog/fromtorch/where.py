"""Where a graph node comes from: the user's source line and module, for positioned errors; and
which op it calls."""

from __future__ import annotations

import inspect
import linecache
import os
import re
import sys
import traceback

from ..errors import Span, TraceError


def user_span(node) -> Span | None:
    """The innermost frame of the node's stack outside torch: the user's line (a higher-order
    op's, which export records without one, torch.no_grad's: its region's first line)."""
    trace = node.meta.get("stack_trace") or _region_trace(node)
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    return line_span([(path, int(line)) for path, line in frames])


def _region_trace(node) -> str:
    """The stack of the first node with one in the subgraph a higher-order op node calls."""
    owner = getattr(getattr(node, "graph", None), "owning_module", None)
    for arg in getattr(node, "args", ()):
        sub = getattr(owner, getattr(arg, "target", ""), None) \
            if getattr(arg, "op", "") == "get_attr" else None
        for inner in getattr(getattr(sub, "graph", None), "nodes", ()):
            if inner.meta.get("stack_trace"):
                return inner.meta["stack_trace"]
    return ""


def exception_span(err: BaseException, path: str | None = None) -> Span | None:
    """The innermost line of ``err``'s traceback outside torch (in ``path`` when given)."""
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(err.__traceback__)]
    if path is not None:
        frames = [f for f in frames if os.path.realpath(f[0]) == os.path.realpath(path)]
    return line_span(frames)


# this package's own files: a frame there (the wrapper that calls the user's forward, the
# guard around build) is never the line the user must change
_PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep


# packages whose frames only pass a call on: HF's kernel hub wraps a model's function (Mamba's
# mixer, a linear attention) in a module whose forward calls it, so the line in its file says
# nothing about the model
_DISPATCHERS = ("torch", "kernels")


def _library_dirs() -> tuple[str, ...]:
    """The directories of torch's, the dispatchers' and tensorprog's own files: by where each is
    installed, not by "/torch/" in a path, which a user's project (~/work/torch/model.py) may
    have too."""
    found = []
    for name in _DISPATCHERS:
        where = getattr(sys.modules.get(name), "__file__", None)
        if where:
            found.append(os.path.dirname(os.path.realpath(where)) + os.sep)
    return (*found, _PACKAGE)


def line_span(frames: list[tuple[str, int]]) -> Span | None:
    """A span over the whole line of the innermost (file, line) outside torch and tensorprog."""
    libraries = _library_dirs()
    for path, line in reversed(frames):
        if path.startswith("<") or os.path.realpath(path).startswith(libraries):
            continue
        text = linecache.getline(path, line)
        if not text:
            continue
        lines = linecache.getlines(path)
        col = len(text) - len(text.lstrip()) + 1
        return Span(line, col, line, len(text.rstrip("\n")) + 1, "".join(lines), path)
    return None


def def_span(fn) -> Span | None:
    """The line defining the user's function ``fn`` (through wrappers that set ``__wrapped__``),
    for an error about what it returned, which has no traceback to point with."""
    try:
        fn = inspect.unwrap(fn)
        path = inspect.getsourcefile(fn)
        line = inspect.getsourcelines(fn)[1]
    except (TypeError, OSError):  # a builtin, a lambda typed at the prompt, a callable object
        return None
    return line_span([(path, line)]) if path else None


def refuse(node, what: str, help: str | None = None, span: Span | None = None) -> TraceError:
    module = module_of(node)
    where = f" (in {module})" if module else " (in the model)"
    return TraceError(
        f"cannot trace {what}{where}",
        span or user_span(node),
        help
        or "the Tensor Program language has no such op; rewrite this part "
        "with supported ops (docs/torch.md lists them)",
    )


# export's runtime checks (of a tensor's metadata, of a symbolic size): ops that compute no value
# of the model, skipped wherever they read a traced value
CHECK_OPS = frozenset({"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"})


def casts_to_integers(node) -> bool:
    """A cast (to, _to_copy, type_as, long) of a value that holds fractions to a type that holds
    none: it rounds what the traced form computes, so no identity; also any ``to`` naming a
    type other than a real floating one. The dtypes are export's: the argument's and the
    result's."""
    import torch

    def whole(val) -> bool:
        dtype = getattr(val, "dtype", None)
        return dtype is not None and not (dtype.is_floating_point or dtype.is_complex)

    arg = node.args[0] if node.args else None
    src = arg.meta.get("val") if hasattr(arg, "meta") else None
    named = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.dtype)]
    if op_name(node) == "to" and any(not d.is_floating_point for d in named):  # (a complex
        return True  # type too, as before: no rule reads complex values made by a cast)
    return src is not None and whole(node.meta.get("val")) and not whole(src)


def refuse_empty_part(node, target: str) -> TraceError:
    """A part of size 0 of a layer's output (a split whose config gives a part no features), read
    by the model: the program has no vector of no coordinates to give it."""
    return refuse(node, f"a part of size 0 of the rows of {strip_prefix(target)} (a split's "
                  "empty part), read by the model",
                  help="give every part of the split a size in the config, or leave the empty "
                  "part unread")


def refuse_keywords(node, op: str, method, kwargs: dict) -> None:
    """A positioned refusal where the op is called with a keyword its rule does not take
    (torch's ``repeat_interleave(..., output_size=k)`` before the rule read it): the rule
    would fail with a TypeError of the tracer's own, not say what it cannot read."""
    if not kwargs:
        return
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read: the rule says for itself
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise refuse(node, f"the op {op} with the argument{'s' * (len(unknown) > 1)} "
                     f"{', '.join(unknown)}", help=f"call {op} without {', '.join(unknown)}")


def op_name(node) -> str:
    """The name of the op a graph node calls: its aten op's (``mm`` for ``aten.mm.default``), a
    Python function's (``getitem``), or else the target itself (a placeholder's name)."""
    op = getattr(node.target, "_overloadpacket", None)
    return op.__name__ if op is not None else getattr(node.target, "__name__", str(node.target))


def repeat_sizes(sizes) -> tuple:
    """The sizes of ``x.repeat(*sizes)``, given as aten writes them (``repeat(x, [...])``, one
    list) or one by one."""
    return tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)) \
        else tuple(sizes)


def module_of(node) -> str:
    """The user's name of the module that ran the node ("" for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    return strip_prefix(list(stack.values())[-1][0]) if stack else ""


def strip_prefix(target: str) -> str:
    """The user's name of a param or module: export names them under the wrapper's ``m``."""
    return "" if target == "m" else target.removeprefix("m.")


def reaching_the_output(graph) -> set[str]:
    """The names of the nodes whose values the graph's output reads, directly or not; an
    in-place op and a check (an assert) are read as if by the output: they act by running."""
    live: set[str] = set()
    todo = [n for n in graph.nodes if n.op == "output" or n.op == "call_function" and (
        op_name(n).endswith("_") or op_name(n) in CHECK_OPS)]
    while todo:
        node = todo.pop()
        if node.name not in live:
            live.add(node.name)
            todo.extend(node.all_input_nodes)
    return live


def aliased(node):
    """The node whose tensor ``node``'s shares its memory with (a view's, a slice's, an in-place
    op's target, one of a split's parts: its schema returns an alias of its first argument), or
    None where it computes a new tensor. A write through the alias changes that tensor too."""
    import operator

    if node.op == "call_function" and node.target is operator.getitem:
        parent = node.args[0]
        return aliased(parent) and parent
    schema = getattr(node.target, "_schema", None)
    if node.op != "call_function" or schema is None or not schema.returns or \
            schema.returns[0].alias_info is None or not node.args:
        return None
    return node.args[0] if hasattr(node.args[0], "users") else None


def written_in_place(node) -> bool:
    """Whether an in-place op (``m[2:] = False``, ``m.fill_(0)``) writes ``node``'s tensor, itself
    or through a view of it."""
    todo, seen = [node], set()
    while todo:
        one = todo.pop()
        for user in one.users:
            if user in seen or not user.args or user.args[0] is not one:
                continue
            seen.add(user)
            schema = getattr(user.target, "_schema", None)
            if schema is not None and schema.is_mutable:
                return True
            if aliased(user) is one:
                todo.append(user)
    return False
