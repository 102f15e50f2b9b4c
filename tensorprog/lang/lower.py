"""AST to IR: resolve names and dims, check shapes, and emit one instruction per value.

:class:`_Lowering` walks the statements that :mod:`tensorprog.lang.parse` produced, in order,
one method per statement kind (``stmt_<kind>``); the expression nodes (``expr_<Class>``) are
lowered by the mixin in :mod:`tensorprog.lang.lower_expr`. It collects its errors to raise them
once. Nested expressions get fresh names (``h1 = W1 @ x + b1`` becomes ``h1_1 = W1 @ x`` and
``h1 = h1_1 + b1``). Imports flow one way: parse -> syntax, lower -> lower_expr -> ast -> ir.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

from lark import Token

from ..errors import Collector, Diagnostic, SemanticError, Span, TensorProgWarning, source_lines
from ..ir.program import (
    MAX_SIZE,
    RELATIVE_KINDS,
    Block,
    Depth,
    Dim,
    Input,
    LinComb,
    MatMul,
    Param,
    Program,
    Stream,
    Width,
)
from ..ir.verify import verify
from .ast import Stmt
from .lower_at import offsets_input
from .lower_axial import axial_input, grid_input
from .lower_expr import FUNCTIONS, ExpressionLowering
from .lower_first import mark_tokens
from .lower_reach import reach_input
from .pending import Matrix, Scalar, Vec


def _line_end_span(source: str, filename: str) -> Span:
    lines = source_lines(source) or [""]
    return Span(len(lines), 1, len(lines), len(lines[-1]) + 1, source, filename)


class _Lowering(ExpressionLowering):
    """Statements, names, dims and blocks; expressions are lowered by the mixin."""

    def __init__(self, stmts: list[Stmt], source: str, filename: str):
        self.stmts, self.source, self.filename = stmts, source, filename
        self.errors = Collector()
        self.width: Width | None = None
        self.dims: dict[str, Dim] = {}
        self.heads_dims: dict[str, Dim] = {}  # the heads axis of each dot(q, k, dh), by name
        self.pixels: dict[str, tuple[int, int]] = {}  # image-valued values: their height, width
        self.tokenwise: set[str] = set()  # values with a sequence axis (built from token inputs)
        self.one_token: set[str] = set()  # values read at one token (first): no sequence axis
        self.values: dict[str, str | None] = {}  # vector name -> dim name (None: scalar)
        self.matrices: dict[str, Param] = {}
        self.defined_at: dict[str, Span] = {}
        self.inputs: list[Input] = []
        self.params: list[Param] = []
        self.param_names: set[str] = set()
        self.body: list = []
        self.outputs: list[str] = []
        self.output_spans: list[Span] = []
        self.later = {s.name: s for s in reversed(stmts)}  # first definition of every name
        self.used_names = {s.name for s in stmts}
        self.fresh_counter: dict[str, int] = {}
        self.poisoned: set[str] = set()  # names whose definition failed: no follow-up errors
        self.depth: Depth | None = None
        self.block_defs: dict[str, Stmt] = {}  # well-formed block definitions, by name
        self.blocks: list[Block] = []  # blocks as applied, in program order
        self.block_params: list[Param] = []  # listed after the program's own params
        self.block: str | None = None  # the block being inlined
        self.scope: dict[str, str] = {}  # inside it: local name -> qualified name
        self.target = ""

    # names ------------------------------------------------------------------------------------
    def known(self) -> list[str]:
        outer = [n for n in (*self.values, *self.matrices, *self.dims) if "." not in n]
        return outer + list(self.scope)

    def define(self, name: str, span: Span) -> bool:
        if name in self.defined_at:
            first = self.defined_at[name]
            shown = name.split(".", 1)[-1]
            self.errors.error(f"'{shown}' is already defined (line {first.line})", span,
                              "every name is defined once; pick a new name for this value")
            return False
        if name in FUNCTIONS:
            self.errors.error(f"'{name}' is a built-in function and cannot name a value", span,
                              "pick another name")
            return False
        self.defined_at[name] = span
        return True

    def fresh(self, base: str) -> str:
        while True:
            k = self.fresh_counter.get(base, 0) + 1
            self.fresh_counter[base] = k
            name = f"{base}_{k}"
            if name not in self.used_names and name not in self.defined_at:
                self.used_names.add(name)
                return name

    def carry_marks(self, src: str, out: str) -> None:
        """``out`` is ``src`` under another name (an instruction renamed to its statement's
        name, a block's stream started from it): it keeps src's image size and whether it has
        one value per token or is one token's (lower_first.py)."""
        if src in self.pixels:
            self.pixels[out] = self.pixels[src]
        if src in self.tokenwise:
            self.tokenwise.add(out)
        if src in self.one_token:
            self.one_token.add(out)

    def undefined(self, name: str, span: Span) -> None:
        first = self.later.get(name)
        if first is not None and first.span.line >= span.line and first.kind != "width":
            self.errors.error(
                f"'{name}' is used before it is defined (line {first.span.line})", span,
                "a Tensor Program is a straight line, so it cannot contain a cycle: define values "
                "before using them, and unroll a recurrence by reusing its weight "
                "(h1 = W @ x0, h2 = W @ relu(h1))")
            return
        close = difflib.get_close_matches(name, self.known(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.errors.error(f"undefined name '{name}'", span,
                          f"declare it with `input`/`param`, or define it before this line{hint}")

    # dims -------------------------------------------------------------------------------------
    def dim_ref(self, tok: Token, span: Span) -> Dim | None:
        name = str(tok)
        if name in self.dims:
            return self.dims[name]
        close = difflib.get_close_matches(name, list(self.dims), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.errors.error(f"undeclared dim '{name}'", span,
                          f"declare it first, e.g. `dim {name} = 10` or `dim {name} = 4 * n`{hint}")
        return None

    def tok_span(self, tok: Token) -> Span:
        return Span(tok.line, tok.column, tok.end_line, tok.end_column, self.source, self.filename)

    def dim_value(self, name: str, expr, span: Span) -> Dim | None:
        kind, toks = expr
        if kind == "int":
            size = int(toks[0])
            if size <= 0:
                self.errors.error(f"dim {name} must be positive", span,
                                  "a dim counts coordinates: give it at least 1, e.g. "
                                  f"`dim {name} = 10`")
                return None
            return Dim(name, size=size, span=span)
        ref = self.dim_ref(toks[0], self.tok_span(toks[0]))
        if ref is None:
            return None
        k = Fraction(int(toks[1])) if kind != "name" else Fraction(1)
        if kind in ("divided", "ratio"):
            if int(toks[-1]) == 0:
                self.errors.error("division of a dim by zero", span,
                                  "divide by a positive integer, e.g. `dim h = n / 2`")
                return None
            k = k / int(toks[2]) if kind == "ratio" else 1 / k
        if k == 0:
            self.errors.error(f"dim {name} = 0 x {ref.name} has no coordinates", span,
                              f"multiply by a positive integer, e.g. `dim {name} = 4 * {ref.name}`")
            return None
        if ref.infinite:
            base = self.width.base if self.width else 1
            if (ref.mult * k * base).denominator != 1:
                self.errors.error(f"dim {name} = {ref.mult * k} x {base} is not a whole number "
                                  "at the base width", span,
                                  "pick a base width the divisor divides")
                return None
            if ref.mult * k * base > MAX_SIZE:
                self.errors.error(f"dim {name} = {ref.mult * k} x {base} is too large at the base "
                                  "width", span, f"sizes go up to 2**53 = {MAX_SIZE}, the largest "
                                  "integer a float holds exactly")
                return None
            return Dim(name, mult=ref.mult * k, span=span)
        size = ref.size * k
        if size.denominator != 1 or size <= 0:
            self.errors.error(f"dim {name} = {size} is not a positive integer", span,
                              "a finite dim must divide exactly; pick sizes that do")
            return None
        if size > MAX_SIZE:
            self.errors.error(f"dim {name} = {size} is too large", span,
                              f"sizes go up to 2**53 = {MAX_SIZE}, the largest integer a float "
                              "holds exactly")
            return None
        return Dim(name, size=int(size), span=span)

    def same_dim(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return a is b
        if (a in self.heads_dims) != (b in self.heads_dims):
            return False  # logits' last axis is key tokens, whatever their head count
        dims = {**self.dims, **self.heads_dims}
        return dims[a].key() == dims[b].key()

    def dim_text(self, d: str | None) -> str:
        return "a scalar" if d is None else f"[{d}]"

    # statements -------------------------------------------------------------------------------
    def run(self) -> Program:
        for st in self.stmts:
            getattr(self, f"stmt_{st.kind}")(st)
        if not any(st.kind == "width" for st in self.stmts):
            self.errors.error("the program declares no width", _line_end_span(self.source,
                              self.filename), "add a line `width n = 256` (256: the base width)")
        if not self.outputs and self.width is not None and not self.errors.errors:
            self.errors.error("the program has no output", _line_end_span(self.source,
                              self.filename),
                              "mark the result, e.g. `output y = W3 @ x2` or `output y`")
        self.errors.raise_if_any(SemanticError)
        for name, st in self.block_defs.items():
            if name not in {b.name for b in self.blocks}:
                warnings.warn(TensorProgWarning(Diagnostic(
                    f"block '{name}' is never applied, so it is neither checked nor used",
                    st.name_span, f"apply it, e.g. `h = repeat L {name}(h0)`, or remove it",
                    "warning")), stacklevel=4)
        used = {n for ins in self.body for n in ins.operands}
        used |= {ins.weight for ins in self.body if isinstance(ins, MatMul)}
        used |= {ins.back for ins in self.body if isinstance(ins, Stream)}
        self.params += self.block_params
        for p in self.params:
            if p.name not in used:
                warnings.warn(TensorProgWarning(Diagnostic(
                    f"param '{p.name}' is never used", p.span,
                    "remove it, or use it; the engine ignores it", "warning")), stacklevel=4)
        return verify(Program(self.width, tuple(self.dims[d] for d in self.dims
                                                if d != self.width.name),
                              tuple(self.inputs), tuple(self.params), tuple(self.body),
                              tuple(self.outputs), tuple(self.output_spans),
                              Path(self.filename).stem, self.depth, tuple(self.blocks)))

    def stmt_width(self, st: Stmt) -> None:
        if self.width is not None:
            self.errors.error("the width is declared twice", st.span,
                              "a program has exactly one width, the dim that goes to infinity")
            return
        if st.value <= 0:
            self.errors.error("the base width must be positive", st.span,
                              "give the width where hyperparameters are tuned, e.g. "
                              f"`width {st.name} = 256`")
            return
        if self.define(st.name, st.name_span):
            self.width = Width(st.name, st.value, st.span)
            self.dims[st.name] = Dim(st.name, mult=Fraction(1), span=st.span)

    def stmt_depth(self, st: Stmt) -> None:
        if self.depth is not None:
            self.errors.error("the depth is declared twice", st.span,
                              "a program has at most one depth, the number of repetitions that "
                              "may go to infinity; repeat other blocks a fixed number of times, "
                              "`repeat 3 blk(h)`")
            return
        if st.value <= 0:
            self.errors.error("the base depth must be positive", st.span,
                              "give the number of blocks where hyperparameters are tuned, e.g. "
                              f"`depth {st.name} = 4`")
            return
        if self.define(st.name, st.name_span):
            self.depth = Depth(st.name, st.value, st.span)

    #: what each statement kind is told inside a block, where only params, values and the return
    #: belong
    _NOT_IN_BLOCK = {
        "width": "declare the width outside the block",
        "depth": "declare the depth outside the block",
        "dim": "declare dims outside the block",
        "input": "declare inputs outside the block",
        "scale": "declare scales outside the block: they are constants, shared by every repetition",
        "output_assign": "a block hands its result on with `return`; mark outputs outside it",
        "output_mark": "a block hands its result on with `return`; mark outputs outside it",
        "block": "blocks do not nest: define this block outside the other",
    }

    def stmt_block(self, st: Stmt) -> None:
        _, _, inner = st.value
        ok = True
        for k, s in enumerate(inner):
            if s.kind in self._NOT_IN_BLOCK:
                what = s.kind.split("_")[0]
                article = "an" if what in ("input", "output") else "a"
                self.errors.error(f"a block cannot contain {article} `{what}` statement", s.span,
                                  self._NOT_IN_BLOCK[s.kind])
                ok = False
            elif s.kind == "return" and k != len(inner) - 1:
                self.errors.error("statements after `return`", inner[k + 1].span,
                                  "`return` ends the block: move them before it")
                ok = False
        if not any(s.kind == "return" for s in inner):
            self.errors.error(f"block {st.name} has no return", st.name_span,
                              "end it with `return expr`, the vector handed to the next "
                              "repetition, e.g. `return h + W2 @ relu(W1 @ h)`")
            ok = False
        if self.define(st.name, st.name_span) and ok:
            self.block_defs[st.name] = st
        else:
            self.poisoned.add(st.name)

    def local(self, name: str, span: Span) -> str | None:
        """The qualified name of a value or param defined here (inside a block: ``blk.name``);
        None, with an error, for a block name that would hide a name of the program."""
        if self.block is None:
            return name
        if name in self.defined_at and "." not in name:
            first = self.defined_at[name]
            what = "param" if name in self.param_names else "name"
            self.errors.error(f"'{name}' is already defined outside block {self.block} "
                              f"(line {first.line})", span,
                              f"a block's own {what}s are fresh in every repetition and may not "
                              "hide the program's: to share the outer one, use it without "
                              "declaring it; otherwise pick a new name")
            return None
        return f"{self.block}.{name}"

    def resolve(self, name: str) -> str:
        return self.scope.get(name, name)

    def apply_block(self, name: str, name_span: Span, arg, count, node) -> Vec | None:
        """Inline block ``name`` once, as the generic repetition fed by a Stream (see ir.Block)."""
        if self.block is not None:
            if name == self.block:
                self.errors.error(f"block {name} calls itself", node.span,
                                  "blocks do not recurse: to apply a block several times, write "
                                  f"`repeat L {name}(h0)` outside it")
            else:
                self.errors.error(f"block {self.block} calls block {name}", node.span,
                                  "blocks do not nest yet: apply both outside any block, one "
                                  "after the other")
            return None
        st = self.block_defs.get(name)
        if st is None:
            return None  # its definition already reported an error
        if arg is None:
            return None
        if not isinstance(arg, Vec) or arg.dim is None or arg.dim in self.heads_dims:
            what = ("a matrix" if isinstance(arg, Matrix) else "a constant"
                    if isinstance(arg, Scalar) else "a scalar" if arg.dim is None
                    else "attention logits")
            self.errors.error(f"block {name} needs a vector argument, got {what}", node.span,
                              "apply a block to a vector of a declared dim, e.g. the residual "
                              "stream `h0 = W_in @ x`")
            return None
        if name in {b.name for b in self.blocks}:
            first = next(b for b in self.blocks if b.name == name)
            self.errors.error(f"block {name} is already applied (line {first.span.line})",
                              node.span, "each block is applied once (a `repeat` is one "
                              "application); for a second stack, define a second block")
            return None
        init = self.name_of(arg, node.span)
        arg_name, arg_span, inner = st.value
        prefix = f"{name}."
        out = prefix + arg_name
        self.used_names |= {out} | {prefix + s.name for s in inner}
        start, n_errors, target = len(self.body), len(self.errors.errors), self.target
        self.body.append(Stream(out, init, out, name, count, node.span))  # back edge set below
        self.values[out] = arg.dim
        self.carry_marks(init, out)
        self.defined_at[out] = arg_span
        n_params = len(self.block_params)
        self.block, self.scope = name, {arg_name: out}
        try:
            for s in inner[:-1]:
                getattr(self, f"stmt_{s.kind}")(s)
            ret = self.block_return(inner[-1], out, arg_name) \
                if len(self.errors.errors) == n_errors else None
        finally:
            self.block, self.scope, self.target = None, {}, target
        if ret is None:
            return None
        values = tuple(ins.out for ins in self.body[start + 1:])
        self.body[start] = Stream(out, init, ret, name, count, node.span)
        result = self.emit(LinComb(self.fresh(self.target), ((Fraction(1), ret),), node.span),
                           arg.dim)
        self.blocks.append(Block(name, out, ret, result,
                                 tuple(p.name for p in self.block_params[n_params:]), values,
                                 node.span))
        return self.vec(result, arg.dim)

    def block_return(self, st: Stmt, arg: str, arg_name: str) -> str | None:
        """Lower ``return expr``: its value, named ``blk.out`` unless it is one name already."""
        self.target = f"{self.block}.out"
        if self.target in self.used_names:
            self.target = self.fresh(self.target)
        n_errors, n_body = len(self.errors.errors), len(self.body)
        value = self.expr(st.value)
        if value is None or len(self.errors.errors) > n_errors:
            return None
        if not isinstance(value, Vec):
            what = "a matrix" if isinstance(value, Matrix) else "a constant"
            self.errors.error(f"block {self.block} returns {what}", st.span,
                              f"return a vector of its argument {arg_name}'s dim")
            return None
        if not self.same_dim(value.dim, self.values[arg]) or value.dim in self.heads_dims:
            self.errors.error(
                f"block {self.block} returns {self.dim_text(value.dim)}, but its argument "
                f"{arg_name} is {self.dim_text(self.values[arg])}", st.span,
                "each repetition's return value is the next one's argument: return a vector of "
                f"the argument's dim, e.g. `return {arg_name} + W2 @ relu(W1 @ {arg_name})`")
            return None
        if arg in self.tokenwise and self.one_token.intersection(value.terms):
            self.errors.error(
                f"block {self.block} returns one token's vector (read by first), but its argument "
                f"{arg_name} has one value per token", st.span,
                "each repetition's return value is the next one's argument: return per-token "
                "values, and read the token after the repeat, e.g. `first(hL)`")
            return None
        last = self.body[-1] if len(self.body) > n_body else None
        single = value.single()
        if last is not None and single == last.out:
            self.body[-1] = _renamed(last, self.target, st.span)
            self.values.pop(last.out)
            self.carry_marks(last.out, self.target)
            ret = self.target
        elif single is not None:
            ret = single
        else:
            self.check_coefficients(value, st.span)
            ret = self.emit(LinComb(self.target, value.items(), st.span, value.const),
                            value.dim)
        self.values[ret] = value.dim
        if self.pixels.get(ret) != self.pixels.get(arg):
            self.errors.error(f"block {self.block} changes the image size of its argument",
                              st.span, "return a vector of the argument's pixels: pool "
                              "outside the block")
            return None
        return ret

    def stmt_dim(self, st: Stmt) -> None:
        d = self.dim_value(st.name, st.value, st.span)
        if d is not None and self.define(st.name, st.name_span):
            self.dims[st.name] = d

    def check_shape(self, shape: tuple, span: Span) -> tuple[str, ...] | None:
        ok = True
        for tok in shape:
            if self.dim_ref(tok, self.tok_span(tok)) is None:
                ok = False
        return tuple(str(t) for t in shape) if ok else None

    def stmt_input(self, st: Stmt) -> None:
        if st.value and not isinstance(st.value[0], Token):
            return self.stmt_sequence_input(st)
        shape = self.check_shape(st.value, st.span)
        if shape is None:
            return
        if len(shape) != 1:
            self.errors.error(f"input {st.name} must be a vector: one dim, got {len(shape)}",
                              st.span, "inputs are vectors, e.g. `input x : [d_in]`")
            return
        if self.define(st.name, st.name_span):
            self.inputs.append(Input(st.name, shape[0], st.span))
            self.values[st.name] = shape[0]

    def stmt_image_input(self, st: Stmt) -> None:
        _, *toks = st.value
        if any(i.seq is not None for i in self.inputs):
            self.errors.error("a program has either a sequence or images, not both", st.span)
            return
        dims = [self.dim_ref(t, self.tok_span(t)) for t in toks]
        if any(d is None for d in dims):
            return
        if any(d.infinite for d in dims[1:]):
            self.errors.error(f"image {st.name}: height and width must be finite", st.span,
                              "the channels may grow with the width, the image size does not: "
                              "image[C, H, W] with H, W finite")
            return
        if self.define(st.name, st.name_span):
            self.inputs.append(Input(st.name, dims[0].name, st.span, "image", None,
                                     (dims[1].name, dims[2].name)))
            self.values[st.name] = dims[0].name
            self.pixels[st.name] = (dims[1].size, dims[2].size)

    def stmt_sequence_input(self, st: Stmt) -> None:
        kind = st.value[0] + ("_reach" if st.value[0] == "relative" and len(st.value) > 3 else "")
        own = {"image": self.stmt_image_input, "windows": self.stmt_windows_input}
        apart = {"offsets": offsets_input, "axial": axial_input, "relative_reach": reach_input,
                 "grid_offsets": grid_input}
        if kind in own or kind in apart:  # lower_at.py, lower_axial.py, lower_reach.py
            return own[kind](st) if kind in own else apart[kind](self, st)
        kind, seq_tok, *rest = st.value
        dims = [self.dim_ref(t, self.tok_span(t)) for t in (seq_tok, *rest)]
        if any(d is None for d in dims):
            return
        seq = dims[0]
        if seq.infinite:
            self.errors.error(f"the sequence dim {seq.name} must be finite", st.span,
                              "declare it as a number of tokens, e.g. `dim T = 16`")
            return
        # inputs on different sequence dims are different sequences (an encoder's source and
        # a decoder's target): only attention reads one from the other (ir/sequences.py)
        if kind == "tokens" and dims[1].infinite:
            self.errors.error(f"the vocabulary dim {dims[1].name} must be finite", st.span,
                              "a token id indexes a finite vocabulary")
            return
        if kind == "patches" and dims[1].infinite:
            self.errors.error(f"the patch dim {dims[1].name} must be finite", st.span,
                              "a patch holds a fixed number of values (channels x p x p); the "
                              "width enters through the weight that embeds it")
            return
        # T5's buckets: half exact distances, half logarithmic ones (and half of each per
        # direction when bidirectional), so fewer than 4 (2 causal) leave no exact bucket
        least = 4 if kind == "relative" else 2
        if kind in RELATIVE_KINDS and (dims[1].infinite or dims[1].size < least):
            self.errors.error(f"the bucket dim {dims[1].name} must be finite and at least "
                              f"{least}", st.span,
                              "relative positions fall in a finite number of distance buckets, "
                              "e.g. `dim B = 32` (T5's)")
            return
        dim = seq.name if kind == "positions" else dims[1].name
        if self.define(st.name, st.name_span):
            self.inputs.append(Input(st.name, dim, st.span, kind, seq.name))
            self.tokenwise.add(st.name)
            self.values[st.name] = dim

    def stmt_windows_input(self, st: Stmt) -> None:
        """``input win : windows[T, B, H, W, s]``: Swin's windows of T = H·W tokens (w x w,
        the grid rolled by -s first), one-hot over B = (2w-1)² offsets of a pair; ``windows[T,
        B, H, W, s, m]``: the roll's regions masked by -m, not -100 (transformers' Swin V2
        adds its -100 mask twice: m = 200)."""
        _, *toks, shift, mask = st.value
        dims = [self.dim_ref(t, self.tok_span(t)) for t in toks]
        if any(d is None for d in dims):
            return
        seq, offsets, h, w = dims
        if any(d.infinite for d in dims):
            self.errors.error(f"windows {st.name}: its tokens, offsets and grid must be finite "
                              "dims", st.span, "e.g. `input win : windows[T, B, H, W, 2]` with "
                              "dim T = 64, B = 49, H = W = 8 (windows of 4 x 4 tokens)")
            return
        side = math.isqrt(offsets.size)
        window = (side + 1) // 2
        if side * side != offsets.size or side % 2 == 0 or window < 2:
            self.errors.error(f"windows {st.name}: the offset dim {offsets.name} = "
                              f"{offsets.size} is not (2w-1)² for a window of w x w tokens, "
                              "w ≥ 2", st.span, "e.g. `dim B = 49` for windows of 4 x 4")
            return
        problem = (f"its tokens {seq.name} = {seq.size} are not the grid's {h.size} x {w.size}"
                   if seq.size != h.size * w.size else
                   f"a window of {window} x {window} does not tile the {h.size} x {w.size} grid"
                   if h.size % window or w.size % window else
                   f"the shift {shift} is not less than the window's side {window}"
                   if shift >= window else
                   f"the mask {mask} is not a positive number" if mask <= 0 else None)
        if problem is not None:
            self.errors.error(f"windows {st.name}: {problem}", st.span,
                              "windows tile the grid whole (Swin pads a grid to whole windows "
                              "with zero tokens, which the language does not say: choose an "
                              "image whose grid the window divides), shifted by less than one")
            return
        if self.define(st.name, st.name_span):
            self.inputs.append(Input(st.name, offsets.name, st.span, "windows", seq.name,
                                     window=(h.name, w.name, shift, mask)))
            self.tokenwise.add(st.name)
            self.values[st.name] = offsets.name

    def stmt_scale(self, st: Stmt) -> None:
        if st.value is not None and st.value <= 0:
            self.errors.error(f"scale {st.name} must be positive", st.span,
                              "give its value at the base width, e.g. `scale tau = 0.125`")
            return
        if self.define(st.name, st.name_span):
            self.params.append(Param(st.name, (), st.span, st.value))
            self.param_names.add(st.name)
            self.values[st.name] = None

    def stmt_param(self, st: Stmt) -> None:
        shape_toks, value, *eps = st.value
        standardised = eps[0] if eps else None
        shape = self.check_shape(shape_toks, st.span)
        if shape is None:
            return
        if len(shape) >= 5:
            self.errors.error(f"param {st.name} has {len(shape)} dims; params are vectors, "
                              "matrices or convolution kernels", st.span,
                              "write a matrix as [fan_out, fan_in], a kernel as "
                              "[out, in, kh, kw], a depthwise kernel as [c, kh, kw]")
            return
        if len(shape) in (3, 4) and any(self.dims[d].infinite for d in shape[-2:]):
            self.errors.error(f"kernel {st.name}: its spatial size must be finite", st.span,
                              "e.g. `dim k = 3` and `param K : [n, n, k, k]`")
            return
        if value is not None and len(shape) != 1:
            self.errors.error(f"only a vector param can have a constant init, not {st.name}",
                              st.span, "e.g. a LayerNorm gain: `param g : [n] = 1`")
            return
        if standardised is not None and (len(shape) not in (2, 4) or not standardised > 0):
            self.errors.error(f"only a matrix or a convolution kernel is standardised, with an "
                              f"eps above 0, not {st.name}", st.span,
                              "e.g. BiT's convolution: `param K : [n, n, k, k] standardised"
                              "(1e-6)`")
            return
        name = self.local(st.name, st.name_span)
        if name is not None and self.define(name, st.name_span):
            p = Param(name, shape, st.span, value, standardised)
            (self.params if self.block is None else self.block_params).append(p)
            self.param_names.add(name)
            if self.block is not None:
                self.scope[st.name] = name
            if len(shape) >= 2:
                self.matrices[name] = p
            else:
                self.values[name] = shape[0]

    def stmt_assign(self, st: Stmt) -> None:
        self.assign(st)

    def stmt_output_assign(self, st: Stmt) -> None:
        if self.assign(st):
            self.mark_output(st.name, st.name_span)

    def stmt_output_mark(self, st: Stmt) -> None:
        if st.name in self.poisoned:
            return
        if st.name in self.matrices:
            self.errors.error(f"'{st.name}' is a matrix param, not a vector", st.name_span,
                              "output the vector it computes, e.g. `output y = W @ x`")
        elif st.name not in self.values:
            self.undefined(st.name, st.name_span)
        else:
            self.mark_output(st.name, st.name_span)

    def mark_output(self, name: str, span: Span) -> None:
        if name in self.outputs:
            self.errors.error(f"'{name}' is marked as an output twice", span,
                              "mark each output once")
            return
        self.outputs.append(name)
        self.output_spans.append(span)

    def assign(self, st: Stmt) -> bool:
        n_errors, n_body, n_blocks = len(self.errors.errors), len(self.body), len(self.blocks)
        name = self.local(st.name, st.name_span)
        if name is None:
            return False
        if name in self.defined_at:
            self.define(name, st.name_span)
            return False
        self.target = name
        value = self.expr(st.value)
        if self.block is not None:
            self.scope[st.name] = name
        if value is None or len(self.errors.errors) > n_errors:
            del self.body[n_body:]
            del self.blocks[n_blocks:]
            self.poisoned.add(name)
            self.defined_at.setdefault(name, st.name_span)
            return False
        if isinstance(value, Scalar):
            self.errors.error(f"'{st.name}' is a constant, not a vector", st.span,
                              "scale a vector instead, e.g. `y = 0.5 * x`")
            return False
        if isinstance(value, Matrix):
            self.errors.error(f"'{st.name}' would alias the matrix param {value.name}", st.span,
                              "params cannot be renamed; use the param directly")
            return False
        last = self.body[-1] if len(self.body) > n_body else None
        if last is not None and value.single() == last.out:
            # the top-level instruction takes the statement's name instead of a fresh one
            self.body[-1] = _renamed(last, name, st.span)
            self.values.pop(last.out)
            self.carry_marks(last.out, name)
            if self.blocks and self.blocks[-1].result == last.out:  # a block's result
                self.blocks[-1] = replace(self.blocks[-1], result=name)
        else:
            self.check_coefficients(value, st.span)
            self.body.append(LinComb(name, value.items(), st.span, value.const))
            mark_tokens(self, name, tuple(value.terms), st.span)
            sizes = [self.pixels[n] for n in value.terms if n in self.pixels]
            if sizes:
                self.pixels[name] = sizes[0]
        self.values[name] = value.dim
        self.define(name, st.name_span)
        return True

def _renamed(ins, name: str, span: Span):
    kwargs = dict(ins.__dict__)
    kwargs.pop("operands", None)
    kwargs.update(out=name, span=span)
    return type(ins)(**{k: kwargs[k] for k in ins.__dataclass_fields__})



def lower(stmts: list[Stmt], source: str, filename: str) -> Program:
    """The statements of one program as a verified IR :class:`Program`; raise
    :class:`SemanticError` with every name, dim and shape problem found."""
    return _Lowering(stmts, source, filename).run()

