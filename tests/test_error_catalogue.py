"""The error catalogue: every table of (bad input, expected message[, exit status]) in one place,
by kind of input: program text, command-line arguments, --abc files, data files, caches, and
the arguments of an emitted module. Every user error is a TensorProgError (or, in an emitted
module, a ValueError) that says what is wrong and what to do next; a program error points at the
right line and column and shows the line with a caret; the CLI prints it and exits with status 2,
never a traceback. To add a case, add a row to its table."""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, emit_program, import_file, mlp_source, parse_error, run_cli

import tensorprog as tp
from tensorprog.cli.main import main
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.classify import classify_depth
from tensorprog.engine.exponents import ABC
from tensorprog.engine.optimizers import ADAM, OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.errors import EngineError, UsageError
from tensorprog.limits.mu import mu_limit
from tensorprog.limits.nngp import nngp_kernel
from tensorprog.limits.ntk import ntk_limit

# --- program text ---------------------------------------------------------------------------------

HEAD = ("width n = 8\ndim d = 3\ndim k = 2\ninput x : [d]\nparam W : [n, d]\nparam V : [k, n]\n"
        "param b : [n]\n")  # 7 lines; the bad line below is line 8
P, S = tp.ParseError, tp.SemanticError
IMG = ("width n = 8\ndim c = 3\ndim s = 8\ndim k = 3\ninput img : image[c, s, s]\n"
       "param K : [n, c, k, k]\nparam R : [c, n]\n")  # 7 lines; the bad line below is line 8
# two sequences, an encoder's source S and a decoder's target T: 10 lines, the bad one below
ENCDEC = ("width n = 8\ndim V = 5\ndim S = 5\ndim T = 3\ndim dh = n / 2\n"
          "input src : tokens[S, V]\ninput tgt : tokens[T, V]\nparam E : [n, V]\n"
          "x = E @ src\ny = E @ tgt\n")
# Swin's windows over an 8 x 8 grid of tokens: B offsets, shift s
WIN = ("width n = 8\ndim T = 64\ndim B = {b}\ndim G = 8\ndim s = 3\n"
       "input w : windows[T, B, G, G, {s}]\n")
CPB = ("width n = 8\ndim T = 64\ndim B = 49\ndim G = 8\ndim E = 2\ndim H = 2\n"
       "input w : windows[T, B, G, G, 2]\ninput c : offsets[B, E]\nparam U : [H, E]\n")  # 9 lines
SEQ = ("width n = 8\ndim V = 5\ndim t = 3\ndim dh = n / 2\ninput tok : tokens[t, V]\n"
       "param E : [n, V]\nh = E @ tok\n")  # 7 lines; the bad line below is line 8
# Mamba-2's state-space mixing: cb over one group of N, steps dt and rates A of H = n/2 heads
SSM = (SEQ + "dim N = 2\ndim P = 2\ndim H = n / 2\nparam WC : [N, n]\nparam WB : [N, n]\n"
       "param Wd : [H, n]\nparam A : [H]\ncb = dot(WC @ h, WB @ h, N)\ndt = softplus(Wd @ h)\n")
DELTA = SEQ + ("dim H = 2\nparam Wq : [n, n]\nparam Wb : [H, n]\nq = Wq @ h\n"
               "b = sigmoid(Wb @ h)\n")  # 12 lines: queries q, keys h, b per head
TC = SEQ + "dim one = 1\ndim K = 3\nparam D : [n, one, K]\n"  # 10 lines: a kernel over t
CLS = SEQ + "dim t1 = 4\nparam c : [n]\n"  # 9 lines: a learned token c, t's tokens and one more

# id: (program, error class, message regex, (line, column) of the first error)
CATALOGUE = {
    "missing-equals": ("width n 8\n", P, r"unexpected '8'.*\n.*\n.*\nhelp: expected '='", (1, 9)),
    "unbalanced-paren": (HEAD + "h = relu((W @ x)\noutput y = V @ h\n", P,
                         r"unexpected end of line", (8, 17)),
    "stray-character": (HEAD + "h = W @ x $ b\noutput y = V @ h\n", P, r"unexpected '\$'",
                        (8, 11)),
    "shape-not-bracketed": ("width n = 8\ninput x : (n)\n", P, r"unexpected '\('", (2, 11)),
    "undefined-name": (HEAD + "h = W @ xx\noutput y = V @ h\n", S,
                       r"undefined name 'xx'(.|\n)*did you mean 'x'\?", (8, 9)),
    "redefined-name": (HEAD + "h = W @ x\nh = relu(h)\noutput y = V @ h\n", S,
                       r"'h' is already defined \(line 8\)", (9, 1)),
    "undeclared-dim": ("width n = 8\ninput x : [d_in]\n", S, r"undeclared dim 'd_in'", (2, 12)),
    "matmul-shape": (HEAD + "h = W @ b\noutput y = V @ h\n", S,
                     r"shape mismatch in '@': W is \[n, d\] but the vector is \[n\]", (8, 5)),
    "sum-shape": (HEAD + "h = W @ x + x\noutput y = V @ h\n", S,
                  r"shape mismatch in '\+': \[n\] and \[d\]", (8, 5)),
    "product-shape": (HEAD + "h = (W @ x) * x\noutput y = V @ h\n", S,
                      r"shape mismatch in '\*'", (8, 5)),
    "dot-shape": (HEAD + "output s = dot(b, x)\n", S, r"shape mismatch in dot", (8, 12)),
    "vector-left-of-matmul": (HEAD + "h = x @ b\noutput y = V @ h\n", S,
                              r"left side of @ must be a matrix param", (8, 5)),
    "unknown-function": (HEAD + "h = rellu(W @ x)\noutput y = V @ h\n", S,
                         r"unknown function 'rellu'(.|\n)*did you mean 'relu'", (8, 5)),
    "nonlin-arity": (HEAD + "h = relu(W @ x, b)\noutput y = V @ h\n", S,
                     r"relu takes 1 argument, got 2", (8, 5)),
    "dot-arity": (HEAD + "output s = dot(b)\n", S, r"dot takes 2 or 3 arguments, got 1", (8, 12)),
    "mix-arity": (HEAD + "output s = mix(b, b, d, d, d)\n", S, r"mix takes 2, 3 or 4 arguments, "
                  r"got 5", (8, 12)),
    "transpose-vector": (HEAD + "output y = b.T @ x\n", S, r"only a matrix param can be "
                         r"transposed", (8, 12)),
    "transpose-shape": (HEAD + "output y = W.T @ x\n", S,
                        r"W.T is \[d, n\] but the vector is \[d\](.|\n)*first dim", (8, 12)),
    "head-dot-without-sequence": (HEAD + "output s = dot(b, b, k)\n", S,
                                  r"compares tokens, but the program has no sequence", (8, 22)),
    "head-dot-not-a-dim": (SEQ + "output s = dot(h, h, h)\n", S,
                           r"third argument of dot must be the head dim", (8, 22)),
    "head-dim-does-not-divide": (SEQ + "output s = dot(tok, tok, dh)\n", S,
                                 r"head dim dh does not divide V", (8, 12)),
    "mix-without-heads": (SEQ + "output o = mix(h, h)\n", S,
                          r"mix\(p, v\) needs attention weights p", (8, 12)),
    # the gated delta rule: its scores and keys' dots, b and g per head, read by mix only
    "delta-beta-wrong-dim": (DELTA + "output o = mix(delta(dot(q, h, dh), dot(h, h, dh), h, b), "
                             "h)\n", S,
                             r"delta's b must have one entry per head \(2 heads\), got \[n\]",
                             (13, 16)),
    "delta-keys-not-the-keys": (DELTA + "output o = mix(delta(dot(q, h, dh), dot(q, q, dh), b, b), "
                                "h)\n", S, r"second argument must be the keys h with themselves "
                                r"over dh, dot\(h, h, dh\).*got dot\(q, q, dh\)", (13, 16)),
    "delta-scores-not-a-dot": (DELTA + "output o = mix(delta(softmax(dot(q, h, dh)), dot(h, h, "
                               "dh), b, b), h)\n", S, r"first argument must be a per-head dot of "
                               "queries with keys", (13, 16)),
    "delta-weights-read-as-value": (DELTA + "p = delta(dot(q, h, dh), dot(h, h, dh), b, b)\n"
                                    "output o = mix(softmax(p), h)\n", S, r"the delta rule's "
                                    "weights p are read only by mix", (14, 16)),
    "delta-across-sequences": (ENCDEC + "dim H = 2\nparam Wb : [H, n]\nb = sigmoid(Wb @ x)\n"
                               "output o = mix(delta(dot(y, x, dh), dot(x, x, dh), b, b), x)\n",
                               S, r"delta is a recurrence over the tokens of one sequence.*token "
                               r"pairs \(T, S\)", (14, 16)),
    "delta-value-heads-per-key-grow": (SEQ + "dim dv = 4\ndim H = n / 4\nparam Wb : [H, n]\n"
                                       "b = sigmoid(Wb @ h)\noutput o = mix(delta(dot(h, h, dh), "
                                       "dot(h, h, dh), b, b, dv, n), h, dv)\n", S,
                                       r"one count grows with the width and the other does not",
                                       (12, 16)),
    "delta-b-of-the-key-heads": (SEQ + "dim dv = n / 4\ndim H = 2\nparam Wb : [H, n]\n"
                                 "b = sigmoid(Wb @ h)\noutput o = mix(delta(dot(h, h, dh), "
                                 "dot(h, h, dh), b, b, dv, n), h, dv)\n", S,
                                 r"delta's b must have one entry per value head \(4 heads\)",
                                 (12, 16)),
    "delta-arity": (DELTA + "output o = mix(delta(dot(q, h, dh), dot(h, h, dh), b, b, b), h)\n",
                    S, r"delta takes 3, 4 or 6 arguments, got 5", (13, 16)),
    # Kimi Delta Attention's dots, decayed per key channel: the decay of the queries' dim, and
    # the scores and the keys' products decayed by the same g
    # hdot(u, v, dh): each head of u dotted with v's, one token's, a vector of H per token
    "hdot-of-two-dims": (SEQ + "dim H = 2\nparam Wv : [H, n]\n"
                         "output y = E.T @ (h * spread(hdot(h, Wv @ h, dh), dh))\n", S,
                         r"hdot of \[n\] and \[H\]: both sides need one dim", (10, 38)),
    "hdot-without-its-heads": (SEQ + "output y = E.T @ (h * spread(hdot(h, h, dh), dh))\n", S,
                               r"hdot\(n over heads of dh\): .* no declared dim has that many"
                               r"(.|\n)*help: declare the heads' count", (8, 30)),
    "hdot-of-two-arguments": (SEQ + "dim H = 2\noutput y = E.T @ (h * spread(hdot(h, h), dh))\n",
                              S, r"hdot takes 3 arguments, got 2", (9, 30)),
    "ddot-decay-per-head": (DELTA + "output s = ddot(q, h, b, dh)\n", S,
                            r"ddot's decay is \[H\] but its queries are \[n\]: .*one decay "
                            r"per key channel", (13, 23)),
    "delta-dots-decayed-unlike": (DELTA + "output o = mix(delta(ddot(q, h, -1 * h, dh), dot(h, "
                                  "h, dh), b), h)\n", S, r"delta's dots must be decayed alike",
                                  (13, 16)),
    # RWKV's time mixing: the decay and bonus one number per channel, the values the keys' dim
    "wkv-decay-per-token": (SEQ + "param u : [n]\noutput o = wkv(-1 * exp(h), u, h, h)\n", S,
                            r"wkv's decay is one number per channel, the same at every token, "
                            "but this one is computed from the inputs", (9, 16)),
    "wkv-values-of-another-dim": (SEQ + "param u : [n]\nparam W : [V, n]\noutput o = wkv(u, u, h, "
                                  "W @ h)\n", S, r"wkv's values are \[V\] but its keys \[n\]",
                                  (10, 25)),
    # a softmax with a sink: attention logits, then a vector param with one logit per head
    "sink-wrong-head-count": (SEQ + "dim H = 3\nparam z : [H]\nscale tau\n"
                              "output p = causal_softmax(tau * dot(h, h, dh), z)\n", S,
                              r"the sink z is \[H\], but the logits have 2 heads", (11, 12)),
    "sink-not-a-param": (SEQ + "scale tau\noutput p = softmax(tau * dot(h, h, dh), h)\n", S,
                         r"the sink of softmax must be a vector param", (9, 12)),
    "sink-of-a-vector": (SEQ + "param z : [n]\noutput p = softmax(h, z)\n", S,
                         r"a sink joins the softmax of attention logits .* not of \[n\]",
                         (9, 12)),
    # merged attention: one softmax over the keys of two sequences for the same queries
    "merged-over-the-same-keys": (ENCDEC + "output p = softmax(dot(y, x, dh), dot(y, x, dh))\n",
                                  S, r"keys from two different sequences", (11, 1)),
    "merged-of-other-queries": (ENCDEC + "output p = softmax(dot(y, x, dh), dot(x, x, dh))\n",
                                S, r"one softmax over the keys of a and of b for the same "
                                r"queries", (11, 1)),
    "merged-causal-on-no-own-keys": (ENCDEC + "dim S2 = 2\ninput s2 : tokens[S2, V]\n"
                                     "z = E @ s2\noutput p = causal_softmax(dot(y, x, dh), "
                                     "dot(y, z, dh))\n", S,
                                     r"neither set of logits pairs T's tokens with themselves",
                                     (14, 1)),
    "merged-other-heads": (ENCDEC + "dim d2 = n / 4\noutput p = softmax(dot(y, y, dh), "
                           "dot(y, x, d2))\n", S, r"a and b have different heads", (12, 12)),
    # grouped-query attention: keys and values of whole heads, in whole groups of query heads
    "gqa-keys-not-whole-heads": (SEQ + "dim kv = 3\nparam Wk : [kv, n]\n"
                                 "output s = dot(h, Wk @ h, dh)\n", S,
                                 r"the keys' dim kv = 3 is not a whole number of heads of dh = 4"
                                 r"(.|\n)*`dim kv = H \* dh`", (10, 12)),
    "gqa-group-not-whole": (SEQ.replace("n / 2", "2") + "dim kv = 6\nparam Wk : [kv, n]\n"
                            "output s = dot(h, Wk @ h, dh)\n", S,
                            r"the queries' dim n = 8 is not a whole multiple of the keys' dim "
                            r"kv = 6", (10, 12)),
    "gqa-more-keys-than-queries": (SEQ.replace("n / 2", "2") + "dim kv = 2 * n\n"
                                   "param Wk : [kv, n]\noutput s = dot(h, Wk @ h, dh)\n", S,
                                   r"the queries' dim n = 8 is not a whole multiple of the keys' "
                                   r"dim kv = 16", (10, 12)),
    "gqa-values-not-whole-heads": (SEQ + "dim kv = n / 4\nparam Wv : [kv, n]\n"
                                   "s = dot(h, h, dh)\noutput o = mix(causal_softmax(s), Wv @ h)"
                                   "\n", S, r"the values' dim kv = 2 is not a whole number of "
                                   r"heads of dh = 4", (11, 12)),
    "mix-own-heads-not-the-weights-heads": (SEQ + "dim dv = n / 4\ns = dot(h, h, dh)\n"
                                            "output o = mix(softmax(s), h, dv)\n", S,
                                            r"mix\(p, v, dv\): the values' dim n is not as many "
                                            r"heads of dv as the weights have \(n / dh: 2 heads\)",
                                            (10, 12)),
    "mix-third-not-a-dim": (SEQ + "s = dot(h, h, dh)\noutput o = mix(softmax(s), h, s)\n", S,
                            r"third argument of mix must be the values' head dim", (9, 31)),
    "two-sequences-added": (ENCDEC + "param U : [V, n]\noutput o = U @ (x + y)\n", S,
                            r"combines the tokens of S with the tokens of T", (12, 12)),
    "cross-values-from-the-queries": (ENCDEC + "output o = mix(softmax(dot(y, x, dh)), y)\n", S,
                                      r"the token pairs \(T, S\), but the values run over the "
                                      r"tokens of T", (11, 1)),
    "causal-cross-attention": (ENCDEC + "output o = mix(causal_softmax(dot(y, x, dh)), x)\n", S,
                               r"causal_softmax masks later keys of the queries' own sequence",
                               (11, 16)),
    "relative-bias-on-cross-logits": (ENCDEC + "dim H = 2\ndim B = 8\ninput r : relative[T, B]\n"
                                      "param R : [H, B]\n"
                                      "output o = mix(softmax(dot(y, x, dh) + R @ r), x)\n", S,
                                      r"combines the token pairs \(T, S\) with the token pairs "
                                      r"\(T, T\)", (15, 16)),
    "relative-too-few-buckets": (ENCDEC + "dim b = 2\ninput r : relative[T, b]\n", S,
                                 r"the bucket dim b must be finite and at least 4", (12, 1)),
    "grid-offsets-not-the-grid": (ENCDEC + "dim B = 9\ninput g : grid_offsets[T, B]\n", S,
                                  r"grid_offsets g: its tokens must be a finite square number",
                                  (12, 1)),
    "grid-offsets-queries-not-the-subsampled-grid": (
        ENCDEC + "dim B = 9\ndim G = 9\ninput g : grid_offsets[S, G, B, 2]\n", S,
        r"grid_offsets g: its queries must be the 3 x 3 grid subsampled by a stride of 2 or "
        r"more", (13, 1)),
    "relative-reach-of-one-token": (ENCDEC + "dim B = 8\ninput r : relative[T, B, 1]\n", S,
                                    r"relative r: its reach 1 must be 2 or more", (12, 1)),
    "windows-offsets-not-a-square": (WIN.format(b=48, s=0), S,
                                     r"windows w: the offset dim B = 48 is not \(2w-1\)²",
                                     (6, 1)),
    "windows-not-tiling-the-grid": (WIN.format(b=25, s=0), S,
                                    r"a window of 3 x 3 does not tile the 8 x 8 grid", (6, 1)),
    "windows-shift-a-window": (WIN.format(b=49, s=4), S,
                               r"the shift 4 is not less than the window's side 4", (6, 1)),
    "windows-mask-not-positive": (WIN.format(b=49, s="2, 0"), S,
                                  r"windows w: the mask 0 is not a positive number", (6, 1)),
    "infinite-sequence": ("width n = 8\ndim V = 5\ninput t : tokens[n, V]\n", S,
                          r"sequence dim n must be finite", (3, 1)),
    "scale-not-positive": ("width n = 8\nscale s = 0\n", S, r"scale s must be positive", (2, 1)),
    # before: derived, and the emitted module crashed computing it from the ids (a traceback)
    "one-hot-read-by-a-function": ("width n = 8\ndim V = 5\ndim t = 3\ninput tok : tokens[t, V]\n"
                                   "param E : [n, V]\noutput y = E @ relu(tok)\n", S,
                                   r"the tokens input tok is one-hot ids, which only a lookup "
                                   r"reads \(W @ tok\)(.|\n)*help: look it up first", (6, 16)),
    "kernel-on-a-vector": (HEAD + "dim kk = 3\nparam K : [n, d, kk, kk]\nh = K @ x + b\n"
                           "output y = V @ (W @ x + h)\n",
                           S, r"K is a convolution kernel, but x is not an image", (10, 5)),
    "infinite-kernel": (HEAD + "param K : [n, n, n, n]\n", S,
                        r"kernel K: its spatial size must be finite", (8, 1)),
    "head-dim-at-base": ("width n = 64\ndim V = 5\ndim t = 3\ndim dh = 24\n"
                         "input tok : tokens[t, V]\nparam E : [n, V]\nh = E @ tok\n"
                         "output s = dot(h, h, dh)\n", S,
                         r"at the base width 64, the head dim dh = 24 does not divide n = 64",
                         (8, 12)),
    "fractional-dim": ("width n = 64\ndim h = n / 3\n", S,
                       r"dim h = 1/3 x 64 is not a whole number", (2, 1)),
    "pool-a-vector": (HEAD + "output y = V @ avgpool(W @ x)\n", S,
                      r"avgpool needs an image, but y_1 has no pixels", (8, 16)),
    "groupnorm-of-a-vector": (HEAD + "output y = V @ groupnorm(W @ x)\n", S,
                              r"groupnorm needs an image, but y_1 has no pixels(.|\n)*"
                              r"help: layernorm\(h\) normalises a vector", (8, 16)),
    "groupnorm-group-not-dividing": (IMG + "dim g = 3\n"
                                     "output y = R @ global_pool(groupnorm(K @ img, g))\n", S,
                                     r"at the base width 8, the head dim g = 3 does not divide "
                                     r"n = 8", (9, 28)),
    "standardised-vector": (HEAD + "param v : [n] standardised(1e-06)\noutput y = V @ (v * "
                            "(W @ x))\n", S, r"only a matrix or a convolution kernel is "
                            r"standardised, with an eps above 0, not v", (8, 1)),
    "standardised-transposed": (HEAD + "param U : [k, n] standardised(1e-06)\n"
                                "output y = U.T @ (V @ (W @ x + b))\n", S,
                                r"the standardised param U is read only as the weight of W @ x "
                                r"or conv", None),
    "grn-of-a-vector": (HEAD + "output y = V @ grn(W @ x)\n", S,
                        r"grn needs an image, but y_1 has no pixels", (8, 16)),
    "transposed-kernel": (IMG + "output y = R @ global_pool(K.T @ img)\n", S,
                          r"a convolution kernel cannot be transposed", (8, 28)),
    "depthwise-kernel-by-matmul": (IMG + "param D : [n, k, k]\nh = K @ img\n"
                                   "output y = R @ global_pool(D @ h)\n", S,
                                   r"D is a depthwise kernel \[n, k, k\]: it is applied by "
                                   r"dwconv or tconv, not @(.|\n)*help: write dwconv\(K, h\)",
                                   (10, 28)),
    "depthwise-kernel-transposed": (IMG + "param D : [n, k, k]\nh = K @ img\n"
                                    "output y = R @ global_pool(D.T @ h)\n", S,
                                    r"D is a depthwise kernel \[n, k, k\]: it is applied "
                                    r"by dwconv or tconv, not @", (10, 28)),
    "depthwise-of-a-vector": (HEAD + "param D : [n, k, k]\noutput y = V @ dwconv(D, W @ x)\n",
                              S, r"D is a convolution kernel, but y_1 is not an image", (9, 16)),
    "depthwise-channels": (IMG + "param D : [c, k, k]\noutput y = R @ global_pool(dwconv(D, "
                           "K @ img))\n", S, r"shape mismatch in dwconv: D has c channels but "
                           r"the image is \[n\]", (9, 28)),
    "depthwise-not-a-kernel": (IMG + "param D : [n]\noutput y = R @ global_pool(dwconv(D, "
                               "K @ img))\n", S, r"the first argument of dwconv must be a "
                               r"depthwise kernel param \[c, kh, kw\]", (9, 35)),
    # tokens(h, T): an image's pixels as T's tokens; image(t, H, W): a sequence's tokens as
    # pixels (both the same vectors, so the counts must match)
    "tokens-wrong-length": (IMG + "dim T = 60\noutput y = R @ mean(tokens(K @ img, T))\n", S,
                            r"y_\d+ has 8x8 pixels, but T has 60 tokens(.|\n)*help: declare "
                            r"`dim T = 64`", (9, 21)),
    "tokens-of-tokens": (IMG + "dim T = 64\nt = tokens(K @ img, T)\n"
                         "output y = R @ mean(tokens(t, T))\n", S,
                         r"tokens reads an image's pixels as tokens, but t has no pixels",
                         (10, 21)),
    "tokens-not-a-dim": (IMG + "output y = R @ mean(tokens(K @ img, 64))\n", S,
                         r"the arguments of tokens after the value must be finite dims",
                         (8, 37)),
    "image-of-an-image": (IMG + "output y = R @ global_pool(image(K @ img, s, s))\n", S,
                          r"image lays out a sequence's tokens as pixels, but y_\d+ has no "
                          r"tokens", (8, 28)),
    "image-wrong-grid": (IMG + "dim T = 64\ndim h = 4\nt = tokens(K @ img, T)\n"
                         "output y = R @ global_pool(image(t, h, h))\n", S,
                         r"image lays out the tokens of a sequence as 4x4 pixels, but t runs "
                         r"over the tokens of T of 64 tokens", (11, 28)),
    "merge-not-four-times": (IMG + "dim d = 2 * n\nparam M : [c, d]\n"
                             "output y = M @ global_pool(merge2x2(K @ img, d))\n", S,
                             r"merge2x2 gives four times y_\d+'s channels \(n\), but d is not "
                             r"4 x n", (10, 28)),
    "merge-of-tokens": (IMG + "dim T = 64\ndim d = 4 * n\nparam M : [c, d]\n"
                        "output y = M @ mean(tokens(merge2x2(tokens(K @ img, T), d), T))\n", S,
                        r"merge2x2 merges an image's 2x2 blocks of pixels, but v?\w+ has no "
                        r"pixels", (11, 28)),
    # keys reduced to one pixel: a softmax over one key token is the constant 1
    "softmax-over-one-key": (IMG + "dim T = 64\ndim one = 1\ndim dh = n\nparam K8 : [n, n, s, s]"
                             "\nt = tokens(K @ img, T)\n"
                             "r = tokens(conv(K8, image(t, s, s), 8, 0), one)\n"
                             "output y = R @ mean(mix(softmax(dot(t, r, dh)), r))\n", S,
                             r"softmax over the key tokens of one, a sequence of 1 token, is the "
                             r"constant 1(.|\n)*help: give one 2 tokens or more", (14, 25)),
    "depthwise-infinite-window": (IMG + "param D : [n, n, k]\n", S,
                                  r"kernel D: its spatial size must be finite", (8, 1)),
    "pixel-clash": (IMG + "h = K @ img\noutput y = R @ global_pool(h + avgpool(h))\n", S,
                    r"different spatial sizes \(4x4 pixels, 8x8 pixels\)", (9, 28)),
    "conv-arity": (IMG + "output y = R @ global_pool(conv(K, img, 1, 2, 1, 1))\n", S,
                   r"conv takes 3, 4, 5, 8 or 9 arguments, got 6", (8, 28)),
    "conv-not-whole": (IMG + "output y = R @ global_pool(conv(K, img, 1.5))\n", S,
                       r"the stride, padding and dilation of conv must be whole numbers",
                       (8, 28)),
    "conv-no-pixel-left": (IMG + "output y = R @ global_pool(conv(K, img, 1, 0, 5))\n", S,
                           r"conv of a 8x8 image by a 3x3 kernel .* leaves no pixel", (8, 28)),
    # dwconv takes conv's geometry after its kernel and image
    "dwconv-arity": (IMG + "param D : [c, k, k]\noutput y = R @ global_pool(dwconv(D, img, 1, "
                     "2, 1, 1))\n", S, r"dwconv takes 2, 3, 4, 5 or 8 arguments, got 6", (9, 28)),
    "dwconv-no-pixel-left": (IMG + "param D : [c, k, k]\noutput y = R @ global_pool(dwconv(D, "
                             "img, 1, 0, 5))\n", S,
                             r"dwconv of a 8x8 image by a 3x3 kernel .* leaves no pixel", (9, 28)),
    "conv-of-a-matrix": (IMG + "output y = R @ global_pool(conv(R, img, 2))\n", S,
                         r"conv applies a kernel param to an image", (8, 28)),
    # a product may gate an image by a vector of no pixels; a sum may not add one to it
    "pixel-clash-pooled": (IMG + "h = K @ img\noutput y = R @ global_pool(h + global_pool(h))\n",
                           S, r"different spatial sizes \(8x8 pixels, no pixels\)", (9, 28)),
    "infinite-image": ("width n = 8\ndim c = 3\ninput img : image[c, n, n]\n", S,
                       r"height and width must be finite", (3, 1)),
    "no-output": (HEAD + "h = W @ x + b\ny = V @ h\n", S, r"the program has no output", (9, 1)),
    "no-width": ("dim d = 3\ninput x : [d]\n", S, r"declares no width", (2, 1)),
    "width-twice": ("width n = 8\nwidth m = 8\n", S, r"width is declared twice", (2, 1)),
    "cycle": (HEAD + "h = W @ x + g\ng = relu(h)\noutput y = V @ g\n", S,
              r"'g' is used before it is defined(.|\n)*cannot contain a cycle", (8, 13)),
    "constant-plus-vector": (HEAD + "h = W @ x + 1\noutput y = V @ h\n", S,
                             r"cannot add a constant to a vector", (8, 5)),
    # a number is added only to a function of params, and sqrt taken only of a value its
    # functions keep above a positive number (ir/ranges.py)
    "constant-plus-input-function": (HEAD + "h = sigmoid(W @ x) + 1\noutput y = V @ (h * b)\n",
                                     S, r"constant to a vector computed from the inputs", (8, 5)),
    "sqrt-near-zero": (HEAD + "g = sqrt(sigmoid(b))\noutput y = V @ (g * (W @ x))\n", S,
                       r"sqrt\(g_1\): its argument is not bounded below by a positive", (8, 1)),
    "sqrt-of-a-difference": (HEAD + "g = sqrt(1 - sigmoid(b))\noutput y = V @ (g * (W @ x))\n",
                             S, r"only known to lie in \[0, 1\]", (8, 1)),
    "scaled-matrix": (HEAD + "h = (2 * W) @ x\noutput y = V @ h\n", S,
                      r"matrix param W can only be applied with @", (8, 6)),
    "matrix-as-output": (HEAD + "h = W @ x + b\noutput W\n", S,
                         r"'W' is a matrix param, not a vector", (9, 8)),
    "output-twice": (HEAD + "output y = V @ (W @ x + b)\noutput y\n", S,
                     r"marked as an output twice", (9, 8)),
    "dim-as-vector": (HEAD + "h = W @ x + n\noutput y = V @ h\n", S,
                      r"'n' is a dim, not a vector", (8, 13)),
    "vector-division": (HEAD + "h = (W @ x) / b\noutput y = V @ h\n", S,
                        r"only division by a number", (8, 5)),
    "dim-divided-by-zero": ("width n = 8\ndim h = n / 0\n", S, r"division of a dim by zero",
                            (2, 1)),
    "dim-not-integer": ("width n = 8\ndim a = 3\ndim h = a / 2\n", S,
                        r"dim h = 3/2 is not a positive integer", (3, 1)),
    "function-name-as-value": (HEAD + "relu = W @ x\noutput y = V @ relu\n", P,
                               r"syntax error|built-in function", None),
}


