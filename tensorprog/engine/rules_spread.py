"""The engine's rules for the Nonlins that move coordinates without computing on them:
``spread(g, dh)`` (one number per head over its head's coordinates), ``part(x, d, i)`` (x's
i-th part of d coordinates) and ``cat(a, b, D)`` (parts side by side, all finite or all
∝ n), whose output has another dim than their input's, ``shift(h, k)`` (h's token vectors
moved k tokens), ``at(g, win)`` (a value over a window's offsets read at each token pair's
offset) and ``place(v, h, k)`` (v's token vectors in place of some of h's).
``tensorprog.engine.rules`` dispatches Nonlin to them."""

from __future__ import annotations

from ..ir.functions import AT, CAT, PART, PICK, PLACE, RMS, SHIFT, SPREAD
from ..ir.program import Nonlin
from .exponents import ONE, ZERO
from .terms import Mono, Sizes, Term, terms

# --- spread: one number per head over its head's coordinates ---------------------------------
# y_{h,i} = g_h for each of the dh coordinates i of head h (Laguna's per-head gate, Beam's
# per-head bias). Every coordinate of y is one of g's, so y is as large as g and changes as g
# does. Back to g_h comes the sum of dy over its head's dh coordinates: over a finite dh a
# finite sum (+0); over a growing one (finitely many heads) dy_{h,i} is, in a product, the
# output's gradient times the other factor's coordinate, and after training the two are
# correlated (the weights that read y moved along it), so the sum is an LLN one (+1), as a
# per-head dot's after training and a head dim's gain: the engine's gradient is the one after
# training, an upper bound at init (where the sum is a CLT one, +1/2).


def init_spread(ins: Nonlin, sz: Sizes) -> list[Term]:
    (g,) = ins.args
    return terms(f"spread({g}₀)", f"each coordinate is one of {g}'s", "auto", sz.init(g))


def change_spread(ins: Nonlin, sz: Sizes) -> list[Term]:
    (g,) = ins.args
    return terms(f"spread(Δ{g})", f"each coordinate is one of {g}'s", "auto", sz.change(g))


