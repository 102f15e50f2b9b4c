"""The per-instruction emitters: one method per IR class turns an instruction into the Python
expression that computes it (the codegen stage's rule table), with each param's multiplier.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.exponents import ABC
from ..ir.ddot import DDOT
from ..ir.functions import (
    AT,
    CAT,
    COORDINATEWISE,
    DWCONV,
    FUNCTIONS,
    MUL,
    PART,
    PICK,
    PLACE,
    RMS,
    SHIFT,
    SPREAD,
    TCONV,
    torch_call,
)
from ..ir.hdot import HDOT
from ..ir.program import (
    RELATIVE_KINDS,
    Delta,
    Dot,
    LinComb,
    MatMul,
    Mean,
    Mix,
    Nonlin,
    Prepend,
    Program,
    Relayout,
    Route,
    RouteIn,
    split_heads_dim,
)
from ..ir.sequences import causal_parts, value_sequences
from ..ir.ssd import SSD
from ..ir.wkv import WKV
from .fusions import Attention, Norm
from .literals import dim_expr, number_literal

# a coordinatewise function is a call of its torch function (the IR's table), identity none;
# the others act over an axis and are written out around theirs
_TORCH_FN = {name: FUNCTIONS[name].torch for name in COORDINATEWISE if name != "identity"}

_NORMS = {"layernorm": "torch.nn.functional.layer_norm({x}, {x}.shape[-1:])",
          "avgpool": "_avgpool({x})",
          "global_pool": "{x}.mean(dim=(-3, -2))",
          "maxpool": "_maxpool({x})",
          "maxpool3": "_maxpool3({x})",
          "maxpool3z": "_maxpool3z({x})",
          "avgpool3": "_avgpool3({x})",
          "maxpool2": "_maxpool2({x})",
          "subsample": "_subsample({x})",
          "batchnorm": "_batchnorm({x})",
          "groupnorm": "_groupnorm({x})",
          "grn": "_grn({x})",
          "first": "{x}.select(-2, 0)",  # (..., tokens, dim): the first token's vector
          "last": "{x}.select(-2, -1)",  # ... and the last token's
          "rmsnorm": "{x} * torch.rsqrt({x}.pow(2).mean(-1, keepdim=True) + 1e-6)",
          "softmax": "torch.softmax({x}, dim=-1)",
          "causal_softmax": "_causal_softmax({x})"}


class Emitter:
    """One method per IR class turns an instruction into a Python expression (the rule table
    of the codegen stage); ``ref`` renders an operand with its multiplier. ``attrs`` and
    ``local`` map program names to the Model's attributes and to ``vectors``' local names."""

    def __init__(self, program: Program, abc: dict[str, ABC], attrs: dict[str, str],
                 mults: dict[str, str], local: dict[str, str]):
        self.program, self.abc = program, abc
        self.attrs, self.mults, self.local = attrs, mults, local
        self.helpers: set[str] = set()
        self.kinds = {i.name: i.kind for i in program.inputs}
        self.reaches = {i.name: i.reach for i in program.inputs if i.reach is not None}

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
        return dim_expr(self.program, name, "self.width")

    def times_mult(self, weight: str) -> str:
        return f" * self.{self.mults[weight]}" if weight in self.mults else ""

    def weight(self, name: str) -> str:
        p = self.program.param_table[name]
        if p.standardised is not None:  # every use reads the standardised rows (ir.Param)
            self.helpers.add("_standardise")
            return f"_standardise(self.{self.attrs[name]}, {float(p.standardised)!r})"
        return f"self.{self.attrs[name]}"

    def MatMul(self, ins: MatMul) -> str:
        w = self.weight(ins.weight) + (".t()" if ins.transposed else "")
        if ins.geometry is not None:
            g = ins.geometry
            helper = "_conv_geometry" if g.groups == 1 else "_conv_grouped"
            groups = f", {g.groups}" if g.groups != 1 else ""
            self.helpers.add(helper)
            rhs = (f"{helper}({self.ref(ins.arg)}, {w}, {g.stride}, {g.pads}, "
                   f"{g.dilation}{groups})")
        elif len(self.program.param_table[ins.weight].shape) == 4:
            self.helpers.add("_conv")
            rhs = f"_conv({self.ref(ins.arg)}, {w})"
        elif self.kinds.get(ins.arg) == "windows":  # Swin's: a bias per head and mask
            self.helpers.add("_window_bias")
            rhs = f"_window_bias({self.ref(ins.arg)}, {w})"
        elif self.kinds.get(ins.arg) in RELATIVE_KINDS:  # a bias per head on token pairs
            self.helpers.add("_relative_bias")
            rhs = f"_relative_bias({self.ref(ins.arg)}, {w})"
        elif self.kinds.get(ins.arg) in ("tokens", "positions", "axial"):  # one-hot: a lookup
            rhs = f"torch.nn.functional.embedding({self.ref(ins.arg)}, {w}.t())"
        else:
            rhs = f"torch.nn.functional.linear({self.ref(ins.arg)}, {w})"
        return rhs + self.times_mult(ins.weight)

    def LinComb(self, ins: LinComb) -> str:
        parts = []
        dims = self.program.value_dims
        for k, (c, v) in enumerate(ins.terms):
            mag = number_literal(abs(c), f"the coefficient of {v}", ins.span)
            ref = self.ref(v)
            if v in self.program.param_table and dims.get(v) not in (None, dims[ins.out]):
                # a bias of a head dim (the program's verifier allows no other): on every head
                self.helpers.add("_heads_bias")
                ref = f"_heads_bias({ref}, {self.dim(dims[ins.out])})"
            term = ref if abs(c) == 1 else f"{mag} * ({ref})"
            parts.append(("-" if c < 0 else "") + term if k == 0 else
                         f"{'-' if c < 0 else '+'} {term}")
        if ins.const:  # a number added to a function of params (1 + sigmoid(w))
            mag = number_literal(abs(ins.const), f"the constant added in {ins.out}", ins.span)
            parts.append(f"{'-' if ins.const < 0 else '+'} {mag}")
        return " ".join(parts)

    def Nonlin(self, ins: Nonlin) -> str:
        if ins.fn == CAT and ins.heads is not None:  # side by side in each head of dv
            self.helpers.add("_cat_heads")
            parts = ", ".join(self.ref(a) for a in ins.args)
            return f"_cat_heads(({self.dim(ins.over)}) // ({self.dim(ins.heads)}), {parts})"
        if ins.fn == CAT:  # the parts side by side along the last axis (their features)
            self.helpers.add("_cat")
            return f"_cat({', '.join(self.ref(a) for a in ins.args)})"
        if ins.fn == PART:  # coordinates i·d .. (i+1)·d - 1 of the last axis
            d = self.dim(ins.over)
            return f"({self.ref(ins.args[0])}).unflatten(-1, (-1, {d}))[..., {ins.index}, :]"
        if ins.fn == AT:  # rows over a window's offsets, read at each pair's, plus its mask
            self.helpers.add("_window_bias")
            g, win = ins.args
            return f"_window_bias({self.ref(win)}, ({self.ref(g)}).t())"
        if ins.fn == SHIFT:  # the token vectors moved, zeros where none comes
            self.helpers.add("_shift")
            return f"_shift({self.ref(ins.args[0])}, {ins.index})"
        if ins.fn == RMS:  # the RMS of the last axis, kept as an axis of one coordinate
            return f"({self.ref(ins.args[0])}).pow(2).mean(-1, keepdim=True).sqrt()"
        if ins.fn == PICK:  # chosen coordinates of the last axis, in order
            return f"({self.ref(ins.args[0])})[..., {list(ins.index)}]"
        if ins.fn == PLACE:  # one sequence's token vectors in place of some of another's
            self.helpers.add("_place")
            v, h = ins.args
            return f"_place({self.ref(v)}, {self.ref(h)}, {ins.index})"
        if ins.fn == SSD:  # state-space mixing weights per head (emit/ssd.py)
            self.helpers.add("_ssd")
            return f"_ssd({', '.join(self.ref(a) for a in ins.args)})"
        if ins.fn == DDOT:  # a per-head dot decayed per key channel (emit/ddot.py)
            self.helpers.add("_ddot")
            return f"_ddot({', '.join(self.ref(a) for a in ins.args)}, {self.dim(ins.over)})"
        if ins.fn == WKV:  # RWKV's time mixing per channel (emit/wkv.py)
            self.helpers.add("_wkv")
            return f"_wkv({', '.join(self.ref(a) for a in ins.args)})"
        if ins.fn == HDOT:  # per head of one token, the sum of its coordinates' products
            u, v = (self.ref(a) for a in ins.args)
            return f"({u} * {v}).unflatten(-1, (-1, {self.dim(ins.over)})).sum(-1)"
        if ins.fn == SPREAD:  # one number per head, repeated over its head's coordinates
            return f"({self.ref(ins.args[0])}).repeat_interleave({self.dim(ins.over)}, dim=-1)"
        if ins.fn == DWCONV:  # the kernel [c, kh, kw] (times its multiplier), one per channel
            self.helpers.add("_dwconv")
            kernel, x = ins.args
            if ins.geometry is not None:
                g = ins.geometry
                self.helpers.add("_dwconv_geometry")
                return (f"_dwconv_geometry({self.ref(x)}, {self.ref(kernel)}, {g.stride}, "
                        f"{g.pads}, {g.dilation})")
            return f"_dwconv({self.ref(x)}, {self.ref(kernel)})"
        if ins.fn == TCONV:  # the kernel [c, 1, K] (times its multiplier) over the tokens
            self.helpers.add("_tconv")
            kernel, x = ins.args
            return f"_tconv({self.ref(x)}, {self.ref(kernel)}, {ins.index})"
        if ins.fn == MUL:
            # a scalar (a whole-dim dot: one value per example) scales every coordinate of a
            # vector, so it needs a trailing axis; a scale is a plain float and needs none
            dims = self.program.value_dims
            vector = any(dims.get(a) is not None for a in ins.args)
            gain = next((a for a in ins.args if dims.get(a) not in (None, dims[ins.out])), None)
            if gain is not None:  # a head dim's gain: every head of the other factor times it
                (x,) = (a for a in ins.args if a != gain)
                self.helpers.add("_heads_gain")
                return f"_heads_gain({self.ref(x)}, {self.ref(gain)})"
            return " * ".join(
                f"({self.ref(a)}).unsqueeze(-1)"
                if vector and dims.get(a) is None and not self._is_scale(a) else
                self._gate(a, ins) for a in ins.args)
        x = self.ref(ins.args[0])
        if "softmax" in ins.fn and (reach := self._reach_in(ins.args[0])) is not None:
            # logits with a relative bias of a reach attend the keys within it: -inf beyond
            self.helpers.add("_beyond_reach")
            x = f"_beyond_reach({x}, {reach})"
        if len(ins.args) == 2 and ins.args[1] not in self.program.param_table:
            # one softmax over two sets of keys (merged attention), read on the first's keys;
            # the causal mask on the set that pairs the queries' tokens with themselves
            seqs = self._sequences()
            masks = causal_parts(ins, [seqs[a] for a in ins.args])
            self.helpers.add("_merged_softmax")
            return (f"_merged_softmax({x}, {self.ref(ins.args[1])}, {masks[0]}, {masks[1]})")
        if len(ins.args) == 2:  # a softmax with a sink: one more logit per head in every row
            self.helpers.add("_sink_softmax")
            return (f"_sink_softmax({x}, {self.ref(ins.args[1])}, "
                    f"{ins.fn == 'causal_softmax'})")
        if ins.fn == "softmax" and (win := self._windows_in(ins.args[0])) is not None:
            # logits with Swin's bias attend within its windows: -inf between them
            return f"torch.softmax({x} + {self.ref(win)}[2], dim=-1)"
        if ins.fn == "identity":
            return x
        if ins.over is not None:  # a norm over each head's coordinates (QK-norm)
            self.helpers.add(f"_heads_{ins.fn}")
            return f"_heads_{ins.fn}({x}, {self.dim(ins.over)})"
        if ins.fn in _NORMS:
            if _NORMS[ins.fn].startswith("_"):  # a module-level helper of the templates
                self.helpers.add(f"_{ins.fn}")
            return _NORMS[ins.fn].format(x=x)
        return torch_call(ins.fn, x)

    def _gate(self, a: str, ins: Nonlin) -> str:
        """A factor of a product; a vector of no pixels times an image (a squeeze-and-excitation
        gate) gets the image's two pixel axes, to scale every pixel alike, and a vector per
        sequence times one per token the token axis."""
        spatial = self.program.spatial
        if spatial.get(ins.out) is not None and spatial.get(a) is None and \
                a not in self.program.param_table:
            return f"({self.ref(a)})[..., None, None, :]"
        if self.program.has_tokens and a not in self.program.param_table:
            # a vector per sequence times one per token (SwiftFormer's global query times its
            # keys): the token axis it lacks, to scale every token alike
            seqs = self._sequences()
            if seqs.get(ins.out) and not seqs.get(a) and spatial.get(a) is None:
                return f"({self.ref(a)})[..., None, :]"
        return f"({self.ref(a)})"

    def _sequences(self) -> dict:
        """The sequence each value runs over (ir/sequences.py), read once."""
        if getattr(self, "_seqs", None) is None:
            self._seqs = value_sequences(self.program)
        return self._seqs

    def kv(self, query: str, kv: str, over: str) -> str:
        """``kv`` as the query heads see it: repeated per group when it has fewer heads."""
        dims = self.program.value_dims
        table = self.program.dim_table
        if table[dims[query]].key() == table[dims[kv]].key():
            return self.ref(kv)
        self.helpers.add("_repeat_kv")
        return f"_repeat_kv({self.ref(kv)}, {self.dim(dims[query])}, {self.dim(over)})"

    def Dot(self, ins: Dot) -> str:
        if ins.over is None:
            return f"(({self.ref(ins.left)}) * ({self.ref(ins.right)})).sum(-1)"
        self.helpers.add("_heads_dot")
        k = self.kv(ins.left, ins.right, ins.over)
        return f"_heads_dot({self.ref(ins.left)}, {k}, {self.dim(ins.over)})"

    def Mix(self, ins: Mix) -> str:
        self.helpers.add("_mix")
        # the values' heads: of their own head dim (mix(p, v, dv)), else the queries'
        over = ins.head or split_heads_dim(self.program.value_dims[ins.weights])[1]
        return f"_mix({self.ref(ins.weights)}, {self.kv(ins.out, ins.values, over)})"

    def Delta(self, ins: Delta) -> str:
        self.helpers.add("_delta")
        # b and g of no sequence (params of the heads, or one vector per sequence: (..., heads)
        # with the batch axis) get a token axis of 1, so that _delta broadcasts them over the
        # tokens, never over the batch
        seqs = self._sequences()
        ops = [self.ref(a) if i < 2 or seqs.get(a) else f"({self.ref(a)}).unsqueeze(-2)"
               for i, a in enumerate(ins.operands)]
        return f"_delta({', '.join(ops)})"

    def Route(self, ins: Route) -> str:
        self.helpers.add("_route")
        experts = ", ".join(self.ref(e) for e in ins.experts)
        return f"_route({self.ref(ins.gates)}, {ins.k}, {ins.normalise}, {experts})"

    def RouteIn(self, ins: RouteIn) -> str:
        self.helpers.add("_route_in")
        return f"_route_in({self.ref(ins.gates)}, {ins.k}, {ins.expert}, {self.ref(ins.arg)})"

    def Prepend(self, ins: Prepend) -> str:
        # (..., tokens, dim): the token param, broadcast over the batch, becomes token 0; a
        # vector per sequence (..., dim) is given its token axis
        x, token = self.ref(ins.arg), self.ref(ins.token)
        if ins.token not in self.program.param_table:
            token = f"{token}.unsqueeze(-2)"
        if ins.at:  # before token k: the tokens before it, the learned one, the rest
            self.helpers.add("_insert")
            return f"_insert({x}, {token}, {ins.at})"
        return f"torch.cat([({token}).expand(*{x}.shape[:-2], 1, -1), {x}], dim=-2)"

    def Relayout(self, ins: Relayout) -> str:
        # an image is (..., H, W, dim), a sequence (..., tokens, dim): row-major pixels are the
        # tokens in order, as torch's x.flatten(2).transpose(1, 2) reads them
        x = self.ref(ins.arg)
        if ins.merge is not None:  # Swin's order of the 2x2 block's pixels
            self.helpers.add("_merge2x2")
            return f"_merge2x2({x})"
        if ins.tail:  # the tokens after the first k, k = the two sequences' difference
            dims, (seq,) = self.program.dim_table, self._sequences()[ins.arg]
            return f"{x}[..., {dims[seq].size - dims[ins.seq].size}:, :]"
        if ins.grid is None:
            return f"{x}.flatten(-3, -2)"
        return f"{x}.unflatten(-2, ({self.dim(ins.grid[0])}, {self.dim(ins.grid[1])}))"

    def _summed(self, name: str):
        """The instructions whose values are terms of the sum ``name`` (attention logits plus
        a bias), reached through sums, each once: where a bias input meets the logits."""
        made = {i.out: i for i in self.program.body}
        todo, seen = [name], set()
        while todo:
            ins = made.get(todo.pop())
            if ins is None or ins.out in seen:
                continue
            seen.add(ins.out)
            yield ins
            if isinstance(ins, LinComb):
                todo += [t for _, t in ins.terms]

    def _windows_in(self, name: str) -> str | None:
        """The windows input whose bias ``R @ win`` (or ``at(g, win)``) is a term of the sum
        ``name`` (attention logits plus Swin's bias), or None."""
        for ins in self._summed(name):
            if isinstance(ins, MatMul) and self.kinds.get(ins.arg) == "windows":
                return ins.arg
            if isinstance(ins, Nonlin) and ins.fn == AT:  # at(g, win): the same bias, computed
                return ins.args[1]
        return None

    def _reach_in(self, name: str) -> int | None:
        """The reach of the relative input whose bias ``R @ rel`` is a term of the sum
        ``name`` (attention logits plus T5's bias, LongT5's block-local attention), or None."""
        for ins in self._summed(name):
            if isinstance(ins, MatMul) and ins.arg in self.reaches:
                return self.reaches[ins.arg]
        return None

    def Mean(self, ins: Mean) -> str:
        # (..., tokens, dim) -> (..., dim): a per-token vector is never a param, so a local name
        x = self.ref(ins.arg)
        return f"{x}[..., {ins.start}:, :].mean(-2)" if ins.start else f"{x}.mean(-2)"

    def fused(self, f: Attention | Norm) -> str:
        if isinstance(f, Norm):  # the explicit path's eps: layer_norm's default
            x = self.ref(f.x)
            bias = f", {self.ref(f.bias)}" if f.bias else ""
            return f"torch.nn.functional.layer_norm({x}, {x}.shape[-1:], {self.ref(f.gain)}{bias})"
        # values of heads of their own (a head dim not the queries') with fewer heads than the
        # queries: _grouped_attention would split them in heads of the queries' head dim
        own = f.value_head is not None and f.grouped
        helper = ("_value_heads_attention" if own else
                  "_grouped_attention" if f.grouped else "_attention")
        self.helpers.add(helper)
        scale = " * ".join(self.ref(s) for s in f.scales) or "1.0"
        value_head = f", {self.dim(f.value_head)}" if own else ""
        return (f"{helper}({self.ref(f.q)}, {self.ref(f.k)}, {self.ref(f.values)}, "
                f"{self.dim(f.over)}{value_head}, {scale}, {f.causal})")

    def lines(self, body: Sequence, indent: str = "        ",
              fused: dict[str, Attention | Norm] | None = None) -> list[str]:
        """Assignments computing ``body`` in order; with ``fused`` (from ``find_fusions``), each
        fused instruction is one call and its chain is not computed."""
        fused = fused or {}
        skip = {v for f in fused.values() for v in f.chain}
        out = []
        for ins in body:
            if ins.out in skip:
                continue
            expr = (self.fused(fused[ins.out]) if ins.out in fused
                    else getattr(self, type(ins).__name__)(ins))
            out.append(_wrapped(f"{indent}{self.local[ins.out]} = {expr}"))
        return out


def _wrapped(line: str, width: int = 100) -> str:
    """A call's line broken after its commas, aligned under its first argument, where it passes
    ``width`` columns (emitted code stays clean under ruff); other lines as they are."""
    if len(line) <= width or "(" not in line or '"' in line or "'" in line:
        return line
    col = line.index("(") + 1
    rows, parts = [line[:col]], line[col:].split(", ")
    for part in parts:
        if rows[-1][-1] not in "(" and len(rows[-1]) + len(part) + 2 > width:
            rows[-1] += ","
            rows.append(" " * col + part)
        else:
            rows[-1] += part if rows[-1][-1] == "(" else ", " + part
    return "\n".join(rows)
