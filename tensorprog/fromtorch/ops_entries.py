"""One entry of a 1-D param read as a number: ``self.lambdas[0] * h + self.lambdas[1] * h0``
(NeoMME's learned mixing of the stream with the embeddings). Entry i of a param of k entries
(k the same at every width) multiplying a vector is the program's gain ``g * h`` with
``g : [f1]``, one number for every coordinate, as a one-entry param ``nn.Parameter(torch.ones(1))``
is: each entry read is a program param of its own (``lambdas_0``, ``lambdas_1``), whose µP the
engine derives from its use, mapped back to its entry (``ParamUse.index``) so that apply acts on
the whole tensor in place: it keeps each entry's constant init, folds a multiplier into the
entry read, and gives the tensor one LR, which the entries' derived LRs must agree on (else
``MuP`` refuses it at the line that reads them, groups.py).

Only a product with a vector is traced: an entry's init must be a constant set by hand (the
same at every build: each entry is then a gain of that init); an entry added to a vector, put
through a function, or multiplied by another entry has no form of the language and is refused,
as is an entry of a param whose size grows with the width or of a matrix."""

from __future__ import annotations

from ..errors import TraceError
from .values import ParamUse, PEntry, PRef, Vec, init_of
from .where import module_of, refuse, strip_prefix, user_span

_HELP = ("make each number its own one-entry param (nn.Parameter(torch.ones(1))) and multiply "
         "a vector by it, or write the model as a program")


class EntryOps:
    """Entries of a 1-D param read one by one as gains."""

    def param_entry(self, node, ref: PRef, dim, index) -> PEntry:
        """``p[i]`` (aten ``select(p, 0, i)``) of a 1-D param: a PEntry; of a 2-D param, row i
        read as a vector (ProphetNet's ``ngram_embeddings.weight[i]``): the same vector as a
        lookup of the constant id i, a vector param of its own mapped back to its row
        (ops_linear._row); any other select of a param refused."""
        plain = not (ref.t or ref.rows or ref.offset or ref.expert is not None or ref.cols)
        if len(ref.shape) == 2 and plain and dim in (0, -2) and isinstance(index, int):
            # ProphetNet's ngram_embeddings[i]: row i, a vector param of its own (ops_linear)
            return self._row(node, ref, index % ref.shape[0])
        if len(ref.shape) == 2 and plain and dim in (0, -2):
            raise refuse(node, f"a row of the param {strip_prefix(ref.target)} of shape "
                         f"{list(ref.shape)} read as a vector: the trace reads one row of a "
                         "table only through an embedding lookup of ids that are all that row",
                         help="look the row up with the table's nn.Embedding (ids all equal "
                         "to i), or write the model as a program")
        if len(ref.shape) != 1 or not plain or not isinstance(index, int) or dim not in (0, -1):
            raise refuse(node, f"an entry of the param {strip_prefix(ref.target)} of shape "
                         f"{list(ref.shape)} other than one number of a 1-D param at a constant "
                         "index", help=_HELP)
        return PEntry(ref, index % ref.shape[0])

    def refuse_entry(self, node, what: str):
        """``what`` (ending in "of" or "with") one entry of a param, refused."""
        return refuse(node, f"{what} one entry of a param: an entry is traced only as a number "
                      "multiplying a vector", help=_HELP)

    def entry_product(self, node, u, v) -> Vec | None:
        """``p[i] * h`` or ``h * p[i]`` of a vector h: the program's ``p_i * h``; None where
        neither factor is an entry."""
        entries = [x for x in (u, v) if isinstance(x, PEntry)]
        if not entries:
            return None
        if len(entries) == 2 or any(isinstance(x, (int, float, PRef)) for x in (u, v)):
            raise self.refuse_entry(node, "a product of a number or another entry with")
        entry = entries[0]
        x = self.vec(v if u is entry else u, node)
        gain = self.entry_param(node, entry)
        name = self.emit_vector(node.name, f"{gain} * {x.name}")
        # g * x is linear in g: a multiplier on the product folds into the entry's init and LR
        self.out.producers[name] = (gain, None)
        return Vec(name, x.tags, x.dim, x.dh)

    def entry_param(self, node, entry: PEntry) -> str:
        """The program param ``p_i : [f1] = c`` of entry i (one per entry, however often read),
        of the constant init c the entry has at the base width."""
        ref, i = entry.ref, entry.index
        for name, use in self.out.params.items():
            if (use.target, use.index, use.entries) == (ref.target, i, ref.shape[0]):
                return name
        init = init_of(self.base, ref.target, i)
        if init is None or init[0] != "const":
            raise refuse(node, f"entry {i} of the param {strip_prefix(ref.target)} read as a "
                         "number, whose init is a random draw (an entry's init must be a "
                         "constant set by hand, as a gain's 1: one number cannot be rescaled "
                         "to a std)", help=_HELP)
        name = self.fresh(f"{strip_prefix(ref.target).replace('.', '_')}_{i}")
        self.out.params[name] = ParamUse(ref.target, None, False, module_of(node), node.name,
                                         index=i, entries=ref.shape[0], span=user_span(node))
        self.out.decls.append(f"param {name} : [{self.dim(1)}] = {init[1]:g}")
        return name


def fixed_entries(t1, t2, widths) -> None:
    """Refuses an entry of a 1-D param read as a number where the param's size
    differs between the widths: one number of a vector that grows has no form."""
    sizes = {u.target: u.entries for u in t2.params.values() if u.entries}
    for u in t1.params.values():
        if u.entries and sizes.get(u.target, u.entries) != u.entries:
            raise TraceError(
                f"entry {u.index} of the param {strip_prefix(u.target)} is read as a number, "
                f"but the param has {u.entries} entries at width {widths[0]} and "
                f"{sizes[u.target]} at {widths[1]} (one number of a vector that grows with the "
                "width has no form of the language)", u.span,
                help="read the entries of a param of a fixed size, or make the number its own "
                "one-entry param (nn.Parameter(torch.ones(1)))")
