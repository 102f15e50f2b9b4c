"""A derived attention scale on a traced model's query: apply folds the factor µP needs on the
logits (1/d against the model's 1/√d) into the query layer's init and LR, or patches it on the
layer's output, since the logits are linear in the query (apply.py's docstring). Each function
takes the ``MuP`` whose ``folded``, ``patches`` and exponents it fills."""

from __future__ import annotations

from fractions import Fraction

from ..errors import UsageError
from .normed import query_norm_patch, refuse_unnormed_query
from .patches import Patch
from .scale_attr import scale_attribute
from .values import ParamUse


def shared_query_layers(mup) -> dict[str, str]:
    """Attention scales whose queries one layer makes (its module called once per
    attention, ALBERT's layer shared across the depth, or one query read by several
    logits): a factor folded into that layer, or patched on its output, scales every
    call's output and so every one of those logits, once. Each must then need the same
    factor, which is applied once: scale -> the first such scale, whose fold carries it (and
    a tuned multiplier alike: apply's ``_tuned_multipliers``). Width constants on the vectors
    of one layer whose patch goes on that layer's module (a fused layer's rows, a rolled
    block's layer: ``query_patch``), one per call, likewise (apart from the attention's).
    A UsageError where they need different factors (a layer can carry only one)."""
    first: dict[tuple, tuple[str, Fraction]] = {}
    out: dict[str, str] = {}
    stack = mup.stack.layers if mup.stack else {}
    for name, info in mup.traced.scales.items():
        if "q" not in info:
            continue
        made = mup.traced.producers.get(info["q"])
        fixed = bool(info.get("fixed"))
        if fixed and (made is None or mup.traced.params[made[0]].rows is None
                      and made[0] not in stack) and not (made and every_use_scaled(mup, made[0])):
            continue  # folded into its layer's init, or its own module's patch (sole_module)
        # the layer that makes the query; a query no layer makes (normalised without a
        # gain) is its own key: its norm's patch scales it, once for every logit reading it
        layer = made[0] if made else info["q"]
        maker = (f"one layer ({mup.traced.params[layer].target}) makes" if made else
                 f"one normalised query ({layer}) is")
        what = "the vectors their width constants multiply" if fixed else \
            "their attention logits"
        delta = mup.derived_a(name, info) - info["model_a"]
        if (layer, fixed) not in first:
            first[layer, fixed] = (name, delta)
            continue
        other, before = first[layer, fixed]
        if before != delta:
            uses = mup.program.uses(name)
            raise UsageError(
                f"{name} and {other}: µP needs {what} times "
                f"(n/base)^{-delta} and (n/base)^{-before}, but {maker} both their "
                f"{'vectors' if fixed else 'queries'}, and a factor apply puts on it scales "
                "every call's output alike",
                uses[0].span if uses else None,
                help="give each attention a query layer of its own, or build the model "
                "with a fixed head dim, where the scales need no change")
        if made and outside_bias(mup, *made) and delta != 0 \
                and info["q"] != mup.traced.scales[other]["q"]:
            # the first's fold puts the factor on the layer and on its own query's bias
            raise UsageError(
                f"{name}: its query is {mup.traced.params[layer].target}'s output plus the "
                f"bias {mup.traced.params[made[1]].target}, and that layer makes {other}'s "
                "query too: the factor apply puts on the layer for both would miss this bias",
                info.get("span") or scale_span(mup, name),
                help="give each attention a query layer of its own, or build the model with "
                "a fixed head dim, where the scales need no change")
        out[name] = other
        if delta != 0:
            mup.folded.append(
                f"{name}: its {'vector' if fixed else 'query'} is made by "
                f"{mup.traced.params[layer].target} as {other}'s is" if made else
                f"{name}: its query {layer} is {other}'s too")
            mup.folded[-1] += f", whose (n/base)^{-delta} covers it"
    return out


