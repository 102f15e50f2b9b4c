"""Scaling rules, one per IR instruction and per question (TP4 §3; docs/theory.md).

Each rule turns one instruction into *terms*: the exponents of the pieces its output is the sum of.
A term is a number plus the exponents of some params' entries, written as slots:

* ``S(p)`` = exponent of p's initial entries, ``-(a_p + b_p)``;
* ``U(p)`` = exponent of p's update entries after training (set by the optimizer's rule);
* ``V(p)`` = U(p) capped at the largest update that keeps p's outputs O(1) (equal when stable);
* ``F(p)`` = the update entries that first-order gradients (every update at most V) give p: how a
  readout's update enters the backward pass (equal to U(p) when stable).

So a term is linear in the slots. The analysis evaluates terms with numbers for every slot (to
classify a parametrization); the derivation solves ``term <= 0`` for a slot (to find µP). Nothing
here knows a layer's role: input, hidden and output weights differ only in which of their dims are
infinite, and that decides CLT (+1/2) against LLN (+1) below.

Three tables, each keyed by IR class: ``INIT`` (the output at initialisation), ``CHANGE`` (its
change after a few steps, t >= 2) and ``GRAD`` (the gradient df/dv it sends back to each operand).
"""

from __future__ import annotations

from ..ir.functions import DWCONV, FUNCTIONS, PRODUCTS, TCONV
from ..ir.program import (
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
    Stream,
    per_head,
)
from .exponents import HALF, NEG_INF, ONE, ZERO, Exp, add
from .rules_attention import (  # Dot and Mix: attention's logits and token mixing
    change_dot,
    change_mix,
    grad_dot,
    grad_mix,
    init_dot,
    init_mix,
)
from .rules_ddot import DDOT_RULES  # ddot: a per-head dot decayed per key channel
from .rules_delta import change_delta, grad_delta, init_delta  # the gated delta rule
from .rules_hdot import HDOT_RULES  # hdot: a dot per head of one token
from .rules_spread import MOVES  # spread, part, shift, cat: coordinates moved, not computed
from .rules_ssd import SSD_RULES  # ssd: Mamba-2's state-space mixing weights
from .rules_wkv import WKV_RULES  # wkv: RWKV's time mixing per channel
from .terms import (
    Mono,
    Sizes,
    Term,
    terms,
)

# Nonlins with rules of their own, keyed by function
MOVES = {**MOVES, **SSD_RULES, **DDOT_RULES, **WKV_RULES, **HDOT_RULES}

# --- MatMul ---------------------------------------------------------------------------------------

def _clt(sz: Sizes, dim: str) -> tuple[Exp, str]:
    if sz.infinite(dim):
        return HALF, f"the sum runs over {dim} iid terms (CLT: +1/2)"
    return ZERO, f"the sum runs over a finite {dim} (+0)"


def _fans(program: Program, ins: MatMul) -> tuple[str, str]:
    """(fan_out, fan_in) of this use: ``W.T @ x`` swaps the declared [out, in]."""
    out, in_ = program.param_table[ins.weight].shape[:2]  # a kernel's [kh, kw] are finite
    return (in_, out) if ins.transposed else (out, in_)


def _tied(program: Program, weight: str) -> bool:
    """Is the matrix used both as W @ and as W.T @ ?"""
    return len({u.transposed for u in program.uses(weight) if isinstance(u, MatMul)}) == 2


def init_matmul(ins: MatMul, sz: Sizes) -> list[Term]:
    fan_out, fan_in = _fans(sz.program, ins)
    k, why = _clt(sz, fan_in)
    if (sz.infinite(fan_in) and _tied(sz.program, ins.weight)
            and sz.built_with(ins.arg, ins.weight, not ins.transposed)):
        # W.T meets a vector built from W (a tied unembedding reading the embedding it wrote):
        # the diagonal terms W_ij·W_ij add up coherently
        k, why = ONE, (f"{ins.arg}₀ is built from {ins.weight}₀ used the other way round, so "
                       f"the sum over {fan_in} is correlated (LLN: +1)")
    w = [Mono(ZERO, (("S", ins.weight),))]
    return terms(f"{ins.weight}₀·{ins.arg}₀", why, "init", w, sz.init(ins.arg), const=k)


