"""Fixed tables: float buffers, and params the model does not train, read at the positions.

Sinusoidal position tables (XGLM's, CTRL's, M2M-100's) and sin/cos tables (GPT-J's, CodeGen's)
are float buffers; RoFormer's, Marian's and Pegasus's are params with ``requires_grad=False``.
None of them trains. The trace reads their entries on the CPU (trace.py reads every float buffer
and every frozen param from one build at each width), and a lookup of their rows at the positions
k..k+T-1 is a known constant, the same for every sequence (:class:`Looked`). It is read in one of
two ways:

- added to a per-token vector, it is a fixed table P [n, T] applied to the one-hot positions, the
  program's ``P @ pos``. For µP that is what a trained position table is at init: an input
  weight whose columns are vectors of Θ(1) entries. That it never moves only takes its update out
  of the sums it enters, which no other param's exponents depend on: each is fixed by its own
  maximal-update condition, and the missing update only loosens stability bounds that µP meets
  anyway. So the program declares P as a param, and the trace marks it fixed
  (``ParamUse.fixed``): ``apply`` gives it no init, ``param_groups`` no LR, and the coordinate
  check calls its vector frozen. Its entries must be Θ(1) at every width: the RMS of the rows read
  is measured at both traced widths, and a table whose entries scale with the width is refused
  (:func:`fixed_table`), since no init or LR of a table that never trains can take the factor.
- multiplied into a head vector and its rotate_half (or rotate_every_two), it is rotary's cos and
  sin, recognised by their values: ``x·C + rot(x)·S`` turns each pair of coordinates by an angle
  exactly when C² + S² = 1 and both coordinates of a pair share C and S (GPT-J's table holds sin
  and cos of the angles side by side; RoFormer's, sin and cos of each pair). It is then the
  rotation it is (ops_rotary.py), and the program writes the rotated vector as itself.

Any other use of such a table stays refused where it is used, naming the table.
"""

from __future__ import annotations

import math

from ..errors import TraceError
from .ops_relative import refuse_fed_ids
from .values import (
    Affine,
    Aux,
    Computed,
    Conc,
    FixedTable,
    Looked,
    Pointwise,
    PRef,
    RopeTerm,
    Rotated,
    Sub,
    Vec,
)
from .where import CHECK_OPS, op_name, refuse, strip_prefix

# a table's RMS may differ between the two traced widths by sampling noise (a random frozen table
# reads a few hundred entries: a few per cent), not by a power of the width of 1/4 or more
_RMS_EXPONENT = 0.25
# ops that give a float table back as it is (a cast to its own float type changes no entry)
_CARRIERS = {"to", "_to_copy", "contiguous", "clone", "alias", "detach", "lift_fresh_copy"}
_ROTATION_TOL = 1e-5  # float32 sin/cos: sin² + cos² is 1 within a few ulps


