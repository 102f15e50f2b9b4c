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

An L2 normalisation over d coordinates is ``d^-1/2 * rmsnorm(x)`` (ops_norm.py), the constant
written at its base value. Where d grows with the width (a head dim n/4, all n channels) the
model's constant is n^-1/2 times the program's: :func:`l2_into_scales` counts it in the model's
exponent of the attention logits that alone read the normalised vector (Swin V2's cosine
attention, ``τ·dot(q/|q|, k/|k|)`` = τ/dh · dot(rmsnorm q, rmsnorm k): µP's 1/d, so the
derived multiplier is the model's and apply has nothing to change); anything else that reads
it would need a factor (n/base)^1/2 after the norm, which no init or LR takes: ``MuP`` refuses
it (:func:`refuse_l2`) at the user's line.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ..errors import TraceError, UsageError
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
        "a function of it such as a clamp, another sum or product), so no one layer's init "
        "and LR take the factor, and it is "
        "no norm's output for a forward patch to scale",
        info.get("l2_span"),  # an L2 normalisation's line, where it needs the factor
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
            info.get("l2_span"),  # an L2 normalisation's line (l2_into_scales)
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


def l2_constant(info: dict, model_a: Fraction, value: float) -> dict:
    """The width constant d^-1/2 of an L2 normalisation over d coordinates that grow with the
    width (``info``: its slot's, ops_norm's ``_l2``), as trace.py's width constants are kept:
    the vector it makes, its base value and the model's exponent (1/2)."""
    out = info["out"]
    return {"q": out, "out": out, "model_a": model_a, "value": value, "fixed": True,
            "l2": info["norm"], "span": info["span"]}


def l2_into_scales(fixed: dict, trace) -> None:
    """Each L2 normalisation's constant (``fixed``: the trace's width constants) whose vector
    reaches attention logits ``s * dot(q, k, dh)`` alone, as their query or keys, directly or
    through products with params alone (Swin V2's temperature on the query, ``spread(exp(..),
    dh) * q``): the logits are linear in it, so its power of the width is the model's, on those
    logits, and is added to their scale's model exponent (``model_a``; ``l2_vectors``: vector
    -> its exponent, for the check, which measures each vector of the way as the program's);
    the constant is then marked ``into`` those scales. One read by a gain alone, ``g * v``
    (g a vector param), is kept as a width constant on g's product (MuP folds its factor into
    g's init and LR, as a QK-norm gain takes attention's). Any other is left as it is, and
    ``MuP`` refuses it (:func:`refuse_l2`), naming its reader ``read_by``."""
    params = {d.split()[1] for d in trace.decls if d.startswith("param ")}
    for info in fixed.values():
        if not info.get("l2"):
            continue
        way = _linear_way(info["out"], trace, params)
        v, e = way[-1], info["model_a"]
        sides = [(s, side) for s, sc in trace.scales.items() if "slot" in sc and "tied" not in sc
                 for side in ("q", "k") if sc.get(side) == v]
        if sides and len(_readers(v, trace)) == len(sides) and v not in trace.outputs:
            for s, _ in sides:
                trace.scales[s]["model_a"] += e
                trace.scales[s].setdefault("l2_span", info["span"])  # (for query_norm_patch)
                trace.scales[s].setdefault("l2_vectors", {}).update(dict.fromkeys(way, e))
            info["into"] = sorted({s for s, _ in sides})
            continue
        v = info["out"]
        readers = _readers(v, trace)
        rhs = {lhs.strip(): r for lhs, _, r in (st.partition("=") for st in trace.stmts)}
        _refuse_unit_in_head_dot(info, [r for r in readers if "hdot(" in rhs[r]])
        other = [r for r in readers if " dot(" not in rhs[r]]  # not the logits: what else
        info["read_by"] = (other or readers or ["an output"])[0]
        gain = trace.producers.get(info["read_by"], (None,))[0]
        if len(readers) == 1 and v not in trace.outputs and gain in params and re.search(
                rf"param {gain} : \[[^,]+\]", "\n".join(trace.decls)) and \
                f"{readers[0]} = {gain} * {v}" in trace.stmts:
            info.update(q=readers[0], out=readers[0], l2_vectors={v: e})


def _refuse_unit_in_head_dot(info: dict, dots: list[str]) -> None:
    """A TraceError at the L2 normalisation's line where a dot per head of one token reads the
    unit vector over a head dim that grows (NeoMME's exclusive self-attention with 4 heads of
    n/4, ``(o * F.normalize(v)).sum(-1) * F.normalize(v)``). The program holds d^-1/2 at its
    base value, so hdot(o, vn, dh), an LLN sum over dh (o holds its own token's value), grows
    as n where the model's does not; the exact program puts both unit vectors' constants into
    one scale of the dot, ``spread(s * hdot(o, rmsnorm(v, dh), dh), dh) * rmsnorm(v, dh)``
    with s = 1/dh (µP's own exponent, 1: the model's), which the trace does not write."""
    if dots:
        raise TraceError(
            f"an L2 normalisation over {info['l2']} coordinates at the base width, a number "
            "that grows with the width, read by a dot per head of one token "
            f"({dots[0]} = hdot(...)): x / |x| is d^-1/2 * rmsnorm(x), a constant of the "
            "width that the program holds at its base value, so the dot grows as n where the "
            "model's does not; the exact form, spread(s * hdot(o, rmsnorm(v, dh), dh), dh) * "
            "rmsnorm(v, dh) with a scale s = 1/d for both unit vectors, is not traced",
            info["span"],
            help="build the model with heads of a fixed dim (n/16 heads of 16: the unit "
            "vector's constant is then one number), or write the model as a program with that "
            "scale",
        )


def _readers(v: str, trace) -> list[str]:
    """The vectors whose statements read ``v``, once per read."""
    word = re.compile(rf"(?<![\w.]){re.escape(v)}(?![\w.])")
    return [lhs.strip() for lhs, _, rhs in (st.partition("=") for st in trace.stmts)
            for _ in word.findall(rhs)]


def _linear_way(v: str, trace, params: set[str]) -> list[str]:
    """``v``, then each vector that alone reads the one before it, once, as ``f * w`` or ``w *
    f`` with f a number or a function of params alone (a temperature per head): the vectors
    linear in v on its way to what reads it otherwise."""
    way = [v]
    while True:
        readers = _readers(way[-1], trace)
        if len(readers) != 1 or way[-1] in trace.outputs:
            return way
        rhs = next(st.partition("=")[2].strip() for st in trace.stmts
                   if st.partition("=")[0].strip() == readers[0])
        w = re.escape(way[-1])
        m = re.fullmatch(rf"(.+) \* {w}", rhs) or re.fullmatch(rf"{w} \* (.+)", rhs)
        if m is None or " dot(" in rhs:
            return way
        factor = re.sub(r"\{s\d+\}", "", m.group(1))  # a dim's slot
        names = set(re.findall(r"(?<![\w.])([A-Za-z_]\w*)(?!\w*\()", factor))
        if not names <= params:  # (none: a number, or a slot's)
            return way
        way.append(readers[0])


def l2_note(info: dict, w1: int) -> str:
    """The traced program's comment on an L2 normalisation's width constant."""
    said = (f"the model's {info['value']:.6g}·(n/{w1})^{-info['model_a']} (an L2 normalisation "
            f"over {info['l2']} coordinates at width {w1}: d^-1/2), written at its base value; ")
    v = next(iter(info.get("l2_vectors", {info["q"]: 0})))
    if info.get("into"):
        return (f"# {v} times {info['value']!r}: {said}only {', '.join(info['into'])} read it, "
                "whose model exponent counts its width factor")
    if v != info["q"]:
        return (f"# {v} times {info['value']!r}: {said}the width factor goes into the init and "
                f"LR of the gain that makes {info['q']}")
    return (f"# {v} times {info['value']!r}: {said}a factor µP needs after it would have no "
            "param to take it (apply refuses it)")


def l2_taken(mup, scale: str, info: dict) -> None:
    """An L2 normalisation's width constant (``scale``, ``info``: :func:`l2_into_scales`)
    that no gain takes alone is refused at its line: one whose vector no gain reads
    (:func:`refuse_l2`), or whose gain is read elsewhere too (another normalisation's
    product, another vector's), whose init and LR would carry the factor there as well."""
    if not info.get("l2"):
        return
    gain = mup.traced.producers.get(info["q"], (None,))[0]
    if gain is None:
        refuse_l2(scale, info, -info["model_a"])
    if len(mup.program.uses(gain)) > 1:
        target, v = mup.traced.params[gain].target, next(iter(info["l2_vectors"]))
        refuse_l2(scale, info, -info["model_a"], f"the gain {target} that takes it ("
                  f"{info['q']} = {gain} * {v}) is read elsewhere too, and its init and LR "
                  "would carry the factor there as well", help="give the normalisation a "
                  "gain of its own (a param read once), or normalise with the mean (RMSNorm)")


def refuse_l2(scale: str, info: dict, delta: Fraction, why: str | None = None,
              help: str | None = None) -> None:
    """A UsageError at the user's line of an L2 normalisation over coordinates that grow with
    the width whose vector is read by more than attention logits (:func:`l2_into_scales`):
    µP's program holds it at the base constant, the model's is (n/base)^-model_a of it, and
    the factor between them has no param after a norm to take it (``why``: what else)."""
    why = why or (
        "a norm's output takes no factor from the init or LR of what makes its input, "
        f"and {info.get('read_by', 'another value')} reads it, not attention logits alone "
        "(whose multiplier would count the constant, as cosine attention's 1/d does)")
    raise UsageError(
        f"{scale}: an L2 normalisation over {info['l2']} coordinates at the base width, whose "
        f"number grows with the width: x / |x| is d^-1/2 * rmsnorm(x), of coordinates of size "
        f"n^-{info['model_a']} where µP's program keeps them Θ(1), so µP needs it times "
        f"(n/base)^{-delta}; but {why}",
        info["span"],
        help=help or "normalise with the mean (RMSNorm, x * rsqrt(x.pow(2).mean(-1, keepdim="
        "True) + eps), or F.rms_norm) and put any constant into a gain param, or normalise over a "
        "head of a fixed dim (build the model with heads that grow with the width)")
