"""Transformers' Mamba-2 scan, the one op ``tensorprog::ssd_scan`` of the exported graph
(ssd_kernel.py), traced as the language's ``ssd`` read by ``mix``.

The op takes x [B, T, H, P], dt [B, T, H] (already softplus(dt + dt_bias): torch ops before
it), A [H] and B, C [B, T, G, N], G groups each serving H/G consecutive heads, and gives per
head y_t = Σ_{s<=t} exp(G_t - G_s) (C_t · B_s) dt_s x_s, G_t = Σ_{r<=t} dt_r A. That is
docs/theory.md's state-space mixing exactly:

    cb = dot(C, B, N),  p = ssd(cb, dt, A, P),  y = mix(p, x, P),

cb one number per group and token pair, A the model's param through its function (-exp(A_log),
kept by ops_paramfn.py) or a param itself. The skip D x and the gated norm after it are torch
ops the walk reads (``spread(D, P) * x``, rmsnorm over each group of coordinates).
"""

from __future__ import annotations

from .ops_paramfn import flat_param
from .values import Affine, ParamFn, Pointwise, PRef, Vec
from .where import refuse, strip_prefix

_HEADS = ("tok", "tok", "H", "dh")
_PER_HEAD = ("tok", "tok", "F")
_HELP = ("call the Mamba-2 scan as transformers' Mamba2Mixer does: x (batch, tokens, heads, "
         "head dim), dt (batch, tokens, heads), A = -exp(A_log) of a param A_log [heads], B and "
         "C (batch, tokens, groups, state size), the groups dividing the heads")


class SSDScanOps:
    """The Mamba-2 scan's mixing."""

    def op_ssd_scan(self, node, x, dt, a, b, c):
        vals = []
        for what, u, tags in (("x", x, _HEADS), ("dt", dt, _PER_HEAD), ("B", b, _HEADS),
                              ("C", c, _HEADS)):
            u = self.vec(u, node) if isinstance(u, (Vec, Affine, Pointwise)) else None
            if u is None or tuple(u.tags) != tags or u.group != 1:
                raise refuse(node, f"the Mamba-2 scan of {what} that is not a traced vector "
                             "laid out (batch, tokens, heads" +
                             (", coordinates)" if tags == _HEADS else ")"), help=_HELP)
            vals.append(u)
        x, dt, b, c = vals
        shapes = [tuple(n.meta["val"].shape) for n in node.args[:5]]
        batch, tokens, heads, hd = shapes[0]
        groups, state = shapes[3][2:]
        if shapes[1] != (batch, tokens, heads) or shapes[2] != (heads,) or \
                shapes[4] != shapes[3] or shapes[3][:2] != (batch, tokens) or heads % groups \
                or (x.dh, b.dh, c.dh) != (hd, state, state):
            raise refuse(node, f"the Mamba-2 scan of x {list(shapes[0])}, dt {list(shapes[1])}, "
                         f"A {list(shapes[2])}, B {list(shapes[3])} and C {list(shapes[4])}: "
                         "dt and A one number per head of x, B and C of groups dividing the "
                         "heads", help=_HELP)
        if not isinstance(a, (ParamFn, PRef)):
            raise refuse(node, "the Mamba-2 scan of a rate A that is not a param or a function "
                         "of one param alone (-exp(A_log)): the language's ssd reads A as a "
                         "vector of the heads without tokens", help=_HELP)
        ref = flat_param(a.ref if isinstance(a, ParamFn) else a)
        if tuple(ref.shape) != (heads,):
            raise refuse(node, f"the Mamba-2 scan of a rate A from the param "
                         f"{strip_prefix(ref.target)} of shape {list(ref.shape)}: one entry "
                         "per head", help=_HELP)
        w = self.vector_param(ref, node)
        rate = a.form.replace("{}", w) if isinstance(a, ParamFn) else w
        base = node.name
        cb = self.fresh(f"{base}_cb")
        self.out.stmts.append(f"{cb} = dot({c.name}, {b.name}, {self.dim(state)})")
        p = self.fresh(f"{base}_p")
        self.out.stmts.append(f"{p} = ssd({cb}, {dt.name}, {rate}, {self.dim(hd)})")
        name = self.emit_vector(base, f"mix({p}, {x.name}, {self.dim(hd)})")
        return Vec(name, _HEADS, x.dim, hd)
