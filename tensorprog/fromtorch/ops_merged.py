"""Merged attention: one softmax over two sequences' keys (T5Gemma 2's decoder, whose queries
meet its own keys and the encoder's in one ``sdpa`` call: ``torch.cat([k, k_cross], dim=2)``, the
values likewise, and a mask that is causal on the first part and keeps every key of the second).

The softmax over the concatenated keys [a's; b's] is exactly the language's ``softmax(a, b)``
on a's keys and ``softmax(b, a)`` on b's (lang/lower_sink.py), each part mixing its own values:
``mix(causal_softmax(a, b), v) + mix(causal_softmax(b, a), c)``, the causal mask on the part the
model masks (which ``resolve``, sequences.py, then reads as the queries' own sequence). Taken
only in that exact form: two per-head parts of the keys and of the values, concatenated along
the tokens at the same split, read by one ``scaled_dot_product_attention`` and nothing else,
with a mask that keeps every key of one part and is causal (or keeps every key) on the other.
Anything else is refused at its line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ops_attention import layout_text, refuse_one_key
from .values import Conc, Probs, Scores, Vec
from .where import op_name, refuse

_HELP = (
    "concatenate the queries' own keys and another sequence's along the tokens, "
    "torch.cat([k, k_cross], dim=2), the values at the same split, and pass both to one "
    "scaled_dot_product_attention with a mask causal on the own part (or none) and "
    "keeping every key of the other"
)


@dataclass
class MergedKV:
    """Per-head keys (or values) of two sequences side by side along the tokens, each part a
    program vector of ``sizes[i]`` tokens, before the one attention that reads them."""

    parts: tuple[Vec, Vec]
    sizes: tuple[int, int]


def logit_columns(kind: str):
    """The key columns of an sdpa's logits that a program vector of ``kind`` holds (check.py):
    all of them (``sdpa_logits``), or one part's of a merged attention (``sdpa_logits:lo:hi``)."""
    _, *cut = kind.split(":")
    return (..., slice(int(cut[0]), int(cut[1]))) if cut else (...,)


def merged_parts(self, node, tensors, dim) -> MergedKV | None:
    """Two per-head vectors (batch, heads, tokens, head dim) concatenated along their tokens,
    read by a ``scaled_dot_product_attention`` alone; None for any other concatenation."""
    shape = node.meta["val"].shape
    if len(tensors) != 2 or len(shape) != 4 or dim % 4 != 2:
        return None
    if not all(len(getattr(getattr(t, "src", t), "tags", ()) or ()) == 4 for t in tensors):
        return None
    parts = tuple(self.vec(t, node) if not isinstance(t, Vec) else t for t in tensors)
    if not all(p.tags[-2:] == ("tok", "dh") and "H" in p.tags and p.group == 1 for p in parts):
        return None
    readers = {op_name(u) for u in node.users}
    if readers != {"scaled_dot_product_attention"}:
        raise refuse(
            node,
            "per-head keys or values of two sequences concatenated along the "
            f"tokens and read by {sorted(readers)}: the language's merged attention "
            "(one softmax over both sequences' keys) is taken where one "
            "scaled_dot_product_attention reads them",
            help=_HELP,
        )
    if parts[0].dh != parts[1].dh or parts[0].dim != parts[1].dim:
        raise refuse(
            node,
            "per-head vectors of two sequences concatenated along the tokens with different heads",
            help=_HELP,
        )
    sizes = tuple(int(a.meta["val"].shape[2]) for a in node.args[0])
    return MergedKV(parts, sizes)  # type: ignore[arg-type]


