"""The modules of an exported graph whose forward returns one vector alone: where a forward
hook on the user's model (a ``Patch``, apply.py) multiplies exactly that vector and nothing
else, as a width constant on a lookup of a shared table needs.

A hook multiplies every output of every call of its module. It scales exactly one vector of the
program when the module is called once in the forward and that call returns one node (no other
node of the call is read outside it): an encoder-decoder's decoder lookup
(``PLBartScaledWordEmbedding``: its table's lookup times sqrt(d_model), returned), not a table
looked up inline in its parent's forward, nor a lookup module that the encoder and the decoder
both call.
"""

from __future__ import annotations

from collections import Counter

from ..errors import TraceError
from .ops_batchmask import id_outside_table
from .walk import IDENTITY_OPS, VIEW_OPS
from .where import op_name, refuse, strip_prefix, user_span


def sole_outputs(graph, model) -> dict[str, str]:
    """Graph node -> the user's name of the module (of ``model``, the one exported) whose one
    call in the forward returns that node alone (the innermost, where nested calls return it)."""
    members: dict[str, list] = {}  # a call (nn_module_stack's key) -> its nodes, in order
    module: dict[str, str] = {}  # a call -> its module's name
    for node in graph.nodes:
        for key, (name, _) in (node.meta.get("nn_module_stack") or {}).items():
            members.setdefault(key, []).append(node)
            module[key] = strip_prefix(name)
    # a module called twice has one key per call: under one name (``shared`` and
    # ``shared@1``), or under each name it is reached by (one module set as both the encoder's
    # and the decoder's embed_tokens), so calls are counted per module object
    obj = {key: _object(model, name) for key, name in module.items()}
    calls = Counter(obj.values())
    out: dict[str, tuple[int, str]] = {}  # node -> (the call's level in its stack, module)
    for key, nodes in members.items():
        inside = set(nodes)
        returned = [n for n in nodes if any(u not in inside for u in _readers(n))
                    and not _param_cast(n)]
        if len(returned) != 1 or obj[key] is None or calls[obj[key]] != 1:
            continue
        (node,) = returned
        # nested calls may return the same node: the innermost names it, as ``module_of``
        level = list(node.meta["nn_module_stack"]).index(key)
        if node.name not in out or out[node.name][0] < level:
            out[node.name] = (level, module[key])
    return {node: name for node, (_, name) in out.items()}


def _param_cast(node) -> bool:
    """Whether ``node`` is a cast of a param or buffer (a placeholder export names ``p_``,
    ``b_`` or ``c_``): read outside its call, it is export sharing one cast of a tied param
    between calls (T5Gemma 2's ``eoi_embedding.to(dtype)``, read by the encoder's lookup and
    the decoder's), not a value the call returns."""
    arg = node.args[0] if node.args else None
    return op_name(node) in ("to", "_to_copy") and getattr(arg, "op", None) == "placeholder" \
        and arg.name.startswith(("p_", "b_", "c_"))


