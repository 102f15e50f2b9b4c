"""Transformers' gated delta rule, the one op ``tensorprog::gated_delta`` of the exported graph
(delta_kernel.py), traced as the language's ``delta`` read by ``mix``.

The kernel takes q, k [B, T, Hk, dk], v [B, T, Hv, dv] and g, beta [B, T, Hv] (Hv a whole
number r of Hk: each query/key head serves r consecutive value heads); with
``use_qk_l2norm_in_kernel`` it L2-normalises each head of q and k (x·rsqrt(Σx² + 1e-6)) and
scales q by dk^-1/2. L2-normalised, a head is rmsnorm's over √dk, so

    sq = tau * dot(rmsnorm(q, dk), rmsnorm(k, dk), dk),  tau = dk^-1/2 / dk,
    sk = kap * dot(rmsnorm(k, dk), rmsnorm(k, dk), dk),  kap = 1 / dk,
    o = mix(delta(sq, sk, beta, g[, dv, D]), v[, dv]),

the eps aside, as for F.normalize (ops_norm.py): rmsnorm's 1e-6 is on the mean square, the
kernel's on the sum. Without the normalisation in the kernel the keys are not of length 1,
which the delta rule's rules (docs/theory.md) take them to be: refused.

Before the call, transformers' layers cut the tokens in two with ``torch.tensor_split(x,
[T - kept], dim=1)``: the chunked part and the last ``kept`` tokens run token by token to keep
their states for a cache. With no cache kept = 0: the first part is every token and the second
is empty, read by nothing (its loop runs 0 times); that split is the value itself.
"""

from __future__ import annotations

import math

from .gained import Gained
from .ops_tconv import TokenConvOps
from .values import Affine, Parts, Pointwise, Vec
from .where import CHECK_OPS, op_name, refuse

_HEADS = ("tok", "tok", "H", "dh")
_PER_HEAD = ("tok", "tok", "F")
_KDA_HELP = ("call Kimi Delta Attention as Kimi Linear does: q, k, v and g (batch, tokens, "
             "heads, dk), beta (batch, tokens, heads), use_qk_l2norm_in_kernel=True")
_HELP = ("call the gated delta rule as Gated DeltaNet does: q, k (batch, tokens, key heads, "
         "dk), v (batch, tokens, value heads, dv), g and beta (batch, tokens, value heads), "
         "value heads a whole number of key heads, use_qk_l2norm_in_kernel=True")


