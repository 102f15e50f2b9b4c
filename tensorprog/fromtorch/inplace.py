"""An in-place op (``x += y``) traced as its out-of-place op, where that is exact."""

from __future__ import annotations

from .where import aliased, op_name, refuse


def in_place(walker, node, op: str):
    """The handler of ``x.add_(y)`` (``x += y``: BERT's embeddings, CTRL's ``*=``): the
    out-of-place op's, whose value the walk gives this node. That is exact only when
    nothing reads x after it (those reads would be of the node before, which holds the
    value before the update, as would a view of x taken before): so x must be a value the
    forward computed and this its only use; else refused. Where x is a view of another
    value (``h[..., :k].mul_(2)``, ``new.view(b, t, n)[m] = y``) the write changes that
    value too, which later reads of it see: so each value x views, down to the one the
    forward computed, must have no other use either. None: no such op."""
    method = getattr(walker, f"op_{op[:-1]}", None)
    if method is None:
        return None
    target, reader = (node.args[0] if node.args else None), node
    while True:
        # a use that reads only x's shape (``m.expand_as(x)``, XLM's mask) sees no update
        users = {u for u in getattr(target, "users", ()) if not (
            op_name(u) == "expand_as" and u.args[0] is not target)}
        if getattr(target, "op", None) != "call_function" or users != {reader}:
            what = "a value that is used elsewhere (an input, a param, or a value read by " \
                "another op)" if reader is node else f"a {op_name(node.args[0])} of a value " \
                "read elsewhere (the write changes that value too, which those reads miss)"
            raise refuse(node, f"an in-place {op} on {what}", help=f"write it out of place "
                         f"(x = x + y rather than x += y; {op[:-1]}; a new value built by "
                         "torch.cat rather than written into a part of another)")
        base = aliased(target)
        if base is None:
            return method
        target, reader = base, target
