"""Exponent propagation through the forward and backward program.

Given every param's (a, b, c), :class:`Analysis` computes for every vector v, exactly:

* ``init[v]``: its coordinate size at initialisation, n^init;
* ``change[v]``: the size of its change after training (t >= 2), n^change;
* ``grad[v]``: the size of df/dv during training.

The three depend on each other (updates need gradients, gradients need the trained weights), so the
passes repeat until nothing moves. A change that blows up is reported at its first-order size, not
compounded step after step: whatever a gradient is built from counts at most at its stable size
(see :meth:`Analysis.run` for why that makes the loop end).

A block's Stream reads its back edge (the return value of the previous repetition) before the
instruction that computes it, so each pass over a program with a ``repeat`` runs round after round,
starting from nothing (-oo) on every back edge, until the back edges stop moving.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import cached_property

from ..errors import Diagnostic, EngineError, TensorProgWarning
from ..ir.functions import FUNCTIONS, MUL
from ..ir.program import LinComb, MatMul, Nonlin, Program, Stream
from .exponents import ABC, INF, NEG_INF, ZERO, Exp, add, emax, emin, gt
from .optimizers import Optimizer, ParamShape
from .rules import CHANGE, GRAD, INIT, over_depth
from .terms import Mono, Term, fan_dims, param_shape

#: Rounds of a pass over the program after which a back edge that still grows is taken as unbounded.
#: The passes are monotone (sizes only grow from -oo), so they settle unless a repetition feeds its
#: own growth: the block then multiplies its input's size by a power of n at every repetition, a
#: blow-up that compounds with the depth, with no bound at any depth beyond the rounds run. A
#: bounded function can still stop such a climb from below Θ(1); twelve rounds leave it room.
STREAM_ROUNDS = 12


def settle_back_edges(program: Program, one_round, tables: list[dict[str, Exp]],
                      also=lambda: ()) -> None:
    """Run ``one_round`` (a pass that fills ``tables``) until every back edge holds still (and
    ``also()``, what else a round reads from the previous one); one still growing after
    :data:`STREAM_ROUNDS` rounds is set to +oo, and a last round run."""
    backs = [s.back for s in program.streams if s.loops]
    main = tables[0]
    for _ in range(STREAM_ROUNDS):
        before = [main.get(b, NEG_INF) for b in backs]
        extra = also()
        one_round()
        after = [main.get(b, NEG_INF) for b in backs]
        if after == before and also() == extra:
            return
    for b, x, y in zip(backs, before, after, strict=True):
        if gt(y, x):  # compounding over the repetitions: see STREAM_ROUNDS
            for table in tables:
                table[b] = INF
    one_round()


def residual_branches(program: Program, stream: Stream) -> list[str]:
    """The branches of a repeated block whose return is its argument plus branches
    (``return h + f(h)``, or a chain of them such as ``r = h + f(h); return r + g(r)``).

    Any other return compounds over the repetitions (a factor 2·h gives 2^L) and has no power
    law in the depth: refused with the Stream's position."""
    block = program.block_table[stream.block]

    def walk(v: str) -> list[str] | None:
        if v == stream.out:
            return []
        ins = program.producer.get(v)
        if not isinstance(ins, LinComb) or v not in block.values:
            return None
        for c, o in ins.terms:
            rest = walk(o) if c == 1 else None
            if rest is not None:
                return rest + [w for d, w in ins.terms if w != o]
        return None

    found = walk(block.ret)
    if found:
        found = _split_sums(program, stream, block, found)
    arg = block.arg.split('.')[-1]
    if not found:
        wrapped = _wrapped_sum(program, stream, block)
        if wrapped is not None:
            raise _function_of_sum(stream, block, wrapped)
        raise EngineError(
            f"block {block.name} does not return its argument plus a branch, so over "
            f"{stream.count} repetitions it compounds and has no power law in {stream.count}: "
            "its depth exponents cannot be derived", span=stream.span,
            help=f"write the block as a residual one, e.g. `return {arg} + W @ relu(...)`")
    for b in found:
        problem = _branch_problem(program, stream, block, b)
        if problem:
            raise EngineError(
                f"block {block.name}: the branch {b} {problem}, so the depth rules (one sum of "
                f"{stream.count} branches, each scaled by the block's own params) do not "
                "describe it: its depth exponents cannot be derived", span=stream.span,
                help=f"return the argument once plus branches that each end in a matmul by one "
                     f"of the block's params, e.g. `return {arg} + W2 @ relu(W1 @ {arg})`")
    return found


