"""Forward patches: a multiplier on a module's output (or on a block of its output features)
that ``MuP.apply`` registers as a forward hook where a program's multiplier cannot fold into a
param's init and LR (apply.py), and that ``check.probe`` applies to the graph it replays."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..errors import UsageError
from .rows import row_range


@dataclass
class Patch:
    """A forward multiplier factor·(width/base)^-exponent on a module's output (rows: its query
    block); ``param``: the block param whose module it is (every layer's, ``module`` a pattern).
    ``factor`` is a tuned constant (a tune file's multiplier against its default), 1 otherwise;
    ``nodes``: a block vector's node in every traced layer (``module`` the first layer's)."""

    module: str
    node: str
    exponent: Fraction
    # (lo, hi) of the features, or (lo, hi, groups, group_rows), then the rows' constants of a
    # block whose share changes with the width (rows.py): scale_rows
    rows: tuple | None
    why: str
    param: str | None = None
    factor: float = 1.0
    # a block's vector of no param (a query normalised without a gain): its graph node in
    # every traced layer, ``module`` the first repetition's, patched in every layer
    nodes: tuple[str, ...] = ()
    # ``nodes`` of one module outside a rolled stack (a norm q and k share: its q and k)
    in_layers: bool = True
    # the keys that share the query's norm, and so half the factor's exponent (normed.py)
    keys: str | None = None
    # a tied unembedding's layer with its own bias (nn.Linear's; the bias param's target): the
    # program scales E.T @ x alone and adds the bias after (``tie * (E.T @ x) + b``), so the
    # patch keeps the bias out of its factor
    bias: str | None = None
    # that bias added after the product inside the module (MobileBERT's ``h.matmul(E.t()) +=
    # decoder.bias``), not the product node's own argument: the graph's probe scales the node
    bias_after: bool = False
    # the user's line of the vector it scales (a tied product's), where a forward that returns
    # no tensor alone is refused
    span: object = None
    # its exponent in the depth: (L/base depth)^-depth_exponent too (a standardised kernel's
    # depth multiplier, standardised.py)
    depth_exponent: Fraction = Fraction(0)

    def at(self, r: float, rd: float = 1.0) -> float:
        """The multiplier at width ratio ``r`` (width / base width) and depth ratio ``rd``."""
        return self.factor * r ** -float(self.exponent) * rd ** -float(self.depth_exponent)


def groups_of(groups: int | None, group_rows: int | None, size: int) -> int:
    """How many groups of rows a fused axis of ``size`` rows has: a fixed count, or one per
    ``group_rows`` rows (1: a plain row block)."""
    return groups or (size // group_rows if group_rows else 1)


def scale_rows(out, factor: float, rows):
    """``out`` with its features ``rows`` times ``factor``: (lo, hi) fractions of the features,
    or (lo, hi, groups, group_rows) of every group of them (a fused qkv laid out per head)."""
    if rows is None:
        return out * factor
    size = out.shape[-1]
    scale = out.new_ones(size)
    view = scale.view(groups_of(*rows[2:4], size) if rows[2:4] else 1, -1)
    # a block whose share changes with the width: its rows' constants last (rows.py)
    lo, hi = row_range(rows[:2], rows[4] if rows[4:] else None, view.shape[-1])
    view[:, lo:hi] = factor
    return out * scale


def hook(factor: float, rows, bias: bool = False, name: str = "", span=None):
    """A forward hook that multiplies the module's output (its ``rows``) by ``factor``; with
    ``bias``, its bias kept out of the factor: factor·(W·x) + b (an nn.Linear's). A module
    ``name`` whose call returns anything but one tensor (a tuple of the product and another
    value) is refused at ``span``, the line of the vector it scales: the factor is on one."""
    import torch

    def scaled(module, args, out):
        if not isinstance(out, torch.Tensor):
            raise UsageError(
                f"{name or 'the model'} returns a {type(out).__name__}, not the one vector "
                "that its forward patch multiplies by its multiplier (computed here)", span,
                help="return that vector alone from its module (an nn.Linear whose weight is "
                "the embedding, for a tied readout), and the rest from its parent")
        return scale_out(out, factor, rows, _channels(module.bias, module) if bias else None)

    return scaled


def _channels(bias, module):
    """A layer's bias as its output adds it: per channel of a convolution's [B, C, H, W]."""
    weight = getattr(module, "weight", None)
    return bias[:, None, None] if weight is not None and weight.dim() == 4 else bias


def scale_out(out, factor: float, rows, bias=None):
    """``out`` scaled as a patch scales it: its ``rows`` times ``factor``, and where ``bias``
    (the layer's bias, added after its matmul) is given, the bias not: factor·(out − b) + b,
    computed as factor·out + (1 − factor)·b (the model as it comes at factor 1, bit for bit)."""
    if bias is None or factor == 1.0:
        return scale_rows(out, factor, rows)
    return scale_rows(out, factor, rows) + (1.0 - factor) * bias


def modules_at(model, names: list[str]) -> list:
    """The model's modules at ``names``, where forward patches go. One instance held under two
    names (a norm module that every layer holds and calls) is refused: a hook on it multiplies
    the output of each of its calls, so two patches on it would each scale every call's vector
    (the trace sees one call per name: calls.py cannot tell it from two modules)."""
    seen: dict[int, str] = {}
    out = []
    for name in names:
        module = model.get_submodule(name)
        first = seen.setdefault(id(module), name)
        if first != name:
            raise UsageError(
                f"{first} and {name} are one module instance, called in both places: a forward "
                "patch on either would multiply the output of every call of it",
                help=f"give {name} a module instance of its own (e.g. one norm per layer, not "
                "one norm object every layer holds)",
            )
        out.append(module)
    return out


# the attribute of every forward hook apply registers, by which strip finds a deepcopy's
_MARK = "_tensorprog_hook"


def mark(fn):
    """``fn``, marked as a hook of apply's (:func:`strip`)."""
    setattr(fn, _MARK, True)
    return fn


def strip(model, token: int) -> None:
    """Removes apply's forward hooks and pre-hooks from every module of ``model`` (marked:
    :func:`mark`), unless another MuP than that of ``token`` patched it. A deepcopy of a
    patched model copies its modules' hooks (not its params' gradient hooks) and its mark, so
    the copy computes as the model; apply on the copy would otherwise register its own beside
    them, and each would act twice."""
    if getattr(model, _OWNER, token) != token:
        return
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, fn in hooks.items() if getattr(fn, _MARK, False)]:
                del hooks[key]
                # a column scale's pre-hook is registered with kwargs (columns.input_hook)
                m._forward_pre_hooks_with_kwargs.pop(key, None)


# the attribute a patched model carries: which MuP's hooks it holds (one MuP's at a time)
_OWNER = "_tensorprog_patched_by"


def claim(model, token: int) -> None:
    """Mark ``model`` as patched by the MuP of ``token``; refused where another MuP's forward
    patches and gradient scales are on it already, which a second set would apply again (a
    readout scaled twice, a block's Adam eps scaled by the square of its factor)."""
    held = getattr(model, _OWNER, None)
    if held is not None and held != token:
        raise UsageError(
            "this model holds another MuP's forward patches and gradient scales: a second "
            "MuP's apply would register its own beside them, and each would act twice",
            help="apply with the MuP that patched it, or call that MuP's "
            "remove_patches(model) first",
        )
    object.__setattr__(model, _OWNER, token)


def release(model, token: int) -> None:
    """Unmark ``model`` once the MuP of ``token`` removed its patches."""
    if getattr(model, _OWNER, None) == token:
        object.__delattr__(model, _OWNER)


def drop_compiled(model) -> list[str]:
    """Drop every compiled code of the process (``torch._dynamo.reset()``) before apply
    registers module hooks: torch does not guard compiled code on nn.Module hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a forward compiled before them (of
    this model, of a module it holds or that holds it, or of another model of one of those
    classes compiled later at the same shapes) would run on without them. What was compiled
    recompiles on its next call, and sees the hooks. Returns the model's module classes whose
    forward had compiled code (the warning's), where this torch lets that be read."""
    import sys

    if "torch._dynamo" not in sys.modules:  # nothing compiled: dynamo is imported on use
        return []
    import torch._dynamo

    if not torch._dynamo.config.skip_nnmodule_hook_guards:  # hooks guarded: nothing stale
        return []
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list as cached
    except ImportError:  # another torch: the reset below stands either way
        cached = None
    inner = getattr(model, "_orig_mod", model)  # the module a torch.compile wrapper holds
    stale = sorted({type(m).__name__ for m in inner.modules() if cached is not None and (
        code := getattr(type(m).forward, "__code__", None)) is not None and cached(code)})
    torch._dynamo.reset()
    return stale
