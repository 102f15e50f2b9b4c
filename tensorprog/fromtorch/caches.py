"""Tensors a model keeps between its forwards, computed from its params: LeViT's attention bias
[heads, T, T], read from its table once in eval mode and kept per device
(``attention_bias_cache``), on the assumption that eval mode means frozen params.

The coordinate check trains in eval mode (dropout's noise is no width effect), so such a cache
would be read again after the step: stale (its params' values before the step) and part of a
graph its backward already freed ("Trying to backward through the graph a second time"). Train
mode is no cure in general: a model's dropout is often a number on the module, given to the
functional dropout with ``self.training``, and other training-only paths (a router's jitter
noise) would run. So before each training forward the check drops the entries of a module's
dict attributes that hold a tensor of an autograd graph: a memo keyed by device or shape
computes them again from the current params, as a training forward does. A cache of another
form (a bare tensor attribute, a list) cannot be emptied safely; where one is read again, the
backward's error is replaced by one that names it."""

from __future__ import annotations

from ..errors import UsageError

# nn.Module's own dicts: its params, buffers, submodules and hooks, never a forward's cache
_OWN = frozenset(("_parameters", "_buffers", "_modules"))


def drop_caches(model) -> None:
    """Drops from every module's dict attributes the entries that hold a graph's tensor."""
    for m in model.modules():
        for name, value in vars(m).items():
            if name in _OWN or not isinstance(value, dict):
                continue
            for key in [k for k, v in value.items() if _cached(v)]:
                del value[key]


def backward(loss, model) -> None:
    """``loss.backward()``; where it fails for a graph read again, the error names the module
    attributes that hold a graph's tensor (the caches the check could not drop)."""
    try:
        loss.backward()
    except RuntimeError as err:
        if "backward through the graph a second time" not in str(err):
            raise
        kept = [
            f"{path}.{name}" if path else name
            for path, m in model.named_modules()
            for name, value in vars(m).items()
            if name not in _OWN
            and (
                _cached(value)
                or isinstance(value, (list, tuple))
                and any(_cached(v) for v in value)
            )
        ]
        raise UsageError(
            "the model reads again a tensor it computed from its params in an earlier forward "
            f"(kept in {', '.join(kept) or 'a place the check cannot see'}), whose graph the "
            "step's backward freed: the check trains in eval mode, and a cache kept there is "
            "stale after each step",
            help="recompute it at every forward (as the model's training mode does), or keep "
            "it in a dict attribute of its module, which the check empties before each forward",
        ) from None


def _cached(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.grad_fn is not None