def _wrapped_sum(program: Program, stream: Stream, block) -> Nonlin | None:
    """The function nearest the return that the block applies to a residual sum, when the
    block's return is a chain from its argument of residual sums (a coefficient-1 term carrying
    the stream, plus branches or biases) and functions of the stream (``layernorm``, ``relu``,
    through gains ``g * ...``): post-norm ``layernorm(h + f(h))`` (BERT's, twice in a block:
    ``a = LN(h + attn(h)); return LN(a + mlp(a))``), torchvision's ``relu(h + f(h))``. None for
    any other return: a multiple of the stream (``2 * h``, ``W @ h``) compounds, as the caller
    says; a function of the argument with no sum under it (``relu(h)``) has no branch."""
    def chain(v: str) -> tuple[list[Nonlin], bool] | None:
        """(the functions applied to a sum on the way down to the argument, whether a sum with
        a branch lies below), or None if v is no such chain from the argument."""
        if v == stream.out:
            return [], False
        ins = program.producer.get(v)
        if ins is None or v not in block.values:
            return None
        if isinstance(ins, LinComb):
            for c, o in ins.terms:
                found = chain(o) if c == 1 else None
                if found is not None:
                    branch = any(w in block.values for _, w in ins.terms if w != o)
                    return found[0], found[1] or branch
            return None
        inner = [o for o in ins.operands if o in block.values or o == stream.out]
        if not isinstance(ins, Nonlin) or len(inner) != 1:
            return None
        found = chain(inner[0])
        if found is None:
            return None
        fns, summed = found
        return (fns + [ins] if ins.fn != MUL and summed else fns), summed

    found = chain(block.ret)
    return found[0][-1] if found and found[0] else None


def _function_of_sum(stream: Stream, block, ins: Nonlin) -> EngineError:
    """Why a block that returns a function of its residual sum has no depth exponents. The depth
    rules (TP6, CompleteP) model a stream that passes through every repetition unchanged while L
    branches, each times L^-α, add onto it: one sum over the depth. Here the stream itself goes
    through the function at every repetition: a norm rescales the argument's share with the
    branches', a product of L factors; an activation clips the stream. Neither is that sum, and
    what the exponents would have to be is not derived: refused, never given the sum's."""
    arg, L, fn = block.arg.split('.')[-1], stream.count, ins.fn
    if fn in FUNCTIONS and FUNCTIONS[fn].scaling == "normalize":
        why = (f"a post-norm block, as BERT's LayerNorm(h + f(h)): each repetition rescales the "
               f"argument's share of the stream with the branches', a product over the {L} "
               "repetitions")
        instead = f"`return {arg} + W2 @ relu(W1 @ {fn}({arg}))` (pre-norm)"
    else:
        why = ("as torchvision's ResNet blocks return relu(x + f(x)): the whole stream goes "
               "through it at every repetition")
        instead = f"`return {arg} + W2 @ relu(W1 @ {fn}({arg}))`"
    return EngineError(
        f"block {block.name} returns {fn}(...) of a residual sum of its stream, not the sum "
        f"itself ({why}); the depth rules model only a stream that passes through every "
        f"repetition unchanged while {L} branches, each times {L}^-α, add onto it, so its depth "
        "exponents are not derived (its width exponents hold at any fixed depth)",
        span=ins.span or stream.span,
        help=f"for depth exponents apply the function inside the branch, e.g. {instead}; as "
             "written, keep the width's µP at every depth")


def _split_sums(program: Program, stream: Stream, block, branches: list[str]) -> list[str]:
    """A branch that is itself a sum (``h + (W @ x + b)``, as a traced ``nn.Linear`` with a bias
    writes it) is as many branches as it has terms: the stream sums each over the repetitions
    with its own rule (a fresh matmul's init as a CLT sum, a bias as a bias), so each term's
    bound reaches its own params. A sum that reads the argument again is left whole, for
    :func:`_branch_problem` to refuse."""
    out: list[str] = []
    for b in branches:
        ins = program.producer.get(b)
        if (isinstance(ins, LinComb) and b in block.values and b != stream.out
                and stream.out not in ins.operands):
            out += _split_sums(program, stream, block, list(ins.operands))
        else:
            out.append(b)
    return list(dict.fromkeys(out))


