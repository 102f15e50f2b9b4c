"""Trace a PyTorch model into a Tensor Program: ``from_torch(build, widths, example_inputs)``.

The model is exported (``torch.export``, non-strict) on the meta device at two widths; the
aten graph is walked once per width by an abstract interpreter whose values say what each tensor
is to the language: a per-token vector (with its layout: flat, or split into heads), a param (a
weight, a row slice of a fused one, possibly transposed), token ids, attention logits or
weights, or a constant (masks and positions, evaluated on the CPU since they hold no params).
Each width gives the same statements with different sizes; a size that changes in proportion
to the width is a width dim, one that stays is finite, anything else is refused. Coordinatewise
functions are identified by their values (HF's hand-written tanh GELU is ``gelu``), never by
the module's class name. An op outside the language is a :class:`TraceError` at the user's line.
"""

from __future__ import annotations

import dataclasses
import linecache
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import Span, TraceError, UsageError
from .lower import FUNCTIONS

_RESERVED = {
    "width",
    "depth",
    "dim",
    "input",
    "param",
    "scale",
    "output",
    "block",
    "return",
    "repeat",
    "tokens",
    "positions",
    "image",
    "n",
    "tok",
    "pos",
} | set(FUNCTIONS)
_IDENTITY_OPS = {
    "contiguous",
    "alias",
    "clone",
    "dropout",
    "detach",
    "to",
    "type_as",
    "_to_copy",
    "feature_dropout",
    "lift_fresh_copy",
}
_CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}
_VIEW_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten"}


# --- the abstract values ------------------------------------------------------------------------


@dataclass
class Vec:
    """A program vector; ``tags`` name each torch axis: 'tok' (batch or sequence), 'F' (the
    vector's dim), or 'H' and 'dh' (its heads and head dim)."""

    name: str
    tags: tuple
    dim: int  # the flat dim's size
    dh: int | None = None


@dataclass
class PRef:
    """A param, or a row slice of one, as a matrix in its torch layout (``t``: transposed)."""

    target: str
    shape: tuple
    t: bool = False
    rows: tuple[int, int] | None = None  # a slice of the param's first program axis


@dataclass
class Tok:
    tags: tuple


@dataclass
class Conc:
    """A value computed from inputs and constants only, known on the CPU."""

    value: object


@dataclass
class Aux:
    """A value free of params whose entries are unknown here (from a buffer)."""


@dataclass
class Pointwise:
    """f(src) coordinatewise; identified by its values when something else consumes it."""

    src: Vec
    f: Callable
    node: str = ""  # the node whose value this is


@dataclass
class Affine:
    """W @ x + b, emitted when consumed (a split along its rows makes it several)."""

    x: Vec
    w: PRef
    b: PRef | None
    node: str  # the node whose value this is (a split's getitem)
    tags: tuple
    layer: str = ""  # the node that applies the weight


@dataclass
class Parts:
    items: list


@dataclass
class MeanSq:
    src: Vec
    inv: bool = False  # rsqrt taken


@dataclass
class Scores:
    """Attention logits factor * dot(q, k, dh), before the softmax."""

    q: Vec
    k: Vec
    factor: float
    node: str
    tags: tuple
    causal: bool = False


@dataclass
class Probs:
    scores: Scores
    name: str


# --- what the trace gives ---------------------------------------------------------------------


@dataclass
class ParamUse:
    """One program param: which torch tensor (and rows) it is, and its program shape's dims."""

    target: str
    rows: tuple[Fraction, Fraction] | None  # the block of the torch rows (of the out axis)
    transposed: bool  # program layout [fan_out, fan_in] is the torch tensor transposed
    module: str  # the module that applies it (for a forward patch)
    node: str


@dataclass
class Trace:
    """One width's conversion: statements as templates with size slots."""

    decls: list[str] = field(default_factory=list)
    stmts: list[str] = field(default_factory=list)
    slots: list[tuple[str, float]] = field(default_factory=list)
    params: dict[str, ParamUse] = field(default_factory=dict)
    param_dims: dict[str, list[str]] = field(default_factory=dict)
    vectors: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (node, kind)
    scales: dict[str, dict] = field(default_factory=dict)  # scale -> {q: vector, slot: i}
    # vector -> (weight, bias) of the W @ x + b that made it
    producers: dict[str, tuple] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def _user_span(node) -> Span | None:
    """The innermost frame of the node's stack outside torch: the user's line."""
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    for path, line in reversed(frames):
        if "/torch/" in path or path.startswith("<"):
            continue
        text = linecache.getline(path, int(line))
        if not text:
            continue
        lines = linecache.getlines(path)
        col = len(text) - len(text.lstrip()) + 1
        return Span(int(line), col, int(line), len(text.rstrip("\n")) + 1, "".join(lines), path)
    return None


