"""What a model's params are at the base width, read from its builds: each param's init (a
constant, or a std: torch's own law where the model kept it, else pooled over several seeds),
and which are random draws centred on 0. ``from_torch`` reads them once, at the first width."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import UsageError
from .gradscale import block_of
from .inputs import kind_of
from .values import entry_key
from .where import def_span

# a param with no init law of torch's is pooled over builds until it has this many entries
_POOLED_ENTRIES = 10_000
_MAX_DRAWS = 32
# a block drawn apart from its tensor (block_stats): pooled over at most this many builds
_BLOCK_DRAWS = 8


def _law(model, name: str, p):
    """The std torch's own module initialises the param with (nn.Linear's kaiming-uniform weight
    and bias: bound 1/sqrt(fan_in), std bound/sqrt(3); nn.Embedding: N(0, 1)), or None."""
    import torch

    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if type(module) is torch.nn.Linear and attr in ("weight", "bias"):
        return 1 / math.sqrt(3 * module.in_features)
    if type(module) in (torch.nn.Conv1d, torch.nn.Conv2d) and attr in ("weight", "bias"):
        return 1 / math.sqrt(3 * module.weight[0].numel())  # the same law over in·k(·k) values
    if type(module) is torch.nn.Embedding and attr == "weight" and module.padding_idx is None:
        return 1.0
    return None


def base_stats(build, width: int) -> tuple[dict, set]:
    """Per param name at the base width: a constant init (LayerNorm gains, zero biases) or its
    std (one for a tensor shared by several names, as a tied unembedding); and the names whose
    init is a random draw centred on 0 (torch's laws, or a pooled one that varies with the
    seed and has mean 0), which ``apply`` may draw anew where a tensor is too small to rescale
    by its own std (reinit.py).

    The std is torch's own law where the param's module has one and the model kept it (the
    drawn std agrees with the law within three standard errors; a bias, when its weight's
    does too); otherwise the std pooled over several builds (seeds 0, 1, ...), so that a small
    tensor (a 10-entry bias) is no noisy estimate from one draw."""
    import torch

    with torch.random.fork_rng():  # the user's generator is left as it was
        torch.manual_seed(0)
        model = built(build, width)
    names: dict[int, list[str]] = {}  # tensor -> its names
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    stats, pooled, kept = {}, {}, set()
    centred = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, p in model.named_parameters():  # each tensor once, under its first name
        v = p.detach().double().flatten()
        if not v.numel():  # no entries, no init to read (MobileBERT's readout rows past its
            continue  # embedding's, none when the embedding is as wide as the model)
        if bool((v == v[0]).all()):
            centred.difference_update(names[id(p)])
            stats.update({k: ("const", float(v[0])) for k in names[id(p)]})
            continue
        for alias in names[id(p)]:
            law = _law(model, alias, p)
            # a drawn std's relative standard error is under 0.75/sqrt(N) for these laws; a
            # bias is too small to tell a re-init from: it keeps the law with its weight
            module, _, attr = alias.rpartition(".")
            if law is not None and (
                abs(float(v.std()) / law - 1) < 3 * 0.75 / math.sqrt(v.numel())
                and (attr != "bias" or module in kept)
            ):
                stats.update({k: ("normal", law) for k in names[id(p)]})
                kept.add(module)
                break
        else:
            pooled[name] = [float(v.var())]
    if pooled:
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        draws = min(_MAX_DRAWS, max(math.ceil(_POOLED_ENTRIES / sizes[n]) for n in pooled))
        first = {n: model.get_parameter(n).detach().double() for n in pooled}
        sums = {n: [float(first[n].sum()), first[n].numel(), False] for n in pooled}
        with torch.random.fork_rng():
            for seed in range(1, draws):
                torch.manual_seed(seed)
                for name, p in built(build, width).named_parameters():
                    if name in pooled:
                        v = p.detach().double()
                        pooled[name].append(float(v.var()))
                        acc = sums[name]
                        acc[0], acc[1] = acc[0] + float(v.sum()), acc[1] + v.numel()
                        acc[2] = acc[2] or not torch.equal(v, first[name])
        for name, variances in pooled.items():
            std = math.sqrt(sum(variances) / len(variances))
            p = model.get_parameter(name)
            stats.update({k: ("normal", std) for k in names[id(p)]})
            total, count, varies = sums[name]
            # a draw of the seed (not the same entries at every build: a prior set by hand)
            # centred on 0 (within 3 standard errors of the pooled entries' mean)
            if not varies or abs(total / count) > 3 * std / math.sqrt(count):
                centred.difference_update(names[id(p)])
            if not varies and p.dim() == 1:  # numbers set by hand, each entry its own
                # constant: NeoMME's mixing weights [1, 0], read one by one (ops_entries.py)
                stats.update({entry_key(k, i): ("const", float(x))
                              for k in names[id(p)] for i, x in enumerate(first[name])})
    for name, m in model.named_modules():  # an embedding's padding row (ops_linear._row)
        if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
            row = m.weight.detach().double()[m.padding_idx]
            pad = ("const", 0.0) if not bool(row.any()) else ("normal", float(row.std()))
            # under each name of the tensor: the export may name a tied one by another
            for k in names.get(id(m.weight), [f"{name}.weight" if name else "weight"]):
                stats[entry_key(k, m.padding_idx)] = pad
    return {"m." + k: v for k, v in stats.items()}, {"m." + k for k in centred}


def block_key(use) -> str | None:
    """The key of a block's own init among the base stats (init_stats.block_stats): the tensor's
    name and the block's place in it, written as the traced use holds it (the same at every
    width: its rows' shares and constants, its columns' part, its expert); None for a use of
    the whole tensor. A row of a table read as a vector of its own (a lookup of one constant
    id, a prompt's rows, a learned token of a [1, R, n] param) is such a block: a model may draw
    its prompt rows smaller than the token rows beside them, and the row is scaled from its own
    std (1-D params' entries read as numbers have theirs, values.entry_key)."""
    if use.index is not None and not use.entries:
        return f"{use.target}{{row {use.index}}}"
    if use.rows is None and use.cols is None and use.expert is None:
        return None
    place = (use.rows, use.row_consts, use.groups, use.group_rows,
             None if use.cols is None else use.cols.index, use.expert)
    return f"{use.target}{{block {place}}}"


def block_stats(build, width: int, uses, base: dict) -> dict:
    """The std of each block of a tensor (a fused layer's rows, a concatenation's columns, an
    expert's matrix: the ``uses`` of part of a tensor, every layer's of a rolled stack) whose
    draw at the base width differs from its tensor's std in ``base`` by more than three
    standard errors, keyed by its ``block_key``: a model that draws its gates' rows smaller
    than the query's beside them in one tensor. ``apply`` scales each block from its own std
    at the base width, as µP scales each param of the program; from the tensor's it had given
    such a block the std of the rest (10x its own, then times (n/base)^-e) at every width but
    the base. A block that differs is pooled over a few builds (seeds 0, 1, ...), as
    base_stats pools a tensor of no known law; a block whose entries are all one number (rows
    left zero) is left to apply, which keeps such a block as it is."""
    import torch

    blocks = {u.target: [] for u in uses}
    for u in uses:
        if block_key(u) is not None and base.get(u.target, ("const",))[0] == "normal":
            blocks[u.target].append(u)
    blocks = {k: v for k, v in blocks.items() if v}
    if not blocks:
        return {}

    def draws(seed: int) -> dict:  # each block's entries in the build of this seed
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = built(build, width)
        return {block_key(u): block_of(model.get_parameter(t).detach().double(), u).flatten()
                for t, parts in blocks.items() for u in parts}

    first, apart = draws(0), {}
    for t, parts in blocks.items():
        for u in parts:
            v = first[block_key(u)]
            if v.numel() < 2 or bool((v == v[0]).all()):
                continue
            # as base_stats tells a law kept: a drawn std's relative error is under 0.75/√N
            if abs(float(v.std()) / base[t][1] - 1) > 3 * 0.75 / math.sqrt(v.numel()):
                apart[block_key(u)] = [float(v.var())]
    if apart:
        size = min(first[k].numel() for k in apart)
        for seed in range(1, min(_BLOCK_DRAWS, math.ceil(_POOLED_ENTRIES / size))):
            more = draws(seed)
            for k, variances in apart.items():
                variances.append(float(more[k].var()))
    return {k: ("normal", math.sqrt(sum(v) / len(v))) for k, v in apart.items()}


def built(build: Callable, width: int):
    """``build(width)``, refused at the user's build unless it is a torch module."""
    import torch

    model = build(width)
    if not isinstance(model, torch.nn.Module):
        name = getattr(build, "__name__", "build")
        raise UsageError(
            f"{name}({width}) returned {kind_of(model)}, not a torch.nn.Module",
            def_span(build),
            help="build(width) must return the model (a torch.nn.Module) built at that width",
        )
    return model
