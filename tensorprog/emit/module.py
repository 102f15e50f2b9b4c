"""Emit a plain PyTorch module from a program and its parametrization.

The emitted file imports only torch and keeps the width bookkeeping in module-level data and plain
Python floats, never on parameters: deepcopy, state_dict round trips and wrappers see an ordinary
``torch.nn.Module``. With ratio = width / base_width, each param is used in the forward pass as
``ratio^-a · W``, initialised N(0, (base_std · ratio^-b)²) and trained with ``lr · ratio^-c``.
At width == base_width every factor is 1, so µP and SP modules coincide there (tune at the base,
then transfer). A program with a depth L scales the same way in depth_ratio = depth / base_depth
with its depth exponents (a_L, b_L, c_L): multiplier depth_ratio^-a_L, init std depth_ratio^-b_L,
LR depth_ratio^-c_L, every factor 1 at the base depth. Output is deterministic byte for byte.
The optimizer part of the file (param_groups, make_optimizer, Lion, MuonWithAdamW) is
codegen_optim.py's.
"""

from __future__ import annotations

import builtins
import json
import keyword
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from ..engine.derive import derive
from ..engine.exponents import ABC, INF, ZERO, Exp
from ..engine.optimizers import OPTIMIZERS, Optimizer
from ..engine.parametrization import preset, zero_init
from ..engine.rules import fan_dims
from ..errors import CodegenError, Span, UsageError
from ..ir.functions import MUL
from ..ir.program import Block, Dot, LinComb, MatMul, Mix, Nonlin, Program, Stream
from .optim import optimizer_code

_TORCH_FN = {"relu": "torch.relu", "gelu": "torch.nn.functional.gelu", "tanh": "torch.tanh",
             "sigmoid": "torch.sigmoid", "silu": "torch.nn.functional.silu"}

# Every attribute a torch.nn.Module has (its methods, and what its __init__ sets): a param of
# that name would replace or be refused by the module's own machinery. Pinned here, not read
# from torch at emit time, so that the emitted text does not depend on the torch version; a test
# checks that it covers the installed torch.
NN_MODULE_ATTRS = frozenset({
    "T_destination", "_apply", "_backward_hooks", "_backward_pre_hooks", "_buffers",
    "_call_impl", "_compiled_call_impl", "_forward_hooks", "_forward_hooks_always_called",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
    "_get_backward_hooks", "_get_backward_pre_hooks", "_get_name", "_is_full_backward_hook",
    "_load_from_state_dict", "_load_state_dict_post_hooks", "_load_state_dict_pre_hooks",
    "_maybe_warn_non_full_backward_hook", "_modules", "_named_members",
    "_non_persistent_buffers_set", "_parameters", "_register_load_state_dict_pre_hook",
    "_register_state_dict_hook", "_replicate_for_data_parallel", "_save_to_state_dict",
    "_slow_forward", "_state_dict_hooks", "_state_dict_pre_hooks", "_version",
    "_wrapped_call_impl", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
    "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
    "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
    "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad",
})
# what the emitted Model defines on itself besides the program's params
_MODEL_ATTRS = {"width", "base_width", "reset_parameters", "vectors", "example_inputs", "depth",
                "base_depth", "_tensors", "_base_std"}
# the emitted module's own globals (helpers are added by name below)
_GLOBALS = {"math", "operator", "torch", "BASE_WIDTH", "BASE_DEPTH", "SCALING", "SCALES",
            "WIDTH_RULES", "Model", "param_groups", "make_optimizer", "_check_widths",
            "DECAY_MODES", "MUON", "Lion", "MuonWithAdamW",
            "_check_depth", "_base_stds", "_overrides", "_positive_ints"}


class _Namespace:
    """Python identifiers for program names, none clashing with a keyword, a reserved name or
    another name drawn here (torch.fx's ``_Namespace``). A name that is already safe is kept;
    a clashing one gets ``_`` appended until it is free (``class`` -> ``class_``), and a name
    that is no identifier at all has its other characters replaced. Deterministic: the same
    names asked in the same order give the same answers."""

    def __init__(self, reserved) -> None:
        self._taken = set(reserved)

    def create(self, name: str) -> str:
        base = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
        if base[0].isdigit():
            base = "_" + base
        if base.startswith("__"):
            # Python reserves dunders and mangles other "__" names inside a class body, and
            # appending "_" keeps a dunder one: keep one underscore each side instead
            base = f"_{base.strip('_') or 'v'}_"
        candidate = base
        while candidate in self._taken or keyword.iskeyword(candidate):
            candidate += "_"
        self._taken.add(candidate)
        return candidate


@dataclass(frozen=True)
class Emitted:
    source: str
    imports: tuple[str, ...] = ("math", "operator", "torch")


PARAMS = ("mup", "sp", "ntp", "mup-width")


def parametrization(program: Program, optimizer: Optimizer, param: str = "mup",
                    convention: str = "table3",
                    readout_zero_init: bool = False,
                    zero: tuple[str, ...] = ()) -> tuple[dict[str, ABC], str]:
    """The (a, b, c) of every used param for ``param``, and a label for the module's header.

    ``mup`` is the derived µP in ``convention``; ``sp`` and ``ntp`` are the presets at a
    constant LR. ``readout_zero_init`` zero-initialises the params whose derived role is output,
    ``zero`` the named ones (e.g. the query weights).
    """
    if param in ("mup", "mup-width"):  # the same width exponents; depth_parametrization differs
        abc = derive(program, optimizer, convention).abc
        label = f"µP ({convention} convention) for {optimizer.name}"
        if param == "mup-width":
            label = f"width-only {label}"
    elif param in PARAMS:
        abc = preset(param, program, optimizer)
        label = f"{param.upper()} (constant LR) for {optimizer.name}"
    else:
        raise UsageError(f"unknown parametrization {param!r}", help=f"choose one of {PARAMS}")
    abc = zero_init(program, abc, zero, readout_zero_init)
    if readout_zero_init:
        label += ", readout zero-initialised"
    if zero:
        label += f", {', '.join(zero)} zero-initialised"
    return abc, label


class Parametrization(NamedTuple):
    """What ``emit`` needs: the width exponents, the depth exponents (empty: no depth scaling),
    the label, and Adam's ε exponents per param as (in n, in L) (empty: a fixed ε)."""

    abc: dict[str, ABC]
    depth_abc: dict[str, ABC]
    label: str
    eps: dict[str, tuple[Exp, Exp]]


