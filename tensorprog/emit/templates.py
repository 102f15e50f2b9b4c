"""The emitted module's fixed text: the helpers an instruction may need, the checks of Model's
arguments, the base constants' overrides, and the few lines that differ only by a name.

Nothing here reads the program: each fragment is emitted as it stands (a helper only when an
instruction needs it, ``CHECK_DEPTH`` only for a program with a depth).
"""

from __future__ import annotations

from .ddot import DDOT_HELPER
from .literals import quoted
from .ssd import SSD_HELPER
from .wkv import WKV_HELPER

# module-level helpers, emitted only when an instruction needs them
HELPERS = {
    "_ssd": SSD_HELPER,  # Mamba-2's state-space mixing weights: emit/ssd.py
    "_ddot": DDOT_HELPER,  # a per-head dot decayed per key channel: emit/ddot.py
    "_wkv": WKV_HELPER,  # RWKV's time mixing per channel: emit/wkv.py
    "_heads_dot": [
        "def _heads_dot(q, k, head_dim):",
        '    """Per head and (query, key) token pair: (..., heads, tokens, tokens)."""',
        "    q = q.unflatten(-1, (-1, head_dim))",
        "    k = k.unflatten(-1, (-1, head_dim))",
        '    return torch.einsum("...thd,...shd->...hts", q, k)'],
    "_heads_rmsnorm": [
        "def _heads_rmsnorm(x, head_dim):",
        '    """RMSNorm over each head\'s head_dim coordinates (QK-norm)."""',
        "    x = x.unflatten(-1, (-1, head_dim))",
        "    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).flatten(-2)"],
    "_heads_groupnorm": [
        "def _heads_groupnorm(x, group_dim):",
        '    """Each channels-last image normalised over each group of group_dim channels and its',
        '    pixels together (GroupNorm of c / group_dim groups, without its affine part)."""',
        "    groups = x.shape[-1] // group_dim",
        "    return torch.nn.functional.group_norm(x.movedim(-1, 1), groups).movedim(1, -1)"],
    "_heads_layernorm": [
        "def _heads_layernorm(x, head_dim):",
        '    """LayerNorm over each head\'s head_dim coordinates (QK-norm)."""',
        "    x = x.unflatten(-1, (-1, head_dim))",
        "    return torch.nn.functional.layer_norm(x, x.shape[-1:]).flatten(-2)"],
    "_heads_gain": [
        "def _heads_gain(x, gain):",
        '    """Every head of x times the same gain, of the head dim."""',
        "    return (x.unflatten(-1, (-1, gain.shape[-1])) * gain).flatten(-2)"],
    "_cat": [
        "def _cat(*parts):",
        '    """The parts\' features side by side, each broadcast over the others\' leading axes',
        '    (a position table\'s rows have no batch axis)."""',
        "    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))",
        "    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)"],
    "_cat_heads": [
        "def _cat_heads(heads, *parts):",
        '    """The parts\' heads side by side in each head: head h of the result is head h of',
        '    every part in turn (torch.cat of (..., heads, d) views along d)."""',
        "    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))",
        "    views = [p.expand(*lead, p.shape[-1]).unflatten(-1, (heads, -1)) for p in parts]",
        "    return torch.cat(views, dim=-1).flatten(-2)"],
    "_heads_bias": [
        "def _heads_bias(bias, n):",
        '    """A bias of the head dim repeated for every head of a vector of n features."""',
        "    return bias.repeat(n // bias.shape[-1])"],
    "_mix": [
        "def _mix(p, v):",
        '    """Per head, out_t = sum_s p_ts v_s; heads are v\'s dim split as p has them."""',
        "    v = v.unflatten(-1, (p.shape[-3], -1))",
        '    return torch.einsum("...hts,...shd->...thd", p, v).flatten(-2)'],
    "_repeat_kv": [
        "def _repeat_kv(x, dim, head_dim):",
        '    """Grouped-query attention: each head of x serves as many consecutive query heads as',
        "    dim (the queries' dim) holds groups of x's dim, so it is repeated that many times in",
        '    place (torch.repeat_interleave, as Hugging Face\'s repeat_kv does)."""',
        "    x = x.unflatten(-1, (-1, head_dim))",
        "    return x.repeat_interleave(dim // (x.shape[-2] * head_dim), dim=-2).flatten(-2)"],
    # dense over the experts: every expert is computed and the unselected ones masked, which
    # costs E experts' compute instead of k; fine at the sizes a coordinate check runs
    "_route": [
        "def _route(g, k, normalise, *experts):",
        '    """Sum over the k largest gates of gate times expert (normalise: the k gates divided',
        '    by their sum), every expert computed and the unselected ones given weight 0."""',
        "    top = torch.topk(g, k, dim=-1)",
        "    w = torch.zeros_like(g).scatter(-1, top.indices, top.values)",
        "    if normalise:",
        "        w = w / top.values.sum(-1, keepdim=True)",
        '    return torch.einsum("...e,...ed->...d", w, torch.stack(experts, -2))'],
    "_route_in": [
        "def _route_in(g, k, i, x):",
        '    """Expert i\'s input: x times gate i where it is among the k largest gates, else 0',
        '    (every expert is run on its gated input, the unselected ones on 0)."""',
        "    top = torch.topk(g, k, dim=-1)",
        "    w = torch.zeros_like(g).scatter(-1, top.indices, top.values)",
        "    return x * w[..., i:i + 1]"],
    "_insert": [
        "def _insert(x, token, k):",
        '    """The learned token, broadcast over the batch, before token k of x (..., t, d)."""',
        "    token = token.expand(*x.shape[:-2], 1, -1)",
        "    return torch.cat([x[..., :k, :], token, x[..., k:, :]], dim=-2)"],
    "_standardise": [
        "def _standardise(w, eps):",
        '    """w with each row (an output\'s fan-in entries) standardised: minus its mean, over',
        '    sqrt(its variance + eps): weight standardisation, computed as BiT computes it."""',
        "    rows = w.reshape(1, w.shape[0], -1)",
        "    return torch.nn.functional.batch_norm(rows, None, None, training=True, momentum=0.0,",
        "                                          eps=eps).reshape_as(w)"],
    "_conv": [
        "def _conv(x, kernel):",
        '    """A stride-1, same-padded convolution of a channels-last image (..., h, w, c)."""',
        '    y = torch.nn.functional.conv2d(x.movedim(-1, -3), kernel, padding="same")',
        "    return y.movedim(-3, -1)"],
    "_dwconv": [
        "def _dwconv(x, kernel):",
        '    """A stride-1, same-padded depthwise convolution of a channels-last image (..., h, w,',
        '    c) by a kernel (c, kh, kw): each channel convolved with its own taps (groups = c)."""',
        "    y = torch.nn.functional.conv2d(x.movedim(-1, -3), kernel.unsqueeze(1),",
        '                                   padding="same", groups=kernel.shape[0])',
        "    return y.movedim(-3, -1)"],
    "_tconv": [
        "def _tconv(x, kernel, p):",
        '    """A depthwise convolution over the tokens of x, (..., tokens, c), by a kernel (c, 1,',
        '    k): token t of each channel reads the k tokens from t - p on, zeros where none',
        '    comes (p = k - 1: causal)."""',
        "    k = kernel.shape[-1]",
        "    y = torch.nn.functional.pad(x.movedim(-1, -2), (p, k - 1 - p))",
        "    y = torch.nn.functional.conv1d(y.reshape(-1, *y.shape[-2:]), kernel,",
        "                                   groups=kernel.shape[0])",
        "    return y.reshape(*x.shape[:-2], *y.shape[-2:]).movedim(-2, -1)"],
    "_dwconv_geometry": [
        "def _dwconv_geometry(x, kernel, stride, pads, dilation):",
        '    """A depthwise convolution of a channels-last image (..., h, w, c) by a kernel',
        '    (c, kh, kw), zero-padded by pads (top, bottom, left, right), at a stride and a',
        '    dilation."""',
        "    t, b, left, r = pads",
        "    y = torch.nn.functional.pad(x.movedim(-1, -3), (left, r, t, b))",
        "    y = torch.nn.functional.conv2d(y, kernel.unsqueeze(1), stride=stride,",
        "                                   dilation=dilation, groups=kernel.shape[0])",
        "    return y.movedim(-3, -1)"],
    "_conv_geometry": [
        "def _conv_geometry(x, kernel, stride, pads, dilation):",
        '    """A convolution of a channels-last image (..., h, w, c), zero-padded by pads (top,',
        '    bottom, left, right), at a stride and a dilation."""',
        "    t, b, left, r = pads",
        "    y = torch.nn.functional.pad(x.movedim(-1, -3), (left, r, t, b))",
        "    y = torch.nn.functional.conv2d(y, kernel, stride=stride, dilation=dilation)",
        "    return y.movedim(-3, -1)"],
    "_conv_grouped": [
        "def _conv_grouped(x, kernel, stride, pads, dilation, groups):",
        '    """_conv_geometry of a kernel [out, in / groups, kh, kw]: each group of in / groups',
        '    channels convolved into its out / groups."""',
        "    t, b, left, r = pads",
        "    y = torch.nn.functional.pad(x.movedim(-1, -3), (left, r, t, b))",
        "    y = torch.nn.functional.conv2d(y, kernel, stride=stride, dilation=dilation,",
        "                                   groups=groups)",
        "    return y.movedim(-3, -1)"],
    "_avgpool": [
        "def _avgpool(x):",
        '    """2 x 2 average pooling of a channels-last image."""',
        "    return torch.nn.functional.avg_pool2d(x.movedim(-1, -3), 2).movedim(-3, -1)"],
    "_maxpool": [
        "def _maxpool(x):",
        '    """2 x 2 max pooling of a channels-last image."""',
        "    return torch.nn.functional.max_pool2d(x.movedim(-1, -3), 2).movedim(-3, -1)"],
    "_maxpool3": [
        "def _maxpool3(x):",
        '    """The max over each pixel\'s 3 x 3 neighbourhood of a channels-last image (stride 1,',
        '    same-padded)."""',
        "    y = torch.nn.functional.max_pool2d(x.movedim(-1, -3), 3, 1, 1)",
        "    return y.movedim(-3, -1)"],
    "_avgpool3": [
        "def _avgpool3(x):",
        '    """The mean over each pixel\'s 3 x 3 neighbourhood of a channels-last image',
        '    (stride 1, same-padded, the padding not counted: PoolFormer\'s token mixer)."""',
        "    y = torch.nn.functional.avg_pool2d(x.movedim(-1, -3), 3, 1, 1,",
        "                                       count_include_pad=False)",
        "    return y.movedim(-3, -1)"],
    "_maxpool2": [
        "def _maxpool2(x):",
        '    """The max over each pixel\'s 2 x 2 block to its right and below of a channels-last',
        '    image padded by a row and a column of zeros at the bottom and right (stride 1)."""',
        "    y = torch.nn.functional.pad(x.movedim(-1, -3), (0, 1, 0, 1))",
        "    return torch.nn.functional.max_pool2d(y, 2, 1).movedim(-3, -1)"],
    "_maxpool3z": [
        "def _maxpool3z(x):",
        '    """The max over each pixel\'s 3 x 3 neighbourhood of a channels-last image padded by',
        '    zeros on every side (stride 1): 0 joins the max at the border."""',
        "    y = torch.nn.functional.pad(x.movedim(-1, -3), (1, 1, 1, 1))",
        "    return torch.nn.functional.max_pool2d(y, 3, 1).movedim(-3, -1)"],
    "_shift": [
        "def _shift(x, k):",
        '    """The token vectors of x, (..., tokens, dim), moved k tokens later (k < 0: earlier),',
        '    zeros where no token comes."""',
        "    t = x.shape[-2]",
        "    k = max(-t, min(t, k))",
        "    if k >= 0:",
        "        return torch.nn.functional.pad(x[..., :t - k, :], (0, 0, k, 0))",
        "    return torch.nn.functional.pad(x[..., -k:, :], (0, 0, 0, -k))"],
    "_place": [
        "def _place(v, h, k):",
        '    """The token vectors of h, (..., tokens, dim), with its tokens k .. k+S-1 those of v,',
        '    (..., S, dim), in order."""',
        "    s, t = v.shape[-2], h.shape[-2]",
        "    if k + s > t:",
        "        raise ValueError(f'{s} tokens placed from token {k} of a sequence of {t}')",
        "    return torch.cat([h[..., :k, :], v, h[..., k + s:, :]], dim=-2)"],
    "_subsample": [
        "def _subsample(x):",
        '    """Every other pixel of a channels-last image (a stride-2 convolution is the stride-1',
        '    one read there)."""',
        "    return torch.nn.functional.avg_pool2d(x.movedim(-1, -3), 1, 2).movedim(-3, -1)"],
    "_batchnorm": [
        "def _batchnorm(x):",
        '    """Each channel normalised over the batch and the pixels (BatchNorm in training mode,',
        '    in both modes: the program has no running statistics)."""',
        "    y = torch.nn.functional.batch_norm(x.movedim(-1, 1), None, None, training=True)",
        "    return y.movedim(1, -1)"],
    "_groupnorm": [
        "def _groupnorm(x):",
        '    """Each channels-last image normalised over all its channels and pixels together',
        '    (GroupNorm with one group, without its affine part)."""',
        "    return torch.nn.functional.group_norm(x.movedim(-1, 1), 1).movedim(1, -1)"],
    "_grn": [
        "def _grn(x):",
        '    """ConvNeXt V2\'s Global Response Normalization of a channels-last image, without',
        "    its gain, bias and residual: each channel times its L2 norm over the pixels, over the",
        '    mean of those norms over the channels."""',
        "    g = torch.linalg.vector_norm(x, dim=(-3, -2), keepdim=True)",
        "    return x * (g / (g.mean(dim=-1, keepdim=True) + 1e-6))"],
    "_attention": [
        "def _attention(q, k, v, head_dim, scale, is_causal):",
        '    """mix(softmax(scale * dot(q, k, head_dim)), v) per head, softmax over the key tokens',
        "    (is_causal: each query sees itself and earlier tokens only), in torch's fused kernels",
        '    (flash, memory-efficient): no (tokens, tokens) tensor is saved for backward."""',
        "    q = q.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    k = k.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    v = v.unflatten(-1, (q.shape[-3], -1)).transpose(-3, -2)",
        "    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,",
        "                                                         is_causal=is_causal)",
        "    return y.transpose(-3, -2).flatten(-2)"],
    "_grouped_attention": [
        "def _grouped_attention(q, k, v, head_dim, scale, is_causal):",
        '    """_attention with fewer key/value heads than query heads, each serving a group of',
        "    consecutive query heads (sdpa's enable_gqa repeats them as repeat_interleave",
        '    does)."""',
        "    q = q.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    k = k.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    v = v.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,",
        "                                                         is_causal=is_causal,",
        "                                                         enable_gqa=True)",
        "    return y.transpose(-3, -2).flatten(-2)"],
    "_value_heads_attention": [
        "def _value_heads_attention(q, k, v, head_dim, value_head_dim, scale, is_causal):",
        '    """_grouped_attention with values in heads of value_head_dim coordinates, a head dim',
        "    of their own (each value head serving a group of consecutive query heads, as the",
        '    keys\' heads do or not): the output has the queries\' heads of value_head_dim."""',
        "    q = q.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    k = k.unflatten(-1, (-1, head_dim)).transpose(-3, -2)",
        "    v = v.unflatten(-1, (-1, value_head_dim)).transpose(-3, -2)",
        "    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale,",
        "                                                         is_causal=is_causal,",
        "                                                         enable_gqa=True)",
        "    return y.transpose(-3, -2).flatten(-2)"],
    "_sink_softmax": [
        "def _sink_softmax(s, sink, is_causal):",
        '    """Softmax over the key tokens with one more logit per head, the sink, in every row',
        "    (is_causal: each query sees itself and earlier tokens only); the sink's own weight is",
        '    dropped, so a row gives less than 1 in all (gpt-oss\'s attention sinks)."""',
        "    if is_causal:",
        "        t = s.shape[-1]",
        "        future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)",
        '        s = s.masked_fill(future, float("-inf"))',
        "    z = sink.reshape(-1, 1, 1).expand(*s.shape[:-1], 1).to(s.dtype)",
        "    return torch.softmax(torch.cat([s, z], dim=-1), dim=-1)[..., :-1]"],
    "_merged_softmax": [
        "def _merged_softmax(a, b, a_causal, b_causal):",
        '    """The weights on a\'s keys of one softmax over a\'s keys and b\'s together (merged',
        "    attention: a decoder's own keys beside an encoder's, T5Gemma 2's); *_causal: that",
        "    set pairs the queries' tokens with themselves, each query seeing itself and earlier",
        '    tokens only."""',
        "    parts = []",
        "    for s, causal in ((a, a_causal), (b, b_causal)):",
        "        if causal:",
        "            t = s.shape[-1]",
        "            future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)",
        '            s = s.masked_fill(future, float("-inf"))',
        "        parts.append(s)",
        "    return torch.softmax(torch.cat(parts, dim=-1), dim=-1)[..., :a.shape[-1]]"],
    "_delta": [
        "def _delta(sq, sk, b, g=None):",
        '    """Per head, the gated delta rule\'s token-mixing weights P, o = P v: with G the',
        "    cumulative sum of g over the tokens (no g: 0), D_ts = exp(G_t - G_s) for s <= t,",
        "    P = (D * sq) (I + diag(b) L)^-1 diag(b), L = D * sk below the diagonal; sq, sk",
        "    (..., heads, tokens, tokens), b, g (..., tokens, heads), or (..., 1, heads) for",
        "    every token alike; b and g may have r times the dots' heads (grouped value heads:",
        "    each key head serves r consecutive ones). Solved in float32 at least (no",
        '    triangular solve in bfloat16), returned in sq\'s dtype."""',
        "    dtype, t, heads = sq.dtype, sq.shape[-1], b.shape[-1]",
        "    if heads != sq.shape[-3]:",
        "        r = heads // sq.shape[-3]",
        "        sq, sk = sq.repeat_interleave(r, dim=-3), sk.repeat_interleave(r, dim=-3)",
        "    work = torch.promote_types(dtype, torch.float32)",
        "    g = torch.zeros_like(b) if g is None else g",
        "    sq, sk, b, g = (x.to(work) for x in (sq, sk, b, g))",
        "    b = b.expand(*sq.shape[:-3], t, heads).transpose(-1, -2)",
        "    g = g.expand(*sq.shape[:-3], t, heads).transpose(-1, -2)",
        "    later = torch.ones(t, t, dtype=torch.bool, device=sq.device).triu(1)",
        "    # G_t - G_s as the sum of g over s < u <= t alone, which float32 keeps exact, not",
        "    # the difference of two running sums over the whole sequence",
        "    d = g.unsqueeze(-1).expand(*g.shape, t).masked_fill(~later.T, 0).cumsum(-2)",
        '    d = d.masked_fill(later, float("-inf")).exp()',
        "    eye = torch.eye(t, dtype=sq.dtype, device=sq.device)",
        "    a = eye + b.unsqueeze(-1) * (d * sk).tril(-1)",
        "    n = torch.linalg.solve_triangular(a, torch.diag_embed(b), upper=False,",
        "                                      unitriangular=True)",
        "    return ((d * sq) @ n).to(dtype)"],
    "_causal_softmax": [
        "def _causal_softmax(s):",
        '    """Softmax over key tokens, each query seeing itself and earlier tokens only."""',
        "    t = s.shape[-1]",
        "    future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)",
        '    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1)'],
    # a positions input follows its tokens' length, so one module serves every sequence length
    # up to its position table's (the dim's size), and a longer one is refused by name rather
    # than failing to broadcast against the table's rows deep in forward
    "_positions": [
        "def _positions(tokens, size, sets):",
        '    """0, 1, ... up to the tokens\' length (their last axis), on their device, to look',
        "    up in a position table of size rows (sets: how to set more); ValueError for a longer",
        '    sequence, which has no rows to look up."""',
        "    length = tokens.shape[-1]",
        "    if length > size:",
        '        raise ValueError(f"the input has {length} tokens, more than the position "',
        '                         f"table\'s {size} rows: feed at most {size}, or {sets} of at "',
        '                         f"least {length}")',
        "    return torch.arange(length, device=tokens.device)"],
    # T5's bucketing (transformers' T5Attention._relative_position_bucket, max_distance 128),
    # so that a program's relative bias is the one a T5 model computes
    "_relative_buckets": [
        "def _relative_buckets(length, buckets, bidirectional, device):",
        '    """T5\'s distance bucket of every (query, key) pair of length tokens: exact below',
        "    half the buckets, logarithmic up to 128 tokens apart, the last bucket beyond",
        "    (bidirectional: half the buckets for keys after the query; otherwise every later",
        '    key shares bucket 0)."""',
        "    position = torch.arange(length, device=device)",
        "    distance = position[None, :] - position[:, None]",
        "    bucket = torch.zeros_like(distance)",
        "    if bidirectional:",
        "        buckets //= 2",
        "        bucket += (distance > 0).long() * buckets",
        "        distance = distance.abs()",
        "    else:",
        "        distance = -distance.clamp(max=0)",
        "    exact = buckets // 2",
        "    far = exact + (torch.log(distance.float() / exact) / math.log(128 / exact)",
        "                   * (buckets - exact)).long()",
        "    far = far.clamp(max=buckets - 1)",
        "    return bucket + torch.where(distance < exact, distance, far)"],
    # LongT5's block-local attention over the sequence: each query's keys fewer than reach
    # tokens away (its blocks of reach tokens and their neighbours, the pairs under reach)
    "_beyond_reach": [
        "def _beyond_reach(logits, reach):",
        '    """The logits of the keys reach or more tokens from each query set to -inf, for',
        '    the softmax to keep the others only (LongT5\'s block-local attention)."""',
        "    q = torch.arange(logits.shape[-2], device=logits.device)",
        "    k = torch.arange(logits.shape[-1], device=logits.device)",
        "    far = (k[None, :] - q[:, None]).abs() >= reach",
        '    return logits.masked_fill(far, float("-inf"))'],
    # Swin's windows (transformers' SwinLayer: roll by -shift, window_partition,
    # relative_position_index, get_attn_mask), over the grid's tokens in their own order
    "_window_buckets": [
        "def _window_buckets(height, width, window, shift, device, mask=100):",
        '    """Swin\'s windowed attention over the height x width tokens (row-major), the grid',
        "    rolled by -shift and cut into window x window windows: the offset id of each",
        "    (query, key) pair within their window, (dy + w - 1) * (2w - 1) + dx + w - 1 (0",
        "    between windows); the bias's mask, -mask between the regions the roll brought into",
        "    one window (shift > 0), else 0; and the softmax's, -inf between windows.\"\"\"",
        "    y, x = torch.meshgrid(torch.arange(height, device=device),",
        "                          torch.arange(width, device=device), indexing=\"ij\")",
        "    y, x = ((y - shift) % height).flatten(), ((x - shift) % width).flatten()",
        "    dy = (y % window)[:, None] - (y % window)[None, :]",
        "    dx = (x % window)[:, None] - (x % window)[None, :]",
        "    same = ((y // window)[:, None] == (y // window)[None, :]) & (",
        "        (x // window)[:, None] == (x // window)[None, :])",
        "    ids = torch.where(same, (dy + window - 1) * (2 * window - 1) + dx + window - 1, 0)",
        "    regions = torch.zeros(ids.shape, device=device)",
        "    if shift > 0:",
        "        ry = (y >= height - window).long() + (y >= height - shift).long()",
        "        rx = (x >= width - window).long() + (x >= width - shift).long()",
        "        region = ry * 3 + rx",
        "        regions = regions.masked_fill(region[:, None] != region[None, :], -float(mask))",
        "    outside = torch.zeros(ids.shape, device=device).masked_fill(~same, float(\"-inf\"))",
        "    return ids, regions, outside"],
    "_merge2x2": [
        "def _merge2x2(x):",
        '    """Each 2 x 2 block of an image (..., H, W, C) one pixel of its four pixels\' vectors',
        "    concatenated, (0, 0), (1, 0), (0, 1), (1, 1): (..., H/2, W/2, 4C), Swin's patch",
        '    merging (transformers\' SwinPatchMerging)."""',
        "    return torch.cat([x[..., r::2, c::2, :] for c in range(2) for r in range(2)], -1)"],
    "_window_bias": [
        "def _window_bias(windows, table):",
        '    """Swin\'s bias of each (query, key) pair, (heads, tokens, tokens): the table\'s',
        '    column of their offset in their window, plus the shifted regions\' mask."""',
        "    ids, mask, _ = windows",
        "    bias = torch.nn.functional.embedding(ids, table.t()).permute(2, 0, 1)",
        "    return bias + mask.to(bias.dtype)"],
    # Swin V2's continuous position bias's input (transformers' Swinv2SelfAttention's
    # relative_coords_table, no pretrained window size)
    "_window_coords": [
        "def _window_coords(window, like):",
        '    """The log-spaced coordinates (dy, dx) of each of the (2w - 1)² offsets of a window',
        "    of w x w tokens, row-major as the windows' offset ids: each d in -(w-1)..w-1 as",
        "    x = 8·d/(w-1), then sign(x)·log2(|x| + 1)/3; ((2w-1)², 2), in like's dtype and",
        '    device."""',
        "    side = torch.arange(-(window - 1), window, dtype=torch.float32) / (window - 1) * 8",
        "    grid = torch.stack(torch.meshgrid([side, side], indexing=\"ij\"), -1).reshape(-1, 2)",
        "    coords = torch.sign(grid) * torch.log2(grid.abs() + 1.0) / math.log2(8)",
        "    return coords.to(device=like.device, dtype=like.dtype)"],
    # LeViT's attention_bias_idxs (transformers' LevitAttention): its offsets numbered in the
    # order its loops first meet them, from query (0, 0), which meets every one row-major
    "_grid_offsets": [
        "def _grid_offsets(queries, keys, offsets, stride, device):",
        '    """The offset id of every (query, key) pair, the keys laid out row-major on a side x',
        "    side grid, the queries on it subsampled by stride (1: the keys themselves): |dy| *",
        "    side + |dx|, one of offsets = side * side (LeViT's attention_bias_idxs).\"\"\"",
        "    side, out = math.isqrt(keys), math.isqrt(queries)",
        "    if side * side != keys or offsets != keys or out != (side - 1) // stride + 1 \\",
        "            or out * out != queries:",
        '        raise ValueError(f"{queries} queries and {keys} keys on a square grid of "',
        '                         f"{offsets} offsets: feed the image size the module was built "',
        '                         "for")',
        "    k, q = torch.arange(keys, device=device), torch.arange(queries, device=device)",
        "    ky, kx, qy, qx = k // side, k % side, q // out * stride, q % out * stride",
        "    return (qy[:, None] - ky).abs() * side + (qx[:, None] - kx).abs()"],
    "_relative_bias": [
        "def _relative_bias(buckets, table):",
        '    """The table\'s column of each token pair\'s bucket, (heads, tokens, tokens): what',
        '    attention logits (..., heads, tokens, tokens) add."""',
        "    return torch.nn.functional.embedding(buckets, table.t()).permute(2, 0, 1)"],
}