@pytest.mark.parametrize(("src", "cls", "pattern", "where"), CATALOGUE.values(), ids=CATALOGUE)
def test_catalogue(src, cls, pattern, where):
    with pytest.raises(tp.TensorProgError) as info:
        tp.parse(src, "bad.tp")
    err = info.value
    text = err.render()
    assert re.search(pattern, text), text
    if where is None:
        return
    assert isinstance(err, cls)
    line, col = where
    assert text.startswith(f"bad.tp:{line}:{col}: error: "), text
    first = text.split("\n\n")[0].splitlines()
    assert first[1].strip() == src.splitlines()[line - 1].strip()  # the source line
    assert first[2].strip().startswith("^")  # the caret line
    assert first[2].index("^") - 4 == col - 1  # under the right column
    assert first[-1].startswith("help: "), text


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 20


HEAD3 = "width n = 8\ninput x : [n]\nparam W : [n, n]\n"  # 3 lines; the bad line below is line 4

LOGITS_SEQ = ("width n = 8\ndim V = 5\ndim t = 3\ndim dh = n / 2\ninput tok : tokens[t, V]\n"
       "param E : [n, V]\nparam Wq : [n, n]\nparam Wk : [n, n]\nscale tau\nh = E @ tok\n"
       "s = tau * dot(Wq @ h, Wk @ h, dh)\n")  # 11 lines; s holds attention logits
MOE = ("width n = 8\ndim E = 2\ninput x : [n]\nparam W : [n, n]\nparam R : [E, n]\n"
       "g = softmax(R @ x)\n")  # 6 lines; the bad line below is line 7

def _cli(capsys, *argv):
    code, _, err = run_cli(capsys, *argv)
    return code, err


POSITIONED = {
    # syntax mistakes whose help says what to do
    "shape-arithmetic": ("width n = 8\ninput x : [4 * n, n]\n", P,
                         r"unexpected '4'(.|\n)*declare the size first, e\.g\. `dim m = 4 \* n`, "
                         r"then write `\[m, n\]`", (2, 12)),
    "shape-arithmetic-right": ("width n = 8\ninput x : [n * 4]\n", P, r"`dim m = 4 \* n`",
                               (2, 14)),
    "dim-square": (HEAD3 + "dim m = n * n\n", P, r"unexpected 'n'(.|\n)*not n \* n", (4, 13)),
    "dim-fraction": (HEAD3 + "dim m = 0.5 * n\n", P, r"`dim m = n / 2`", (4, 10)),  # 0 .5
    "dim-negative": (HEAD3 + "dim m = -3\n", P, r"positive whole number", (4, 9)),
    "width-no-base": ("width n\ninput x : [n]\n", P, r"expected '='\. Give the width its base "
                      r"value(.|\n)*`width n = 256`", (1, 8)),
    "width-not-whole": ("width n = 256.0\n", P, r"a positive whole number: `width n = 256`",
                        (1, 14)),  # 256 .0
    "juxtaposed": (HEAD3 + "output y = W x\n", P, r"unexpected 'x'(.|\n)*put an operator between "
                   r"them, `W @ x`", (4, 14)),
    "power": (HEAD3 + "output y = x ** 2\n", P, r"no power operator", (4, 15)),
    "lower-t": (HEAD3 + "output y = W.t @ x\n", P, r"written `W\.T`", (4, 13)),
    "trailing-operator": (HEAD3 + "output y = W @\n", P, r"The expression ends early", (4, 15)),
    # sizes
    "dim-zero-multiple": (HEAD3 + "dim z = 0 * n\n", S, r"dim z = 0 x n has no coordinates(.|\n)*"
                          r"`dim z = 4 \* n`", (4, 1)),
    "dim-zero": (HEAD3 + "dim z = 0\n", S, r"dim z must be positive", (4, 1)),
    "dim-divided-by-zero": (HEAD3 + "dim z = n / 0\n", S, r"division of a dim by zero", (4, 1)),
    "finite-dim-zero-multiple": (HEAD3 + "dim d = 3\ndim z = 0 * d\n", S, r"0 x d", (5, 1)),
    "width-zero": ("width n = 0\n", S, r"the base width must be positive(.|\n)*`width n = 256`"
                   r"(?!(.|\n)*declares no width)", (1, 1)),
    # numbers past what a float holds
    "coefficient-too-large": (HEAD3 + "output y = 1e400 * (W @ x)\n", P,
                              r"the number 1e400 is out of range(.|\n)*between 2\.23e-308 and "
                              r"1\.8e\+308", (4, 12)),
    "coefficient-too-small": (HEAD3 + "output y = 1e-400 * (W @ x)\n", P, r"1e-400 is out of range",
                              (4, 12)),
    "huge-exponent": (HEAD3 + "output y = 1e99999999999 * (W @ x)\n", P, r"out of range",
                      (4, 12)),
    "many-digits": (HEAD3 + "output y = " + "1" * 5000 + " * (W @ x)\n", P,
                    r"the number 111111111111\.\.\.11111111 \(5000 characters\) is out of range",
                    (4, 12)),
    "many-digits-in-range": (HEAD3 + "output y = " + "1" * 4400 + "e-4390 * (W @ x)\n", P,
                             r"has too many digits", (4, 12)),
    "init-too-large": (HEAD3 + "param g : [n] = 1e999\noutput y = g * (W @ x)\n", P,
                       r"1e999 is out of range", (4, 17)),
    "scale-too-large": (HEAD3 + "scale s = 1e999\noutput y = s * (W @ x)\n", P, r"out of range",
                        (4, 11)),
    "folded-coefficient": (HEAD3 + "output y = 1e200 * 1e200 * (W @ x) + x\n", S,
                           r"a coefficient here, about 1e400, is out of range", (4, 12)),
    # before: the coefficient 2**-15000 was multiplied out and only checked where it was named,
    # and its message's str() hit Python's 4,300-digit limit (a traceback)
    "division-chain": (HEAD3 + "output y = (W @ x)" + " / 2" * 15000 + "\n", S,
                       r"a coefficient here, about 1e-308, is out of range(.|\n)*2\.23e-308",
                       (4, 12)),
    "width-too-large": ("width n = 99999999999999999999999\n", P,
                        r"the size 99999999999999999999999 is too large(.|\n)*2\*\*53", (1, 11)),
    "dim-too-large": (HEAD3 + "dim d = 10000000000000000000000000\n", P, r"too large", (4, 9)),
    "dim-multiple-too-large": (HEAD3 + "dim z = 9007199254740992 * n\n", S,
                               r"dim z = 9007199254740992 x 8 is too large", (4, 1)),
    "derived-dim-too-large": (HEAD3 + "dim d = 9007199254740992\ndim z = 2 * d\n", S,
                              r"dim z = 18014398509481984 is too large", (5, 1)),
    "times-zero": (HEAD3 + "y = 0 * (W @ x)\noutput z = W @ y\n", S,
                   r"multiplying by 0 gives a zero vector", (4, 5)),
    # functions whose rule does not describe what the module computes
    "softmax-of-width": (HEAD3 + "output y = softmax(W @ x)\n", S,
                         r"softmax over the width-proportional dim n makes every entry Θ\(1/n\)"
                         r"(.|\n)*attention logits over key tokens", (4, 12)),
    "softmax-of-scalar": (HEAD3 + "output y = softmax(dot(x, W @ x))\n", S,
                          r"softmax of a scalar", (4, 12)),
    "softmax-of-one": (HEAD3 + "dim one = 1\nparam R : [one, n]\noutput y = softmax(R @ x)\n", S,
                       r"single entry of one is the constant 1", (6, 12)),
    "causal-softmax-of-vector": (HEAD3 + "dim c = 10\nparam R : [c, n]\n"
                                 "output y = causal_softmax(R @ x)\n", S,
                                 r"causal_softmax masks future key tokens(.|\n)*not a vector \[c\]",
                                 (6, 12)),
    "layernorm-of-scalar": (HEAD3 + "output y = layernorm(dot(x, W @ x))\n", S,
                            r"layernorm of a scalar would normalise over the batch", (4, 12)),
    "rmsnorm-of-logits": (LOGITS_SEQ + "output y = rmsnorm(s)\n", S,
                          r"rmsnorm of attention logits would normalise over key tokens",
                          (12, 12)),
    "layernorm-of-one": (HEAD3 + "dim one = 1\nparam R : [one, n]\n"
                         "output y = layernorm(R @ x)\n", S, r"single coordinate of one is 0",
                         (6, 12)),
    "head-norm-not-a-dim": (HEAD3 + "output y = rmsnorm(W @ x, x)\n", S,
                            r"the second argument of rmsnorm must be the head dim(.|\n)*"
                            r"rmsnorm\(q, dh\)", (4, 27)),
    "head-norm-does-not-divide": (HEAD3 + "dim dh = 3\noutput y = rmsnorm(W @ x, dh)\n", S,
                                  r"the head dim dh = 3 does not divide n = 8", (5, 12)),
    "head-norm-of-one": (HEAD3 + "dim dh = 1\noutput y = layernorm(W @ x, dh)\n", S,
                         r"layernorm over heads of 1 coordinate is constant", (5, 29)),
    "head-norm-arity": (HEAD3 + "output y = rmsnorm(x, x, x)\n", S,
                        r"rmsnorm takes 1 or 2 arguments, got 3(.|\n)*rmsnorm\(q, dh\)",
                        (4, 12)),
    "head-gain-does-not-divide": (HEAD3 + "dim dh = 3\nparam g : [dh]\noutput y = g * (W @ x)\n",
                                  S, r"the head dim dh = 3 does not divide n = 8", (6, 12)),
    # a param of 2 entries times n is a gain of heads only where the program has heads of 2
    "head-gain-of-no-heads": (HEAD3 + "dim f2 = 2\nparam g : [f2]\noutput y = g * (W @ x)\n",
                              S, r"a gain or bias applies to every head alike only where its "
                              r"dim is a head dim of the program(.|\n)*help: give the param",
                              (6, 1)),
    # (a param of one entry is one number for every coordinate: no heads needed)
    "head-bias-of-no-heads": (HEAD3 + "dim f2 = 2\nparam g : [f2]\noutput y = (W @ x) + g\n",
                              S, r"a sum of a vector param of f2 and a vector of another dim",
                              (6, 1)),
    "global-pool-of-vector": (HEAD3 + "output y = global_pool(W @ x)\n", S,
                              r"global_pool needs an image", (4, 12)),
    "dot-of-logits": (LOGITS_SEQ + "output y = dot(s, s)\n", S,
                      r"dot contracts a vector's dim, but attention logits", (12, 12)),
    "head-dot-of-logits": (LOGITS_SEQ + "output y = dot(s, s, dh)\n", S,
                           r"dot contracts a vector's dim, but attention logits", (12, 12)),
    "logits-plus-vector": (LOGITS_SEQ.replace("dim dh = n / 2", "dim dh = 2\ndim m = n / 2")
                           + "param u : [m]\noutput y = s + u\n", S,
                           r"shape mismatch in '\+': \[n/dh\] and \[m\]", (14, 12)),
    # names
    "function-as-name": (HEAD3 + "relu = W @ x\noutput relu\n", S,
                         r"'relu' is a built-in function and cannot name a value", (4, 1)),
    "width-as-value": (HEAD3 + "n = W @ x\noutput n\n", S, r"'n' is already defined \(line 1\)",
                       (4, 1)),
    # a mixture of experts: route(g, k, experts...) where the engine's rules describe it
    "route-over-width": (MOE + "output y = route(sigmoid(W @ x), 1, W @ x, W @ x)\n", S,
                         r"route over the width-proportional dim n: per token only k of the "
                         r"router's rows are read(.|\n)*declare a finite number of experts",
                         (7, 12)),
    "route-expert-count": (MOE + "output y = route(g, 1, W @ x, W @ x, W @ x)\n", S,
                           r"the gates \[E\] have 2 entries but 3 experts are given", (7, 12)),
    "route-k-too-large": (MOE + "output y = route_norm(g, 3, W @ x, W @ x)\n", S,
                          r"k = 3 is more than the 2 experts", (7, 12)),
    "route-k-not-number": (MOE + "output y = route(g, x, W @ x, W @ x)\n", S,
                           r"the second argument of route must be k, a whole number", (7, 12)),
    "route-no-expert": (MOE + "output y = route(g, 1)\n", S,
                        r"route takes the gates, k and at least one expert, got 2 arguments",
                        (7, 12)),
    "route-scalar-gates": (MOE + "output y = route(dot(x, x), 1, W @ x)\n", S,
                           r"the gates of route must be a vector with one entry per expert",
                           (7, 12)),
    "route-norm-of-logits": (MOE + "output y = route_norm(R @ x, 1, W @ x, W @ x)\n", S,
                             r"route_norm divides the k gates by their sum(.|\n)*not a softmax "
                             r"or sigmoid", (7, 12)),
    "route-expert-dims": (MOE + "output y = route(g, 1, W @ x, g)\n", S,
                          r"the experts must be vectors of one dim, got \[n\], \[E\]", (7, 12)),
    # route_in(g, k, i, x): expert i's gated input, i counted from 0
    "route-in-expert-past-the-gates": (MOE + "output y = route_in(g, 1, 2, x)\n", S,
                                       r"route_in: k = 1 and the expert 2 must be at most and "
                                       r"below the 2 experts of \[E\]", (7, 12)),
    "route-in-no-index": (MOE + "output y = route_in(g, 1, x)\n", S,
                          r"route_in takes the gates, k, the expert's index and its input, got "
                          r"3 arguments", (7, 12)),
    "route-in-over-width": (MOE + "output y = route_in(sigmoid(W @ x), 1, 0, x)\n", S,
                            r"route_in over the width-proportional dim n", (7, 12)),
    "route-in-index-not-number": (MOE + "output y = route_in(g, 1, x, x)\n", S,
                                  r"the second and third arguments of route_in must be k",
                                  (7, 12)),
    # first(h) reads one token of a sequence: a value without tokens has none to read, and the
    # token read has no sequence axis left to combine with per-token values or to attend over
    "first-without-tokens": (HEAD + "output y = V @ first(W @ x)\n", S,
                             r"first reads the first token of a sequence, but y_1 has no tokens"
                             r"(.|\n)*help: apply first to a value computed from a `tokens`",
                             (8, 16)),
    "first-of-logits": (LOGITS_SEQ + "output y = first(s)\n", S,
                        r"first reads a vector of a declared dim at the first token, not "
                        r"attention logits", (12, 12)),
    "first-of-ids": (SEQ + "output y = E @ first(tok)\n", S,
                     r"first reads a vector of a declared dim at the first token, not the input "
                     r"tok \(one-hot ids\)", (8, 16)),
    "first-plus-tokens": (SEQ + "output y = E.T @ (h + first(h))\n", S,
                          r"y_1 is one vector per sequence \(read by first or mean\), but h "
                          r"has one value per token(.|\n)*help: compute everything per token "
                          r"first", (8, 12)),
    # one number per head over its dh coordinates: H·dh must be a declared dim's size
    "spread-no-dim": (SEQ + "dim H = 3\nparam g : [H]\noutput y = E.T @ (h * spread(g, dh))\n",
                      S, r"spread\(H entries over dh coordinates each\): no declared dim has "
                      r"H·dh's size(.|\n)*help: declare the dim", (10, 23)),
    "spread-not-a-dim": (SEQ + "dim H = 2\nparam g : [H]\noutput y = E.T @ (h * spread(g, 3))\n",
                         S, r"the second argument of spread must be a declared dim", (10, 33)),
    # part(x, d, i): one of a fixed number of parts of d of x's coordinates
    "part-out-of-range": (SEQ + "output y = part(h, dh, 2)\n", S,
                          r"part\(n, dh, 2\): n has 2 parts of dh, none numbered 2(.|\n)*help: "
                          r"write part\(x, d, i\)", (8, 12)),
    "part-fixed-of-growing": (SEQ + "dim f = 2\noutput y = part(h, f, 0)\n", S,
                              r"part\(n, f, 0\): n and f do not both grow with the width: the "
                              r"number of parts would change with it", (9, 12)),
    "part-index-not-whole": (SEQ + "output y = part(h, dh, 0.5)\n", S,
                             r"the third argument of part must be a whole number >= 0", (8, 24)),
    # shift(h, k): a sequence's token vectors moved by k tokens, fewer than it has
    "shift-by-zero": (SEQ + "output y = E.T @ shift(h, 0)\n", S,
                      r"the second argument of shift must be a whole number of tokens, not 0"
                      r"(.|\n)*help: write shift\(h, k\)", (8, 27)),
    "shift-past-the-sequence": (SEQ + "output y = E.T @ shift(h, -3)\n", S,
                                r"shift by -3 tokens, but t has 3: every token would read past "
                                r"the sequence(.|\n)*help: shift by fewer than 3 tokens", (8, 18)),
    "shift-without-tokens": (HEAD + "output y = V @ shift(W @ x, 1)\n", S,
                             r"shift moves the vectors of a sequence's tokens, but y_1 has no "
                             r"tokens to move \(built from params", (8, 22)),
    "shift-of-ids": (SEQ + "output y = E @ shift(tok, 1)\n", S,
                     r"but tok has no tokens to move \(the input's one-hot ids\)", (8, 22)),
    "shift-of-patches": ("width n = 8\ndim d = 6\ndim k = 2\ndim t = 3\ninput x : patches[t, d]\n"
                         "param W : [n, d]\nparam V : [k, n]\noutput y = V @ (W @ shift(x, 1))\n",
                         S, r"but x has no tokens to move \(the input's image patches, which a "
                         r"layer's map of them, W @ x, has as tokens\)", (8, 27)),
    "shift-of-logits": (LOGITS_SEQ + "output y = shift(s, 1)\n", S,
                        r"shift moves the vectors of a sequence's tokens: it needs a vector of a "
                        r"declared dim per token", (12, 18)),
    "shift-of-an-image": (IMG + "output y = R @ global_pool(shift(K @ img, 1))\n", S,
                          r"shift moves a sequence's tokens, but y_1 is an image(.|\n)*help: "
                          r"read its pixels as tokens first", (8, 28)),
    # ssd(cb, dt, A, P): Mamba-2's state-space mixing weights (ir/ssd.py); SSM is 16 lines
    "ssd-arity": (SSM + "p = ssd(cb, dt, A)\n", S, r"ssd takes 4 arguments, got 3(.|\n)*help: "
                  r"write p = ssd\(cb, dt, A, P\)", (17, 5)),
    "ssd-head-not-a-dim": (SSM + "p = ssd(cb, dt, A, 2)\n", S,
                           r"the fourth argument of ssd must be a declared dim", (17, 20)),
    "ssd-cb-not-a-dot": (SSM + "p = ssd(h, dt, A, P)\n", S, r"ssd's first argument must be a "
                         r"per-head dot of C and B over the state size", (17, 9)),
    "ssd-rates-of-another-dim": (SSM + "param q : [n]\np = ssd(cb, dt, q, P)\n", S,
                                 r"ssd's steps are \[H\] but its rates \[n\]", (18, 17)),
    "ssd-no-dim-of-the-heads": (SSM + "dim Q = 3\np = ssd(cb, dt, A, Q)\n", S,
                                r"no declared dim has H·Q's size", (18, 20)),
    "ssd-groups-do-not-divide-the-heads": (
        SSM + "dim F = 4\ndim H3 = 3\ndim Q = 6\nparam WF : [F, n]\nparam W3 : [H3, n]\n"
        "param A3 : [H3]\np = ssd(dot(WF @ h, WF @ h, N), softplus(W3 @ h), A3, P)\n", S,
        r"the 2 groups of cb cannot each serve a run of consecutive heads of H3 \(2 groups do "
        r"not divide 3 heads\)", (23, 9)),
    "ssd-rates-per-token": (SSM + "p = ssd(cb, dt, dt, P)\n", S, r"ssd's rates are one number "
                            r"per head, the same at every token of every sequence", (17, 17)),
    "ssd-rates-per-sequence": (SSM + "p = ssd(cb, dt, first(dt), P)\n", S,
                               r"but this one is computed from the inputs", (17, 17)),
    "ssd-steps-without-tokens": (SSM + "p = ssd(cb, A, A, P)\noutput y = E.T @ mix(p, h, P)\n",
                                 S, r"ssd's steps A must be one vector per token of t, but run "
                                 r"over no sequence", (17, 1)),
    # tconv(D, h, p): a depthwise convolution over a sequence's tokens by D [c, one, K]
    "tconv-past-the-kernel": (TC + "output y = E.T @ tconv(D, h, 3)\n", S,
                              r"tconv reads the 3 tokens from p before on, but p = 3: it must be "
                              r"between 0 and 2(.|\n)*help: write tconv\(D, h\)", (11, 30)),
    "tconv-by-a-fraction": (TC + "output y = E.T @ tconv(D, h, 0.5)\n", S,
                            r"the third argument of tconv must be a whole number", (11, 30)),
    "tconv-by-a-matrix": (TC + "output y = E.T @ tconv(E, h)\n", S,
                          r"the first argument of tconv must be a kernel param \[c, one, K\]",
                          (11, 24)),
    "tconv-without-tokens": (TC + "output y = E.T @ tconv(D, first(h))\n", S,
                             r"tconv convolves a sequence's tokens, but y_1 has no tokens",
                             (11, 27)),
    "tconv-of-an-image": (IMG + "dim one = 1\nparam D : [n, one, k]\n"
                          "output y = R @ global_pool(tconv(D, K @ img))\n", S,
                          r"but y_1 is an image(.|\n)*help: convolve an image with dwconv",
                          (10, 28)),
    "tconv-kernel-as-a-matrix": (TC + "output y = E.T @ (D @ h)\n", S,
                                 r"D is a depthwise kernel \[n, one, K\]: it is applied by "
                                 r"dwconv or tconv, not @(.|\n)*applied by tconv\(D, h\)",
                                 (11, 19)),
    # at(g, win): a value over the windows' offsets (from `offsets[B, E]`) read at each pair's
    "at-not-windows": (CPB + "output y = at(U @ c, c)\n", S, r"the second argument of at must "
                       r"be a windows input(.|\n)*help: write at\(g, win\)", (10, 22)),
    "at-one-argument": (CPB + "output y = at(U @ c)\n", S, r"at takes 2 arguments, got 1",
                        (10, 12)),
    "at-of-a-param": (CPB + "param g : [H]\noutput y = at(g, w)\n", S, r"at\(g, w\) reads one "
                      r"row of g per offset of w's B, but g runs over no sequence(.|\n)*help: "
                      r"compute g from `input c : offsets\[B, E\]`", (11, 1)),
    "at-of-the-offsets": (CPB + "output y = at(c, w)\n", S, r"but c is the offsets input "
                          r"itself", (10, 1)),
    "offsets-three-coordinates": (CPB + "dim E3 = 3\ninput d : offsets[B, E3]\n"
                                  "output y = at(U @ c, w)\n", S, r"offsets d: an offset has 2 "
                                  r"coordinates \(dy's and dx's\), not E3", (11, 1)),
    "offsets-not-a-window": (CPB + "input d : offsets[T, E]\noutput y = at(U @ c, w)\n", S,
                             r"offsets d: the offset dim T is not \(2w-1\)² for a window",
                             (10, 1)),
    "last-without-tokens": (HEAD + "output y = V @ last(W @ x)\n", S,
                            r"last reads the last token of a sequence, but y_1 has no tokens"
                            r"(.|\n)*help: apply last to a value computed from a `tokens` input",
                            (8, 16)),
    # pick(y, D, i1, ...): chosen coordinates of a finite vector
    "pick-of-a-growing-vector": (HEAD + "dim D = 2\noutput y = pick(W @ x, D, 0, 1)\n", S,
                                 r"pick of coordinates of a vector of n, which grows with the "
                                 r"width(.|\n)*help: pick a readout's outputs", (9, 12)),
    "pick-past-the-vector": (HEAD + "dim D = 2\noutput y = pick(V @ (W @ x), D, 0, 2)\n", S,
                             r"pick\(k, D, 0, 2\): D must have one coordinate per id \(2\), "
                             r"and each id be below k's 2", (9, 12)),
    "pick-without-a-dim": (HEAD + "output y = pick(V @ (W @ x), 0, 1)\n", S,
                           r"the second argument of pick must be a declared dim", (8, 30)),
    # rms(x, D): a vector's RMS, one number per token, as a vector of D (one coordinate)
    "rms-of-more-than-one": (HEAD + "output y = V @ (spread(rms(W @ x, k), n) * (W @ x))\n", S,
                             r"rms\(x, k\) gives one number per token: k must have one coordinate "
                             r"\(`dim k = 1`\), not \d+"
                             r"(.|\n)*help: write rms\(x, D\)", (8, 24)),
    "rms-without-a-dim": (HEAD + "output y = V @ (spread(rms(W @ x, 1), n) * (W @ x))\n", S,
                          r"the second argument of rms must be a declared dim", (8, 35)),
    "rms-of-one-argument": (HEAD + "output y = V @ rms(W @ x)\n", S,
                            r"rms takes 2 arguments, got 1", (8, 16)),
    # place(v, h, k): v's tokens in place of h's tokens k .. k+S-1
    "place-past-the-sequence": (ENCDEC + "output z = E.T @ place(x, y, 0)\n", S,
                                r"place puts S's 5 tokens from token 0 of T, but T has 3 tokens"
                                r"(.|\n)*help: place them into a sequence of 5 tokens or more",
                                (11, 18)),
    "place-from-a-negative-token": (ENCDEC + "output z = E.T @ place(y, x, -1)\n", S,
                                    r"the third argument of place must be a whole number of "
                                    r"tokens, 0 or more(.|\n)*help: write place\(v, h, k\)",
                                    (11, 30)),
    "place-of-ids": (ENCDEC + "output z = E.T @ place(y, tgt, 0)\n", S,
                     r"but tgt is an input's one-hot ids", (11, 27)),
    "place-without-tokens": (HEAD + "output y = V @ place(W @ x, W @ x, 0)\n", S,
                             r"but y_1 has no tokens \(built from params", (8, 22)),
    "place-another-dim": (SEQ + "dim f = 4\nparam A : [f, n]\n"
                          "output y = A.T @ place(A @ h, h, 0)\n", S,
                          r"place of a vector of f into one of n: a token's vector is replaced "
                          r"by one of the same dim", (10, 18)),
    # cat(a, b, D): finite parts side by side, D their sizes summed
    "cat-growing-part": (SEQ + "dim f = 4\ndim D = 12\nparam A : [f, n]\n"
                         "output y = cat(A @ h, h, D)\n", S, r"cat of a part of dim n, which "
                         r"grows with the width, beside a finite part: cat joins parts all "
                         r"finite or all growing(.|\n)*help: a linear layer on a "
                         r"concatenation is the sum", (11, 23)),
    # parts that all grow (Reformer's axial positions, n/4 and 3n/4): D their proportions'
    "cat-growing-total": (SEQ + "dim a = n / 4\ndim D = 2 * n\nparam A : [a, n]\n"
                          "output y = cat(A @ h, h, D)\n", S, r"cat\(a, n, D\): the parts have "
                          r"5 \* n / 4 coordinates in all, D has 2 \* n(.|\n)*help: declare "
                          r"`dim D = 5 \* n / 4`", (11, 12)),
    "axial-growing-axis": (SEQ + "input r : axial[t, n, 1]\noutput y = h\n", S,
                           r"axial r: its sequence and axis must be finite dims, its stride a "
                           r"positive number of positions", (8, 1)),
    "axial-stride-zero": (SEQ + "dim A = 2\ninput r : axial[t, A, 0]\noutput y = h\n", S,
                          r"axial r: its sequence and axis must be finite dims", (9, 1)),
    "cat-wrong-total": (SEQ + "dim f = 4\ndim D = 9\nparam A : [f, n]\n"
                        "output y = cat(A @ h, A @ h, D)\n", S, r"cat\(f, f, D\): the parts "
                        r"have 8 coordinates in all, D has 9(.|\n)*help: declare `dim D = 8`",
                        (11, 12)),
    "cat-of-a-param": (SEQ + "dim f = 4\ndim D = 8\nparam A : [f, n]\nparam p : [f]\n"
                       "output y = cat(A @ h, p, D)\n", S, r"cat of a param \(p\): a part is a "
                       r"vector computed per example", (12, 23)),
    # cat(a, b, D, dv): side by side in each head of dv (DiffLlama's two attention outputs)
    "cat-heads-not-whole": (SEQ + "dim D = 2 * n\ndim dv = 3 * n / 8\n"
                            "output y = cat(h, h, D, dv)\n", S, r"cat\(\.\.\., D, dv\): D is "
                            r"not a whole number of heads of dv", (10, 12)),
    "cat-heads-finite-of-growing": (SEQ + "dim f = 4\ndim D = 8\ndim dv = n / 2\n"
                                    "param A : [f, n]\noutput y = cat(A @ h, A @ h, D, dv)\n",
                                    S, r"D is finite and dv grows with the width", (12, 12)),
    "cat-no-dim": (SEQ + "dim f = 4\nparam A : [f, n]\noutput y = cat(A @ h, A @ h, 8)\n", S,
                   r"the last argument of cat must be a declared dim", (10, 30)),
    "cat-one-part": (SEQ + "dim f = 4\nparam A : [f, n]\noutput y = cat(A @ h, f)\n", S,
                     r"cat takes two or more vectors and a dim, got 2 arguments", (10, 12)),
    "cat-products-of-two": (SEQ + "dim f = 4\ndim D = 8\nparam A : [f, n]\nparam B : [f, n]\n"
                            "a = A @ h\nb = B @ h\noutput y = cat(a, b, D) * cat(b, a, D)\n",
                            S, r"a product of two vectors built from different concatenations"
                            r"(.|\n)*help: multiply values built from one concatenation",
                            (14, 1)),
    "cat-two-sequences": (ENCDEC + "dim f = 4\ndim D = 8\nparam A : [f, n]\n"
                          "output z = cat(A @ x, A @ y, D)\n", S, r"cat puts its parts' "
                          r"coordinates side by side, token by token, but they run over the "
                          r"tokens of S and the tokens of T", (14, 1)),
    "attention-over-first": (SEQ + "f = first(h)\noutput s = dot(f, h, dh)\n", S,
                             r"dot pairs tokens, but f is one token's vector(.|\n)*help: read "
                             r"the token with first\(h\) after attention", (9, 12)),
    "block-returns-first": ("width n = 8\ndepth L = 2\ndim V = 5\ndim t = 3\n"
                            "input tok : tokens[t, V]\nparam E : [n, V]\nblock res(h) {\n"
                            "    param W : [n, n]\n    return W @ first(h)\n}\n"
                            "hL = repeat L res(E @ tok)\noutput y = E.T @ hL\n", S,
                            r"block res returns one token's vector \(read by first\), but its "
                            r"argument h has one value per token", (9, 5)),
    # mean(h) / mean(h, k): the mean of a sequence's tokens (from token k on), one vector per
    # sequence as first(h) is; k a token the sequence has
    "mean-without-tokens": (HEAD + "output y = V @ mean(W @ x)\n", S,
                            r"mean averages the tokens of a sequence, but y_1 has no tokens"
                            r"(.|\n)*help: apply mean to a value computed from a `tokens`",
                            (8, 16)),
    "mean-start-past-the-tokens": (SEQ + "output y = E.T @ mean(h, 3)\n", S,
                                   r"mean from token 3 on, but t has 3 tokens \(0 to 2\)"
                                   r"(.|\n)*help: start at a token of t", (8, 18)),
    "mean-start-not-an-index": (SEQ + "output y = E.T @ mean(h, 0.5)\n", S,
                                r"the second argument of mean must be a token index, a whole "
                                r"number >= 0", (8, 26)),
    "mean-of-mean": (SEQ + "output y = E.T @ mean(mean(h))\n", S,
                     r"mean averages the tokens of a sequence, but y_1 has no tokens \(one "
                     r"vector per sequence already\)", (8, 18)),
    "mean-plus-tokens": (SEQ + "output y = E.T @ (h + mean(h, 1))\n", S,
                         r"y_1 is one vector per sequence \(read by first or mean\), but h "
                         r"has one value per token", (8, 12)),
    # prepend(c, h, T1): a learned token (a vector param) before the tokens of h, over a
    # sequence T1 one token longer, which what is added after it runs over
    "prepend-of-a-value": (CLS + "output y = E.T @ prepend(h, h, t1)\n", S,
                           r"the first argument of prepend must be a vector param, the "
                           r"learned token", (10, 26)),
    "prepend-wrong-length": (CLS + "dim t2 = 5\noutput y = E.T @ prepend(c, h, t2)\n", S,
                             r"prepend gives t's 3 tokens and one more, 4, but t2 has 5 "
                             r"tokens(.|\n)*help: declare the longer sequence `dim t2 = 4`",
                             (11, 18)),
    "prepend-to-first": (CLS + "output y = E.T @ prepend(c, first(h), t1)\n", S,
                         r"prepend puts a token before the tokens of a sequence, but y_1 has "
                         r"no tokens: it is one token's vector", (10, 18)),
    # tail(h, S): a sequence's last tokens (CvT's after its class token, put back by
    # prepend(first(h), x, T1)); of a value with tokens, over a shorter sequence
    "tail-of-first": (CLS + "output y = E.T @ tail(first(h), t)\n", S,
                      r"tail keeps the last tokens of a sequence, but y_1 has no tokens",
                      (10, 18)),
    "tail-not-shorter": (CLS + "output y = E.T @ first(tail(h, t1))\n", S,
                         r"tail keeps the last 4 tokens of a sequence of more, but h runs over "
                         r"the tokens of t of 3 tokens", (10, 24)),
    "tail-of-ids": (CLS + "output y = E.T @ (E @ tail(tok, t))\n", S,
                    r"tail keeps the last tokens of a vector per token, not of the input tok "
                    r"\(one-hot ids\)", (10, 23)),
    # a repeated block feeds its return value to its next repetition: same sequence
    "repeat-of-a-tail": (CLS.replace("width n = 8\n", "width n = 8\ndepth L = 3\n")
                         + "block res(x) {\n  param W : [n, n]\n  return W @ tail(x, t)\n}\n"
                         "output y = E.T @ repeat L res(prepend(c, h, t1))\n", S,
                         r"block res is repeated, so its return value is its next "
                         r"repetition's argument, but it returns values over the tokens of t "
                         r"from an argument over the tokens of t1", (15, 18)),
    "prepend-first-of-pairs": (CLS + "output y = E.T @ first(prepend(dot(h, h, dh), h, t1))\n",
                               S, r"the first argument of prepend must be a vector param, the "
                               r"learned token, or a vector per sequence", (10, 32)),
    "prepend-no-dim": (CLS + "output y = E.T @ prepend(c, h, h)\n", S,
                       r"the third argument of prepend must be the longer sequence's dim",
                       (10, 32)),
    "prepend-arity": (CLS + "output y = E.T @ prepend(c, h)\n", S,
                      r"prepend takes 3 or 4 arguments, got 2", (10, 18)),
    "prepend-token-dim": (CLS + "param m : [dh]\noutput y = E.T @ prepend(m, h, t1)\n", S,
                          r"shape mismatch in prepend: the token is \[dh\] but the sequence's "
                          r"vectors are \[n\]", (11, 18)),
    "positions-of-the-shorter-sequence": (
        CLS + "input pos : positions[t]\nparam P : [n, t]\n"
        "output y = E.T @ (prepend(c, h, t1) + P @ pos)\n", S,
        r"this combines the tokens of t1 with the tokens of t(.|\n)*help: t1 has learned "
        r"tokens before the others \(prepend\)(.|\n)*positions\[t1\]", (12, 12)),
    # a head dot without a width used to crash looking up the base width
    "head-dot-without-width": ("dim V = 5\ndim t = 3\ndim d = 8\ndim dh = 4\n"
                               "input tok : tokens[t, V]\nparam E : [d, V]\nh = E @ tok\n"
                               "output y = dot(h, h, dh)\n", S, r"declares no width", (8, 1)),
}