def full_parametrization(program: Program, optimizer: Optimizer, param: str = "mup",
                         convention: str = "table3", readout_zero_init: bool = False,
                         zero: tuple[str, ...] = (), depth_convention: str = "completep",
                         ) -> Parametrization:
    """``parametrization``, with the depth exponents and Adam's ε exponents.

    ``mup`` takes the derived depth exponents (in ``depth_convention``) where the program repeats
    a block over its depth and the depth pass derives them; ``mup-width`` is the same width µP
    with no depth scaling, the baseline that depth transfer is measured against; the presets have
    no depth form. Under Adam and AdamW, ``mup`` and ``mup-width`` scale ε with each param's
    gradient entries (derive's eps columns; in L only with the depth exponents); the presets keep
    it fixed, as their usual recipes do.
    """
    abc, label = parametrization(program, optimizer, param, convention, readout_zero_init, zero)
    if param not in ("mup", "mup-width"):
        return Parametrization(abc, {}, label + (", no depth scaling" if program.depth else ""),
                               {})
    d = derive(program, optimizer, convention, depth_convention)
    by_depth = param == "mup" and d.depth is not None
    depth_abc = d.depth.abc if by_depth else {}
    eps = {p: (e, d.eps_depth.get(p, ZERO) if by_depth else ZERO) for p, e in d.eps.items()}
    if program.depth is not None:  # derive says why there is none (refused, or no repeat)
        label += f", {depth_convention} in depth {program.depth.name}" if by_depth else \
            ", no depth scaling"
    return Parametrization(abc, depth_abc, label, eps)


def module_name(*parts: str) -> str:
    """A module name for emitted source run in-process: a plain identifier whatever the program
    file was called."""
    return _Namespace(()).create("_".join(parts))


def _doc(text: str) -> str:
    """``text`` as it may stand inside a triple-quoted docstring with its value unchanged:
    backslashes and double quotes escaped, unprintable characters written as escapes, so that no
    file or program name can end the string (or the line) early."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])  # \n, \x1b, \u2028, ...
    return "".join(out)


def _command_lines(command: str | Sequence[Sequence[str]]) -> list[str]:
    """The "Regenerate with" lines: a string as it is, or lines of argv words shell-quoted and
    joined by continuation backslashes (which the docstring keeps as line continuations)."""
    if isinstance(command, str):
        return [_doc(command)]
    lines = [_doc(shlex.join(words)) for words in command]
    continued = [line + " \\" for line in lines[:-1]] + lines[-1:]
    return continued[:1] + [f"    {line}" for line in continued[1:]]


def _str(text: str) -> str:
    """A double-quoted Python string literal (JSON's escapes are Python's too)."""
    return json.dumps(text)


def _finite(x: Fraction, what: str, span: Span | None) -> float:
    """``x`` as the float the module computes with; refuse what a float cannot hold."""
    try:
        f = float(x)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or (f == 0 and x != 0):
        raise CodegenError(f"{what} = {x} is {'too large' if f else 'too small'} for a float "
                           "in the emitted module", span,
                           help="use a value between 1e-300 and 1e300 in size")
    return f


def _num(x: Fraction, what: str = "the constant", span: Span | None = None) -> str:
    """An exact rational as Python source: a float literal when the float is exact (0.5, 3.0),
    ``p / q`` for a short fraction (1 / 3), else the nearest float's shortest repr."""
    f = _finite(x, what, span)
    if f == x or len(str(x.numerator)) + len(str(x.denominator)) > 12:
        return repr(f)
    return f"{x.numerator} / {x.denominator}"


def _dim_expr(program: Program, dim: str, width: str = "width") -> str:
    """A dim's size in Python; a fraction of the width uses //, exact once the width passed
    _check_widths."""
    d = program.dim_table[dim]
    if not d.infinite:
        return str(d.size)
    m = d.mult
    if m == 1:
        return width
    if m.denominator == 1:
        return f"{m.numerator} * {width}"
    if m.numerator == 1:
        return f"{width} // {m.denominator}"
    return f"{width} * {m.numerator} // {m.denominator}"


def _exp(e, param: str, span: Span | None) -> str:
    if e is INF:
        return "math.inf"
    return _num(Fraction(int(e.p), int(e.q)), f"the exponent of {param}", span)


def _sums(program: Program, param: str) -> list[tuple[Fraction, int]]:
    """The nonzero coordinates that reach each sum the param takes part in, as (k, p): k *
    base_width**p. A matrix used as W @ x sums over its last axis, W.T @ x over its first;
    a lookup of a one-hot input (``tokens``, ``positions``) has one nonzero coordinate
    whatever the vocabulary. A kernel's kh x kw window counts too."""
    shape = program.param_table[param].shape
    kinds = {i.name: i.kind for i in program.inputs}
    sums = []
    for u in program.uses(param):
        if not isinstance(u, MatMul) or len(shape) < 2:
            continue
        if kinds.get(u.arg) in ("tokens", "positions"):
            sums.append((Fraction(1), 0))
            continue
        d = program.dim_table[shape[0] if u.transposed else shape[1]]
        k, p = (d.mult, 1) if d.infinite else (Fraction(d.size), 0)
        for w in shape[2:]:
            k *= program.dim_table[w].size
        sums.append((k, p))
    return sums


def _fan_in(program: Program, param: str) -> tuple[Fraction, int]:
    """A param's fan-in as (k, p): k * base_width**p at the base width, whose -1/2 power is the
    param's base std: the largest number of nonzero coordinates that reach one of its sums,
    so none of them starts above unit size at the base. A lookup of a one-hot input gets 1
    (base std 1, as a bias fed the constant 1), not the vocabulary: 1/sqrt(vocab) starts a
    GPT-2-sized embedding at 0.0045. A tied embedding is also summed over the width by its
    transposed use, so it starts at 1/sqrt(width) there: its readout then starts at unit
    size with a tie multiplier of 1 at the base, as an untied readout does. A vector (bias,
    gain, readout vector) keeps its fan-in from ``fan_dims``."""
    sums = _sums(program, param)
    if sums:
        base = program.width.base
        k, power = max(sums, key=lambda s: (s[0] * base ** s[1], s[1]))
    else:
        fan_in, _ = fan_dims(program, param)
        k, power = Fraction(1), 0
        if fan_in is not None:
            d = program.dim_table[fan_in]
            k, power = (d.mult, 1) if d.infinite else (Fraction(d.size), 0)
        for w in program.param_table[param].shape[2:]:
            k *= program.dim_table[w].size
    _finite(k, f"the fan-in of {param}", program.param_table[param].span)
    return k, power


def _width_rules(program: Program) -> list[tuple[str, int]]:
    """(rule, step) for every dim that is a fraction of the width: it is a whole number
    exactly when the width is a multiple of step (the fraction's denominator). Heads of a
    per-head dot are dims too, so a head dim that must divide the width is here."""
    w = program.width.name
    rules = []
    for d in program.dim_table.values():
        if d.infinite and d.mult.denominator != 1:
            m = d.mult
            rule = (f"{w} / {m.denominator}" if m.numerator == 1
                    else f"{m.numerator} * {w} / {m.denominator}")
            name = f"the head count {d.name}" if "/" in d.name else f"dim {d.name}"
            rules.append((f"{name} = {rule}", m.denominator))
    return rules