# always emitted: the check that Model(width) has a network at that width
CHECK_WIDTHS = [
    "def _positive_ints(**values):",
    '    """The values as ints; ValueError naming the first that is not a positive integer."""',
    "    for name, value in values.items():",
    '        if isinstance(value, bool) or not hasattr(type(value), "__index__") or value < 1:',
    '            raise ValueError(f"{name} must be a positive integer, not {value!r}")',
    "    return tuple(operator.index(value) for value in values.values())",
    "",
    "",
    "def _check_widths(width, base_width):",
    '    """width and base_width as ints; ValueError unless both are positive integers and every',
    '    dim that is a fraction of the width is a whole number (WIDTH_RULES) at both: the base',
    '    model is the one tuned, so it must exist too."""',
    "    width, base_width = _positive_ints(width=width, base_width=base_width)",
    "    step = math.lcm(*(s for _, s in WIDTH_RULES))",
    '    for name, value in (("width", width), ("base_width", base_width)):',
    "        for rule, s in WIDTH_RULES:",
    "            if value % s:",
    "                near = [w for w in (value // step * step, (value // step + 1) * step) if w]",
    '                raise ValueError(f"{name} {value}: {rule} must be a whole number; use a "',
    '                                 f"multiple of {step}: {\' or \'.join(map(str, near))}")',
    "    return width, base_width"]


