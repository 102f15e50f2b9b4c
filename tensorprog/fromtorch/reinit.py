"""A param's init set to µP's std at a model's width: the model's own draw rescaled, or, for a
tensor too small to read its std from, a fresh draw at that std (:func:`rescale`)."""

from __future__ import annotations

import zlib

# a std read from this many entries is within 1% (relative standard error 0.75/sqrt(N) for
# torch's and transformers' init laws); the trace pools a base std over as many (trace.py)
TRUSTED_ENTRIES = 10_000


def rescale(view, target: float, fixed_size: bool, key: str) -> tuple[float, bool]:
    """Sets ``view`` (a param, or its rows) to std ``target``; returns (the std it had, whether
    it was drawn anew).

    A tensor that grows with the width keeps the model's draw, times ``target`` over its drawn
    std: from n entries or more that std is the model's to a few percent. A tensor of fixed size
    (every dim finite: a readout's bias over 2 classes) has the same few entries at every width,
    so its drawn std is no estimate of the model's: for 2 entries it is their difference, any
    fraction of the true std, and dividing by it multiplies the param by a random factor at each
    width (HF ResNet's 2-class readout bias came out at 10 to 15x µP's std at some widths and
    near it at others, its logits at init growing as n^+0.76 in the coordinate check). Under
    ``TRUSTED_ENTRIES`` such a tensor is drawn anew from N(0, target²) (the model's random inits
    are zero-mean; a constant init never reaches here) by a generator of its own, seeded from
    torch's seed (``torch.initial_seed()``, what ``torch.manual_seed`` set before the model was
    built) and ``key`` (the param and the width): the draw follows the user's seed, takes nothing
    from torch's generator, and is the same at every apply, so that apply stays idempotent (a
    second apply, or a tuned MuP's over a plain one, draws the same entries at its own std)."""
    import torch

    current = float(view.double().std()) if view.numel() > 1 else 0.0
    if fixed_size and view.numel() < TRUSTED_ENTRIES:
        seed = (torch.initial_seed() * 1_000_003 + zlib.crc32(key.encode())) % 2**63
        g = torch.Generator().manual_seed(seed)
        view.copy_(torch.randn(tuple(view.shape), generator=g, dtype=torch.float64) * target)
        return current, True
    if current > 0:
        view.mul_(target / current)
    return current, False