_NORMS = {"layernorm": "torch.nn.functional.layer_norm({x}, {x}.shape[-1:])",
          "avgpool": "_avgpool({x})",
          "global_pool": "{x}.mean(dim=(-3, -2))",
          "rmsnorm": "{x} * torch.rsqrt({x}.pow(2).mean(-1, keepdim=True) + 1e-6)",
          "softmax": "torch.softmax({x}, dim=-1)",
          "causal_softmax": "_causal_softmax({x})"}

# module-level helpers, emitted only when an instruction needs them
_HELPERS = {
    "_heads_dot": [
        "def _heads_dot(q, k, head_dim):",
        '    """Per head and (query, key) token pair: (..., heads, tokens, tokens)."""',
        "    q = q.unflatten(-1, (-1, head_dim))",
        "    k = k.unflatten(-1, (-1, head_dim))",
        '    return torch.einsum("...thd,...shd->...hts", q, k)'],
    "_mix": [
        "def _mix(p, v):",
        '    """Per head, out_t = sum_s p_ts v_s; heads are v\'s dim split as p has them."""',
        "    v = v.unflatten(-1, (p.shape[-3], -1))",
        '    return torch.einsum("...hts,...shd->...thd", p, v).flatten(-2)'],
    "_conv": [
        "def _conv(x, kernel):",
        '    """A stride-1, same-padded convolution of a channels-last image (..., h, w, c)."""',
        '    y = torch.nn.functional.conv2d(x.movedim(-1, -3), kernel, padding="same")',
        "    return y.movedim(-3, -1)"],
    "_avgpool": [
        "def _avgpool(x):",
        '    """2 x 2 average pooling of a channels-last image."""',
        "    return torch.nn.functional.avg_pool2d(x.movedim(-1, -3), 2).movedim(-3, -1)"],
    "_attention": [
        "def _attention(q, k, v, head_dim, scale, is_causal):",
        '    """mix(softmax(scale * dot(q, k, head_dim)), v) per head, softmax over the key tokens',
        "    (is_causal: each query sees itself and earlier tokens only), in torch's fused kernels",
        '    (flash, memory-efficient): no (tokens, tokens) tensor is saved for backward."""',
        "    q = q.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    k = k.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    v = v.unflatten(-1, (q.shape[-3], -1)).transpose(-3, -2)",
        "    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,",
        "                                                         is_causal=is_causal)",
        "    return y.transpose(-3, -2).flatten(-2)"],
    "_causal_softmax": [
        "def _causal_softmax(s):",
        '    """Softmax over key tokens, each query seeing itself and earlier tokens only."""',
        "    t = s.shape[-1]",
        "    future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)",
        '    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1)'],
}
_GLOBALS |= set(_HELPERS)

# always emitted: the check that Model(width) has a network at that width
_CHECK_WIDTHS = [
    "def _positive_ints(**values):",
    '    """The values as ints; ValueError naming the first that is not a positive integer."""',
    "    for name, value in values.items():",
    '        if isinstance(value, bool) or not hasattr(type(value), "__index__") or value < 1:',
    '            raise ValueError(f"{name} must be a positive integer, not {value!r}")',
    "    return tuple(operator.index(value) for value in values.values())",
    "",
    "",
    "def _check_widths(width, base_width):",
    '    """width and base_width as ints; ValueError unless both are positive integers and every',
    '    dim that is a fraction of the width is a whole number (WIDTH_RULES) at both: the base',
    '    model is the one tuned, so it must exist too."""',
    "    width, base_width = _positive_ints(width=width, base_width=base_width)",
    "    step = math.lcm(*(s for _, s in WIDTH_RULES))",
    '    for name, value in (("width", width), ("base_width", base_width)):',
    "        for rule, s in WIDTH_RULES:",
    "            if value % s:",
    "                near = [w for w in (value // step * step, (value // step + 1) * step) if w]",
    '                raise ValueError(f"{name} {value}: {rule} must be a whole number; use a "',
    '                                 f"multiple of {step}: {\' or \'.join(map(str, near))}")',
    "    return width, base_width"]


# always emitted: the base constants a user tunes at the base width, set from Python
_OVERRIDES = [
    "def _overrides(what, given, known, positive=True):",
    '    """given (name -> value) as floats; ValueError for a name not in known or a value that',
    '    is not a finite number (a positive one, with positive)."""',
    "    given = dict(given or {})",
    "    for name, value in given.items():",
    "        if name not in known:",
    '            raise ValueError(f"{what}: no entry {name!r}; choose from "',
    '                             f"{\', \'.join(sorted(known)) or \'nothing here\'}")',
    "        if (isinstance(value, bool) or not isinstance(value, (int, float))",
    "                or not math.isfinite(value) or (positive and value <= 0)):",
    '            kind = "positive" if positive else "finite"',
    '            raise ValueError(f"{what}[{name!r}] must be a {kind} number, not {value!r}")',
    "    return {name: float(value) for name, value in given.items()}",
    "",
    "",
    "def _base_stds(base_width, init_std):",
    '    """The std at the base width of every normally initialised param: init_std\'s value for',
    "    its name or its block's, else 1/sqrt(fan-in at base_width), so a new base width gets",
    '    its own."""',
    "    normal = {name for name, spec in SCALING.items() if \"init\" not in spec",
    "              and spec[\"b\"] != math.inf}",
    "    blocks = {name.partition(\".\")[0] for name in normal if \"block\" in SCALING[name]}",
    "    given = _overrides(\"init_std\", init_std, normal | blocks)",
    "    stds = {}",
    "    for name in normal:",
    "        k, p = SCALING[name][\"fan_in\"]",
    "        block = name.partition(\".\")[0] if \"block\" in SCALING[name] else None",
    "        stds[name] = given.get(name, given.get(block, (k * base_width ** p) ** -0.5))",
    "    return stds"]


def _mult_override_lines(scales: bool, multiplied: list[str]) -> list[str]:
    """Model.__init__'s ``mult``: every base multiplier a user tunes at the base width, a scale's
    (its declared value by default) and a param's forward multiplier (1 by default; the mup
    convention's output multiplier, TP5's alpha_output). A block's params keep theirs."""
    names = "".join(f", {_str(n)}" for n in multiplied)
    known = f"(*SCALES{names})" if scales and multiplied else (
        "SCALES" if scales else f"({names[2:]},)" if multiplied else "()")
    given = f"_overrides(\"mult\", mult, {known}, positive=False)"
    if scales:
        return ["        mult = {**{name: spec[\"base\"] for name, spec in SCALES.items()},",
                f"                **{given}}}"]
    if multiplied:
        return [f"        mult = {given}"]
    return [f"        {given}  # no scale to set"]