# always emitted: Model's sizes checked against the float range before anything is built. Every
# factor is computed from logs of the (exact) sizes, since depth / base_depth itself may
# underflow and a power of it overflow (OverflowError) before a dtype is involved.
CHECK_FACTORS = [
    "def _check_factors(width, base_width, depth, base_depth, dtype):",
    '    """ValueError naming the first factor ratio**-e * depth_ratio**-eL (a param\'s',
    "    multiplier a, init std b, lr c or Adam's eps) outside dtype's range, or a block",
    "    param's depth factor above 1 (depth below base_depth) that, applied once per",
    "    repetition in series, grows the residual stream by up to factor**depth beyond it (the",
    "    width factors only undo the fan-in's, µP's point): the forward would overflow to",
    '    inf and then NaN (or a factor would be 0)."""',
    "    if dtype is None or not dtype.is_floating_point:",
    "        dtype = torch.get_default_dtype()",
    "    limit = math.log(torch.finfo(dtype).max)",
    "    logs = math.log(width) - math.log(base_width), math.log(depth) - math.log(base_depth)",
    "    for name, spec in SCALING.items():",
    '        for e, what in (("a", "multiplier"), ("b", "init std"), ("c", "lr"),',
    '                        ("eps", "eps")):',
    '            exps = 0.0 - spec.get(e, 0.0), 0.0 - spec.get(e + "L", 0.0)  # no -0',
    "            if math.inf in map(abs, exps):  # zero init, or never trained",
    "                continue",
    "            log = exps[0] * logs[0] + exps[1] * logs[1]",
    "            size = abs(log)",
    '            if "block" in spec and e in "ab" and depth > 1:',
    "                size = max(size, depth * exps[1] * logs[1])",
    "            if size > limit:",
    '                raise ValueError(f"width {width}, base_width {base_width}, depth {depth}, "',
    '                                 f"base_depth {base_depth}: the {what} factor of {name} "',
    '                                 f"(ratio**{exps[0]:g} * depth_ratio**{exps[1]:g} = "',
    '                                 f"e^{log:.4g}, over {depth} repetition(s) e^{size:.4g}) "',
    '                                 f"leaves {dtype}\'s range e^±{limit:.4g}; keep the "',
    '                                 "sizes nearer their bases")']


