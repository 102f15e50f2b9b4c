"""One sequence's token vectors put in place of some of another's: an image's features put
where a prompt holds the image's placeholder tokens, the language's ``place(v, h, k)``.

Gemma 3 (ShieldGemma-2) embeds the prompt's ids and scatters the image's features into the
embeddings where the ids are its image token: ``inputs_embeds.masked_scatter(input_ids ==
image_token_id, image_features)``. The mask is a constant of the ids, read here from the
example's own ids (the walk computes its other constants from zeros in their place, and again
from probe ids, so that nothing that varies with the ids reads as a constant; the placeholders
are where the example puts them, as its processor does). The program then places the image's
tokens there whatever ids it is fed: a model whose prompts put the image elsewhere is traced
with such a prompt. ``masked_scatter`` fills the mask's entries in order with the source's,
over the whole batch, so it is ``place(v, h, k)`` exactly where every sequence's mask is one
block of whole tokens from the same token k, as many as each sequence of the source has: any
other mask (tokens apart, blocks at different tokens across the batch, a token's features in
part, a count that differs) is refused at its line.

An image cut into patches beside token ids runs over a sequence of its own (``T_patch``): the
prompt's ``T`` is the ids' (ops_conv.py asks :meth:`PlaceOps.takes_ids`).
"""

from __future__ import annotations

from .values import Conc, Given, Tok, Vec
from .where import op_name, refuse

_HELP = ("put the image's placeholder tokens at the same positions in every prompt of the "
         "batch, one block of as many tokens as the image has features (prompts padded to one "
         "length on the left move them: trace prompts of one length)")


class _Unknown(Exception):
    """An argument whose value with the example's ids the walk does not have."""


class PlaceOps:
    """masked_scatter of one sequence's token vectors into another's (see the module)."""

    def takes_ids(self) -> bool:
        """Whether the forward takes token ids (an integer input the walk reads as them)."""
        import torch

        users = {s.arg.name for s in self.ep.graph_signature.input_specs
                 if s.kind.name == "USER_INPUT"}
        return any(
            n.op == "placeholder" and n.name in users and n.name not in self.given
            and isinstance(n.meta.get("val"), torch.Tensor)
            and not n.meta["val"].dtype.is_floating_point for n in self.ep.graph.nodes)

    def with_example_ids(self, node):
        """The value of graph node ``node`` computed on the CPU with the example's token ids
        (not the trace's zeros), from the ids and constants alone, op by op through the graph;
        None where it reads anything else (a param, a float input, a value of the network)."""
        import torch

        ids, memo = getattr(self, "example_ids", None), {}

        def ex(a):
            if isinstance(a, (list, tuple)):
                return type(a)(ex(x) for x in a)
            if isinstance(a, torch.device):
                return torch.device("cpu")
            if not hasattr(a, "op"):
                return a
            if a.name not in memo:
                memo[a.name] = value(a)
            return memo[a.name]

        def value(n):
            env = self.env.get(n.name)
            if n.op == "placeholder" and isinstance(env, Tok) and ids is not None:
                return self.laid_ids(ids, env)
            if n.op == "placeholder" and type(env) in (Conc, Given):  # a known constant
                return env.value
            if n.op != "call_function":
                raise _Unknown
            if op_name(n) == "expand_as":  # reads the other's shape alone
                return ex(n.args[0]).expand(n.meta["val"].shape)
            return n.target(*ex(n.args), **{k: ex(v) for k, v in n.kwargs.items()})

        try:
            with torch.set_grad_enabled(torch.is_grad_enabled()):
                return ex(node)
        except Exception:  # noqa: BLE001 - a value we cannot compute is simply unknown
            return None

    def op_masked_scatter(self, node, x, mask, src):
        import torch

        shape = tuple(node.args[0].meta["val"].shape)
        given = tuple(node.args[2].meta["val"].shape)
        what = f"a masked_scatter of a source {list(given)} into {list(shape)}"
        m = self.with_example_ids(node.args[1]) if isinstance(mask, Conc) else None
        if m is None:
            raise refuse(node, f"{what} under a mask that is not computed from the token ids "
                         "and numbers alone (the language places one sequence's tokens at "
                         "positions of another fixed by the ids: place(v, h, k))", help=_HELP)
        h, v = self.vec(x, node), self.vec(src, node)
        m = torch.as_tensor(m).bool()
        if len(shape) != 3 or len(given) != 3 or h.tags != ("tok", "tok", "F") \
                or v.tags != ("tok", "tok", "F") or given[0] != shape[0] \
                or given[2] != shape[2] or m.dim() > 3:
            raise refuse(node, f"{what}: the language places the token vectors of one "
                         "sequence, (batch, tokens, features), among another's of the same "
                         "batch and features (place(v, h, k))", help=_HELP)
        try:
            m = m.expand(shape)
        except RuntimeError:
            raise refuse(node, f"{what} under a mask of shape {list(m.shape)}",
                         help=_HELP) from None
        whole = m.all(-1)
        if not torch.equal(whole, m.any(-1)):
            raise refuse(node, f"{what} under a mask that picks some of a token's features "
                         "and not others (the language places whole tokens)", help=_HELP)
        rows = [torch.nonzero(r).flatten().tolist() for r in whole]
        k, s = (rows[0] or [0])[0], given[1]
        if any(r != list(range(k, k + s)) for r in rows):
            at = "; ".join(f"sequence {b}: tokens {_spans(r)}" for b, r in enumerate(rows))
            raise refuse(node, f"{what} at the tokens the example's ids mark ({at}): the "
                         f"language places one block of {s} tokens (the source's) from the "
                         "same token k in every sequence (place(v, h, k))", help=_HELP)
        name = self.emit_vector(node.name, f"place({v.name}, {h.name}, {k})")
        return Vec(name, h.tags, h.dim)


def _spans(tokens: list[int]) -> str:
    """Token indices as runs (``3-6, 9``), or ``none``."""
    runs: list[list[int]] = []
    for t in tokens:
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs) or "none"