class DeltaRuleOps:
    """``tensor_split`` keeping every token, and the gated delta rule's kernel call (Kimi Delta
    Attention's too)."""

    def op_tensor_split(self, node, v, indices, dim=0):
        """A split of the tokens at their end (the chunked part all of them, the rest empty
        and read by nothing): the value as it is. Any other, as the short convolution's ops
        refuse it (ops_tconv.py)."""
        tags = tuple(self._tags(v, node) or ()) if isinstance(
            v, (Vec, Affine, Pointwise, Gained)) else ()  # (Gained: ops_fixedgain.py)
        shape = tuple(node.args[0].meta["val"].shape)
        axis = dim % len(shape) if shape else 0
        if tags and tags[axis] == "tok" and isinstance(indices, (list, tuple)) and \
                list(indices) == [shape[axis]]:
            rest = [u for u in node.users if u.args[1] != 0]
            if not any(op_name(r) not in CHECK_OPS for u in rest for r in u.users):
                return Parts([self.vec(v, node), None])
        return TokenConvOps.op_tensor_split(self, node, v, indices, dim)

    def head_rows(self, node, v, old, shape) -> Vec | None:
        """Every head of every token a row of its own, ``x.reshape(-1, dh)`` of (B, T, H, dh)
        or of (B, T, H·dh), and back, ``.reshape(B, T, -1)`` or ``.reshape(B, T, H, dh)``
        (Gated DeltaNet's gated norm of
        each value head): tagged (H, dh), as heads merged with the batch are (ops_heads.py),
        since what reads a row reads one head; None for any other view."""
        old, shape = tuple(old), tuple(shape)
        if not isinstance(v, (Vec, Affine, Pointwise)) or len(shape) != 2 or \
                math.prod(shape) != math.prod(old) or shape[-1] < 2:
            return self._rows_back(v, old, shape) if isinstance(v, Vec) else None
        tags = tuple(self._tags(v, node))
        if tags == _HEADS and shape[-1] == old[-1] or tags == _PER_HEAD and \
                old[-1] % shape[-1] == 0 and shape[-1] < old[-1]:
            x = self.vec(v, node)
            return Vec(x.name, ("H", "dh"), x.dim, shape[-1])
        return None

    def _rows_back(self, v: Vec, old, shape) -> Vec | None:
        """(B·T·H, dh) rows back to (B, T, H·dh), or to (B, T, H, dh) (Qwen3-Next's), the
        batch first as the tokens' was."""
        if v.tags != ("H", "dh") or math.prod(shape) != math.prod(old) or \
                shape[0] != getattr(self.tok_value, "shape", (None,))[0]:
            return None
        if len(shape) == 3 and shape[2] == v.dim:
            return Vec(v.name, _PER_HEAD, v.dim)
        if len(shape) == 4 and shape[3] == old[1] == v.dh:
            return Vec(v.name, _HEADS, v.dim, v.dh)
        return None

    def op_gated_delta(self, node, q, k, v, g, beta, l2norm):
        if not l2norm:
            raise refuse(node, "the gated delta rule without its queries and keys L2-normalised "
                         "in the kernel (use_qk_l2norm_in_kernel=False): the delta rule's "
                         "state stays bounded for keys of length 1, which the language's delta "
                         "takes them to be", help="pass use_qk_l2norm_in_kernel=True (Gated "
                         "DeltaNet's layers do)")
        vals = []
        for what, x, tags in (("queries", q, _HEADS), ("keys", k, _HEADS), ("values", v, _HEADS),
                              ("g", g, _PER_HEAD), ("beta", beta, _PER_HEAD)):
            x = self.vec(x, node) if isinstance(x, (Vec, Affine, Pointwise)) else None
            if x is None or tuple(x.tags) != tags or x.group != 1:
                raise refuse(node, f"the gated delta rule of {what} that are not a traced "
                             "vector laid out (batch, tokens, heads" +
                             (", head dim)" if tags == _HEADS else ")"), help=_HELP)
            vals.append(x)
        q, k, v, g, beta = vals
        shapes = [tuple(a.meta["val"].shape) for a in node.args[:5]]
        heads, dk = shapes[0][2:]
        vheads, dv = shapes[2][2:]
        if shapes[1] != shapes[0] or vheads % heads or shapes[3] != shapes[4] or \
                shapes[3] != shapes[2][:3] or shapes[2][:2] != shapes[0][:2] or \
                (q.dh, k.dh, v.dh) != (dk, dk, dv):
            raise refuse(node, f"the gated delta rule of queries {list(shapes[0])}, keys "
                         f"{list(shapes[1])}, values {list(shapes[2])}, g {list(shapes[3])} "
                         f"and beta {list(shapes[4])}: the keys as the queries, the values' "
                         "heads a whole number of theirs, g and beta one number per value head",
                         help=_HELP)
        dkn, base = self.dim(dk), node.name
        qn, kn = self._unit(f"{base}_q", q.name, dk), self._unit(f"{base}_k", k.name, dk)
        tau, kap = self._delta_scale(base + "_tau", dk**-1.5), self._delta_scale(base + "_kap",
                                                                                 1 / dk)
        sq = self._delta_stmt(f"{base}_sq", f"{tau} * dot({qn}, {kn}, {dkn})")
        sk = self._delta_stmt(f"{base}_sk", f"{kap} * dot({kn}, {kn}, {dkn})")
        grouped = vheads != heads or dv != dk
        over = f", {self.dim(dv)}, {self.dim(v.dim)}" if grouped else ""
        p = self._delta_stmt(f"{base}_p", f"delta({sq}, {sk}, {beta.name}, {g.name}{over})")
        name = self.emit_vector(base, f"mix({p}, {v.name}"
                                f"{f', {self.dim(dv)}' if grouped else ''})")
        return Vec(name, _HEADS, v.dim, dv)

    def op_kda(self, node, q, k, v, g, beta, l2norm):
        """Kimi Delta Attention (delta_kernel.py's ``kda``): the delta rule of dots decayed per
        key channel, delta(tau * ddot(q, k, g, dk), kap * ddot(k, k, g, dk), beta) read by
        mix (ir/ddot.py unrolls the recurrence), q and k normalised as for the gated rule."""
        if not l2norm:
            raise refuse(node, "Kimi Delta Attention without its queries and keys L2-normalised "
                         "in the kernel (use_qk_l2norm_in_kernel=False): the delta rule's state "
                         "stays bounded for keys of length 1, which the language's delta takes "
                         "them to be", help="pass use_qk_l2norm_in_kernel=True (Kimi Linear's "
                         "layers do)")
        vals = []
        for what, x, tags in (("queries", q, _HEADS), ("keys", k, _HEADS), ("values", v, _HEADS),
                              ("g", g, _HEADS), ("beta", beta, _PER_HEAD)):
            x = self.vec(x, node) if isinstance(x, (Vec, Affine, Pointwise)) else None
            if x is None or tuple(x.tags) != tags or x.group != 1:
                raise refuse(node, f"Kimi Delta Attention of {what} that are not a traced "
                             "vector laid out (batch, tokens, heads" +
                             (", head dim)" if tags == _HEADS else ")"), help=_KDA_HELP)
            vals.append(x)
        q, k, v, g, beta = vals
        shapes = [tuple(a.meta["val"].shape) for a in node.args[:5]]
        dk = shapes[0][3]
        if len(set(shapes[:4])) != 1 or shapes[4] != shapes[0][:3] or \
                (q.dh, k.dh, v.dh, g.dh) != (dk,) * 4:
            raise refuse(node, f"Kimi Delta Attention of queries {list(shapes[0])}, keys "
                         f"{list(shapes[1])}, values {list(shapes[2])}, g {list(shapes[3])} and "
                         f"beta {list(shapes[4])}: the language's form takes keys, values and "
                         "the decay g of the queries' shape (one decay per key channel), beta "
                         "one number per head", help=_KDA_HELP)
        dkn, base = self.dim(dk), node.name
        qn, kn = self._unit(f"{base}_q", q.name, dk), self._unit(f"{base}_k", k.name, dk)
        tau, kap = self._delta_scale(base + "_tau", dk**-1.5), self._delta_scale(base + "_kap",
                                                                                 1 / dk)
        sq = self._delta_stmt(f"{base}_sq", f"{tau} * ddot({qn}, {kn}, {g.name}, {dkn})")
        sk = self._delta_stmt(f"{base}_sk", f"{kap} * ddot({kn}, {kn}, {g.name}, {dkn})")
        p = self._delta_stmt(f"{base}_p", f"delta({sq}, {sk}, {beta.name})")
        name = self.emit_vector(base, f"mix({p}, {v.name})")
        return Vec(name, _HEADS, v.dim, dk)

    def _unit(self, base: str, x: str, dk: int) -> str:
        """The kernel's L2 normalisation of each head of ``x``, x / sqrt(Σx² + 1e-6), times
        sqrt(dk) (tau and kap divide it back out), exactly: rmsnorm(sqrt(dk) * x, dk), whose
        1e-6 on the mean of the squares of sqrt(dk)·x is the kernel's on their sum. A plain
        rmsnorm(x, dk) would add 1e-6 to the mean, dk times the kernel's eps, which keys as
        short as a small init makes them (Σx² ~ 1e-5) feel. sqrt(dk) is written at the base
        width's value (a fixed head dim's at every width; a growing one derive refuses)."""
        self.out.slots.append(("literal", math.sqrt(dk)))
        return self._delta_stmt(base, f"rmsnorm({{s{len(self.out.slots) - 1}}} * {x}, "
                                f"{self.dim(dk)})")

    def _delta_stmt(self, base: str, expr: str) -> str:
        """A statement of the delta rule's own values, which the model holds in no node."""
        name = self.fresh(base)
        self.out.stmts.append(f"{name} = {expr}")
        return name

    def _delta_scale(self, base: str, value: float) -> str:
        self.out.slots.append(("scale", value))
        name = self.fresh(base)
        self.out.decls.append(f"scale {name} = {{s{len(self.out.slots) - 1}}}")
        return name
