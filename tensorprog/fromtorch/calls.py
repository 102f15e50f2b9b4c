"""The modules of an exported graph whose forward returns one vector alone: where a forward
hook on the user's model (a ``Patch``, apply.py) multiplies exactly that vector and nothing
else.

A hook multiplies every output of every call of its module. It scales exactly one vector of the
program when the module is called once in the forward and that call returns one node (no other
node of the call is read outside it): an encoder-decoder's decoder lookup
(``PLBartScaledWordEmbedding``: its table's lookup times sqrt(d_model), returned), not a table
looked up inline in its parent's forward, nor a lookup module that the encoder and the decoder
both call.
"""

from __future__ import annotations

from .where import strip_prefix


def sole_outputs(graph) -> dict[str, str]:
    """Graph node -> the user's name of the module whose one call in the forward returns that
    node alone (the innermost, where several nested calls return it)."""
    members: dict[str, list] = {}  # a call (nn_module_stack's key) -> its nodes, in order
    module: dict[str, str] = {}  # a call -> its module's name
    for node in graph.nodes:
        for key, (name, _) in (node.meta.get("nn_module_stack") or {}).items():
            members.setdefault(key, []).append(node)
            module[key] = strip_prefix(name)
    # a module called twice (one lookup module for the encoder's and the decoder's ids) has
    # one key per call (``...@1``): its hook would fire on both
    calls: dict[str, int] = {}
    for name in module.values():
        calls[name] = calls.get(name, 0) + 1
    out: dict[str, tuple[int, str]] = {}  # node -> (the call's level in its stack, module)
    for key, nodes in members.items():
        inside = set(nodes)
        returned = [n for n in nodes if any(u not in inside for u in n.users)]
        if len(returned) != 1 or calls[module[key]] != 1 or not module[key]:
            continue
        (node,) = returned
        # nested calls may return the same node: the innermost names it, as ``module_of``
        level = list(node.meta["nn_module_stack"]).index(key)
        if node.name not in out or out[node.name][0] < level:
            out[node.name] = (level, module[key])
    return {node: name for node, (_, name) in out.items()}