@pytest.mark.parametrize("case", list(POSITIONED))
def test_positioned_catalogue(case):
    source, cls, pattern, (line, column) = POSITIONED[case]
    err = parse_error(source, cls)
    assert re.search(pattern, str(err)), str(err)
    assert (err.span.line, err.span.column) == (line, column), str(err)
    assert "Traceback" not in str(err)


@pytest.mark.parametrize("case", ["shape-arithmetic", "softmax-of-width", "width-too-large"])
def test_the_cli_exits_2(case, tmp_path, capsys):
    path = tmp_path / "bad.tp"
    path.write_text(POSITIONED[case][0])
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2 and "help:" in err and "Traceback" not in err


# the programs of the block errors: BHEAD, then a block (BRES), then BTAIL applying it
BHEAD = "width n = 8\ndepth L = 4\ndim d = 3\ninput x : [d]\nparam Wi : [n, d]\nparam Wo : [d, n]\n"


BRES = "block res(h) {\n    param W : [n, n]\n    return h + W @ relu(h)\n}\n"  # lines 7-10


BTAIL = "h0 = Wi @ x\nhL = repeat L res(h0)\noutput y = Wo @ hL\n"


def _blk(*lines, name="res"):
    return f"block {name}(h) {{\n" + "".join(f"    {x}\n" for x in lines) + "}\n"


BLOCK_ERRORS = {
    "returns another dim": (BHEAD + _blk("param W : [d, n]", "return W @ h") + BTAIL, 9,
                            r"block res returns \[d\], but its argument h is \[n\]"),
    "recursion": (BHEAD + _blk("param W : [n, n]", "return h + W @ res(h)") + BTAIL, 9,
                  r"block res calls itself(.|\n)*blocks do not recurse"),
    "a block calling a block": (BHEAD + BRES + _blk("return res(h)", name="b2")
                                + BTAIL.replace("res(h0)", "b2(h0)"), 12,
                                "block b2 calls block res"),
    "param redeclared": (BHEAD + _blk("param W : [n, n]", "param W : [n, n]", "return h + W @ h")
                         + BTAIL, 9, r"'W' is already defined \(line 8\)"),
    "param hiding an outer one": (BHEAD + _blk("param Wi : [n, n]", "return h + Wi @ h") + BTAIL,
                                  8, "'Wi' is already defined outside block res"),
    "repeat over a dim": (BHEAD + BRES + BTAIL.replace("repeat L", "repeat d"), 12,
                          r"`repeat d`: d is not the depth \(a dim; the depth is L\)"),
    "repeat over the width": (BHEAD + BRES + BTAIL.replace("repeat L", "repeat n"), 12,
                              "n is not the depth"),
    "repeat with no depth": (BHEAD.replace("depth L = 4\n", "") + BRES + BTAIL, 11,
                             "the program declares no depth"),
    "a second depth": (BHEAD + "depth K = 3\n" + BRES + BTAIL, 7, "the depth is declared twice"),
    "unknown block": (BHEAD + BRES + BTAIL.replace("res(h0)", "ress(h0)"), 12,
                      r"unknown block 'ress'(.|\n)*did you mean 'res'"),
    "repeat 0": (BHEAD + BRES + BTAIL.replace("repeat L", "repeat 0"), 12,
                 "`repeat 0` applies the block no times"),
    "no return": (BHEAD + _blk("param W : [n, n]", "u = W @ h") + BTAIL, 7,
                  "block res has no return"),
    "statements after return": (BHEAD + _blk("return h", "u = h") + BTAIL, 9,
                                "statements after `return`"),
    "a dim inside a block": (BHEAD + _blk("dim e = 4", "return h") + BTAIL, 8,
                             "a block cannot contain a `dim` statement"),
    "applied twice": (BHEAD + BRES + "h0 = Wi @ x\nh1 = repeat L res(h0)\nh2 = res(h1)\n"
                      "output y = Wo @ h2\n", 13, r"block res is already applied \(line 12\)"),
    "used before its definition": (BHEAD + "h0 = Wi @ x\nhL = repeat L res(h0)\n" + BRES
                                   + "output y = Wo @ hL\n", 8,
                                   r"block res is used before it is defined \(line 9\)"),
    "the depth as a vector": (BHEAD + BRES + BTAIL.replace("Wo @ hL", "Wo @ (hL + L)"), 13,
                              "'L' is the depth, not a vector"),
    "a scalar argument": (BHEAD + BRES + BTAIL.replace("res(h0)", "res(dot(h0, h0))"), 12,
                          "block res needs a vector argument, got a scalar"),
    "a zero depth": (BHEAD.replace("L = 4", "L = 0") + BRES + BTAIL, 2,
                     "the base depth must be positive"),
}


@pytest.mark.parametrize("case", BLOCK_ERRORS)
def test_block_errors_are_positioned(case):
    source, line, message = BLOCK_ERRORS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        with pytest.raises(tp.SemanticError, match=message) as err:
            tp.parse(source, "p.tp")
    assert err.value.diagnostics[0].span.line == line
    assert "help:" in str(err.value)


# blocks the depth pass does not model: refused where the block leaves the residual form (the
# function applied to the sum), or at the `repeat` for a return that scales the stream; derive
# keeps their width exponents with this as its note (tests/engine/test_depth_derive.py)
_FN = r"block res returns {}\(\.\.\.\) of a residual sum of its stream, not the sum itself"
DEPTH_FORMS = {
    "post-norm": (BHEAD + _blk("param W : [n, n]", "param g : [n] = 1",
                               "return g * layernorm(h + W @ relu(h))") + BTAIL, (10, 16),
                  _FN.format("layernorm") + r"(.|\n)*a post-norm block(.|\n)*help: .*"
                  r"`return h \+ W2 @ relu\(W1 @ layernorm\(h\)\)` \(pre-norm\)"),
    "post-norm twice, as BERT": (BHEAD + _blk("param W : [n, n]", "param V : [n, n]",
                                              "a = layernorm(h + W @ relu(h))",
                                              "return layernorm(a + V @ relu(a))") + BTAIL,
                                 (11, 5), _FN.format("layernorm")),
    "relu of the sum, as ResNet": (BHEAD + _blk("param W : [n, n]", "return relu(h + W @ h)")
                                   + BTAIL, (9, 5), _FN.format("relu") + r"(.|\n)*ResNet"),
    "a multiple of the sum": (BHEAD + _blk("param W : [n, n]", "return 2 * (h + W @ relu(h))")
                              + BTAIL, (12, 6), "does not return its argument plus a branch, so "
                              "over L repetitions it compounds"),
}


@pytest.mark.parametrize("case", DEPTH_FORMS)
def test_blocks_outside_the_depth_rules_are_refused_where_they_leave_them(case):
    source, (line, column), message = DEPTH_FORMS[case]
    program = tp.parse(source, "p.tp")
    with pytest.raises(EngineError, match=message) as err:
        classify_depth(program, ADAM, {p.name: ABC(0, 0, 0) for p in program.params})
    span = err.value.diagnostics[0].span
    assert (span.line, span.column) == (line, column)
    assert "help:" in str(err.value)


# an SSD's forced vanishing, which derive refuses (tensorprog/engine/ssd_init.py): the mixing
# of a fixed number of groups, a norm that divides by it, SGD at C's and B's saddle (SSM: 16
# lines, the ssd call at line 18)
SSD_REFUSED = {
    "ssd-fixed-groups": ("adam", "output y = U @ (h + mix(p, h, P))\n", (18, 1),
                         r"no µP has the state-space mixing Θ\(1\) at init: C's and B's layers "
                         r"have a finite fan-out"),
    "ssd-norm-of-the-mixing": ("adam", "output y = U @ rmsnorm(mix(p, h, P))\n", (18, 1),
                               r"y_1 vanishes at init as 1/n \(forced by an SSD's weights\) and "
                               r"y_2 divides by its size"),
    "ssd-sgd-saddle": ("sgd", "output y = U @ (h + mix(p, h, P))\n", (18, 1),
                       r"under sgd it stays so: C's gradient is ∝ B and B's ∝ C"),
}


@pytest.mark.parametrize("case", SSD_REFUSED)
def test_an_ssds_forced_vanishing_is_refused_by_derive(case):
    optimizer, tail, (line, column), message = SSD_REFUSED[case]
    source = SSM + "param U : [V, n]\np = ssd(cb, dt, A, P)\n" + tail
    with pytest.raises(EngineError, match=message) as err:
        tp.derive(tp.parse(source, "p.tp"), optimizer)
    span = err.value.diagnostics[1].span
    assert (span.line, span.column) == (line, column)
    assert "help: let the groups grow with the heads" in str(err.value)


