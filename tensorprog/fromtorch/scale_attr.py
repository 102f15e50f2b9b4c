"""The attention module's own scale as the place for µP's factor on its logits: the third, after
the query layer's init and LR and a forward patch on the query's norm (query_fold.py).

Where the query is neither a layer's output (DBRX's clamped query, LeViT's batch-normed one) nor
a norm's that a module returns alone (NanoChat's QK-norm, written in the attention's forward),
no init, LR or patch on the query can take the factor. But the model's own scale is a number the
attention module holds and hands to its logits (transformers' ``scaling=self.scaling``, which
the attention interface passes to sdpa as ``scale=``; LeViT's ``(q @ k.T) * self.scale``), and
the logits are linear in it: setting that attribute to its value times (n/base)^-δ puts the
factor on exactly those logits, and at the base width leaves it as it is, bit for bit.

An attribute is not taken on its value alone. The candidate is a float attribute of the module
whose forward computes the logits (the trace's module of their node) equal to the traced scale at
both traced widths. It is then checked by running the model: one forward with it as it is and one
with it doubled, under a torch function mode that records every number (a float, or an int: a
shape, a count of heads) each torch call receives.
It is accepted only where the two runs make the same calls and differ in one float alone, doubled:
the scale of that module's one sdpa call, or the number multiplying its one ``q @ kᵀ`` (the kind
of the traced logits node). That call is computed with the value as it was (the doubled one
recorded), so the forward's tensors stay the first run's, and code whose calls depend on them (a
router's, after it) makes the same calls: a difference is the attribute's. An attribute read
nowhere, read twice, read by anything else, or whose value reaches the logits by another way (a
square root) fails that test, and the query's own refusal stands, with the reason the attribute
could not take the factor.

The attribute is state of the model, as its init is: a deepcopy keeps it, a state_dict does not
hold it (a model loaded from one takes ``apply`` again, as it does for the forward patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import UsageError

_MULS = ("mul", "__mul__", "__rmul__", "mul_", "__imul__")
_MATMULS = ("matmul", "__matmul__", "bmm", "einsum", "__rmatmul__")
# the calls that carry the logits on, elementwise, from their multiplier to their softmax (a
# mask or bias added, a softcap, a cast)
_CARRY = frozenset(
    "add __add__ __radd__ add_ __iadd__ sub __sub__ sub_ __isub__ mul __mul__ __rmul__"
    " mul_ __imul__ div __truediv__ div_ __itruediv__ masked_fill masked_fill_ where to float"
    " type tanh clamp contiguous".split()
)
_SOFTMAX = ("softmax", "_softmax", "log_softmax")
# and those that lay them out anew, all their entries kept (BART's (b·h, t, t) view of them)
_VIEWS = frozenset("view reshape flatten unflatten transpose permute".split())


@dataclass(frozen=True)
class ScaleAttr:
    """The float attribute ``attr`` of the attention module ``module`` (the first layer's in a
    rolled stack: every layer's), which apply sets to its value times (n/base)^-``exponent``."""

    scale: str
    module: str
    attr: str
    value: float  # at the base width
    model_a: Fraction  # the model's own exponent of it
    exponent: Fraction
    block: bool = False  # the module of a rolled stack's first layer: every layer's
    factor: float = 1.0  # a tuned multiplier on its logits (MuP(config=...)), against µP's

    def modules(self, mup, model) -> list[str]:
        if not self.block:
            return [self.module]
        return [mup.stack.module_at(self.module, i) for i in range(mup.depth_of(model))]


def scale_attribute(mup, scale: str, info: dict, delta: Fraction, refused: UsageError) -> None:
    """Put the factor (n/base)^-``delta`` that ``scale``'s logits need on the attention's own
    scale attribute, or raise ``refused`` (the query's refusal) with the reason none could."""
    try:
        found = _found(mup, scale, info, delta)
    except _NoAttribute as why:
        d = refused.diagnostics[0]
        uses = mup.program.uses(scale)  # the logits' line, where the refusal had none
        raise type(refused)(
            d.message + f"; nor could apply set the attention's own scale instead: {why}",
            d.span or (uses[0].span if uses else None),
            (d.help or "")
            + ", or hand the attention its scale from a float attribute of its own module, "
            "read once by its logits (transformers' scaling=self.scaling), which apply sets",
        ) from None
    mup.scale_attrs[scale] = found


def shared_scales(mup) -> None:
    """The scales whose query another attention's reads too (shared_query_layers: one factor on
    that query's layer or norm carries them all), where that attention's own scale attribute
    took the factor: it scales its own logits alone, so each of these takes it on its own
    module's attribute, or is refused."""
    for name, first in mup.shared_fold.items():
        if first not in mup.scale_attrs:
            continue
        info = mup.traced.scales[name]
        mup.folded = [ln for ln in mup.folded if not ln.startswith(f"{name}: its ")]
        refused = UsageError(
            f"{name}: its query {info['q']} is {first}'s too, whose factor goes on "
            f"{mup.scale_attrs[first].module}.{mup.scale_attrs[first].attr}, the scale of "
            f"{first}'s logits alone",
            info.get("span"),
            help="build the model with a fixed head dim (heads that grow with the width), "
            "where the scales need no change",
        )
        scale_attribute(mup, name, info, mup.derived_a(name, info) - info["model_a"], refused)


class _NoAttribute(Exception):
    """Why the attention's own scale cannot take the factor (added to the query's refusal)."""


def _found(mup, scale: str, info: dict, delta: Fraction) -> ScaleAttr:
    import torch

    traced = mup.traced
    caller, node = info.get("caller"), info.get("node")
    if caller is None or "slot" not in info:
        raise _NoAttribute("no attention module computes these logits")
    if any(s != scale and i.get("node") == node for s, i in traced.scales.items()):
        raise _NoAttribute(
            f"their node {node} holds other logits too (heads in parts), "
            "which one number would scale alike"
        )
    others = sorted(s for s, i in traced.scales.items() if s != scale and i.get("caller") == caller)
    if caller and others:  # its number might be theirs: the forward cannot tell whose it is
        raise _NoAttribute(f"{caller} computes other logits too ({', '.join(others)})")
    if not caller:
        raise _NoAttribute(
            "the logits are computed in the model's own forward, not by an "
            "attention module of its own"
        )
    w1, w2 = traced.widths
    value, model_a = float(info["value"]), Fraction(info["model_a"])
    at = {w1: value, w2: value * (w2 / w1) ** -float(model_a)}
    # the module of a rolled stack's first layer (or that layer): every layer's holds its own
    first = traced.stack.item(0) if traced.stack else None
    block = first is not None and (caller == first or caller.startswith(first + "."))
    with torch.random.fork_rng(), torch.device("meta"):  # the sizes alone: nothing drawn
        names = None
        for w, v in at.items():
            if w not in mup._attr_meta:  # one build per width for every attention's scale
                mup._attr_meta[w] = traced.build(w)
            module = _module(mup._attr_meta[w], caller)
            own = {
                a
                for a, x in vars(module).items()
                if type(x) is float and math.isclose(x, v, rel_tol=1e-6)
            }
            names = own if names is None else names & own
    if not names:
        raise _NoAttribute(
            f"{caller} holds no float attribute equal to the scale at both "
            f"traced widths ({at[w1]:.6g} at {w1}, {at[w2]:.6g} at {w2})"
        )
    why = {}
    for attr in sorted(names):
        try:
            _verify(mup, caller, attr, node, block)
        except _NoAttribute as err:
            why[attr] = str(err)
            continue
        return ScaleAttr(scale, caller, attr, value, model_a, delta, block)
    raise _NoAttribute("; ".join(f"{caller}.{a} {w}" for a, w in why.items()))


def _module(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise _NoAttribute(f"the model has no module {path}") from None


def _verify(mup, caller: str, attr: str, node: str, block: bool) -> None:
    """Nothing where doubling ``attr`` of ``caller`` (of every layer's, in a block) doubles the
    scale of its one attention call, of the traced logits node's kind, and changes nothing
    else the model's torch calls receive; else _NoAttribute saying what it did."""
    model, args, kwargs, (base, _) = _probe(mup)
    paths = [mup.stack.module_at(caller, i) for i in range(mup.stack.depth)] if block else [caller]
    want = "sdpa" if node.startswith("scaled_dot_product_attention") else "mul"
    what = "the scale of its sdpa call" if want == "sdpa" else "the number multiplying q @ kᵀ"
    for path in paths:
        module = model.get_submodule(path)
        before = getattr(module, attr)
        setattr(module, attr, before * 2)
        try:
            run, calls = _record(model, module, args, kwargs, (want, before * 2, before))
        except Exception as err:  # (the model's own error: a shape it reads from the number)
            raise _NoAttribute(
                f"fails the forward when doubled ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        finally:
            setattr(module, attr, before)
        if [(e[0], len(e[2])) for e in run] != [(e[0], len(e[2])) for e in base]:
            raise _NoAttribute("changes which calls the forward makes, when doubled")
        if calls != 1:
            raise _NoAttribute(
                f"is read by {path}, which the forward calls {calls} times, not once"
            )
        changed = [(e, f) for e, f in zip(base, run, strict=True) if e[2] != f[2]]
        if len(changed) != 1:
            raise _NoAttribute(
                f"changes {len(changed)} of the numbers the model's torch calls receive, "
                f"doubled (it is read {'nowhere' if not changed else 'more than once'}), where "
                f"{what} in {path} alone should change"
            )
        ((e, f),) = changed
        if not (
            f[1]
            and e[3] == want
            and sum(a != b for a, b in zip(e[2], f[2], strict=True)) == 1
            and math.isclose(e[4], before, rel_tol=1e-12)
            and math.isclose(f[4], 2 * e[4], rel_tol=1e-12)
        ):
            raise _NoAttribute(
                f"reaches the forward's {e[0]} call{' in ' + path if f[1] else ''}"
                f", not as {what} in {path}, doubled (the traced logits {node})"
            )


def _probe(mup):
    """(model, args, kwargs, its recorded forward) at the base width, built once per MuP."""
    import torch

    from .init_stats import built
    from .inputs import forward_inputs

    if mup._attr_probe is None:
        with torch.random.fork_rng(), torch.device("cpu"):
            torch.manual_seed(0)
            model = built(mup.traced.build, mup.traced.base_width).eval()
            args, kwargs = forward_inputs(mup.traced.example_inputs, model)
            _record(model, None, args, kwargs)  # first: what a forward caches (LeViT's biases)
            mup._attr_probe = (model, args, kwargs, _record(model, None, args, kwargs))
    return mup._attr_probe


def _record(model, module, args: tuple, kwargs: dict, undo=None) -> tuple[list[tuple], int]:
    """The forward's torch calls that receive numbers, in order: (name, inside ``module``, the
    numbers (floats and ints: a number read into a shape or a count changes them), kind, mark),
    kind 'sdpa' (mark: its scale) or 'mul' (a number, the mark, times a matmul of two tensors
    no param makes, whose product a softmax then reads: the logits' multiplier, not a number
    on a layer's ``x @ W`` or on the attention's ``p @ v``) or ''; and how many times
    ``module`` was called.
    ``undo`` = (kind, doubled, value): a call of that kind inside ``module`` that receives the
    doubled value is recorded so but computed with the value, so that the forward's tensors,
    and the calls that data-dependent code (a router's) makes after it, are the first run's."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    events: list[tuple] = []
    inside, calls = [0], [0]
    products: dict[int, object] = {}  # id -> a matmul's output (held, so no id is reused)
    logits: dict[int, tuple] = {}  # id -> (the 'mul' event that made it, the tensor held)
    read: set[int] = set()  # the 'mul' events whose output a softmax reads

    def own(x) -> bool:  # a tensor that is no param nor a view of one (q, k: not x @ W's W)
        return isinstance(x, torch.Tensor) and not any(
            isinstance(t, torch.nn.Parameter) for t in (x, getattr(x, "_base", None))
        )

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, a=(), kw=None):
            a, kw = tuple(a), dict(kw or {})
            name = getattr(func, "__name__", str(func))
            floats = tuple(x for x in tree_flatten((a, kw))[0] if type(x) in (float, int))
            kind, mark = "", None
            if name == "scaled_dot_product_attention":
                mark = kw.get("scale", a[6] if len(a) > 6 else None)
                kind = "sdpa" if type(mark) is float else ""
            elif name in _MULS and len(a) == 2 and any(id(x) in products for x in a):
                mark = next((x for x in a if type(x) is float), None)
                kind = "mul" if mark is not None else ""
            if floats:
                events.append((name, inside[0] > 0, floats, kind, mark))
            if undo and inside[0] and kind == undo[0] and mark == undo[1]:
                if kind == "sdpa" and "scale" in kw:
                    kw["scale"] = undo[2]
                else:
                    at = 6 if kind == "sdpa" else next(i for i, x in enumerate(a) if x is mark)
                    a = (*a[:at], undo[2], *a[at + 1 :])
            out = func(*a, **kw)
            tensors = [x for x in tree_flatten((a, kw))[0] if isinstance(x, torch.Tensor)]
            if (
                name in _MATMULS
                and isinstance(out, torch.Tensor)
                and len(tensors) == 2
                and all(own(x) for x in tensors)
            ):
                products[id(out)] = out
            made = next((logits[id(x)][0] for x in tensors if id(x) in logits), None)
            if kind == "mul" and floats:
                logits[id(out)] = (len(events) - 1, out)
            elif made is not None and name in _SOFTMAX:
                read.add(made)
            elif made is not None and isinstance(out, torch.Tensor):
                kept = [x for x in tensors if id(x) in logits]
                if (name in _CARRY and any(x.shape == out.shape for x in kept)) or (
                    name in _VIEWS and any(x.numel() == out.numel() for x in kept)
                ):
                    logits[id(out)] = (made, out)
            return out

    def enter(*_):
        inside[0] += 1
        calls[0] += 1

    def leave(*_):
        inside[0] -= 1

    hooks = (
        [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        if module is not None
        else []
    )
    try:
        with torch.no_grad(), torch.random.fork_rng(), Recorder():  # (the user's RNG kept)
            torch.manual_seed(0)
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    # a number on a product that no softmax reads is not the logits' multiplier
    events = [e if e[3] != "mul" or i in read else (*e[:3], "", e[4]) for i, e in enumerate(events)]
    return events, calls[0]


def set_scales(mup, model) -> list[str]:
    """Set every scale attribute to its value at this model's width times its factor; the
    report's lines. Where it holds the model's own value (n/base)^-model_a, it is multiplied by
    the factor (bit for bit the same at the base width); where it holds µP's already (apply
    called again, a deepcopy of an applied model), it stays; anything else is refused."""
    r = mup.width_of(model) / mup.traced.base_width
    found = []  # every attribute checked before any is set: a refusal leaves them all as found
    for s in mup.scale_attrs.values():
        own = s.value * r ** -float(s.model_a)
        mu = own * r ** -float(s.exponent) * s.factor
        for path in s.modules(mup, model):
            module = model.get_submodule(path)
            now = getattr(module, s.attr, None)
            if type(now) is float and math.isclose(now, mu, rel_tol=1e-9) and mu != own:
                found.append((s, path, module, now, True))
                continue
            if type(now) is not float or not math.isclose(now, own, rel_tol=1e-9):
                raise UsageError(
                    f"{path}.{s.attr} is {now!r}, neither the model's own scale at width "
                    f"{mup.width_of(model)} ({own:.6g}) nor µP's ({mu:.6g}): apply sets it to "
                    f"µP's from the model's own",
                    help="apply µP to a model built by the traced "
                    "build(width), with its attention scale as built",
                )
            found.append((s, path, module, now, False))
    lines = []
    for s, path, module, now, already in found:
        if already:
            lines.append(f"scale {path}.{s.attr}: {now:.6g}, µP's already")
            continue
        setattr(module, s.attr, now * r ** -float(s.exponent) * s.factor)
        tuned = f" x{s.factor:.4g} (tuned)" if s.factor != 1.0 else ""
        lines.append(
            f"scale {path}.{s.attr}: {now:.6g} -> {getattr(module, s.attr):.6g} "
            f"((n/base)^{-s.exponent}{tuned} on {s.scale}'s logits: the attention's own "
            "scale, held by the model, not in its state_dict)"
        )
    return lines
