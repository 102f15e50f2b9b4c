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

    # -- ids edited before a lookup ------------------------------------------------------------
    # Gemma 3 and Granite Speech set their placeholders' ids to one id before the lookup
    # (ids[ids == image] = 0) and put the image's or audio's features there after it: the walk
    # reads the edited ids as the token ids (walk.py), so the program looks up the placeholders'
    # own ids, which only a place over those tokens makes no matter. Where the example's edited
    # ids differ, the lookup's tokens there are tracked through per-token ops with numbers to
    # the masked_scatter that covers them; any other read of them is refused.

    def edited_ids(self, node, ids) -> None:
        """Record the tokens where ``node`` (the ids ``ids`` with some set to one id) differs
        from them at the example's ids."""
        import torch

        if not getattr(self, "traced_ids", False):  # (the check's probe: judged at the trace)
            return
        new, old = self.with_example_ids(node), self.with_example_ids(ids)
        if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor) \
                and new.shape == old.shape and not torch.equal(new, old):
            self.__dict__.setdefault("edited", {})[node.name] = new != old

    def edited_read(self, node) -> None:
        """Carry the edited tokens of an argument of ``node`` on (a lookup of the ids, a number
        times it, a copy), clear them where a masked_scatter covers them, or refuse any other
        read of the vectors there."""
        edited = self.__dict__.get("edited")
        flat = [x for a in (*node.args, *node.kwargs.values())
                for x in (a if isinstance(a, (list, tuple)) else [a])]
        at = [a for a in flat if hasattr(a, "name") and a.name in (edited or {})]
        if not at:
            return
        tokens, op = edited[at[0].name], op_name(node)
        if not node.users or op in _SHAPE_ONLY and at[0] is not node.args[0] or \
                op.endswith("_like") and at[0] is node.args[0]:
            return  # read by nothing, or for its shape alone (mask.expand_as(h))
        if op == "embedding" and at[0] is node.args[1]:
            edited[node.name] = tokens
            return
        if op in ("masked_scatter", "masked_scatter_") and at[0] is node.args[0]:
            m = self.with_example_ids(node.args[1])
            try:
                covered = bool(m.bool().expand(node.meta["val"].shape).all(-1)[tokens].all())
            except (AttributeError, RuntimeError, IndexError):
                covered = False
            if covered:
                return
        others = [a for a in flat if hasattr(a, "op") and a is not at[0]]
        same = _shape(node) is not None and _shape(node) == _shape(at[0])
        if same and op in _PER_TOKEN and all(
                isinstance(self.env.get(a.name), Conc) for a in others):
            edited[node.name] = tokens
            return
        spans = "; ".join(f"sequence {b}: tokens {_spans(torch_rows(r))}"
                          for b, r in enumerate(tokens.reshape(-1, tokens.shape[-1])))
        raise refuse(node, f"a lookup of token ids set to one id where a condition picks them "
                     f"({spans} of the example) read by {op}: the program looks up the ids "
                     "themselves there, so only putting another sequence's vectors in their "
                     "place (masked_scatter, place(v, h, k)) may read it", help=_HELP)

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


# ops that act on each token's vector alone, with numbers: the edited tokens stay where they are
_PER_TOKEN = {"mul", "mul_", "div", "div_", "_to_copy", "to", "clone", "alias", "detach",
              "contiguous"}


_SHAPE_ONLY = {"expand_as", "view_as", "reshape_as", "type_as", "sym_size"}


def _shape(node) -> tuple | None:
    shape = getattr(node.meta.get("val"), "shape", None)
    return None if shape is None else tuple(shape)


def torch_rows(row) -> list[int]:
    """The indices where a 1-D boolean tensor holds."""
    return [i for i, t in enumerate(row.tolist()) if t]


def _spans(tokens: list[int]) -> str:
    """Token indices as runs (``3-6, 9``), or ``none``."""
    runs: list[list[int]] = []
    for t in tokens:
        if runs and t == runs[-1][1] + 1:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs) or "none"