def _own_vector_branch(program: Program, block, branch: str) -> bool:
    """Is the branch a vector param of the block itself (``return h + (W @ x + b)``: a bias
    ending the branch)? Fresh in each repetition, it is a branch the depth rules describe: its
    term in the stream is the param itself, summed over the repetitions at init (CLT if centred,
    LLN if a constant) and through its own updates (LLN), with nothing passed on from the
    stream; the Stream rule sums it (rules.py). A shared param or a scale is not."""
    param = program.param_table.get(branch)
    return (param is not None and len(param.shape) == 1
            and program.owner.get(branch) == block.name)


def _branch_problem(program: Program, stream: Stream, block, branch: str) -> str | None:
    """Why a residual branch is outside what the depth pass models, or None."""
    if _own_vector_branch(program, block, branch):
        return None
    if branch == stream.out or branch not in block.values:
        return ("is not computed inside the block (the argument itself, an outer param or an "
                "outer value)")
    sums = [branch]  # the sum a branch is must not add the argument in again (a scaled stream)
    while sums:
        ins = program.producer.get(sums.pop())
        if isinstance(ins, LinComb):
            if stream.out in ins.operands:
                return "adds the block's argument again"
            sums.extend(o for o in ins.operands if o in block.values)
    own, todo, seen = False, [branch], set()
    while todo and not own:  # up to the argument: some param of this block must scale it
        v = todo.pop()
        ins = program.producer.get(v)
        if v in seen or ins is None or v == stream.out:
            continue
        seen.add(v)
        weights = (ins.weight,) if isinstance(ins, MatMul) else ()
        own = any(o in block.params for o in ins.operands + weights)
        todo.extend(o for o in ins.operands if o in block.values)
    return None if own else "uses none of the block's own params"