def _refuse(node, what: str, help: str | None = None) -> TraceError:
    module = _module(node)
    where = f" (in {module})" if module else ""
    return TraceError(
        f"cannot trace {what}{where}",
        _user_span(node),
        help
        or "the Tensor Program language has no such op; rewrite this part "
        "with supported ops (docs/torch.md lists them)",
    )


def _module(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _identify(f: Callable) -> tuple[str, float] | None:
    """(function, coefficient) with f(t) = coefficient * function(t) on [-4, 4], or None."""
    import torch

    t = torch.linspace(-4, 4, 161, dtype=torch.float64)
    y = f(t)
    fns = {
        "identity": t,
        "relu": torch.relu(t),
        "gelu": torch.nn.functional.gelu(t),
        "silu": torch.nn.functional.silu(t),
        "tanh": torch.tanh(t),
        "sigmoid": torch.sigmoid(t),
    }
    for name, ref in fns.items():
        c = float((y @ ref) / (ref @ ref))
        if abs(c) > 1e-12 and float((y - c * ref).abs().max()) < 2e-3 * max(1.0, abs(c)):
            return name, c
    return None


class _Converter:
    """Walks one exported graph; one method per aten op family (the op table of this stage)."""

    def __init__(self, ep, base_params: dict):
        self.ep = ep
        self.base = base_params  # target -> ("const", value) | ("normal", std) at the base
        self.out = Trace()
        self.env: dict = {}
        self.names: set[str] = set(_RESERVED)
        self.declared_params: set[str] = set()
        self.tokens_vocab: int | None = None
        self.tokens_seq: int | None = None
        self._rows: dict[str, tuple[int, int] | None] = {}  # program param -> torch rows
        self._made: dict[str, Vec] = {}  # node -> the vector emitted for its lazy value

    # -- slots and names ---------------------------------------------------------------------
    def dim(self, size: int) -> str:
        self.out.slots.append(("dim", size))
        return f"{{s{len(self.out.slots) - 1}}}"

    def fresh(self, base: str) -> str:
        name = re.sub(r"\W", "_", base).strip("_") or "v"
        if name[0].isdigit() or name in self.names:
            name = f"v_{name}"
        k, cand = 1, name
        while cand in self.names:
            k, cand = k + 1, f"{name}_{k}"
        self.names.add(cand)
        return cand

    # -- params ------------------------------------------------------------------------------
    def param(self, ref: PRef, node, *, lookup: bool = False) -> tuple[str, bool]:
        """The program param for a torch matrix applied as W @ x (program layout [out, in]);
        returns (name, transposed use)."""
        shape = ref.shape if not ref.t else ref.shape[::-1]  # the matrix as applied: [in, out]?
        # torch linear applies W: [out, in]; an embedding table [V, n] is applied as [n, V]
        as_applied_t = ref.t ^ lookup  # True: program [out, in] is the torch tensor transposed
        for name, use in self.out.params.items():
            if use.target == ref.target and self._rows.get(name) == ref.rows:
                return name, use.transposed != as_applied_t
        part = round(ref.rows[0] / (ref.rows[1] - ref.rows[0])) if ref.rows else 0
        name = self.fresh(
            strip_prefix(ref.target).replace(".", "_") + (f"_part{part}" if ref.rows else "")
        )
        torch_shape = list(ref.shape)
        prog = torch_shape[::-1] if as_applied_t else list(torch_shape)
        if ref.rows:
            prog[0] = ref.rows[1] - ref.rows[0]
        del shape
        rows = None
        if ref.rows:  # as fractions of the rows, which scale with the width
            total = torch_shape[1] if as_applied_t else torch_shape[0]
            rows = (Fraction(ref.rows[0], total), Fraction(ref.rows[1], total))
        self._rows[name] = ref.rows
        self.out.params[name] = ParamUse(
            ref.target, rows, as_applied_t, strip_prefix(_module(node)), node.name
        )
        dims = [self.dim(s) for s in prog]
        init = self.base.get(ref.target, ("normal", 1.0))
        tail = f" = {init[1]:g}" if init[0] == "const" and len(prog) == 1 else ""
        self.out.decls.append(f"param {name} : [{', '.join(dims)}]{tail}")
        return name, False

    def vector_param(self, ref: PRef, node) -> str:
        name, _ = self.param(ref, node)
        return name

    # -- materialising lazy values ------------------------------------------------------------
    def vec(self, v, node) -> Vec:
        if isinstance(v, Vec):
            return v
        if isinstance(v, Affine):  # once per value, however many times it is consumed
            if v.node not in self._made:
                self._made[v.node] = self.emit_affine(v, v.node)
            made = self._made[v.node]
            return Vec(made.name, v.tags, made.dim, made.dh)
        if isinstance(v, Pointwise):
            found = _identify(v.f)
            if found is None:
                raise _refuse(
                    node,
                    "a coordinatewise function that is none of identity, relu, "
                    "gelu, silu, tanh, sigmoid",
                )
            fn, c = found
            expr = v.src.name if fn == "identity" else f"{fn}({v.src.name})"
            if abs(c - 1) > 1e-9:
                expr = f"{c!r} * {expr}"
            if expr == v.src.name:
                return v.src
            name = self.fresh(v.node)
            self.out.stmts.append(f"{name} = {expr}")
            self.out.vectors[name] = (v.node, "out")
            return Vec(name, v.src.tags, v.src.dim, v.src.dh)
        if isinstance(v, Probs):
            raise _refuse(
                node,
                f"{node.target} on attention weights (only a matmul with the values is supported)",
            )
        raise _refuse(node, f"{node.target} on a value that is not a per-token vector")

    def emit_affine(self, a: Affine, node_name: str) -> Vec:
        w, trans = self.param(a.w, self._node(a.layer or a.node))
        rows = a.w.rows
        dim = (rows[1] - rows[0]) if rows else (a.w.shape[1] if a.w.t else a.w.shape[0])
        expr = f"{w}{'.T' if trans else ''} @ {a.x.name}"
        if trans:  # a tied matrix read back: its multiplier differs from the lookup's
            self.out.slots.append(("scale", 1.0))
            sc = self.fresh(f"tie_{node_name}")
            self.out.decls.append(f"scale {sc} = {{s{len(self.out.slots) - 1}}}")
            self.out.scales[sc] = {
                "tied": w,
                "slot": len(self.out.slots) - 1,
                "module": strip_prefix(_module(self._node(a.layer or a.node))),
                "node": a.layer or a.node,
            }
            expr = f"{sc} * ({expr})"
        bias = self.vector_param(a.b, self._node(a.layer or a.node)) if a.b is not None else None
        if bias:
            expr += f" + {bias}"
        name = self.fresh(node_name)
        self.out.stmts.append(f"{name} = {expr}")
        self.out.vectors[name] = (node_name, "out")
        self.out.producers[name] = (w, bias)
        return Vec(name, a.tags, dim)

    def _node(self, name):
        return self.by_name[name]

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> Trace:
        import torch

        sig = self.ep.graph_signature
        kinds = {s.arg.name: s for s in sig.input_specs}
        self.by_name = {n.name: n for n in self.ep.graph.nodes}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                spec = kinds[node.name]
                val = node.meta["val"]
                if spec.kind.name == "PARAMETER":
                    self.env[node.name] = PRef(spec.target, tuple(val.shape))
                elif spec.kind.name == "USER_INPUT":
                    if val.dtype not in (torch.long, torch.int32, torch.int64):
                        raise TraceError(
                            f"input {node.name} is {val.dtype}: only token ids "
                            "(integer tensors) can be traced for now",
                            help="pass token ids as the example inputs",
                        )
                    self.env[node.name] = Tok(("tok",) * val.dim())
                    self.tokens_seq = int(val.shape[-1])
                else:
                    self.env[node.name] = Aux()
            elif node.op == "call_function":
                value = self.call(node)
                if isinstance(value, Pointwise):
                    value = Pointwise(value.src, value.f, node.name)
                self.env[node.name] = value
            elif node.op == "output":
                outs = [a for a in node.args[0] if a is not None]
                for a in outs[:1]:
                    v = self.vec(self.env[a.name], node)
                    self.out.outputs.append(v.name)
        return self.out

    def args(self, node):
        def get(a):
            if hasattr(a, "name") and a.name in self.env:
                return self.env[a.name]
            if isinstance(a, (list, tuple)):
                return type(a)(get(x) for x in a)
            return a

        return [get(a) for a in node.args], {k: get(v) for k, v in node.kwargs.items()}

    def call(self, node):
        import torch

        args, kwargs = self.args(node)
        if node.target is operator.getitem:
            if isinstance(args[0], Parts):
                return dataclasses.replace(args[0].items[args[1]], node=node.name)
            if isinstance(args[0], (Conc, Aux)):
                return self.concrete(node, args, kwargs)
            raise _refuse(node, "indexing a traced value")
        op = getattr(node.target, "_overloadpacket", None)
        op = op.__name__ if op is not None else getattr(node.target, "__name__", str(node.target))
        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        symbolic = [
            x
            for x in flat
            if isinstance(x, (Vec, PRef, Tok, Pointwise, Affine, Scores, Probs, MeanSq, Parts))
        ]
        if symbolic and all(isinstance(x, Tok) for x in symbolic) and op != "embedding":
            if op in _VIEW_OPS | _IDENTITY_OPS and isinstance(args[0], Tok):
                return Tok(("tok",) * len(self._shape(node)))
            return self.concrete(node, args, kwargs)  # e.g. a padding mask from the ids
        if not symbolic:
            return self.concrete(node, args, kwargs)
        if op in _CHECKS:
            return None
        method = getattr(self, f"op_{op}", None)
        if op in _IDENTITY_OPS:
            if op == "to" and any(
                isinstance(x, torch.dtype) and not x.is_floating_point for x in flat
            ):
                raise _refuse(node, "a cast to an integer type")
            return args[0]
        if op in _VIEW_OPS:
            return self.view(node, args[0])
        if method is None:
            raise _refuse(node, f"the op {op}")
        return method(node, *args, **kwargs)

    def concrete(self, node, args, kwargs):
        import torch

        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        if any(isinstance(x, Aux) for x in flat):
            return Aux()

        def val(a):
            if isinstance(a, Conc):
                return a.value
            if isinstance(a, Tok):
                return self.tok_value
            if isinstance(a, torch.device):
                return torch.device("cpu")
            if isinstance(a, (list, tuple)):
                return type(a)(val(x) for x in a)
            return a

        try:
            return Conc(
                node.target(*[val(a) for a in args], **{k: val(v) for k, v in kwargs.items()})
            )
        except Exception:  # noqa: BLE001 - a value we cannot compute is simply unknown
            return Aux()

    # -- layout ops --------------------------------------------------------------------------
    def view(self, node, v):
        shape = tuple(node.meta["val"].shape)
        if isinstance(v, (Conc, Aux)):
            return self.concrete(node, *self.args(node))
        if isinstance(v, PRef):
            raise _refuse(node, "a reshaped param")
        tags = self._tags(v)
        old = self._shape(node.args[0])
        feat = [s for s, t in zip(old, tags, strict=True) if t != "tok"]
        lead = [s for s, t in zip(old, tags, strict=True) if t == "tok"]
        if shape[-1] == old[-1] and tags[-1] in ("F", "dh") and "H" not in tags:
            new = ("tok",) * (len(shape) - 1) + (tags[-1],)
            if math.prod(shape[:-1]) != math.prod(lead):
                raise _refuse(node, f"a view from {list(old)} to {list(shape)}")
            return self._retag(v, new)
        if (
            tags[-1] == "F"
            and len(shape) == len(old) + 1
            and shape[:-2] == tuple(old[:-1])
            and shape[-2] * shape[-1] == old[-1]
        ):
            v = self.vec(v, node)
            return Vec(v.name, ("tok",) * (len(shape) - 2) + ("H", "dh"), v.dim, shape[-1])
        if tags[-2:] == ("H", "dh") and len(shape) == len(old) - 1 and shape[-1] == math.prod(feat):
            return Vec(v.name, ("tok",) * (len(shape) - 1) + ("F",), v.dim)
        if tags == tuple("tok" if i != len(tags) - 1 else "dh" for i in range(len(tags))) or (
            shape == tuple(old)
        ):
            return v
        raise _refuse(node, f"a view from {list(old)} to {list(shape)}")

    def _shape(self, a):
        return tuple(a.meta["val"].shape)

    def _tags(self, v):
        return v.tags if hasattr(v, "tags") else v.src.tags

    def _retag(self, v, tags):
        if isinstance(v, Pointwise):
            return Pointwise(Vec(v.src.name, tags, v.src.dim, v.src.dh), v.f)
        if isinstance(v, (Vec, Affine, Scores)):
            return type(v)(**{**v.__dict__, "tags": tags})
        raise AssertionError(v)

    def op_transpose(self, node, v, d0, d1):
        if isinstance(v, PRef):
            return PRef(v.target, v.shape, not v.t, v.rows)
        tags = list(self._tags(v))
        tags[d0], tags[d1] = tags[d1], tags[d0]
        return self._retag(self.vec(v, node) if isinstance(v, Affine) else v, tuple(tags))

    def op_t(self, node, v):
        return self.op_transpose(node, v, 0, 1)

    def op_permute(self, node, v, dims):
        if isinstance(v, PRef) and len(dims) == 2:
            return self.op_t(node, v)
        tags = self._tags(v)
        return self._retag(self.vec(v, node), tuple(tags[d] for d in dims))

    # -- params applied ----------------------------------------------------------------------
    def op_embedding(self, node, w, idx, *rest):
        if not isinstance(w, PRef):
            raise _refuse(node, "an embedding whose table is not a param")
        table, _ = self.param(w, node, lookup=True)
        if isinstance(idx, Tok):
            self.tokens_vocab = w.shape[0]
            src, tags = "tok", idx.tags
        elif isinstance(idx, Conc) and self._is_positions(idx.value):
            self.positions = int(idx.value.shape[-1])
            src, tags = "pos", ("tok",) * idx.value.dim()
        else:
            raise _refuse(
                node,
                "an embedding lookup of ids that are neither the token input "
                "nor the positions 0..T-1",
            )
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {table} @ {src}")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, tags + ("F",), w.shape[1])

    def _is_positions(self, value) -> bool:
        import torch

        t = value.shape[-1]
        return bool((value == torch.arange(t)).all()) and t == self.tokens_seq

    def op_linear(self, node, x, w, b=None):
        if not isinstance(w, PRef) or (b is not None and not isinstance(b, PRef)):
            raise _refuse(node, "a linear layer whose weight is not a param")
        x = self.vec(x, node)
        return Affine(x, w, b, node.name, x.tags[:-1] + ("F",))

    def op_addmm(self, node, b, x, w):
        return self.op_linear(node, x, PRef(w.target, w.shape, not w.t, w.rows), b)

    def op_matmul(self, node, x, w):
        if isinstance(w, PRef):
            return self.op_linear(node, x, PRef(w.target, w.shape, not w.t, w.rows))
        if isinstance(x, Probs):
            return self.mix(node, x, self.vec(w, node))
        x, w = self.vec(x, node), self.vec(w, node)
        if x.tags[-1] == "dh" and w.tags[-2] == "dh" and x.tags[-3] == "H":
            return Scores(x, w, 1.0, node.name, x.tags[:-1] + ("tok",))
        raise _refuse(node, "a matmul of two vectors that is not attention's q @ k.T")

    op_mm = op_matmul
    op_bmm = op_matmul

    def op_split(self, node, v, size, dim=-1):
        sizes = (
            [size] * (self._shape(node.args[0])[dim] // size)
            if isinstance(size, int)
            else list(size)
        )
        return self._split(node, v, sizes, dim)

    def op_split_with_sizes(self, node, v, sizes, dim=-1):
        return self._split(node, v, list(sizes), dim)

    def _split(self, node, v, sizes, dim):
        ndim = len(self._shape(node.args[0]))
        if not isinstance(v, Affine) or dim % ndim != ndim - 1:
            raise _refuse(node, "a split of anything but a linear layer's output features")
        items, start = [], 0
        for s in sizes:
            rows = (start, start + s)
            wr = PRef(v.w.target, v.w.shape, v.w.t, rows)
            br = PRef(v.b.target, v.b.shape, v.b.t, rows) if v.b is not None else None
            items.append(Affine(v.x, wr, br, v.node, v.tags, v.layer or v.node))
            start += s
        return Parts(items)

    # -- sums and products -------------------------------------------------------------------
    def op_add(self, node, u, v, alpha=1):
        return self._lincomb(node, u, v, alpha)

    def op_sub(self, node, u, v, alpha=1):
        return self._lincomb(node, u, v, -alpha)

    def _lincomb(self, node, u, v, alpha):
        if isinstance(u, (int, float)) or isinstance(v, (int, float)):
            c = u if isinstance(u, (int, float)) else v
            x = v if isinstance(u, (int, float)) else u
            if isinstance(x, MeanSq):
                return x  # + eps under a root
            p = self.pointwise(node, x)
            sign = alpha if x is u else 1
            first = 1 if x is u else alpha
            return Pointwise(p.src, lambda t, f=p.f: first * f(t) + sign * c)
        if isinstance(u, Scores) and isinstance(v, Conc):
            return self._masked(node, u, v.value, additive=True)
        pair = self._same_source(node, u, v)
        if pair:
            return Pointwise(pair[0].src, lambda t, f=pair[0].f, g=pair[1].f: f(t) + alpha * g(t))
        terms = []
        for x, c in ((u, 1), (v, alpha)):
            if isinstance(x, PRef):
                terms.append((c, self.vector_param(x, node)))
            else:
                terms.append((c, self.vec(x, node)))
        vec = next(t for _, t in terms if isinstance(t, Vec))
        expr = ""
        for c, t in terms:
            name = t.name if isinstance(t, Vec) else t
            sign = "-" if c < 0 else "+"
            coef = "" if abs(c) == 1 else f"{abs(c)!r} * "
            expr += f" {sign} {coef}{name}" if expr else f"{'-' if c < 0 else ''}{coef}{name}"
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {expr}")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, vec.tags, vec.dim, vec.dh)

    def _same_source(self, node, u, v):
        """Both operands as functions of one vector, when one is already such a function."""
        kinds = (Vec, Affine, Pointwise)
        if not (isinstance(u, kinds) and isinstance(v, kinds)) or not (
            isinstance(u, Pointwise) or isinstance(v, Pointwise)
        ):
            return None
        pu, pv = self.pointwise(node, u), self.pointwise(node, v)
        return (pu, pv) if pu.src.name == pv.src.name else None

    def pointwise(self, node, x) -> Pointwise:
        if isinstance(x, Pointwise):
            return x
        x = self.vec(x, node)
        return Pointwise(x, lambda t: t)

    def op_mul(self, node, u, v):
        if isinstance(v, (int, float)) or isinstance(u, (int, float)):
            c, x = (v, u) if isinstance(v, (int, float)) else (u, v)
            if isinstance(x, Scores):
                return Scores(x.q, x.k, x.factor * c, node.name, x.tags, x.causal)
            p = self.pointwise(node, x)
            return Pointwise(p.src, lambda t, f=p.f: c * f(t))
        for a, b in ((u, v), (v, u)):
            if isinstance(b, MeanSq) and b.inv:
                a = self.vec(a, node)
                if a.name != b.src.name:
                    raise _refuse(node, "a product with another vector's inverse RMS")
                name = self.fresh(node.name)
                self.out.stmts.append(f"{name} = rmsnorm({a.name})")
                self.out.vectors[name] = (node.name, "out")
                return Vec(name, a.tags, a.dim)
        pair = self._same_source(node, u, v)
        if pair:
            return Pointwise(pair[0].src, lambda t, f=pair[0].f, g=pair[1].f: f(t) * g(t))
        names = []
        for x in (u, v):
            names.append(
                self.vector_param(x, node) if isinstance(x, PRef) else self.vec(x, node).name
            )
        vec = next(self.vec(x, node) for x in (u, v) if not isinstance(x, PRef))
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {names[0]} * {names[1]}")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, vec.tags, vec.dim, vec.dh)

    def op_div(self, node, u, v):
        if not isinstance(v, (int, float)):
            raise _refuse(node, "a division by a tensor")
        return self.op_mul(node, u, 1.0 / v)

    def op_neg(self, node, u):
        return self.op_mul(node, u, -1.0)

    def _apply(self, node, x, fn):
        p = self.pointwise(node, x)
        return Pointwise(p.src, lambda t, f=p.f: fn(f(t)))

    def op_gelu(self, node, x, approximate="none"):
        import torch

        return self._apply(node, x, lambda t: torch.nn.functional.gelu(t, approximate=approximate))

    def op_relu(self, node, x):
        return self._apply(node, x, lambda t: t.clamp(min=0))

    def op_silu(self, node, x):
        return self._apply(node, x, lambda t: t * t.sigmoid())

    def op_tanh(self, node, x):
        return self._apply(node, x, lambda t: t.tanh())

    def op_sigmoid(self, node, x):
        return self._apply(node, x, lambda t: t.sigmoid())

    def op_erf(self, node, x):
        return self._apply(node, x, lambda t: t.erf())

    def op_pow(self, node, x, e):
        if e == 2 and isinstance(x, (Vec, Affine)):
            p = self.pointwise(node, x)
            return Pointwise(p.src, lambda t, f=p.f: f(t) ** 2)
        p = self.pointwise(node, x)
        return Pointwise(p.src, lambda t, f=p.f: f(t) ** e)

    def op_mean(self, node, x, dims, keepdim=False):
        ndim = len(self._shape(node.args[0]))
        if isinstance(x, Pointwise) and [d % ndim for d in dims] == [ndim - 1]:
            import torch

            t = torch.linspace(-3, 3, 13, dtype=torch.float64)
            if torch.allclose(x.f(t), t * t):
                return MeanSq(x.src)
        raise _refuse(node, "a mean over a vector's coordinates other than RMSNorm's mean square")

    def op_rsqrt(self, node, x):
        if isinstance(x, MeanSq):
            return MeanSq(x.src, inv=True)
        raise _refuse(node, "rsqrt of anything but a mean square")

    # -- norms, attention --------------------------------------------------------------------
    def op_layer_norm(self, node, x, shape, w=None, b=None, *rest):
        return self._norm(node, "layernorm", x, w, b)

    def op_rms_norm(self, node, x, shape, w=None, *rest):
        return self._norm(node, "rmsnorm", x, w, None)

    def _norm(self, node, fn, x, w, b):
        x = self.vec(x, node)
        if x.tags[-1] != "F":
            raise _refuse(node, f"a {fn} over anything but a vector's own dim")
        expr = f"{fn}({x.name})"
        if w is not None:
            expr = f"{self.vector_param(w, node)} * {expr}"
        if b is not None:
            expr += f" + {self.vector_param(b, node)}"
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {expr}")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, x.tags, x.dim)

    def _masked(self, node, s: Scores, mask, additive: bool):
        import torch

        t = mask.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        if mask.dtype == torch.bool:  # sdpa keeps True entries, masked_fill drops them
            keep = mask if additive else ~mask
        else:
            keep = (mask > -1e4) if additive else None
        if keep is None or not bool((keep == causal).all()):
            raise _refuse(node, "an attention mask that is not the causal mask")
        return Scores(s.q, s.k, s.factor, s.node, s.tags, True)

    def op_masked_fill(self, node, s, mask, value):
        if not isinstance(s, Scores) or not isinstance(mask, Conc) or value > -1e4:
            raise _refuse(node, "masked_fill outside attention's causal mask")
        return self._masked(node, s, mask.value, additive=False)

    def op_softmax(self, node, s, dim=-1, *rest):
        if not isinstance(s, Scores) or dim not in (-1, len(s.tags) - 1):
            raise _refuse(node, "a softmax of anything but attention logits")
        logits = self.logits(s.q, s.k, s.factor, s.node, "out")
        return Probs(s, f"{'causal_' if s.causal else ''}softmax({logits})")

    op__softmax = op_softmax

    def logits(self, q: Vec, k: Vec, factor: float, node: str, kind: str) -> str:
        dh = self.dim(q.dh)
        self.out.slots.append(("scale", factor))
        sc = self.fresh(f"attn_{node}")
        self.out.decls.append(f"scale {sc} = {{s{len(self.out.slots) - 1}}}")
        self.out.scales[sc] = {"q": q.name, "slot": len(self.out.slots) - 1}
        name = self.fresh(f"{node}_logits" if kind != "out" else node)
        self.out.stmts.append(f"{name} = {sc} * dot({q.name}, {k.name}, {dh})")
        self.out.vectors[name] = (node, kind)
        return name

    def mix(self, node, p: Probs, v: Vec) -> Vec:
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = mix({p.name}, {v.name})")
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, v.tags, v.dim, v.dh)

    def op_scaled_dot_product_attention(
        self,
        node,
        q,
        k,
        v,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        q, k, v = (self.vec(x, node) for x in (q, k, v))
        if enable_gqa or not (q.dim == k.dim == v.dim):
            raise _refuse(
                node,
                "grouped-query attention (fewer key/value heads than query heads)",
                "the language pairs every query head with its own key and value head",
            )
        factor = scale if scale is not None else q.dh**-0.5
        s = Scores(q, k, factor, node.name, q.tags[:-1] + ("tok",), bool(is_causal))
        if attn_mask is not None:
            if not isinstance(attn_mask, Conc):
                raise _refuse(node, "an attention mask that depends on params or buffers")
            m = attn_mask.value
            s = self._masked(node, s, m, additive=True)
        logits = self.logits(q, k, factor, node.name, "sdpa_logits")
        prob = f"{'causal_' if s.causal else ''}softmax({logits})"
        return self.mix(node, Probs(s, prob), v)


# --- from two widths to one program ----------------------------------------------------------


class _Wrapped:
    """Calls the user's model and returns one tensor: its output, or the ``logits`` of a
    Hugging Face output (with ``use_cache=False`` where the model takes it)."""

    def __new__(cls, model):
        import inspect

        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                self.kw = (
                    {"use_cache": False}
                    if "use_cache" in inspect.signature(m.forward).parameters
                    else {}
                )

            def forward(self, *args):
                out = self.m(*args, **self.kw)
                if hasattr(out, "logits"):
                    return out.logits
                return out[0] if isinstance(out, (tuple, list)) else out

        return Wrapped(model)


def export(model, inputs: Sequence):
    """The model's aten graph (``torch.export``, non-strict), in eval mode (no dropout)."""
    import torch

    was = model.training
    model.eval()
    try:
        return torch.export.export(_Wrapped(model), tuple(inputs), strict=False)
    finally:
        model.train(was)


def convert(ep, base: dict, tok_value) -> Trace:
    conv = _Converter(ep, base)
    conv.tok_value = tok_value
    trace = conv.run()
    trace.tokens = (conv.tokens_seq, conv.tokens_vocab)
    return trace


def strip_prefix(target: str) -> str:
    """The user's param name: export names them under the wrapper's ``m.``."""
    return target[2:] if target.startswith("m.") else target


def _dim_name(s1: int, s2: int, w1: int, w2: int, node_hint: str = "") -> tuple[str, str]:
    """(name, declaration rhs) of the dim of size s1 at width w1 and s2 at w2."""
    if s1 == s2:
        return f"f{s1}", f"{s1}"
    mult = Fraction(s1, w1)
    if Fraction(s2, w2) != mult:
        raise TraceError(
            f"a dim is {s1} at width {w1} and {s2} at width {w2}: neither finite "
            "nor proportional to the width",
            help="build(width) must scale every "
            "width dim in proportion to the width (e.g. 4 * width, width // heads)",
        )
    if mult == 1:
        return "n", "n"
    if mult.denominator == 1:
        return f"n_x{mult.numerator}", f"{mult.numerator} * n"
    if mult.numerator == 1:
        return f"n_by{mult.denominator}", f"n / {mult.denominator}"
    raise TraceError(
        f"a dim of {mult} times the width",
        help="the language takes whole multiples or fractions 1/k of the width",
    )


@dataclass
class Traced:
    """A model traced at two widths: ``source`` (the .tp text), ``program``, and per program
    name what it is in the model (``params``: torch tensor and rows; ``vectors``: graph node)."""

    source: str
    widths: tuple[int, int]
    params: dict[str, ParamUse]
    vectors: dict[str, tuple[str, str]]
    scales: dict[str, dict]  # scale -> {q, model exponent, value}
    producers: dict[str, tuple]
    base: dict  # torch target -> ("const", v) | ("normal", std) at the base width
    build: Callable
    example_inputs: Callable
    templates: list[str]

    @property
    def program(self):
        from .parse import parse

        return parse(self.source, "traced.tp")

    @property
    def base_width(self) -> int:
        return self.widths[0]

    def mup(self, optimizer: str = "adam", convention: str = "table3"):
        """Derive µP for the traced program; the result applies it to the user's model."""
        from .apply import MuP

        return MuP(self, optimizer, convention)


def _base_stats(model) -> dict:
    """Per param at the base width: a constant init (LayerNorm gains, zero biases) or the std."""
    stats = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        v = p.detach().double()
        first = v.flatten()[0]
        stats["m." + name] = (
            ("const", float(first)) if bool((v == first).all()) else ("normal", float(v.std()))
        )
    return stats


def from_torch(
    build: Callable, widths: tuple[int, int] = (128, 256), example_inputs: Callable | None = None
) -> Traced:
    """Trace ``build(width)`` at two widths on the meta device into a Tensor Program.

    ``example_inputs(model)`` returns the forward's positional inputs (token ids); the first
    width is the base width (where hyperparameters are tuned)."""
    import torch

    w1, w2 = (int(w) for w in widths)
    if not 0 < w1 < w2:
        raise UsageError(
            f"widths {widths}: give two increasing positive widths",
            help="e.g. widths=(128, 256); the first is the base width",
        )
    if example_inputs is None:
        raise UsageError("example_inputs is required: a function of the model giving its inputs")
    with torch.device("cpu"):
        torch.manual_seed(0)
        base = _base_stats(build(w1))
    traces = []
    for w in (w1, w2):
        with torch.device("meta"):
            model = build(w)
        given = tuple(example_inputs(model))
        inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in given)
        tok = [
            torch.zeros(x.shape, dtype=x.dtype) if isinstance(x, torch.Tensor) else x
            for x in inputs
        ]
        ep = export(model, inputs)
        traces.append(convert(ep, base, tok[0] if tok else None))
    return _combine(traces, (w1, w2), base, build, example_inputs)


def _combine(traces: list[Trace], widths, base, build, example_inputs) -> Traced:
    t1, t2 = traces
    w1, w2 = widths
    if t1.decls + t1.stmts != t2.decls + t2.stmts or len(t1.slots) != len(t2.slots):
        diff = next(
            (
                f"{a!r} at {w1}, {b!r} at {w2}"
                for a, b in zip(t1.decls + t1.stmts, t2.decls + t2.stmts, strict=False)
                if a != b
            ),
            "",
        )
        raise TraceError(
            f"the model's graph differs between widths {w1} and {w2}",
            help=f"build(width) must build the same layers at every width; first "
            f"difference: {diff}",
        )
    values, dims, scales = {}, {}, {}
    for i, ((kind, a), (_, b)) in enumerate(zip(t1.slots, t2.slots, strict=True)):
        if kind == "dim":
            name, rhs = _dim_name(a, b, w1, w2)
            dims[name] = rhs
            values[f"s{i}"] = name
        else:
            values[f"s{i}"] = repr(float(a))
            exponent = -math.log(b / a) / math.log(w2 / w1)
            scales[i] = (Fraction(exponent).limit_denominator(8), a)
    seq, vocab = t1.tokens
    lines = [f"# traced from PyTorch at widths {w1} and {w2}", f"width n = {w1}"]
    for name, rhs in sorted(dims.items(), key=lambda kv: kv[0] != "n"):
        if name != "n":
            lines.append(f"dim {name} = {rhs}")
    if vocab is not None:
        lines += [f"dim T = {seq}", f"dim V = {vocab}", "input tok : tokens[T, V]"]
    if any(" @ pos" in s for s in t1.stmts):
        lines.append("input pos : positions[T]")
    lines += [d.format(**values) for d in t1.decls]
    lines += [s.format(**values) for s in t1.stmts]
    lines += [f"output {o}" for o in t1.outputs]
    source = "\n".join(lines) + "\n"
    for info in t1.scales.values():
        exp, value = scales[info["slot"]]
        info.update(model_a=exp, value=value)
    params = {
        k: dataclasses.replace(u, target=strip_prefix(u.target)) for k, u in t1.params.items()
    }
    base = {strip_prefix(k): v for k, v in base.items()}
    return Traced(
        source,
        (w1, w2),
        params,
        t1.vectors,
        t1.scales,
        t1.producers,
        base,
        build,
        example_inputs,
        t1.decls + t1.stmts,
    )
