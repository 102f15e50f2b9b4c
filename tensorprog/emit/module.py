"""Emit a plain PyTorch module from a program and its parametrization.

The emitted file imports only torch and keeps the width bookkeeping in module-level data and plain
Python floats, never on parameters: deepcopy, state_dict round trips and wrappers see an ordinary
``torch.nn.Module``. With ratio = width / base_width, each param is used in the forward pass as
``ratio^-a · W``, initialised N(0, (base_std · ratio^-b)²) and trained with ``lr · ratio^-c``.
At width == base_width every factor is 1, so µP and SP modules coincide there (tune at the base,
then transfer). A program with a depth L scales the same way in depth_ratio = depth / base_depth
with its depth exponents (a_L, b_L, c_L): multiplier depth_ratio^-a_L, init std depth_ratio^-b_L,
LR depth_ratio^-c_L, every factor 1 at the base depth. Output is deterministic byte for byte.

``emit`` is a driver: it lays out the names (``_layout``), then writes the file's sections in order,
each by one function here; the instructions' expressions are instructions.py's, the block
submodules blocks.py's, the fixed text templates.py's, and the optimizer part (param_groups,
make_optimizer, Lion, MuonWithAdamW) optim.py's.
"""

from __future__ import annotations

import builtins
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from ..engine.exponents import ABC, Exp
from ..engine.optimizers import Optimizer
from ..errors import CodegenError, UsageError
from ..ir.program import Block, MatMul, Param, Program, Stream
from .blocks import BlockCode, call_block, emit_block
from .fusions import Attention, Norm, find_fusions, needed
from .instructions import Emitter
from .literals import (
    dim_expr,
    docstring_text,
    exponent_literal,
    finite_float,
    number_literal,
    quoted,
)
from .names import MODEL_ATTRS, MODULE_GLOBALS, NN_MODULE_ATTRS, Namespace
from .optim import optimizer_code
from .tables import fan_in_at_base, size_code, width_rules
from .templates import (
    CHECK_DEPTH,
    CHECK_FACTORS,
    CHECK_SIZE,
    CHECK_WIDTHS,
    HELPERS,
    OVERRIDES,
    mult_override_lines,
    multiplier_lines,
)


@dataclass(frozen=True)
class Emitted:
    source: str
    imports: tuple[str, ...] = ("math", "operator", "torch")


