"""Experts layers that loop over the experts a batch hits, traced through a stand-in.

transformers' DBRX applies its experts in a Python loop over the experts the batch's tokens
were routed to (``for expert_idx in expert_hit``, from a ``nonzero``): a loop whose length the
data decides, which ``torch.export`` cannot trace. Its experts' matrices are 2-D params
[E·ffn, n] (``w1``, ``v1``: each expert's rows applied as a linear layer's weight; ``w2``:
each expert's rows [ffn, n] applied as ``x @ W[e]``), and expert e's output for a token is
``w2[e]ᵀ (act(w1[e] x) * v1[e] x)`` times the token's gate of e, summed over its k experts.

For the trace only, the forward of transformers' own ``DbrxExperts`` is swapped for a stand-in
that computes exactly that without the loop: each token once per slot, its slot's expert's
matrices gathered from the params viewed [E, ffn, n] (``W[ids]``) for a batched matmul, the
gates multiplied in and the k slots summed, the form ops_moe.py reads into ``route``. The
stand-in leaves a subclass's own forward alone, which the export then reads, or refuses, as
before; an expert MLP whose forward is not transformers' own, or that has forward hooks (which
the loop's ``self.mlp(...)`` runs, the stand-in would not), is refused at its line.
"""

from __future__ import annotations

import contextlib
import sys

from ..errors import TraceError
from .where import def_span

_MODULE = "transformers.models.dbrx.modeling_dbrx"


def _unplain(mlp, glu_forward) -> tuple[str, object] | None:
    """Why calling ``mlp`` runs more than transformers' own forward, with the function that
    does it: a forward of the user's (a subclass's or one set on the instance) or a forward or
    pre-forward hook (the module's own or global), each of which the loop's ``self.mlp(...)``
    runs and the stand-in would skip; None where it runs that forward alone."""
    from torch.nn.modules import module

    fn = getattr(mlp.forward, "__func__", mlp.forward)
    if fn is not glu_forward:
        return f"its expert MLP ({type(mlp).__name__}) has a forward of its own", fn
    hooks = [*mlp._forward_pre_hooks.values(), *mlp._forward_hooks.values(),
             *module._global_forward_pre_hooks.values(), *module._global_forward_hooks.values()]
    if hooks:
        return "its expert MLP has a forward hook (or a global one)", hooks[0]
    return None


def _dbrx_experts(original, glu_forward):
    def forward(self, hidden_states, top_k_index, top_k_weights):
        import torch

        mlp = self.mlp
        if (why := _unplain(mlp, glu_forward)) is not None:  # the loop: refused by the export
            raise TraceError(
                f"cannot trace DBRX's experts: their forward loops over the experts the batch "
                f"hits (a loop the data decides), traced as the batched form it computes only "
                f"where the expert MLP is transformers' own DbrxExpertGLU, run as it is, and "
                f"{why[0]}", def_span(why[1]) or def_span(original),
                help="trace the model without the hook or forward (apply µP, then add it), or "
                "write the experts as the batched W[ids] form (docs/torch.md)")
        batch, n = hidden_states.shape[0], self.hidden_size
        k = top_k_index.shape[-1]
        x = hidden_states.reshape(-1, n).repeat_interleave(k, dim=0)  # each token per slot
        ids = top_k_index.reshape(-1)
        shape = (self.num_experts, self.ffn_hidden_size, n)
        gate = torch.bmm(mlp.w1.view(shape)[ids], x.unsqueeze(-1)).squeeze(-1)
        up = torch.bmm(mlp.v1.view(shape)[ids], x.unsqueeze(-1)).squeeze(-1)
        h = mlp.activation_fn(gate) * up
        y = torch.bmm(h.unsqueeze(1), mlp.w2.view(shape)[ids]).squeeze(1)  # x @ w2[e]
        y = y * top_k_weights.reshape(-1, 1)
        return y.view(-1, k, n).sum(dim=1).view(batch, -1, n)

    return forward


@contextlib.contextmanager
def expert_loops():
    """For the duration: transformers' DbrxExperts.forward (where loaded and its own) replaced
    by the loop-free stand-in (see the module's docstring); restored after."""
    module = sys.modules.get(_MODULE)
    cls = getattr(module, "DbrxExperts", None)
    glu = getattr(module, "DbrxExpertGLU", None)
    original = cls.__dict__.get("forward") if cls is not None else None
    if original is None or glu is None or getattr(original, "__module__", "") != _MODULE:
        yield
        return
    cls.forward = _dbrx_experts(original, glu.__dict__["forward"])
    try:
        yield
    finally:
        cls.forward = original