def change_matmul(ins: MatMul, sz: Sizes) -> list[Term]:
    p = sz.program
    fan_out, fan_in = _fans(p, ins)
    w0, dw = [Mono(ZERO, (("S", ins.weight),))], [Mono(ZERO, (("U", ins.weight),))]
    if not sz.infinite(fan_in):
        k_cross, why_cross = ZERO, f"a finite sum over {fan_in} (+0)"
        k_upd, why_upd = ZERO, f"a finite sum over {fan_in} (+0)"
    else:
        k_upd, why_upd = ONE, (f"the update is built from the vectors it meets, so its sum over "
                               f"{fan_in} has correlated terms (LLN: +1)")
        if sz.infinite(fan_out):
            k_cross, why_cross = HALF, (f"{ins.weight}₀ is an iid matrix with both dims infinite: "
                                        f"its sum over {fan_in} acts as a CLT sum even on a "
                                        f"vector built from {ins.weight}₀ᵀ (+1/2)")
        else:
            k_cross, why_cross = ONE, (f"the change of {ins.arg} is built from {ins.weight}₀ᵀ "
                                       f"(backprop through a finite fan-out), so the sum over "
                                       f"{fan_in} is correlated (LLN: +1)")
    return (terms(f"{ins.weight}₀·Δ{ins.arg}", why_cross, "cross", w0, sz.change(ins.arg),
                  const=k_cross)
            + terms(f"Δ{ins.weight}·{ins.arg}", why_upd, "update", dw, sz.train(ins.arg),
                    const=k_upd))


def grad_matmul(ins: MatMul, sz: Sizes) -> list[tuple[str, Term]]:
    p = sz.program
    fan_out, _ = _fans(p, ins)
    g = [Mono(sz.grad(ins.out))]
    # Through an infinite fan-out the update counts at most at its stable size (slot V): first
    # order, so a blow-up already reported upstream does not compound layer after layer. A finite
    # fan-out (readout) update counts in full, as TP4 counts the output weight's trained entries,
    # at the size first-order gradients give it (slot F): were it the update this very gradient
    # builds (U), a readout whose gradient runs through its own update (a tied unembedding, a
    # matrix used twice) would compound without end.
    w0 = [Mono(ZERO, (("S", ins.weight),))]
    dw = [Mono(ZERO, (("V" if sz.infinite(fan_out) else "F", ins.weight),))]
    if sz.infinite(fan_out):
        k0, why0 = HALF, f"{ins.weight}₀ᵀ sums {fan_out} iid terms (CLT: +1/2)"
        k1, why1 = ONE, (f"Δ{ins.weight}ᵀ sums {fan_out} terms correlated with the gradient "
                         "(LLN: +1)")
    else:
        k0 = k1 = ZERO
        why0 = why1 = f"a finite sum over {fan_out} (+0)"
    return [(ins.arg, t) for t in
            terms(f"{ins.weight}₀ᵀ·d{ins.out}", why0, "init", w0, g, const=k0)
            + terms(f"Δ{ins.weight}ᵀ·d{ins.out}", why1, "update", dw, g, const=k1)]


# --- LinComb --------------------------------------------------------------------------------------

def init_lincomb(ins: LinComb, sz: Sizes) -> list[Term]:
    shift = [Term(ZERO, (), f"{ins.const}", "a number added to every coordinate is Θ(1)",
                  "flow")] if ins.const else []  # it never changes and takes no gradient
    return shift + [t for _, v in ins.terms for t in
                    terms(f"{v}₀", "a sum is as large as its largest term", "auto", sz.init(v))]


def change_lincomb(ins: LinComb, sz: Sizes) -> list[Term]:
    return [t for _, v in ins.terms for t in
            terms(f"Δ{v}", "a sum changes as much as its largest term", "auto", sz.change(v))]


