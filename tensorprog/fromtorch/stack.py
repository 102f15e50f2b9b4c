"""A stack of identical layers in a traced program, written as one ``block`` and ``repeat L``.

What the walk gives is unrolled: layer i's statements, with its own params, one after another.
The language says the same thing once: ``depth L = K``, a ``block`` whose params are fresh in
every repetition and ``hL = repeat L blk(h0)``; the engine then derives the exponents in the
depth L as well (CompleteP's 1/L on a branch's last weight), which the unrolled program cannot
have. A stack is rolled only when that is the same program:

- its layers are the items of one ``nn.ModuleList`` (or ``nn.Sequential``), every item reached
  by the forward; the block is the longest run of alike layers (of one class) that ends the
  stack, at least two (first layers that differ stay unrolled before it; layers after a block
  would move with the depth, so a last layer that differs keeps the whole stack unrolled);
- layer i's statements (those its modules run, with the statements of the parent that follow
  each layer, e.g. a residual add written around the call) are layer 0's up to renaming: the
  same ops, params of the same shape, init and place in the layer, read alike (the same rows,
  the same row of a table looked up at one constant id), per-layer scales of the same value;
- each takes one vector of the previous layer (layer 0: of what comes before the stack), reads
  it, and hands one on that only the next layer reads (not layers applied side by side to one
  input, a ModuleList of q, k, v); a layer may also read what the language lets a block read
  from outside: shared params and scales, inputs, and vectors computed before the stack.

Anything else (a layer that differs, an output inside the stack, a layer reading an earlier
layer's inner vector) keeps the program unrolled, and a comment line of the source says why.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..lang.lower import FUNCTIONS
from .values import ParamUse, init_of

# the language's words and the traced program's fixed names: no block, depth or block param
# may take one
_TAKEN = {
    "width", "depth", "dim", "input", "param", "scale", "output", "block", "return", "repeat",
    "tokens", "positions", "image", "patches", "n", "tok", "pos", "T", "V", *FUNCTIONS,
}
_IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
# two base stds of one param in two layers within this ratio are one init (a pooled estimate
# of a 10,000-entry tensor is within about 2% of its law); a per-layer init differs by more
_SAME_STD = 0.1


@dataclass
class Stack:
    """The rolled stack: ``prefix`` is the container's module path (``model.layers``), its
    items the repetitions of block ``block``; ``depth`` the traced layer count (the base depth);
    ``layers`` each block param's use in every traced layer (its targets, rows, graph nodes)."""

    prefix: str
    block: str
    depth: int
    layers: dict[str, list[ParamUse]] = field(default_factory=dict)
    first: int = 0  # the container's items before the block's (unrolled: they differ)

    def item(self, i: int) -> str:
        """The module path of the block's repetition i (the container's item first + i)."""
        i += self.first
        return f"{self.prefix}.{i}" if self.prefix else str(i)

    def at(self, name: str, i: int) -> ParamUse:
        """Block param ``name``'s use in repetition i (at any depth: the first's, moved)."""
        use = self.layers[name][0]
        zero, item = self.item(0), self.item(i)
        return dataclasses.replace(
            use, target=_moved(use.target, zero, item), module=_moved(use.module, zero, item),
            also=tuple((_moved(m, zero, item), n) for m, n in use.also),
        )

    def module_at(self, module: str, i: int) -> str:
        """A module path of the block's first repetition, moved to repetition i."""
        return _moved(module, self.item(0), self.item(i))

    def generic(self, measured: str) -> str:
        """``blk.3.x`` (repetition 3's x, as measured) -> ``blk.x`` (the program's name)."""
        head, _, rest = measured.partition(".")
        index, _, local = rest.partition(".")
        return f"{head}.{local}" if head == self.block and index.isdigit() else measured


def _moved(path: str, zero: str, item: str) -> str:
    return item + path[len(zero):] if path == zero or path.startswith(zero + ".") else path


@dataclass
class Rolled:
    """The rolled program's pieces, for trace._combine to assemble."""

    depth_line: str
    decls: list[str]
    stmts: list[str]
    stack: Stack
    params: dict[str, ParamUse]
    scales: dict[str, dict]
    producers: dict[str, tuple]
    names: dict[str, tuple[str, ...]]  # unrolled vector -> its names in the rolled program
    rotary: list[str]
    note: str | None = None  # why the layers before the block's stay unrolled


class _Keep(Exception):
    """Why the stack stays unrolled (the note line's text)."""


def _lhs(stmt: str) -> str:
    return stmt.split(" = ", 1)[0]