EX = ROOT / "examples"


def points(p: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((p, d))


NNGP_REFUSED = [
    (EX / "transformer.tp", "tokens inputs have no NNGP rule"),
    (EX / "resnet.tp", "image inputs have no NNGP rule"),
    (EX / "dwconv.tp", "image inputs have no NNGP rule"),  # a depthwise convolution's too
    (EX / "pixel_tokens.tp", "image inputs have no NNGP rule"),  # pixels read as tokens too
    ("width n = 8\ndim d = 3\ninput x : [d]\nparam A : [n, d]\nparam W : [n, n]\n"
     "h = A @ x\nu = W @ h\nv = W.T @ u\noutput y = v\n", "used both as W and W.T"),
    ("width n = 8\ndim d = 3\ninput x : [d]\nparam A : [n, d]\nparam W : [n, n]\n"
     "h = A @ x\nu = relu(relu(h) + W @ h)\noutput y = u\n", "not a function of one Gaussian"),
    ("width n = 8\ndim d = 3\ninput x : [d]\nparam A : [n, d]\nparam B : [d, n]\n"
     "h = A @ x\nu = softmax(B @ relu(h))\noutput y = u\n", "softmax has no NNGP rule"),
    ("width n = 8\ndim d = 3\ndim dh = 4\ndim H = n / 4\ninput x : [d]\nparam A : [n, d]\n"
     "h = A @ x\nu = h * spread(hdot(h, h, dh), dh)\noutput y = u\n",
     "hdot per head has no NNGP rule here .a dot over each head's coordinates of one token"),
]


# grouped-query attention whose keys (values) have a finite dim while the query heads grow in
# number: no µP keeps every vector Θ(1) at init (docs/theory.md), so derive says why, at the dot
GQA_FIXED_KV = ("width n = 32\ndim V = 5\ndim t = 3\ndim dh = 4\ndim kv = {kv}\n"
                "input tok : tokens[t, V]\nparam E : [n, V]\nparam Wq : [n, n]\n"
                "param Wk : [kv, n]\nparam Wv : [kv, n]\nparam Wo : [n, n]\nparam U : [V, n]\n"
                "scale tau = 0.5\nh = E @ tok\ns = tau * dot(Wq @ h, Wk @ h, dh)\n"
                "o = h + Wo @ mix(causal_softmax(s), Wv @ h)\noutput y = U @ o\n")


@pytest.mark.parametrize("kv", ["dh", "8"], ids=["mqa", "two-kv-heads"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_grouped_attention_with_a_finite_kv_dim_is_refused_by_derive(kv, optimizer):
    program = tp.parse(GQA_FIXED_KV.format(kv=kv), "gqa.tp")
    with pytest.raises(EngineError) as e:
        tp.derive(program, optimizer)
    keys, values = e.value.diagnostics
    assert re.search(r"the keys s_2 have the finite dim kv but serve query heads whose number "
                     r"grows with the width(.|\n)*initialised as a readout", keys.message)
    assert (keys.span.line, keys.span.column) == (15, 11)
    assert "the values o_2" in values.message and values.span.line == 16
    assert "dim kv = n / 2" in str(e.value)  # what to write instead


# a finite bottleneck between layers of the width (UltraBERT's prediction head n -> 768 -> n):
# its matrix must be a readout, so what it makes vanishes at init with all that follows; a bias
# or a function away from 0 (a sigmoid) lifts it, and the program derives
BOTTLENECK = ("width n = 32\ndim V = 5\ndim t = 3\ndim b = 8\ninput tok : tokens[t, V]\n"
              "param E : [n, V]\nparam W1 : [b, n]\nparam c : [b]\nparam W2 : [n, b]\n"
              "param U : [V, n]\nh = E @ tok\nz = {z}\ng = {f}(z)\nu = W2 @ g\n"
              "output y = U @ u\n")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_finite_bottleneck_between_layers_of_the_width_is_refused_by_derive(optimizer):
    program = tp.parse(BOTTLENECK.format(z="W1 @ h", f="gelu").replace("param c : [b]\n", ""))
    with pytest.raises(EngineError) as e:
        tp.derive(program, optimizer)
    first = e.value.diagnostics[0]
    assert re.search(r"^z = W1 @ h narrows the width to the finite dim b inside the network: W1 "
                     r"has a finite fan-out(.|\n)*z vanishes at init as 1/√n(.|\n)*from it \(u\)",
                     first.message)
    assert (first.span.line, first.span.column) == (11, 1) and "let b grow" in first.help


# the same bottleneck, normalised, in a repeated block: under SGD (whose step carries the
# gradient's size) the analysis finds the gradient unbounded, which left the linear solve a +∞
# to read (an AttributeError); Adam names the bottleneck
NORMED_BOTTLENECK = ("width n = 8\ndim K = 4\ndim V = 16\ninput x : [V]\nparam E : [n, V]\n"
                     "param U : [V, n]\nblock layer(h) {\n  param A : [K, n]\n  param Z : [K, n]\n"
                     "  param B : [n, K]\n  return h + B @ (rmsnorm(A @ h) * silu(Z @ h))\n}\n"
                     "h0 = E @ x\nh2 = repeat 2 layer(h0)\noutput y = U @ h2\n")


def test_an_unbounded_gradient_under_sgd_is_refused_at_a_param():
    program = tp.parse(NORMED_BOTTLENECK)
    with pytest.raises(EngineError) as e:
        tp.derive(program, "sgd")
    assert re.search(r"under sgd no learning-rate exponent makes the update of E maximal",
                     str(e.value)) and "derive it with adam" in str(e.value)
    assert (e.value.diagnostics[0].span.line, e.value.diagnostics[0].span.column) == (5, 1)
    with pytest.raises(EngineError, match="narrows the width to the finite dim K"):
        tp.derive(program, "adam")


@pytest.mark.parametrize(("z", "f"), [("W1 @ h", "sigmoid"), ("W1 @ h + c", "gelu")])
def test_a_bottleneck_lifted_at_init_derives(z, f):
    src = BOTTLENECK.format(z=z, f=f)
    program = tp.parse(src if "+ c" in z else src.replace("param c : [b]\n", ""))
    assert tp.derive(program, "adam").abc["W1"].b == 1  # a readout's init


@pytest.mark.parametrize(("program", "message"), NNGP_REFUSED)
def test_unsupported_programs_are_refused_with_a_position(program, message):
    prog = tp.parse_file(program) if not isinstance(program, str) else tp.parse(program)
    data = {i.name: points(2, prog.dim(i.dim).size) for i in prog.inputs
            if i.kind == "vector" and not prog.dim(i.dim).infinite}
    with pytest.raises(EngineError, match=message) as e:
        nngp_kernel(prog, data or points(2, 3))
    assert e.value.span is not None and "^" in str(e.value)


def batch(p: int, d: int, d_out: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((p, d)), rng.standard_normal((p, d_out))


MU_REFUSED = [
    (
        "reuse",
        "W2 : [n, n]",
        "z2 = relu(W2 @ relu(W1 @ x))\noutput y = W3 @ relu(W2 @ z2)",
        "W2 is used more than once or transposed",
    ),
    (
        "transposed",
        "W2 : [n, n]",
        "output y = W3 @ relu(W2.T @ relu(W1 @ x))",
        "W2 is used more than once or transposed",
    ),
    ("norm", "", "output y = W3 @ layernorm(W1 @ x)", "layernorm has no µ-limit"),
    ("gain", "g : [n]", "output y = W3 @ relu(g * (W1 @ x))", "g is a param inside mul"),
    ("dot", "v : [n]", "output y = dot(v, relu(W1 @ x))", "Dot has no µ-limit"),
]


@pytest.mark.parametrize(
    ("param", "body", "message"), [r[1:] for r in MU_REFUSED], ids=[r[0] for r in MU_REFUSED]
)
def test_programs_outside_the_mlp_family_are_refused_with_a_position(param, body, message):
    head = "width n = 16\ndim d = 4\ndim o = 2\ninput x : [d]\nparam W1 : [n, d]\n"
    if "W3" in body:
        head += "param W3 : [o, n]\n"
    if param:
        head += f"param {param}\n"
    with pytest.raises(EngineError, match=message) as e:
        mu_limit(tp.parse(head + body + "\n"), *batch(2, 4, 2))
    assert e.value.span is not None


# --- command-line arguments -----------------------------------------------------------------------


MLP = str(ROOT / "examples" / "mlp.tp")


@pytest.mark.parametrize(("c", "message"), [
    ("1/0", 'not an exact exponent: "1/0"'), ("nan", "not an exact exponent"),
    ("-oo", "a learning rate cannot scale as n\\^oo"),
])
def test_bad_global_c(capsys, c, message):
    code, _, err = run_cli(capsys, "classify", MLP, "--preset", "mup", "--c", c)
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "1e38"], r"--lr 1e\+38: the learning rate must be a positive number, at most"),
    (["--lr", "0"], "must be a positive number"),
    (["--lr", "nan"], "must be a positive number"),
    (["--lr", "-1e-3"], "must be a positive number"),
    (["--tolerance", "nan"], "tolerance must be positive and below 1/2"),
    (["--tolerance", "inf"], "tolerance must be positive and below 1/2"),
    (["--tolerance", "-1"], "tolerance must be positive"),
    (["--steps", "0"], r"--steps 0: must be from 2 to 1000(.|\n)*judges changes from step 2"),
    (["--steps", "10000000"], "must be from 2 to 1000"),
    (["--seeds", "-1"], "--seeds -1: must be from 1 to 100"),
    (["--batch-size", "0"], "--batch-size 0: must be from 1 to 65536"),
    (["--widths", "64,64,128"], "64 given twice"),
    (["--widths", "64,0"], "at least two different positive widths"),
    (["--widths", "-64,128"], "at least two different positive widths"),
    (["--widths", "64.5,128"], "comma-separated integers"),
    (["--widths", "1e9,64"], "comma-separated integers"),
    (["--widths", ",".join(map(str, range(1, 101)))], "100 widths, at most 32"),
    (["--widths", "64,1000000000"], r"width 1000000000 has 1,000,00.* weights(.|\n)*at most "
                                    r"about \d+"),
    (["--base-width", "0"], "expected a positive integer"),
    (["--base-width", "-2"], "expected a positive integer"),
    (["--plot", "."], "is a directory|unknown figure format"),
])
def test_check_refuses_out_of_range_numbers(capsys, args, message):
    code, _, err = run_cli(capsys, "check", MLP, *args)
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "inf", "--hp", "init_std"], "must be a positive number"),
    (["--values", "1e-3,1e-2,1e38"], r"--values 1e\+38: the learning rate"),
    (["--values", "-1e-3,1e-2,1"], "-0.001 is not a positive number"),
    (["--values", "nan,1,2"], "nan is not a positive number"),
    (["--steps", "0"], "--steps 0: must be from 1 to 100000"),
    (["--seeds", "0"], "--seeds 0: must be from 1 to 100"),
    (["--jobs", "100000"], "--jobs 100000: must be from 1 to 256"),
    (["--batch-size", "-3"], "--batch-size -3: must be from 1 to 65536"),
    (["--widths", "8,8"], "at least two different"),
    (["--param", ","], "no parametrization given"),
])
def test_transfer_refuses_out_of_range_numbers(capsys, args, message):
    code, _, err = run_cli(capsys, "transfer", MLP, "--data", "digits", "--cache", "none", *args)
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize(("argv", "message"), [
    # before, --depths had no estimate: the run died in the allocator
    (["check", str(ROOT / "examples" / "resmlp_deep.tp"), "--depths", "100000,200000"],
     r"--depths: depth 200000 has 6,553,609,472 weights: with gradients, optimizer state and the "
     r"recorded vectors: about \d+ GiB(.|\n)*use depths of at most about \d+"),
    (["check", MLP, "--widths", "64,1000000"], r"--widths: width 1000000 has 1,003,084,000,000 "
                                               r"weights(.|\n)*use widths of at most about"),
])
def test_sizes_past_memory_are_refused_before_any_work(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize(("argv", "env", "message"), [
    # before, the kernel regime and the µ-limit on 5,000 points ran for hours (their autograd
    # passes grow with the points squared); now refused with the estimate before any draw
    (["limit", "{tmp}/small.tp", "--train", "--param", "ntp", "--inputs", "{tmp}/X.npy",
      "--targets", "{tmp}/Y.npy"], None,
     r"16,384 samples of 5 Z-variables on 5,000 points over 1 step\(s\): about 7.4 h \(2.7e\+14 "
     r"floating-point operations at this machine's 10 GFLOP/s\), more than the 30-minute "
     r"limit(.|\n)*use fewer points(.|\n)*set TENSORPROG_MAX_MINUTES=888 \(or inf\)"),
    (["limit", "{tmp}/small.tp", "--train", "--samples", "256", "--inputs", "{tmp}/X.npy",
      "--targets", "{tmp}/Y.npy"], None,
     r"256 samples of 5 Z-variables on 5,000 points over 6 step\(s\): about 22.8 h"),
    (["check", MLP, "--widths", "64,8192", "--steps", "1000", "--seeds", "100"], None,
     r"--widths 64,8192: 100 run\(s\) of 1,000 step\(s\) at each width, the largest with "
     r"92,372,992 weights: about [\d.]+ h(.|\n)*fewer --steps or fewer runs \(--seeds\)"),
    (["transfer", MLP, "--data", "digits", "--cache", "none", "--widths", "64,4096", "--steps",
      "100000"], None, r"--widths 64,4096: 44 run\(s\) of 100,000 step\(s\)(.|\n)*--values"),
    (["check", MLP], "soon", "TENSORPROG_MAX_MINUTES=soon: not a positive number of minutes"),
])
def test_work_past_the_time_limit_is_refused_with_its_estimate(capsys, tmp_path, monkeypatch,
                                                               argv, env, message):
    from tensorprog.ir import sizes

    # a machine of 10 GFLOP/s and 1 TiB, so that the numbers are exact and only time refuses
    monkeypatch.setattr(sizes, "throughput", lambda device="cpu", dtype="float32": 1e10)
    monkeypatch.setattr(sizes, "device_memory", lambda device="cpu": (2**40, "1 TiB"))
    if env is None:
        monkeypatch.delenv(sizes.MAX_MINUTES_VAR, raising=False)
    else:
        monkeypatch.setenv(sizes.MAX_MINUTES_VAR, env)
    (tmp_path / "small.tp").write_text(SMALL_MLP)
    np.save(tmp_path / "X.npy", points(5000, 4))
    np.save(tmp_path / "Y.npy", points(5000, 1))
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert (code, out) == (2, "") and re.search(message, err), err


@pytest.mark.parametrize(("argv", "message"), [
    (["derive", "{tmp}/missing.tp"], "cannot read .*missing.tp: No such file"),
    (["derive", "{tmp}"], "Is a directory"),
    (["derive", "{tmp}/empty.tp"], "the program declares no width"),
    (["derive", MLP, "-o", "{tmp}/no/dir/out.py"], "-o .*out.py: cannot write it: no directory"),
    (["derive", MLP, "-o", "{tmp}"], "-o .*: is a directory"),
    # -o never replaces an input nor a file it did not write (a user's model, program or data)
    (["derive", "{tmp}/F.tp", "-o", "{tmp}/F.tp"],
     r"-o .*F.tp: a PyTorch module is written to a .py file(.|\n)*e.g. -o .*F.py"),
    (["derive", "{tmp}/F.tp", "-o", "{tmp}/link.py"], r"that is the input .*F.tp; writing a "
                                                      "PyTorch module there would replace it"),
    (["derive", "{tmp}/F.tp", "-o", "{tmp}/./../{name}/link.py"], "that is the input"),
    (["derive", MLP, "-o", "{tmp}/m.py"], r"-o .*m.py: the file exists and is not a PyTorch "
                                          r"module that tensorprog wrote(.|\n)*move the file"),
    (["trace", "{tmp}/m.py:build", "-o", "{tmp}/m.py"], "a traced program is written to a .tp"),
    (["trace", "{tmp}/m.py:build", "-o", "{tmp}/mlink.tp"], "that is the input .*m.py"),
    (["trace", "{tmp}/m.py:build", "-o", "{tmp}/F.tp"],
     "the file exists and is not a traced program that tensorprog wrote"),
    (["check", "{tmp}/F.tp", "--plot", "{tmp}/photo.png"],
     r"--plot .*photo.png: the file exists and is not a figure(.|\n)*\.png, \.ps, \.svg "
     "figures carry the mark"),
    (["check", "{tmp}/F.tp", "--plot", "{tmp}/flink.png"], "that is the input .*F.tp"),
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/X.pt", "-o", "{tmp}/X.pt"],
     "that is the input .*X.pt; writing a saved limit there"),
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/X.pt", "-o", "{tmp}/mine.pt"],
     "the file exists and is not a saved limit"),
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/X.pt", "-o", "{tmp}/K.npy"],
     r"a saved limit is written to a .pt or .pth file(.|\n)*e.g. -o .*K.pt"),
    # a garbage or empty data file: before, torch.load's UnpicklingError or EOFError
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/mine.pt"],
     r"--inputs .*mine.pt: not a tensor file that torch.save or numpy.save wrote(.|\n)*it must "
     r"hold a \(P, dim\) tensor"),
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/empty.pt"], "--inputs .*empty.pt: not a "
                                                               "tensor file"),
    (["limit", MLP, "--train", "--inputs", "{tmp}/empty.npy", "--targets", "{tmp}/empty.pt"],
     "--inputs .*empty.npy: not a tensor file"),
    # before, torch.save's RuntimeError after the whole computation
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/X.pt", "-o", "{tmp}/no/dir/K.pt"],
     r"-o .*K.pt: cannot write it: no directory .*no/dir(.|\n)*create the directory"),
    (["limit", MLP, "--kernel", "--inputs", "{tmp}/X.pt", "-o", "{tmp}/F.tp/K.pt"],
     "no directory .*F.tp"),
    (["trace", "{tmp}/m.py:build", "-o", "{tmp}/no/t.tp"], "-o .*t.tp: cannot write it"),
    (["check", MLP, "--plot", "{tmp}/no/dir/c.png"], "no directory"),
    (["check", MLP, "--plot", "{tmp}/dir.png"], "--plot .*dir.png: is a directory"),
    (["transfer", MLP, "--data", "digits", "--plot", "{tmp}/dir.png"], "is a directory"),
    (["derive", ""], "program: the path is empty"),
    (["derive", MLP, "-o", ""], "-o: the path is empty"),
    (["check", MLP, "--plot", " "], "--plot: the path is empty"),
])
def test_odd_paths(capsys, tmp_path, argv, message):
    (tmp_path / "empty.tp").write_text("")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "F.tp").write_text(mlp_source(2))
    (tmp_path / "m.py").write_text("def build(width): ...\n")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "X.pt").write_bytes(b"data")
    (tmp_path / "mine.pt").write_bytes(b"data")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    for link, target in (("link.py", "F.tp"), ("mlink.tp", "m.py"), ("flink.png", "F.tp")):
        (tmp_path / link).symlink_to(tmp_path / target)
    argv = [a.format(tmp=tmp_path, name=tmp_path.name) for a in argv]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and re.search(message, err), err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(("seq_len", "message"), [
    # before: the trace died in the allocator; now refused before the model's file is imported
    ("100000000", r"--seq-len 100000000: the token ids and a \[T, T\] attention mask: "
                  r"about 3.73e\+07 GiB, more than this machine's memory(.|\n)*keep the default"),
    ("0", "--seq-len"),
])
def test_trace_refuses_a_seq_len_no_memory_holds(capsys, tmp_path, seq_len, message):
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/absent.py:build", "--seq-len", seq_len)
    assert (code, out) == (2, "") and re.search(message, err), err


