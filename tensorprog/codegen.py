"""Emit a plain PyTorch module from a program and its parametrization.

The emitted file imports only torch and keeps the width bookkeeping in module-level data and plain
Python floats, never on parameters: deepcopy, state_dict round trips and wrappers see an ordinary
``torch.nn.Module``. With ratio = width / base_width, each param is used in the forward pass as
``ratio^-a · W``, initialised N(0, (base_std · ratio^-b)²) and trained with ``lr · ratio^-c``.
At width == base_width every factor is 1, so µP and SP modules coincide there (tune at the base,
then transfer). Output is deterministic byte for byte.
"""

from __future__ import annotations

import json
import keyword
from dataclasses import dataclass
from fractions import Fraction

from .analysis import ABC
from .derive import derive
from .errors import UsageError
from .exponents import INF
from .ir import MUL, Dot, LinComb, MatMul, Mix, Nonlin, Program
from .optimizers import Optimizer
from .presets import preset, zero_init
from .rules import fan_dims

_TORCH_FN = {"relu": "torch.relu", "gelu": "torch.nn.functional.gelu", "tanh": "torch.tanh",
             "sigmoid": "torch.sigmoid", "silu": "torch.nn.functional.silu"}
# names the emitted methods use for themselves
_RESERVED = {"self", "torch", "math", "width", "base_width", "device", "dtype", "generator",
             "batch_size", "ratio", "out", "values", "name", "spec", "param", "model", "lr"}


@dataclass(frozen=True)
class Emitted:
    source: str
    imports: tuple[str, ...] = ("torch",)


PARAMS = ("mup", "sp", "ntp")


def parametrization(program: Program, optimizer: Optimizer, param: str = "mup",
                    convention: str = "table3",
                    readout_zero_init: bool = False,
                    zero: tuple[str, ...] = ()) -> tuple[dict[str, ABC], str]:
    """The (a, b, c) of every used param for ``param``, and a label for the module's header.

    ``mup`` is the derived µP in ``convention``; ``sp`` and ``ntp`` are the presets at a
    constant LR. ``readout_zero_init`` zero-initialises the params whose derived role is output,
    ``zero`` the named ones (e.g. the query weights).
    """
    if param == "mup":
        abc = derive(program, optimizer, convention).abc
        label = f"µP ({convention} convention) for {optimizer.name}"
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


def _local(name: str) -> str:
    """A Python identifier for a program value that cannot clash with keywords or our names."""
    if keyword.iskeyword(name) or name in _RESERVED or name in dir(__builtins__):
        return f"{name}_"
    return name


def _num(x: Fraction) -> str:
    return repr(float(x))


def _dim_expr(program: Program, dim: str) -> str:
    d = program.dim_table[dim]
    if not d.infinite:
        return str(d.size)
    m = d.mult
    if m == 1:
        return "width"
    if m.denominator == 1:
        return f"{m.numerator} * width"
    return f"width * {m.numerator} // {m.denominator}"


def _exp(e) -> str:
    return "math.inf" if e is INF else repr(float(e))


def _base_std(program: Program, param: str) -> float:
    """1/sqrt(fan-in at the base width); a kernel's fan-in counts its kh x kw window too."""
    fan_in, _ = fan_dims(program, param)
    size = 1 if fan_in is None else program.dim_table[fan_in].size_at(program.width.base)
    for d in program.param_table[param].shape[2:]:
        size *= program.dim_table[d].size
    return 1.0 / size**0.5


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
    "_causal_softmax": [
        "def _causal_softmax(s):",
        '    """Softmax over key tokens, each query seeing itself and earlier tokens only."""',
        "    t = s.shape[-1]",
        "    future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)",
        '    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1)'],
}


