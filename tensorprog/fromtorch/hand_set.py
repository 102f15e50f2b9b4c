"""A 1-D param set by hand (the same numbers at every seed, not all one: base_stats reads
them one by one), as HF's Mamba-2 sets A = 1..H over its H heads: ``apply`` keeps the model's
own entries where they are of the base width's law, and gives it the base width's law where
they leave it (µP's init keeps one law as the width grows)."""

from __future__ import annotations

from ..errors import UsageError
from .values import ParamUse, entry_key
from .where import def_span


def hand_set(base: dict, target: str) -> list[float] | None:
    """The entries at the base width of a 1-D param whose init is set by hand (the same
    numbers at every seed, not all one: base_stats reads them one by one), else None."""
    out: list[float] = []
    while (v := base.get(entry_key(target, len(out)))) is not None and v[0] == "const":
        out.append(v[1])
    return out or None


def ordered(entries: list[float]) -> bool:
    """Whether hand-set entries run in the order of their place (non-decreasing or
    non-increasing: 1..H, a function of i/n), or repeat such a run (1..H/G in each of G
    groups): a draw of a fixed generator (the same at every seed too) runs in none, and its
    law is one at every width."""
    return run_of(entries) is not None


def run_of(entries: list[float]) -> list[float] | None:
    """The shortest run in the order of its place that ``entries`` repeat, else None."""
    k = len(entries)
    for p in range(1, k + 1):
        run = entries[:p]
        if k % p == 0 and entries == run * (k // p) and _monotone(run):
            return run
    return None


def _monotone(run: list[float]) -> bool:
    steps = list(zip(run[:-1], run[1:], strict=True))
    return all(a <= b for a, b in steps) or all(a >= b for a, b in steps)


def base_law(entries: list[float], own, name: str = "the param", span=None):
    """The entries of a hand-set 1-D param of a growing dim at another width, drawn from its
    law at the base width: None where the model's own entries ``own`` are of the base's law
    (sorted, each between the base's sorted entries beside its rank: the base's repeated, as
    a run 1..G over more groups of heads, or a function of the entry's place i/n sampled
    finer, past the base's ends by at most the step the ends' last two entries extrapolate,
    as ALiBi's slopes 2^(-8i/H)) or where the base's entries run in no order of their place
    (a draw of a fixed generator), else the base's entries in their order, each repeated over
    its share of the entries (HF's Mamba-2 sets A = 1..H over its H heads: at 16 times the
    width, 16 times as many rates and a largest one 16 times as large, where µP's init keeps
    one law as the width grows). Entries that repeat a run over G groups (1..H/G in each) get
    it per group where the model's own repeat one over G groups too; else they are refused."""
    import torch

    base = torch.tensor(entries, dtype=torch.float64)
    k, n = len(entries), own.numel()
    run = run_of(entries)
    if n == k or k < 2 or run is None:
        return None
    at = torch.arange(n) * k // n  # each entry's share of the base's
    ranked = base.sort().values
    lo = ranked[(at - 1).clamp(min=0)] - _beyond(ranked[0], ranked[1]) * (at == 0)
    hi = ranked[(at + 1).clamp(max=k - 1)] + _beyond(ranked[-1], ranked[-2]) * (at == k - 1)
    mine = own.detach().double().flatten().sort().values
    slack = 1e-9 * ranked.abs().max()
    if bool(((mine >= lo - slack) & (mine <= hi + slack)).all()):
        return None
    if len(run) == k:
        return base[at].to(own.dtype).view_as(own)
    groups = k // len(run)
    rows = own.detach().flatten().view(groups, -1) if n % groups == 0 and n > groups else None
    if rows is None or not bool((rows == rows[0]).all()):
        raise UsageError(
            f"init {name}: set by hand (the same numbers at every seed), a run of "
            f"{len(run)} repeated over {groups} groups at the base width; its {n} entries "
            f"here are neither of that law nor a run repeated over {groups} groups", span,
            help="give the param one run per group at every width, or set its init yourself "
            "after apply")
    law = base_law(run, rows[0], name, span)  # each group's run: of the base's law, or the base's
    return None if law is None else law.repeat(groups).view_as(own)


def _beyond(end, inner) -> float:
    """How far a finer sample of a monotone function may reach past the base's end entry
    ``end`` (``inner`` the one beside it): the larger of the step between them and, where the
    two grow outward with one sign, the step of their ratio (a geometric sequence's)."""
    step = abs(float(end - inner))
    if float(end) * float(inner) > 0 and abs(float(end)) > abs(float(inner)):
        step = max(step, abs(float(end)) * (abs(float(end / inner)) - 1))
    return step


def hand_set_init(mup, model, name: str, use: ParamUse, layer: int | None, view) -> str | None:
    """A 1-D param set by hand (hand_set): given the base width's law where the
    model's own leave it; its report line, or None for a param not set by hand."""
    entries = _entries(mup, model, name, use, layer, view) if view.dim() == 1 \
        and view.shape == model.get_parameter(use.target).shape else None
    if entries is None:
        return None
    law = base_law(entries, view, use.target, param_span(model, use.target))
    if law is None:  # set by hand, of one law at every width
        how = "in the order of their place, of the base width's law (its entries " \
            "repeated or sampled finer)" if ordered(entries) else \
            "in no order of their place: a fixed generator's draw, kept as drawn"
        return f"init {use.target}: the model's own entries (the same at every seed, {how})"
    # numbers set by hand whose law changes with the width (HF's Mamba-2 A = 1..H over its
    # heads): µP's init keeps the base width's law
    view.copy_(law)
    run = len(run_of(entries))
    per = f" (a run of {run} in each of {len(entries) // run} groups)" \
        if run < len(entries) else ""
    return (f"init {use.target}: the base width's {len(entries)} entries{per} (set by "
            f"hand, the same at every seed), each over its share of the {view.numel()}: "
            "the model's own, in the order of their place, leave the base's law (neither "
            "its entries repeated nor sampled finer), a law that changes with the width")


def _entries(mup, model, name: str, use: ParamUse, layer: int | None, view) -> list | None:
    """A hand-set 1-D param's entries at the base width (hand_set): for a layer
    past the traced depth the traced layers' (as MuP._base reads their init), refused where
    they differ and one of them would give the model's own entries another law."""
    if layer is None or layer < mup.stack.depth:
        return hand_set(mup.traced.base, use.target)
    found = [hand_set(mup.traced.base, u.target) for u in mup.stack.layers[name]]
    if all(f == found[0] for f in found):
        return found[0]
    span = param_span(model, use.target)
    if any(f is not None and base_law(f, view, use.target, span) is not None for f in found):
        raise UsageError(
            f"init {use.target}: set by hand (the same numbers at every seed) and "
            "different in each traced layer "
            f"({', '.join(u.target for u in mup.stack.layers[name])}), so a layer past "
            f"the traced depth {mup.stack.depth} has no base width's law to keep", span,
            help="trace the model at this depth (from_torch of a build with as many "
            "layers), or give the layers one law")
    return None


def param_span(model, target: str):
    """The line defining the class of the module that holds the param ``target`` (its
    __init__, where a param's init is usually set), for an error about that init."""
    module = model.get_submodule(target.rpartition(".")[0])
    return def_span(type(module).__init__)