# always emitted after the size tables (tables.size_code): Model's size before it is built
CHECK_SIZE = [
    "def _check_size(width, depth):",
    '    """ValueError when the model would have more than MAX_REPEATS block repetitions (one',
    "    submodule each) or MAX_PARAMS parameters, counted from the widths and repeat counts",
    '    before anything is allocated."""',
    '    repeats = {b: depth if r == "depth" else r for b, r in REPEATS.items()}',
    "    if sum(repeats.values()) > MAX_REPEATS:",
    '        raise ValueError(f"{sum(repeats.values()):,} block repetitions (one submodule "',
    '                         f"each), more than the {MAX_REPEATS:,} a Model builds; use a "',
    '                         "smaller depth")',
    "    count = sum(k * width**p * repeats.get(block, 1) for k, p, block in PARAM_COUNT)",
    "    if count > MAX_PARAMS:",
    '        raise ValueError(f"width {width}: {count:,.0f} parameters, more than the "',
    '                         f"{MAX_PARAMS:,} a Model builds; use a smaller width or depth")']


# always emitted: the base constants a user tunes at the base width, set from Python
OVERRIDES = [
    "def _overrides(what, given, known, positive=True):",
    '    """given (name -> value) as floats; ValueError for a name not in known or a value that',
    '    is not a finite number (a positive one, with positive)."""',
    "    given = dict(given or {})",
    "    for name, value in given.items():",
    "        if name not in known:",
    '            raise ValueError(f"{what}: no entry {name!r}; choose from "',
    '                             f"{\', \'.join(sorted(known)) or \'nothing here\'}")',
    "        if (isinstance(value, bool) or not isinstance(value, (int, float))",
    "                or not math.isfinite(value) or (positive and value <= 0)):",
    '            kind = "positive" if positive else "finite"',
    '            raise ValueError(f"{what}[{name!r}] must be a {kind} number, not {value!r}")',
    "    return {name: float(value) for name, value in given.items()}",
    "",
    "",
    "def _base_stds(base_width, init_std):",
    '    """The std at the base width of every normally initialised param: init_std\'s value for',
    "    its name or its block's, else 1/sqrt(fan-in at base_width), so a new base width gets",
    '    its own."""',
    "    normal = {name for name, spec in SCALING.items() if \"init\" not in spec",
    "              and spec[\"b\"] != math.inf}",
    "    blocks = {name.partition(\".\")[0] for name in normal if \"block\" in SCALING[name]}",
    "    given = _overrides(\"init_std\", init_std, normal | blocks)",
    "    stds = {}",
    "    for name in normal:",
    "        k, p = SCALING[name][\"fan_in\"]",
    "        block = name.partition(\".\")[0] if \"block\" in SCALING[name] else None",
    "        stds[name] = given.get(name, given.get(block, (k * base_width ** p) ** -0.5))",
    "    return stds"]