_CHECK_DEPTH = [
    "def _check_depth(depth, base_depth):",
    '    """depth and base_depth as ints; ValueError unless both are positive integers."""',
    "    return _positive_ints(depth=depth, base_depth=base_depth)"]


class _Emitter:
    """One method per IR class turns an instruction into a Python expression (the rule table
    of the codegen stage); ``ref`` renders an operand with its multiplier. ``attrs`` and
    ``local`` map program names to the Model's attributes and to ``vectors``' local names."""

    def __init__(self, program: Program, abc: dict[str, ABC], attrs: dict[str, str],
                 mults: dict[str, str], local: dict[str, str]):
        self.program, self.abc = program, abc
        self.attrs, self.mults, self.local = attrs, mults, local
        self.helpers: set[str] = set()
        self.kinds = {i.name: i.kind for i in program.inputs}

    def ref(self, name: str) -> str:
        p = self.program.param_table.get(name)
        if p is not None and p.is_scale:
            return f"self.{self.mults[name]}"
        if p is not None:
            w = f"self.{self.attrs[name]}"
            return f"{w} * self.{self.mults[name]}" if name in self.mults else w
        return self.local[name]

    def _is_scale(self, name: str) -> bool:
        p = self.program.param_table.get(name)
        return p is not None and p.is_scale

    def dim(self, name: str) -> str:
        return _dim_expr(self.program, name, "self.width")

    def _times_mult(self, weight: str) -> str:
        return f" * self.{self.mults[weight]}" if weight in self.mults else ""

    def weight(self, name: str) -> str:
        return f"self.{self.attrs[name]}"

    def MatMul(self, ins: MatMul) -> str:
        w = self.weight(ins.weight) + (".t()" if ins.transposed else "")
        if len(self.program.param_table[ins.weight].shape) == 4:
            self.helpers.add("_conv")
            rhs = f"_conv({self.ref(ins.arg)}, {w})"
        elif self.kinds.get(ins.arg) in ("tokens", "positions"):  # one-hot input: a lookup
            rhs = f"torch.nn.functional.embedding({self.ref(ins.arg)}, {w}.t())"
        else:
            rhs = f"torch.nn.functional.linear({self.ref(ins.arg)}, {w})"
        return rhs + self._times_mult(ins.weight)

    def LinComb(self, ins: LinComb) -> str:
        parts = []
        for k, (c, v) in enumerate(ins.terms):
            mag = _num(abs(c), f"the coefficient of {v}", ins.span)
            term = self.ref(v) if abs(c) == 1 else f"{mag} * ({self.ref(v)})"
            parts.append(("-" if c < 0 else "") + term if k == 0 else
                         f"{'-' if c < 0 else '+'} {term}")
        return " ".join(parts)

    def Nonlin(self, ins: Nonlin) -> str:
        if ins.fn == MUL:
            # a scalar (a whole-dim dot: one value per example) scales every coordinate of a
            # vector, so it needs a trailing axis; a scale is a plain float and needs none
            dims = self.program.value_dims
            vector = any(dims.get(a) is not None for a in ins.args)
            return " * ".join(
                f"({self.ref(a)}).unsqueeze(-1)"
                if vector and dims.get(a) is None and not self._is_scale(a) else f"({self.ref(a)})"
                for a in ins.args)
        x = self.ref(ins.args[0])
        if ins.fn == "identity":
            return x
        if ins.fn in _NORMS:
            if ins.fn in ("causal_softmax", "avgpool"):
                self.helpers.add(f"_{ins.fn}")
            return _NORMS[ins.fn].format(x=x)
        return f"{_TORCH_FN[ins.fn]}({x})"

    def Dot(self, ins: Dot) -> str:
        if ins.over is None:
            return f"(({self.ref(ins.left)}) * ({self.ref(ins.right)})).sum(-1)"
        self.helpers.add("_heads_dot")
        return f"_heads_dot({self.ref(ins.left)}, {self.ref(ins.right)}, {self.dim(ins.over)})"

    def Mix(self, ins: Mix) -> str:
        self.helpers.add("_mix")
        return f"_mix({self.ref(ins.weights)}, {self.ref(ins.values)})"

    def fused(self, f: _Attention | _Norm) -> str:
        if isinstance(f, _Norm):  # the explicit path's eps: layer_norm's default
            x = self.ref(f.x)
            bias = f", {self.ref(f.bias)}" if f.bias else ""
            return f"torch.nn.functional.layer_norm({x}, {x}.shape[-1:], {self.ref(f.gain)}{bias})"
        self.helpers.add("_attention")
        scale = " * ".join(self.ref(s) for s in f.scales) or "1.0"
        return (f"_attention({self.ref(f.q)}, {self.ref(f.k)}, {self.ref(f.values)}, "
                f"{self.dim(f.over)}, {scale}, {f.causal})")

    def lines(self, body: Sequence, indent: str = "        ",
              fused: dict[str, _Attention | _Norm] | None = None) -> list[str]:
        """Assignments computing ``body`` in order; with ``fused`` (from ``_fusions``), each
        fused instruction is one call and its chain is not computed."""
        fused = fused or {}
        skip = {v for f in fused.values() for v in f.chain}
        out = []
        for ins in body:
            if ins.out in skip:
                continue
            expr = (self.fused(fused[ins.out]) if ins.out in fused
                    else getattr(self, type(ins).__name__)(ins))
            out.append(f"{indent}{self.local[ins.out]} = {expr}")
        return out


class _BlockEmitter(_Emitter):
    """The emitter inside one repetition's module: its own params are its attributes, and what it
    reads from outside (values, shared params with their multipliers, scales) comes in as
    arguments of its forward."""

    def __init__(self, program: Program, abc: dict[str, ABC], attrs: dict[str, str],
                 mults: dict[str, str], local: dict[str, str], own: set[str]):
        super().__init__(program, abc, attrs, mults, local)
        self.own = own

    def ref(self, name: str) -> str:
        if name in self.own:
            return super().ref(name)
        return self.local[name]

    def weight(self, name: str) -> str:
        return super().weight(name) if name in self.own else self.local[name]

    def _times_mult(self, weight: str) -> str:
        return super()._times_mult(weight) if weight in self.own else ""


def _computable(program: Program, abc: dict[str, ABC]) -> list:
    """The instructions the module computes: those whose params all have an (a, b, c) and whose
    operands are computed. A param the engine left out (it reaches no output, and derive warned)
    takes the values built from it along; every output is still computed."""
    available = {i.name for i in program.inputs} | set(abc)
    body = []
    for ins in program.body:
        needs = ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ())
        if all(n in available for n in needs):
            body.append(ins)
            available.add(ins.out)
    missing = [o for o in program.outputs if o not in available]
    if missing:
        absent = [p.name for p in program.params if p.name not in abc]
        raise CodegenError(f"output {missing[0]} needs a param with no (a, b, c): "
                           f"{', '.join(absent)}",
                           help="give every param an output depends on its exponents")
    return body