class _Emitter:
    """One method per IR class turns an instruction into a Python expression (the rule table
    of the codegen stage); ``ref`` renders an operand with its multiplier."""

    def __init__(self, program: Program, abc: dict[str, ABC]):
        self.program, self.abc = program, abc
        self.helpers: set[str] = set()
        self.kinds = {i.name: i.kind for i in program.inputs}

    def ref(self, name: str) -> str:
        p = self.program.param_table.get(name)
        if p is not None and p.is_scale:
            return f"self.mult_{name}"
        if p is not None:
            w = f"self.{name}"
            return f"{w} * self.mult_{name}" if self.abc[name].a != 0 else w
        return _local(name)

    def dim(self, name: str) -> str:
        return _dim_expr(self.program, name).replace("width", "self.width")

    def MatMul(self, ins: MatMul) -> str:
        w = f"self.{ins.weight}" + (".t()" if ins.transposed else "")
        if len(self.program.param_table[ins.weight].shape) == 4:
            self.helpers.add("_conv")
            rhs = f"_conv({self.ref(ins.arg)}, {w})"
        elif self.kinds.get(ins.arg) in ("tokens", "positions"):  # one-hot input: a lookup
            rhs = f"torch.nn.functional.embedding({self.ref(ins.arg)}, {w}.t())"
        else:
            rhs = f"torch.nn.functional.linear({self.ref(ins.arg)}, {w})"
        return rhs + (f" * self.mult_{ins.weight}" if self.abc[ins.weight].a != 0 else "")

    def LinComb(self, ins: LinComb) -> str:
        parts = []
        for k, (c, v) in enumerate(ins.terms):
            term = self.ref(v) if abs(c) == 1 else f"{_num(abs(c))} * ({self.ref(v)})"
            parts.append(("-" if c < 0 else "") + term if k == 0 else
                         f"{'-' if c < 0 else '+'} {term}")
        return " ".join(parts)

    def Nonlin(self, ins: Nonlin) -> str:
        if ins.fn == MUL:
            return " * ".join(f"({self.ref(a)})" for a in ins.args)
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


