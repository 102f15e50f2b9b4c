"""A param's init set to µP's std at a model's width: the model's own draw rescaled, or, for a
tensor too small to read its std from, a fresh draw at that std (:func:`rescale`)."""

from __future__ import annotations

import zlib

# a std read from this many entries is within 1% (relative standard error 0.75/sqrt(N) for
# torch's and transformers' init laws); the trace pools a base std over as many (trace.py)
TRUSTED_ENTRIES = 10_000


def rescale(view, target: float, drawable: bool, seed: int) -> tuple[float, bool]:
    """Sets ``view`` (a param, or its rows) to std ``target``; returns (the std it had, whether
    it was drawn anew).

    A tensor keeps the model's draw, times ``target`` over its drawn std: from n entries or
    more that std is the model's to a few percent, and a deterministic init (a readout bias set
    to log priors) is exactly its own. A tensor of fixed size (every dim finite: a readout's
    bias over 2 classes) with a random init has the same few entries at every width, so its
    drawn std is no estimate of the model's: for 2 entries it is their difference, any fraction
    of the true std, and dividing by it multiplies the param by a random factor at each width
    (HF ResNet's 2-class readout bias came out at 10 to 15x µP's std at some widths and near it
    at others, its logits at init growing as n^+0.76 in the coordinate check). Such a tensor
    (``drawable``: of fixed size, under ``TRUSTED_ENTRIES``, its init a draw centred on 0, as
    the trace found it) is drawn anew from N(0, target²) by a generator of its own seeded by
    ``seed``: taken from the model's own draw (apply.py), so it differs between models built
    from different seeds, takes nothing from torch's generator, and is the same at every apply
    to this model (a rescale keeps the entries it is read from), so apply stays idempotent."""
    import torch

    current = float(view.double().std()) if view.numel() > 1 else 0.0
    if drawable and view.numel() < TRUSTED_ENTRIES:
        g = torch.Generator().manual_seed(seed % 2**63)
        view.copy_(torch.randn(tuple(view.shape), generator=g, dtype=torch.float64) * target)
        return current, True
    if current > 0:
        view.mul_(target / current)
    return current, False


def draw_seed(tensor, key: str) -> int:
    """A seed for ``key``'s fresh draw from a tensor of the model's own random init that apply
    only rescales (a growing one): the signs of its first entries, which a positive factor
    keeps, and the key (the param and the width)."""
    signs = (tensor.detach().flatten()[:4096] > 0).to("cpu").numpy().tobytes()
    return zlib.crc32(key.encode(), zlib.crc32(signs))


def padding_rows(model) -> dict[int, list[int]]:
    """Per param tensor (by id): its rows that are the ``padding_idx`` of an nn.Embedding
    holding it and zero now (nn.Embedding's and transformers' init). A padding row reads as no
    token; a fresh draw of the table (:func:`rescale`) would make it one, so apply keeps it
    zero as the build made it (a row the table's other readers train, a tied readout, starts
    there too)."""
    import torch

    rows: dict[int, set] = {}
    for m in model.modules():
        pad = getattr(m, "padding_idx", None)
        if isinstance(m, torch.nn.Embedding) and pad is not None and m.weight.dim() == 2 \
                and not bool(m.weight[pad].any()):
            rows.setdefault(id(m.weight), set()).add(pad % m.weight.shape[0])
    return {k: sorted(v) for k, v in rows.items()}