class Analysis:
    """Exponents of every vector under given param exponents S (init) and U (update entries).

    In the width pass (the default) the width dims are infinite and the depth fixed; in the depth
    pass (``depth_pass``) no width dim is infinite and only the depth is: every exponent is then
    one in L, and a ``repeat L`` Stream sums its branches over the repetitions."""

    def __init__(self, program: Program, optimizer: Optimizer, depth_pass: bool = False):
        self.program, self.optimizer = program, optimizer
        self.width_limit = not depth_pass
        self._mode: str | None = None  # the change channel being computed, in the depth pass
        self.depth_streams = [s for s in program.streams if over_depth(s, self)]
        self._branches = {s.out: residual_branches(program, s) for s in self.depth_streams}
        self.own_: dict[str, Exp] = {}
        self.stream_: dict[str, Exp] = {}
        self._stream_of = {v: s for s in self.depth_streams
                           for v in program.block_table[s.block].values}
        self._stream_out = {s.out: s for s in self.depth_streams}
        # params used as operands: vectors (biases, gains) and scales (constant multipliers)
        # (a depthwise kernel is a gain per channel summed over a finite window: one of these)
        self.vector_params = {p.name for p in program.params if len(p.shape) < 2 or p.depthwise}
        self.scales = {p.name for p in program.params if p.is_scale}
        self.S: dict[str, Exp] = {}
        self.U: dict[str, Exp] = {}
        self.V: dict[str, Exp] = {}
        self.F: dict[str, Exp] = {}
        inputs = {i.name for i in program.inputs}
        self.init_: dict[str, Exp] = {n: ZERO for n in inputs}
        self.change_: dict[str, Exp] = {n: NEG_INF for n in inputs}
        self.train_: dict[str, Exp] = {n: ZERO for n in inputs}
        self.grad_: dict[str, Exp] = {}
        self.init_terms: dict[str, list[tuple[Term, Exp]]] = {}
        self.change_terms: dict[str, list[tuple[Term, Exp]]] = {}
        self.updates: dict[str, list[tuple[str, Term, Exp]]] = {}  # param -> its update terms
        for s in program.streams:  # a back edge is read before it is computed: nothing yet
            if s.loops and s.back not in self.vector_params:
                for table in (self.init_, self.change_, self.train_):
                    table.setdefault(s.back, NEG_INF)
        for v in self._stream_of:  # the depth pass reads the branches before computing them
            for table in (self.init_, self.change_, self.train_, self.own_, self.stream_):
                table.setdefault(v, NEG_INF)
        # a linear branch (h + W @ h) reads the stream itself inside the Stream that computes
        # it: like a back edge, it holds the previous round's size (nothing in the first)
        for out in self._stream_out:
            for table in (self.init_, self.change_, self.train_):
                table.setdefault(out, NEG_INF)

    # --- which sums are infinite, and the depth pass's change channels ------------------------
    def infinite(self, dim: str | None) -> bool:
        if dim is None:
            return False
        if self.width_limit:
            return dim in self.program.dim_table and self.program.dim_table[dim].infinite
        return self.program.depth is not None and dim == self.program.depth.name

    def branches(self, stream: Stream) -> list[str]:
        return self._branches[stream.out]

    @contextmanager
    def channel(self, which: str):
        """Read changes inside a repeated block through one channel: ``own`` (this repetition's
        own updates; the stream's change set to zero) or ``stream`` (the stream's change only)."""
        before, self._mode = self._mode, which
        try:
            yield
        finally:
            self._mode = before

    def record_channels(self) -> None:
        """Each block value's change through each channel, from this round's sizes."""
        for s in self.depth_streams:
            values = self.program.block_table[s.block].values
            for which, table in (("own", self.own_), ("stream", self.stream_)):
                with self.channel(which):
                    for v in values:
                        ins = self.program.producer[v]
                        ts = [t for t in CHANGE[type(ins)](ins, self)
                              if which == "own" or not t.params("U")]
                        table[v] = emax(self.value(t) for t in ts)

    def channels_state(self) -> tuple:
        return tuple(self.own_.values()) + tuple(self.stream_.values())

    def _read(self, name: str, table: dict[str, Exp]) -> Exp:
        """A value's size as later instructions read it. A stream summed over L is read at most
        at Θ(1) (or its argument's size if larger): its blow-up is reported where it happens, at
        first order, instead of compounding through the repetitions round after round."""
        s = self._stream_out.get(name)
        if s is None:
            return table[name]
        return emin(table[name], emax((table[s.init], ZERO)))

    # --- the Sizes protocol the rules ask -----------------------------------------------------
    def init(self, name: str) -> list[Mono]:
        if name in self.vector_params:
            return [Mono(ZERO, (("S", name),))]
        return [Mono(self._read(name, self.init_))]

    def change(self, name: str) -> list[Mono]:
        if self._mode is not None:
            if any(name == s.out for s in self.depth_streams):
                return [Mono(NEG_INF if self._mode == "own" else self._read(name, self.change_))]
            if name in self._stream_of:
                return [Mono((self.own_ if self._mode == "own" else self.stream_)[name])]
        if name in self.scales:
            return [Mono(NEG_INF)]  # a scale is a constant: it never changes
        if name in self.vector_params:
            return [Mono(ZERO, (("U", name),))]
        return [Mono(self._read(name, self.change_))]

    def train(self, name: str) -> list[Mono]:
        if name in self.scales:
            return [Mono(ZERO, (("S", name),))]
        if name in self.vector_params:
            return [Mono(ZERO, (("S", name),)), Mono(ZERO, (("U", name),))]
        if name in self._stream_out:
            return [Mono(emax((self._read(name, self.init_),
                               emin(self._read(name, self.change_), ZERO))))]
        return [Mono(self.train_[name])]

    def grad(self, name: str) -> Exp:
        return self.grad_.get(name, NEG_INF)

    # What a gradient is built from, at first order: a vector's change capped at Θ(1) (as in
    # train_) and a param's update at its stable size V, or, read through a finite fan-out (a
    # readout), at the size first-order gradients give it (F). Nothing uncapped enters a gradient,
    # which is what bounds the fixed point in run().
    def first_order_train(self, name: str) -> list[Mono]:
        if name in self.scales:
            return [Mono(ZERO, (("S", name),))]
        if name in self.vector_params:
            return [Mono(ZERO, (("S", name),)), Mono(ZERO, ((self._moved(name), name),))]
        return [Mono(self.train_[name])]

    def first_order_change(self, name: str) -> list[Mono]:
        if name in self.scales:
            return [Mono(NEG_INF)]
        if name in self.vector_params:
            return [Mono(ZERO, ((self._moved(name), name),))]
        return [Mono(emin(self.change_[name], ZERO))]

    def _moved(self, param: str) -> str:
        """The slot a vector param's update takes inside a gradient: F for a readout vector
        (finite fan-out, counted in full as TP4 counts the readout), V for a bias or gain."""
        _, fan_out = fan_dims(self.program, param)
        return "V" if self.infinite(fan_out) else "F"

    @cached_property
    def _ancestry(self) -> dict[str, frozenset[str]]:
        """The params every value depends on (a vector param depends on itself). Through a back
        edge, a value depends on the previous repetitions' params: the block's own are fresh in
        each repetition (other matrices than this repetition's), so only the shared ones count."""
        program = self.program
        anc: dict[str, frozenset[str]] = {}
        while True:
            before = dict(anc)
            anc.update({i.name: frozenset() for i in program.inputs})
            anc.update({p: frozenset((p,)) for p in self.vector_params})
            for ins in program.body:
                deps = set().union(*(anc[o] for o in ins.operands))
                if isinstance(ins, MatMul):
                    deps.add(ins.weight)
                if isinstance(ins, Stream) and ins.loops:
                    own = set(program.block_table[ins.block].params)
                    deps |= before.get(ins.back, frozenset()) - own
                anc[ins.out] = frozenset(deps)
            if anc == before:  # sets only grow, within the finite set of params
                return anc

    def built_with(self, value: str, weight: str, transposed: bool) -> bool:
        """Is ``value`` computed through ``weight`` applied this way round? (A walk up the
        program; asked only for tied matrices.)"""
        seen, todo = set(), [value]
        while todo:
            ins = self.program.producer.get(todo.pop())
            if ins is None or ins.out in seen:
                continue
            seen.add(ins.out)
            if isinstance(ins, MatMul) and (ins.weight, ins.transposed) == (weight, transposed):
                return True
            todo.extend(ins.operands)
            if isinstance(ins, Stream) and ins.loops and \
                    self.program.owner.get(weight) != ins.block:  # see _ancestry
                todo.append(ins.back)
        return False

    def centred_apart(self, u: str, v: str) -> bool:
        """True if u's or v's initial coordinates are centred and independent of the other's.

        That holds for a fresh iid param, or a matmul by a weight, that the other side does not
        depend on, and for sums of such. Anything else (shared inputs, relu's nonzero mean) is
        treated as correlated, which can only overestimate.
        """
        return self._fresh(u, self._ancestry[v]) or self._fresh(v, self._ancestry[u])

    def _fresh(self, u: str, others: frozenset[str]) -> bool:
        if u in self.vector_params:  # iid and centred, unless given a constant init (a gain)
            return u not in others and self.program.param_table[u].base is None
        ins = self.program.producer.get(u)
        if isinstance(ins, MatMul):
            return ins.weight not in others
        if ins is not None and type(ins).__name__ == "LinComb":  # a constant is not centred
            return not ins.const and all(self._fresh(o, others) for o in ins.operands)
        return False

    # --- evaluation ---------------------------------------------------------------------------
    def slot(self, kind: str, param: str) -> Exp | None:
        """A slot's value; None while the derivation has not bounded it yet."""
        return {"S": self.S, "U": self.U, "V": self.V, "F": self.F}[kind].get(param, NEG_INF)

    def value(self, t: Term) -> Exp:
        slots = (self.slot(k, p) for k, p in t.slots)
        parts = [t.const] + [NEG_INF if x is None else x for x in slots]
        v = add(*parts)
        if t.clamp is not None and gt(v, t.clamp):
            v = t.clamp
        return v

    def record_init(self, out: str, terms: list[Term]) -> None:
        """Evaluate an instruction's init terms and store its init exponent."""
        ts = [(t, self.value(t)) for t in terms]
        self.init_terms[out] = ts
        self.init_[out] = emax(v for _, v in ts)

    def record_change(self, out: str, terms: list[Term]) -> None:
        """Evaluate an instruction's change terms; store its change and its size in training."""
        ts = [(t, self.value(t)) for t in terms]
        self.change_terms[out] = ts
        for t, v in ts:
            for k, p in set(t.slots):
                if k == "U":
                    self.updates.setdefault(p, []).append((out, t, v))
        d = emax(v for _, v in ts)
        self.change_[out] = d
        # inside later updates a blown-up change counts at Θ(1): first-order sizes only
        self.train_[out] = emax((self.init_[out], emin(d, ZERO)))

    def forward_init(self) -> None:
        def one_round() -> None:
            for ins in self.program.body:
                self.record_init(ins.out, INIT[type(ins)](ins, self))

        settle_back_edges(self.program, one_round, [self.init_], also=self._carried)

    def _carried(self) -> tuple:
        """What the depth pass reads from the previous round besides the back edges: the block's
        values (a Stream sums its branches) and their change channels."""
        vs = list(self._stream_of)
        return (tuple(self.init_.get(v, NEG_INF) for v in vs)
                + tuple(self.change_.get(v, NEG_INF) for v in vs) + self.channels_state())

    def forward_change(self) -> None:
        def one_round() -> None:
            self.updates = {}
            for ins in self.program.body:
                self.record_change(ins.out, CHANGE[type(ins)](ins, self))
            self.record_channels()

        settle_back_edges(self.program, one_round, [self.change_, self.train_],
                          also=self._carried)
        self.V = {p: self.stable_update(p) for p in self.U}

    def stable_update(self, param: str) -> Exp:
        """U(param) capped at the largest update entries that keep every term it feeds O(1).

        Each term is m·U + rest (<= 0 wanted), so the cap is the min over terms of -rest/m; it is
        computed from the rest, not as U - largest, so that it stays right when U is +oo. A term
        a bounded function clamps at or below Θ(1) never needs a cap."""
        cap = self.U[param]
        for _, t, _ in self.update_terms(param):
            if t.clamp is not None and not gt(t.clamp, ZERO):
                continue
            m = t.slots.count(("U", param))
            rest = self.value(Term(t.const, tuple(s for s in t.slots if s != ("U", param)), "",
                                   "", "flow"))
            if rest is not NEG_INF:
                cap = emin(cap, -rest / m)
        return cap

    def backward(self) -> None:
        # a back edge's gradient comes from the Stream, which the reversed walk meets after the
        # back edge's own instruction: each round starts from the last round's
        carried: dict[str, Exp] = {}

        def one_round() -> None:
            grad: dict[str, Exp] = {o: ZERO for o in self.program.outputs}
            for b, v in carried.items():
                if gt(v, grad.get(b, NEG_INF)):
                    grad[b] = v
            self.grad_ = grad
            for ins in reversed(self.program.body):
                for target, t in GRAD[type(ins)](ins, self):
                    v = self.value(t)
                    if gt(v, grad.get(target, NEG_INF)):
                        grad[target] = v
            carried.clear()
            carried.update({s.back: grad.get(s.back, NEG_INF) for s in self.program.streams
                            if s.loops})

        settle_back_edges(self.program, one_round, [carried])

    def sources(self, param: str) -> list[tuple[Exp, Exp]]:
        """(e(df/dy), e(x)) for every use of a param: what its gradient is built from."""
        if param in self.vector_params:
            return [(self.grad(param), ZERO)]
        return [(self.grad(ins.out),
                 emax(self.value(Term(m.const, m.slots, "", "", "flow"))
                      for m in self.first_order_train(ins.arg)))
                for ins in self.program.uses(param) if isinstance(ins, MatMul)]

    def shape(self, param: str) -> ParamShape:
        """The param's shape as this pass sees it (which fans are infinite), for shape-aware
        update rules (Muon's)."""
        return param_shape(self.program, param, self.infinite)

    def update_terms(self, param: str) -> list[tuple[str, Term, Exp]]:
        """Every term, in every instruction's change, that carries this param's update."""
        return self.updates.get(param, [])

    def _gradients(self, abc: dict[str, ABC]) -> dict[str, Exp]:
        """Backward pass for the current updates; returns the update entries it implies.

        A readout's update (slot F) counts in full in the backward, as TP4 counts the output
        weight's trained entries; but it is the update that a first-order backward builds, one
        in which every update counts at most at its stable size V. Otherwise a readout whose
        gradient runs through its own update (a tied matrix, or one used twice) would feed its
        update back into itself, compounding it step after step, round after round."""
        self.F = dict(self.V)
        self.backward()
        self.F = {p: self.optimizer.update_entry(abc[p].a, abc[p].c, self.sources(p),
                                                 self.shape(p)) for p in abc}
        self.backward()
        return {p: self.optimizer.update_entry(abc[p].a, abc[p].c, self.sources(p), self.shape(p))
                for p in abc}

    def run(self, abc: dict[str, ABC], max_rounds: int | None = None) -> Analysis:
        """Fixed point of forward, backward and update passes for the given parametrization.

        Why it ends. Inside a gradient every size is first order (a change capped at Θ(1), an
        update at its stable size V, a readout's update at F, itself built from such gradients),
        so no update can feed on its own growth; the updates are bounded and take finitely many
        values (sums of the given exponents, 1/2 and 1 with bounded coefficients). The plain
        iteration settles in a few rounds for the usual parametrizations, but it is not monotone
        (V shrinks as the changes it is capped by grow), and for some odd ones it cycles. On a
        repeated state, or after ``max_rounds``, the updates may only grow (each round takes the
        max with the last): a bounded, monotone sequence in a finite set, which ends at a
        conservative answer (sizes at least what the gradients give). Should that still run
        long, an update that keeps growing is taken as unbounded (+oo): each such round sends one
        more param to +oo, so at most one round per param follows.
        """
        self.S = {p: -(x.a + x.b) if x.b is not INF else NEG_INF for p, x in abc.items()}
        self.U = {p: NEG_INF for p in abc}
        self.forward_init()
        self.forward_change()
        limit = max_rounds or 4 * len(self.program.body) + 20
        seen: set[tuple[Exp, ...]] = set()
        mode, rounds = "plain", 0
        while True:
            new_u = self._gradients(abc)
            if mode != "plain":
                new_u = {p: emax((u, self.U[p])) for p, u in new_u.items()}
            if mode == "widen":
                new_u = {p: INF if gt(u, self.U[p]) else u for p, u in new_u.items()}
            if new_u == self.U:
                return self
            self.U = new_u
            self.forward_change()
            rounds += 1
            state = tuple(new_u.values())
            if mode == "plain" and (state in seen or rounds >= limit):
                mode, rounds = "grow", 0
            elif mode == "grow" and rounds >= limit:
                mode = "widen"
            seen.add(state)