@dataclass(frozen=True)
class _Attention:
    """``mix(softmax(scales * dot(q, k, over)), values)``, which ``forward`` computes in one
    ``scaled_dot_product_attention`` call; ``chain`` are the values it never materialises."""

    q: str
    k: str
    values: str
    over: str
    scales: tuple[str, ...]
    causal: bool
    chain: tuple[str, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.q, self.k, self.values, *self.scales)


@dataclass(frozen=True)
class _Norm:
    """``gain * layernorm(x) [+ bias]``, which ``forward`` computes in one ``layer_norm`` call
    (as ``nn.LayerNorm`` does: one op saving its input, not three); ``chain`` as above."""

    x: str
    gain: str
    bias: str | None
    chain: tuple[str, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.x, self.gain) + ((self.bias,) if self.bias else ())


def _fusions(program: Program, body: Sequence) -> dict[str, _Attention | _Norm]:
    """The instructions ``forward`` computes fused, by output: attention (a Mix) and a
    LayerNorm's gain and bias (the sum, or the product where no bias is added). Fused only
    where every value of the chain is read by nothing else (``vectors`` still computes and
    returns them all), so the fused call is the same function."""
    producer = {ins.out: ins for ins in body}
    kept = set(program.outputs) | {b.ret for b in program.blocks}
    dims = program.value_dims

    def only_feeds(value: str, user) -> bool:
        return value not in kept and program.uses(value) == [user]

    def vector_param(name: str, like: str) -> bool:
        """A trained vector param of ``like``'s dim: a gain or bias layer_norm can take."""
        p = program.param_table.get(name)
        return (p is not None and not p.is_scale and len(p.shape) == 1
                and dims.get(like) is not None and p.shape[0] == dims[like])

    def norm(product) -> tuple[str, str, str] | None:
        """(x, gain, layernorm's output) where ``product`` is gain * layernorm(x)."""
        if not (isinstance(product, Nonlin) and product.fn == MUL and len(product.args) == 2):
            return None
        for ln_out, gain in (product.args, product.args[::-1]):
            ln = producer.get(ln_out)
            if (isinstance(ln, Nonlin) and ln.fn == "layernorm" and vector_param(gain, ln.out)
                    and only_feeds(ln.out, product)):
                return ln.args[0], gain, ln.out
        return None

    found: dict[str, _Attention | _Norm] = {}
    for ins in body:
        if isinstance(ins, LinComb) and len(ins.terms) == 2 and all(
                c == 1 for c, _ in ins.terms):
            for (_, prod), (_, bias) in (ins.terms, ins.terms[::-1]):
                product = producer.get(prod)
                ln = norm(product)
                if (ln and prod != bias and vector_param(bias, prod)
                        and only_feeds(prod, ins)):
                    found[ins.out] = _Norm(ln[0], ln[1], bias, (prod, ln[2]))
                    break
            continue
        if isinstance(ins, Nonlin):
            ln = norm(ins)
            if ln:
                found[ins.out] = _Norm(ln[0], ln[1], None, (ln[2],))
            continue
        if not isinstance(ins, Mix):
            continue
        mix = ins
        soft = producer.get(mix.weights)
        if not (isinstance(soft, Nonlin) and soft.fn in ("softmax", "causal_softmax")
                and only_feeds(soft.out, mix)):
            continue
        logits = producer.get(soft.args[0])
        scales: tuple[str, ...] = ()
        dot = logits
        if isinstance(logits, Nonlin) and logits.fn == MUL and only_feeds(logits.out, soft):
            scaled = [a for a in logits.args if program.param_table.get(a) is None
                      or not program.param_table[a].is_scale]
            if len(scaled) != 1:
                continue
            scales = tuple(a for a in logits.args if a not in scaled)
            dot = producer.get(scaled[0])
        if not (isinstance(dot, Dot) and dot.over is not None and only_feeds(
                dot.out, logits if scales else soft)):
            continue
        chain = tuple(dict.fromkeys((soft.out, logits.out, dot.out)))
        found[mix.out] = _Attention(dot.left, dot.right, mix.values, dot.over, scales,
                                    soft.fn == "causal_softmax", chain)
    # a product fused alone whose sum with a bias is fused too is part of that chain
    inner = {v for f in found.values() for v in f.chain}
    return {out: f for out, f in found.items() if out not in inner}


def _needed(body: Sequence, results: Sequence[str], fused: dict[str, _Attention | _Norm],
            mentions) -> set[str]:
    """The outputs of ``body`` that ``results`` depend on, reading a fused instruction's
    ``reads`` in place of its chain; ``mentions(ins)`` names what an instruction reads."""
    need = set(results)
    for ins in reversed(body):
        if ins.out not in need:
            continue
        f = fused.get(ins.out)
        need.update(f.reads if f else mentions(ins))
    return need


def _check_base_width(program: Program, base_width) -> int:
    if base_width is None:
        return program.width.base
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 1:
        raise UsageError(f"the base width must be a positive integer, not {base_width!r}")
    problem = program.width_problem(base_width)
    if problem:
        raise UsageError(f"base width {base_width}: {problem}",
                         help="choose a base width the dims divide")
    return base_width


