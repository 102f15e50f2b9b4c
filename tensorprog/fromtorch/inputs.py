"""The forward's inputs as the user gives them (``example_inputs(model)``): read and checked,
the token ids found among them, each named as the forward names it, fed again with other ids,
and the integer ones (masks, token types) handed to the converter by their graph placeholders."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UsageError
from .where import def_span


def kind_of(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} with no tensor"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _holds_tensor(value) -> bool:
    import torch

    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    return isinstance(value, torch.Tensor)


def forward_inputs(example_inputs: Callable, model) -> tuple[tuple, dict]:
    """The forward's inputs, positional and keyword: a tuple or list of positional ones (a lone
    tensor, as itself), or a dict of keyword ones (``input_ids=``, ``attention_mask=``)."""
    import torch

    given = example_inputs(model)
    if isinstance(given, torch.Tensor):  # tuple() would split it into its rows
        return (given,), {}
    if isinstance(given, dict) and all(isinstance(k, str) for k in given):
        args, kwargs = (), dict(given)
    elif isinstance(given, (tuple, list)):
        args, kwargs = tuple(given), {}
    else:
        raise UsageError(
            f"example_inputs returned {kind_of(given)}: expected a tuple of the forward's inputs "
            "or a dict of its keyword inputs",
            def_span(example_inputs),
            help="return the forward's positional inputs, e.g. (torch.zeros(2, 16, "
            "dtype=torch.long),), or keyword ones, e.g. {'input_ids': ids, 'attention_mask': "
            "torch.ones_like(ids)}",
        )
    leaves = (*args, *kwargs.values())
    named = zip(forward_names(model, args, kwargs), leaves, strict=True)
    nested = next(((k, x) for k, x in named if isinstance(x, (tuple, list, dict))), None)
    if nested is not None:
        name, value = nested
        # a forward that reads tensors out of a container (Gemma 4's assistant: the keys and
        # values of the model it drafts for, a dict of pairs by attention type) cannot be
        # given them one by one: say which input, and that the tracer reads none such
        raise UsageError(
            f"example_inputs gave {name}, a {type(value).__name__}"
            f"{' holding tensors' if _holds_tensor(value) else ''}, among the forward's "
            "inputs: each input must be a tensor, a number or None (the tracer reads no "
            "tensor inside a dict, tuple or list)",
            def_span(example_inputs),
            help="pass each tensor as its own positional or keyword input; a forward that "
            "takes a container of tensors (a drafter's keys and values of another model) is "
            "not traced",
        )
    if not any(isinstance(x, torch.Tensor) for x in leaves):
        raise UsageError(
            "example_inputs gave no tensor: the token ids to trace the model on are missing",
            def_span(example_inputs),
            help="return the forward's positional inputs, token ids first, e.g. "
            "(torch.zeros(2, 16, dtype=torch.long),)",
        )
    return args, kwargs


def token_index(args: tuple, kwargs: dict) -> int:
    """Which of the inputs (positional, then keyword) holds the token ids: ``input_ids`` (Hugging
    Face's name) when given as a keyword, else the first tensor (an optional mask left out as
    None may come before it)."""
    import torch

    leaves = (*args, *kwargs.values())
    if isinstance(kwargs.get("input_ids"), torch.Tensor):
        return len(args) + list(kwargs).index("input_ids")
    return next(i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor))


def cpu_ids(ids):
    """The example's token ids on the CPU, as convert.py takes them (zeros where they have no
    values: on the meta device)."""
    import torch

    if ids.device.type == "meta":
        return torch.zeros(ids.shape, dtype=ids.dtype)
    return ids.detach().to("cpu", copy=True)


def forward_names(model, args: tuple, kwargs: dict, specs=None) -> list[str]:
    """The forward's name of each input leaf: positional ones by its signature, then the
    keyword ones (``specs``: the graph's placeholders, named for leaves past the signature)."""
    import inspect


    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in kinds]
    names = [params[i] if i < len(params) else (specs[i].arg.name if specs else f"arg{i}")
             for i in range(len(args))]
    return names + list(kwargs)


def token_feed(example_inputs: Callable, model, tokens: dict) -> tuple[tuple, dict]:
    """The forward's inputs in the shape of ``example_inputs(model)``, with the token ids and
    every other token input of the program (``tokens``: program input name -> ids; ``tok``
    the token ids) replaced by the given ids, and each other tensor input (a mask of ones,
    token types of one id) repeated from its first example over their batch."""
    import torch

    args, kwargs = forward_inputs(example_inputs, model)
    leaves = [*args, *kwargs.values()]
    k = token_index(args, kwargs)
    batch = tokens["tok"].shape[0]
    for i, name in enumerate(forward_names(model, args, kwargs)):
        if i == k:
            leaves[i] = tokens["tok"]
        elif name in tokens:
            leaves[i] = tokens[name]
        elif isinstance(leaves[i], torch.Tensor) and leaves[i].dim() > 0:
            leaves[i] = leaves[i][:1].expand(batch, *leaves[i].shape[1:]).clone()
    return tuple(leaves[:len(args)]), dict(zip(kwargs, leaves[len(args):], strict=True))


def float_feed(given, x) -> tuple[tuple, dict]:
    """The float input ``x`` (an image, patches) as the forward takes it, ``given`` the example
    inputs: alone, or where they are several (SigLIP2's patches, their mask and grid as
    keywords; a prompt's ids beside its image, positional or keywords) in the first float one's
    place, each other tensor's first row repeated over the batch (the trace read them as
    constants of the trace, the same for every sample: a prompt's ids, whose image tokens' place
    it fixed, ops_place.py)."""
    import torch

    if isinstance(given, torch.Tensor) or not isinstance(given, (dict, tuple, list)):
        return (x,), {}
    items = list(given.items()) if isinstance(given, dict) else list(enumerate(given))
    out, placed = [], False
    for _, v in items:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not placed:
            out.append(x)
            placed = True
        elif isinstance(v, torch.Tensor) and v.dim() > 0:
            out.append(v[:1].expand(x.shape[0], *v.shape[1:]).clone().to(x.device))
        else:
            out.append(v)
    if isinstance(given, dict):
        return (), dict(zip(given, out, strict=True))
    return tuple(out), {}


def given_inputs(ep, model, args: tuple, kwargs: dict, tok: int) -> dict:
    """The integer inputs other than the token ids (an attention mask, token-type ids), by
    their placeholders in ``ep``: (the forward's name for it, its value on the CPU). Constants
    of the trace (a mask of all ones keeps every key; token-type ids of one value are one row
    of their table; varying ones, segments, a token input of their own named so). ``ep``'s user
    inputs are the positional ones, then the keyword ones, in order; float ones stay inputs of
    their own."""
    import torch

    leaves = (*args, *kwargs.values())
    specs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    assert len(specs) == len(leaves), (specs, leaves)  # flat inputs, checked by _inputs
    names = forward_names(model, args, kwargs, specs)
    return {
        s.arg.name: (name, x.detach().to("cpu"))
        for i, (s, name, x) in enumerate(zip(specs, names, leaves, strict=True))
        if i != tok and isinstance(x, torch.Tensor) and not x.is_floating_point()
    }


def probe_ids(like):
    """Ids that tell a copy of the token ids (or the ids shifted) from a constant: 3, 4, ...,
    9 along each sequence, small enough for any vocabulary and clear of the special ids."""
    import torch

    return torch.arange(like.numel()).reshape(like.shape) % 7 + 3
