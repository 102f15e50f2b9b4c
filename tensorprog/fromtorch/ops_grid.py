"""A table of positions laid out as the image's grid and back: SigLIP2's and PVT's.

Both keep a learned table of one row per patch, ``[P, n]`` (SigLIP2's ``nn.Embedding``) or
``[1, P, n]`` (PVT's param), reshape it to the grid ``[h, w, n]``, permute it channels first,
resize it to the image's patch grid and lay it back out as one row per token: PVT with
``F.interpolate(mode="bilinear")``, SigLIP2 with its own bilinear weights built from the
images' ``spatial_shapes``, a constant ``[B, T, P]`` matmul'd with the table.

A resize to the table's own grid is the identity, and then the chain is the table as it is: the
ordinary learned positions, read at positions 0..T-1 (``P @ pos``: a lookup, a finite fan-in
one-hot input; ops_conv.position_table, ops_linear.op_embedding). A resize to another grid
makes each token's row a fixed mix of a few of the table's rows (weights summing to 1): a
position lookup still in µP terms, but one the language has no form for, refused.

The walk follows such a chain exactly, never by its shape alone: a value of the chain is the
param's flat index of each of its entries (:class:`Laid`), each rearranging op (a view, permute,
slice, concatenation, expand, flip, an index_select of constant positions) run on those indices
as on the values, and a value whose indices are the param's own, in the param's shape, is the
param again. Several params' entries moved together (tables of a grid's axes concatenated before
they are read out per token) are a :class:`Joint`; where laid-out entries meet anything but a
move, ops_axial.py reads them as whole rows of a grid axis's table at each position, if they
are, and the op runs on those vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ops_standardise import STD_HELP as _STD_HELP
from .ops_standardise import Standardised, standardised_rows
from .values import Conc, PRef
from .where import refuse, strip_prefix

# ops that only move entries: run on the indices as they are on the values
_MOVES = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "permute", "transpose",
          "t", "slice", "select", "unsqueeze", "squeeze", "cat", "reshape_as", "view_as",
          "expand", "index_select", "flip", "roll"}
_LIKE = ("reshape_as", "view_as")  # their second argument gives only a shape
_HELP = ("lay the table back out as one row per token, in the table's own order, through "
         "reshapes, permutes and slices alone (a resize to the table's own grid is the identity "
         "and is followed), then add it to the tokens; or keep a table per axis of a grid of "
         "the positions, each expanded over the batch and the other axes and reshaped to one "
         "row per token, position t reading row (t // s) mod R (Reformer's axial positions)")


@dataclass
class Laid:
    """A param's entries rearranged: ``index`` (int64, the value's shape) holds the param's
    flat index of each entry."""

    ref: PRef
    index: object  # torch.Tensor
    eps: float | None = None  # its rows standardised with this eps (ops_standardise.py)


@dataclass
class Joint:
    """The entries of several params laid out together (``torch.cat`` of tables of a grid's
    axes before their rows are read out per token, Reformer's in eval mode): ``index`` holds
    each entry's flat index into the params' entries one after another, ``refs`` in order,
    param k's from ``starts[k]``."""

    refs: tuple
    starts: tuple
    index: object  # torch.Tensor


@dataclass
class Ids:
    """The positions an ``index_select`` of laid-out entries reads, a constant of integer ids
    (Reformer's eval forward: each example's position ids)."""

    value: object  # torch.Tensor


def constant(a):
    """A whole number the forward computes from no input (a slice's end from
    ``position_ids.max().item()``), as an int; None for anything else (a value from the token
    ids, ``probe``, is no constant; nor is a tensor of several numbers)."""
    import torch

    if type(a) is not Conc or a.probe is not None or a.given:  # (a Given is an input)
        return None
    v = a.value
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not (
            v.is_floating_point() or v.is_complex()):
        return int(v)
    return v if isinstance(v, int) else None


def with_ids(op: str, args: list) -> list:
    """``args`` of ``index_select(x, dim, ids)`` with x laid-out entries and ids a constant of
    integer positions: the ids marked :class:`Ids`, a move's argument; else ``args``."""
    import torch

    if op != "index_select" or len(args) < 3 or not isinstance(args[0], (Laid, Joint)):
        return args
    ids = args[2]
    if type(ids) is not Conc or ids.probe is not None or ids.given or not isinstance(
            ids.value, torch.Tensor) or ids.value.dim() != 1 or ids.value.is_floating_point():
        return args
    return [*args[:2], Ids(ids.value), *args[3:]]


def plain(ref) -> bool:
    """A param as it is: not transposed, sliced, shifted or one block or expert of it."""
    return isinstance(ref, PRef) and not ref.t and ref.rows is None and ref.offset == 0 and \
        ref.period is None and ref.part is None and ref.expert is None and ref.cols is None


def _exact_identity(node, x_shape) -> bool:
    """Whether the resize ``node`` maps an input of ``x_shape`` to itself, entry for entry:
    its output of the input's shape (a resize to the same grid: each output pixel's source
    coordinate is its own, so its weights are 1 on itself and 0 elsewhere, and x·1 + y·0 = x
    exactly), checked on random values in float32 and float64 with the op's own arguments."""
    import torch

    if tuple(node.meta["val"].shape) != tuple(x_shape):
        return False
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(tuple(x_shape), generator=gen, dtype=dtype)
        args = (x, *node.args[1:])
        try:
            y = node.target(*args, **node.kwargs)
        except Exception:  # noqa: BLE001 - an op we cannot run is not known to be the identity
            return False
        if not torch.equal(x, y):
            return False
    return True


class GridOps:
    """A param's entries laid out anew (a table of positions as the image's grid), followed
    exactly to the param again or refused."""

    def laid(self, node, ref: PRef) -> Laid:
        """A param about to be rearranged (``table.reshape(h, w, n)``, ``pos[:, 1:]``)."""
        import torch

        if not plain(ref):
            raise refuse(node, "a reshaped part of a param (a block of its rows, a transposed "
                         "or shifted param)", help=_HELP)
        return Laid(ref, torch.arange(_numel(ref.shape)).reshape(ref.shape))

    def laid_op(self, node, op: str, args, kwargs):
        """An op on a laid-out param: the moves run on its indices (the param again where they
        are its own), a resize to its own grid the identity, anything else refused."""
        args = with_ids(op, args)
        if op == "sym_size" and isinstance(args[0], (Laid, Joint)):
            # a size export leaves unknown (a slice up to position_ids.max().item(), Reformer's
            # eval forward): the entries' own, computed here
            return int(args[0].index.shape[args[1] if len(args) > 1 else 0])
        if op.startswith(("upsample_", "_upsample_")):
            x = args[0]
            if isinstance(x, Laid) and _exact_identity(node, tuple(x.index.shape)):
                return x
            grid = list(self._shape(node.args[0])[2:])
            raise refuse(
                node,
                f"a table of positions resized from its grid {grid} to "
                f"{list(self._shape(node)[2:])}: each token's row is then a fixed mix of the "
                "table's rows (weights summing to 1), a lookup of positions the language has no "
                "form for (a resize to the table's own grid, the identity, is traced)",
                help="feed images of the grid the table was made for (image_size / patch_size "
                "patches a side), or resize the table once, outside the forward",
            )
        if op == "batch_norm" and args and isinstance(args[0], Laid):
            return Laid(args[0].ref, args[0].index, standardised_rows(node, args[0], args))
        std = next((a for a in flat(args) if isinstance(a, Laid) and a.eps is not None), None)
        if op not in _MOVES and std is not None:
            raise refuse(node, f"the op {op} on the standardised rows of the param "
                         f"{strip_prefix(std.ref.target)}: standardised rows are traced only "
                         "laid back out in the param's shape (reshape_as) and read as a "
                         "convolution's kernel", help=_STD_HELP)
        if op in _MOVES and (not _one_param(args) or any(isinstance(a, Joint)
                                                          for a in flat(args))):
            # the entries of several params moved together (ops_axial.py)
            joint = self.joint_move(node, op, args, kwargs)
            if joint is not None:
                return joint
        if op not in _MOVES or not _one_param(args):
            # each laid-out param the rows of a grid of positions (ops_axial.py), read on
            read = self._axial_args(node, args)
            if read is not None:
                method = getattr(self, f"op_{op}", None)
                if method is None:
                    raise refuse(node, f"the op {op}")
                return method(node, *read, **kwargs)
        if op not in _MOVES:
            # the reshaped param's own argument, which need not be the op's first (h + pos)
            at = next((i for i, a in enumerate(args) if isinstance(a, (Laid, Joint))), 0)
            a = args[at]
            laid = " and ".join(str(list(r.shape)) for r in (
                a.refs if isinstance(a, Joint) else (a.ref,) if isinstance(a, Laid) else ()))
            raise refuse(node, f"the op {op} on a reshaped param (its entries laid out anew, "
                         f"{laid or '[]'} as {list(self._shape(node.args[at]))}): a reshaped "
                         "param is followed only through reshapes, permutes, slices, "
                         "concatenations of its parts and a resize to its own grid, back to its "
                         "own layout (a table of positions laid out as the image's grid and "
                         "back), or to whole rows of a grid axis's table at each position "
                         "(Reformer's axial positions)", help=_HELP)
        if not _one_param(args):
            raise refuse(node, f"a {op} of a param's rearranged entries with other values",
                         help=_HELP)
        ref = next(a.ref for a in flat(args) if isinstance(a, Laid))
        read = flat(args[:1] if op in _LIKE else args)
        eps = {a.eps if isinstance(a, Laid) else None for a in read if isinstance(a, (Laid, PRef))}
        if len(eps) != 1:
            raise refuse(node, f"a {op} of a param's standardised entries with its raw ones "
                         f"({strip_prefix(ref.target)})", help=_STD_HELP)

        def index(a):
            if isinstance(a, Laid):
                return a.index
            if isinstance(a, PRef):
                return self.laid(node, a).index
            if isinstance(a, (list, tuple)):
                return type(a)(index(x) for x in a)
            if isinstance(a, Ids):  # the positions an index_select reads
                return a.value
            c = constant(a)  # a slice's end
            return a if c is None else c

        out = node.target(*[index(a) for a in args], **kwargs)
        return settle(ref, out, eps.pop())


    def _axial_args(self, node, args):
        """``args`` with each laid-out param read as the rows of a grid of positions, ``P @
        ax`` (ops_axial.py); None where one is not."""
        def read(a):
            if isinstance(a, (Laid, Joint)):
                return self.axial_rows(node, a)
            if isinstance(a, (list, tuple)):
                out = [read(x) for x in a]
                return None if any(x is None for x in out) else type(a)(out)
            return a

        if any(isinstance(a, Ids) for a in args):
            return None
        out = [read(a) for a in args]
        return None if any(o is None and a is not None for o, a in zip(out, args, strict=True)) \
            else out


def _one_param(args) -> bool:
    """Whether ``args`` are the entries of one param laid out (and numbers, constants),
    nothing else."""
    refs = {a.ref.target for a in flat(args) if isinstance(a, Laid)}
    refs |= {a.target for a in flat(args) if isinstance(a, PRef)}
    return len(refs) == 1 and all(isinstance(a, (Laid, PRef, Ids, int, float, bool, type(None)))
                                  or constant(a) is not None for a in flat(args))


def settle(ref: PRef, index, eps: float | None = None):
    """The param itself where ``index`` is its entries in its own order and shape (a
    standardised param where ``eps`` marks them so), else the rearrangement still."""
    import torch

    if tuple(index.shape) == tuple(ref.shape) and torch.equal(
            index.flatten(), torch.arange(index.numel())):
        return ref if eps is None else Standardised(ref, eps)
    return Laid(ref, index, eps)


def positions_read(node, x, w):
    """``weights @ table`` with ``weights`` a constant of one-hot rows: the table's row ids, one
    per token ([B, T]), or None for a constant that is no such selection. SigLIP2's resize
    weights at the table's own grid select row t for token t."""
    import torch

    if not isinstance(x, Conc) or not plain(w) or len(w.shape) != 2:
        return None
    v = x.value
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() < 2 or \
            v.shape[-1] != w.shape[0]:
        return None
    ids = v.argmax(-1)
    if not torch.equal(torch.nn.functional.one_hot(ids, w.shape[0]).to(v.dtype), v):
        raise refuse(
            node,
            f"a constant [.., {v.shape[-2]}, {v.shape[-1]}] matmul'd with a param table whose "
            "rows are not one-hot: each token's row a fixed mix of the table's rows (a table of "
            "positions resized to another grid, SigLIP2's spatial_shapes other than the "
            "table's own), a lookup the language has no form for",
            help="feed images of the grid the table was made for (spatial_shapes equal to "
            "the table's side, sqrt(num_patches), in both axes), or resize the table once, "
            "outside the forward",
        )
    rows = ids.reshape(-1, ids.shape[-1])
    if not bool((rows == rows[0]).all()) or not bool(
            (rows[0] == torch.arange(rows.shape[-1]) + rows[0, 0]).all()):
        raise refuse(
            node,
            "a constant of one-hot rows matmul'd with a param table that reads rows other "
            "than consecutive positions, the same for every sample (images of different "
            "grids, or padded: SigLIP2's spatial_shapes unequal or its pixel_attention_mask "
            "not all ones, the padding reading row 0)",
            help="trace with images of one grid, the table's own, and no padding",
        )
    return Conc(ids)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from flat(a)
        else:
            yield a