# a user's model file for ``tensorprog trace``: Net.forward is defined on line 9, text on 18
TRACED_MODEL = """import torch


class Net(torch.nn.Module):
    def __init__(self, n, give=None):
        super().__init__()
        self.e, self.o, self.give = torch.nn.Embedding(8, n), torch.nn.Linear(n, 8), give

    def forward(self, idx):
        y = self.o(self.e(idx))
        return y if self.give is None else self.give(y)


def build(n, give=None):
    return Net(n, give)


def text(n):
    return "a model"


class Segments(Net):
    def forward(self, idx):  # segment ids that vary along the sequence
        return self.o(self.e(idx) + self.e(torch.arange(idx.shape[1]) % 2))


class Languages(Net):
    def forward(self, idx, lang_ids):  # X-MOD's adapter layer over a batch of two languages
        h = self.e(idx)
        new = torch.zeros_like(h)
        mask = lang_ids == 0
        new[mask] = 2 * h[mask]
        return self.o(new)


class FlippedIds(Net):
    def forward(self, idx):  # ids made from the token ids, neither a copy nor a shift of them
        return self.o(self.e(idx.flip(1)))


class Relative(Net):  # T5's relative position bias: 8 buckets, both ways, max distance 128
    def __init__(self, n):
        super().__init__(n)
        self.r = torch.nn.Parameter(torch.randn(8, 2))  # [buckets, heads]

    def forward(self, idx):
        d = torch.arange(idx.shape[1])[None, :] - torch.arange(idx.shape[1])[:, None]
        side, d = (d > 0).long() * 4, d.abs()
        far = (2 + (torch.log(d.float() / 2) / 4.1588830833596715 * 2).long()).clamp(max=3)  # ln 64
        bias = torch.nn.functional.embedding(side + torch.where(d < 2, d, far), self.r)
        return self.o(self.e(idx)) + bias.sum()


def t5_bias(r, t, device):  # Relative's bias, as [1, heads, queries, keys]
    d = torch.arange(t, device=device)
    d = d[None, :] - d[:, None]
    side, d = (d > 0).long() * 4, d.abs()
    far = (2 + (torch.log(d.float() / 2) / 4.1588830833596715 * 2).long()).clamp(max=3)
    return torch.nn.functional.embedding(side + torch.where(d < 2, d, far), r).permute(2, 0, 1)[
        None]


class RelativePadded(Relative):
    def forward(self, idx):  # the bias as sdpa's mask, under a mask hiding the last key
        b, t = idx.shape
        keep = (torch.arange(t, device=idx.device) < t - 1).expand(t, t)
        mask = torch.where(keep, t5_bias(self.r, t, idx.device), -1e9)
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class RelativeScaled(Relative):
    def forward(self, idx):  # logits scaled after the bias was added: not the bias T5 adds
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        s = (x @ x.transpose(-2, -1) + t5_bias(self.r, t, idx.device)) * 0.5
        y = torch.softmax(s, -1) @ x
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class InPlace(Net):
    def forward(self, idx):  # x is read again after x += 1: it would read the updated value
        x = self.e(idx) * 2.0
        y = x * 3.0
        x += 1.0
        return self.o(x + y)


class InPlaceView(Net):
    def __init__(self, n):
        super().__init__(n)
        self.a = torch.nn.Linear(n, n)

    def forward(self, idx):  # a write to a slice of x changes x, which the head reads after
        x = self.a(self.e(idx))
        x[..., :4].mul_(2.0)
        return self.o(x)


class Padded(Net):
    def forward(self, idx):  # two-head attention whose mask hides the last key (padding)
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        keep = (torch.arange(t, device=idx.device) < t - 1).expand(t, t)
        y = torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=keep)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class OneHead(Net):
    def forward(self, idx):  # attention over (batch, tokens, features), no heads axis (one
        # head of the whole dim viewed (b, t, 1, n) and transposed is traced: PVTv2's)
        x = self.e(idx)
        return self.o(torch.nn.functional.scaled_dot_product_attention(x, x, x))


class RowMaxAdded(Net):
    def forward(self, idx):  # the logits' row max added to them: no softmax's stabilisation
        x = self.e(idx)
        b, t, _ = x.shape
        q = x.view(b, t, 2, -1).transpose(1, 2)
        s = q @ q.transpose(-1, -2)
        s = s + s.max(-1, keepdim=True).values
        return self.o((torch.softmax(s, -1) @ q).transpose(1, 2).reshape(b, t, -1))


class GateTwice(Net):
    def __init__(self, n):
        super().__init__(n)
        self.sinks = torch.nn.Parameter(torch.zeros(2))

    def forward(self, idx):  # Granite's sink gate on a mix that is also read without it
        x = self.e(idx)
        b, t, _ = x.shape
        q = x.view(b, t, 2, -1).transpose(1, 2)
        s = q @ q.transpose(-1, -2)
        y = torch.softmax(s, -1) @ q
        gate = (torch.logsumexp(s, -1) - self.sinks.view(1, -1, 1)).sigmoid()
        y = y * gate.unsqueeze(-1) + y
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class SinkOverQueries(GateTwice):
    def __init__(self, n, shift=False):
        super().__init__(n)
        self.shift = shift

    def forward(self, idx):  # gpt-oss's sink column, but a softmax over the queries (dim=-2)
        x = self.e(idx)
        b, t, _ = x.shape
        q = x.view(b, t, 2, -1).transpose(1, 2)
        s = torch.cat([q @ q.transpose(-1, -2), self.sinks.reshape(1, -1, 1, 1).expand(
            b, -1, t, -1)], -1)
        s = s - s.max(-1, keepdim=True).values if self.shift else s
        y = torch.softmax(s, -2)[..., :-1] @ q
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class Swap(Net):
    def __init__(self, n):
        super().__init__(n)
        self.n, self.fc, self.up = n, torch.nn.Linear(n, n + 8), torch.nn.Linear(n, n + 8)
        self.o = torch.nn.Linear(8, 8)

    def forward(self, idx):  # two fused layers whose 8 extra rows swap roles between widths
        x = self.e(idx)
        first, second = (self.fc, self.up) if self.n == 16 else (self.up, self.fc)
        return self.o(torch.relu(first(x)[..., self.n:]) + second(x)[..., self.n:])


class Second(Net):
    def forward(self, idx):  # the second token's vector
        return self.o(self.e(idx)[:, 1])


class HeadSplit(Net):
    def __init__(self, n):
        super().__init__(n)
        self.q = torch.nn.Linear(n, n)

    def forward(self, idx):  # each head's query split in two parts (DeepSeek's MLA)
        x = self.e(idx)
        q = self.q(x).view(x.shape[0], x.shape[1], 2, -1).transpose(1, 2)
        a, r = torch.split(q, [q.shape[-1] // 2, q.shape[-1] - q.shape[-1] // 2], dim=-1)
        return self.o(torch.cat([a * r, r], -1).transpose(1, 2).reshape(x.shape))


class ActSplit(HeadSplit):
    def forward(self, idx):  # each head split after a layer norm, which mixes the features
        x = self.e(idx)
        q = torch.nn.functional.layer_norm(self.q(x), x.shape[-1:])
        q = q.view(x.shape[0], x.shape[1], 2, -1).transpose(1, 2)
        a, r = torch.split(q, [q.shape[-1] // 2, q.shape[-1] - q.shape[-1] // 2], dim=-1)
        return self.o(torch.cat([a * r, r], -1).transpose(1, 2).reshape(x.shape))


class ClassToken(Net):
    def __init__(self, n):
        super().__init__(n)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, n))

    def forward(self, idx):  # a learned token appended after the sequence's tokens
        x = self.e(idx)
        return self.o(torch.cat([x, self.cls.expand(x.shape[0], 1, -1)], dim=1))


class PatchMean(ClassToken):
    def forward(self, idx):  # a mean of the tokens after a learned class token
        x = self.e(idx)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.o(h[:, 1:-1].mean(1))


class PooledCat(ClassToken):
    def __init__(self, n):
        super().__init__(n)
        self.few, self.head = torch.nn.Linear(n, 8), torch.nn.Linear(n + 8, 3)

    def forward(self, idx):  # DINOv2's head, the class token beside 8 features of the patches'
        x = self.e(idx)  # mean, read by a norm before the linear layer (into it, it traces;
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # of n and n, too)
        pooled = torch.cat([h[:, 0], self.few(h[:, 1:].mean(1))], dim=-1)
        return self.head(torch.nn.functional.layer_norm(pooled, pooled.shape[-1:]))


class FeatureCat(Net):
    def __init__(self, n):
        super().__init__(n)
        self.few, self.head = torch.nn.Linear(n, 8), torch.nn.Linear(n + 8, 8)

    def forward(self, idx):  # a cat of per-token vectors along their features, read by a norm
        x = self.e(idx)  # (of parts all finite or all of the width it is the language's cat:
        h = torch.cat([x, self.few(x)], dim=-1)  # tests/fromtorch/test_finite_cat.py)
        return self.head(torch.nn.functional.layer_norm(h, h.shape[-1:]))


class Probe(ClassToken):
    def forward(self, idx):  # SigLIP's head: a learned query token attending to every token
        x = self.e(idx)
        q = self.cls.repeat(x.shape[0], 1, 1)
        p = torch.softmax(q @ x.transpose(1, 2), -1)
        return self.o((p @ x)[:, 0])


class TwoRowToken(Net):
    def __init__(self, n):
        super().__init__(n)
        self.cls = torch.nn.Parameter(torch.zeros(2, n))

    def forward(self, idx):  # two learned tokens, a param [2, n] expanded over the batch, put
        # after the tokens (before them they are DINOv2's registers: tests/fromtorch)
        x = self.e(idx)
        return self.o(torch.cat([x, self.cls.expand(x.shape[0], -1, -1)], dim=1))


class Transposed(Net):
    def forward(self, idx):  # two-head attention whose weights are transposed before the mix
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        p = (x @ x.transpose(-1, -2)).softmax(-1)
        return self.o((p.transpose(-1, -2) @ x).transpose(1, 2).reshape(b, t, -1))


class LearnedLogitBias(Net):  # a param added to the logits by baddbmm (ALiBi's is a constant)
    def __init__(self, n):
        super().__init__(n)
        self.bias = torch.nn.Parameter(torch.zeros(1, 1, 1))

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2).reshape(b * 2, t, -1)
        p = self.bias.baddbmm(x, x.transpose(1, 2)).view(b, 2, t, t).softmax(-1)
        return self.o((p @ x.view(b, 2, t, -1)).transpose(1, 2).reshape(b, t, -1))


class HeadBias(Net):  # one number per head over each head's coordinates, the heads moved
    # before the tokens (Beam's gate_bias[None, None, :, None] on a (B, T, H, dh) view traces)
    def __init__(self, n):
        super().__init__(n)
        self.b = torch.nn.Parameter(torch.zeros(2))

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2) + self.b[None, :, None, None]
        return self.o(x.transpose(1, 2).reshape(b, t, -1))


class ScaledGain(Net):  # nGPT's scales (Dory's sqk * sqk_scale): a number on a param itself,
    # the param's multiplier, then used as a gain
    def __init__(self, n):
        super().__init__(n)
        self.g = torch.nn.Parameter(torch.full((n,), 0.02))
        self.scale = n**0.5 / 0.02

    def forward(self, idx):
        return self.o(self.e(idx) * (self.g * self.scale) ** 2)


class KeyBias(Net):  # Doge's dynamic mask: a value of each key and head from the tokens,
    # spread over the queries and added to the logits through sdpa's attn_mask
    def __init__(self, n):
        super().__init__(n)
        self.qkv, self.g = torch.nn.Linear(n, 3 * n), torch.nn.Linear(n, 2)

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k, v = (a.view(b, t, 2, -1).transpose(1, 2) for a in self.qkv(x).split(n, -1))
        m = torch.exp(self.g(x)).transpose(1, 2).unsqueeze(2).expand(b, 2, t, t)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return self.o(y.transpose(1, 2).reshape(b, t, n))


class ComplexRotary(Net):  # HF Llama 4's complex rotary: a table of modulus 2, pairs squared or
    # flipped (no rotation)
    def __init__(self, n, form):
        super().__init__(n)
        inv = 1.0 / 10000 ** (torch.arange(0, n // 2, 2).float() / (n // 2))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.form = form

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        angles = torch.arange(t, device=idx.device)[:, None].float() * self.inv_freq
        z = torch.view_as_complex(x.reshape(b, 2, t, -1, 2))
        if self.form == "square":
            z = z * z
        elif self.form == "stacked":  # two tables stacked: the pairs broadcast into 2 copies
            unit = torch.polar(torch.ones_like(angles), angles)
            z = (z * torch.stack([unit, unit.conj()])[:, None, None])[0]
        else:
            z = z * torch.polar((1 + (self.form == "scaled")) * torch.ones_like(angles), angles)
        x = torch.view_as_real(z)
        x = (x.flip(-1) if self.form == "flip" else x).flatten(3)
        y = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class TableBuffer(Net):  # a float table held in a buffer multiplied in (GPT-J's sin/cos)
    def __init__(self, n, low=None):
        super().__init__(n)
        self.register_buffer("tri", torch.ones(16, 16).tril() if low else torch.rand(16, 16))
        self.low = low

    def forward(self, idx):
        b, t = idx.shape
        x = self.e(idx).view(b, t, 2, -1).transpose(1, 2)
        w = x @ x.transpose(-1, -2)
        m = self.tri[:t, :t]
        # OpenAI GPT's mask, w * m + -1e4 * (1 - m), with low in place of -1e4
        p = (w * m + (self.low or -1e4) * (1 - m)).softmax(-1)
        return self.o((p @ x).transpose(1, 2).reshape(b, t, -1))


class PaddingDrawn(Net):  # a padding row looked up at every token, left drawn by an init
    def __init__(self, n):
        super().__init__(n)
        self.p = torch.nn.Embedding(4, n, padding_idx=0)
        torch.nn.init.normal_(self.p.weight)

    def forward(self, idx):
        return self.o(self.e(idx) + self.p(torch.zeros_like(idx)))


class PaddingRead(Net):  # the padding row of the token table, which a lookup without it trains
    def __init__(self, n):
        super().__init__(n)
        self.e.padding_idx = 0

    def forward(self, idx):
        pad = self.e(torch.zeros_like(idx))
        return self.o(torch.nn.functional.embedding(idx, self.e.weight) + pad)


class PaddingTied(Net):  # the padding row of a table tied to the readout, which trains it
    def __init__(self, n):
        super().__init__(n)
        self.e = torch.nn.Embedding(8, n, padding_idx=0)
        self.o = torch.nn.Linear(n, 8, bias=False)
        self.o.weight = self.e.weight

    def forward(self, idx):
        return self.o(self.e(idx) + self.e(torch.zeros_like(idx)))


class ScaledTable(Net):  # a fixed table of positions whose entries shrink as 1/sqrt(n)
    def __init__(self, n):
        super().__init__(n)
        self.register_buffer("pe", torch.randn(16, n) / n ** 0.5)

    def forward(self, idx):
        return self.o(self.e(idx) + self.pe[torch.arange(idx.shape[1], device=idx.device)])
"""
TRACED_BUILDS = {
    "int": "lambda n: build(n, lambda y: 3)",
    "none": "lambda n: build(n, lambda y: None)",
    "names": "lambda n: build(n, lambda y: ('logits', 'loss'))",
    "layers": "lambda n: torch.nn.Sequential(torch.nn.Embedding(8, n), torch.nn.Softmax(-1))",
    "plus_one": "lambda n: build(n + 1)",
    "root_n": "lambda n: build(n, lambda y: torch.relu(y) * n ** 0.5)",
    "part": "lambda n: build(n, lambda y: torch.relu(y)[..., :3])",
    "router": "lambda n: build(n, lambda y: torch.topk(torch.softmax(y, -1), 2, -1).values)",
    "row_max": "lambda n: build(n, lambda y: y - y.max(-1, keepdim=True).values)",
    "router_choice": "lambda n: build(n, lambda y: torch.topk(torch.sigmoid(y) "
                     "+ torch.arange(8.0, device=y.device), 2, -1).values)",
    "segments": "lambda n: Segments(n)",
    "in_place": "lambda n: InPlace(n)",
    "in_place_view": "lambda n: InPlaceView(n)",
    "mean_all": "lambda n: build(n, lambda y: y + y.mean())",
    "inverse_norm_plus": "lambda n: build(n, lambda y: y * (torch.rsqrt((y * y).sum(-1, "
                         "keepdim=True)) + 0.1))",
    "flipped_ids": "lambda n: FlippedIds(n)",
    "languages": "lambda n: Languages(n)",
    "relative": "lambda n: Relative(n)",
    "relative_padded": "lambda n: RelativePadded(n)",
    "relative_scaled": "lambda n: RelativeScaled(n)",
    "padded": "lambda n: Padded(n)",
    "one_head": "lambda n: OneHead(n)",
    "second": "lambda n: Second(n)",
    "row_max_added": "lambda n: RowMaxAdded(n)",
    "gate_twice": "lambda n: GateTwice(n)",
    "swap": "lambda n: Swap(n)",
    "sink_over_queries": "lambda n: SinkOverQueries(n)",
    "sink_shifted_over_queries": "lambda n: SinkOverQueries(n, shift=True)",
    "class_token": "lambda n: ClassToken(n)",
    "head_split": "lambda n: HeadSplit(n)",
    "act_split": "lambda n: ActSplit(n)",
    "two_row_token": "lambda n: TwoRowToken(n)",
    "patch_mean": "lambda n: PatchMean(n)",
    "pooled_cat": "lambda n: PooledCat(n)",
    "feature_cat": "lambda n: FeatureCat(n)",
    "probe": "lambda n: Probe(n)",
    "transposed": "lambda n: Transposed(n)",
    "table_buffer": "lambda n: TableBuffer(n)",
    "complex_scaled": "lambda n: ComplexRotary(n, 'scaled')",
    "complex_square": "lambda n: ComplexRotary(n, 'square')",
    "complex_flip": "lambda n: ComplexRotary(n, 'flip')",
    "complex_stacked": "lambda n: ComplexRotary(n, 'stacked')",
    "small_mask": "lambda n: TableBuffer(n, low=-10.0)",
    "learned_logit_bias": "lambda n: LearnedLogitBias(n)",
    "head_bias": "lambda n: HeadBias(n)",
    "scaled_gain": "lambda n: ScaledGain(n)",
    "key_bias": "lambda n: KeyBias(n)",
    "scaled_table": "lambda n: ScaledTable(n)",
    "padding_drawn": "lambda n: PaddingDrawn(n)",
    "padding_read": "lambda n: PaddingRead(n)",
    "padding_tied": "lambda n: PaddingTied(n)",
}


@pytest.mark.parametrize(("function", "inputs", "message"), [
    # before: AttributeError deep in the walk, or exit 0 with a program of no output
    ("int", None, r"m.py:9:5: error: Net.forward returned an int: there is no output to trace"),
    ("none", None, r"m.py:9:5: error: Net.forward returned None: there is no output"),
    ("names", None, r"m.py:9:5: error: Net.forward returned a tuple with no tensor"),
    # before: AttributeError: 'str' object has no attribute 'named_parameters'
    ("text", None, r"m.py:18:1: error: text\(16\) returned a str, not a torch.nn.Module"),
    # before: unpositioned (or at tensorprog's own wrapper); now at the build, the code to change
    ("layers", None, r"m.py:\d+:1: error: cannot trace a softmax of anything but attention"),
    ("plus_one", None, r"m.py:\d+:1: error: a dim is 17 at width 16 and 33 at width 32"),
    # a constant of the width folds into a param only right after the layer that makes it
    ("root_n", None, r"m.py:\d+:\d+: error: a constant that changes with the width "
                     r"\(4.0 at width 16(.|\n)*help: apply the constant right after a linear"),
    ("part", None, r"m.py:\d+:\d+: error: cannot trace a slice of a vector's coordinates"),
    # before: TypeError: AttentionOps.op_max() takes from 3 to 4 positional arguments
    ("row_max", None, r"m.py:\d+:\d+: error: cannot trace a max over a dimension"),
    # a softmax stabilised by hand subtracts the row max (ops_sink.py); anything else is refused
    ("row_max_added", None, r"m.py:\d+:\d+: error: cannot trace the row max of attention "
                            r"logits used otherwise than subtracted"),
    # Granite's sink gate folds into the mix it multiplies only where nothing else reads it
    ("gate_twice", None, r"m.py:\d+:\d+: error: cannot trace sigmoid\(logsumexp\(logits\) - "
                         r"sinks\) times anything but the mix"),
    # before: traced as a softmax over the keys (the sink column's axis), a wrong program
    ("sink_over_queries", None, r"m.py:\d+:\d+: error: cannot trace a softmax of attention "
                                r"logits with a sink column or minus their row max over another "
                                r"axis than their keys(.|\n)*help: write the sink as gpt-oss"),
    ("sink_shifted_over_queries", None, r"m.py:\d+:\d+: error: cannot trace a softmax of "
                                        r"attention logits with a sink column or minus"),
    # before: traced, each layer's extra rows named by their place, which moves with the width,
    # and matched to the other layer's at the second width (rows.py)
    ("swap", None, r"m.py:\d+:1: error: the model's graph differs between widths 16 and 32"
                   r"(.|\n)*first difference: 'param fc_weight_part2 : .*' at 16, "
                   r"'param up_weight_part4 : .*' at 32"),
    # before: refused at the router's softmax as "a softmax of anything but attention logits";
    # a router's top-k gates are traced only as the weights of experts' outputs (ops_moe.py)
    ("router", None, r"m.py:\d+:\d+: error: cannot trace a mixture-of-experts router's "
                     r"selection \(its top-k gates(.|\n)*route_norm\(g, k, y1, \.\.\., yE\)"),
    # a selection by the gates plus a per-expert bias (DeepSeek-V3's) is traced only as far as
    # the ids of the k experts: the top-k of those scores is no gate
    ("router_choice", None, r"m.py:\d+:\d+: error: cannot trace a mixture-of-experts router's "
                            r"selection \(its top-k gates or ids, its selection scores"),
    # ids neither the tokens, nor positions, nor one constant id (token types all 0)
    ("segments", None, r"m.py:\d+:\d+: error: cannot trace an embedding lookup of ids that are "
                       r"neither the token input, nor the positions(.|\n)*nor one constant id"),
    # a constant mask over the batch that keeps part of it: examples taking different params
    ("languages", "lambda m: (torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1]))",
     r"m.py:\d+:\d+: error: cannot trace a selection of examples by a mask over the batch that "
     r"keeps 1 of the 2 of its examples(.|\n)*a different model per example(.|\n)*help: give "
     r"every example"),
    # ids the forward computes from the token ids: read by their values with probe ids in
    # the zeros' place (before: the trace's zeros flipped read as the constant id 0, a bias)
    ("flipped_ids", None, r"m.py:\d+:\d+: error: cannot trace an embedding lookup of ids "
                          r"computed from the token ids other than a copy(.|\n)*help: compute"),
    # an in-place op is traced as its out-of-place op only where nothing else reads its input
    ("in_place", None, r"m.py:\d+:\d+: error: cannot trace an in-place add_ on a value that is "
                       r"used elsewhere(.|\n)*help: write it out of place"),
    # before: traced as if x were read before the write (the slice's mul_ was dropped)
    ("in_place_view", None, r"m.py:\d+:\d+: error: cannot trace an in-place mul_ on a slice of "
                            r"a value read elsewhere(.|\n)*help: write it out of place"),
    # a mean of every entry (no dims): before, a TypeError's traceback (op_mean's dims missing)
    ("mean_all", None, r"m.py:\d+:\d+: error: cannot trace a mean of a \(batch, tokens, "
                       r"features\) vector over axes \[0, 1, 2\]"),
    # before: traced as y / |y|, the 0.1 dropped (ops_norm.eps_added)
    ("inverse_norm_plus", None, r"m.py:\d+:\d+: error: cannot trace a number added to the "
                                r"inverse root of a vector's sum of squares"),
    # before: refused as "an embedding lookup of ids that are neither the token input, ...";
    # then at the lookup, as relative biases were not traced; now traced into the logits they
    # are added to (ops_relative.py), and refused where they are used otherwise
    ("relative", None, r"m.py:\d+:\d+: error: cannot trace a relative position bias \(T5's: 8 "
                       r"distance buckets(.|\n)*used other than added to attention logits "
                       r"\(by sum\)(.|\n)*input rel : relative\[T, B\](.|\n)*t5.tp"),
    # the bias under a mask that hides a key (padding): refused as any such mask is
    ("relative_padded", None, r"m.py:\d+:\d+: error: cannot trace a relative position bias "
                              r"under an attention mask that is neither the causal mask nor one "
                              r"that keeps every key(.|\n)*help: trace with example inputs"),
    ("relative_scaled", None, r"m.py:\d+:\d+: error: cannot trace a number multiplying "
                              r"attention logits after a relative position bias was added"),
    # attention over every key, or the causal mask: a mask hiding keys (padding) is refused
    # (its input given as a keyword: example_inputs may return a dict)
    ("padded", "lambda m: {'idx': torch.zeros(2, 4, dtype=torch.long)}",
     r"m.py:\d+:\d+: error: cannot trace an attention mask that is neither the "
     r"causal mask nor one that keeps every key(.|\n)*help: trace with example inputs without "
     r"padding"),
    # before: a TypeError (no head dim) deep in the walk
    ("one_head", None, r"m.py:\d+:\d+: error: cannot trace attention over values not split "
                       r"into heads"),
    # one token read out of the sequence: the first (first(h), BERT's pooler), no other
    ("second", None, r"m.py:\d+:\d+: error: cannot trace reading token 1 of the sequence"),
    # a learned token before the tokens is prepend (tests/fromtorch/test_vit.py); after them,
    # the language has no form (first(h) reads the first token)
    ("class_token", None, r"m.py:\d+:\d+: error: cannot trace a concatenation of learned "
                          r"tokens other than before the tokens(.|\n)*help: prepend learned "
                          r"tokens as torch.cat\(\[cls.expand\(B, -1, -1\), h\], dim=1\)"),
    # BEiT's and DINOv2's heads read a mean of the tokens after the class token, mean(h, 1);
    # a slice short of the last token has no form
    ("patch_mean", None, r"m.py:\d+:\d+: error: cannot trace a slice of the tokens of a "
                         r"\(batch, tokens, features\) vector other than the tokens from one on "
                         r"to the last(.|\n)*help: pool the \(batch, tokens, features\)"),
    # into a linear layer it traces (tests/fromtorch/test_concat.py); read by anything else, of
    # finite parts it is cat(a, b, D) (tests/fromtorch/test_finite_cat.py), of the width's not
    ("pooled_cat", None, r"m.py:\d+:\d+: error: cannot trace a concatenation of vectors per "
                         r"sequence along their features read by layer_norm \(its statistics "
                         r"span every part\), with a part that grows with the width beside one "
                         r"that does not(.|\n)*"
                         r"DINOv2's head(.|\n)*help: feed the concatenation straight to linear "
                         r"layers"),
    # the same read by anything but linear layers, named (Kimi-Linear's into a convolution)
    ("feature_cat", None, r"m.py:\d+:\d+: error: cannot trace a concatenation of vectors "
                          r"along their "
                          r"features read by layer_norm \(its statistics span every part\), "
                          r"with a part that grows with the width beside one that does not: the "
                          r"language joins parts all finite or all growing(.|\n)*help: feed "
                          r"the concatenation "
                          r"straight to linear layers"),
    ("probe", None, r"m.py:\d+:\d+: error: cannot trace a learned token \(cls\) repeated over "
                    r"the batch as the query of attention to every token \(SigLIP's"),
    ("two_row_token", None, r"m.py:\d+:\d+: error: cannot trace a concatenation of learned "
                            r"tokens other than before the tokens"),
    # before: AttributeError: 'Probs' object has no attribute 'src' (DeBERTa's view of them)
    ("transposed", None, r"m.py:\d+:\d+: error: cannot trace a transpose of attention weights "
                         r"\(only a view that merges or splits their batch and heads axes"),
    # before: "a product with a buffer of more than one entry", the buffer and the forms unsaid
    ("table_buffer", None, r"m.py:\d+:\d+: error: cannot trace a product with the buffer tri, "
                           r"of more than one float entry(.|\n)*a table of rotary sin/cos"
                           r"(.|\n)*help: mask attention with sdpa's is_causal=True"),
    # before: "a view from [2, 2, 4, 8] to [2, 2, 4, 4, 2]"; a complex rotary traces
    # (tests/fromtorch/test_trace_complex_rotary.py), a table that scales q and k, or any
    # other complex op, does not
    ("complex_scaled", None, r"m.py:\d+:\d+: error: cannot trace a product of a head's "
                             r"coordinate pairs, as complex numbers, with a table whose entries "
                             r"have modulus 2 to 2(.|\n)*help: build the table as torch.polar"),
    ("complex_square", None, r"m.py:\d+:\d+: error: cannot trace a product of a head's "
                             r"coordinate pairs other than their complex view times a table of "
                             r"unit complex numbers(.|\n)*help: rotate q and k with the complex"),
    ("complex_flip", None, r"m.py:\d+:\d+: error: cannot trace the op flip on a head's "
                           r"coordinate pairs(.|\n)*help: rotate q and k with the complex"),
    # before: the table was checked against the product's shape, which a table of more dims
    # makes (the pairs broadcast into copies), so its shape passed
    ("complex_stacked", None, r"m.py:\d+:\d+: error: cannot trace a product of a head's "
                              r"complex pairs \[2, 2, 8, 4\] with a table of shape \[2, 1, 1, 8, "
                              r"4\], which does not broadcast to them"),
    # before: "aten.add.Tensor on a value that is not a per-token vector"; a fixed table (a
    # buffer read at the positions) traces, but not one whose entries scale with the width
    ("scaled_table", None, r"m.py:\d+:\d+: error: the fixed table pe \(pe\) reads entries of "
                           r"RMS .* they scale as n\^-0\.\d+ between them(.|\n)*help: build"),
    # before: a trained vector param, drawn anew by apply at every width but the base; the
    # padding_idx row never trains (its gradient masked), so only a zero one is a fixed vector
    ("padding_drawn", None, r"m.py:\d+:\d+: error: cannot trace a lookup of row 0 of p.weight, "
                            r"its padding_idx, whose row never trains(.|\n)*help: zero the "
                            r"padding row"),
    # before: a fixed zero row that the other reader trains; the refusal named the readout's
    # name of the tied tensor and said the build leaves the row nonzero
    ("padding_read", None, r"m.py:\d+:\d+: error: cannot trace a lookup of row 0 of e.weight, "
                           r"its padding_idx, as a vector that never trains \(this lookup masks "
                           r"its gradient\): an embedding lookup without that padding_idx in the "
                           r"model reads the same tensor, and trains that row"),
    ("padding_tied", None, r"m.py:\d+:\d+: error: cannot trace a lookup of row 0 of e.weight, "
                           r"its padding_idx, .*: a linear layer \(a tied readout\) in o reads "
                           r"the same tensor \(as o.weight\), and trains that row"),
    # OpenAI GPT's 0/1 mask traces only with a large negative (-1e4) where it drops entries
    ("small_mask", None, r"m.py:\d+:\d+: error: cannot trace attention logits times a 0/1 "
                         r"mask, plus anything but a large negative"),
    # before: "the op baddbmm"; a constant bias (Bloom's ALiBi) traces, a learned one does not
    ("learned_logit_bias", None, r"m.py:\d+:\d+: error: cannot trace attention logits plus a "
                                 r"bias that is not a constant of the positions(.|\n)*help: add "
                                 r"a constant bias of the positions \(ALiBi's\)"),
    # before: "a unsqueeze of a PRef value"; now says what form the param would need
    ("head_bias", None, r"m.py:\d+:\d+: error: cannot trace an added axis on a param: a vector "
                        r"param joins a sum or a product along the features(.|\n)*help: use a "
                        r"vector param of the features"),
    # before: "aten.mul.Tensor on a value that is not a per-token vector"
    ("scaled_gain", None, r"m.py:\d+:\d+: error: cannot trace a param \(g\) times a number "
                          r"\(\d+\.?\d*\) before its use(.|\n)*help: fold the number into the "
                          r"param"),
    # before: "an added axis on a per-token vector"
    ("key_bias", None, r"m.py:\d+:\d+: error: cannot trace a value of each key computed from "
                       r"the tokens, spread over the queries(.|\n)*help: add a constant bias"),
    # each head's parts are per-head vectors of their own (MLA's query, ops_mla.py): their
    # concatenation is read only as sdpa's query or key, as one dot per part
    ("head_split", None, r"m.py:\d+:\d+: error: cannot trace a reshape of heads concatenated "
                         r"from parts of different vectors(.|\n)*help: pass the concatenated "
                         r"query and key straight to F.scaled_dot_product_attention"),
    ("act_split", None, r"m.py:\d+:\d+: error: cannot trace a split of each head's features "
                        r"into parts of 4, 4 of a value that is not a linear layer's output"),
    ("build", "lambda m: ((torch.zeros(2, 4, dtype=torch.long),),)",
     r"m.py:\d+:1: error: example_inputs gave idx, a tuple holding tensors, among the "
     r"forward's inputs"),
    ("build", "lambda m: None", "example_inputs returned None: expected a tuple"),
    # before: the ZeroDivisionError's traceback
    ("build", "lambda m: 1 // 0", r"m.py:\d+:1: error: example_inputs\(model\) failed: "
                                  "ZeroDivisionError"),
    ("build", "lambda m: (None,)", "example_inputs gave no tensor"),
    # before: positioned at tensorprog's own wrapper; now at the forward called with them
    ("build", "lambda m: (torch.zeros(2, 4, dtype=torch.long),) * 2",
     r"m.py:9:5: error: torch.export cannot trace the model: TypeError: Net.forward\(\) takes"),
])
def test_trace_refuses_what_is_no_model_at_the_users_line(capsys, tmp_path, function, inputs,
                                                          message):
    source = TRACED_MODEL + "".join(f"\n{k} = {v}\n" for k, v in TRACED_BUILDS.items())
    if inputs is not None:
        source += f"\nexample_inputs = {inputs}\n"
    (tmp_path / "m.py").write_text(source)
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/m.py:{function}", "--widths", "16,32")
    assert (code, out) == (2, "") and re.search(message, err), err
    assert "tensorprog/" not in err  # the user's file, never the package's