def load_config_lines(scales: bool, depth: bool) -> list[str]:
    """load_config: the values ``tensorprog tune -o FILE`` wrote, refused unless they were tuned
    for this module. A file records the SCALING (and SCALES) of the module it was tuned with:
    its values mean the same here only where every param's exponents, fan-in and constant init
    and every scale's exponent and base are the same, and so are the base sizes, which is how a
    file of another program, parametrization, convention, optimizer or data dims is told
    apart, whatever its names."""
    ours = "{\"param\": SCALING, \"scale\": " + ("SCALES" if scales else "{}") + "}"
    bases = ("(\"base_width\", BASE_WIDTH), (\"base_depth\", BASE_DEPTH)" if depth
             else "(\"base_width\", BASE_WIDTH),")
    return [
        "def load_config(config):",
        '    """The base constants tensorprog tune -o FILE wrote (config: the path, or its JSON',
        "    as a dict) as {\"lr\", \"init_std\", \"mult\", \"optimizer\"}, for",
        "    Model.from_config and make_optimizer(config=...). ValueError unless they were tuned",
        "    for this module: every param's exponents, fan-in and init and every scale's as in",
        "    SCALING and SCALES, and the same base sizes (a file of another program,",
        '    parametrization, convention, optimizer or data dims differs there)."""',
        "    import json",
        "",
        "    if not isinstance(config, dict):",
        "        with open(config) as f:",
        "            config = json.load(f)",
        "    if config.get(\"format\") != \"tensorprog-tune/1\" or \"scaling\" not in config:",
        "        raise ValueError(\"not a file of tuned values with the scaling they were tuned \"",
        "                         \"for: write it with tensorprog tune -o FILE\")",
        "    origin = (f\"{config.get('program')} ({config.get('param')}, \"",
        "              f\"{config.get('convention')} convention, {config.get('optimizer')})\")",
        "    fix = (\"; emit the module of the program tune was given, with the dims it \"",
        "           f\"set: tensorprog derive PROGRAM -o FILE --param {config.get('param')} \"",
        "           f\"--convention {config.get('convention')} --optimizer \"",
        "           f\"{config.get('optimizer')}\")",
        f"    ours = json.loads(json.dumps({ours}))  # as the file holds it",
        "    theirs = {\"param\": config[\"scaling\"], \"scale\": config.get(\"scales\", {})}",
        "    for kind, here in ours.items():",
        "        for name in sorted(set(here) | set(theirs[kind])):",
        "            a, b = here.get(name), theirs[kind].get(name)",
        "            if a is None or b is None:",
        "                where = \"this module has\" if a is None else \"they have\"",
        "                raise ValueError(f\"the tuned values are for {origin}: {where} \"",
        "                                 f\"no {kind} {name!r}{fix}\")",
        "            for key in (\"a\", \"b\", \"c\", \"eps\", \"aL\", \"bL\", \"cL\", \"epsL\",",
        "                        \"fan_in\", \"init\", \"base\"):",
        "                if a.get(key) != b.get(key):",
        "                    raise ValueError(f\"the tuned values are for {origin}: {kind} \"",
        "                                     f\"{name!r} has {key} {b.get(key)} there, \"",
        "                                     f\"{a.get(key)} here{fix}\")",
        f"    for key, here in ({bases}):",
        "        if config.get(key, here) != here:",
        "            raise ValueError(f\"the tuned values are for {key} {config[key]}, this \"",
        "                             f\"module's is {here}: emit it with that base \"",
        "                             \"(derive --base-width N; the program's depth line \"",
        "                             \"sets its base depth)\")",
        "    lr = config.get(\"lr\")",
        "    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:",
        "        raise ValueError(f\"the tuned lr must be a positive number, not {lr!r}\")",
        '    return {"lr": float(lr), "init_std": dict(config.get("init_std") or {}),',
        '            "mult": dict(config.get("mult") or {}),',
        '            "optimizer": config.get("optimizer")}']


