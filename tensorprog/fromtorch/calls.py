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

from .walk import IDENTITY_OPS, VIEW_OPS
from .where import op_name, refuse, strip_prefix


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
        returned = [n for n in nodes if any(u not in inside for u in _readers(n))]
        if len(returned) != 1 or obj[key] is None or calls[obj[key]] != 1:
            continue
        (node,) = returned
        # nested calls may return the same node: the innermost names it, as ``module_of``
        level = list(node.meta["nn_module_stack"]).index(key)
        if node.name not in out or out[node.name][0] < level:
            out[node.name] = (level, module[key])
    return {node: name for node, (_, name) in out.items()}


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
        if node is last:
            found = [sole[n.name] for n in chain if n.name in sole]
            if found:
                out[scale] = found[0]
    return out


def bias_after(graph, params: dict[str, str], sole: dict[str, str], scales: dict) -> None:
    """Each tied unembedding computed inside a module that returns more than it: where that is
    the product plus a param, read by nothing else (MobileBERT's ``h.matmul(E.t()) +=
    decoder.bias``, the module's own ``bias``), the param is recorded as the readout's bias
    added after it (``bias``, ``bias_after``), which apply's patch on the module's output keeps
    out of its factor as it keeps an nn.Linear's; ops linear in the product (a cast, a view, a
    product with a number) pass the factor on; anything else is refused, at the product's line:
    the patch's factor on the module's output would be none on the product. ``params``:
    placeholder -> param target; ``sole``: :func:`sole_outputs` (a module called more than
    once, or the model itself, is not there: left as it is)."""
    nodes = {n.name: n for n in graph.nodes}
    returned = {module: node for node, module in sole.items()}
    for info in scales.values():
        if "tied" not in info or info.get("bias") or info["node"] not in nodes:
            continue
        node = nodes[info["node"]]
        last = nodes.get(returned.get(info["module"], node.name), node)
        at, bias = _carried(node, last), None
        reader = _readers(at)
        if at is not last and len(reader) == 1 and op_name(reader[0]) in ("add", "add_") \
                and len(reader[0].args) == 2 and not reader[0].kwargs:
            (b,) = [a for a in reader[0].args if a is not at] or [None]
            bias = params.get(getattr(b, "name", None))
            at = _carried(reader[0], last) if bias else at
        if at is last:
            if bias:
                info.update(bias=bias, bias_after=True)
            continue
        raise refuse(node, f"a tied unembedding (its matrix also the lookup) inside "
                     f"{info['module']}, which returns {op_name(last)} of it: apply multiplies "
                     "the module's output by the readout's multiplier, which is no factor on "
                     "the product there", help="compute the readout in a module that returns "
                     "it alone (an nn.Linear whose weight is the embedding, its bias its own), "
                     "or what follows it outside that module")


def _carried(node, last):
    """The last node of the chain from ``node`` towards ``last`` of ops linear in it (casts,
    copies, views, a product with a number, a negation), each read by the next alone: a factor
    on ``last`` is one on ``node``."""
    while node is not last and len(_readers(node)) == 1 and _linear(_readers(node)[0], node):
        (node,) = _readers(node)
    return node


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