def _rename(text: str, ren: dict[str, str]) -> str:
    return _IDENT.sub(lambda m: ren.get(m.group(0), m.group(0)), text)


def _layer_of(path: str, prefix: str) -> int | None:
    if prefix:
        if not path.startswith(prefix + "."):
            return None
        path = path[len(prefix) + 1 :]
    head = path.split(".")[0]
    return int(head) if head.isdigit() else None


def _container(params: dict[str, ParamUse]) -> tuple[str, set[int]] | None:
    """The module path whose numbered items hold the most params' layers (the outermost
    numbered component of each param's path), with the items found."""
    found: dict[str, set[int]] = {}
    for use in params.values():
        parts = use.target.split(".")
        for k, part in enumerate(parts[:-1]):
            if part.isdigit():
                found.setdefault(".".join(parts[:k]), set()).add(int(part))
                break
    if not found:
        return None
    prefix = max(found, key=lambda p: len(found[p]))
    return prefix, found[prefix]


def roll(
    decls: list[str],
    stmts: list[str],
    *,
    params: dict[str, ParamUse],
    modules: dict[str, str],
    outputs: list[str],
    scales: dict[str, dict],
    producers: dict[str, tuple],
    rotary: list[str],
    base: dict,
    model,
) -> Rolled | str | None:
    """The stack of ``model``'s traced statements rolled into a block (a :class:`Rolled`), the
    reason it stays unrolled (a str), or None where the model has no stack of 2 or more."""
    found = _container(params)
    if found is None or len(found[1]) < 2:
        return None
    import torch

    prefix, items = found
    container = model.get_submodule(prefix)
    if isinstance(container, torch.nn.Sequential) and len({type(m) for m in container}) > 1:
        return None  # a sequence of different modules (Linear, ReLU, ...), not a stack
    try:
        return _Roller(decls, stmts, params, modules, outputs, scales, producers, rotary, base,
                       model, prefix, items).run()
    except _Keep as why:
        return f"the layers of {prefix or 'the model'} are kept unrolled: {why}"