def emit(program: Program, abc: dict[str, ABC], *, optimizer: str | Optimizer, label: str,
         command: str | Sequence[Sequence[str]], base_width: int | None = None,
         depth_abc: dict[str, ABC] | None = None,
         eps: dict[str, tuple[Exp, Exp]] | None = None) -> Emitted:
    """The module's source for ``program`` under ``abc`` (one entry per used param), and, for a
    program with a depth, ``depth_abc``'s exponents in the depth (a param absent: all 0). With
    ``eps`` (param -> Adam's ε exponents in n and L), ``param_groups`` gives each group its ε.

    ``command`` is shown under "Regenerate with": a line of text, or lines of argv words (shell
    quoted here). Every name from the program or the caller reaches the source as a string
    literal, an escaped docstring, or an identifier drawn from a namespace that cannot clash.
    """
    base = _check_base_width(program, base_width)
    if isinstance(optimizer, str):
        optimizer = OPTIMIZERS[optimizer]
    body = _computable(program, abc)
    depth = program.depth is not None
    dabc = {p: depth_abc.get(p, ABC(0, 0, 0)) if depth_abc else ABC(0, 0, 0) for p in abc}
    used = [p for p in program.params if p.name in abc]
    params = [p for p in used if not p.is_scale]
    scales = [p for p in used if p.is_scale]
    constant = any(p.base is not None for p in params)
    owned = program.owner  # a block's own params live in its repetitions' modules
    multiplied = [p for p in params if (abc[p.name].a != 0 or dabc[p.name].a != 0)
                  and p.name not in owned]
    blocks = [b for b in program.blocks if b.result in {ins.out for ins in body}]

    names = _Namespace(NN_MODULE_ATTRS | _MODEL_ATTRS)
    attrs = {p.name: names.create(p.name) for p in params  # params first: they keep their names
             if p.name not in owned}
    block_attrs = {b.name: names.create(b.name) for b in blocks}
    mults = {p.name: names.create(f"mult_{p.name}") for p in multiplied + scales}
    renamed = any(attrs[p] != p for p in attrs)
    # the loop variables of vectors and forward are taken too
    local_names = _Namespace(set(dir(builtins)) | _GLOBALS
                             | {"self", "values", "inner", "block", "i"})
    local = {i.name: local_names.create(i.name) for i in program.inputs}
    inner = {v for b in blocks for v in b.values}
    local.update({ins.out: local_names.create(ins.out) for ins in body if ins.out not in inner})
    classes = _Namespace(set(dir(builtins)) | _GLOBALS | set(_HELPERS))
    block_code = {b.name: _emit_block(program, abc, dabc, b, classes) for b in blocks}

    name = _doc(program.name)
    lines = [
        f'"""{name}: {_doc(label)}, generated by tensorprog.',
        "",
        "Regenerate with:",
        *(f"    {line}" for line in _command_lines(command)),
        "With ratio = width / base_width, each param W is used as ratio**-a * W, initialised",
        "N(0, (base_std * ratio**-b)**2) (zero where b is inf) and trained with lr * ratio**-c.",
        "base_std is Model(init_std=...)'s value for W (or its block), else fan_in**-0.5, where",
        "fan_in (k, p) is k * base_width**p, the most nonzero coordinates one of W's sums adds",
        "(1 for a lookup of a one-hot input).",
        *(["A param with an \"init\" value starts at init * ratio**-b instead."] if constant
          else []),
        *(["With depth_ratio = depth / base_depth, these factors are multiplied by "
           "depth_ratio**-aL,",
           "depth_ratio**-bL and depth_ratio**-cL, the exponents in the depth (1 at the base "
           "depth)."] if depth else []),
        *(["Adam's eps is eps * ratio**-eps" + (" * depth_ratio**-epsL" if depth else "")
           + " per param (param_groups' eps at the base),", "so that it stays below the "
           "param's gradient entries, which scale so."] if eps else []),
        *(["Each scale s is a plain float multiplier, base * ratio**-a, never trained; "
           "Model(mult=...)", "sets its base."] if scales else []),
        *(["A param whose name Python or torch.nn.Module reserves is the attribute \"attr\"."]
          if renamed else []),
        '"""',
        "",
        "import math",
        "import operator",
        "",
        "import torch",
        "",
        f"BASE_WIDTH = {base}",
        "SCALING = {",
    ]
    if program.depth is not None:
        lines.insert(lines.index("SCALING = {"), f"BASE_DEPTH = {program.depth.base}")
    for p in params:
        x = abc[p.name]
        shape = "(" + "".join(f"{_str(d)}, " for d in p.shape).rstrip(" ") + ")"
        init = (f', "init": {_finite(p.base, f"the init of {p.name}", p.span)!r}'
                if p.base is not None else "")
        if p.name in owned:
            block = owned[p.name]
            attr = (f', "block": {_str(block_attrs[block])}, '
                    f'"attr": {_str(block_code[block].attrs[p.name])}')
        else:
            attr = f', "attr": {_str(attrs[p.name])}' if attrs[p.name] != p.name else ""
        head = (f"    {_str(p.name)}: {{\"shape\": {shape}, \"a\": {_exp(x.a, p.name, p.span)}, "
                f"\"b\": {_exp(x.b, p.name, p.span)}, \"c\": {_exp(x.c, p.name, p.span)},")
        k, power = _fan_in(program, p.name)
        fan = f"({_num(k, f'the fan-in of {p.name}', p.span)}, {power})"
        tail = f'"fan_in": {fan}{init}{attr}}},'
        parts = [head]
        if depth:
            parts.append(" ".join(f'"{k}L": {_exp(getattr(dabc[p.name], k), p.name, p.span)},'
                                  for k in "abc"))
        if eps and p.name in eps:
            e, eL = eps[p.name]
            parts.append(f'"eps": {_exp(e, p.name, p.span)},'
                         + (f' "epsL": {_exp(eL, p.name, p.span)},' if depth else ""))
        parts.append(tail)
        for part in parts[1:]:  # keep the emitted file within 100 columns
            if len(parts[0]) + 1 + len(part) <= 100:
                parts[0] = f"{parts[0]} {part}"
            else:
                lines.append(parts[0])
                parts[0] = " " * (len(_str(p.name)) + 5) + part
        lines.append(parts[0])
    lines.append("}")
    if scales:
        lines.append("SCALES = {")
        for p in scales:
            value = _finite(p.base if p.base is not None else Fraction(1),
                            f"the scale {p.name}", p.span)
            aL = (f'"aL": {_exp(dabc[p.name].a, p.name, p.span)}, ' if depth else "")
            lines.append(f"    {_str(p.name)}: {{\"a\": {_exp(abc[p.name].a, p.name, p.span)}, "
                         f"{aL}\"base\": {value!r}}},")
        lines.append("}")
    rules = _width_rules(program)
    lines.append("# dims that are a fraction of the width: whole numbers at multiples of the step")
    lines.append("WIDTH_RULES = (" + ("" if rules else ")"))
    for rule, step in rules:
        lines.append(f"    ({_str(rule)}, {step}),")
    if rules:
        lines.append(")")
    for b in blocks:
        lines += ["", "", *block_code[b.name].lines]
    doc = f'    """{name}; parameters are named as in the program'
    if blocks:  # within 100 columns
        more = "; a block's are in its repetitions' modules"
        doc += more if len(doc) + len(more) + 4 <= 100 else f";\n    {more[2:]}"
    lines += ["", "", "class Model(torch.nn.Module):",
              doc + '."""',
              "",
              ("    def __init__(self, width, depth=BASE_DEPTH, *, base_width=BASE_WIDTH, "
               "base_depth=BASE_DEPTH,\n                 init_std=None, mult=None, device=None, "
               "dtype=None):" if depth else
               "    def __init__(self, width, *, base_width=BASE_WIDTH, init_std=None, mult=None,\n"
               "                 device=None, dtype=None):"),
              "        super().__init__()",
              "        width, base_width = _check_widths(width, base_width)",
              *(["        depth, base_depth = _check_depth(depth, base_depth)"] if depth else []),
              "        self.width = width",
              "        self.base_width = base_width",
              *(["        self.depth = depth",
                 "        self.base_depth = base_depth"]
                if depth else []),
              "        self._base_std = _base_stds(base_width, init_std)",
              *_mult_override_lines(bool(scales), [p.name for p in multiplied]),
              "        ratio = width / base_width",
              *(["        depth_ratio = depth / base_depth"] if depth else []),
              "        factory = {\"device\": device, \"dtype\": dtype}"]
    counts = {s.block: s.count for s in program.streams}
    block_lines = []
    for b in blocks:
        make = (f"{block_code[b.name].cls}(width, base_width, "
                + ("depth, base_depth, " if depth else "") + "factory)")
        count = counts[b.name]
        if count is None:
            block_lines.append(f"        self.{block_attrs[b.name]} = {make}")
        else:
            times = "depth" if isinstance(count, str) else str(count)
            block_lines.append(f"        self.{block_attrs[b.name]} = torch.nn.ModuleList(")
            block_lines.append(f"            {make} for _ in range({times}))")
    for p in params:
        if p.name in owned:
            continue
        dims = ", ".join(_dim_expr(program, d) for d in p.shape)
        lines.append(f"        self.{attrs[p.name]} = torch.nn.Parameter(torch.empty({dims}, "
                     "**factory))")
    lines += block_lines
    for p in multiplied:
        lines += _multiplier_lines(f"self.{mults[p.name]}", f"mult.get({_str(p.name)}, 1.0) * ",
                                   f"SCALING[{_str(p.name)}]", depth)
    for p in scales:
        lines += _multiplier_lines(f"self.{mults[p.name]}", f"mult[{_str(p.name)}] * ",
                             f"SCALES[{_str(p.name)}]", depth)
    if not multiplied and not scales:
        lines.append("        del ratio" + (", depth_ratio" if depth else "")
                     + "  # every forward multiplier is 1")
    attr_of = "spec.get(\"attr\", name)" if renamed else "name"
    lines += ["        self.reset_parameters()", "",
              "    def reset_parameters(self, generator=None):",
              "        ratio = self.width / self.base_width",
              *(["        depth_ratio = self.depth / self.base_depth"] if depth else []),
              "        with torch.no_grad():",
              "            for name, spec in SCALING.items():"]
    pad = ""
    if blocks:  # a block's param is one tensor per repetition
        lines.append("                for param in self._tensors(name, spec):")
        pad = "    "
    else:
        lines.append(f"                param = getattr(self, {attr_of})")
    lines += [f"{pad}                if spec[\"b\"] == math.inf"
              + (" or spec[\"bL\"] == math.inf:" if depth else ":"),
              f"{pad}                    param.zero_()"]
    if constant:
        lines += [f"{pad}                elif \"init\" in spec:",
                  f"{pad}                    param.fill_(spec[\"init\"] * ratio ** -spec[\"b\"])"]
        if depth:
            lines.append(f"{pad}                    param.mul_(depth_ratio ** -spec[\"bL\"])")
    lines += [f"{pad}                else:",
              f"{pad}                    std = self._base_std[name] * ratio ** -spec[\"b\"]",
              *([f"{pad}                    std *= depth_ratio ** -spec[\"bL\"]"] if depth else []),
              f"{pad}                    param.normal_(0.0, std, generator=generator)", ""]
    if blocks:
        lines += ["    def _tensors(self, name, spec):",
                  '        """The tensors of one SCALING entry: a block\'s param has one per '
                  'repetition."""',
                  "        if \"block\" not in spec:",
                  f"            return [getattr(self, {attr_of})]",
                  "        blocks = getattr(self, spec[\"block\"])",
                  "        if not isinstance(blocks, torch.nn.ModuleList):",
                  "            blocks = [blocks]",
                  "        return [getattr(block, spec[\"attr\"]) for block in blocks]", ""]
    em = _Emitter(program, abc, attrs, mults, local)
    for code in block_code.values():
        em.helpers |= code.helpers
    device = "next(self.parameters()).device" if params else "None"
    fed = [i for i in program.inputs if i.kind != "positions"]  # positions are built inside
    args = ", ".join(local[i.name] for i in fed)
    computed = {ins.out for ins in body}
    positions = [i for i in program.inputs if i.kind == "positions"]

    def build_positions(names: set[str]) -> list[str]:
        return [f"        {local[i.name]} = torch.arange({em.dim(i.seq)}, device={device})"
                for i in positions if i.name in names]

    outer = [ins for ins in body if ins.out not in inner]
    results_of = {b.result: b for b in blocks}
    streams = {s.block: s for s in program.streams}

    def mentions(ins) -> tuple[str, ...]:
        if isinstance(ins, Stream):  # the block reads what it shares with the program too
            return (ins.init, *block_code[ins.block].shared)
        if ins.out in results_of:  # the last repetition's return value, carried by the stream
            return (streams[results_of[ins.out].name].out,)
        return ins.operands

    def body_lines(instructions: list, fused: dict[str, _Attention | _Norm],
                   record: bool) -> list[str]:
        out = []
        for ins in instructions:
            if isinstance(ins, Stream):
                out += _call_block(program, block_code[ins.block], block_attrs[ins.block], ins,
                                   em, local, record)
            elif ins.out in results_of:
                out.append(f"        {local[ins.out]} = {local[mentions(ins)[0]]}")
            else:
                out += em.lines([ins], fused=fused)
        return out

    # forward computes what the outputs need, attention and LayerNorm fused; vectors computes
    # and names every value, written out, for the check
    fused = _fusions(program, outer)
    need = _needed(outer, program.outputs, fused, mentions)
    results = [local[o] if o in computed else em.ref(o) for o in program.outputs]
    result = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    lines += [f"    def forward(self, {args}):" if args else "    def forward(self):",
              *build_positions(need),
              *body_lines([ins for ins in outer if ins.out in need], fused, record=False),
              f"        return {result}",
              "",
              f"    def vectors(self, {args}):" if args else "    def vectors(self):",
              *(['        """Every named vector of the program, batch axis first; in repetition i',
                  "        of a block, its value u is named block.i.u (a block applied once: "
                  'block.u)."""'] if blocks else
                ['        """Every named vector of the program, batch axis first."""']),
              *build_positions({i.name for i in positions})]
    if blocks:
        lines.append("        values = {}")
    lines += body_lines(outer, {}, record=True)
    if blocks:
        lines.append("        values.update({")
        lines += [f"            {_str(ins.out)}: {local[ins.out]}," for ins in outer
                  if not isinstance(ins, Stream)]
        lines += ["        })", "        return values"]
    else:
        lines.append("        return {")
        lines += [f"            {_str(ins.out)}: {local[ins.out]}," for ins in body]
        lines.append("        }")
    what = ("(batch, seq) token ids or a (batch, dim) tensor" if program.seq else
            "a (batch, height, width, channels) image" if any(i.kind == "image"
                                                             for i in program.inputs)
            else "one (batch_size, dim) tensor")
    lines += ["", "    def example_inputs(self, batch_size, generator=None):",
              f'        """Random valid inputs: {what} per input."""',
              "        like = next(self.parameters())" if params else
              "        like = torch.empty(0)  # no parameters: the default device and dtype",
              "        return ("]
    for i in fed:
        if i.kind == "image":  # channels last, so that matmuls, biases and norms act per pixel
            h, w = (em.dim(d) for d in i.spatial)
            lines.append(f"            torch.randn(batch_size, {h}, {w}, {em.dim(i.dim)}, "
                         "generator=generator,")
            lines.append("                        device=like.device, dtype=like.dtype),")
            continue
        if i.kind == "tokens":
            lines.append(f"            torch.randint(0, {em.dim(i.dim)}, (batch_size, "
                         f"{em.dim(i.seq)}), generator=generator,")
            lines.append("                          device=like.device),")
            continue
        lines.append(f"            torch.randn(batch_size, {em.dim(i.dim)}, generator=generator,")
        lines.append("                        device=like.device, dtype=like.dtype),")
    lines += ["        )", ""]
    for helper in sorted(em.helpers):
        lines += ["", *_HELPERS[helper], ""]
    lines += ["", *_CHECK_WIDTHS, "", "", *_OVERRIDES, ""]
    if depth:
        lines += ["", *_CHECK_DEPTH, ""]
    lines += ["", *optimizer_code(program, optimizer, blocks, attr_of, base, depth,
                                   bool(eps))]
    return Emitted("\n".join(lines))