class TableOps:
    """Lookups of fixed tables at the positions; their rows added to a vector, or rotating one."""

    def fixed_value(self, target: str):
        """The entries of a float buffer (or a param the model does not train) of several
        entries: read from a CPU build (trace.py), or the graph's own where it was exported with
        real tensors (the probe of a built model); None where unknown or of one entry."""
        value = getattr(self, "scalars", {}).get(target)
        if value is None:
            value = self.ep.state_dict.get(target, self.ep.constants.get(target))
        ok = value is not None and value.is_floating_point() and value.numel() > 1
        return value.detach().cpu() if ok and value.device.type != "meta" else None

    def table_lookup(self, node, args) -> Looked | FixedTable | None:
        """A lookup of a float buffer's rows at the positions (``table[pos]``, ``index_select``,
        ``embedding``): the rows read, as a :class:`Looked`; None for anything else."""
        op = op_name(node)
        if not args or not isinstance(args[0], FixedTable) or args[0].value is None:
            return None
        if op in _CARRIERS:  # the table itself (CTRL's pos_encoding.to(device, dtype))
            return args[0]
        if op == "embedding" and len(args) > 1:
            ids = args[1]
        elif op == "index_select" and len(args) == 3 and args[1] == 0:
            ids = args[2]
        elif op == "index" and len(args) == 2 and len(args[1]) == 1:
            ids = args[1][0]
        else:
            return None
        if not isinstance(ids, Conc):
            return None
        looked = self._rows_at(args[0].value, "m." + args[0].buffer, ids.value)
        if looked is not None:
            self._not_fed(node, [ids])
        return looked

    def frozen_lookup(self, w: PRef, ids) -> Looked | None:
        """A lookup at the positions of a param the model does not train (``requires_grad=
        False``: Marian's, RoFormer's sinusoidal tables) as the fixed table it is; None for a
        trained param, a part of one, or one whose entries are unknown."""
        p = self.ep.state_dict.get(w.target)
        if p is None or p.requires_grad or w.t or w.rows or w.offset or w.expert is not None:
            return None
        value = self.fixed_value(w.target)
        return None if value is None else self._rows_at(value, w.target, ids)

    def _rows_at(self, table, target: str, ids) -> Looked | None:
        if table.dim() != 2 or not self._is_positions(ids):
            return None
        return Looked(table[ids.flatten()].view(*ids.shape, table.shape[-1]), target,
                      int(ids.shape[-1]))

    def table_rows(self, flat, value, unknown: Aux, node=None) -> Looked | Aux:
        """``value`` computed from a fixed table (and constants) as a :class:`Looked` where it
        is (or holds) the table's rows at the positions k..k+T-1, the same for every leading
        index (M2M-100's lookup, inside a torch.no_grad that export keeps as one higher-order
        op); otherwise a buffer of unknown entries named as ``unknown``, as any other use of
        it, a :class:`Computed` that keeps its entries where it is one tensor."""
        import torch

        table = next((x for x in flat if isinstance(x, FixedTable)), None)
        rows = table.value if table is not None else torch.empty(0)
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if not isinstance(v, torch.Tensor) or rows.dim() != 2 or v.dim() < 2 or \
                    v.shape[-1] != rows.shape[-1] or not v.is_floating_point():
                continue
            t = v.shape[-2]
            first = v.reshape(-1, t, v.shape[-1])
            at = [k for k in range(rows.shape[0] - t + 1) if torch.equal(first[0], rows[k:k + t])]
            if at and bool((first == first[0]).all()) and self._is_positions(
                    torch.arange(t) + at[0]):
                self._not_fed(node, flat)
                return Looked(value, "m." + table.buffer, t)
        if isinstance(value, torch.Tensor):  # unknown still, its entries kept (ops_complex.py)
            return Computed(unknown.buffer, value)
        return unknown

    def _not_fed(self, node, flat) -> None:
        """Refuses a fixed table's rows at the positions read at position ids the forward is
        given (or computed from them): the program's positions would drop the ids fed."""
        fed = next((x for x in flat if isinstance(x, Conc) and self._positions_given(
            getattr(x, "input", "") or x.given)), None)
        if fed is not None and node is not None:
            raise refuse_fed_ids(node, fed, "the positions k..k+T-1", help=(
                "leave the position ids out of the forward's inputs (the model's own arange)"))

    def table_rows_probed(self, flat, again, unknown):
        """A fixed table read at positions the forward computes from the token ids (M2M-100's
        and SeamlessM4T's sinusoidal tables: a cumsum of the non-padding mask plus the padding
        id, then ``index_select``). The trace's ids are zeros, which such a model may take for
        padding (SeamlessM4T's pad id is 0: every position is then the padding row), so the
        rows read from them are no positions; ``again``, the value with probe ids in their
        place (ids 3..9, clear of the special ids, as a sequence without padding is), says what
        the model reads for ids without padding. Where that is the table's rows at the
        positions k..k+T-1 it is a :class:`Looked` as any lookup at the positions (a padded
        token reads the table's padding row instead, a row no init or LR of µP touches: the
        table never trains and adds no exponent); otherwise ``unknown`` as before."""
        table = next((x for x in flat if isinstance(x, FixedTable)), None) or next(
            (x.table for x in flat if isinstance(x, Computed) and x.table is not None), None)
        if table is None:
            return unknown
        probed = self.table_rows([table], again, unknown)
        if isinstance(probed, Looked):
            return probed
        if isinstance(unknown, Computed):  # its ops may give the rows yet (a view after)
            unknown.table = table
        return unknown

    @staticmethod
    def keep_table(flat, value) -> Conc:
        """``value`` computed from constants, a :class:`Looked` still where one of them was (a
        view, a split, a cast of a table's rows)."""
        looked = next((x for x in flat if isinstance(x, Looked)), None)
        if looked is None:
            return Conc(value)
        return Looked(value, looked.target, looked.positions)

    def on_cpu(self, attr):
        """A higher-order op's subgraph (``attr``, its get_attr node: the body of a
        ``torch.no_grad`` block that export keeps whole) as a function of CPU values: its nodes
        run one by one, export's metadata checks (which name the meta device it was traced on)
        skipped and every device the CPU."""
        import torch
        from torch.fx.node import map_arg

        graph_module = getattr(self.ep.graph_module, attr.target)

        def cpu(a):
            return torch.device("cpu") if isinstance(a, torch.device) else a

        def run(*inputs):
            env, given = {}, iter(inputs)
            for n in graph_module.graph.nodes:
                if n.op == "placeholder":
                    env[n] = next(given)
                elif n.op == "call_function" and op_name(n) in CHECK_OPS:
                    env[n] = None
                elif n.op == "call_function":
                    args = [cpu(a) for a in map_arg(n.args, env.__getitem__)]
                    kwargs = {k: cpu(v) for k, v in map_arg(n.kwargs, env.__getitem__).items()}
                    env[n] = n.target(*args, **kwargs)
                elif n.op == "output":
                    return map_arg(n.args[0], env.__getitem__)
                else:  # a nested subgraph or an attribute: no lookup of a table this reads
                    raise ValueError(f"{n.op} in a subgraph")
            return None

        return run

    # -- added to a per-token vector: P @ pos, P fixed -------------------------------------------
    def table_added(self, node, u, v):
        """(u, v) with a :class:`Looked` operand added to a per-token vector replaced by the
        program vector ``P @ pos`` of its fixed table; None where neither is one."""
        for i, (x, c) in enumerate(((u, v), (v, u))):
            if isinstance(c, Aux) and c.buffer and isinstance(x, (Vec, Affine, Pointwise)):
                raise refuse(node, f"a sum with a value read from the buffer {c.buffer} other "
                             "than its rows at the positions k..k+T-1 (positions computed from "
                             "the token ids are read with ids of 0, which the model may take "
                             "for padding)",
                             help="read the table at positions the model computes from the "
                             "sequence's length (torch.arange), or make the table a param")
            if isinstance(c, Looked) and isinstance(x, (Vec, Affine, Pointwise)):
                x = self.vec(x, node)
                made = self._table_vector(node, node.args[1 - i], c, x)
                return (x, made) if i == 0 else (made, x)
        return None

    def _table_vector(self, node, arg, looked: Looked, x: Vec) -> Vec:
        import torch

        key = ("table", arg.name)
        if key in self._made:
            return self._made[key]
        value, t, d = looked.value, looked.positions, x.dim
        shape = tuple(node.meta["val"].shape)
        rows = value.reshape(-1, t, d) if value.dim() >= 2 and tuple(value.shape[-2:]) == (
            t, d) else None
        if (rows is None or x.tags[-1] != "F" or len(x.tags) < 2 or x.tags[-2] != "tok"
                or not value.is_floating_point() or not bool((rows == rows[0]).all())
                or torch.broadcast_shapes(tuple(value.shape), shape) != shape):
            raise refuse(node, f"a sum with rows of the fixed table {strip_prefix(looked.target)}"
                         " other than one row per position added to each token's vector",
                         help="add the table's rows at the positions, table[pos] of shape "
                         "[T, d] or [B, T, d], to the per-token vectors of dim d")
        # the positions of which sequence: sequences.py, after the walk (as ops_linear's)
        src = self.sequence_input("_pos", "positions", t, 0)
        table, _ = self.param(PRef(looked.target, (t, d)), arg, lookup=True, fan_in=src)
        self.out.params[table].fixed = float(rows[0].double().square().mean().sqrt())
        if self.out.decls[-1].startswith(f"param {table} "):  # declared here: say what it is
            self.out.decls[-1] += (f"  # a fixed table, {strip_prefix(looked.target)}: read at "
                                   "the positions, never trained")
        # no producer: a multiplier on it would fold into the init and LR of a table that has
        # neither (trace.py's width constants refuse a vector no layer makes)
        made = Vec(self.emit_vector(arg.name, f"{table} @ {src}"), x.tags, d)
        self._made[key] = made
        return made

    # -- multiplied into a head vector: rotary's cos and sin -----------------------------------
    def table_rope(self, node, u, v) -> RopeTerm | None:
        """``x * C`` or ``rotate_half(x) * S`` with C, S read from a fixed table: a rotary term
        whose table ops_rotary.rope_sum checks is a rotation (tables_rotate); None otherwise."""
        for a, b in ((u, v), (v, u)):
            if not isinstance(b, Looked):
                continue
            if isinstance(a, Rotated):
                return RopeTerm(a.src, "sin", "", b.value,
                                "interleaved" if a.interleaved else "half")
            if isinstance(a, Sub) and a.sign == 1:
                return RopeTerm(a, "cos", "", b.value)
            if isinstance(a, (Vec, Affine)):
                a = self.vec(a, node)
                if a.tags[-1] == "dh":
                    return RopeTerm(a, "cos", "", b.value)
        return None

    def tables_rotate(self, node, u: RopeTerm, v: RopeTerm) -> bool:
        """Whether ``x·C + rot(x)·S`` (u, v the two terms, in either order) turns each pair of
        coordinates that ``rot`` swaps by one angle: C² + S² = 1, and C and S the same on both
        coordinates of every pair, on the vector's shape."""
        import torch

        cos, sin = (u, v) if u.kind == "cos" else (v, u)
        if cos.table is None or sin.table is None or {u.kind, v.kind} != {"cos", "sin"}:
            return False
        shape = tuple(node.meta["val"].shape)
        try:
            c, s = torch.broadcast_tensors(cos.table.double(), sin.table.double())
            ok_shape = torch.broadcast_shapes(tuple(c.shape), shape) == shape
        except RuntimeError:
            return False
        size = c.shape[-1]
        if not ok_shape or size != shape[-1] or size % 2:
            return False
        if sin.pairs == "interleaved":
            pair = (c[..., 0::2], c[..., 1::2]), (s[..., 0::2], s[..., 1::2])
        else:
            pair = (c[..., : size // 2], c[..., size // 2:]), (s[..., : size // 2],
                                                                s[..., size // 2:])
        unit = float((c * c + s * s - 1).abs().max()) <= _ROTATION_TOL
        return unit and all(bool(torch.equal(a, b)) for a, b in pair)


def fixed_table(name: str, u1, u2, widths) -> None:
    """A fixed table's entries at the two traced widths (``ParamUse.fixed``: the RMS of the rows
    read): Θ(1) at both, else refused. A table scaled as n^-a (a 1/√d in its values) would need
    its factor moved into an init and LR that a table the model never trains does not have."""
    if u1.fixed is None or u2.fixed is None or u1.fixed == u2.fixed == 0:
        return  # a zero vector (a padding row, ops_linear._row) has no factor to move
    w1, w2 = widths
    if u1.fixed > 0 and u2.fixed > 0:
        exponent = math.log(u2.fixed / u1.fixed) / math.log(w2 / w1)
        if abs(exponent) < _RMS_EXPONENT:
            return
        law = f"as n^{exponent:.2f} between them"
    else:
        law = "to zero"
    raise TraceError(
        f"the fixed table {strip_prefix(u1.target)} ({name}) reads entries of RMS "
        f"{u1.fixed:.4g} at width {w1} and {u2.fixed:.4g} at {w2}: they scale {law}, and a "
        "table the model never trains has no init or LR to take the factor",
        help="build the table with entries of a size that does not change with the width "
        "(sin and cos of the positions), or make it a trained param (then µP scales it)",
    )

