"""The IR's text form: a program printed in the surface language, one instruction a line.

:func:`to_text` writes a whole program (blocks where they are applied); the parser reads it back
to an equal IR (spans are excluded from equality), which the property tests check.
"""

from __future__ import annotations

from fractions import Fraction

from .functions import MUL
from .program import (
    RELATIVE_KINDS,
    Delta,
    Dot,
    Input,
    Instruction,
    MatMul,
    Mean,
    Mix,
    Nonlin,
    Param,
    Prepend,
    Program,
    Relayout,
    Route,
    RouteIn,
    Stream,
)


def _coef(c: Fraction) -> str:
    return str(c.numerator) if c.denominator == 1 else f"{c.numerator}/{c.denominator}"


def _count(count: str | int | None) -> str:
    return "" if count is None else f"repeat {count} "


def render_instruction(ins: Instruction, show=str) -> str:
    """One instruction as one line of the surface language; ``show`` maps a name to the text
    written for it (inside a block, a qualified name loses its block prefix)."""
    if isinstance(ins, MatMul) and ins.geometry is not None:
        g = ins.geometry
        groups = f", {g.groups}" if g.groups != 1 else ""
        rhs = (f"conv({show(ins.weight)}, {show(ins.arg)}, {g.stride}, "
               f"{', '.join(map(str, g.pads))}, {g.dilation}{groups})")
    elif isinstance(ins, MatMul):
        rhs = f"{show(ins.weight)}{'.T' if ins.transposed else ''} @ {show(ins.arg)}"
    elif isinstance(ins, Dot):
        over = f", {ins.over}" if ins.over is not None else ""
        rhs = f"dot({show(ins.left)}, {show(ins.right)}{over})"
    elif isinstance(ins, Mix):
        head = f", {ins.head}" if ins.head is not None else ""
        head += f", {ins.dim}" if ins.dim is not None else ""
        rhs = f"mix({show(ins.weights)}, {show(ins.values)}{head})"
    elif isinstance(ins, Delta):
        grouped = [ins.head, ins.dim] if ins.head is not None else []
        rhs = f"delta({', '.join([show(a) for a in ins.operands] + grouped)})"
    elif isinstance(ins, Route):
        fn = "route_norm" if ins.normalise else "route"
        rhs = f"{fn}({show(ins.gates)}, {ins.k}, {', '.join(show(e) for e in ins.experts)})"
    elif isinstance(ins, RouteIn):
        rhs = f"route_in({show(ins.gates)}, {ins.k}, {ins.expert}, {show(ins.arg)})"
    elif isinstance(ins, Prepend):
        at = f", {ins.at}" if ins.at else ""
        rhs = f"prepend({show(ins.token)}, {show(ins.arg)}, {ins.seq}{at})"
    elif isinstance(ins, Relayout):
        rhs = (f"merge2x2({show(ins.arg)}, {ins.merge})" if ins.merge is not None
               else f"tail({show(ins.arg)}, {ins.seq})" if ins.tail
               else f"tokens({show(ins.arg)}, {ins.seq})" if ins.grid is None
               else f"image({show(ins.arg)}, {ins.grid[0]}, {ins.grid[1]})")
    elif isinstance(ins, Mean):
        rhs = f"mean({show(ins.arg)}{f', {ins.start}' if ins.start else ''})"
    elif isinstance(ins, Stream):  # in a program's text, the block call it starts
        rhs = f"{_count(ins.count)}{ins.block}({show(ins.init)})"
    elif isinstance(ins, Nonlin):
        args = [show(a) for a in ins.args]
        args += [ins.over] if ins.over is not None else []
        args += [ins.heads] if ins.heads is not None else []  # cat(a, b, D, dv): per head
        g = ins.geometry  # dwconv of another geometry than stride 1, padded by half
        args += [str(i) for i in (g.stride, *g.pads, g.dilation)] if g is not None else []
        idx = ins.index if isinstance(ins.index, tuple) else () if ins.index is None else (
            ins.index,)
        args += [str(i) for i in idx]
        rhs = " * ".join(args) if ins.fn == MUL else f"{ins.fn}({', '.join(args)})"
    else:
        parts = []
        for k, (c, name) in enumerate(ins.terms):
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            text = show(name) if mag == 1 else f"{_coef(mag)} * {show(name)}"
            if k == 0 and not ins.const:
                parts.append(("-" if c < 0 else "") + text)
            else:
                parts.append(f"{sign} {text}")
        if ins.const:  # a number first, as written: 1 + sigmoid(w)
            parts.insert(0, f"{'-' if ins.const < 0 else ''}{_coef(abs(ins.const))}")
        rhs = " ".join(parts)
    return f"{show(ins.out)} = {rhs}"


