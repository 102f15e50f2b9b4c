"""Transformers' RWKV time mixing, the one op ``tensorprog::wkv`` of the exported graph
(wkv_kernel.py), traced as the language's ``wkv(g, u, k, v)`` (ir/wkv.py).

The op takes g = -exp(time_decay) and u = time_first [D], functions of the model's params
(kept by ops_paramfn.py) or params themselves, and k, v [B, T, D] per token; per channel, its
value is the average of the values up to each token weighed by the softmax of k_s + (t-1-s) g
(s < t) and u + k_t: the language's ``wkv`` exactly, op for op.
"""

from __future__ import annotations

from .ops_paramfn import flat_param
from .values import Affine, ParamFn, Pointwise, PRef, Vec
from .where import refuse, strip_prefix

_PER_TOKEN = ("tok", "tok", "F")
_HELP = (
    "call the WKV as transformers' RwkvSelfAttention does: time_decay and time_first "
    "params [D], key and value (batch, tokens, D)"
)


class WkvOps:
    """RWKV's time mixing."""

    def op_wkv(self, node, g, u, k, v):
        vals = []
        for what, x in (("keys", k), ("values", v)):
            x = self.vec(x, node) if isinstance(x, (Vec, Affine, Pointwise)) else None
            if x is None or tuple(x.tags) != _PER_TOKEN:
                raise refuse(
                    node,
                    f"the WKV of {what} that are not a traced vector laid out "
                    "(batch, tokens, features)",
                    help=_HELP,
                )
            vals.append(x)
        k, v = vals
        size = tuple(node.args[2].meta["val"].shape)[-1]
        if tuple(node.args[3].meta["val"].shape)[-1] != size or k.dim != v.dim:
            raise refuse(
                node,
                "the WKV of keys and values of two sizes: one value per key channel",
                help=_HELP,
            )
        params = []
        for what, x in (("decay", g), ("bonus", u)):
            if not isinstance(x, (ParamFn, PRef)):
                raise refuse(
                    node,
                    f"the WKV of a {what} that is not a param or a function of "
                    "one param alone (-exp(time_decay)): the language's wkv reads it "
                    "as one number per channel, without tokens",
                    help=_HELP,
                )
            ref = flat_param(x.ref if isinstance(x, ParamFn) else x)
            if tuple(ref.shape) != (size,):
                raise refuse(
                    node,
                    f"the WKV of a {what} from the param "
                    f"{strip_prefix(ref.target)} of shape {list(ref.shape)}: one entry "
                    "per channel of the keys",
                    help=_HELP,
                )
            w = self.vector_param(ref, node)
            params.append(x.form.replace("{}", w) if isinstance(x, ParamFn) else w)
        name = self.emit_vector(node.name, f"wkv({params[0]}, {params[1]}, {k.name}, {v.name})")
        return Vec(name, _PER_TOKEN, k.dim)