@dataclass(frozen=True)
class _BlockCode:
    cls: str  # the class of one repetition
    lines: list[str]
    attrs: dict[str, str]  # own param -> its attribute in a repetition's module
    shared: list[str]  # what its forward takes after the argument: program names
    helpers: set[str]


def _emit_block(program: Program, abc: dict[str, ABC], dabc: dict[str, ABC], block: Block,
                classes: _Namespace) -> _BlockCode:
    """One repetition of a block as an nn.Module: its own params, and a forward that computes
    one repetition from its argument and what it shares with the program."""
    own = [program.param_table[p] for p in block.params if p in abc]
    prefix = f"{block.name}."
    names = _Namespace(NN_MODULE_ATTRS | {"width", "base_width", "vectors"})
    attrs = {p.name: names.create(p.name.removeprefix(prefix)) for p in own if not p.is_scale}
    multiplied = [p for p in own if not p.is_scale
                  and (abc[p.name].a != 0 or dabc[p.name].a != 0)]
    depth = program.depth is not None
    mults = {p.name: names.create(f"mult_{p.name.removeprefix(prefix)}") for p in multiplied}
    values = [program.producer[v] for v in block.values]
    mine = {block.arg, *block.values, *(p.name for p in own)}
    shared: list[str] = []
    for ins in values:
        for n in ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ()):
            if n not in mine and n not in shared:
                shared.append(n)
    local_names = _Namespace(set(dir(builtins)) | _GLOBALS | set(_HELPERS)
                             | {"self", "record"})
    local = {block.arg: local_names.create(block.arg.removeprefix(prefix))}
    local.update({n: local_names.create(n) for n in shared})
    local.update({v: local_names.create(v.removeprefix(prefix)) for v in block.values})
    em = _BlockEmitter(program, abc, attrs, mults, local, set(attrs))
    cls = classes.create(f"Block_{block.name}")
    lines = [f"class {cls}(torch.nn.Module):",
             f'    """One repetition of block {block.name}: its own params. What it shares with '
             "the",
             '    program (values, shared params, scales) comes in to forward."""',
             "",
             ("    def __init__(self, width, base_width, depth, base_depth, factory):" if depth
              else "    def __init__(self, width, base_width, factory):"),
             "        super().__init__()",
             "        self.width = width",
             "        self.base_width = base_width"]
    if multiplied:
        lines.append("        ratio = width / base_width")
        if depth:
            lines.append("        depth_ratio = depth / base_depth")
    for p in own:
        if p.is_scale:
            continue
        dims = ", ".join(_dim_expr(program, d) for d in p.shape)
        lines.append(f"        self.{attrs[p.name]} = torch.nn.Parameter(torch.empty({dims}, "
                     "**factory))")
    for p in multiplied:
        lines += _multiplier_lines(f"self.{mults[p.name]}", "", f"SCALING[{_str(p.name)}]", depth)
    args = ", ".join([local[block.arg]] + [local[n] for n in shared])
    ret = local[block.ret] if block.ret in local else em.ref(block.ret)
    fused = _fusions(program, values)
    need = _needed(values, [block.ret], fused, lambda ins: ins.operands)
    lines += ["", f"    def forward(self, {args}, record=False):",
              "        if record:",
              f"            return self.vectors({args})",
              *em.lines([ins for ins in values if ins.out in need], fused=fused),
              f"        return {ret}",
              "",
              f"    def vectors(self, {args}):",
              '        """This repetition\'s output and every value it computes, by name',
              '        (attention written out: its logits and probabilities are values)."""',
              *em.lines(values),
              f"        return {ret}, {{"]
    lines += [f"            {_str(v.removeprefix(prefix))}: {local[v]},"
              for v in (block.arg, *block.values)]
    lines += ["        }"]
    return _BlockCode(cls, lines, attrs, shared, em.helpers)


