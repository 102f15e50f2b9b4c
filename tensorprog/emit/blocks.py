"""Block submodules: one repetition of a block as its own torch.nn.Module class (its params are
its attributes; what it shares with the program comes in to its forward), and the Model's lines
that run the repetitions in order, each output feeding the next.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from ..engine.exponents import ABC
from ..ir.program import Block, MatMul, Program, Stream
from .fusions import find_fusions, needed
from .instructions import Emitter
from .literals import dim_expr, quoted
from .names import MODULE_GLOBALS, NN_MODULE_ATTRS, Namespace
from .templates import HELPERS, multiplier_lines


class _BlockEmitter(Emitter):
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

    def times_mult(self, weight: str) -> str:
        return super().times_mult(weight) if weight in self.own else ""


@dataclass(frozen=True)
class BlockCode:
    """One block's emitted class, and what the Model needs to build and call it."""

    cls: str  # the class of one repetition
    lines: list[str]
    attrs: dict[str, str]  # own param -> its attribute in a repetition's module
    shared: list[str]  # what its forward takes after the argument: program names
    helpers: set[str]


def emit_block(program: Program, abc: dict[str, ABC], dabc: dict[str, ABC], block: Block,
                classes: Namespace) -> BlockCode:
    """One repetition of a block as an nn.Module: its own params, and a forward that computes
    one repetition from its argument and what it shares with the program."""
    own = [program.param_table[p] for p in block.params if p in abc]
    prefix = f"{block.name}."
    names = Namespace(NN_MODULE_ATTRS | {"width", "base_width", "vectors"})
    attrs = {p.name: names.create(p.name.removeprefix(prefix)) for p in own if not p.is_scale}
    multiplied = [p for p in own if not p.is_scale
                  and (abc[p.name].a != 0 or dabc[p.name].a != 0)]
    depth = program.depth is not None
    mults = {p.name: names.create(f"mult_{p.name.removeprefix(prefix)}") for p in multiplied}
    values = _computable(program, block, abc)
    kept = [v for v in block.values if any(ins.out == v for ins in values)]
    mine = {block.arg, *kept, *(p.name for p in own)}
    shared: list[str] = []
    for ins in values:
        for n in ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ()):
            if n not in mine and n not in shared:
                shared.append(n)
    local_names = Namespace(set(dir(builtins)) | MODULE_GLOBALS | set(HELPERS)
                             | {"self", "record"})
    local = {block.arg: local_names.create(block.arg.removeprefix(prefix))}
    local.update({n: local_names.create(n) for n in shared})
    local.update({v: local_names.create(v.removeprefix(prefix)) for v in kept})
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
        dims = ", ".join(dim_expr(program, d) for d in p.shape)
        lines.append(f"        self.{attrs[p.name]} = torch.nn.Parameter(torch.empty({dims}, "
                     "**factory))")
    for p in multiplied:
        lines += multiplier_lines(f"self.{mults[p.name]}", "", f"SCALING[{quoted(p.name)}]", depth)
    args = ", ".join([local[block.arg]] + [local[n] for n in shared])
    ret = local[block.ret] if block.ret in local else em.ref(block.ret)
    fused = find_fusions(program, values)
    need = needed(values, [block.ret], fused, lambda ins: ins.operands)
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
    lines += [f"            {quoted(v.removeprefix(prefix))}: {local[v]},"
              for v in (block.arg, *kept)]
    lines += ["        }"]
    return BlockCode(cls, lines, attrs, shared, em.helpers)


def _computable(program: Program, block: Block, abc: dict[str, ABC]) -> list:
    """The block's instructions a repetition computes: a param of the block the engine left out
    (it reaches no output, and derive warned) takes the values built from it along, as the
    Model's own instructions do (module._computable)."""
    gone = {p for p in block.params if p not in abc}
    body = []
    for ins in (program.producer[v] for v in block.values):
        needs = ins.operands + ((ins.weight,) if isinstance(ins, MatMul) else ())
        if any(n in gone for n in needs):
            gone.add(ins.out)
        else:
            body.append(ins)
    return body


def call_block(program: Program, code: BlockCode, attr: str, stream: Stream, em: Emitter,
                local: dict[str, str], record: bool) -> list[str]:
    """The Model's lines that run a block: over its repetitions, each output feeding the next;
    with ``record`` (in ``vectors``), each repetition's values are recorded as block.i.name."""
    def passed(name: str) -> str:
        if name in program.param_table and len(program.param_table[name].shape) >= 2:
            return em.weight(name) + em.times_mult(name)
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
