"""A multiplier on the attention logits whose query is normalised without a gain (QK-norm with
``elementwise_affine=False``, NanoChat's and Llama 4's parameter-free RMS/L2 norm) over a head
dim that grows: µP's 1/d against the model's 1/√d (docs/torch.md, "QK-norm").

A norm's output is Θ(1) whatever its input's scale, so no param before it can take the factor,
and there is no gain after it. But the logits are linear in the normalised query, so a forward
hook multiplying the norm module's output by the factor is exact, where that module's one call
in the forward returns the query alone (calls.py): not a norm module q and k share, nor one
instance every layer calls, nor a norm written inline in the attention's forward (the hook
would then scale more than the query). In a rolled stack the query is a block's vector: each
traced layer's must be returned by that layer's own module, the first's moved to the layer.
"""

from __future__ import annotations

from fractions import Fraction

from ..errors import UsageError
from .patches import Patch


def refuse_unnormed_query(traced, scale: str, info: dict, need: str) -> None:
    """A UsageError where the query of ``scale`` is made by no linear layer whose init and LR
    could take the factor, yet by no norm either: a per-head gate or bias on it
    (``q * spread(g, dh)``, ``W @ x + spread(b, dh)``) or another sum or product. The norm's
    patch and its diagnosis are not this query's."""
    from ..ir.program import LinComb, MatMul, Nonlin

    program, q = traced.program, info["q"]
    made = {ins.out: ins for ins in program.body}
    todo, seen = [q], set()
    while todo:  # q's own expression, back to the matmuls and inputs that feed it
        ins = made.get(todo.pop())
        if ins is None or ins.out in seen or isinstance(ins, MatMul):
            continue
        seen.add(ins.out)
        if isinstance(ins, Nonlin) and ins.fn in ("layernorm", "rmsnorm"):
            return  # a norm: query_norm_patch's
        if isinstance(ins, (LinComb, Nonlin)):
            todo.extend(ins.operands)
    line = next((ln.strip() for ln in traced.source.splitlines()
                 if ln.strip().startswith(f"{q.rpartition('.')[2]} = ")), q)
    raise UsageError(
        f"{scale}: {need} against the model's own scale, but the query ({line}) is combined "
        "with something else after its linear layer (a per-head gate or bias, spread(g, dh), "
        "another sum or product), so no one layer's init and LR take the factor, and it is "
        "no norm's output for a forward patch to scale",
        help="gate or bias the attention's output rather than its query, or build the model "
        "with a fixed head dim (heads that grow with the width), where the scale needs no "
        "change",
    )


def query_norm_patch(traced, scale: str, info: dict, need: str, exponent: Fraction, why: str,
                     factor: float = 1.0) -> Patch:
    """The forward patch factor·(n/base)^-exponent on the module that returns ``scale``'s
    normalised query alone (every layer's, for a block's query), or a UsageError (``need``:
    what the logits need) naming what to build instead."""
    stack = traced.stack
    block = stack is not None and info["q"].startswith(stack.block + ".")
    nodes = _nodes(traced, info["q"], block)
    modules = [traced.calls.get(node) for node in nodes]
    own = bool(nodes) and all(modules)
    if own and block:
        # one module per layer, at the same place in each (the hook goes on every layer's,
        # at any depth): not a module outside the stack that each layer calls
        own = all(m == stack.module_at(modules[0], i) for i, m in enumerate(modules)) and (
            stack.depth < 2 or modules[0] != modules[1])
    if not own and "k" in info:
        pair = _shared_with_keys(traced, info, nodes, block)
        if pair is not None:  # √ of the factor on each side of the logits
            return Patch(pair[0], nodes[0], exponent / 2, None, why + " (q and k share the norm: "
                         "the square root of it on each)", None, factor ** 0.5, pair[1],
                         in_layers=block, keys=info["k"])
    if not own:
        raise UsageError(
            f"{scale}: {need} against the model's own scale, but the query {info['q']} is "
            "normalised without a gain (QK-norm with elementwise_affine=False, a parameter-free "
            "RMS or L2 norm), so no init or LR can take the factor, and no module returns that "
            "query alone for a forward patch to scale (its norm is shared by q and k, called by "
            "every layer from one instance, or written inline in the attention's forward)",
            help="give the query a norm module of its own, called once and returning the "
            "query (the factor then goes on its output), or a gain (elementwise_affine=True: it "
            "folds into the gain's init and LR), or build the model with a fixed head dim "
            "(heads that grow with the width), where the scale needs no change",
        )
    return Patch(modules[0], nodes[0], exponent, None, why, None, factor,
                 tuple(nodes) if block else ())


def _shared_with_keys(traced, info: dict, nodes: list[str], block: bool) -> tuple | None:
    """(module, the q and k nodes of every traced layer) where one norm module per layer is
    called twice, returning that layer's query and its keys, and the keys are read by this
    attention's logits alone: the logits are linear in each, so √ of the factor on both is
    the factor on the logits, and the gradients reaching q and k are the program's."""
    keys = _nodes(traced, info["k"], block)
    uses = traced.program.uses(info["k"])
    if not nodes or len(keys) != len(nodes) or len(uses) != 1 \
            or type(uses[0]).__name__ != "Dot" or info["q"] not in uses[0].operands:
        return None
    shared = traced.shared_calls
    modules = []
    for q, k in zip(nodes, keys, strict=True):
        module, calls = shared.get(q, (None, ()))  # each call's node and what it casts
        if module is None or len(calls) != 2 or not any(
                q in a and k in b for a, b in (calls, calls[::-1])):
            return None
        modules.append(module)
    stack = traced.stack
    if block and not (all(m == stack.module_at(modules[0], i) for i, m in enumerate(modules))
                      and (stack.depth < 2 or modules[0] != modules[1])):
        return None
    if not block and len(modules) != 1:
        return None
    return modules[0], (*nodes, *keys)


def _nodes(traced, query: str, block: bool) -> list[str]:
    """The query's graph node, or for a block's query its node in each traced layer, in order."""
    if not block:
        return [traced.vectors[query][0]] if query in traced.vectors else []
    stack = traced.stack
    found = sorted(
        (int(names[0].split(".")[1]), traced.vectors[v][0])
        for v, names in traced.names.items()
        if v in traced.vectors and stack.generic(names[0]) == query
    )
    return [node for _, node in found] if len(found) == stack.depth else []