class MergedOps:
    """T5Gemma 2's merged attention: a decoder's own keys beside the encoder's, one softmax."""

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
        if not isinstance(k, MergedKV) and not isinstance(v, MergedKV):
            return super().op_scaled_dot_product_attention(
                node, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )
        if not isinstance(k, MergedKV) or not isinstance(v, MergedKV) or k.sizes != v.sizes:
            what = (
                f"keys of {list(k.sizes)} tokens and values of {list(v.sizes)}"
                if isinstance(k, MergedKV) and isinstance(v, MergedKV)
                else "keys and values of which only one is two sequences' side by side"
            )
            raise refuse(
                node,
                f"attention over {what}: one softmax over two sequences' keys "
                "mixes each part's own values, so the values must be concatenated "
                "at the same split as the keys",
                help=_HELP,
            )
        q = self.vec(q, node)
        if q.dh is None or q.tags[-2:] != ("tok", "dh") or "H" not in q.tags:
            raise refuse(
                node,
                f"merged attention of queries laid out {layout_text(q.tags)}",
                help="transpose them to (batch, heads, tokens, head dim)",
            )
        for what, part in (
            ("keys", k.parts[0]),
            ("keys", k.parts[1]),
            ("values", v.parts[0]),
            ("values", v.parts[1]),
        ):
            if part.tags != q.tags:  # sdpa pairs the axes before the tokens by position
                raise refuse(
                    node,
                    f"merged attention of queries laid out {layout_text(q.tags)} and keys or "
                    f"values laid out {layout_text(part.tags)}",
                    help="lay them all out as (batch, heads, tokens, head dim)",
                )
            self.grouped(node, q, part, what)
        refuse_one_key(node, sum(k.sizes))
        masks = self._merged_masks(node, attn_mask, is_causal, k.sizes)
        factor = scale if scale is not None else q.dh**-0.5
        logits, cut = [], 0
        for part, size in zip(k.parts, k.sizes, strict=True):
            # the check reads each part's logits as its columns of the model's merged ones
            logits.append(
                self.logits(q, part, factor, node.name, f"sdpa_logits:{cut}:{cut + size}")
            )
            cut += size
        fn = "causal_softmax" if any(masks) else "softmax"
        self.out.causal_keys.update(name for name, m in zip(logits, masks, strict=True) if m)
        mixes = []
        for i, vals in enumerate(v.parts):
            s = Scores(q, k.parts[i], factor, node.name, q.tags[:-1] + ("tok",), masks[i])
            mix = self.mix(node, Probs(s, f"{fn}({logits[i]}, {logits[1 - i]})"), vals)
            del self.out.vectors[mix.name]  # one part of the output: the sum is the node's
            mixes.append(mix)
        name = self.emit_vector(node.name, f"{mixes[0].name} + {mixes[1].name}")
        return Vec(name, mixes[0].tags, mixes[0].dim, mixes[0].dh)

    def _merged_masks(self, node, attn_mask, is_causal, sizes) -> tuple[bool, bool]:
        """Which part the mask makes causal: each part's columns must keep every key, or (one
        part only, as many keys as queries) be exactly the causal mask."""
        import torch

        if is_causal:
            raise refuse(
                node,
                "merged attention with is_causal=True (the causal mask over the "
                "concatenated keys is no part's own)",
                help=_HELP,
            )
        if attn_mask is None:
            return (False, False)
        if not isinstance(attn_mask, Conc):
            raise refuse(node, "an attention mask that depends on params or buffers")
        m = attn_mask.value
        keep = m if m.dtype == torch.bool else m > -1e4
        t = int(node.meta["val"].shape[-2])
        keep = keep.expand(*keep.shape[:-2], t, sum(sizes))
        out, cut = [], 0
        for size in sizes:
            part = keep[..., cut : cut + size]
            cut += size
            if bool(part.all()):
                out.append(False)
            elif size == t and bool((part == torch.ones(t, t, dtype=torch.bool).tril()).all()):
                out.append(True)
            else:
                raise refuse(
                    node,
                    "a merged attention mask that, on one sequence's keys, is "
                    "neither the causal mask nor one that keeps every key (a padding "
                    "mask hides keys per example, which the language's attention "
                    "cannot say)",
                    help="trace with example inputs without padding",
                )
        if all(out):
            raise refuse(
                node,
                "a merged attention mask causal on both sequences' keys: one "
                "softmax masks the queries' own sequence only",
                help=_HELP,
            )
        return tuple(out)  # type: ignore[return-value]