# mixture-of-experts forms the tracer does not follow into route(...): refused at the op that
# leaves the forms it follows (ops_moe.py), never traced into a wrong layer
MOE_MODEL = """\
import torch
from torch import nn


class MoE(nn.Module):
    def __init__(self, n, form):
        super().__init__()
        self.emb, self.router, self.head = nn.Embedding(8, n), nn.Linear(n, 4), nn.Linear(n, 8)
        self.w = nn.Parameter(torch.randn(4, n, n) / n ** 0.5)
        self.form = form

    def forward(self, tok):
        x = self.emb(tok).reshape(-1, self.w.shape[-1])
        top, ids = torch.topk(torch.softmax(self.router(x), -1), 2, -1)
        if self.form == "dense":  # the gates scattered to all 4 experts, an einsum over them
            gates = top.new_zeros(x.shape[0], 4).scatter(-1, ids, top)
            y = torch.einsum("te,ten->tn", gates, torch.einsum("tm,enm->ten", x, self.w))
        elif self.form == "onehot":  # JetMoE's: a one-hot of the ids counts each one's tokens
            counts = torch.zeros(x.shape[0], 4, device=x.device).scatter(1, ids, 1).sum(0)
            y = x * counts.sum()
        else:  # each slot's expert chosen by the ids of another router's selection
            _, other = torch.topk(torch.sigmoid(self.router(x)), 2, -1)
            xs = x.repeat_interleave(2, dim=0)
            y = torch.bmm(self.w[other.reshape(-1)], xs.unsqueeze(-1)).squeeze(-1)
            y = (y * top.reshape(-1, 1)).view(-1, 2, x.shape[-1]).sum(1)
        return self.head(y).reshape(tok.shape[0], tok.shape[1], 8)


dense = lambda n: MoE(n, "dense")
other = lambda n: MoE(n, "other")
onehot = lambda n: MoE(n, "onehot")


class Dense(MoE):  # Llama 4's router: the sigmoid of the top-k logits scattered, -inf elsewhere
    def forward(self, tok):
        x = self.emb(tok).reshape(-1, self.w.shape[-1])
        logits = self.router(x)
        top, ids = torch.topk(logits, 2, -1)
        gates = torch.full_like(logits, float("-inf")).scatter_(1, ids, top).sigmoid()
        y = x * gates.sum(-1, keepdim=True)  # not each expert's input times its gate
        return self.head(y).reshape(tok.shape[0], tok.shape[1], 8)


scattered = lambda n: Dense(n, "scattered")
"""


@pytest.mark.parametrize(("function", "message"), [
    # before: refused at the router's top-k whatever followed it
    ("dense", r"m.py:16:\d+: error: cannot trace the op new_zeros on a mixture-of-experts "
              r"router's selection(.|\n)*batched matmul of W\[ids\]"),
    ("other", r"m.py:25:\d+: error: cannot trace the op mul on the experts' values and another "
              r"part of the routing"),
    # before: "the op scatter on a ... router's selection ... in a form the tracer does not
    # follow"; now what the one-hot is for, and what the tracer follows instead
    ("onehot", r"m.py:19:\d+: error: cannot trace a one-hot of the selected experts' ids"
               r"(.|\n)*JetMoE's(.|\n)*help: build the model with transformers' "
               r"experts_implementation grouped_mm"),
    # before: "the op full_like", the router unsaid; then refused at the table, which now
    # traces where it multiplies each expert's input (route_in), refused at any other use
    ("scattered", r"m.py:40:\d+: error: cannot trace the op sum on a dense table of a router's "
                  r"gates(.|\n)*help: the tracer follows a dense table(.|\n)*route_in"),
])
def test_trace_refuses_moe_forms_it_does_not_follow(capsys, tmp_path, function, message):
    (tmp_path / "m.py").write_text(MOE_MODEL)
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/m.py:{function}", "--widths", "16,32")
    assert (code, out) == (2, "") and re.search(message, err), err


# key/value heads repeated for grouped-query attention in an order the language does not pair
# (it pairs key head j with query heads j*g .. j*g + g-1, as HF's repeat_kv): refused where the
# model repeats them, never traced into a wrong pairing
GQA_MODEL = """\
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, n, repeat):
        super().__init__()
        self.emb, self.q, self.o = nn.Embedding(8, n), nn.Linear(n, n), nn.Linear(n, n)
        self.k, self.v, self.head = nn.Linear(n, n // 2), nn.Linear(n, n // 2), nn.Linear(n, 8)
        self.repeat = repeat

    def forward(self, tok):
        x = self.emb(tok)
        b, t, n = x.shape
        q = self.q(x).view(b, t, 4, n // 4).transpose(1, 2)
        k, v = (self.repeat(z(x).view(b, t, 2, n // 4).transpose(1, 2)) for z in (self.k, self.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


def before_heads(z):
    b, h, t, d = z.shape
    return z[:, None].expand(b, 2, h, t, d).reshape(b, 2 * h, t, d)


def example_inputs(model):
    return (torch.zeros(2, 4, dtype=torch.long),)
"""


@pytest.mark.parametrize(("repeat", "message"), [
    # (heads tiled by torch's repeat are copies of the whole vector, cat(k, k, D), and trace:
    # tests/fromtorch/test_heads_split_trace.py)
    ("before_heads", r"m.py:\d+:\d+: error: cannot trace an added axis on attention heads other "
                     r"than right after them(.|\n)*help: repeat each key/value head for "
                     r"consecutive query heads"),
])
def test_trace_refuses_key_value_heads_repeated_in_another_order(capsys, tmp_path, repeat,
                                                                 message):
    (tmp_path / "m.py").write_text(GQA_MODEL + f"\n\ndef build(n):\n    return Attention(n, "
                                   f"{repeat})\n")
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/m.py:build", "--widths", "16,32")
    assert (code, out) == (2, "") and re.search(message, err), err


# a convolutional model for ``tensorprog trace --image 3,8,8``: each build changes one layer to
# what the language has no form for, refused at the user's line (a frozen batch norm: its build)
CONV_MODEL = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n, conv=None, pool=None, tail=None):
        super().__init__()
        self.conv = conv or nn.Conv2d(3, n, 3, padding=1)
        self.bn = nn.BatchNorm2d(n)
        self.pool = pool or nn.MaxPool2d(2)
        self.fc = nn.Linear(n, 10)
        self.tail = tail or (lambda x: x.mean((2, 3)))

    def forward(self, x):
        return self.fc(self.tail(self.pool(torch.relu(self.bn(self.conv(x))))))


def frozen(n):
    net = Net(n)
    net.bn.eval()
    return net


class Patches(nn.Module):
    def __init__(self, n, unfold=4, rows=4, twice=False):
        super().__init__()
        self.proj, self.unfold, self.twice = nn.Linear(3 * unfold * unfold, n), unfold, twice
        self.pos = nn.Parameter(torch.zeros(1, rows, n))
        self.conv = nn.Conv2d(3, 3 * unfold * unfold, 3, padding=1)

    def forward(self, x):
        h = self.proj(nn.functional.unfold(x, self.unfold, stride=4).transpose(1, 2))
        h = h + self.pos
        return (h, self.proj(self.conv(x).mean((2, 3)))) if self.twice else h


class Scaled(Net):  # a scale [C, 1, 1] of the channels, or one [8, 1] of an 8x8 image's rows
    def __init__(self, n, rows=False):
        super().__init__(n)
        self.g, self.rows = nn.Parameter(torch.ones(8 if rows else n)), rows

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        g = self.g[:, None] if self.rows else self.g[:, None, None]
        return self.fc((g * h).mean((2, 3)))


class OnPixels(Net):
    def __init__(self, n):
        super().__init__(n)
        self.px = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.px(self.conv(x)).mean((2, 3)))