def emit(program: Program, abc: dict[str, ABC], *, optimizer: Optimizer, label: str,
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
    lay = _layout(program, abc, _check_base_width(program, base_width), depth_abc, eps or {})
    em = Emitter(program, abc, lay.attrs, lay.mults, lay.local)
    for code in lay.block_code.values():
        em.helpers |= code.helpers
    lines = [*_header(lay, label, command), *_imports(), *_tables(lay), *_block_classes(lay),
             *_model_init(lay), *_reset_parameters(lay), *_forward_and_vectors(lay, em),
             *_example_inputs(lay, em)]
    # after forward and vectors: their instructions decide which helpers the file needs
    lines += [*_helpers(em.helpers), *_checks(lay),
              "", *optimizer_code(program, optimizer, lay.blocks, lay.attr_of, lay.base,
                                  lay.depth, bool(lay.eps))]
    return Emitted("\n".join(lines))


@dataclass(frozen=True)
class _Layout:
    """What every section reads: the params sorted by where they live, and the names drawn for
    them (Model attributes, multipliers, ``forward``'s locals, block classes)."""

    program: Program
    abc: dict[str, ABC]
    dabc: dict[str, ABC]  # the depth exponents, every used param (all 0 without a depth)
    eps: dict[str, tuple[Exp, Exp]]
    base: int
    depth: bool
    body: list  # the instructions computed, in order
    params: list[Param]  # trained params, in declaration order
    scales: list[Param]
    multiplied: list[Param]  # the Model's params with a forward multiplier
    owned: dict[str, str]  # a block's own param -> its block
    blocks: list[Block]
    attrs: dict[str, str]  # the Model's params -> attribute names
    block_attrs: dict[str, str]
    mults: dict[str, str]
    local: dict[str, str]  # program values -> forward's and vectors' local names
    inner: set[str]  # the values computed inside a block
    block_code: dict[str, BlockCode]

    @property
    def renamed(self) -> bool:
        return any(self.attrs[p] != p for p in self.attrs)

    @property
    def attr_of(self) -> str:
        """The emitted expression naming a SCALING entry's attribute."""
        return "spec.get(\"attr\", name)" if self.renamed else "name"

    @property
    def constant(self) -> bool:
        """Whether some param starts at a declared constant rather than a normal draw."""
        return any(p.base is not None for p in self.params)


def _layout(program: Program, abc: dict[str, ABC], base: int,
            depth_abc: dict[str, ABC] | None, eps: dict[str, tuple[Exp, Exp]]) -> _Layout:
    """The instructions computed, the params sorted by where they live, and every name drawn:
    params first (they keep their names where they can), then blocks, multipliers and locals."""
    body = _computable(program, abc)
    dabc = {p: depth_abc.get(p, ABC(0, 0, 0)) if depth_abc else ABC(0, 0, 0) for p in abc}
    used = [p for p in program.params if p.name in abc]
    params = [p for p in used if not p.is_scale]
    scales = [p for p in used if p.is_scale]
    owned = program.owner  # a block's own params live in its repetitions' modules
    multiplied = [p for p in params if (abc[p.name].a != 0 or dabc[p.name].a != 0)
                  and p.name not in owned]
    blocks = [b for b in program.blocks if b.result in {ins.out for ins in body}]

    names = Namespace(NN_MODULE_ATTRS | MODEL_ATTRS)
    attrs = {p.name: names.create(p.name) for p in params  # params first: they keep their names
             if p.name not in owned}
    block_attrs = {b.name: names.create(b.name) for b in blocks}
    mults = {p.name: names.create(f"mult_{p.name}") for p in multiplied + scales}
    # the loop variables of vectors and forward are taken too
    local_names = Namespace(set(dir(builtins)) | MODULE_GLOBALS
                            | {"self", "values", "inner", "block", "i"})
    local = {i.name: local_names.create(i.name) for i in program.inputs}
    inner = {v for b in blocks for v in b.values}
    local.update({ins.out: local_names.create(ins.out) for ins in body if ins.out not in inner})
    classes = Namespace(set(dir(builtins)) | MODULE_GLOBALS | set(HELPERS))
    block_code = {b.name: emit_block(program, abc, dabc, b, classes) for b in blocks}
    return _Layout(program, abc, dabc, eps, base, program.depth is not None, body, params,
                   scales, multiplied, owned, blocks, attrs, block_attrs, mults, local, inner,
                   block_code)


def _check_base_width(program: Program, base_width) -> int:
    """The base width asked for (default: the program's), refused unless every dim divides."""
    if base_width is None:
        return program.width.base
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 1:
        raise UsageError(f"the base width must be a positive integer, not {base_width!r}")
    problem = program.width_problem(base_width)
    if problem:
        raise UsageError(f"base width {base_width}: {problem}",
                         help="choose a base width the dims divide")
    return base_width


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


def _header(lay: _Layout, label: str, command: str | Sequence[Sequence[str]]) -> list[str]:
    """The module's docstring: what it is, how to regenerate it, and how its factors scale."""
    depth = lay.depth
    return [
        f'"""{docstring_text(lay.program.name)}: {docstring_text(label)}, generated by tensorprog.',
        "",
        "Regenerate with:",
        *(f"    {line}" for line in _command_lines(command)),
        "With ratio = width / base_width, each param W is used as ratio**-a * W, initialised",
        "N(0, (base_std * ratio**-b)**2) (zero where b is inf) and trained with lr * ratio**-c.",
        "base_std is Model(init_std=...)'s value for W (or its block), else fan_in**-0.5, where",
        "fan_in (k, p) is k * base_width**p, the most nonzero coordinates one of W's sums adds",
        "(1 for a lookup of a one-hot input).",
        *(["A param with an \"init\" value starts at init * ratio**-b instead."] if lay.constant
          else []),
        *(["With depth_ratio = depth / base_depth, these factors are multiplied by "
           "depth_ratio**-aL,",
           "depth_ratio**-bL and depth_ratio**-cL, the exponents in the depth (1 at the base "
           "depth)."] if depth else []),
        *(["Adam's eps is eps * ratio**-eps" + (" * depth_ratio**-epsL" if depth else "")
           + " per param (param_groups' eps at the base),", "so that it stays below the "
           "param's gradient entries, which scale so."] if lay.eps else []),
        *(["Each scale s is a plain float multiplier, base * ratio**-a, never trained; "
           "Model(mult=...)", "sets its base."] if lay.scales else []),
        *(["A param whose name Python or torch.nn.Module reserves is the attribute \"attr\"."]
          if lay.renamed else []),
        '"""',
    ]


def _command_lines(command: str | Sequence[Sequence[str]]) -> list[str]:
    """The "Regenerate with" lines: a string as it is, or lines of argv words shell-quoted and
    joined by continuation backslashes (which the docstring keeps as line continuations)."""
    if isinstance(command, str):
        return [docstring_text(command)]
    lines = [docstring_text(shlex.join(words)) for words in command]
    continued = [line + " \\" for line in lines[:-1]] + lines[-1:]
    return continued[:1] + [f"    {line}" for line in continued[1:]]


def _imports() -> list[str]:
    return ["", "import math", "import operator", "", "import torch", ""]


def _tables(lay: _Layout) -> list[str]:
    """BASE_WIDTH (and BASE_DEPTH), then SCALING, SCALES and WIDTH_RULES: the module-level data
    every width's factors are computed from."""
    program = lay.program
    lines = [f"BASE_WIDTH = {lay.base}"]
    if lay.depth:
        lines.append(f"BASE_DEPTH = {program.depth.base}")
    lines.append("SCALING = {")
    for p in lay.params:
        lines += _scaling_entry(lay, p)
    lines.append("}")
    if lay.scales:
        lines.append("SCALES = {")
        for p in lay.scales:
            value = finite_float(p.base if p.base is not None else Fraction(1),
                                 f"the scale {p.name}", p.span)
            aL = (f'"aL": {exponent_literal(lay.dabc[p.name].a, p.name, p.span)}, '
                  if lay.depth else "")
            a = exponent_literal(lay.abc[p.name].a, p.name, p.span)
            lines.append(f"    {quoted(p.name)}: {{\"a\": {a}, {aL}\"base\": {value!r}}},")
        lines.append("}")
    lines += size_code(program, lay.params, {b.name for b in lay.blocks})
    rules = width_rules(program)
    lines.append("# dims that are a fraction of the width: whole numbers at multiples of the step")
    lines.append("WIDTH_RULES = (" + ("" if rules else ")"))
    for rule, step in rules:
        lines.append(f"    ({quoted(rule)}, {step}),")
    if rules:
        lines.append(")")
    return lines


def _scaling_entry(lay: _Layout, p: Param) -> list[str]:
    """One param's SCALING entry: shape, exponents, fan-in, and where it lives; wrapped to keep
    the emitted file within 100 columns."""
    x = lay.abc[p.name]
    shape = "(" + "".join(f"{quoted(d)}, " for d in p.shape).rstrip(" ") + ")"
    init = (f', "init": {finite_float(p.base, f"the init of {p.name}", p.span)!r}'
            if p.base is not None else "")
    if p.name in lay.owned:
        block = lay.owned[p.name]
        attr = (f', "block": {quoted(lay.block_attrs[block])}, '
                f'"attr": {quoted(lay.block_code[block].attrs[p.name])}')
    else:
        attr = f', "attr": {quoted(lay.attrs[p.name])}' if lay.attrs[p.name] != p.name else ""
    head = (f"    {quoted(p.name)}: {{\"shape\": {shape}, "
            f"\"a\": {exponent_literal(x.a, p.name, p.span)}, "
            f"\"b\": {exponent_literal(x.b, p.name, p.span)}, "
            f"\"c\": {exponent_literal(x.c, p.name, p.span)},")
    k, power = fan_in_at_base(lay.program, p.name)
    fan = f"({number_literal(k, f'the fan-in of {p.name}', p.span)}, {power})"
    tail = f'"fan_in": {fan}{init}{attr}}},'
    parts = [head]
    if lay.depth:
        parts.append(" ".join(
            f'"{k}L": {exponent_literal(getattr(lay.dabc[p.name], k), p.name, p.span)},'
            for k in "abc"))
    if p.name in lay.eps:
        e, eL = lay.eps[p.name]
        parts.append(f'"eps": {exponent_literal(e, p.name, p.span)},'
                     + (f' "epsL": {exponent_literal(eL, p.name, p.span)},' if lay.depth
                        else ""))
    parts.append(tail)
    lines = []
    for part in parts[1:]:  # keep the emitted file within 100 columns
        if len(parts[0]) + 1 + len(part) <= 100:
            parts[0] = f"{parts[0]} {part}"
        else:
            lines.append(parts[0])
            parts[0] = " " * (len(quoted(p.name)) + 5) + part
    lines.append(parts[0])
    return lines


def _block_classes(lay: _Layout) -> list[str]:
    """One class per block: a repetition's own params and forward (blocks.py)."""
    lines = []
    for b in lay.blocks:
        lines += ["", "", *lay.block_code[b.name].lines]
    return lines


def _model_init(lay: _Layout) -> list[str]:
    """The Model class line, its docstring and __init__: the checks of its arguments, the params
    (a block's repetitions as submodules) and the forward multipliers at this width."""
    program, depth = lay.program, lay.depth
    doc = f'    """{docstring_text(program.name)}; parameters are named as in the program'
    if lay.blocks:  # within 100 columns
        more = "; a block's are in its repetitions' modules"
        doc += more if len(doc) + len(more) + 4 <= 100 else f";\n    {more[2:]}"
    lines = ["", "", "class Model(torch.nn.Module):",
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
             ("        _check_factors(width, base_width, depth, base_depth, dtype)" if depth
              else "        _check_factors(width, base_width, 1, 1, dtype)"),
             f"        _check_size(width, {'depth' if depth else 1})",
             "        self.width = width",
             "        self.base_width = base_width",
             *(["        self.depth = depth",
                "        self.base_depth = base_depth"]
               if depth else []),
             "        self._base_std = _base_stds(base_width, init_std)",
             *mult_override_lines(bool(lay.scales), [p.name for p in lay.multiplied]),
             "        ratio = width / base_width",
             *(["        depth_ratio = depth / base_depth"] if depth else []),
             "        factory = {\"device\": device, \"dtype\": dtype}"]
    for p in lay.params:
        if p.name in lay.owned:
            continue
        dims = ", ".join(dim_expr(program, d) for d in p.shape)
        lines.append(f"        self.{lay.attrs[p.name]} = torch.nn.Parameter(torch.empty({dims}, "
                     "**factory))")
    counts = {s.block: s.count for s in program.streams}
    for b in lay.blocks:
        make = (f"{lay.block_code[b.name].cls}(width, base_width, "
                + ("depth, base_depth, " if depth else "") + "factory)")
        count = counts[b.name]
        if count is None:
            lines.append(f"        self.{lay.block_attrs[b.name]} = {make}")
        else:
            times = "depth" if isinstance(count, str) else str(count)
            lines.append(f"        self.{lay.block_attrs[b.name]} = torch.nn.ModuleList(")
            lines.append(f"            {make} for _ in range({times}))")
    for p in lay.multiplied:
        lines += multiplier_lines(f"self.{lay.mults[p.name]}",
                                  f"mult.get({quoted(p.name)}, 1.0) * ",
                                  f"SCALING[{quoted(p.name)}]", depth)
    for p in lay.scales:
        lines += multiplier_lines(f"self.{lay.mults[p.name]}", f"mult[{quoted(p.name)}] * ",
                                  f"SCALES[{quoted(p.name)}]", depth)
    if not lay.multiplied and not lay.scales:
        lines.append("        del ratio" + (", depth_ratio" if depth else "")
                     + "  # every forward multiplier is 1")
    return lines + ["        self.reset_parameters()", ""]


def _reset_parameters(lay: _Layout) -> list[str]:
    """reset_parameters: every param drawn (or set) at its std for this width and depth; with
    blocks, the _tensors method it reads a block's params through."""
    depth, attr_of = lay.depth, lay.attr_of
    lines = ["    def reset_parameters(self, generator=None):",
             "        ratio = self.width / self.base_width",
             *(["        depth_ratio = self.depth / self.base_depth"] if depth else []),
             "        with torch.no_grad():",
             "            for name, spec in SCALING.items():"]
    pad = ""
    if lay.blocks:  # a block's param is one tensor per repetition
        lines.append("                for param in self._tensors(name, spec):")
        pad = "    "
    else:
        lines.append(f"                param = getattr(self, {attr_of})")
    lines += [f"{pad}                if spec[\"b\"] == math.inf"
              + (" or spec[\"bL\"] == math.inf:" if depth else ":"),
              f"{pad}                    param.zero_()"]
    if lay.constant:
        lines += [f"{pad}                elif \"init\" in spec:",
                  f"{pad}                    param.fill_(spec[\"init\"] * ratio ** -spec[\"b\"])"]
        if depth:
            lines.append(f"{pad}                    param.mul_(depth_ratio ** -spec[\"bL\"])")
    lines += [f"{pad}                else:",
              f"{pad}                    std = self._base_std[name] * ratio ** -spec[\"b\"]",
              *([f"{pad}                    std *= depth_ratio ** -spec[\"bL\"]"] if depth else []),
              f"{pad}                    param.normal_(0.0, std, generator=generator)", ""]
    if lay.blocks:
        lines += ["    def _tensors(self, name, spec):",
                  '        """The tensors of one SCALING entry: a block\'s param has one per '
                  'repetition."""',
                  "        if \"block\" not in spec:",
                  f"            return [getattr(self, {attr_of})]",
                  "        blocks = getattr(self, spec[\"block\"])",
                  "        if not isinstance(blocks, torch.nn.ModuleList):",
                  "            blocks = [blocks]",
                  "        return [getattr(block, spec[\"attr\"]) for block in blocks]", ""]
    return lines


def _forward_and_vectors(lay: _Layout, em: Emitter) -> list[str]:
    """forward computes what the outputs need, attention and LayerNorm fused; vectors computes
    and names every value, written out, for the check."""
    program, local, blocks = lay.program, lay.local, lay.blocks
    fed = [i for i in program.inputs if i.kind != "positions"]  # positions are built inside
    args = ", ".join(local[i.name] for i in fed)
    computed = {ins.out for ins in lay.body}
    positions = [i for i in program.inputs if i.kind == "positions"]
    device = "next(self.parameters()).device" if lay.params else "None"

    def build_positions(names: set[str]) -> list[str]:
        return [f"        {local[i.name]} = torch.arange({em.dim(i.seq)}, device={device})"
                for i in positions if i.name in names]

    outer = [ins for ins in lay.body if ins.out not in lay.inner]
    results_of = {b.result: b for b in blocks}
    streams = {s.block: s for s in program.streams}

    def mentions(ins) -> tuple[str, ...]:
        if isinstance(ins, Stream):  # the block reads what it shares with the program too
            return (ins.init, *lay.block_code[ins.block].shared)
        if ins.out in results_of:  # the last repetition's return value, carried by the stream
            return (streams[results_of[ins.out].name].out,)
        return ins.operands

    def body_lines(instructions: list, fused: dict[str, Attention | Norm],
                   record: bool) -> list[str]:
        out = []
        for ins in instructions:
            if isinstance(ins, Stream):
                out += call_block(program, lay.block_code[ins.block], lay.block_attrs[ins.block],
                                  ins, em, local, record)
            elif ins.out in results_of:
                out.append(f"        {local[ins.out]} = {local[mentions(ins)[0]]}")
            else:
                out += em.lines([ins], fused=fused)
        return out

    fused = find_fusions(program, outer)
    need = needed(outer, program.outputs, fused, mentions)
    results = [local[o] if o in computed else em.ref(o) for o in program.outputs]
    result = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    lines = [f"    def forward(self, {args}):" if args else "    def forward(self):",
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
        lines += [f"            {quoted(ins.out)}: {local[ins.out]}," for ins in outer
                  if not isinstance(ins, Stream)]
        lines += ["        })", "        return values"]
    else:
        lines.append("        return {")
        lines += [f"            {quoted(ins.out)}: {local[ins.out]}," for ins in lay.body]
        lines.append("        }")
    return lines


def _example_inputs(lay: _Layout, em: Emitter) -> list[str]:
    """example_inputs: random valid inputs of every input's kind, on the params' device."""
    program = lay.program
    what = ("(batch, seq) token ids or a (batch, dim) tensor" if program.seq else
            "a (batch, height, width, channels) image" if any(i.kind == "image"
                                                             for i in program.inputs)
            else "one (batch_size, dim) tensor")
    lines = ["", "    def example_inputs(self, batch_size, generator=None):",
             f'        """Random valid inputs: {what} per input."""',
             "        like = next(self.parameters())" if lay.params else
             "        like = torch.empty(0)  # no parameters: the default device and dtype",
             "        return ("]
    for i in program.inputs:
        if i.kind == "positions":  # built inside forward
            continue
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
    return lines + ["        )", ""]


def _helpers(used: set[str]) -> list[str]:
    """The module-level helpers the instructions called, in name order."""
    lines = []
    for helper in sorted(used):
        lines += ["", *HELPERS[helper], ""]
    return lines


def _checks(lay: _Layout) -> list[str]:
    """The checks of Model's arguments and the base constants' overrides."""
    lines = ["", *CHECK_WIDTHS, "", "", *CHECK_FACTORS, "", "", *CHECK_SIZE, "", "",
             *OVERRIDES, ""]
    if lay.depth:
        lines += ["", *CHECK_DEPTH, ""]
    return lines