class _Roller:
    def __init__(self, decls, stmts, params, modules, outputs, scales, producers, rotary, base,
                 model, prefix, items):
        self.decls, self.stmts, self.params = decls, stmts, params
        self.outputs, self.scales, self.producers = outputs, scales, producers
        self.rotary, self.base, self.prefix = rotary, base, prefix
        self.model, self.items = model, items
        self.layer_of_stmt = [
            _layer_of(modules.get(_lhs(s), ""), prefix) for s in stmts
        ]
        self.decl_of = {d.split()[1]: d for d in decls}
        self.param_layer = {p: _layer_of(u.target, prefix) for p, u in params.items()}

    def run(self) -> Rolled:
        import torch

        container = self.model.get_submodule(self.prefix)
        if not isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
            raise _Keep(f"{self.prefix} is a {type(container).__name__}, not an nn.ModuleList")
        K = len(container)
        if self.items != set(range(K)):
            missing = sorted(set(range(K)) - self.items)
            raise _Keep(f"the forward does not use the params of layer(s) {missing}")
        self.K = K
        segs = self._segments()
        self.segs = segs
        self.defined = {_lhs(s): k for k, s in enumerate(self.stmts)}
        self.readers: dict[str, set[int]] = {}  # name -> the statements that read it
        for k, st in enumerate(self.stmts):
            for n in _IDENT.findall(st.split(" = ", 1)[1]):
                self.readers.setdefault(n, set()).add(k)
        outs = [self._soft(self._output, i) for i in range(K)]
        if outs[-1] is None:
            self._output(K - 1)  # says why
        # layer i as layer 0 would read it: its stream %in, and the last statement before the
        # stack that it reads (a layer of the block may read only what precedes the block)
        forms = [None] + [
            self._soft(self._canon, i, outs[i - 1], outs[i]) if outs[i - 1] else None
            for i in range(1, K)
        ]
        for cand in [v for v in self._external_vectors(0) if self.defined[v] < segs[0][0]]:
            form = self._soft(self._canon, 0, cand, outs[0]) if outs[0] else None
            if form is not None and forms[1] is not None and form[0] == forms[1][0]:
                forms[0], stream_in = form, cand
                break
        # the maximal run of alike layers that ends the stack (the layers after a block would
        # move with the depth); the layers before it stay unrolled
        first = K - 1
        while first > 0 and forms[first - 1] is not None and forms[first - 1][0] == forms[-1][0]:
            first -= 1
        while first < K and any(f[1] >= segs[first][0] for f in forms[first:] if f):
            first += 1  # a layer of the run reads a vector of a layer before it
        last = type(container[K - 1])  # and the run's layers are of one class
        first = max([first, *(i + 1 for i in range(K) if type(container[i]) is not last)])
        if forms[-1] is None or K - first < 2:
            raise _Keep(f"layer {K - 1} computes otherwise than layer {K - 2}")
        if first > 0:
            stream_in = outs[first - 1]
        for i in range(first, K - 1):  # a chain: layer i's vector is layer i + 1's alone
            a, b = segs[i + 1]
            if any(not a <= k < b for k in self.readers.get(outs[i], ())):
                raise _Keep(f"layer {i}'s {outs[i]} is read after layer {i + 1}, not only by "
                            "it (layers applied side by side, not one after another)")
        self.first = first
        self._params_stay_in_their_layer()
        self._same_init()
        return self._build(stream_in, outs)

    @staticmethod
    def _soft(f, *args):
        """``f(*args)``, or None where it finds the layer no repetition."""
        try:
            return f(*args)
        except _Keep:
            return None

    def _params_stay_in_their_layer(self) -> None:
        """A param of the block's layers read outside its layer (tied to the head, say) would
        be read where the block's param does not exist."""
        for k, s in enumerate(self.stmts):
            for n in _IDENT.findall(s.split(" = ", 1)[1]):
                i = self.param_layer.get(n)
                if i is not None and i >= self.first and not self.segs[i][0] <= k < self.segs[i][1]:
                    raise _Keep(f"{self.params[n].target} is read outside its layer")

    # -- where each layer is ------------------------------------------------------------------
    def _segments(self) -> list[tuple[int, int]]:
        pos = {i: [k for k, at in enumerate(self.layer_of_stmt) if at == i] for i in range(self.K)}
        for i, at in pos.items():
            if not at:
                raise _Keep(f"layer {i} computes no vector of the program")
        starts = [min(pos[i]) for i in range(self.K)]
        for i in range(self.K - 1):
            if max(pos[i]) > starts[i + 1]:
                raise _Keep(f"layers {i} and {i + 1} interleave")
        # statements of the parent between two layers (a residual add around the call) belong
        # to the layer before; the last layer takes as many
        trailing = {starts[i + 1] - max(pos[i]) - 1 for i in range(self.K - 1)}
        if len(trailing) != 1:
            raise _Keep("the statements between its layers differ")
        t = trailing.pop()
        end = max(pos[self.K - 1]) + 1 + t
        if end > len(self.stmts) or any(
            self.layer_of_stmt[k] is not None for k in range(end - t, end)
        ):
            raise _Keep("the last layer is not followed as the others are")
        return [(starts[i], starts[i + 1]) for i in range(self.K - 1)] + [(starts[-1], end)]

    def _seg(self, i: int) -> list[str]:
        a, b = self.segs[i]
        return self.stmts[a:b]

    def _output(self, i: int) -> str:
        """The one vector of layer i that anything after it reads."""
        a, b = self.segs[i]
        local = {_lhs(s) for s in self.stmts[a:b]}
        used = sorted(
            v for v in local
            if v in self.outputs or any(k >= b for k in self.readers.get(v, ()))
        )
        if len(used) != 1:
            what = "no vector" if not used else f"{len(used)} vectors ({', '.join(used)})"
            raise _Keep(f"layer {i} hands {what} on, not one")
        if i < self.K - 1 and used[0] in self.outputs:
            raise _Keep(f"layer {i}'s {used[0]} is an output of the model")
        return used[0]

    def _external_vectors(self, i: int) -> list[str]:
        a, b = self.segs[i]
        local = {_lhs(s) for s in self.stmts[a:b]}
        out = []
        for s in self.stmts[a:b]:
            for n in _IDENT.findall(s.split(" = ", 1)[1]):
                if n in self.defined and n not in local and n not in out:
                    out.append(n)
        return out

    # -- layer i up to renaming ---------------------------------------------------------------
    def _canon(self, i: int, stream: str, out: str) -> tuple:
        """(layer i up to renaming, the last statement before it that it reads, stream aside)."""
        a, b = self.segs[i]
        ren = {stream: "%in"}
        lines, own, reach = [], [], -1
        for s in self.stmts[a:b]:
            lhs, rhs = s.split(" = ", 1)
            for n in _IDENT.findall(rhs):
                if n in ren:
                    continue
                if n in self.param_layer and self.param_layer[n] is not None:
                    if self.param_layer[n] != i:
                        raise _Keep(f"layer {i} reads a param of layer {self.param_layer[n]}")
                    ren[n] = f"%p{len(own)}"
                    own.append(n)
                elif n in self.scales and self._own_scale(n, a, b):
                    ren[n] = f"%p{len(own)}"
                    own.append(n)
                elif n in self.defined and self.defined[n] < a:
                    reach = max(reach, self.defined[n])
            lines.append(_rename(f"{lhs} = {rhs}", {**ren, lhs: f"%v{len(lines)}"}))
            ren[lhs] = f"%v{len(lines) - 1}"
        if not any(stream in _IDENT.findall(s.split(" = ", 1)[1]) for s in self.stmts[a:b]):
            raise _Keep(f"layer {i} does not read the vector handed on to it")
        decls = []
        for n in own:
            decl = _rename(self.decl_of[n], ren)
            if n in self.params:
                # how the param is read: its rows, a table's row (one constant id), an entry,
                # an expert, its groups, a block of columns; the block reads layer 0's
                u = self.params[n]
                rel = u.target[len(self._item(i)) :]
                decls.append((decl, rel, u.rows, u.row_consts, u.transposed, u.expert, u.index,
                              u.entries, u.groups, u.group_rows, u.cols))
            else:
                info = self.scales[n]
                if "q" not in info:
                    raise _Keep(f"layer {i}'s scale {n} is not an attention scale")
                decls.append((decl, info.get("model_a"), ren.get(info["q"])))
        return (tuple(lines), tuple(decls), ren[out]), reach

    def _item(self, i: int) -> str:
        return f"{self.prefix}.{i}" if self.prefix else str(i)

    def _own_scale(self, name: str, a: int, b: int) -> bool:
        """Whether only statements a..b read scale ``name`` (a per-layer scale)."""
        return all(a <= k < b for k in self.readers.get(name, ()))

    def _own(self, i: int) -> list[str]:
        """Layer i's params and per-layer scales, in the order its statements first read them."""
        a, b = self.segs[i]
        own: list[str] = []
        for s in self.stmts[a:b]:
            for n in _IDENT.findall(s.split(" = ", 1)[1]):
                if n in own:
                    continue
                if self.param_layer.get(n) == i or (n in self.scales and self._own_scale(n, a, b)):
                    own.append(n)
        return own

    def _same_init(self) -> None:
        """Every layer's params start as the block's first's: a per-layer init (scaled by the
        layer's index) is no repetition of one block."""
        zero = [n for n in self._own(self.first) if n in self.params]
        for i in range(self.first + 1, self.K):
            for p0, p in zip(zero, [n for n in self._own(i) if n in self.params], strict=True):
                k0 = init_of(self.base, self.params[p0].target, self.params[p0].index)
                k = init_of(self.base, self.params[p].target, self.params[p].index)
                if k0 is None or k is None or k0[0] != k[0]:
                    raise _Keep(f"{self.params[p].target} is initialised otherwise than "
                                f"{self.params[p0].target}")
                if k0[0] == "normal" and abs(k[1] / k0[1] - 1) > _SAME_STD:
                    raise _Keep(
                        f"{self.params[p].target} starts with std {k[1]:.4g}, "
                        f"{self.params[p0].target} with {k0[1]:.4g} (a per-layer init)"
                    )
                if k0[0] == "const" and k0[1] != k[1]:
                    raise _Keep(f"{self.params[p].target} starts otherwise than "
                                f"{self.params[p0].target}")

    # -- the rolled program ------------------------------------------------------------------
    def _build(self, stream_in: str, outs: list[str]) -> Rolled:
        taken = set(self.decl_of) | set(self.defined) | set(_TAKEN)
        taken |= {w for d in self.decls for w in _IDENT.findall(d)}

        def fresh(base: str, avoid: set[str]) -> str:
            k, cand = 1, base
            while cand in avoid:
                k, cand = k + 1, f"{base}_{k}"
            avoid.add(cand)
            return cand

        leaf = re.sub(r"\W", "_", self.prefix.rsplit(".", 1)[-1]) if self.prefix else "layer"
        block = fresh(leaf if leaf and not leaf[0].isdigit() else "layer", taken)
        depth = fresh("L", taken)
        f, K = self.first, self.K
        own0 = self._own(f)
        seg0 = self._seg(f)
        local_vectors = [_lhs(s) for s in seg0]
        zero = (self._item(f) + ".").replace(".", "_")
        ren: dict[str, str] = {}
        inner = set(local_vectors)
        for n in own0:
            if n in self.params:
                short = n.removeprefix(zero) if n.startswith(zero) else n
                short = short if short and not short[0].isdigit() else n
                ren[n] = fresh(short, inner | taken) if short in inner | taken else short
                inner.add(ren[n])
        arg = fresh("h", inner | taken)
        ren[stream_in] = arg
        body = [f"block {block}({arg}) {{"]
        body += [f"    {_rename(self.decl_of[n], ren)}" for n in own0 if n in self.params]
        body += [f"    {_rename(s, ren)}" for s in seg0]
        body.append(f"    return {outs[f]}")
        body.append("}")
        stmts = (
            self.stmts[: self.segs[f][0]]
            + body
            + [f"{outs[-1]} = repeat {depth} {block}({stream_in})"]
            + self.stmts[self.segs[-1][1] :]
        )
        # the block's layers' params and their later layers' scales go (the first's scales
        # stay, shared by the repetitions); the layers before the block stay as they are
        gone = {n for i in range(f, K) for n in self._own(i) if i > f or n in self.params}
        decls = [d for d in self.decls if d.split()[1] not in gone]
        stack = Stack(self.prefix, block, K - f, first=f)
        params = {
            p: u for p, u in self.params.items() if self.param_layer[p] is None
            or self.param_layer[p] < f
        }
        names: dict[str, tuple[str, ...]] = {}
        owns = [self._own(i) for i in range(K)]
        for k, n in enumerate(own0):
            if n not in self.params:
                continue
            q = f"{block}.{ren[n]}"
            stack.layers[q] = [self.params[owns[i][k]] for i in range(f, K)]
            use = stack.layers[q][0]
            params[q] = dataclasses.replace(
                use,
                target=_pattern(use.target, self._item(f), self.prefix),
                module=_pattern(use.module, self._item(f), self.prefix),
                also=tuple((_pattern(m, self._item(f), self.prefix), n) for m, n in use.also),
            )
        for i in range(f, K):
            for s0, s in zip(seg0, self._seg(i), strict=True):
                names[_lhs(s)] = (f"{block}.{i - f}.{_lhs(s0)}",)
            first = stream_in if i == f else outs[i - 1]
            names[first] = (*names.get(first, (first,)), f"{block}.{i - f}.{arg}")
        names[outs[-1]] = (*names[outs[-1]], outs[-1])
        vec0 = {v: f"{block}.{v}" for v in local_vectors}
        scales = {}
        lo, hi = self.segs[f][0], self.segs[-1][1]
        for s, info in self.scales.items():
            later = info.get("fixed") and info["q"] not in vec0 and (
                lo <= self.defined.get(info["q"], -1) < hi)
            if s in gone or later:  # a later layer's width constant is the block's, as its params
                continue
            scales[s] = dict(info, q=vec0.get(info["q"], info["q"])) if "q" in info else info
            if "k" in info:  # the keys, where a norm q and k share takes the factor (normed.py)
                scales[s]["k"] = vec0.get(info["k"], info["k"])
            if "out" in info:  # a width constant's output, measured as the block's (check.py)
                scales[s]["out"] = vec0.get(info["out"], info["out"])
            if "l2_vectors" in info:  # its L2-normalised q and k (normed.l2_into_scales)
                scales[s]["l2_vectors"] = {vec0.get(v, v): e
                                           for v, e in info["l2_vectors"].items()}
        pname = {n: f"{block}.{ren[n]}" for n in own0 if n in self.params}
        producers = {}
        for v, wb in self.producers.items():
            if v in vec0:
                producers[vec0[v]] = tuple(pname.get(p, p) if p else p for p in wb)
            elif not lo <= self.defined.get(v, -1) < hi:  # the later layers' go with them
                producers[v] = wb
        rotary = []
        for v in self.rotary:
            generic = stack.generic(names[v][0]) if v in names else v
            if generic not in rotary:
                rotary.append(generic)
        note = (
            f"layer(s) {', '.join(map(str, range(f)))} of {self.prefix or 'the model'} "
            f"compute otherwise than the rest: kept unrolled before block {block}"
            if f else None
        )
        return Rolled(
            f"depth {depth} = {K - f}", decls, stmts, stack, params, scales, producers, names,
            rotary, note,
        )


def _pattern(path: str, zero: str, prefix: str) -> str:
    """Layer 0's path with its index as ``{i}`` (``model.layers.{i}.mlp``)."""
    item = f"{prefix}.{{i}}" if prefix else "{i}"
    return _moved(path, zero, item)