def fold_query(mup, scale: str, info: dict, delta: Fraction, k: int) -> None:
    need = f"µP needs the attention logits times (n/base)^{-delta}"
    if info.get("l2_vectors"):  # the model's multiplier counts them (normed.l2_into_scales)
        need += (" (the model's multiplier of them counting the d^-1/2 of the L2 "
                 "normalisation of " + ", ".join(sorted(info["l2_vectors"])) + ")")
    query_read_alone(mup, scale, info, need)
    if info["q"] not in mup.traced.producers:  # a query normalised without a gain
        try:
            refuse_unnormed_query(mup.traced, scale, info, need)  # or gated: no norm
            patch = query_norm_patch(mup.traced, scale, info, need, delta, (
                f"{scale}: output of the query's norm times (n/base)^{-delta} (no gain)"))
        except UsageError as refused:  # the third place: the attention's own scale
            scale_attribute(mup, scale, info, delta, refused)
            return
        mup.patches.append(patch)
        if mup.patches[-1].keys:
            one_side_alone(mup, scale, info, need)
            mup.shared_norm[info["q"]] = mup.patches[-1].keys
        return
    w, b, use, alone = query_layer(mup, scale, info, need)
    overlapping_block(mup, scale, w, use, need)
    if use.rows is None:
        mup.whole_layers.add(w)
    if use.rows is None and use.cols is None and alone:
        for p in (w, b):
            if p:
                _fold(mup, p, delta, k)
        mup.folded.append(
            f"{scale}: (n/base)^{-delta} folded into the init and LR of "
            f"{use.target}" + (f" and {mup.traced.params[b].target}" if b else "")
        )
    else:
        why = (f"{scale}: query rows of fused {use.target} times (n/base)^{-delta} (its LR "
               "is shared with k and v)" if use.rows else
               f"{scale}: output of {use.target} times (n/base)^{-delta} (the matrix has "
               + ("column blocks, a concatenation's" if use.cols else "another use") + ")")
        mup.patches.append(query_patch(mup, scale, info, use, w, delta, why))
        if b and outside_bias(mup, w, b) and info["q"] not in mup.own_patch:
            # the patch scales the layer's W @ x alone: the bias added after it takes the
            # factor in its init and LR (abc-symmetry), so the sum carries it once
            other = [ins for ins in mup.program.uses(b)
                     if mup.traced.producers.get(ins.out, (None,))[0] != w]
            if other or len(mup.program.uses(b)) != 1:
                raise UsageError(
                    f"{scale}: {need}, which apply puts on the output of {use.target} and on "
                    f"the bias {mup.traced.params[b].target} added to it outside that layer; "
                    f"but {other[0].out if other else 'another instruction'} reads that bias "
                    "too, and would be scaled with it",
                    other[0].span if other else scale_span(mup, scale),
                    help="give the query a bias of its own, or build the model with a fixed "
                    "head dim, where the scale needs no change")
            _fold(mup, b, delta, k)
            mup.folded.append(f"{scale}: (n/base)^{-delta} folded into the init and LR of "
                              f"{mup.traced.params[b].target}, the bias added to its output")


def overlapping_block(mup, scale: str, w: str, use: ParamUse, need: str) -> None:
    """A UsageError where another block of the query layer's rows that the program reads
    overlaps the query's rows without being them (a fused qkv split twice, into q, k, v and
    into [q k], v): the factor folded into those rows, or patched on their output, would
    reach that block's vector too, which the program leaves unscaled."""
    lo, hi = use.rows or (0, 1)
    for p, other in mup.traced.params.items():
        if p == w or other.target != use.target or other.group_rows != use.group_rows:
            continue
        olo, ohi = other.rows or (0, 1)
        uses = mup.program.uses(p) if p in mup.program.param_table else []
        if (olo, ohi) == (lo, hi) or max(lo, olo) >= min(hi, ohi) or not uses:
            continue
        raise UsageError(
            f"{scale}: {need}, which apply puts on the query's rows of {use.target} "
            f"({_share(lo)}:{_share(hi)} of its rows); but {uses[0].out} reads its rows "
            f"{_share(olo)}:{_share(ohi)}, a block that overlaps them, and would take the "
            "factor on the shared rows only", uses[0].span,
            help="split the layer's output once (q, k, v), or give the query a layer of its "
            "own, or build the model with a fixed head dim, where the scale needs no change")


def _share(f) -> str:
    return str(f) if f in (0, 1) else f"{f.numerator}/{f.denominator}"


def scale_span(mup, scale: str):
    """The program's line of the instruction that reads ``scale``, or None."""
    uses = mup.program.uses(scale)
    return uses[0].span if uses else None


def _fold(mup, p: str, delta: Fraction, k: int) -> None:
    """A multiplier (n/base)^-delta on what ``p`` makes, folded into its init and LR."""
    mup.init_exp[p] += delta
    mup.lr_exp[p] += k * delta
    # a gain's init is a constant (1): apply multiplies that constant instead
    mup.const_fold[p] = mup.const_fold.get(p, 0) + delta
    if p in mup.eps_exp:
        mup.eps_exp[p] -= delta