"""
CONV_BUILDS = {
    "frozen": ("frozen", r"m.py:\d+:1: error: cannot trace bn: a BatchNorm2d in eval mode"
               r"(.|\n)*help: build the model in training mode"),
    "wide_pool": ("lambda n: Net(n, pool=nn.MaxPool2d(3))",
                  r"m.py:\d+:\d+: error: cannot trace a max pool of kernel 3x3, stride 3x3, "
                  r"padding 0x0(.|\n)*help: use nn.MaxPool2d\(2\), or nn.MaxPool2d\(3, stride"),
    # a 3x3 mean of an image counts only its own pixels (avgpool3, PoolFormer's): the padding's
    # zeros counted in make the border pixels another function
    "pad_counted": ("lambda n: Net(n, pool=nn.AvgPool2d(3, 1, 1))",
                    r"m.py:\d+:\d+: error: cannot trace a avg pool of kernel 3x3, stride 1x1, "
                    r"padding 1x1(.|\n)*help: use nn.AvgPool2d\(2\), or nn.AvgPool2d\(3, "
                    r"stride=1 or 2, padding=1, count_include_pad=False\)"),
    # a zero pad read by a max pool other than HGNet's and BiT's stem pools: torch's own
    # padding of a max pool is -inf, so the zeros are another function at the border
    "padded_pool": ("lambda n: Net(n, pool=nn.Sequential(nn.ConstantPad2d(1, 0.0), "
                    "nn.MaxPool2d(3, stride=2, padding=1)))",
                    r"m.py:\d+:\d+: error: cannot trace a pad by \[1, 1, 1, 1\] \(constant, "
                    r"value 0.0\) of a value that is not an image, or read by another op"),
    # a layer scale [C, 1, 1] multiplies a channels-first image's channels; a param along its
    # rows has no form
    "scale_on_rows": ("lambda n: Scaled(n, rows=True)",
                      r"m.py:\d+:\d+: error: cannot trace an added axis on a param"),
    # GRN's pieces: the L2 norm of each channel over the pixels, read only as GRN reads it
    "norm_over_channels": ("lambda n: Net(n, tail=lambda x: (x / torch.linalg.vector_norm(x, "
                           "dim=1, keepdim=True)).mean((2, 3)))",
                           r"m.py:\d+:\d+: error: cannot trace a vector norm \(ord 2\) over "
                           r"axes \[1\](.|\n)*help: write GRN as ConvNeXt V2 does"),
    "response_of_another": ("lambda n: Net(n, tail=lambda x: (x.relu() * (torch.linalg."
                            "vector_norm(x, dim=(2, 3), keepdim=True) / torch.linalg.vector_norm("
                            "x, dim=(2, 3), keepdim=True).mean(1, keepdim=True))).mean((2, 3)))",
                            r"m.py:\d+:\d+: error: cannot trace a piece of a global response "
                            r"normalization \(ConvNeXt V2's GRN\) used otherwise"),
    # the language's convolution has one stride and one dilation for both pixel axes
    "two_strides": ("lambda n: Net(n, conv=nn.Conv2d(3, n, 3, stride=(1, 2), padding=1))",
                    r"m.py:\d+:\d+: error: cannot trace a convolution with kernel \[3, 3\], "
                    r"stride 1x2, padding \[1, 1, 1, 1\](.|\n)*help: use nn.Conv2d\(c_in, "
                    r"c_out, \(kh, kw\)"),
    "two_dilations": ("lambda n: Net(n, conv=nn.Conv2d(3, n, 3, padding=(1, 2), "
                      "dilation=(1, 2)))",
                      r"error: cannot trace a convolution with kernel \[3, 3\], stride 1x1, "
                      r"padding \[1, 1, 2, 2\], dilation 1x2"),
    # a pad by zeros is traced as the padding of the convolutions that read it, only those
    "pad_pooled": ("lambda n: Net(n, tail=lambda x: nn.functional.pad(x, (1, 1, 1, 1))"
                   ".mean((2, 3)))",
                   r"m.py:\d+:\d+: error: cannot trace a pad by \[1, 1, 1, 1\] \(constant, "
                   r"value None\) of a value that is not an image, or read by another op than a "
                   r"convolution(.|\n)*help: pad an image by zeros right before a convolution"),
    # groups of a fixed width, growing with the model's (groups fixed at 2 trace: conv(..., 2))
    "grouped": ("lambda n: Net(n, pool=nn.Conv2d(n, n, 3, padding=1, groups=n // 8))",
                r"m.py:\d+:\d+: error: a convolution in (\d+ groups|one group) at width \d+ and "
                r"\d+ at \d+ "
                r"\(pool\): its groups grow with the width(.|\n)*help: build the model with a "
                r"fixed number of groups"),
    "depthwise_two_strides": ("lambda n: Net(n, pool=nn.Conv2d(n, n, 3, stride=(1, 2), "
                              "padding=1, groups=n))",
                              r"error: cannot trace a depthwise convolution with kernel \[3, 3\]"
                              r", stride 1x2, padding \[1, 1, 1, 1\](.|\n)*help: use "
                              r"nn.Conv2d\(c, c, \(kh, kw\)"),
    # an image's pixels are read as tokens (tokens(h, T)) only whole, [B, C, H·W] or channels-
    # last [B, H·W, C]: its channels merged with its rows have no form
    "pixels_as_tokens": ("lambda n: Net(n, conv=nn.Conv2d(3, n, 4, stride=4), "
                         "pool=nn.Identity(), tail=lambda x: x.reshape(2, -1, 2).mean(2)[:, :n])",
                         r"error: cannot trace a view of an image from \[2, \d+, 2, 2\] to "
                         r"\[2, \d+, 2\] \(an image is flattened only after a global pool, "
                         r"or its pixels into tokens(.|\n)*help: pool to one pixel first"),
    # MobileViT's unfold: pixels folded into the batch, attended over once per patch pixel
    "pixels_into_batch": ("lambda n: Net(n, tail=lambda x: x.reshape(8, -1, 2, 2)"
                          ".mean((2, 3))[:2, :n])",
                          r"error: cannot trace a view of an image from \[2, \d+, 4, 4\] to "
                          r"\[8, \d+, 2, 2\] \(its pixels folded into the batch(.|\n)*help: "
                          r"read the image's pixels as tokens"),
    # MobileViT's unfolding (its first view, [B·C·nh, ph, nw, pw]): attention per pixel
    # offset over the patches is strided groups of pixels under a constant mask, not windows
    "strided_groups": ("lambda n: Net(n, tail=lambda x: x.reshape(-1, 2, 2, 2).mean((1, 2, 3))"
                       ".reshape(2, -1)[:, :n])",
                       r"error: cannot trace a view of an image from \[2, \d+, 4, 4\] to "
                       r"\[\d+, 2, 2, 2\] \(its pixels folded into the batch: MobileViT's "
                       r"unfolding into 4 patches of 2x2 pixels(.|\n)*4 pixel offsets: "
                       r"attention over the 16 pixels as tokens(.|\n)*not strided groups"),
    # MobileViTV2's unfold of a feature map inside the network: each pixel offset a sequence
    "unfold_inside": ("lambda n: Net(n, tail=lambda x: nn.functional.unfold(x, 2, stride=2)"
                      ".mean(2)[:, :n])",
                      r"error: cannot trace an unfold of a feature map of 4x4 pixels inside "
                      r"the network into patches of 2x2 \(MobileViTV2's(.|\n)*help: cut the "
                      r"image input into patches once"),
    # a clamp the language has no form for: to [-1, 2] (it has [0, 6], [0, inf), [-c, c],
    # and one side alone, (-inf, c] and [c, inf))
    "clamp": ("lambda n: Net(n, pool=nn.Hardtanh(-1.0, 2.0))",
              r"m.py:\d+:\d+: error: cannot trace a clamp to \[-1.0, 2.0\]"
              r"(.|\n)*help: clamp at one of these"),
    "channel_mean": ("lambda n: Net(n, tail=lambda x: x.mean(1).flatten(1)[:, :n])",
                     r"m.py:\d+:\d+: error: cannot trace a mean of an image over axes \[1\]"),
    "unpooled": ("lambda n: Net(n, tail=lambda x: x.flatten(1)[:, :n])",
                 r"m.py:\d+:\d+: error: cannot trace a view of an image from \[2, \d+, 4, 4\] "
                 r"to \[2, \d+\] \(an image is flattened only after a global pool, or its pixels "
                 r"into tokens"),
    # an image is cut into patches only whole, without overlap, and only at the input
    "overlap": ("lambda n: Patches(n, unfold=6)",
                r"m.py:\d+:\d+: error: cannot trace an unfold of kernel 6x6, stride 4x4"),
    "one_row": ("lambda n: Patches(n, rows=1)",
                r"m.py:\d+:\d+: error: cannot trace a param of shape \[1, 1, \d+\] added "
                r"to per-token vectors(.|\n)*help: add a position table of one row per token"),
    "twice": ("lambda n: Patches(n, twice=True)",
              r"m.py:\d+:\d+: error: cannot trace an image cut into patches here and also read "
              r"otherwise"),
    # before: traced, and refused only in the traced program (traced.tp), not at the user's line:
    # the language adds images of one size only, and combines them channel by channel
    "pooled_added": ("lambda n: Net(n, tail=lambda x: (x + x.mean((2, 3), keepdim=True))"
                     ".mean((2, 3)))",
                     r"m.py:\d+:\d+: error: cannot trace a sum of an image of 4x4 pixels and "
                     r"one of 1x1(.|\n)*help: multiply the image by the pooled gate"),
    # (a gate of one channel for all n, pooled or per pixel, now traces as h * spread(g, n):
    # tests/fromtorch/test_focal_trace.py)
    # nn.Linear on [B, C, H, W] maps the last axis, an image's columns, not its channels
    "on_pixels": ("lambda n: OnPixels(n)",
                  r"m.py:\d+:\d+: error: cannot trace a linear layer applied to an image "
                  r"(.|\n)*help: pool the image to one pixel"),
}


@pytest.mark.parametrize("case", sorted(CONV_BUILDS))
def test_trace_refuses_convolutional_layers_the_language_has_no_form_for(capsys, tmp_path,
                                                                         case):
    build, message = CONV_BUILDS[case]
    source = CONV_MODEL + ("" if build == "frozen" else f"\n{case} = {build}\n")
    (tmp_path / "m.py").write_text(source)
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/m.py:{case}", "--widths", "8,16",
                             "--image", "3,8,8")
    assert (code, out) == (2, "") and re.search(message, err), err


@pytest.mark.parametrize(("argv", "message"), [
    (["derive", MLP, "--optimiser", "adam"], r"^usage: tensorprog derive (.|\n)*tensorprog "
     r"derive: error: unrecognized arguments: --optimiser adam\n  --optimiser: did you mean "
     r"--optimizer\?\n$"),
    (["derive", MLP, "--optimiser=adam"], r"--optimiser: did you mean --optimizer\?"),
    (["check", MLP, "--sede", "2"], r"^usage: tensorprog check (.|\n)*did you mean --seeds\?"),
    (["classify", MLP, "--preset", "sp", "--jsn"], r"--jsn: did you mean --json\?"),
    (["derive", MLP, "extra.tp"], r"^usage: tensorprog derive (.|\n)*unrecognized arguments: "
                                  r"extra.tp\n$"),
])
def test_an_unknown_argument_gets_the_commands_usage_and_the_closest_flag(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and re.search(message, err), err


@pytest.mark.parametrize("args, message", [
    (["--widths", "64"], "at least two different"),
    (["--widths", "64,abc"], "comma-separated integers"),
    (["--steps", "1"], "judges changes from step 2 on"),
    (["--lr", "-1"], "must be a positive number"),
    (["--lr", "inf"], "must be a positive number"),
    (["--plot", "coord.txt"], "unknown figure format"),
    (["--plot", "no/such/dir/coord.png"], "no directory"),
    (["--tolerance", "0"], "tolerance must be positive"),
    (["--autocast", "fp16"], "invalid choice"),
])
def test_cli_check_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        from tensorprog.cli.main import main
        main(["check", str(MLP), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_check_refuses_an_unknown_autocast_before_any_work():
    with pytest.raises(tp.UsageError, match="unknown autocast 'fp16'"):
        tp.check(tp.parse_file(MLP), "adam", autocast="fp16")


@pytest.mark.parametrize("args, message", [
    (["--data", "nope"], "unknown data set"),
    (["--data", "digits", "--values", "1e-3,x"], "comma-separated numbers"),
    (["--data", "digits", "--values", "1e-3,1e-2"], "at least 3 positive"),
    (["--data", "digits", "--param", "mup,xp"], "unknown parametrization xp"),
    (["--data", "digits", "--hp", "momentum"], "invalid choice"),
])
def test_cli_transfer_usage_errors(args, message, capsys):
    from tensorprog.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["transfer", str(MLP), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ``tensorprog tune``: every refusal before any trial trains (no study is created)
@pytest.mark.parametrize("args, message", [
    (["--data", "nope"], "unknown data set"),
    (["--data", "digits", "--trials", "0"], "--trials 0: must be from 1 to 100000"),
    (["--data", "digits", "--width", "0"], "--width 0: must be from 1"),
    (["--data", "digits", "--pruner", "hyperband"], "invalid choice: 'hyperband'"),
    (["--data", "digits", "-o", "best.txt"], "the tuned values are written as JSON"),
    (["--data", "digits", "--storage", "tune.db"], "--storage tune.db: not a database URL"),
    (["--data", "digits", "--storage", "nosuchdb://x/y"], "cannot open the study there"),
    (["--data", "digits", "--width", "64", "--steps", "100000", "--trials", "100000"],
     "more than the 30-minute limit"),
])
def test_cli_tune_usage_errors(args, message, capsys, tmp_path):
    assert main_code(["tune", str(MLP), "--cache", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and ("help:" in err or "usage:" in err) and "Traceback" not in err


@pytest.mark.parametrize("command", ["tune", "transfer"])
def test_ray_address_without_ray_installed(command, capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = run_cli(capsys, command, MLP, "--data", "digits", "--cache", str(tmp_path),
                           "--ray-address", "auto")
    assert code == 2 and "--ray-address: Ray is not installed" in err
    assert "pip install 'tensorprog[ray]'" in err


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ('{"lr": 0.1}', 'not a file of tuned values (no "format"'),
    ('{"format": "tensorprog-tune/1", "lr": -1, "init_std": {}, "mult": {}}',
     '"lr" must be a positive number'),
    ('{"format": "tensorprog-tune/1", "lr": 0.1, "init_std": {"W": 0}, "mult": {}}',
     '"init_std" must map names to positive numbers'),
    ('{"format": "tensorprog-tune/1", "lr": 0.1, "init_std": {}, "mult": {"a": "x"}}',
     '"mult" must map names to finite numbers'),
])
def test_tuned_values_files_that_are_refused(text, message, tmp_path):
    from tensorprog.numerics.tune import load_config

    (tmp_path / "t.json").write_text(text)
    with pytest.raises(tp.UsageError, match=re.escape(message)):
        load_config(tmp_path / "t.json")
    with pytest.raises(tp.UsageError, match="cannot read it"):
        load_config(tmp_path / "missing.json")


def main_code(argv) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "examples/mlp.tp", "--depths", "2,4"], "repeats no block over a depth"),
        (["check", "examples/resmlp_deep.tp", "--width", "64"], "--width sets the width"),
        (["check", "examples/resmlp_deep.tp", "--depths", "4"], "at least two different positive"),
        (
            ["transfer", "examples/mlp.tp", "--data", "digits", "--depths", "2,4"],
            "repeats no block over a depth",
        ),
        # SGD's depth exponents are not derived: transfer refuses as check does, rather than
        # sweep width-only µP across depths under the label "mup"
        (
            [
                "transfer",
                "examples/resmlp_deep.tp",
                "--data",
                "digits",
                "--optimizer",
                "sgd",
                "--depths",
                "2,4",
            ],
            "depth exponents under sgd are not derived",
        ),
        (
            ["check", "examples/resmlp_deep.tp", "--depths", "2,4", "--widths", "64,128"],
            "--widths sets a width sweep",
        ),
        (
            [
                "transfer",
                "examples/resmlp_deep.tp",
                "--data",
                "digits",
                "--depths",
                "2,4",
                "--widths",
                "64,128",
            ],
            "--widths sets a width sweep",
        ),
    ],
)
def test_depth_axis_errors(argv, message, capsys):
    argv = [str(ROOT / a) if a.endswith(".tp") else a for a in argv]
    assert main_code(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("axis", "message"), [
    (["--axis", "batch"], "--axis batch: expected NAME=V1,V2,..."),
    (["--axis", "batch=16,x"], "expected comma-separated integers"),
    (["--axis", "depth=2,4"], "--axis depth: not an axis a sweep runs along"),
    (["--axis", "batch=16,16"], "--axis batch: give at least two different positive values"),
    (["--axis", "steps=0,30"], "--axis steps: give at least two different positive values"),
    (["--axis", "batch=16,32", "--widths", "64,128"],
     "--axis batch runs at one width: --widths would set another axis"),
    # a sequence length needs a program with a token input and data of tokens
    (["--axis", "seq=4,8"], "--axis seq: mlp has no sequence dim, or --data digits is not a "
                            "token stream"),
])
def test_sweep_axis_errors(axis, message, capsys):
    argv = ["transfer", str(ROOT / "examples" / "mlp.tp"), "--data", "digits", "--cache", "none",
            *axis]
    assert main_code(argv) == 2
    assert message in capsys.readouterr().err


SMALL_MLP = ("width n = 16\ndim d = 4\ndim o = 1\ninput x : [d]\nparam W1 : [n, d]\n"
             "param W2 : [n, n]\nparam W3 : [o, n]\noutput y = W3 @ relu(W2 @ relu(W1 @ x))\n")


@pytest.mark.parametrize(("which", "points", "message"), [
    ("mu", 50_000, r"16,384 samples of \d+ Z-variables on 50,000 points over 2 step\(s\): about "
                   r"\d+ GiB, more than this machine's memory"),
    ("ntk", 500_000, "on 500,000 points over 1 step"),
    ("nngp", 200_000, r"200,000 points: \d+ kernel matrices of 200,000 × 200,000: about"),
])
def test_a_limit_too_big_for_memory_is_refused_with_its_estimate(which, points, message):
    # before, the draws or kernels were allocated until numpy or torch ran out of memory
    program = tp.parse(SMALL_MLP)
    x, y = np.zeros((points, 4)), np.zeros((points, 1))
    with pytest.raises(UsageError, match=message):
        if which == "mu":
            mu_limit(program, x, y, steps=1)
        elif which == "ntk":
            ntk_limit(program, x)
        else:
            nngp_kernel(program, x)


@pytest.mark.parametrize("which", ["mu", "ntk"])
def test_a_limits_seed_outside_64_bits_is_refused(which):
    # before, torch's manual_seed raised ValueError "Overflow when unpacking long long"
    program = tp.parse("width n = 16\ndim d = 4\ndim o = 2\ninput x : [d]\nparam W1 : [n, d]\n"
                       "param W2 : [o, n]\noutput y = W2 @ relu(W1 @ x)\n")
    x, y = batch(2, 4, 2)
    with pytest.raises(UsageError, match=r"seed 18446744073709551616: must be from 0 to 2\*\*64"):
        if which == "ntk":
            ntk_limit(program, x, samples=8, seed=2**64)
        else:
            mu_limit(program, x, y, samples=8, seed=2**64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--optimizer", "adam"], "only SGD's limit is implemented"),
        (["--param", "sp"], "SGD at a fixed LR has no finite limit under SP"),
        (["--steps", "99"], "--steps 99: must be from 0 to 50"),
        (["--seed", "0", "--steps", "50", "--samples", str(2**24)],
         "Z-variables on 2 points over 51 step(s): about"),
        # before, torch's manual_seed raised ValueError "Overflow when unpacking long long"
        (["--seed", str(2**64)], f"--seed {2**64}: must be from 0 to {2**64 - 1}"),
        (["--seed", "-1"], f"--seed -1: must be from 0 to {2**64 - 1}"),
        (["--seed", "-1", "--param", "ntp"], "--seed -1: must be from 0"),
        (["--kernel"], "not allowed with argument"),
    ],
)
def test_cli_train_refusals_exit_2(capsys, tmp_path, extra, message):
    np.save(tmp_path / "X.npy", batch(2, 16, 4)[0])
    np.save(tmp_path / "Y.npy", batch(2, 16, 4)[1])
    code, _, err = run_cli(
        capsys,
        "limit",
        str(EX / "gated_mlp.tp"),
        "--train",
        "--inputs",
        str(tmp_path / "X.npy"),
        "--targets",
        str(tmp_path / "Y.npy"),
        *extra,
    )
    assert code == 2 and message in err, err


# --- --abc files ----------------------------------------------------------------------------------


ABC_OK = {"W1": {"a": "0", "b": "0", "c": "0"}, "b1": {"a": "0", "b": "0", "c": "0"},
          "W2": {"a": "0", "b": "1/2", "c": "1"}, "b2": {"a": "0", "b": "0", "c": "0"},
          "W3": {"a": "0", "b": "oo", "c": "1"}}


def _abc(**changes) -> str:
    return json.dumps({**ABC_OK, **changes})


@pytest.mark.parametrize(("content", "message"), [
    (_abc(W1={"a": "1/0", "b": "0", "c": "0"}), r"param 'W1', key 'a': not an exact exponent: "
                                                r'"1/0"'),
    (_abc(W2={"a": "0", "b": "abc", "c": "0"}), r"param 'W2', key 'b': not an exact exponent"),
    (_abc(W2={"a": "0", "b": "0", "c": "nan"}), r"param 'W2', key 'c': not an exact exponent"),
    (_abc(W2={"a": "0", "b": None, "c": "0"}), r"param 'W2', key 'b': not an exponent: null"),
    (_abc(W2={"a": True, "b": "0", "c": "0"}), r"param 'W2', key 'a': not an exponent: true"),
    (_abc(W2={"a": "0", "b": "0"}), r"param 'W2' needs exactly the keys a, b, c \(missing c\)"),
    (_abc(W2={"a": 0, "b": 0, "c": 0, "d": 0}), r"\(unknown 'd'\)"),
    (_abc(W2=[0, 0, 0]), r"param 'W2' needs exactly .* \(got a JSON list\)"),
    (_abc(W9={"a": 0, "b": 0, "c": 0}), r"no param named W9 in the program(.|\n)*W1, b1, W2"),
    (_abc(W2={"a": "oo", "b": "0", "c": "0"}), r"param 'W2': a must be finite"),
    ('{"W1": {"a": 1e999, "b": 0, "c": 0}}', r"key 'a': not an exponent: Infinity"),
    ('{"W1": {"a": 0, "b": 0, "c": 0}, "W1": {"a": 0, "b": 0, "c": 1}}', r"'W1' given twice"),
    ("[1, 2]", r"expected an object .* not a JSON list"),
    ('"W1"', r"expected an object .* not a JSON str"),
    ('{"W1": ', r"invalid JSON"),
    (b"\xff\xfe{}", r"not UTF-8 text \(byte 0\)"),
])
def test_bad_abc_files(capsys, tmp_path, content, message):
    path = tmp_path / "abc.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_cli(capsys, "classify", MLP, "--abc", str(path))
    assert code == 2 and re.search(message, err), err


def test_abc_file_that_is_missing_or_a_directory(capsys, tmp_path):
    for path, why in ((tmp_path / "nope.json", "No such file"), (tmp_path, "Is a directory")):
        code, _, err = run_cli(capsys, "classify", MLP, "--abc", str(path))
        assert code == 2 and "cannot read it" in err and why in err


@pytest.mark.parametrize(("content", "message"), [
    ("{", "invalid JSON"),
    ('{"W1": {"a": 0}}', "needs exactly the keys a, b, c"),
    ('{"W1": {"a": "x", "b": 0, "c": 0}}', "not an exact exponent"),
    ('{"W9": {"a": 0, "b": 0, "c": 0}}', "no param named W9"),
    ('{"W1": {"a": "oo", "b": 0, "c": 0}}', "a must be finite"),
    ('{"W1": {"a": 0, "b": 0, "c": 0}}', "no \\(a, b, c\\) given for param"),
])
def test_classify_bad_abc_file(capsys, tmp_path, content, message):
    path = tmp_path / "abc.json"
    path.write_text(content)
    code, _, err = run_cli(capsys, "classify", MLP, "--abc", str(path))
    assert code == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err)


# --- data files -----------------------------------------------------------------------------------


torch = pytest.importorskip("torch")


def _data_files(tmp_path: Path) -> dict[str, Path]:
    def y():
        return torch.arange(16) % 2

    nan = torch.randn(16, 4)
    nan[3, 2] = math.nan
    blobs = {
        "nan": {"x": nan, "y": y()},
        "inf64": {"x": torch.full((16, 4), 1e300, dtype=torch.float64), "y": y()},
        "sparse": {"x": torch.randn(16, 4).to_sparse(), "y": y()},
        "meta": {"x": torch.empty(16, 4, device="meta"), "y": y()},
        "complex": {"x": torch.randn(16, 4, dtype=torch.complex64), "y": y()},
        "float_y": {"x": torch.randn(16, 4), "y": y().float()},
        "bool_y": {"x": torch.randn(16, 4), "y": y() == 0},
        "huge_y": {"x": torch.randn(16, 4), "y": torch.tensor([0] * 15 + [10 ** 12])},
        "neg_y": {"x": torch.randn(16, 4), "y": torch.tensor([0] * 15 + [-3])},
        "one_class": {"x": torch.randn(16, 4), "y": torch.zeros(16, dtype=torch.long)},
        "empty": {"x": torch.zeros(0, 4), "y": torch.zeros(0, dtype=torch.long)},
        "no_features": {"x": torch.zeros(16, 0), "y": y()},
        "shape": {"x": torch.randn(16, 4), "y": torch.arange(15) % 2},
        "huge_tokens": {"tokens": torch.tensor([1, 2, 10 ** 12])},
        "one_token": {"tokens": torch.zeros(50, dtype=torch.long)},
        "both": {"x": torch.randn(16, 4), "y": y(), "tokens": torch.arange(9)},
        "list": [torch.randn(3)],
        "tensor": torch.randn(3),
        "keys": {"w": torch.randn(3)},
        "x_not_tensor": {"x": [[1.0]], "y": y()},
    }
    out = {}
    for name, blob in blobs.items():
        torch.save(blob, tmp_path / f"{name}.pt")
        out[name] = tmp_path / f"{name}.pt"
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a torch file")
    out["junk"] = tmp_path / "junk.pt"
    (tmp_path / "zero.pt").write_bytes(b"")
    out["zero_bytes"] = tmp_path / "zero.pt"
    return out


DATA_ERRORS = {
    "nan": r"x\[3, 2\] is nan: the data must be finite",
    "inf64": r"x\[0, 0\] is inf once converted to float32",
    "sparse": r"x is a torch.sparse_coo tensor, not a dense one",
    "meta": r"x is a meta tensor",
    "complex": r"x holds complex numbers",
    "float_y": r"y must hold non-negative integer labels, not torch.float32",
    "bool_y": r"y must hold non-negative integer labels, not torch.bool",
    "huge_y": r"y\[15\] is 1000000000000: the output layer would need",
    "neg_y": r"y\[15\] is -3: labels must be non-negative",
    "one_class": r"y holds one class only",
    "empty": r"N > 0",
    "no_features": r"d_in > 0",
    "shape": r"got \(16, 4\) and \(15,\)",
    "huge_tokens": r"tokens\[2\] is 1000000000000",
    "one_token": r"every token is 0",
    "both": r"holds both x, y and tokens",
    "list": r"not a dict of tensors but a list",
    "tensor": r"not a dict of tensors but a Tensor",
    "keys": r"got the keys 'w'",
    "x_not_tensor": r"x is a list, not a tensor",
    # before, torch's unpickling text, which advises weights_only=False (a file that runs code)
    "junk": r"not a tensor file that torch.save wrote \(empty, truncated or another format\)"
            r"(.|\n)*it must hold a dict \{\"x\": float \(N, d_in\)",
    "zero_bytes": r"zero.pt: not a tensor file that torch.save wrote",
}


def test_bad_data_files_are_refused_naming_the_array(capsys, tmp_path):
    files = _data_files(tmp_path)
    assert set(files) == set(DATA_ERRORS)
    for name, message in DATA_ERRORS.items():
        code, _, err = run_cli(capsys, "transfer", MLP, "--data", str(files[name]), "--cache",
                             "none")
        assert code == 2 and re.search(message, err), (name, err)
        assert f"--data {files[name]}" in err


def test_data_path_that_is_missing_or_a_directory(capsys, tmp_path):
    (tmp_path / "dir.pt").mkdir()
    for path, why in ((tmp_path / "none.pt", "no such file"), (tmp_path / "dir.pt",
                                                                "is a directory")):
        code, _, err = run_cli(capsys, "transfer", MLP, "--data", str(path), "--cache", "none")
        assert code == 2 and why in err


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t.to_sparse(), r"X is a torch.sparse_coo tensor, not a dense one"),
    (lambda t: t.index_fill(0, t.new_tensor([1], dtype=int), float("nan")),
     r"X\[1, 0\] is nan: the data must be finite \(the kernel would be nan\)"),
    (lambda t: {"x": t.to("meta")}, "x is a meta tensor"),
])
def test_cli_inputs_get_the_checks_data_files_get(capsys, tmp_path, make, message):
    import torch

    torch.save(make(torch.as_tensor(points(3, 5))), tmp_path / "X.pt")
    (tmp_path / "mlp.tp").write_text(mlp_source(2))
    code, _, err = run_cli(capsys, "limit", str(tmp_path / "mlp.tp"), "--kernel", "--inputs",
                        str(tmp_path / "X.pt"))
    assert code == 2 and re.search(message, err), err


# --- caches ---------------------------------------------------------------------------------------


def test_a_cache_path_that_cannot_hold_the_cache(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(capsys, "transfer", MLP, "--data", "digits", "--cache",
                         str(tmp_path / "file"))
    assert code == 2 and "is a file, not a directory" in err
    code, _, err = run_cli(capsys, "transfer", MLP, "--data", "digits", "--cache",
                         str(tmp_path / "file" / "below"))
    assert code == 2 and "cannot write the trial cache there" in err


# --- the arguments of an emitted module -----------------------------------------------------------


MLP_TEXT = ("width n = 16\ndim d = 3\ndim o = 2\ninput x : [d]\nparam W : [n, d]\n"
            "param R : [o, n]\noutput f = R @ relu(W @ x)\n")


@pytest.fixture(scope="module")
def transformer():
    program = tp.parse_file(ROOT / "examples" / "transformer.tp")
    return load_module(emit_program(program), "transformer_mup")


def test_a_width_the_dims_do_not_divide_is_refused_at_construction(transformer):
    with pytest.raises(ValueError, match=r"width 130: dim dh = n / 4 .* 128 or 132"):
        transformer.Model(130)
    with pytest.raises(ValueError, match=r"width 2: .* multiple of 4: 4$"):
        transformer.Model(2)


@pytest.mark.parametrize("width", [0, -4, True, 12.0, "64", None])
def test_widths_must_be_positive_integers(transformer, width):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        transformer.Model(width)
    with pytest.raises(ValueError, match="base_width must be a positive integer"):
        transformer.Model(64, base_width=width)


@pytest.mark.parametrize(("sizes", "message"), [
    # CompleteP's branch multiplier (depth/base_depth)**-1 is 2.5e11 per block: over 4 blocks the
    # stream reaches e^105, past float32's e^88.7 (inf, then an all-NaN forward)
    ({"depth": 4, "base_depth": 10**12}, r"depth 4, base_depth 1000000000000: the multiplier "
     r"factor of res.W2 \(ratio\*\*0 \* depth_ratio\*\*-1 = e\^26.24, over 4 repetition\(s\) "
     r"e\^105\) leaves torch.float32's range e\^±88.72; keep the sizes nearer their bases"),
    # depth/base_depth underflows to 0.0 and a power of it raises OverflowError or
    # ZeroDivisionError: the factors are taken from the logs of the sizes
    ({"depth": 2, "base_depth": 10**400}, r"the eps factor of res.W1 .* e\^920.3\)"),
    ({"depth": 2, "dtype": "float64", "base_depth": 10**400}, "leaves torch.float64's range"),
])
def test_sizes_whose_factors_leave_the_float_range_are_refused(tmp_path, sizes, message):
    import torch

    program = tp.parse_file(ROOT / "examples" / "resmlp_deep.tp")
    abc, derived, label, eps = choose(program, OPTIMIZERS["adam"])
    path = tmp_path / "deep_factors_mup.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                         depth_abc=derived, eps=eps).source)
    module = import_file(path, "deep_factors_mup")
    sizes = {**sizes, "dtype": getattr(torch, sizes.get("dtype", "float32"))}
    with pytest.raises(ValueError, match=message):
        module.Model(128, device="meta", **sizes)


def test_sizes_whose_factors_stay_in_range_build(tmp_path):
    # 1/depth branches over many blocks shrink, they do not compound; 5e11 over 2 blocks fits
    import torch

    program = tp.parse_file(ROOT / "examples" / "resmlp_deep.tp")
    abc, derived, label, eps = choose(program, OPTIMIZERS["adam"])
    path = tmp_path / "deep_ok_mup.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                         depth_abc=derived, eps=eps).source)
    module = import_file(path, "deep_ok_mup")
    module.Model(128, 1000, device="meta")
    module.Model(64, 1000, device="meta")  # a width factor undoes the fan-in's: no compounding
    model = module.Model(16, 2, base_depth=10**12)
    torch.manual_seed(0)
    assert torch.isfinite(model(*model.example_inputs(batch_size=2))).all()


REPEATED = ("width n = 64\ndim d = 3\ninput x : [d]\nparam W0 : [n, d]\n"
            "block res(h) {\n    param W : [n, n]\n    return h + relu(W @ h)\n}\n"
            "h0 = W0 @ x\noutput y = repeat {count} res(h0)\n")


WIDE_BLOCKS = ("width n = 64\ndim d = 3\ndim big = 10000000 * n\ninput x : [d]\n"
               "param W0 : [n, d]\nblock wide(h) {\n    param U : [big, n]\n"
               "    param V : [n, big]\n    return h + V @ relu(U @ h)\n}\nh0 = W0 @ x\n"
               "output y = repeat 6000 wide(h0)\n")


@pytest.mark.parametrize(("source", "message"), [
    (REPEATED.replace("{count}", "100000000"),
     r"rep.tp:10:12: error: repeat 100000000 res: the emitted module builds one submodule per "
     r"repetition, 100,000,000 repetitions, more than the 100,000 submodules"),
    # fewer repetitions than the limit, but each holds two [n, 10**7 n] matrices: at width 1
    (WIDE_BLOCKS, r"repeat 6000 wide: .* 120,000,000,000 parameters even at width 1, "
     r"more than the 100,000,000,000 it can build"),
])
def test_emit_refuses_a_repeat_count_no_model_can_have(capsys, tmp_path, source, message):
    # before: derive -o wrote the module and Model(64) hung building 10**8 submodules
    (tmp_path / "rep.tp").write_text(source)
    code, _, err = run_cli(capsys, "derive", str(tmp_path / "rep.tp"), "-o",
                           str(tmp_path / "rep_mup.py"))
    assert code == 2 and re.search(message, err), err
    assert "use fewer repetitions, or a depth" in err and not (tmp_path / "rep_mup.py").exists()


def test_model_refuses_sizes_past_the_limits_before_building(tmp_path):
    path = tmp_path / "rep_size_mup.py"
    path.write_text(emit_program(tp.parse(REPEATED.replace("{count}", "1000"))).source)
    module = import_file(path, "rep_size_mup")
    assert module.REPEATS == {"res": 1000}
    with pytest.raises(ValueError, match=r"^width 10000: 100,000,030,000 parameters, more than "
                                         r"the 100,000,000,000 a Model builds; use a smaller"):
        module.Model(10000)
    deep = tp.parse_file(ROOT / "examples" / "resmlp_deep.tp")
    abc, derived, label, _ = choose(deep, OPTIMIZERS["adam"])
    path = tmp_path / "deep_size_mup.py"
    path.write_text(emit(deep, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                         depth_abc=derived).source)
    module = import_file(path, "deep_size_mup")
    with pytest.raises(ValueError, match=r"^100,000,000 block repetitions \(one submodule each\), "
                                         r"more than the 100,000 a Model builds"):
        module.Model(64, 10**8)


@pytest.mark.parametrize("base", [0, True, 130])
def test_emit_refuses_a_bad_base_width(base):
    program = tp.parse_file(ROOT / "examples" / "transformer.tp")
    abc, _, label, _ = choose(program, OPTIMIZERS["adam"])
    with pytest.raises(UsageError, match="base width"):
        emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t", base_width=base)


RATES = [
    ({"lr": math.inf}, "lr must be a finite number >= 0, not inf"),
    ({"lr": -0.01}, "lr must be a finite number >= 0, not -0.01"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0, not nan"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, not -0.1"),
    ({"eps": math.nan}, "eps must be a finite number >= 0, not nan"),
    ({"eps": -1e-8}, "eps must be a finite number >= 0, not -1e-08"),
    ({"adamw_lr": math.inf}, "adamw_lr must be a finite number >= 0, not inf"),
]
# the rates a module takes: eps where Adam's (or Muon's AdamW part's) is emitted, adamw_lr for Muon
TAKES = {"adam": {"lr", "weight_decay", "eps"}, "sgd": {"lr", "weight_decay"},
         "lion": {"lr", "weight_decay"}, "muon": {"lr", "weight_decay", "eps", "adamw_lr"}}


@pytest.mark.parametrize(("derived", "given", "message"), [
    (derived, given, message) for derived, takes in TAKES.items() for given, message in RATES
    if set(given) <= takes])
def test_make_optimizer_refuses_rates_that_make_the_weights_nan(tmp_path, derived, given,
                                                                 message):
    # a NaN, infinite or negative rate is multiplied into every group: the weights are NaN (or
    # climb the loss) from the first step, so param_groups refuses it by name
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    abc, _, label, eps = choose(program, OPTIMIZERS[derived])
    source = emit(program, abc, optimizer=OPTIMIZERS[derived], label=label, command="t",
                  eps=eps).source
    assert ("eps=1e-8" in source) == ("eps" in TAKES[derived])
    path = tmp_path / f"rates_{derived}_mup.py"
    path.write_text(source)
    module = import_file(path, f"rates_{derived}_mup")
    model = module.Model(64)
    given = dict(given)  # the table's dict is shared by the optimizers' cases
    lr = given.pop("lr", 0.01)
    decay = {"decay": "decoupled"} if "weight_decay" in given else {}
    with pytest.raises(ValueError, match=re.escape(message)):
        module.make_optimizer(model, lr, **given, **decay)
    with pytest.raises(ValueError, match=re.escape(message)):
        module.param_groups(model, lr, **given, **decay)

@functools.cache
def _traced_mlp():
    """A traced embedding-MLP-readout and its MuP under Adam (traced once for the MuP rows)."""
    import torch
    from torch import nn

    from tensorprog.fromtorch import MuP, from_torch

    def build(n):
        return nn.Sequential(nn.Embedding(16, n), nn.Linear(n, n), nn.ReLU(), nn.Linear(n, 16))

    traced = from_torch(build, widths=(16, 32),
                        example_inputs=lambda m: (torch.zeros(2, 8, dtype=torch.long),))
    return MuP(traced, "adam"), build


@pytest.mark.parametrize(("given", "message"), [
    ({"lr": math.inf}, "lr must be a finite number >= 0, not inf"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0, not nan"),
    ({"eps": -1e-8}, "eps must be a finite number >= 0, not -1e-08"),
])
def test_mup_param_groups_refuses_rates_that_make_the_weights_nan(given, message):
    # the same refusal as an emitted module's param_groups, for a traced model
    mup, build = _traced_mlp()
    with pytest.raises(UsageError, match=re.escape(message)):
        mup.param_groups(build(64), **{"lr": 1e-3, "decay": "decoupled", **given})


def test_mup_refuses_to_fold_the_attention_scale_into_a_query_normalised_without_a_gain():
    # before: KeyError deep in MuP (HF OLMo-2, 4 heads); the factor cannot live in a weight
    # whose output a norm rescales, and a norm without a gain has no param after it to take it.
    # A norm module of the query's own takes it on its output (tests/fromtorch/
    # test_qknorm_patch.py), one that q and k share the square root of it on each side of the
    # logits; one whose keys something else reads too is refused with what to build instead
    import torch
    from torch import nn

    from tensorprog.fromtorch import MuP, from_torch

    class QKNorm(nn.Module):
        def __init__(self, n, affine=False):
            super().__init__()
            self.emb, self.head = nn.Embedding(16, n), nn.Linear(n, 16)
            self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
            self.qn = nn.LayerNorm(n, elementwise_affine=affine)  # q and k share it

        def forward(self, idx):
            h = self.emb(idx)
            b, t, c = h.shape
            kn = self.qn(self.k(h))
            q, k, v = (z.view(b, t, 4, c // 4).transpose(1, 2)
                       for z in (self.qn(self.q(h)), kn, self.v(h)))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(b, t, c)
            return self.head(h + y + (0 if self.qn.elementwise_affine else kn))  # keys twice

    tokens = lambda m: (torch.zeros(2, 8, dtype=torch.long),)  # noqa: E731
    traced = from_torch(QKNorm, (16, 32), tokens)
    with pytest.raises(UsageError, match=r"(?s)the query \w+ is normalised without a gain.*no "
                       r"module returns that query alone.*shared by q and k.*help: give the "
                       r"query a norm module of its own.*or build the model with a fixed head "
                       r"dim"):
        MuP(traced, "adam")
    # a gain q and k share would take the factor twice, on both sides of the logits (the
    # keys made by the query's layer: tests/fromtorch/test_fold_readers.py)
    traced = from_torch(lambda n: QKNorm(n, affine=True), (16, 32), tokens)
    with pytest.raises(UsageError, match=r"(?s)which apply puts on the query \w+, made by "
                       r"qn.weight.*reads \w+ as its keys, made there too, and the logits would "
                       r"take the factor twice.*help: give the keys a layer of their own"):
        MuP(traced, "adam")


def test_trace_refuses_a_per_head_gate_transposed_by_name():
    # before: "an added axis on a per-token vector" with the generic help; Laguna's
    # attn_output.view(..., H, dh) * softplus(g_proj(h)).unsqueeze(-1) now traces (spread);
    # the same gate against heads moved before the tokens, (B, H, T, dh), is refused
    import torch
    from torch import nn

    from tensorprog.errors import TraceError
    from tensorprog.fromtorch import from_torch

    class Gated(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.emb, self.head = nn.Embedding(16, n), nn.Linear(n, 16)
            self.v, self.g = nn.Linear(n, n), nn.Linear(n, 4)

        def forward(self, idx):
            h = self.emb(idx)
            b, t, c = h.shape
            y = self.v(h).view(b, t, 4, c // 4).transpose(1, 2) * torch.sigmoid(
                self.g(h)).transpose(1, 2).unsqueeze(-1)
            return self.head(h + y.transpose(1, 2).reshape(b, t, c))

    with pytest.raises(TraceError, match=r"(?s)cannot trace a per-head gate whose last axis is "
                       r"not its H entries.*help: give the gate or bias one entry per head"):
        from_torch(Gated, (16, 32), lambda m: (torch.zeros(2, 8, dtype=torch.long),))


def test_apply_refuses_a_forward_patch_on_one_module_instance_every_layer_calls():
    # one parameter-free query norm object held by every layer: the trace sees one call per
    # layer, under each layer's name, but a hook on the object fires at every call, so each
    # layer's patch would scale every layer's query (the factor squared, silently)
    import torch
    from torch import nn

    from tensorprog.fromtorch import MuP, from_torch

    class Net(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.emb, self.head = nn.Embedding(16, n), nn.Linear(n, 16)
            self.q = nn.ModuleList(nn.Linear(n, n) for _ in range(2))
            norm = nn.RMSNorm(n // 4, elementwise_affine=False)
            self.qn = nn.ModuleList([norm, norm])

        def forward(self, idx):
            h = self.emb(idx)
            b, t, c = h.shape
            for q, qn in zip(self.q, self.qn, strict=True):
                z = h.view(b, t, 4, c // 4).transpose(1, 2)
                q = qn(q(h).view(b, t, 4, c // 4)).transpose(1, 2)
                y = nn.functional.scaled_dot_product_attention(q, z, z, is_causal=True)
                h = h + y.transpose(1, 2).reshape(b, t, c)
            return self.head(h)

    traced = from_torch(Net, (16, 32), lambda m: (torch.zeros(2, 8, dtype=torch.long),),
                        blocks=False)
    # its calls are counted per module instance (calls.py), so MuP finds no module that returns
    # either layer's query alone (patches.modules_at refuses the same at apply, as a backstop)
    with pytest.raises(UsageError, match=r"(?s)no module returns that query alone.*called by "
                       r"every layer from one instance.*help: give the query a norm module of its "
                       r"own"):
        MuP(traced, "adam").apply(Net(32))


def test_mup_refuses_a_width_constant_on_a_lookup_no_module_returns_alone():
    # before: its forward patch went on the table's first lookup, so an encoder-decoder's
    # decoder embedding times sqrt(d_model) (PLBart's) got the factor on the encoder's lookup
    # (its check failed at +1.0 and +0.5). A lookup module that applies the constant itself
    # now takes the patch (tests/fromtorch/test_shared_lookups.py); a constant applied in the
    # parent's forward to one of a module's two calls is still refused, saying what to build
    # instead. Where every call carries the same constant, it folds once into the table's
    # init and LR, which covers them all (fromtorch/query_fold.py)
    import torch
    from torch import nn

    from tensorprog.errors import UsageError
    from tensorprog.fromtorch import MuP, from_torch

    class Twice(nn.Module):
        def __init__(self, n, both=False):
            super().__init__()
            self.n, self.emb, self.both = n, nn.Embedding(16, n), both
            self.head, self.head2 = nn.Linear(n, 16), nn.Linear(n, 16)

        def forward(self, idx):
            a = self.emb(idx) * self.n ** 0.5
            b = self.emb(idx) * (self.n ** 0.5 if self.both else 1.0)
            return self.head(a) + self.head2(b)

    def ids(m):
        return (torch.zeros(2, 8, dtype=torch.long),)

    traced = from_torch(Twice, (16, 32), ids)
    with pytest.raises(UsageError, match=r"(?s)a constant of the width multiplies embedding, made "
                       r"by emb.weight, which the model also reads elsewhere.*no module "
                       r"returns that vector alone.*a = self.emb\(idx\) \* self.n \*\* 0.5.*"
                       r"help: look the table up in a module of its own"):
        MuP(traced, "adam")
    both = MuP(from_torch(lambda n: Twice(n, both=True), (16, 32), ids), "adam")
    changes = both.apply(Twice(64, both=True)).as_dict()["changes"]
    assert any(c.startswith("init emb.weight:") and c.endswith("(base 1 x (n/base)^-1/2)")
               for c in changes), changes
    assert any("folded into the init and LR of emb.weight" in c for c in changes), changes


def test_mup_refuses_row_blocks_of_one_tensor_that_need_different_lrs():
    # a fused layer split into a block that grows (a hidden layer's n rows) and one of a fixed
    # size (13 logits added to the readout's: a readout's block) traces as two params
    # (rows.py); µP gives the readout block a different LR under SGD (1/n against 1), and one
    # torch tensor has one LR (under Adam only its eps differs, 1 against 1/n: applied)
    import torch
    from torch import nn

    from tensorprog.errors import UsageError
    from tensorprog.fromtorch import MuP, from_torch

    class Fused(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n, self.emb = n, nn.Embedding(16, n)
            self.fc, self.head = nn.Linear(n, n + 16), nn.Linear(n, 16)

        def forward(self, idx):
            h, skip = self.fc(self.emb(idx)).split([self.n, 16], dim=-1)
            return self.head(torch.relu(h)) + skip

    traced = from_torch(Fused, (16, 32), lambda m: (torch.arange(16).view(2, 8),))
    with pytest.raises(UsageError, match=(
            r"(?s)test_error_catalogue.py:\d+:\d+: error: fc.weight is split into row "
            r"blocks, and µP gives them different LRs: fc_weight_part0 \(n/base\)\^-0, "
            r"fc_weight_part1 \(n/base\)\^-1; one torch tensor.*"
            r"self.fc\(self.emb\(idx\)\).split.*help: use a separate nn.Linear for each "
            r"block")):
        MuP(traced, "sgd")
    # under Adam the blocks share the LR and differ in eps alone, which a scale of the
    # gradient gives each (fromtorch/gradscale.py): applied, not refused
    assert MuP(traced, "adam").grad_scales(Fused(64)).keys() == {"fc.weight", "fc.bias"}
    # before: unpositioned; the scale is registered by apply, which param_groups needs first
    with pytest.raises(UsageError, match=(
            r"(?s)test_error_catalogue.py:\d+:\d+: error: fc.weight: its blocks need different "
            r"Adam eps values, which a scale of its gradient gives them once apply registers "
            r"it.*help: call mup.apply\(model\)")):
        MuP(traced, "adam").param_groups(Fused(64), 1e-2)


def test_mup_refuses_column_blocks_of_one_tensor_whose_lrs_no_column_scale_carries():
    # a concatenation fed to one linear layer traces as its column blocks (ops_concat.py); a
    # part of a fixed size (RoCBert's shape embedding) makes its block an input layer's, whose
    # LR differs from the hidden block's: apply carries that by a scale of the columns
    # (columns.py), but not row blocks of one column block whose LRs differ (here a finite
    # skip split from the output, under SGD), nor any column blocks under Muon
    import torch
    from torch import nn

    from tensorprog.errors import UsageError
    from tensorprog.fromtorch import MuP, from_torch

    class Fixed(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n, self.emb, self.shape = n, nn.Embedding(16, n), nn.Embedding(16, 8)
            self.mix, self.head = nn.Linear(n + 8, n + 16), nn.Linear(n, 16)

        def forward(self, idx):
            x = torch.cat([self.emb(idx), self.shape(idx)], -1)
            h, skip = self.mix(x).split([self.n, 16], dim=-1)
            return self.head(torch.relu(h)) + skip

    traced = from_torch(Fixed, (16, 32), lambda m: (torch.arange(16).view(2, 8),))
    assert "param mix_weight_part1_cols1 : [f16, f8]" in traced.source, traced.source
    with pytest.raises(UsageError, match=r"(?s)test_error_catalogue.py:\d+:\d+: error: "
                       r"mix.weight is applied to a concatenation, and µP gives its column "
                       r"blocks different LRs: mix_weight_part0_cols0 \(n/base\)\^-\S+, .*"
                       r"the row blocks of its columns of part 0 need different LRs as well.*"
                       r"help: apply a separate nn.Linear to each part"):
        MuP(traced, "sgd")
    with pytest.raises(UsageError, match=r"(?s)test_error_catalogue.py:\d+:\d+: error: "
                       r"mix.weight is applied to a concatenation, whose column blocks the "
                       r"program steps as params of their own; muon orthogonalises.*"
                       r"torch.cat\(\[self.emb.*help: apply a separate nn.Linear"):
        MuP(traced, "muon")
    assert MuP(traced, "adam").column_scales(Fixed(64)).keys() == {"mix.weight"}


def test_derive_refusing_a_traced_bottleneck_names_the_dim_the_model_fixes():
    # before: only "linear_2 vanishes at init as 1/n", far from the cause (an inner size of 48
    # at every width); now derive names the bottleneck, at the user's line of the layer that
    # narrows the width, and the trace's note comes with it, naming the dim and the modules
    import torch
    from torch import nn

    from tensorprog.errors import EngineError
    from tensorprog.fromtorch import MuP, from_torch

    class Gated(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.emb, self.head = nn.Embedding(16, n), nn.Linear(n, 16)
            self.gate, self.up = nn.Linear(n, 48, bias=False), nn.Linear(n, 48, bias=False)
            self.down = nn.Linear(48, n, bias=False)

        def forward(self, idx):
            h = self.emb(idx)
            return self.head(h + self.down(nn.functional.silu(self.gate(h)) * self.up(h)))

    traced = from_torch(Gated, (16, 32), lambda m: (torch.zeros(2, 8, dtype=torch.long),))
    with pytest.raises(EngineError, match=r"(?s)test_error_catalogue.py:\d+:\d+: error: linear = "
                       r"gate_weight @ embedding narrows the width to the finite dim f48 inside "
                       r"the network.*linear vanishes at init as 1/√n.*\(traced.tp:\d+: linear "
                       r"= gate_weight @ embedding\).*self.gate\(h\).*note: the trace noted: "
                       r"dim f48 stays 48 while the width grows: gate \(and 1 more\) maps the "
                       r"width to 48 and down maps it back.*intermediate_size = 4 \* width"):
        MuP(traced, "adam")


@pytest.mark.parametrize("method", ["forward", "vectors"])
def test_a_sequence_longer_than_the_position_table_is_refused(tmp_path, method):
    # before, positions were arange(T) whatever the input's length: a longer (or shorter)
    # sequence failed to broadcast inside forward; now shorter ones run, longer are refused
    program = tp.parse_file(ROOT / "examples" / "gpt.tp")
    abc, _, label, eps = choose(program, OPTIMIZERS["adam"])
    path = tmp_path / "seq_mup.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                         eps=eps).source)
    module = import_file(path, f"seq_{method}_mup")
    model = module.Model(32)
    tok = torch.zeros(2, 9, dtype=torch.long)
    message = ("the input has 9 tokens, more than the position table's 4 rows: feed at most 4, "
               "or build the Model with a seq_len of at least 9")
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(model, method)(tok)
    getattr(module.Model(32, seq_len=9), method)(tok)  # a table of 9 rows takes them


@pytest.mark.parametrize(("seq_len", "message"), [
    (0, "seq_len must be a positive integer, not 0"),
    (-3, "seq_len must be a positive integer, not -3"),
    (2.0, "seq_len must be a positive integer, not 2.0"),
    (10**12, "seq_len 1000000000000: the position table would hold 32,000,000,000,000 "
             "parameters at width 32, more than the 100,000,000,000 a Model builds"),
])
def test_a_seq_len_with_no_position_table_is_refused_at_construction(seq_len, message):
    gpt = import_file(ROOT / "tests" / "golden" / "gpt_mup.py", "gpt_seq_len_golden")
    with pytest.raises(ValueError, match=re.escape(message)):
        gpt.Model(32, seq_len=seq_len)


@pytest.mark.parametrize(("decay_params", "message"), [
    ("matrix", "decay_params must be 'matrices', 'all', a function (name, tensor) -> bool or a "
               "set of param names, not 'matrix'"),
    (2, "decay_params must be 'matrices', 'all', a function"),
    ({"W_1"}, "decay_params names no param of this model: W_1 (its params: "),
])
def test_param_groups_refuses_a_bad_decay_params(tmp_path, decay_params, message):
    # a typo in a name would silently leave that param undecayed: refused, naming the params
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    abc, _, label, eps = choose(program, OPTIMIZERS["adam"])
    path = tmp_path / "decay_params_mup.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t",
                         eps=eps).source)
    module = import_file(path, "decay_params_mup")
    with pytest.raises(ValueError, match=re.escape(message)):
        module.make_optimizer(module.Model(64), 0.01, weight_decay=0.1, decay="decoupled",
                              decay_params=decay_params)


@pytest.mark.parametrize(("decay_params", "message"), [
    ("matrix", "decay_params must be 'matrices', 'all', a function (name, param) -> bool or a "
               "set of the model's param names, not 'matrix'"),
    ({"1.weight", "2.wieght"}, "decay_params names no param of the model: 2.wieght "
                               "(see model.named_parameters())"),
])
def test_mup_param_groups_refuses_a_bad_decay_params(decay_params, message):
    mup, build = _traced_mlp()
    with pytest.raises(UsageError, match=re.escape(message)):
        mup.param_groups(build(64), lr=1e-3, weight_decay=0.1, decay="decoupled",
                         decay_params=decay_params)


@pytest.mark.parametrize(("layers", "base_depth", "message"), [
    (0, 2, "base_depth is given, but the traced program has no depth (no stack of identical "
           "layers was rolled into a block: see the notes in its source)"),
    (2, 0, "base_depth must be a whole number of layers >= 1, not 0"),
    (2, 1.5, "base_depth must be a whole number of layers >= 1, not 1.5"),
])
def test_mup_refuses_a_base_depth_it_cannot_use(layers, base_depth, message):
    import torch
    from torch import nn

    from tensorprog.fromtorch import MuP, from_torch

    class Net(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.emb, self.out = nn.Embedding(16, n), nn.Linear(n, 16)
            self.layers = nn.ModuleList(nn.Linear(n, n) for _ in range(layers))

        def forward(self, idx):
            h = self.emb(idx)
            for layer in self.layers:
                h = h + layer(h)
            return self.out(h)

    traced = from_torch(Net, widths=(16, 32),
                        example_inputs=lambda m: (torch.zeros(2, 8, dtype=torch.long),))
    with pytest.raises(UsageError, match=re.escape(message)):
        MuP(traced, "adam", base_depth=base_depth)
    if layers:  # the same refusal from apply
        with pytest.raises(UsageError, match=re.escape(message)):
            MuP(traced, "adam").apply(Net(16), base_depth=base_depth)


@pytest.mark.parametrize("derived, other, same", [
    ("adam", "sgd", "adam or adamw"), ("sgd", "adam", "sgd or momentum"),
    ("muon", "adam", "muon"), ("lion", "adamw", "lion")])
def test_make_optimizer_refuses_an_optimizer_of_other_exponents(tmp_path, derived, other, same):
    # the lr (and eps) exponents hold for the optimizer they were derived for and its exact
    # equivalents only: a Muon module under Adam would scale its hidden lr wrongly, silently
    path = tmp_path / f"opt_{derived}_mup.py"
    source = emit_program(tp.parse(MLP_TEXT), optimizer=derived).source
    # the coupled-decay refusal is emitted where it can fire only
    assert ("decays decoupled only" in source) == (derived in ("lion", "muon"))
    path.write_text(source)
    module = import_file(path, f"opt_{derived}_mup")
    model = module.Model(32)
    with pytest.raises(ValueError, match=f"derived for {derived}, not .{other}. .use {same}.*"
                                         f"tensorprog derive --optimizer {other}"):
        module.make_optimizer(model, 0.01, optimizer=other)
    for name in same.split(" or "):
        module.make_optimizer(model, 0.01, optimizer=name)


@functools.cache
def _tuned_module(program="mlp", param="mup", convention="table3", optimizer="adam",
                  d_in=3072):
    text = (ROOT / "examples" / f"{program}.tp").read_text()
    program = tp.parse(text.replace("dim d_in = 3072", f"dim d_in = {d_in}"))
    opt = OPTIMIZERS[optimizer]
    abc, depth_abc, label, eps = choose(program, opt, param, convention)
    source = emit(program, abc, optimizer=opt, label=label, command="t", depth_abc=depth_abc,
                  eps=eps).source
    return load_module(tp.emit.module.Emitted(source), param)


@pytest.mark.parametrize(("tuned_for", "change", "message"), [
    # another program, parametrization, convention, optimizer or data dims: told apart by the
    # scaling the file records, whatever its names say
    ({"program": "transformer"}, {}, "this module has no param 'E'; emit the module of the "
                                     "program tune was given"),
    # SP keeps Adam's eps fixed (no eps exponent): the first difference in name order
    ({"param": "sp"}, {"param": "sp"}, "param 'W1' has eps None there, 1.0 here; emit the "
                                       "module of the program tune was given, with the dims it "
                                       "set: tensorprog derive PROGRAM -o FILE --param sp"),
    ({"convention": "mup"}, {"convention": "mup"}, "param 'W3' has a 1.0 there, 0.0 here"),
    ({"optimizer": "sgd"}, {"optimizer": "sgd"}, "has c -1.0 there, 0.0 here"),
    ({"d_in": 64}, {}, "param 'W1' has fan_in [64.0, 0] there, [3072.0, 0] here"),
    ({}, {"base_width": 128}, "for base_width 128, this module's is 256"),
    ({}, {"scaling": None}, "not a file of tuned values with the scaling they were tuned for"),
    ({}, {"lr": -1}, "the tuned lr must be a positive number, not -1"),
])
def test_tuned_values_of_another_module_are_refused_by_it(tuned_for, change, message):
    from tensorprog.numerics.tune import scaling_record

    theirs = _tuned_module(**tuned_for)
    config = {"format": "tensorprog-tune/1", "program": "p", "param": "mup",
              "convention": "table3", "optimizer": "adam", "base_width": 256, "lr": 1e-3,
              "init_std": {}, "mult": {}, **scaling_record(theirs), **change}
    config = {k: v for k, v in config.items() if v is not None}
    mlp = _tuned_module()
    with pytest.raises(ValueError, match=re.escape(message)):
        mlp.Model.from_config(config, 256, device="meta")
    with pytest.raises(ValueError, match=re.escape(message)):
        mlp.make_optimizer(mlp.Model(16), config=config)



def test_apply_names_the_params_that_give_another_width():
    # before: "its params give [Fraction(96, 1), Fraction(128, 1)]", with no param named
    torch = pytest.importorskip("torch")
    from tensorprog.fromtorch import MuP, from_torch

    class RoundedMLP(torch.nn.Module):
        """An MLP LM whose hidden size is 4n up to width 64 and 3n past it (as a size that a
        config rounds up to a multiple of 256 does: LFM2's MLP)."""

        def __init__(self, n):
            super().__init__()
            hidden = 4 * n if n <= 64 else 3 * n
            self.e, self.up = torch.nn.Embedding(16, n), torch.nn.Linear(n, hidden)
            self.down, self.out = torch.nn.Linear(hidden, n), torch.nn.Linear(n, 16)

        def forward(self, idx):
            return self.out(self.down(torch.relu(self.up(self.e(idx)))))

    traced = from_torch(RoundedMLP, (32, 64), lambda m: (torch.zeros(2, 4, dtype=torch.long),))
    with pytest.raises(UsageError, match=r"cannot tell this model's width: its params give 96 "
                       r"from up.weight \(n_x4 = 384\), 128 from e.weight") as err:
        MuP(traced, "adam").apply(RoundedMLP(128))
    assert "keeps the proportion it had in the trace" in str(err.value)