def render_input(i: Input) -> str:
    if i.kind == "image":
        return f"input {i.name} : image[{i.dim}, {i.spatial[0]}, {i.spatial[1]}]"
    if i.kind == "tokens":
        return f"input {i.name} : tokens[{i.seq}, {i.dim}]"
    if i.kind == "positions":
        return f"input {i.name} : positions[{i.seq}]"
    if i.kind == "axial":
        return f"input {i.name} : axial[{i.seq}, {i.dim}, {i.stride}]"
    if i.kind == "patches":
        return f"input {i.name} : patches[{i.seq}, {i.dim}]"
    if i.kind == "windows":
        h, w, shift, mask = i.window  # the mask written where it is not Swin's 100
        shown = (h, w, shift) if mask == 100 else i.window
        return f"input {i.name} : windows[{i.seq}, {i.dim}, {', '.join(map(str, shown))}]"
    if i.kind == "grid_offsets" and i.queries:  # LeViT's subsampling attention's
        return f"input {i.name} : grid_offsets[{i.queries}, {i.seq}, {i.dim}, {i.stride}]"
    if i.reach is not None:
        return f"input {i.name} : {i.kind}[{i.seq}, {i.dim}, {i.reach}]"
    if i.kind in (*RELATIVE_KINDS, "offsets"):
        return f"input {i.name} : {i.kind}[{i.seq}, {i.dim}]"
    return f"input {i.name} : [{i.dim}]"


def render_param(p: Param, show=str) -> str:
    value = f" = {float(p.base)!r}" if p.base is not None else ""
    if p.is_scale:
        return f"scale {show(p.name)}{value}"
    if p.standardised is not None:
        value += f" standardised({float(p.standardised)!r})"
    return f"param {show(p.name)} : [{', '.join(p.shape)}]{value}"


def _local(block: str):
    """How names read inside a block's text: its own names without the block prefix."""
    prefix = f"{block}."
    return lambda name: name.removeprefix(prefix)


def to_text(program: Program) -> str:
    """The IR as a program in the surface language, one instruction a line; parses back equal.

    A block is written where it is applied: its definition (params, body, ``return``), then
    ``result = repeat count block(init)``, which stands for the Stream, the body and the identity
    naming the result."""
    w = program.width
    lines = [f"width {w.name} = {w.base}"]
    if program.depth is not None:
        lines.append(f"depth {program.depth.name} = {program.depth.base}")
    lines += [f"dim {d.name} = {d.expr(w.name)}" for d in program.dims]
    lines += [render_input(i) for i in program.inputs]
    owned = program.owner
    lines += [render_param(p) for p in program.params if p.name not in owned]
    skip: set[str] = set()
    for ins in program.body:
        if ins.out in skip:
            continue
        if not isinstance(ins, Stream):
            lines.append(render_instruction(ins))
            continue
        b = program.block_table[ins.block]
        show = _local(b.name)
        lines.append(f"block {b.name}({show(b.arg)}) {{")
        lines += ["    " + render_param(program.param_table[p], show) for p in b.params]
        lines += ["    " + render_instruction(program.producer[v], show) for v in b.values]
        lines += [f"    return {show(b.ret)}", "}"]
        lines.append(f"{b.result} = {_count(ins.count)}{b.name}({ins.init})")
        skip.update(b.values + (b.result,))
    lines += [f"output {o}" for o in program.outputs]
    return "\n".join(lines) + "\n"