def outside_bias(mup, w: str, b: str | None) -> bool:
    """Whether the bias ``b`` of the query's ``W @ x + b`` is added outside W's module (a
    param of the attention's, ops_arith's ``added_bias``): a patch on that module's output
    scales W @ x alone."""
    return b is not None and mup.traced.params[b].module != mup.traced.params[w].module


def one_side_alone(mup, scale: str, info: dict, need: str) -> None:
    """A UsageError where the norm of ``scale``'s query, shared with its keys, takes the square
    root of the factor on each side of its logits (normed.py), and another attention reads
    that query with keys of its own: its logits would take the square root alone."""
    others = sorted(s for s, first in mup.shared_fold.items() if first == scale)
    if others:
        uses = mup.program.uses(others[0])
        raise UsageError(
            f"{scale}: {need}, and its query {info['q']} and keys share a norm without a gain, "
            "whose output takes the square root of the factor (on each of them); but "
            f"{others[0]} reads that query too, with keys of its own, and its logits would "
            "take the square root alone", uses[0].span if uses else None,
            help="give the query a norm module of its own (not the keys'), or build the "
            "model with a fixed head dim, where the scale needs no change")


def query_read_alone(mup, scale: str, info: dict, need: str) -> None:
    """A UsageError unless the query of ``scale``'s logits, and every vector its layer
    makes on the way to it, is read only by attention logits (dot) or on that way: a factor
    folded into the layer, or patched on its output, scales every reader of that output,
    and a residual that adds the layer's output (h + q(x)) would be scaled with it."""
    if info.get("fixed"):  # a width constant on a vector: its own patch (query_patch)
        return
    w = mup.traced.producers.get(info["q"], (None,))[0]
    use = mup.traced.params.get(w)
    way = {info["q"]}
    if use is not None:
        # all its layer makes is the query's, and so all a fused layer's query rows make: at
        # every call of its module (ALBERT's layer applied again), each of which its hook
        # scales, the queries of attentions sharing the layer (shared_query_layers) as others
        way |= {v for v, (p, *_) in mup.traced.producers.items() if p == w}
    way |= _pooled_way(mup.program, info["q"])
    made = f", made by {use.target}," if use is not None else ""
    for v in sorted(way):
        for ins in mup.program.uses(v):
            if type(ins).__name__ == "Dot" and ins.right in way:
                # the layer makes the keys too (q = k = W x, or its module called again on the
                # keys' input): the factor would be on both sides of the logits, its square
                raise UsageError(
                    f"{scale}: {need}, which apply puts on the query {info['q']}{made} and so "
                    f"on every vector it makes; but {ins.out} reads {ins.right} as its keys, "
                    "made there too, and the logits would take the factor twice", ins.span,
                    help="give the keys a layer of their own (a key projection), or build the "
                    "model with a fixed head dim, where the scale needs no change",
                )
            if type(ins).__name__ == "Dot" or ins.out in way:
                continue
            raise UsageError(
                f"{scale}: {need}, which apply puts on the query {info['q']}{made} and so "
                f"on every reader of it; but {ins.out} reads {v} too (outside attention), "
                "and would be scaled with it", ins.span,
                help="give the other reader a vector of its own (another layer, or the "
                "layer's input), or build the model with a fixed head dim, where the "
                "scale needs no change",
            )


def _pooled_way(program, q: str) -> set[str]:
    """The vectors between a query and its layer's output where the query is that output max
    pooled (Hiera's pooled queries, tokens(maxpool(image(W @ x + b, H, W)), S): ops_maskunit):
    a max is positively homogeneous and a relayout moves coordinates, so a factor on the
    layer's output is the same factor on the query, each vector on the way read only there."""
    from ..ir.program import Nonlin, Relayout

    made = {ins.out: ins for ins in program.body}
    way, ins = set(), made.get(q)
    while isinstance(ins, Relayout) and ins.merge is None or \
            isinstance(ins, Nonlin) and ins.fn == "maxpool":
        arg = ins.arg if isinstance(ins, Relayout) else ins.args[0]
        way.add(arg)
        ins = made.get(arg)
    return way