def grad_lincomb(ins: LinComb, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    out = []
    for _, v in ins.terms:
        # a bias of a head dim (a QK-layernorm's) is added to every head: its gradient sums
        # one term per head, as a per-head gain's does
        k, why = (_shared_by_heads(ins, v, sz) if v in sz.program.param_table
                  else (ZERO, ""))
        why = "a sum passes its gradient through" if "head" not in why else why
        out += [(v, t) for t in terms(f"d{ins.out}", why, "flow", g, const=k)]
    return out


# --- Nonlin ---------------------------------------------------------------------------------------

#: How a function maps the exponent of its input (linear, bounded, offset, normalize): the IR's
#: function table says, one row per function (see tensorprog.ir.functions for what each means).
NONLIN_SHAPE = {name: f.scaling for name, f in FUNCTIONS.items()}


def _size(monos: list[Mono]) -> Exp:
    """The exponent of a vector's size when it is a plain number (not a param's slot)."""
    size = max((m.const for m in monos if not m.slots), default=ZERO, key=float)
    return ZERO if size is NEG_INF else size  # a normalised zero vector: nothing to divide


# --- a softmax with a sink ---------------------------------------------------------------------
# p_ts = exp(s_ts) / (exp(z_h) + sum_s' exp(s_ts')): the sink z_h is one more logit in every row
# of head h, whose weight is dropped. A row's terms are finitely many (the key tokens and the
# sink), so z enters as a logit does: p is Θ(1) while z is O(1), and moves by Θ(Δz) (capped at
# Θ(1), as softmax is bounded). dp_ts/dz_h = -p_ts·π_t with π_t the sink's own weight, Θ(1): z_h's
# gradient is a finite sum over the tokens of its own head's dp, so as large as a logit's.


def _sink(ins: Nonlin) -> str | None:
    return ins.args[1] if ins.fn in ("softmax", "causal_softmax") and len(ins.args) == 2 else None


#
# The same softmax with a second set of logits b for the sink (softmax(a, b): one softmax over
# a's keys and b's, T5Gemma 2's merged attention, read on a's keys) is the same computation
# with finitely many more logits in every row: each weight Θ(1), a change in either set passing
# through a Θ(1) derivative (capped at Θ(1)), and dp_ts/db_tr = -p_ts·π_tr with π_tr b's own
# weight, Θ(1): b's gradient entries, one per token pair, are as large as a's.


def init_sink(ins: Nonlin, sz: Sizes) -> list[Term]:
    s, z = ins.args
    other = (f"{z} holds the other keys' logits of every row: O(1) keeps their exp beside "
             f"{s}'s" if _merged(ins, sz) else
             f"the sink is one more logit of every row: O(1) keeps exp({z}) beside the logits'")
    return ([Term(ZERO, (), f"{ins.fn}({s}₀)", f"{ins.fn}(0) ≠ 0 and {ins.fn} is bounded",
                  "flow")]
            # not clamped: a growing sink would take every row's weight (p -> 0), so the
            # sink must stay O(1) as the logits do
            + terms(f"{z}₀", other, "auto", sz.init(z)))


def change_sink(ins: Nonlin, sz: Sizes) -> list[Term]:
    s, z = ins.args
    why = (f"{ins.fn}′ = Θ(1) over finitely many logits, "
           + (f"{z}'s among them" if _merged(ins, sz) else "the sink one of them"))
    return (terms(f"{ins.fn}′·Δ{s}", why, "auto", sz.change(s), clamp=ZERO)
            + terms(f"{ins.fn}′·Δ{z}", why, "auto", sz.change(z), clamp=ZERO))


def grad_sink(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    s, z = ins.args
    g = [Mono(sz.grad(ins.out))]
    why = ("each of the other keys' logits meets its own row's weights: -p·π, Θ(1) (+0)"
           if _merged(ins, sz) else
           "each sink meets its own head's weights only: a finite sum over tokens (+0)")
    return ([(s, t) for t in terms(f"{ins.fn}′⊙d{ins.out}", f"{ins.fn}′ = Θ(1)", "flow", g)]
            + [(z, t) for t in terms(f"Σ_t π·p·d{ins.out}", why, "flow", g)])


def _merged(ins: Nonlin, sz: Sizes) -> bool:
    """Whether the softmax's second argument is a second set of logits, not a sink param."""
    return ins.args[1] not in sz.program.param_table


def _product(ins: Nonlin) -> str:
    """Why a product's sizes add: a depthwise convolution is, channel by channel, its kernel's
    entries times shifted copies of the same channel, summed over finitely many taps (+0)."""
    if ins.fn in (DWCONV, TCONV):
        return ("a depthwise convolution multiplies each channel by its own kernel entries and "
                "sums finitely many taps (+0): exponents add")
    return "a coordinatewise product adds exponents"


def init_nonlin(ins: Nonlin, sz: Sizes) -> list[Term]:
    if ins.fn in MOVES:
        return MOVES[ins.fn][0](ins, sz)
    if _sink(ins):
        return init_sink(ins, sz)
    if ins.fn in PRODUCTS:
        u, v = ins.args
        return terms(f"{u}₀⊙{v}₀", _product(ins), "auto", sz.init(u), sz.init(v))
    (h,) = ins.args
    shape = NONLIN_SHAPE[ins.fn]
    if shape == "offset":
        # of a param (a gate sigmoid(w)) its argument is a pre-activation too: at most Θ(1), or
        # the function saturates and its slope, which passes w's change on, vanishes. A
        # computed argument has that condition at its own instruction already
        own = terms(f"{h}₀", f"{ins.fn}′ = Θ(1) needs its argument O(1)", "auto", sz.init(h),
                    clamp=ZERO) if h in sz.program.param_table else []
        return [Term(ZERO, (), f"{ins.fn}({h}₀)", f"{ins.fn}(0) ≠ 0 and {ins.fn} is bounded",
                     "flow")] + own
    if shape == "normalize":
        return [Term(ZERO, (), f"{ins.fn}({h}₀)", f"{ins.fn} divides by the RMS of {h}: Θ(1) "
                     "whatever its size", "flow")]
    if shape in ("shifted", "exponential"):  # φ(0) ≠ 0, unbounded: Θ(1), or x's size if x grows
        grows = "~ x for large x" if shape == "shifted" else "≥ 1 + x (unstable if x grows)"
        return ([Term(ZERO, (), f"{ins.fn}({h}₀)", f"{ins.fn}(0) ≠ 0", "flow")]
                + terms(f"{ins.fn}({h}₀)", f"{ins.fn}(x) {grows}, unbounded", "auto", sz.init(h)))
    why = f"{ins.fn}(x) ≈ x for small x" + (" and is bounded" if shape == "bounded" else
                                            ", and grows like x")
    return terms(f"{ins.fn}({h}₀)", why, "auto", sz.init(h),
                 clamp=ZERO if shape == "bounded" else None)


def change_nonlin(ins: Nonlin, sz: Sizes) -> list[Term]:
    if ins.fn in MOVES:
        return MOVES[ins.fn][1](ins, sz)
    if _sink(ins):
        return change_sink(ins, sz)
    if ins.fn in PRODUCTS:
        u, v = ins.args
        return (terms(f"Δ{u}⊙{v}", "a product changes with either factor", "auto",
                      sz.change(u), sz.train(v))
                + terms(f"{u}⊙Δ{v}", "a product changes with either factor", "auto",
                        sz.train(u), sz.change(v)))
    (h,) = ins.args
    if NONLIN_SHAPE[ins.fn] == "normalize":
        return terms(f"Δ{h}/|{h}|", f"{ins.fn} sees the change relative to {h}'s own size",
                     "auto", sz.change(h), const=-_size(sz.init(h)), clamp=ZERO)
    bounded = NONLIN_SHAPE[ins.fn] not in ("linear", "shifted", "exponential")
    return terms(f"{ins.fn}′·Δ{h}", f"{ins.fn}′ = Θ(1), so a change passes through", "auto",
                 sz.change(h), clamp=ZERO if bounded else None)


def _shared_by_heads(ins: Nonlin | LinComb, factor: str, sz: Sizes) -> tuple[Exp, str]:
    """A factor of a head dim (a QK-norm's gain, or a bias added to every head) acts on every
    head alike, so its gradient entry sums one term per head: over infinitely many heads (a
    fixed head dim) an LLN sum (+1), an upper bound (the gradient and the normalised vector
    are correlated once they have trained, as a dot's sides are); over finitely many, +0. A
    scalar factor (no dim: a function of a dot, a param of no shape) acts on every coordinate
    alike, so its gradient sums them all: +1 over a dim that grows, as a dot's does."""
    dims = sz.program.value_dims
    mine, out = dims[factor], dims[ins.out]
    if mine is None and out is not None:  # a scalar (sigmoid of a dot) times a vector
        if sz.infinite(out):
            return ONE, (f"{factor}, a scalar, multiplies every coordinate of {out}: its "
                         "gradient sums them, infinitely many and correlated (LLN: +1)")
        return ZERO, f"{factor}, a scalar, multiplies the {out} coordinates: a finite sum (+0)"
    if mine is None or mine == out or not per_head(sz.program.dim_table, mine, out):
        return ZERO, "the other factor scales it"
    if sz.infinite(out) and not sz.infinite(mine):  # heads = out / mine: infinitely many
        return ONE, (f"{factor} multiplies every head of {out} alike: its gradient sums one "
                     "term per head, infinitely many and correlated (LLN: +1)")
    return ZERO, f"{factor} multiplies every head of {out} alike: a finite sum over heads (+0)"


def grad_nonlin(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    if ins.fn in MOVES:
        return MOVES[ins.fn][2](ins, sz)
    if _sink(ins):
        return grad_sink(ins, sz)
    g = [Mono(sz.grad(ins.out))]
    if ins.fn in PRODUCTS:
        # a depthwise convolution's gradient per channel comes from that channel's own output
        # (over finitely many taps and pixels): a product's, with no sum over the width
        u, v = ins.args
        (ku, why_u), (kv, why_v) = (_shared_by_heads(ins, a, sz) for a in (u, v))
        return ([(u, t) for t in terms(f"d{ins.out}⊙{v}", why_u, "auto",
                                       g, sz.first_order_train(v), const=ku)]
                + [(v, t) for t in terms(f"d{ins.out}⊙{u}", why_v,
                                         "auto", g, sz.first_order_train(u), const=kv)])
    if NONLIN_SHAPE[ins.fn] == "normalize":
        (h,) = ins.args
        return [(h, t) for t in terms(f"d{ins.out}/|{h}|", f"{ins.fn} divides by {h}'s size",
                                      "flow", g, const=-_size(sz.init(h)))]
    return [(ins.args[0], t) for t in terms(f"{ins.fn}′⊙d{ins.out}", f"{ins.fn}′ = Θ(1)", "flow",
                                            g)]


# --- Stream ---------------------------------------------------------------------------------------
# A block's input: its argument at the first repetition, the previous repetition's return value
# (the back edge) at every later one. At a fixed finite depth (the width pass, and any `repeat 3`),
# the residual stream after L blocks is a sum of L branches, which has the size of its largest: so
# the generic repetition's input is as large as the larger of the two.
#
# In the depth pass (no width dim infinite, the depth L is) the stream is h_l = h_0 + Σ_{k<=l}
# branch_k, a sum over L repetitions (TP6, arXiv 2310.02244; CompleteP, arXiv 2505.01618): at init
# the branches are independent and centred (a fresh weight in each), so they add as a CLT sum
# (+1/2); their changes split in two channels: each repetition's own updates, all driven by the
# same output gradient, add coherently (LLN, +1); what the branch passes on of its input's change
# goes through independent W₀ of each repetition (CLT, +1/2).

_FIXED_DEPTH = "at a fixed depth, a sum of L branches is as large as its largest"


def _sides(ins: Stream) -> tuple[str, ...]:
    return (ins.init, ins.back) if ins.loops else (ins.init,)


def over_depth(ins: Stream, sz: Sizes) -> bool:
    """Does this Stream sum over infinitely many repetitions in this pass?"""
    return ins.loops and isinstance(ins.count, str) and sz.infinite(ins.count)


def _over_depth_sum(t: Term, k: Exp, why: str) -> Term:
    clamp = None if t.clamp is None else add(t.clamp, k)
    return Term(add(t.const, k), t.slots, f"Σ {t.what}", why, t.kind, clamp)


def _fresh_branch(p: Program, prod, block: str) -> bool:
    """Is a branch centred and independent across repetitions: a matmul by a weight of the
    block (fresh in each repetition), or a route whose every expert is one?"""
    if isinstance(prod, Route):
        return all(_fresh_branch(p, p.producer.get(e), block) for e in prod.experts)
    return isinstance(prod, MatMul) and p.owner.get(prod.weight) == block


def _times(terms_: list[Term], monos: list[Mono], gates: str) -> list[Term]:
    return [Term(add(t.const, m.const), t.slots + m.slots, f"{gates}·{t.what}", t.why, t.kind,
                 t.clamp) for t in terms_ for m in monos if add(t.const, m.const) is not NEG_INF]


def _branch(table: dict, prod, sz: Sizes) -> list[Term]:
    """A branch's terms for the sums over the depth. A route's are its experts' own terms, each
    times its gate (and, for a change, the gate's change times the expert), so that the bound
    on the sum over L reaches the experts' last weights, as it reaches a matmul branch's weight;
    the route's own terms carry the experts' sizes as numbers, which no param could absorb."""
    if not isinstance(prod, Route):
        return table[type(prod)](prod, sz)
    g, out = prod.gates, []
    for e in dict.fromkeys(prod.experts):
        ep = sz.program.producer[e]
        if table is INIT:
            out += _times(INIT[type(ep)](ep, sz), _gate_weights(prod, sz.init(g), sz), g)
        else:
            out += _times(INIT[type(ep)](ep, sz), _gate_weights(prod, sz.change(g), sz), g)
            out += _times(CHANGE[type(ep)](ep, sz), _gate_weights(prod, sz.train(g), sz), g)
    return out


def init_stream(ins: Stream, sz: Sizes) -> list[Term]:
    if not over_depth(ins, sz):
        return [t for v in _sides(ins) for t in
                terms(f"{v}₀", _FIXED_DEPTH, "auto", sz.init(v))]
    L, p = ins.count, sz.program
    out = terms(f"{ins.init}₀", "the stream starts from the block's argument", "auto",
                sz.init(ins.init))
    for b in sz.branches(ins):
        if b in p.param_table:  # the block's own vector param (a bias ending the branch)
            out += _vector_branch_init(ins, b, sz)
            continue
        prod = p.producer[b]
        if _fresh_branch(p, prod, ins.block):
            fresh = getattr(prod, "weight", None) or "weight in every expert"  # a route
            k, why = HALF, (f"the {L} branches {b}₀ are independent and centred (a fresh "
                            f"{fresh} in each repetition): a CLT sum over {L} (+1/2)")
        else:  # not known to be centred: the conservative LLN sum
            k, why = ONE, (f"the {L} branches {b}₀ are not known to be independent and centred "
                           f"(no fresh weight of {ins.block} makes them): an LLN sum over {L} "
                           "(+1)")
        out += [_over_depth_sum(t, k, why) for t in _branch(INIT, prod, sz)]
    return out


def change_stream(ins: Stream, sz: Sizes) -> list[Term]:
    if not over_depth(ins, sz):
        return [t for v in _sides(ins) for t in
                terms(f"Δ{v}", _FIXED_DEPTH, "auto", sz.change(v))]
    L, p = ins.count, sz.program
    out = terms(f"Δ{ins.init}", "the stream starts from the block's argument", "auto",
                sz.change(ins.init))
    for b in sz.branches(ins):
        if b in p.param_table:  # the block's own vector param (a bias ending the branch)
            out += _vector_branch_change(ins, b, sz)
            continue
        prod = p.producer[b]
        with sz.channel("own"):
            own = _branch(CHANGE, prod, sz)
        with sz.channel("stream"):
            passed = [t for t in _branch(CHANGE, prod, sz) if not t.params("U")]
        lln = (f"each repetition's own updates (in {b}) are driven by the same output gradient, "
               f"so the {L} of them add coherently (LLN over {L}: +1)")
        clt = (f"the change of the stream that {b} passes on goes through the independent initial "
               f"weights of each repetition (CLT over {L}: +1/2)")
        out += [_over_depth_sum(t, ONE, lln) for t in own]
        out += [_over_depth_sum(t, HALF, clt) for t in passed]
    return out


# A branch that is the block's own vector param b (``return h + (W @ x + b)``; fresh in each
# repetition) adds b itself to the stream: Σ_l b_l. At init the L of them are iid and centred
# (a random init: CLT, +1/2) or all the same constant (``= c``: LLN, +1; a zero init adds nothing,
# but, as everywhere in the derivation, a constant init counts as Θ(1), which only tightens the
# bound). Their changes are each repetition's own update, driven by the same output gradient
# (LLN, +1); b does not read the stream, so nothing of the stream's change passes through it.

def _vector_branch_init(ins: Stream, b: str, sz: Sizes) -> list[Term]:
    L = ins.count
    if sz.program.param_table[b].base is None:
        k, why = HALF, (f"the {L} params {b}₀ are fresh, iid and centred in each repetition: a "
                        f"CLT sum over {L} (+1/2)")
    else:
        k, why = ONE, (f"the {L} params {b}₀ start from the same constant: an LLN sum over {L} "
                       "(+1)")
    return [_over_depth_sum(t, k, why) for t in terms(f"{b}₀", "the branch is the param itself",
                                                    "auto", sz.init(b))]


def _vector_branch_change(ins: Stream, b: str, sz: Sizes) -> list[Term]:
    L = ins.count
    why = (f"each repetition's own update of {b} is driven by the same output gradient, so the "
           f"{L} of them add coherently (LLN over {L}: +1); {b} does not read the stream")
    with sz.channel("own"):
        own = terms(f"Δ{b}", "the branch is the param itself", "auto", sz.change(b))
    return [_over_depth_sum(t, ONE, why) for t in own]


def grad_stream(ins: Stream, sz: Sizes) -> list[tuple[str, Term]]:
    # In the depth pass this gives only which gradients are nonzero, not their size in L: it is
    # run only for optimizers whose update entries do not depend on the gradient's size (Adam).
    g = [Mono(sz.grad(ins.out))]
    return [(v, t) for v in _sides(ins)
            for t in terms(f"d{ins.out}", "the block's input passes its gradient back to what "
                           "fed it: the argument, and the previous repetition", "flow", g)]


# --- Route ----------------------------------------------------------------------------------------
# y = sum over the k largest gates g_e of w_e·y_e, w_e = g_e or g_e / (sum of the k): a mixture of
# experts (docs/theory.md). Top-k is a coordinatewise mask of the gates (piecewise constant: a
# selected gate keeps its size, the others are 0), so y is a finite sum of weights times experts
# and sizes multiply as in mix; normalising divides by the gates' own size, as a norm does.

def _gate_weights(ins: Route, monos: list[Mono], sz: Sizes) -> list[Mono]:
    if not ins.normalise:
        return monos
    shift = -_size(sz.init(ins.gates))
    return [Mono(add(m.const, shift), m.slots) for m in monos]


def init_route(ins: Route, sz: Sizes) -> list[Term]:
    w = _gate_weights(ins, sz.init(ins.gates), sz)
    why = f"a finite sum over the {ins.k} selected experts, each times its gate"
    return [t for e in dict.fromkeys(ins.experts)
            for t in terms(f"{ins.gates}₀·{e}₀", why, "auto", w, sz.init(e))]


def change_route(ins: Route, sz: Sizes) -> list[Term]:
    g = ins.gates
    dw = _gate_weights(ins, sz.change(g), sz)
    w = _gate_weights(ins, sz.train(g), sz)
    why = "a finite sum over the selected experts changes with the gates or the experts"
    return [t for e in dict.fromkeys(ins.experts)
            for t in terms(f"Δ{g}·{e}", why, "auto", dw, sz.train(e))
            + terms(f"{g}·Δ{e}", why, "auto", w, sz.change(e))]


def grad_route(ins: Route, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    gates, w = ins.gates, _gate_weights(ins, sz.first_order_train(ins.gates), sz)
    shift = -_size(sz.init(gates)) if ins.normalise else ZERO
    dim = sz.program.value_dims[ins.out]
    # dg_e = <dy, y_e>: a sum over the experts' dim, CLT against y_e₀ (independent of the
    # gradient), LLN against Δy_e (built from it), as attention's weights get theirs in mix
    half, one = (HALF, ONE) if sz.infinite(dim) else (ZERO, ZERO)
    out = []
    for e in dict.fromkeys(ins.experts):
        out += [(gates, t) for t in terms(
            f"d{ins.out}·{e}₀", f"the sum over {dim} meets {e}₀, independent of the gradient "
            f"(CLT: +1/2)" if half else f"a finite sum over {dim}", "auto", g, sz.init(e),
            const=add(half, shift))]
        out += [(gates, t) for t in terms(
            f"d{ins.out}·Δ{e}", f"the sum over {dim} meets Δ{e}, built from this gradient "
            f"(LLN: +1)" if one else f"a finite sum over {dim}", "auto", g,
            sz.first_order_change(e), const=add(one, shift))]
        out += [(e, t) for t in terms(f"{gates}·d{ins.out}", "each expert's gradient is the "
                                      "output's times its gate", "auto", g, w)]
    return out


# --- RouteIn --------------------------------------------------------------------------------------
# x_i = w_i·x, w_i = g_i where it is among the k largest gates, else 0: expert i's gated input
# (docs/theory.md): route's rules with x its one expert, the gate's gradient <dx_i, x> a sum over
# x's dim.

def init_route_in(ins: RouteIn, sz: Sizes) -> list[Term]:
    return terms(f"{ins.gates}₀·{ins.arg}₀", f"the input times one gate (0 unless among the "
                 f"{ins.k} largest)", "auto", sz.init(ins.gates), sz.init(ins.arg))


def change_route_in(ins: RouteIn, sz: Sizes) -> list[Term]:
    g, x, why = ins.gates, ins.arg, "the gated input changes with its gate or the input"
    return (terms(f"Δ{g}·{x}", why, "auto", sz.change(g), sz.train(x))
            + terms(f"{g}·Δ{x}", why, "auto", sz.train(g), sz.change(x)))


def grad_route_in(ins: RouteIn, sz: Sizes) -> list[tuple[str, Term]]:
    return grad_route(Route(ins.out, ins.gates, ins.k, (ins.arg,), ins.span), sz)


# --- Prepend --------------------------------------------------------------------------------------
# A learned token before a sequence's tokens: each token's coordinates are the param's or the
# sequence's, so sizes are a max (as in a sum) and the gradient at the first position reaches the
# param, fed the constant 1 there: it derives as a bias does, from these rules and its slots.

def init_prepend(ins: Prepend, sz: Sizes) -> list[Term]:
    return [t for v in ins.operands for t in terms(
        f"{v}₀", "each token is the learned one or the sequence's: as large as the larger",
        "auto", sz.init(v))]


def change_prepend(ins: Prepend, sz: Sizes) -> list[Term]:
    return [t for v in ins.operands for t in terms(
        f"Δ{v}", "each token changes as the learned one or the sequence's", "auto",
        sz.change(v))]


def grad_prepend(ins: Prepend, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    return [(v, t) for v in ins.operands for t in terms(
        f"d{ins.out}", "the first token's gradient reaches the learned token, the others' "
        "the sequence", "flow", g)]


# --- Mean -----------------------------------------------------------------------------------------
# A finite sum of tokens, weights 1/(T - start): as large as a token at init and in its change (no
# infinite dim summed); each token read gets the output's gradient times its Θ(1) weight.

def init_mean(ins: Mean, sz: Sizes) -> list[Term]:
    return terms(f"mean({ins.arg}₀)", "a mean of finitely many tokens", "auto", sz.init(ins.arg))


def change_mean(ins: Mean, sz: Sizes) -> list[Term]:
    return terms(f"mean(Δ{ins.arg})", "the tokens' changes, averaged", "auto", sz.change(ins.arg))


def grad_mean(ins: Mean, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    return [(ins.arg, t) for t in terms(f"d{ins.out}", "a finite share to each token", "flow", g)]


# --- Relayout -------------------------------------------------------------------------------------
# tokens(h, T) and image(t, H, W): the same finitely many width-vectors under other labels (pixel
# i·W + j is token i·W + j), so the output is its argument, entry for entry, at init, after
# training, and in the gradient each pixel gets from its token.

def init_relayout(ins: Relayout, sz: Sizes) -> list[Term]:
    return terms(f"{ins.arg}₀", "the same vectors, relabelled", "auto", sz.init(ins.arg))


def change_relayout(ins: Relayout, sz: Sizes) -> list[Term]:
    return terms(f"Δ{ins.arg}", "the same vectors' change, relabelled", "auto",
                 sz.change(ins.arg))


def grad_relayout(ins: Relayout, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    return [(ins.arg, t) for t in terms(f"d{ins.out}", "each vector's own gradient, relabelled",
                                        "flow", g)]


INIT = {MatMul: init_matmul, LinComb: init_lincomb, Nonlin: init_nonlin, Dot: init_dot,
        Mix: init_mix, Stream: init_stream, Route: init_route, Prepend: init_prepend}
CHANGE = {MatMul: change_matmul, LinComb: change_lincomb, Nonlin: change_nonlin, Dot: change_dot,
          Mix: change_mix, Stream: change_stream, Route: change_route, Prepend: change_prepend}
GRAD = {MatMul: grad_matmul, LinComb: grad_lincomb, Nonlin: grad_nonlin, Dot: grad_dot,
        Mix: grad_mix, Stream: grad_stream, Route: grad_route, Prepend: grad_prepend}
INIT[Mean], CHANGE[Mean], GRAD[Mean] = init_mean, change_mean, grad_mean  # docs/theory.md
INIT[RouteIn], CHANGE[RouteIn], GRAD[RouteIn] = init_route_in, change_route_in, grad_route_in
INIT[Relayout], CHANGE[Relayout], GRAD[Relayout] = init_relayout, change_relayout, grad_relayout
INIT[Delta], CHANGE[Delta], GRAD[Delta] = init_delta, change_delta, grad_delta
