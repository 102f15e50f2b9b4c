"""Attention outputs side by side in each head, then split along the heads: DiffLlama's
differential attention (arXiv 2410.05258) as Hugging Face writes it,

    o = torch.cat([o1, o2], dim=-1)              (batch, tokens, H, 2·dh): each head o1's, o2's
    a, b = torch.chunk(o, 2, dim=2)              the first H/2 heads, and the last H/2

traced as the language's ``cat(o1, o2, D, dv)`` (D's coordinates in heads of dv = 2·dh, each
head o1's head then o2's: a permutation of the plain cat's coordinates, whose rules are the
engine's for every cat) and ``part(o, D / 2, i)`` (the heads, laid out one after another in the
features, are k runs of whole heads). Heads concatenated from parts that attention reads as its
query or key (multi-head latent attention) stay the lazy ``HeadCat`` of ops_mla.py.

Its λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, a number from four params of the head dim, is
refused (:func:`refuse_param_dot`): the product λq1 ⊙ λk1 is unchanged when λq1 is scaled by c
and λk1 by 1/c, so the derivation's conditions (every vector Θ(1), every update maximal) bound
the pair's exponents only through their sum, and none fixes each param's init and LR; and over
a head dim that grows with the width (a fixed number of heads), the sum of dh products of
independent entries drawn at a width-independent scale is Θ(√dh) at init, Θ(dh) once they have
trained together, so exp of it grows without bound: no µP of the model as written."""

from __future__ import annotations

import operator

from .values import HeadCat, Parts, Vec
from .where import op_name, refuse, strip_prefix

_SPLITS = ("chunk", "split", "split_with_sizes")
_HELP = ("split the heads into a fixed number of equal runs (torch.chunk(o, k, dim=2) of a "
         "(batch, tokens, heads, head dim) tensor), each a run of whole heads")


class HeadCatOps:
    """A split along the heads of heads concatenated from attention outputs."""

    def call(self, node):
        if node.target is not operator.getitem and op_name(node) in _SPLITS:
            args, kwargs = self.args(node)
            if args and isinstance(args[0], HeadCat):
                dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
                return self.split_head_cat(node, args[0], args[1], dim)
        return super().call(node)

    def split_head_cat(self, node, x: HeadCat, sizes, dim) -> Parts:
        """The runs of whole heads of ``x`` that a chunk or split along its heads axis cuts,
        each ``part(cat(a, b, D, dv), d, i)``; refused for any other split of such heads."""
        parts = list(x.parts)
        tags = ("tok", "tok", "H", "dh")
        if any(not isinstance(p, Vec) or p.tags != tags or p.group != 1 for p in parts):
            raise refuse(node, f"a {op_name(node)} of heads concatenated from per-head vectors "
                         "(multi-head latent attention's query or key, or attention outputs "
                         "side by side in each head) other than outputs laid out (batch, "
                         "tokens, heads, head dim), each head its own", help=_HELP)
        heads = parts[0].dim // parts[0].dh
        # each run's heads, as torch cut them (a chunk's last run may be shorter)
        runs = [int(t.shape[2]) if len(t.shape) == 4 else 0 for t in node.meta["val"]]
        if dim % 4 != 2 or len(set(runs)) != 1 or sum(runs) != heads:
            raise refuse(node, f"a {op_name(node)} of attention outputs side by side in each "
                         f"head ({heads} heads, cut into runs of {runs} along axis {dim}) "
                         "other than equal runs of whole heads along the heads axis: the "
                         "language takes one of a vector's equal parts, part(x, d, i)",
                         help=_HELP)
        whole = self.head_cat_vec(node, parts)
        size = whole.dim // len(runs)
        items = []
        for i in range(len(runs)):
            reader = next((u.name for u in node.users if u.target is operator.getitem
                           and u.args[1] == i), f"{node.name}_{i}")
            name = self.emit_vector(reader, f"part({whole.name}, {self.dim(size)}, {i})")
            items.append(Vec(name, tags, size, whole.dh))
        return Parts(items)

    def head_cat_vec(self, node, parts: list[Vec]) -> Vec:
        """``cat(a, b, ..., D, dv)`` of per-head vectors of the same heads, as the value of
        the concatenation that built them (the node ``node`` splits)."""
        size, dv = sum(p.dim for p in parts), sum(p.dh for p in parts)
        cat = node.args[0]
        expr = f"cat({', '.join(p.name for p in parts)}, {self.dim(size)}, {self.dim(dv)})"
        name = self.emit_vector(cat.name, expr)
        # a part that grows beside one that does not: refused once both widths are traced
        self.out.cats[name] = (len(self.out.slots) - 1, cat.name, op_name(node), False,
                               tuple(p.dim for p in parts))
        return Vec(name, parts[0].tags, size, dv)


def refuse_param_dot(node, u, v) -> None:
    """Refuses ``p * q`` of two whole vector params of the same shape summed over their entries
    into a number (DiffLlama's λ's dots, ``torch.sum(lambda_q1 * lambda_k1, dim=-1)``), saying
    why (the module's doc); returns for any other product of params (the caller refuses it)."""
    summed = [w for w in node.users if op_name(w) == "sum"]
    if not (len(u.shape) == len(v.shape) == 1 and u.shape == v.shape and summed
            and not (u.t or v.t or u.rows or v.rows)):
        return
    names = " · ".join(strip_prefix(x.target) for x in (u, v))
    raise refuse(node, f"a dot of two params ({names}, over {u.shape[0]} entries: "
                 "DiffLlama's λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init): the dot is unchanged "
                 "when one param is scaled by c and the other by 1/c, so the derivation bounds "
                 "only the pair and no condition fixes each one's init and LR; over a head dim "
                 "that grows with the width it is moreover a sum of dh products, Θ(√dh) at a "
                 "width-independent init and Θ(dh) once trained, whose exp grows without bound",
                 help="learn the number itself (one param of one entry, or a vector param "
                 "through a function of it, as a gain), fix it to a constant, or trace the "
                 "model without this part")
