"""Which params weight decay reaches, from ``MuP.param_groups``' ``decay_params``."""

from __future__ import annotations

from ..errors import UsageError


def decay_rule(model, decay_params):
    """(name, param) -> whether weight decay reaches it, from param_groups' ``decay_params``;
    a UsageError for anything else, or for a name the model has no param by (a typo would
    silently leave that param undecayed)."""
    if decay_params == "matrices":
        return lambda name, p: p.dim() >= 2
    if decay_params == "all":
        return lambda name, p: True
    if callable(decay_params):
        return lambda name, p: bool(decay_params(name, p))
    if isinstance(decay_params, str) or not hasattr(decay_params, "__iter__"):
        raise UsageError(
            "decay_params must be 'matrices', 'all', a function (name, param) -> bool or a set "
            f"of the model's param names, not {decay_params!r}"
        )
    names = dict(model.named_parameters())
    unknown = sorted(set(decay_params) - set(names))
    if unknown:
        raise UsageError(
            f"decay_params names no param of the model: {', '.join(unknown)} "
            "(see model.named_parameters())"
        )
    chosen = set(decay_params)
    return lambda name, p: name in chosen