def _multiplier_lines(attr: str, base: str, spec: str, depth: bool) -> list[str]:
    """A forward multiplier at the module's width, then its depth factor (a plain float)."""
    note = "" if base else "  # a plain float"
    lines = [f"        {attr} = {base}ratio ** -{spec}[\"a\"]{note}"]
    if depth:
        lines.append(f"        {attr} *= depth_ratio ** -{spec}[\"aL\"]")
    return lines


def _call_block(program: Program, code: _BlockCode, attr: str, stream: Stream, em: _Emitter,
                local: dict[str, str], record: bool) -> list[str]:
    """The Model's lines that run a block: over its repetitions, each output feeding the next;
    with ``record`` (in ``vectors``), each repetition's values are recorded as block.i.name."""
    def passed(name: str) -> str:
        if name in program.param_table and len(program.param_table[name].shape) >= 2:
            return em.weight(name) + em._times_mult(name)
        return em.ref(name)

    x = local[stream.out]
    call = ", ".join([x] + [passed(n) for n in code.shared])
    name = stream.block
    lines = [f"        {x} = {em.ref(stream.init)}"]
    if stream.count is None:
        if not record:
            return lines + [f"        {x} = self.{attr}({call})"]
        return lines + [f"        {x}, inner = self.{attr}({call}, record=True)",
                        f'        values.update({{f"{name}.{{k}}": v for k, v in '
                        "inner.items()})"]
    if not record:
        return lines + [f"        for block in self.{attr}:",
                        f"            {x} = block({call})"]
    return lines + [f"        for i, block in enumerate(self.{attr}):",
                    f"            {x}, inner = block({call}, record=True)",
                    f'            values.update({{f"{name}.{{i}}.{{k}}": v for k, v in '
                    "inner.items()})"]