def emit(program: Program, abc: dict[str, ABC], *, optimizer: str, label: str, command: str,
         base_width: int | None = None) -> Emitted:
    """The module's source for ``program`` under ``abc`` (one entry per used param)."""
    base = base_width or program.width.base
    used = [p for p in program.params if p.name in abc]
    params = [p for p in used if not p.is_scale]
    scales = [p for p in used if p.is_scale]
    constant = any(p.base is not None for p in params)
    lines = [
        f'"""{program.name}: {label}, generated by tensorprog.',
        "",
        "Regenerate with:",
        *(f"    {part}" for part in command.split("\n")),
        "With ratio = width / base_width, each param W is used as ratio**-a * W, initialised",
        "N(0, (base_std * ratio**-b)**2) (zero where b is inf) and trained with lr * ratio**-c.",
        *(["A param with an \"init\" value starts at init * ratio**-b instead."] if constant
          else []),
        *(["Each scale s is a plain float multiplier, base * ratio**-a, never trained."]
          if scales else []),
        '"""',
        "",
        "import math",
        "",
        "import torch",
        "",
        f"BASE_WIDTH = {base}",
        "SCALING = {",
    ]
    for p in params:
        x = abc[p.name]
        shape = "(" + "".join(f"{json.dumps(d)}, " for d in p.shape).rstrip(" ") + ")"
        init = f', "init": {float(p.base)!r}' if p.base is not None else ""
        head = (f'    "{p.name}": {{"shape": {shape}, "a": {_exp(x.a)}, "b": {_exp(x.b)}, '
                f'"c": {_exp(x.c)},')
        tail = f'"base_std": {_base_std(program, p.name)!r}{init}}},'
        if len(head) + 1 + len(tail) <= 100:
            lines.append(f"{head} {tail}")
        else:  # keep the emitted file within 100 columns
            lines += [head, " " * (len(p.name) + 7) + tail]
    lines.append("}")
    if scales:
        lines.append("SCALES = {")
        lines += [f'    "{p.name}": {{"a": {_exp(abc[p.name].a)}, '
                  f'"base": {float(p.base if p.base is not None else 1)!r}}},' for p in scales]
        lines.append("}")
    lines += ["", "", "class Model(torch.nn.Module):",
              f'    """{program.name}; parameters are named as in the program."""',
              "",
              "    def __init__(self, width, *, base_width=BASE_WIDTH, device=None, dtype=None):",
              "        super().__init__()",
              "        self.width = width",
              "        self.base_width = base_width",
              "        ratio = width / base_width",
              "        factory = {\"device\": device, \"dtype\": dtype}"]
    for p in params:
        dims = ", ".join(_dim_expr(program, d) for d in p.shape)
        lines.append(f"        self.{p.name} = torch.nn.Parameter(torch.empty({dims}, **factory))")
    multiplied = [p for p in params if abc[p.name].a != 0]
    for p in multiplied:
        lines.append(f"        self.mult_{p.name} = ratio ** -SCALING[\"{p.name}\"][\"a\"]  "
                     "# a plain float")
    for p in scales:
        lines.append(f"        self.mult_{p.name} = SCALES[\"{p.name}\"][\"base\"] * ratio ** "
                     f"-SCALES[\"{p.name}\"][\"a\"]")
    if not multiplied and not scales:
        lines.append("        del ratio  # every forward multiplier is 1")
    lines += ["        self.reset_parameters()", "",
              "    def reset_parameters(self, generator=None):",
              "        ratio = self.width / self.base_width",
              "        with torch.no_grad():",
              "            for name, spec in SCALING.items():",
              "                param = getattr(self, name)",
              "                if spec[\"b\"] == math.inf:",
              "                    param.zero_()"]
    if constant:
        lines += ["                elif \"init\" in spec:",
                  "                    param.fill_(spec[\"init\"] * ratio ** -spec[\"b\"])"]
    lines += ["                else:",
              "                    std = spec[\"base_std\"] * ratio ** -spec[\"b\"]",
              "                    param.normal_(0.0, std, generator=generator)", ""]
    fed = [i for i in program.inputs if i.kind != "positions"]  # positions are built inside
    args = ", ".join(_local(i.name) for i in fed)
    results = [f"values[{json.dumps(o)}]" for o in program.outputs]
    result = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    lines += [f"    def forward(self, {args}):",
              f"        values = self.vectors({args})",
              f"        return {result}",
              "",
              f"    def vectors(self, {args}):",
              '        """Every named vector of the program, batch axis first."""']
    em = _Emitter(program, abc)
    for i in program.inputs:
        if i.kind == "positions":
            lines.append(f"        {_local(i.name)} = torch.arange({em.dim(i.seq)}, "
                         "device=next(self.parameters()).device)")
    for ins in program.body:
        lines.append(f"        {_local(ins.out)} = {getattr(em, type(ins).__name__)(ins)}")
    lines.append("        return {")
    lines += [f"            {json.dumps(ins.out)}: {_local(ins.out)}," for ins in program.body]
    lines.append("        }")
    what = ("(batch, seq) token ids or a (batch, dim) tensor" if program.seq else
            "a (batch, height, width, channels) image" if any(i.kind == "image"
                                                             for i in program.inputs)
            else "one (batch_size, dim) tensor")
    lines += ["", "    def example_inputs(self, batch_size, generator=None):",
              f'        """Random valid inputs: {what} per input."""',
              "        like = next(self.parameters())",
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
    for name in sorted(em.helpers):
        lines += ["", *_HELPERS[name], ""]
    lines += ["",
              "def param_groups(model, lr, weight_decay=0.0, decay_with_lr=True):",
              '    """One optimizer group per param with lr * ratio**-c.',
              "",
              "    With decay_with_lr (torch's convention), AdamW's decay per step is",
              "    lr_p * wd * w, so it shrinks with width wherever lr_p does; decay_with_lr=False",
              "    rescales wd so that",
              '    lr_p * wd_p = lr * wd at every width."""',
              "    ratio = model.width / model.base_width",
              "    groups = []",
              "    for name, spec in SCALING.items():",
              "        scale = ratio ** -spec[\"c\"]",
              "        wd = weight_decay if decay_with_lr or scale == 0 else weight_decay / scale",
              "        groups.append({\"params\": [getattr(model, name)], \"lr\": lr * scale,",
              "                       \"weight_decay\": wd, \"name\": name})",
              "    return groups",
              "", "",
              "def make_optimizer(model, lr, optimizer=None, weight_decay=0.0, **kwargs):",
              '    """A torch.optim optimizer over param_groups (default: the derived one)."""',
              f"    name = optimizer or {optimizer!r}",
              "    cls = {\"sgd\": torch.optim.SGD, \"adam\": torch.optim.Adam, "
              "\"adamw\": torch.optim.AdamW}[name]",
              "    return cls(param_groups(model, lr, weight_decay), lr=lr, **kwargs)", ""]
    return Emitted("\n".join(lines))