# Model.from_config: Model(...) with a tuned file's init_std and mult (load_config checks it)
FROM_CONFIG = [
    "    @classmethod",
    "    def from_config(cls, config, *args, **kwargs):",
    '        """Model(*args, **kwargs) with the init_std and mult tensorprog tune -o FILE wrote',
    "        (config: the path, or its JSON), refused by load_config unless tuned for this",
    '        module; make_optimizer(model, config=config) takes its lr."""',
    "        tuned = load_config(config)",
    '        given = sorted({"init_std", "mult", "base_width", "base_depth"} & set(kwargs))',
    "        if given:",
    "            raise ValueError(f\"from_config takes {', '.join(given)} from the tuned \"",
    "                             \"values; call Model(...) to set them yourself\")",
    "        return cls(*args, init_std=tuned[\"init_std\"], mult=tuned[\"mult\"], **kwargs)"]


def mult_override_lines(scales: bool, multiplied: list[str]) -> list[str]:
    """Model.__init__'s ``mult``: every base multiplier a user tunes at the base width, a scale's
    (its declared value by default) and a param's forward multiplier (1 by default; the mup
    convention's output multiplier, TP5's alpha_output). A block's params keep theirs."""
    names = "".join(f", {quoted(n)}" for n in multiplied)
    known = f"(*SCALES{names})" if scales and multiplied else (
        "SCALES" if scales else f"({names[2:]},)" if multiplied else "()")
    given = f"_overrides(\"mult\", mult, {known}, positive=False)"
    if scales:
        return ["        mult = {**{name: spec[\"base\"] for name, spec in SCALES.items()},",
                f"                **{given}}}"]
    if multiplied:
        return [f"        mult = {given}"]
    return [f"        {given}  # no scale to set"]