def grad_spread(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    (g,) = ins.args
    if sz.infinite(ins.over):
        k, why = ONE, (f"{g}'s entry sums the gradient over its head's {ins.over} coordinates, "
                       "correlated after training (LLN: +1)")
    else:
        k, why = ZERO, f"{g}'s entry sums a finite {ins.over} coordinates of the gradient (+0)"
    return [(g, t) for t in terms(f"Σ_{ins.over} d{ins.out}", why, "flow",
                                  [Mono(sz.grad(ins.out))], const=k)]


# --- part: d of a vector's coordinates -------------------------------------------------------
# y_j = x_{i·d + j} (Gemma 4's per-layer inputs: layer i reads part i of one vector of L·d
# features). Every coordinate of y is one of x's, so y is as large as x and changes as x does;
# back to x comes y's gradient on those coordinates (0 on the others), as large as y's.


def part_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    (x,) = ins.args
    return terms(f"part({what}, {ins.over}, {ins.index})", f"each coordinate is one of {x}'s",
                 "auto", size(x))


def grad_part(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    (x,) = ins.args
    return [(x, t) for t in terms(f"d{ins.out} on part {ins.index}", f"each coordinate of "
                                  f"{ins.out} is one of {x}'s", "flow", [Mono(sz.grad(ins.out))])]


# --- shift: a sequence's token vectors moved by k tokens -------------------------------------
# y_t = h_{t-k}, 0 where t - k is no token (MobileBERT's trigram input reads each token's
# neighbours). Every coordinate of y is one of h's, or 0 at finitely many tokens: as large as h
# over the tokens (the tokens are finitely many, each of h's size) and changing as h does; back
# to h_s comes y's gradient at token s + k (0 at the k tokens no one reads), as large as y's.
# It mixes no coordinates, so no sum over the width: the rules of ``first`` (one token read)


def shift_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    (h,) = ins.args
    return terms(f"shift({what}, {ins.index})", f"each token's coordinates are another token's "
                 f"of {h} (or 0)", "auto", size(h))


def grad_shift(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    (h,) = ins.args
    return [(h, t) for t in terms(f"shift(d{ins.out}, {-ins.index})", f"each token of {h} gets "
                                  f"the gradient of the token of {ins.out} that reads it (or 0)",
                                  "flow", [Mono(sz.grad(ins.out))])]


# --- cat: parts side by side, each a fixed share -------------------------------------------
# y = (a, b, ...), each part of a finite dim (Perceiver's image input: a 1x1 convolution's
# channels beside learned positions), or each of a dim ∝ n (Reformer's axial positions, n/4
# and 3n/4 features). A fixed number of parts, each a fixed share of y's coordinates: y's RMS is
# its largest part's up to a constant, so y is as large as its largest part and changes as much
# as its most changed one (as a sum's terms); a sum over y's n coordinates is its parts' sums,
# each over a fixed share. Every rule reads a vector's size as its RMS, and each reader
# stays exact on such a vector: a finite sum over its coordinates (a matmul, a finite fan-in's
# update) is its largest part's; a coordinatewise function or a sum takes each part on its own,
# and so does a product with a vector of no parts or built from the same concatenation (the
# verifier refuses one of two built from different ones, whose largest parts need not meet); a
# norm divides every part by the joint RMS, the largest part's size (a smaller part comes out
# smaller by the ratio, vanishing in the limit where the sizes differ). Back to each part comes
# y's gradient on its coordinates, as large as y's.


def cat_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    """The terms of each part's size (``size``: init or change; ``what``: "{}₀" or "Δ{}")."""
    return [t for a in ins.args for t in
            terms(what.format(a), "a part of finitely many: as large as the largest part is the "
                  "whole (its RMS)", "auto", size(a))]


def grad_cat(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    return [(a, t) for a in ins.args for t in
            terms(f"d{ins.out} on {a}'s coordinates", f"each coordinate of {a} is one of "
                  f"{ins.out}'s", "flow", g)]


# --- at: a value over a window's offsets read at each token pair's offset -------------------
# y_{pair} = g_{offset(pair)} (Swin V2's continuous position bias: its table, computed per
# offset, read at each (query, key) pair's offset), plus a constant mask. Every coordinate of y
# is one of g's: as large as g and changing as g does, as ``first``'s; back to g's row for an
# offset comes the sum of y's gradient over the pairs at that offset, finitely many (the
# tokens are), so as large as y's (+0). The windows input, a constant, gets none.


def at_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    g, win = ins.args
    return terms(f"at({what}, {win})", f"each pair's coordinates are one of {g}'s rows",
                 "auto", size(g))


def grad_at(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    g, win = ins.args
    return [(g, t) for t in terms(f"Σ_pairs d{ins.out}", f"{g}'s row sums the gradient over "
                                  f"the finitely many pairs at its offset in {win} (+0)", "flow",
                                  [Mono(sz.grad(ins.out))])]


# --- place: one sequence's token vectors in place of some of another's ------------------------
# y_t = v_{t-k} for k <= t < k + S, h_t elsewhere (Gemma 3's image features where the prompt holds
# the image's placeholder tokens). Every token of y is one of h's or one of v's, over finitely
# many tokens and with no coordinates mixed: as large as the larger of the two (a max, as for a
# sum or prepend's learned token), changing as much as the one that changes more; back to v_s
# comes y's gradient at token k + s, back to h_t y's at t outside the block (0 inside it), each
# as large as y's. The rules of prepend, whose token is placed before the others instead.


def place_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    """The terms of both sequences' sizes (``size``: init or change; ``what``: "{}₀" or "Δ{}")."""
    return [t for a in ins.args for t in
            terms(what.format(a), "each token is one of the placed sequence's or one of the "
                  "other's: as large as the larger", "auto", size(a))]


def grad_place(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    g = [Mono(sz.grad(ins.out))]
    v, h = ins.args
    return ([(v, t) for t in terms(f"d{ins.out} on tokens {ins.index}..", f"each token of {v} "
                                   f"is one of {ins.out}'s", "flow", g)]
            + [(h, t) for t in terms(f"d{ins.out} off them", f"each token of {h} outside the "
                                     f"block is one of {ins.out}'s", "flow", g)])


# --- pick: chosen coordinates of a finite vector ----------------------------------------------
# y_j = x_{i_j} (ShieldGemma-2's logits at its two answers' ids). Every coordinate of y is one of
# x's, over a finite dim (a vector's size is its RMS, of finitely many coordinates each of its
# size): as large as x, changing as x does; back to x comes y's gradient on those coordinates
# (0 on the others: finitely many, so no sum over the width changes), as large as y's: part's.


def pick_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    (x,) = ins.args
    return terms(f"pick({what}, {ins.over})", f"each coordinate is one of {x}'s", "auto",
                 size(x))


def grad_pick(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    (x,) = ins.args
    return [(x, t) for t in terms(f"d{ins.out} on its ids", f"each coordinate of {ins.out} is "
                                  f"one of {x}'s", "flow", [Mono(sz.grad(ins.out))])]


# --- rms: the root mean square of a vector's coordinates, one number per token -----------
# r = sqrt(mean_i x_i²) (Gemma 3n's AltUp target magnitude, the embedding's RMS). It is as large
# as x's coordinates (their RMS, by definition), and it changes at most as they do: the RMS is a
# norm up to the factor d^-1/2, so |RMS(x + Δx) - RMS(x)| <= RMS(Δx) (an upper bound, reached
# where Δx moves along x). Back to x_i comes dr · x_i / (d · RMS(x)): x_i / RMS(x) is of size 1,
# so each coordinate gets its 1/d share of r's gradient, no sum (-1 over a growing d, +0 over a
# finite one).


def rms_sizes(ins: Nonlin, sz: Sizes, size, what: str) -> list[Term]:
    (x,) = ins.args
    return terms(f"rms({what})", f"the RMS of {x}'s coordinates is as large as they are (its "
                 "change at most as theirs: a norm)", "auto", size(x))


def grad_rms(ins: Nonlin, sz: Sizes) -> list[tuple[str, Term]]:
    (x,) = ins.args
    if sz.infinite(sz.program.value_dims[x]):
        k, why = -ONE, f"each of {x}'s coordinates gets x_i / (d·RMS) of it: a 1/d share (-1)"
    else:
        k, why = ZERO, f"each of {x}'s finitely many coordinates gets a share of size 1 (+0)"
    return [(x, t) for t in terms(f"d{ins.out} · {x} / (d·rms({x}))", why, "flow",
                                  [Mono(sz.grad(ins.out))], const=k)]


# --- the dispatch: one rule per function, keyed by its name, for init, change and gradient ----
MOVES = {
    SPREAD: (init_spread, change_spread, grad_spread),
    PART: (lambda i, sz: part_sizes(i, sz, sz.init, f"{i.args[0]}₀"),
           lambda i, sz: part_sizes(i, sz, sz.change, f"Δ{i.args[0]}"), grad_part),
    SHIFT: (lambda i, sz: shift_sizes(i, sz, sz.init, f"{i.args[0]}₀"),
            lambda i, sz: shift_sizes(i, sz, sz.change, f"Δ{i.args[0]}"), grad_shift),
    AT: (lambda i, sz: at_sizes(i, sz, sz.init, f"{i.args[0]}₀"),
         lambda i, sz: at_sizes(i, sz, sz.change, f"Δ{i.args[0]}"), grad_at),
    CAT: (lambda i, sz: cat_sizes(i, sz, sz.init, "{}₀"),
          lambda i, sz: cat_sizes(i, sz, sz.change, "Δ{}"), grad_cat),
    PICK: (lambda i, sz: pick_sizes(i, sz, sz.init, f"{i.args[0]}₀"),
           lambda i, sz: pick_sizes(i, sz, sz.change, f"Δ{i.args[0]}"), grad_pick),
    RMS: (lambda i, sz: rms_sizes(i, sz, sz.init, f"{i.args[0]}₀"),
          lambda i, sz: rms_sizes(i, sz, sz.change, f"Δ{i.args[0]}"), grad_rms),
    PLACE: (lambda i, sz: place_sizes(i, sz, sz.init, "{}₀"),
            lambda i, sz: place_sizes(i, sz, sz.change, "Δ{}"), grad_place),
}