def shared_outputs(graph, model) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Graph node -> (the user's name of the module, the nodes its calls return) where that
    module (one object) is called more than once and each of its calls returns one node alone
    (a parameter-free norm that q and k share): a hook on it multiplies each of those nodes."""
    members: dict[str, list] = {}
    module: dict[str, str] = {}
    for node in graph.nodes:
        for key, (name, _) in (node.meta.get("nn_module_stack") or {}).items():
            members.setdefault(key, []).append(node)
            module[key] = strip_prefix(name)
    obj = {key: _object(model, name) for key, name in module.items()}
    returned: dict[int, list] = {}
    for key, nodes in members.items():
        inside = set(nodes)
        out = [n for n in nodes if any(u not in inside for u in _readers(n))]
        if obj[key] is not None:
            returned.setdefault(obj[key], []).append((module[key], out, inside))
    found: dict[str, tuple[str, tuple]] = {}
    for calls in returned.values():
        if len(calls) < 2 or any(len(out) != 1 for _, out, _ in calls) \
                or len({name for name, _, _ in calls}) != 1:
            continue
        chains = tuple(_cast_chain(out[0], inside) for _, out, inside in calls)
        found.update({n: (calls[0][0], chains) for chain in chains for n in chain})
    return found


def _cast_chain(node, inside: set) -> tuple[str, ...]:
    """``node`` and the nodes of its call that it is a cast or view of, each read by the next
    alone (Llama 4's norm: ``x * rsqrt(...)``, then ``.type_as(x)``): a factor on the returned
    node is a factor on each of them."""
    chain = [node.name]
    while op_name(node) in IDENTITY_OPS | VIEW_OPS | {"type_as"} and node.args \
            and node.args[0] in inside and len(_readers(node.args[0])) == 1:
        node = node.args[0]
        chain.append(node.name)
    return tuple(chain)


def constant_modules(graph, sole: dict[str, str], scales: dict, vectors: dict) -> dict[str, str]:
    """Width constant (a fixed scale of the trace) -> the module whose one call returns alone a
    node of the straight chain from the vector the constant multiplies to the product (the
    lookup, the lookup times the constant, its cast), each node of it read by the next only: a
    patch on that module's output scales the product and nothing else. ``sole``: the graph's
    nodes returned alone by a module (:func:`sole_outputs`)."""
    nodes = {n.name: n for n in graph.nodes}
    out: dict[str, str] = {}
    for scale, info in scales.items():
        if not info.get("fixed") or info["q"] not in vectors or info["out"] not in vectors:
            continue
        node, last = nodes[vectors[info["q"]][0]], nodes[vectors[info["out"]][0]]
        chain = [node]
        while node is not last and len(_readers(node)) == 1:
            (node,) = _readers(node)
            chain.append(node)
        # an assignment that keeps no token leaves the product as it is (T5Gemma 2's
        # end-of-image row, at an id outside the table): a module returning it returns the
        # product, for every input
        while node is last and len(_readers(node)) == 1 and op_name(
                _readers(node)[0]) in ("index_put", "index_put_") and id_outside_table(
                _readers(node)[0]) and _readers(node)[0].args[0] is node:
            node = last = _readers(node)[0]
            chain.append(node)
        if node is last:
            found = [sole[n.name] for n in chain if n.name in sole]
            if found:
                out[scale] = found[0]
    return out


def bias_after(graph, params: dict[str, str], sole: dict[str, str], scales: dict,
               model=None) -> None:
    """Each tied unembedding, where apply's patch multiplies the output of the module that
    computes it (the model's own output where its forward computes it): that output must be
    the product times the factor and nothing else. Ops linear in the product (a cast, a view,
    a product with a number) pass the factor on; a param added after them, read by nothing
    else (MobileBERT's ``h.matmul(E.t()) += decoder.bias``, the module's own ``bias``), is
    recorded as the readout's bias added after it (``bias``, ``bias_after``), which the patch
    keeps out of its factor as it keeps an nn.Linear's: only a copy or a cast may follow it
    (the patch computes c·out + (1 − c)·b: a number on p + b would scale b by (1 + c)), as
    only a copy or a cast may follow a product with its own bias. Anything else is refused, at
    the product's line: another function of it, a module called more than once (a hook scales
    each call's output by every patch on it), one returning more than one value.
    ``params``: placeholder -> param target; ``sole``: :func:`sole_outputs`; ``model``: the
    model exported (its modules' calls counted)."""
    nodes = {n.name: n for n in graph.nodes}
    returned = {module: nodes[node] for node, module in sole.items() if node in nodes}
    for info in scales.values():
        if "tied" not in info or info["node"] not in nodes:
            continue
        node, module = nodes[info["node"]], info["module"]
        info["span"] = user_span(node)  # where apply's hook refuses a tuple returned
        last = _returned(graph, node, module, returned, model)
        if info.get("bias"):  # the product's own bias (F.linear's third argument), in it
            at = _carried(node, last, IDENTITY_OPS)
            bias = None
        else:
            at, bias = _carried(node, last), None
            reader = _readers(at)
            if at is not last and len(reader) == 1 and op_name(reader[0]) in ("add", "add_") \
                    and len(reader[0].args) == 2 and not reader[0].kwargs:
                (b,) = [a for a in reader[0].args if a is not at] or [None]
                bias = params.get(getattr(b, "name", None))
                at = _carried(reader[0], last, _keeps_bias) if bias else at
        if at is last:
            if bias:
                info.update(bias=bias, bias_after=True)
            continue
        what = "a bias added to it" if bias or info.get("bias") else "it"
        raise refuse(node, f"a tied unembedding (its matrix also the lookup) inside "
                     f"{_named(module)}, which returns {op_name(last)} of {what}: apply "
                     "multiplies that output by the readout's multiplier, which is no factor "
                     "on the product there (nor keeps its bias out)",
                     help="compute the readout in a module that returns it alone (an "
                     "nn.Linear whose weight is the embedding, its bias its own), or what "
                     "follows it outside that module")


def refuse_tuples(model, args, kwargs, scales: dict) -> None:
    """Each module that computes a tied unembedding (:func:`bias_after`) must return one tensor
    (apply's hook multiplies its output): one returning a tuple (the product twice, or beside
    another value; a model's ModelOutput) is refused at the product's line. Its call's output
    is seen by a run of ``model`` (on the meta device, as exported) on ``args``, ``kwargs``; a
    forward that does not run so is left to the hook's own refusal (patches.hook)."""
    import torch

    tied = {info["module"]: info for info in scales.values() if "tied" in info}
    if not tied:
        return
    seen: dict[str, str] = {}

    def record(name):
        def hook(module, args, out):  # returns None: the output stays as it is
            seen.setdefault(name, "" if isinstance(out, torch.Tensor) else type(out).__name__)

        return hook

    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in tied]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:  # noqa: BLE001 (export ran it; an eager run is only a check)
        return
    finally:
        for h in handles:
            h.remove()
    for name, kind in seen.items():
        if kind:
            raise TraceError(
                f"cannot trace a tied unembedding (its matrix also the lookup) inside "
                f"{_named(name)}, which returns a {kind}: apply multiplies the output of that "
                "module by the readout's multiplier, which must be the product alone",
                tied[name].get("span"),
                "return the readout alone from its module (an nn.Linear whose weight is the "
                "embedding), and the rest from its parent")


def _named(module: str) -> str:
    return module or "the model's own forward"


def _returned(graph, node, module: str, returned: dict, model):
    """The node that the one call of ``module`` returns alone (the model's own output where
    ``module`` is the model); refused, at ``node``'s line, where a patch on its output cannot
    scale that product alone: a module called more than once, or returning several values."""
    if module in returned:
        return returned[module]
    if not module:
        (out,) = [n for n in graph.nodes if n.op == "output"]
        values = [a for a in _flat(out.args) if hasattr(a, "op")]
        if len(values) == 1:
            return values[0]
        why = f"returns {len(values)} values"
    else:
        calls = _calls(graph, model, module)
        why = f"is called {calls} times in the forward" if calls > 1 else \
            "returns more than one value"
    raise refuse(node, f"a tied unembedding (its matrix also the lookup) inside "
                 f"{_named(module)}, which {why}: apply multiplies every output of every call "
                 "of it by the readout's multiplier, which would scale more than this product",
                 help="compute the readout in a module called once that returns it alone (an "
                 "nn.Linear whose weight is the embedding), one such module per readout")


def _flat(args) -> list:
    out = []
    for a in args:
        if isinstance(a, list | tuple):
            out += _flat(a)
        elif isinstance(a, dict):
            out += _flat(list(a.values()))
        else:
            out.append(a)
    return out


def _calls(graph, model, module: str) -> int:
    """How many calls of the model's submodule ``module`` the graph holds (under any name)."""
    want = _object(model, module)
    return len({key for n in graph.nodes
                for key, (name, _) in (n.meta.get("nn_module_stack") or {}).items()
                if _object(model, strip_prefix(name)) == want})


def _carried(node, last, only=None):
    """The last node of the chain from ``node`` towards ``last`` of ops linear in it (casts,
    copies, views, a product with a number, a negation; or the ops ``only``, names or a test of
    an op and its argument), each read by the next alone: a factor on ``last`` is one on
    ``node``."""
    def passes(op, x) -> bool:
        if only is None:
            return _linear(op, x)
        return only(op, x) if callable(only) else op_name(op) in only

    while node is not last and len(_readers(node)) == 1 and passes(_readers(node)[0], node):
        (node,) = _readers(node)
    return node


def _keeps_bias(op, x) -> bool:
    """Whether ``op`` keeps a bias added to ``x`` over its last axis where the patch's
    c·out + (1 − c)·b puts it: a copy, a cast, or a reshape that keeps the last axis (its size
    the same, every entry keeps its index on it: Perceiver's [B·T, V] read back as [B, T, V])."""
    name = op_name(op)
    if name in IDENTITY_OPS:
        return True
    old, new = (getattr(n.meta.get("val"), "shape", None) for n in (x, op))
    return name in ("view", "reshape", "_unsafe_view") and op.args[0] is x \
        and old is not None and new is not None and len(old) and len(new) \
        and old[-1] == new[-1]


def _linear(op, x) -> bool:
    """Whether graph node ``op`` is linear in its argument ``x`` alone."""
    name = op_name(op)
    if name in IDENTITY_OPS | VIEW_OPS or name == "neg":
        return True
    numbers = [a for a in op.args if a is not x]
    return name in ("mul", "div") and op.args[0] is x and len(numbers) == 1 \
        and isinstance(numbers[0], int | float) and not isinstance(numbers[0], bool)


def _readers(node) -> list:
    """The nodes that read ``node``'s value on: not a check of its metadata that export adds
    (``_assert_tensor_metadata``, read by nothing: HF Gemma's scaled lookup has one)."""
    return [u for u in node.users if u.users or u.op == "output"]


def _object(model, name: str) -> int | None:
    """The id of the model's submodule ``name``; None for the model itself (a hook on it would
    scale the forward's output) or a name it does not have."""
    if not name:
        return None
    try:
        return id(model.get_submodule(name))
    except AttributeError:
        return None