def prescaled(program: Program) -> set[str]:
    """Values used only as a factor of a ``scale``: the raw attention dot, a tied unembedding's
    raw logits. Their size is what the scale absorbs, so they bound nothing themselves and are
    not held to the desiderata; the scaled product is."""
    scales = {p.name for p in program.params if p.is_scale}
    out = set()
    for ins in program.body:
        uses = program.uses(ins.out)
        if uses and all(isinstance(u, Nonlin) and u.fn == MUL and scales & set(u.args)
                        for u in uses):
            out.add(ins.out)
    return out


def live_values(program: Program) -> set[str]:
    """Every value and param some output depends on (walking the program backwards)."""
    live = set(program.outputs)
    for ins in reversed(program.body):
        if ins.out in live:
            live.update(ins.operands)
            if isinstance(ins, MatMul):
                live.add(ins.weight)
    return live


def used_params(program: Program) -> list[str]:
    """Params that reach an output, in declaration order; one that feeds only dead values is left
    out, with a warning."""
    live = live_values(program)
    dead = [p for p in program.params if p.name not in live and program.uses(p.name)]
    for p in dead:
        warnings.warn(TensorProgWarning(Diagnostic(
            f"param '{p.name}' does not reach any output, so it is left out", p.span,
            "use what it computes in an output, or remove it", "warning")), stacklevel=3)
    return [p.name for p in program.params if p.name in live]


__all__ = ["Analysis", "live_values", "prescaled", "used_params"]