# emitted for a program with a positions input: Model(seq_len=...) sizes the position table
CHECK_SEQ_LEN = [
    "def _check_seq_len(seq_len, width):",
    '    """seq_len as an int; ValueError unless it is a positive integer and the tables with a',
    '    row per position (SEQ_TABLES) stay within MAX_PARAMS parameters at this width."""',
    "    (seq_len,) = _positive_ints(seq_len=seq_len)",
    "    count = sum(k * width**p * seq_len**q for k, p, q in SEQ_TABLES)",
    "    if count > MAX_PARAMS:",
    '        raise ValueError(f"seq_len {seq_len}: the position table would hold {count:,.0f} "',
    '                         f"parameters at width {width}, more than the {MAX_PARAMS:,} a "',
    '                         "Model builds; use a shorter seq_len")',
    "    return seq_len"]


CHECK_DEPTH = [
    "def _check_depth(depth, base_depth):",
    '    """depth and base_depth as ints; ValueError unless both are positive integers."""',
    "    return _positive_ints(depth=depth, base_depth=base_depth)"]


def multiplier_lines(attr: str, base: str, spec: str, depth: bool) -> list[str]:
    """A forward multiplier at the module's width, then its depth factor (a plain float)."""
    note = "" if base else "  # a plain float"
    lines = [f"        {attr} = {base}ratio ** -{spec}[\"a\"]{note}"]
    if depth:
        lines.append(f"        {attr} *= depth_ratio ** -{spec}[\"aL\"]")
    return lines
