"""The language's functions of one vector: one row per nonlinearity, the one list every stage reads.

Each row says what the engine needs to know of a function, and what the emitter and the limits
compute it with:

* ``scaling``: how the function maps the size exponent of its input (the engine's Nonlin rule):
  ``linear``: φ(x) ~ x both near 0 and at infinity (relu, gelu, silu, hardswish, identity, the
  pools, ``grn``, and ``first``, one token's vector read out of a sequence: size passes
  through); ``bounded``: φ(x) ~ x near 0 but saturates (tanh, relu6); ``offset``: φ(0) ≠ 0 and
  bounded (sigmoid, hardsigmoid, and a softmax over finitely many tokens: Θ(1) whatever the
  input); ``shifted``: φ(0) ≠ 0 and φ(x) ~ x for large x, unbounded (softplus, log(1 + e^x):
  log 2 at 0, slope 1/2 there, a relu far out; sqrt of a value bounded below by a positive
  number, see its row), so a vanishing input gives Θ(1) and a growing one passes its size on;
  ``exponential``: e^x, φ(0) = 1 and φ' = φ, so a vanishing or Θ(1) input gives Θ(1) and
  passes a change on (φ' = Θ(1) there); a growing input grows it faster than any power
  (counted as at least the input's size: unstable either way, as it is);
  ``normalize``: divides by the input's own RMS (layernorm, rmsnorm, batchnorm, groupnorm:
  Θ(1) output, a change counted relative to the input's size).
* ``at_zero``: φ(0) for a coordinatewise function (the limit of φ of a vanishing vector); None for
  the functions that act over a whole axis (norms, softmaxes, pools).
* ``bounds``: an interval holding every value φ takes (sigmoid's [0, 1], exp's [0, ∞)), from
  which :mod:`tensorprog.ir.ranges` bounds a value computed from it; (-∞, ∞) where nothing is
  claimed (the norms, the pools).
* ``torch``: the torch function the emitted module calls for it (the norms and pools are written
  out by the emitter around it), with ``keywords``: the constant keyword arguments of that call
  (``cap``'s bound, ``torch.clamp(x, max=1.0)``).

Tables elsewhere that name functions (the emitter's expressions, the limits' numpy functions, the
tracer's recognisers) cover a subset of these rows; a test checks that they agree with this one.
``mul`` (the product of two vectors) is the other Nonlin: it has two arguments and no row here,
and so have ``dwconv`` and ``tconv`` (depthwise convolutions, see ``DWCONV`` and ``TCONV``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    name: str
    scaling: str  # "linear" | "bounded" | "offset" | "shifted" | "exponential" | "normalize"
    at_zero: float | None
    torch: str
    keywords: tuple[tuple[str, float], ...] = ()
    bounds: tuple[float, float] = (-math.inf, math.inf)


MUL = "mul"
#: ``dwconv(K, h)``: a depthwise (per-channel) convolution of an image-valued vector h of dim c by
#: a kernel param K [c, kh, kw]: out[c] = sum over the kh·kw taps of K[c, tap]·shift_tap(h)[c]
#: (stride 1, same-padded). Each channel reads only itself, so for the width exponents it is a
#: product of a vector param (a gain) and a vector, summed over finitely many shifts (+0): the
#: engine derives it with ``mul``'s rules, and its kernel gets a gain's scaling.
DWCONV = "dwconv"
#: ``tconv(D, h, p)``: a depthwise convolution over the tokens of a per-token vector h of dim c by
#: a kernel param D [c, one, K] (torch's Conv1d weight, groups = c): y_t = sum over the K taps of
#: D[c, 0, k]·h_{t-p+k}, zeros where no token comes (``tconv(D, h)``: p = K - 1, causal, the
#: short convolution of LFM, Mamba and linear attention; p = (K - 1) // 2: same-padded). A gain
#: per channel summed over finitely many token shifts: derived with ``mul``'s rules, as dwconv's
TCONV = "tconv"
#: the Nonlins of two arguments whose sizes multiply: a coordinatewise product, and a depthwise
#: convolution (a coordinatewise product per tap, summed over finitely many taps)
PRODUCTS = (MUL, DWCONV, TCONV)
#: ``spread(g, dh)``: a vector g of H entries (one number per head) repeated over each head's dh
#: coordinates, a vector of H·dh (torch's ``g.repeat_interleave(dh, -1)``, HF's
#: ``g.unsqueeze(-1)`` against a (…, H, dh) view): one gate or bias per head. It has one
#: argument and no row here: its output has another dim than its input's
SPREAD = "spread"
#: ``part(x, d, i)``: coordinates i·d .. (i+1)·d - 1 of x, the i-th of its parts of d coordinates
#: (torch's ``x.unflatten(-1, (-1, d))[..., i, :]``: Gemma 4's per-layer inputs, one vector of
#: L·d features per token whose layer i reads part i). Every coordinate of the result is one of
#: x's, so sizes pass through as ``first``'s; its output has another dim than its input's, so
#: it has no row here either
PART = "part"
#: ``shift(h, k)``: h's token vectors moved k tokens later (y_t = h_{t-k}; k < 0: earlier), a
#: vector of zeros where no token comes (torch's ``F.pad(h[:, :-k], (0, 0, k, 0))``; MobileBERT's
#: trigram input concatenates ``shift(e, -1)``, ``e`` and ``shift(e, 1)``). Every coordinate of
#: the result is one of h's or 0 over finitely many tokens, so sizes pass through as ``first``'s;
#: its second argument is a number, not a vector, so it has no row here either
SHIFT = "shift"
#: ``cat(a, b, ..., D)``: the coordinates of a, then b's, ... (torch's ``torch.cat([a, b], -1)``):
#: a vector of D, the sum of the parts' dims, every one finite (Perceiver's image input, 256
#: channels of a 1x1 convolution and 256 of learned positions, normalised together). A fixed
#: number of finite parts: its RMS is its largest part's up to a constant, so its sizes are the
#: largest of the parts' (``tensorprog.engine.rules_spread``); its output has another dim than
#: its inputs', so it has no row here either. ``cat(a, b, D, dv)`` (``Nonlin.heads``): the same
#: coordinates permuted, each head of dv a's head then b's (DiffLlama's attention outputs)
CAT = "cat"
#: ``at(g, win)``: a value g over the offsets of a window (one row per offset of an ``offsets``
#: input's B = (2w-1)², values computed from ``offsets[B, E]`` by per-offset layers) read at each
#: (query, key) pair's offset in the windows ``win`` (one-hot over the same B), plus win's
#: shifted mask: Swin V2's continuous position bias, 16·sigmoid(MLP(coordinates)) read at
#: ``relative_position_index``. Each pair's coordinates are one of g's rows (a finite gather):
#: sizes pass through as ``first``'s. Its second argument is an input, not a vector of g's dim,
#: so it has no row here either
AT = "at"
#: ``place(v, h, k)``: h's token vectors with tokens k .. k+S-1 replaced by v's, in order, v a
#: sequence of S tokens (torch's ``h.masked_scatter(mask, v)`` where the mask holds one block of
#: S whole tokens from token k, the same in every sequence: Gemma 3's image features put where
#: the prompt holds the image's placeholder tokens). Every token of the result is one of h's or
#: one of v's, over finitely many tokens, so its sizes are the larger of the two (prepend's);
#: its third argument is a number, so it has no row here
PLACE = "place"
#: ``pick(y, D, i1, ..., ik)``: coordinates i1, ..., ik of y, a vector of a finite dim, in that
#: order, a vector of D (k coordinates; torch's ``y[..., [i1, ..., ik]]``: ShieldGemma-2's logits
#: of its two answers, two ids of its LM's vocabulary). Every coordinate of the result is one of
#: y's, so sizes pass through as ``part``'s; its output has another dim, so no row here either
PICK = "pick"
#: ``rms(x, D)``: the root mean square of x's coordinates, sqrt(mean_i x_i²), one number per
#: token as a vector of D (one coordinate: ``dim D = 1``), which ``spread(r, d)`` lays over d
#: coordinates (Gemma 3n's AltUp rescales each stream to the embedding's RMS,
#: ``spread(rms(e, D), n) * rmsnorm(h)``). As large as x's coordinates and changing at most as
#: they do (|RMS(x + Δx) - RMS(x)| <= RMS(Δx)); its gradient to x_i is dr·x_i / (d·RMS(x)), a
#: share of one over x's d coordinates (-1 over a growing d, no sum). Its output has another dim
#: than its input's, so it has no row here either
RMS = "rms"

FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("relu", "linear", 0.0, "torch.relu", bounds=(0.0, math.inf)),
    Function("gelu", "linear", 0.0, "torch.nn.functional.gelu"),
    # gelu's tanh approximation (GPT-2's gelu_new, Gemma's gelu_pytorch_tanh): within 2e-4 of
    # gelu everywhere, 0 at 0 with slope 1/2, so gelu's class
    Function("gelu_tanh", "linear", 0.0, "torch.nn.functional.gelu", (("approximate", "tanh"),)),
    Function("tanh", "bounded", 0.0, "torch.tanh", bounds=(-1.0, 1.0)),
    # min(max(x, 0), 6) (MobileNet's ReLU6): a relu near 0, capped at 6, so bounded as tanh is
    Function("relu6", "bounded", 0.0, "torch.nn.functional.relu6", bounds=(0.0, 6.0)),
    # clamp to [-1, 1]: c * hardtanh(x / c) is a clamp to [-c, c] (gpt-oss's and MiniMax's
    # swiglu_limit on the up projection); the identity near 0, capped both ways, as tanh is
    Function("hardtanh", "bounded", 0.0, "torch.nn.functional.hardtanh", bounds=(-1.0, 1.0)),
    # min(x, 1): c * cap(x / c) is a clamp at c from above for c > 0 (their gate's
    # clamp(max=limit)) and from below for c < 0. It caps one side only: the other grows as x
    # does, so size passes through as a relu's
    Function("cap", "linear", 0.0, "torch.clamp", (("max", 1.0),), bounds=(-math.inf, 1.0)),
    # max(x, 1): c * atleast(x / c) is a clamp at c from below for c > 0 (Mamba-2's steps
    # clamped to time_step_limit = (lo, inf)) and from above for c < 0. 1 at 0 and x itself far
    # out, unbounded, its slope 0 or 1: a vanishing input gives Θ(1), a growing one passes its
    # size on, a change passes through at most at its own size: softplus's class
    Function("atleast", "shifted", 1.0, "torch.clamp", (("min", 1.0),), bounds=(1.0, math.inf)),
    Function("sigmoid", "offset", 0.5, "torch.sigmoid", bounds=(0.0, 1.0)),
    # x for x > 0, e^x - 1 below (nn.ELU's, alpha 1): 0 at 0 with slope 1 on both sides, the
    # identity far out on the right and bounded by -1 on the left, its slope in (0, 1]: a
    # relu's class. It writes expm1 of a value kept <= 0, expm1(min(x, 0)) = elu(x) - relu(x)
    # (xIELU's negative piece, fromtorch/ops_switch.py)
    Function("elu", "linear", 0.0, "torch.nn.functional.elu", bounds=(-1.0, math.inf)),
    Function("silu", "linear", 0.0, "torch.nn.functional.silu"),
    # x·relu6(x + 3)/6 (MobileNetV3's, LeViT's, PP-LCNet's): 0 at 0 with slope 1/2 there (x/2
    # + x²/6 on [-3, 3]), x itself past 3 and 0 below -3, so a relu near 0 and far out alike:
    # a vanishing input's size passes on halved, a growing one's passes on as relu's (never
    # capped), and φ' is in [-1/2, 3/2], Θ(1) at 0: silu's class, not relu6's
    Function("hardswish", "linear", 0.0, "torch.nn.functional.hardswish"),
    # relu6(x + 3)/6 (MobileNetV3's squeeze-excitation gate): 1/2 at 0, clamped to [0, 1], so
    # Θ(1) whatever its input's size and its change capped: sigmoid's class
    Function("hardsigmoid", "offset", 0.5, "torch.nn.functional.hardsigmoid",
             bounds=(0.0, 1.0)),
    # log(1 + e^x) (Laguna's per-head attention gate): log 2 at 0, a relu far out; φ' =
    # sigmoid, in (0, 1), so a change passes through uncapped
    Function("softplus", "shifted", math.log(2.0), "torch.nn.functional.softplus",
             bounds=(0.0, math.inf)),
    # e^x (Swin V2's per-head temperature exp(min(logit_scale, log 100))): 1 at 0, φ' = e^x,
    # Θ(1) wherever x is O(1); so a function of a Θ(1) param keeps the param's exponents
    Function("exp", "exponential", 1.0, "torch.exp", bounds=(0.0, math.inf)),
    # √x (Ergo's residual gate sqrt(1 + sigmoid(w))): its slope 1/(2√x) grows without bound
    # near 0, so the language takes it only of a value bounded below by a number m > 0
    # (ir/ranges.py proves it, the verifier refuses anything else). There √x ≤ √m/2 +
    # x/(2√m) and its slope is at most 1/(2√m): Θ(1) of a Θ(1) input with a change passed on,
    # and no larger than its input where that grows (its square root, overestimated):
    # softplus's class, which says exactly that (an input bounded below by m never vanishes)
    Function("sqrt", "shifted", 0.0, "torch.sqrt", bounds=(0.0, math.inf)),
    Function("identity", "linear", 0.0, ""),  # the input itself: no call
    Function("layernorm", "normalize", None, "torch.nn.functional.layer_norm"),
    Function("rmsnorm", "normalize", None, "torch.rsqrt"),
    Function("softmax", "offset", None, "torch.softmax"),
    Function("causal_softmax", "offset", None, "torch.softmax"),
    Function("avgpool", "linear", None, "torch.nn.functional.avg_pool2d"),
    Function("global_pool", "linear", None, ".mean"),
    Function("maxpool", "linear", None, "torch.nn.functional.max_pool2d"),
    # the max over each pixel's 3x3 neighbourhood (same-padded, stride 1): torchvision's stem
    # pool MaxPool2d(3, 2, 1) is exactly subsample(maxpool3(h))
    Function("maxpool3", "linear", None, "torch.nn.functional.max_pool2d"),
    # the mean over each pixel's 3x3 neighbourhood (same-padded, stride 1), the padding not
    # counted (AvgPool2d(3, 1, 1, count_include_pad=False): PoolFormer's token mixer)
    Function("avgpool3", "linear", None, "torch.nn.functional.avg_pool2d"),
    # the max over each pixel's 2x2 block to its right and below, the image padded by a row and
    # a column of zeros at the bottom and right: HGNet's stem pool, F.pad(x, (0, 1, 0, 1)) then
    # MaxPool2d(2, stride=1) (its max takes 0 at the last row and column)
    Function("maxpool2", "linear", None, "torch.nn.functional.max_pool2d"),
    # the max over each pixel's 3x3 neighbourhood, the image padded by zeros (0 joins the max
    # at the border): BiT's stem pool, F.pad(x, (1, 1, 1, 1)) then MaxPool2d(3, stride 2), is
    # exactly subsample(maxpool3z(h))
    Function("maxpool3z", "linear", None, "torch.nn.functional.max_pool2d"),
    # every other pixel (a kernel-1, stride-2 average pool): a stride-2 convolution is the
    # stride-1 one read at every other pixel, so `subsample(K @ h)` writes it exactly
    Function("subsample", "linear", None, "torch.nn.functional.avg_pool2d"),
    # each channel normalised over the batch and the pixels (BatchNorm in training mode): a
    # coordinate's own statistics, so its size divides out as a layernorm's does
    Function("batchnorm", "normalize", None, "torch.nn.functional.batch_norm"),
    # each image normalised over all its channels and pixels together (GroupNorm with one
    # group, PoolFormer's): one sample's own statistics, so its size divides out as a
    # layernorm's does
    Function("groupnorm", "normalize", None, "torch.nn.functional.group_norm"),
    # ConvNeXt V2's Global Response Normalization without its gain, bias and residual: each
    # channel times its L2 norm over the image's pixels, over the mean of those norms over the
    # channels, x * G(x) / mean_c G(x). Positively homogeneous (grn(c x) = c grn(x), eps aside)
    # and the factor G / mean G is Θ(1) whatever x's size: a size passes through, as relu's
    Function("grn", "linear", None, "torch.linalg.vector_norm"),
    # the first token's vector (BERT's pooler, a ViT's class-token readout): one token's
    # coordinates, as large as any token's, and its gradient reaches that token alone
    Function("first", "linear", None, ".select"),
    # the last token's vector (a causal LM's answer read at its last token: ShieldGemma-2's Yes
    # and No logits): one token's coordinates, as first's
    Function("last", "linear", None, ".select"),
)}

#: The names, in the order the language lists them.
NONLINEARITIES = tuple(FUNCTIONS)
#: The coordinatewise functions: φ applied to each coordinate, with a value at 0.
COORDINATEWISE = tuple(name for name, f in FUNCTIONS.items() if f.at_zero is not None)
#: functions of an image's pixels, by the factor they divide its size by: 2x2 average and max
#: pooling, every other pixel, a 3x3 max or mean and a zero-padded 2x2 max that keep the size,
#: and the global average (None)
POOLS = {"avgpool": 2, "maxpool": 2, "subsample": 2, "maxpool3": 1, "avgpool3": 1, "maxpool2": 1,
         "maxpool3z": 1, "global_pool": None}


def pooled(fn: str, size: tuple[int, int]) -> tuple[int, int] | None:
    """An image's height and width after ``fn`` (None: no pixels left, a global pool): a 2x2
    pool drops an odd last row (torch's floor), ``subsample`` keeps it (pixels 0, 2, 4, ...)."""
    k = POOLS[fn]
    if k is None:
        return None
    if fn == "subsample":
        return (-(-size[0] // k), -(-size[1] // k))
    return (size[0] // k, size[1] // k)


def torch_function(torch, name: str):
    """The torch callable of a coordinatewise function, looked up in ``torch`` (passed in, so this
    module imports nothing): what the limits' finite networks and the tracer compute it with."""
    row = FUNCTIONS[name]
    if not row.torch:
        return lambda x: x
    fn = torch
    for part in row.torch.split(".")[1:]:
        fn = getattr(fn, part)
    if row.keywords:
        return lambda x, fn=fn, kw=dict(row.keywords): fn(x, **kw)
    return fn


def torch_call(name: str, x: str) -> str:
    """The emitted call of a coordinatewise function on the expression ``x``: its torch
    function with its constant keyword arguments."""
    row = FUNCTIONS[name]
    return f"{row.torch}({x}{''.join(f', {k}={v!r}' for k, v in row.keywords)})"
