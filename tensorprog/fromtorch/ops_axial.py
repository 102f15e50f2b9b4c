"""A param's rows read along a grid of the positions: Reformer's axial position embeddings.

Reformer keeps one table per axis of a grid of A x B positions, ``[A, 1, n/4]`` and
``[1, B, 3n/4]``, broadcasts each over the other axis (``expand(batch, A, B, d)``), reads the
grid out as its T = A·B positions (``reshape(batch, T, d)``) and concatenates the two along the
features. Position t is at row t // B and column t mod B, so the first table gives it the row
of its grid row and the second the row of its grid column: lookups of a one-hot of each
coordinate, the language's ``Pa @ r`` with ``input r : axial[T, A, B]`` (position t's
coordinate (t // B) mod A) and ``Pb @ c`` with ``c : axial[T, B, 1]``, side by side,
``cat(Pa @ r, Pb @ c, n)``.

The chain is followed exactly, never by its shape: the expand and the reshapes run on the
param's flat indices (ops_grid.Laid), and where those meet anything but a move, each laid-out
param must be, entry for entry, the rows (t // s) mod R of the param read as R rows of its last
axis's d features, for some stride s, the same for every example of the batch: position t's
vector is then row (t // s) mod R, a lookup. Anything else is refused as before.

µP: each table is an input weight (a lookup, finite fan-in), as a position table ``P @ pos``
is. An entry is read at several positions (the B of its grid row), and its gradient is their
sum: finitely many terms, as large as one position's, and Adam moves it by its LR whatever
its gradient. So sharing entries between positions changes which tables the positions can
learn, never an exponent; but a free table ``P @ pos`` would train each position's row on its
own, another model, which is why the language says the grid."""

from __future__ import annotations

from .ops_grid import Ids, Joint, Laid, constant, flat, plain
from .values import PRef, Vec


class AxialOps:
    """Laid-out params (ops_grid.Laid, :class:`Joint`) read as the rows of a grid's axes (see
    the module)."""

    def joint_move(self, node, op: str, args, kwargs):
        """The move ``op`` (a concatenation, a slice, an index_select of constant positions)
        run on the entries of the params in ``args`` together, a :class:`Joint`; None where an
        argument is no plain param's entries, a number or a constant."""
        import torch

        refs: dict[str, PRef] = {}
        for a in flat(args):
            if isinstance(a, Joint):
                for r in a.refs:
                    refs.setdefault(r.target, r)
            elif isinstance(a, Laid) and a.eps is None:
                refs.setdefault(a.ref.target, a.ref)
            elif isinstance(a, PRef) and plain(a):
                refs.setdefault(a.target, a)
            elif not isinstance(a, (Ids, int, float, bool, type(None))) and constant(a) is None:
                return None
        starts, at = {}, 0
        for target, r in refs.items():
            starts[target] = at
            at += _numel(r.shape)

        def index(a):
            if isinstance(a, Joint):
                shift = torch.cat([torch.arange(_numel(r.shape)) + starts[r.target]
                                   for r in a.refs])
                return shift[a.index]
            if isinstance(a, Laid):
                return a.index + starts[a.ref.target]
            if isinstance(a, PRef):
                return torch.arange(_numel(a.shape)).reshape(a.shape) + starts[a.target]
            if isinstance(a, (list, tuple)):
                return type(a)(index(x) for x in a)
            if isinstance(a, Ids):  # the positions an index_select reads
                return a.value
            c = constant(a)
            return a if c is None else c

        out = node.target(*[index(a) for a in args], **kwargs)
        return Joint(tuple(refs.values()), tuple(starts.values()), out)

    def axial_rows(self, node, laid) -> Vec | None:
        """The vector of ``laid`` (ops_grid.Laid or :class:`Joint`) read per token: its index
        [X, T, D], alike for each of the X examples, T a sequence the model runs over, and its
        features blocks of whole rows of one param each, position t reading row (t // s) mod
        R of the param as R rows of its last axis's d features: ``P @ ax`` with ``ax :
        axial[T, R, s]``, the blocks side by side ``cat(...)``; None for any other layout."""
        import torch

        if isinstance(laid, Laid):
            if laid.eps is not None:
                return None
            laid = Joint((laid.ref,), (0,), laid.index)
        index = laid.index
        lengths = {*self.sequences(), self.tokens_seq,
                   *(n for _, n, _ in self.out.seq_inputs.values())} - {None}
        if index.dim() != 3 or index.shape[1] not in lengths or not bool(
                (index == index[:1]).all()):
            return None
        first, t = index[0], index.shape[1]
        starts = torch.tensor(laid.starts)
        owner = torch.searchsorted(starts, first[0], right=True) - 1  # each feature's param
        blocks, lo = [], 0
        while lo < first.shape[1]:
            k = int(owner[lo])
            ref = laid.refs[k]
            d = ref.shape[-1]
            block = first[:, lo:lo + d] - laid.starts[k]
            rows = self._grid_rows(ref, block, t)
            if rows is None:
                return None
            blocks.append((ref, *rows))
            lo += d
        parts = [self._axis_lookup(node, ref, count, stride, t)
                 for ref, count, stride in blocks]
        return parts[0] if len(parts) == 1 else self.cat_statement(node, parts, held=False)

    @staticmethod
    def _grid_rows(ref: PRef, block, t: int) -> tuple[int, int] | None:
        """(R, s) where ``block`` [T, d] is, for each position t, the whole row (t // s) mod R
        of ``ref`` read as R rows of its last axis's d features, features in order; else
        None."""
        import torch

        d = ref.shape[-1]
        count = _numel(ref.shape) // d
        if len(ref.shape) < 2 or block.shape[1] != d:
            return None
        rows = block[:, 0] // d
        if not torch.equal(block, rows[:, None] * d + torch.arange(d)):
            return None
        positions = torch.arange(t)
        stride = next((s for s in range(1, t + 1)
                       if torch.equal(rows, positions // s % count)), None)
        return None if stride is None else (count, stride)

    def _axis_lookup(self, node, ref: PRef, count: int, stride: int, t: int) -> Vec:
        """``P @ ax``: the param's R rows read at each position's coordinate along the axis,
        ``ax : axial[T, R, s]`` (its sequence read off the statements: sequences.py)."""
        src = self.sequence_input("_pos", "axial", t, (count, stride))
        table, _ = self.param(PRef(ref.target, (count, ref.shape[-1])), node, lookup=True)
        name = self.fresh(f"{table}_rows")  # no node of the graph holds it: not probed
        self.out.stmts.append(f"{name} = {table} @ {src}")
        self.out.producers[name] = (table, None)
        return Vec(name, ("tok", "tok", "F"), ref.shape[-1])


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