def every_use_scaled(mup, w: str) -> bool:
    """Whether a param read more than once (attention over depth's query, one layer of each
    of the stack's vectors) makes only vectors that width constants multiply, each alone: a
    factor folded into its init and LR once then carries every one of them, as the abc-symmetry
    has it, where they need the same (shared_query_layers makes sure)."""
    uses = mup.program.uses(w)
    scaled = {info["q"] for info in mup.traced.scales.values()
              if info.get("fixed") and mup.traced.producers.get(info.get("q"), (None,))[0] == w}
    return len(uses) > 1 and {ins.out for ins in uses} <= scaled


def query_layer(mup, scale: str, info: dict, need: str) -> tuple:
    """(w, b, use, alone) of the layer (or gain) that makes the query of ``scale``'s logits,
    where a multiplier on the logits can go (``need`` says which), or a UsageError."""
    w, b = mup.traced.producers[info["q"]]
    use = mup.traced.params[w]
    # a matrix read twice (a tied embedding) would carry the factor into its other use too
    alone = all(len(mup.program.uses(p)) == 1 for p in (w, b) if p) or (
        not b and every_use_scaled(mup, w))
    gain = len(mup.program.param_table[w].shape) == 1  # g * norm(x) (+ b): QK-norm's
    if gain and not alone:
        # the module that applies a gain need not output the query alone (a gain written
        # inline in the attention's forward), so a forward patch could scale more than it
        raise UsageError(
            f"{scale}: {need}, which folds into the query's gain {use.target} only when "
            "nothing else reads that gain",
            help="give the query's norm a gain of its own (not shared with the keys), or "
            "build the model with a fixed head dim, where the scale needs no change",
        )
    return w, b, use, alone


def query_patch(mup, scale: str, info: dict, use: ParamUse, w: str, exponent: Fraction,
                 why: str, factor: float = 1.0) -> Patch:
    """A forward patch on the module that makes the query (its rows of a fused layer)."""
    made = mup.traced.vectors.get(info["q"], (use.node,))[0]
    if info.get("fixed") and use.rows is None and w not in getattr(mup.stack, "layers", ()):
        # a width constant on a vector of a param with other uses (a table the encoder's
        # and decoder's lookups and a tied head read): a patch on the module whose one call
        # returns that vector (or its product) alone scales no other use of the param
        module = sole_module(mup, scale, info, use)
        mup.own_patch.add(info["q"])
        return Patch(module, made, exponent, None, why, None, factor)
    consts = (use.row_consts,) if use.row_consts else ()  # rows.py
    in_stack = bool(mup.stack and w in mup.stack.layers)
    others = () if in_stack else tuple(n for _, n in use.also)
    # a weight tied across modules (two nn.Linear of one weight, in a rolled block's layers
    # too: their modules are patterns alike): a hook on one leaves the others' calls unscaled
    tied = sorted({m for m, _ in use.also} - {use.module})
    if tied:
        raise UsageError(
            f"{scale}: µP needs its attention logits times (n/base)^{-exponent}, which apply "
            f"puts on the output of the query's layer {use.module or 'the model'} (weight "
            f"{use.target}); but other modules apply that weight too ({', '.join(tied)}), "
            "and a patch on one module's output would leave theirs unscaled",
            info.get("span"), help="give the attention a query weight of its own, or build "
            "the model with a fixed head dim, where the scale needs no change")
    # the module called again (ALBERT's layer, shared over the depth): every call's output
    # carries the factor, as the forward hook applies it; the check's probe scales each node
    # (a rolled block's: each layer's calls, MuP.patch_factors)
    return Patch(use.module, use.node, exponent,
                 use.rows and (*use.rows, use.groups, use.group_rows, *consts), why,
                 w if in_stack else None, factor,
                 nodes=(use.node, *others) if others else (), in_layers=not others)


def sole_module(mup, scale: str, info: dict, use: ParamUse) -> str:
    """The module whose one call returns the vector a width constant multiplies (or the
    product) alone (calls.py), or a UsageError."""
    module = mup.traced.constant_modules.get(scale)
    if module is None:
        raise UsageError(
            f"{scale}: a constant of the width multiplies {info['q']}, made by "
            f"{use.target}, which the model also reads elsewhere (another lookup, a tied "
            "head), and no module returns that vector alone (it is written in a forward "
            "that returns more, or its module is called twice): apply cannot put the "
            "width factor on it alone", info.get("span"),
            help="look the table up in a module of its own that applies the constant (as "
            "transformers' ScaledWordEmbedding), or build the model without the constant "
            "(scale_embedding=False), or with a table of its own for each lookup",
        )
    return module
