"""Params applied: embedding lookups and linear layers (any weight layout)."""

from __future__ import annotations

from .inputs import probe_ids
from .ops_attention import batch_shapes, einsum_layout, heads_paired, layout_text
from .ops_conv import is_image
from .ops_grid import positions_read
from .ops_layout import swapped_kind
from .ops_relative import built_ids, grid_stride, refuse_fed_ids, refuse_grid_ids, relative_kind
from .ops_relkeys import refuse_relative_einsum
from .ops_windows import window_lookup
from .values import (
    SHIFTED_IDS,
    Affine,
    Aux,
    Conc,
    Given,
    Joined,
    ParamUse,
    Pointwise,
    PRef,
    Probs,
    Scores,
    Tok,
    Vec,
    init_of,
)
from .where import module_of, op_name, refuse, strip_prefix


class LinearOps:
    """Params applied: embedding lookups and linear layers (any weight layout)."""

    # -- params applied ----------------------------------------------------------------------
    def op_index(self, node, w, indices):
        """``table[ids]`` (Whisper's positions, ``self.weight[position_ids]``): the embedding
        lookup it is, of the table's rows."""
        if isinstance(w, PRef) and len(indices) == 1 and isinstance(indices[0], (Tok, Conc)):
            return self.op_embedding(node, w, indices[0])
        if self.over_offsets(w) and len(indices) == 1 and isinstance(indices[0], Conc) and (
                win := window_lookup(indices[0].value, self._shape(node.args[0])[0])):
            if not built_ids(indices[0]):  # (as below)
                raise refuse_fed_ids(node, indices[0], f"Swin's offsets of {win} x {win} windows")
            return self.offsets_lookup(node, w, win)  # Swin V2's bias: ops_offsets.py
        # constant ids only: not ids the forward is given (a Given, or computed from one) nor
        # ids that vary with the token ids (the probe's differ), which the trace sees at one
        # example's values
        if isinstance(w, PRef) and len(indices) == 2 and indices[0] is None and built_ids(
                indices[1]) and (stride := grid_stride(indices[1].value, w.shape[-1])):
            return self.grid_lookup(node, w, indices[1].value, stride)  # LeViT's: ops_relative
        if isinstance(w, PRef) and len(indices) == 2 and indices[0] is None:
            raise refuse_grid_ids(node, w, indices[1])
        shape = tuple(node.args[0].meta["val"].shape)
        if isinstance(w, (Vec, Affine, Pointwise)) and len(indices) == len(shape) \
                and all(i is None for i in indices[:-1]) and indices[-1] is not None:
            return self.picked(node, w, indices[-1], shape[-1])
        raise refuse(node, "an index of a traced value other than a param table's rows by "
                     "token ids or positions (an embedding lookup)")

    def picked(self, node, v, ids, size: int) -> Vec:
        """``y[..., ids]`` of a vector y at ids the forward fixes (ShieldGemma-2's logits of its
        two answers, ``logits[:, -1, [yes, no]]``): ``pick(y, D, ids)``, D of as many
        coordinates; ids the trace does not know (a tensor computed from the network) are
        refused. The language checks that y's dim is finite."""
        import torch

        value = ids.value if isinstance(ids, Conc) and ids.probe is None else None
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() == 0 \
                or value.is_floating_point() or value.dtype == torch.bool:
            raise refuse(node, f"keeping some of the {size} features of a vector at ids the "
                         "trace does not know (the language's pick(y, D, i1, ...) keeps "
                         "coordinates fixed by the program: a list of at most 16 numbers, "
                         "not a mask, nor ids computed from the inputs or the network)",
                         help="index the features with a list of numbers, y[..., [3, 1]]")
        picked = [int(i) % size for i in value]
        x = self.vec(v, node)
        if x.tags[-1] != "F" or x.dh is not None or x.dim != size:
            raise refuse(node, f"keeping some of the {size} entries of the last axis of a "
                         "value viewed otherwise than (…, features) (a head's coordinates, a "
                         "token axis): the language's pick(y, D, i1, ...) keeps coordinates "
                         "of a whole vector", help="index the features of a (…, features) "
                         "value, y[..., [3, 1]]")
        d = self.dim(len(picked))
        name = self.emit_vector(node.name, f"pick({x.name}, {d}, {', '.join(map(str, picked))})")
        return Vec(name, x.tags, len(picked))

    def op_embedding(self, node, w, idx, *rest):
        if not isinstance(w, PRef):
            raise refuse(node, "an embedding whose table is not a param")
        if isinstance(idx, Tok):
            if self.out.codebooks:  # (ops_codebooks.py)
                raise refuse(node, "an embedding lookup of the token ids as a whole in a model "
                             "that reads them as codebooks (rows b·K + k) too: the program's "
                             "token inputs would be of two batches",
                             help="read the ids only as codebooks, or only as a whole")
            table, _ = self.param(w, node, lookup=True)
            self.tokens_vocab = w.shape[0]
            self.tokens_table = w.target
            src, tags = "tok", idx.tags
        elif isinstance(idx, Given) and w.target == getattr(self, "tokens_table", None):
            # other ids looked up in the token ids' table are token ids too, whatever values
            # the example gives (an encoder-decoder's decoder_input_ids, zeros): a token input
            return self.ids_lookup(node, w, idx)
        elif isinstance(idx, Conc) and idx.probe is not None and not _same(idx.probe,
                                                                           idx.value):
            return self._ids_made_lookup(node, w, idx, rest[0] if rest else None)
        # ids the forward computes from the token ids but that come out the same from the probe
        # ids (RoBERTa's positions: a cumsum of the non-padding mask, padding being absent from
        # both) are read by their values below, as ids computed from nothing
        elif isinstance(idx, Conc) and self._is_positions(idx.value) and (
                isinstance(idx, Given) or self._positions_given(idx.given)):
            # position ids the forward is given (or computed from them: an offset added), whose
            # example is k..k+T-1: the program's positions would drop the ids fed at each call.
            # Given as they are, a table that trains reads them as fed (a token input, below)
            if not isinstance(idx, Given) or self.frozen_lookup(w, idx.value) is not None:
                raise refuse_fed_ids(node, idx, "the positions k..k+T-1", help=(
                    "leave the position ids out of the forward's inputs (the model's own "
                    "arange), or look a trained table up at them as given, table(position_ids)"))
            return self.ids_lookup(node, w, idx)
        elif isinstance(idx, Conc) and self._is_positions(idx.value):
            looked = self.frozen_lookup(w, idx.value)  # a table that never trains: ops_tables
            if looked is not None:
                return looked
            # a table of more rows than the sequence (a block size) is read at rows k..k+T-1
            # (k = 0, or OPT's offset 2): the program's one-hot positions are over T, and the
            # unread rows never move
            self.positions = int(idx.value.shape[-1])
            seq = self.prepended.get(self.positions)
            if seq is not None:  # over T1 after a learned token (CLIP's, ops_encoder.py)
                src = "pos"
                self.out.decls.append(f"input pos : positions[{seq}]")
                table, _ = self.param(w, node, lookup=True, fan_in=seq)
            else:
                # which sequence's positions (an encoder-decoder has two): sequences.py, which
                # also names the table's fan-in, that sequence's dim, for the provisional name
                src = self.sequence_input("_pos", "positions", self.positions, 0)
                table, _ = self.param(w, node, lookup=True, fan_in=src)
            tags = ("tok",) * idx.value.dim()
        elif isinstance(idx, Conc) and (row := self._constant_id(w, idx.value)) is not None:
            return self._row(node, w, row, padding=bool(rest) and rest[0] == row)
        # Swin's and T5's ids only as constants the model builds (ops_relative's built_ids):
        # the emitted module builds them, so ids the forward is fed would be dropped there
        elif isinstance(idx, Conc) and (win := window_lookup(idx.value, w.shape[0])):
            if not built_ids(idx):
                raise refuse_fed_ids(node, idx, f"Swin's offsets of {win} x {win} windows")
            return self.window_table(node, w, win)  # Swin's bias: ops_windows.py
        elif isinstance(idx, Conc) and (kind := relative_kind(idx.value, w.shape[0])):
            if not built_ids(idx):
                raise refuse_fed_ids(node, idx, "T5's relative position buckets")
            return self.relative_lookup(node, w, kind, idx.value)  # T5's bias: ops_relative.py
        elif isinstance(idx, Given):  # segment ids given as an input (ops_encoder.py)
            return self.ids_lookup(node, w, idx)
        elif isinstance(idx, Conc) and idx.given:
            raise refuse(
                node,
                f"an embedding lookup of ids computed from the input {idx.given} that are "
                "neither the positions k..k+T-1 nor one id (TAPAS's positions reset in each "
                "table cell its token types give, or one column of them): the program reads "
                "ids given as an input only as they are",
                help=f"give the ids this lookup reads as an input of the forward of their own "
                f"(TAPAS's position_ids=; a column of an input is none), or trace the model "
                f"with {idx.given} left out (its own ids: "
                "TAPAS's then one cell, positions 0..T-1 and each token-type table read at one "
                "row, a vector param whose exponents are the table's)",
            )
        else:
            raise refuse(
                node,
                "an embedding lookup of ids that are neither the token input, "
                "nor the positions k..k+T-1 (the same for every sequence of the batch), "
                "nor one constant id",
                help="look up the token input, positions or one id the model fixes; "
                "ids that vary otherwise are traced only as an input of the forward (segments: "
                "token_type_ids=)",
            )
        name = self.emit_vector(node.name, f"{table} @ {src}", (table, None))
        return Vec(name, tags + ("F",), w.shape[1])

    def _ids_made_lookup(self, node, w: PRef, idx: Conc, padding=None) -> Vec:
        """A lookup of ids the forward computes from the token ids. Read by what they are
        with probe ids in place of the trace's zeros (which would read as one constant id):
        the ids themselves (a copy the model edits only where an id is special, Gemma-3's
        image tokens) are the token input; the ids shifted right by one behind one start id
        (BART's decoder_input_ids made from input_ids) are a token input over a sequence of
        their own, as a decoder's ids given apart; the ids behind constant ids the same in every
        sequence (CPM-Ant's prompt) are the token input with a learned row put before it per
        constant id (``padding``: the lookup's padding_idx). Anything else is refused."""
        import torch

        ids = probe_ids(self.tok_value)
        made = idx.probe
        same = isinstance(made, torch.Tensor) and made.shape == ids.shape and not w.t \
            and not w.rows and not w.offset
        if same and torch.equal(made, ids):
            return self.op_embedding(node, w, Tok(("tok",) * ids.dim()))
        if (book := self.codebook_of(node)) is not None:  # rows b·K + k (ops_codebooks.py)
            return self.codebook_lookup(node, w, book)
        if same and ids.dim() == 2 and torch.equal(made[:, 1:], ids[:, :-1]) \
                and bool((made[:, 0] == made[0, 0]).all()) \
                and w.target == getattr(self, "tokens_table", None):
            return self.ids_lookup(node, w, Given(idx.value, input=SHIFTED_IDS))
        if (rows := _prompt_rows(made, ids, idx.value, w)) is not None:
            return self.prompted_lookup(node, w, rows, padding)  # CPM-Ant's: ops_encoder.py
        if _by_zero_ids(made, ids):
            raise refuse(
                node,
                "an embedding lookup of ids computed from the token ids that are the same in "
                "every sequence at ids other than 0 (the probe's ids, which differ between "
                "sequences) but not at ids 0: ids that depend on which token ids are 0, a "
                "padding id (CPM-Ant's segments, torch.where(input_ids != 0, 2, 0), and the "
                "mask it builds from their count): the program's token input has no padding, "
                "and the trace's example ids are zeros, so the model's constants are read there "
                "as if every token were padding",
                help="compute those ids from constants in the forward (CPM-Ant's segments: 0 "
                "on the prompt, 2 on every token, and no padding mask), or give them as an "
                "input of the forward (segment ids=)",
            )
        raise refuse(
            node,
            "an embedding lookup of ids computed from the token ids other than a copy of "
            "them, a copy behind constant ids the same in every sequence (a prompt), the ids "
            "shifted right by one behind a start id, or one codebook of them "
            "(rows b·K + k of the ids, (B·K, T) viewed (B, K, T) and [:, k], by views and "
            "slices alone)",
            help="compute those ids outside the model and give them as an input of the "
            "forward (decoder_input_ids=; a delay pattern or codebook computed from another: "
            "applied to the codes before the forward)",
        )

    @staticmethod
    def _constant_id(w: PRef, value) -> int | None:
        """The one id every entry of ``value`` holds (BERT's token-type ids, zeros), or None."""
        if value.numel() == 0 or value.dtype.is_floating_point or w.t or w.rows or w.offset:
            return None
        first = int(value.flatten()[0])
        ok = 0 <= first < w.shape[0] and bool((value == first).all())
        return first if ok else None

    def _row(self, node, w: PRef, row: int, padding: bool = False) -> Vec:
        """A lookup of one constant id: the vector param of that row (:meth:`row_param`), the
        same for every token."""
        param = self.row_param(node, w, row, padding)
        name = self.emit_vector(node.name, param)
        return Vec(name, ("tok",) * (len(node.meta["val"].shape) - 1) + ("F",), w.shape[1])

    def row_param(self, node, w: PRef, row: int, padding: bool = False) -> str:
        """Row ``row`` of the table, read at one constant id: a vector param of its own (fed
        the constant 1, a bias in the sum it meets), whose exponents the engine derives as a
        bias's; ParamUse.index maps it back to the row, so apply inits that row and the table
        takes its LR (the rows never read get no gradient).

        The table's ``padding_idx`` row (``padding``: RoCBert's shape and pronunciation ids,
        zeros where none are given) never trains, its gradient masked, and nn.Embedding and
        transformers' init make it zero: a fixed vector param ``= 0`` (ParamUse.fixed, as a
        fixed table's: apply gives it no init, param_groups no LR, the check calls it frozen).
        A padding row the build leaves nonzero is refused: a vector that never trains has no
        init or LR to scale it with the width."""
        found = [p for p, u in self.out.params.items() if (u.target, u.index) == (w.target, row)]
        if found:
            param = found[0]
        else:
            param = self.fresh(f"{strip_prefix(w.target).replace('.', '_')}_row{row}")
            self.out.params[param] = ParamUse(w.target, None, False, module_of(node), node.name,
                                              index=row)
            if padding:
                _refuse_trained_row(node, w, row)
            init = init_of(self.base, w.target, row if padding else None, ("normal", 1.0))
            if padding and init != ("const", 0.0):
                raise refuse(node, f"a lookup of row {row} of {_table(node, w)}, its "
                             "padding_idx, whose row never trains (its gradient is masked) and "
                             "which the build leaves nonzero: a vector that never trains has no "
                             "init or LR µP could scale with the width",
                             help="zero the padding row (as nn.Embedding does), or look up ids "
                             "that are not the padding id")
            if padding:
                self.out.params[param].fixed = 0.0
            tail = f" = {init[1]:g}" if init[0] == "const" else ""
            self.out.decls.append(f"param {param} : [{self.dim(w.shape[1])}]{tail}"
                                  + (f"  # row {row} of {strip_prefix(w.target)}, its "
                                     "padding_idx: never trained" if padding else ""))
        return param


    def sequence_input(self, prefix: str, kind: str, length: int, rows: int) -> str:
        """A provisional input over a sequence of ``length`` tokens (positions, buckets), named
        ``prefix`` and a number: sequences.py gives it its sequence after the walk."""
        name = f"{prefix}{len(self.out.seq_inputs)}"
        self.out.seq_inputs[name] = (kind, length, rows)
        return name

    def _positions_given(self, name: str) -> bool:
        """Whether the forward's input ``name`` is itself positions k..k+T-1 at the example
        (position_ids=), not ids that positions are computed from (a mask of ones, the decoder's
        ids: their positions are the model's own, as the token ids' are)."""
        return bool(name) and any(n == name and self._is_positions(v)
                                  for n, v in self.given.values())

    def _is_positions(self, value) -> bool:
        import torch

        t = value.shape[-1]
        lengths = {*self.sequences(), self.tokens_seq}
        lengths |= {n for _, n, _ in self.out.seq_inputs.values()}
        if value.numel() == 0 or value.dtype.is_floating_point or t not in lengths:
            return False
        first = value.flatten()[0]  # an offset: positions k..k+T-1 (OPT's learned positions)
        return bool(first >= 0) and bool((value == torch.arange(t) + first).all())

    def op_linear(self, node, x, w, b=None):
        if isinstance(x, Joined):  # W @ cat(a, b): a sum of its column blocks (ops_concat.py)
            return self.joined_linear(node, x, w, b)
        if not isinstance(w, PRef) or (b is not None and not isinstance(b, PRef)):
            raise refuse(node, "a linear layer whose weight is not a param")
        if isinstance(x, (Conc, Aux)):  # a buffer's entries: Swin V2's offsets (ops_offsets)
            x = self.offsets_input(node, x)
        x = _one_head_read_whole(node, self.vec(x, node))
        # torch's linear maps the last axis: an image's columns (ops_conv.py), unless the image
        # was permuted channels-last (ConvNeXt's x.permute(0, 2, 3, 1)): then it maps each
        # pixel's channels, the language's W @ h of an image-valued h
        if is_image(x) and x.tags[-1] != "F":
            raise refuse(node, "a linear layer applied to an image (it maps the last axis, the "
                         "pixels of each row, not the channels)",
                         help="pool the image to one pixel first (nn.AdaptiveAvgPool2d(1), then "
                         "flatten), or use a 1x1 convolution")
        if x.tags[-1] not in ("F", "dh"):  # [B, C, T] @ W: MLP-Mixer's token mixing
            raise refuse(node, "a linear layer over the tokens (its input's last axis is a "
                         "token axis, not features: each feature mixed across tokens), which "
                         "the language's per-token vectors cannot say",
                         help="apply the layer to the features (x.transpose(1, 2) first, as "
                         "[B, T, C]), or mix the tokens with attention")
        return Affine(x, w, b, node.name, x.tags[:-1] + ("F",))

    def op_addmm(self, node, b, x, w, beta=1, alpha=1):
        if beta != 1 or alpha != 1:  # beta * b + alpha * (x @ w): GPT-2's Conv1D has neither
            raise refuse(node, f"an addmm with beta={beta!r}, alpha={alpha!r}: a linear layer "
                         "is b + x @ W", help="write the numbers as products of their own "
                         "(beta * b + alpha * (x @ W))")
        return self.op_linear(node, x, PRef(w.target, w.shape, not w.t, w.rows), b)

    def op_matmul(self, node, x, w):
        ids = positions_read(node, x, w)  # one-hot rows of a table (SigLIP2's: ops_grid.py)
        if ids is not None:
            return self.op_embedding(node, w, ids)
        if isinstance(w, PRef) and len(w.shape) < 2:  # h @ a: a dot with a vector param
            size = w.shape[0] if w.shape else 1
            raise refuse(node, f"a matmul with a vector param ({strip_prefix(w.target)}, of "
                         f"{size} entries): the language's matmuls read a matrix",
                         help="read the vector through a layer of one output, nn.Linear(n, 1), "
                         "or trace the model without this part")
        if isinstance(w, PRef):
            return self.op_linear(node, x, PRef(w.target, w.shape, not w.t, w.rows))
        if isinstance(x, Probs):
            return self.mix(node, x, self.vec(w, node))
        x, w = self.vec(x, node), self.vec(w, node)
        if x.tags[-1] == "dh" and w.tags[-2] == "dh" and x.tags[-3] == "H":
            if w.tags[-1] != "tok" or not heads_paired(x, w, batch_shapes(node)):
                # k.transpose(-1, -2) of keys left (batch, tokens, heads, head dim): torch
                # would pair query head i with key token i, where the counts are equal
                raise refuse(node, f"attention logits q @ k.T of queries laid out "
                             f"{layout_text(x.tags)} and keys laid out {layout_text(w.tags)}: the "
                             "keys must be their tokens last, after their heads and head dim, "
                             "the queries' batch axes in the same order",
                             help="transpose the keys to (batch, heads, tokens, head dim) as "
                             "the queries are, then k.transpose(-1, -2)")
            return Scores(x, w, 1.0, node.name, x.tags[:-1] + ("tok",))
        raise refuse(node, "a matmul of two vectors that is not attention's q @ k.T")

    op_mm = op_matmul
    op_bmm = op_matmul

    def op_einsum(self, node, equation, operands):
        """A batched matmul written as an einsum (ProphetNet's "bsij,bsjk->bsik", CvT's
        "bhlk,bhtk->bhlt", its second operand read transposed): that matmul."""
        ins, _, out = equation.replace(" ", "").partition("->")
        terms = ins.split(",")
        # a 3-D param's batched matmul (one matrix per example or per position) is no layer of
        # the language's (op_linear reads a matmul node's operands, not an einsum's): refused
        params = any(isinstance(x, PRef) for x in operands)
        if not params and len(terms) == 2 and len(operands) == 2 and len(set(ins.replace(
                ",", ""))) == len(out) + 1 and len(terms[0]) == len(terms[1]) == len(out) >= 3:
            (a, b), batch = terms, out[:-2]
            i, j = a[-2:]
            if a[:-2] == b[:-2] == batch and out[-2] == i and j not in out:
                if b[-2:] == j + out[-1]:
                    return self.op_matmul(node, *operands)
                if b[-2:] == out[-1] + j:
                    return self.op_matmul(node, operands[0],
                                          self.op_transpose(node, operands[1], -2, -1))
        permuted = self._einsum_permuted(node, terms, out, operands)
        if permuted is not None:
            return permuted
        refuse_relative_einsum(node, equation, operands)  # (ops_relkeys.py)
        raise refuse(node, f"an einsum {equation!r} that is not a batched matmul",
                     help="write it as a matmul (a @ b, or a @ b.transpose(-2, -1))")

    def _einsum_permuted(self, node, terms, out, operands):
        """A batched matmul whose operands and result are laid out in another order (Funnel's
        per-head logits "bind,bjnd->bnij" and values "bnij,bjnd->bind"): each operand
        permuted as :func:`~.ops_attention.einsum_layout` says, their matmul, and the result
        permuted to ``out``, which is what the einsum computes; None for any other einsum."""
        layout = einsum_layout(terms, out) if len(operands) == 2 else None
        if layout is None or any(isinstance(x, PRef) for x in operands):
            return None  # (a param's: refused, as op_einsum says)

        def laid(v, dims):  # (attention weights are read as they are: no permute of them)
            if dims == sorted(dims):
                return v
            tags = getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", None)
            kind = swapped_kind(tags, dims) if tags and len(tags) == len(dims) else None
            if kind is not None:
                # the letters pair the batch with a sequence's tokens (or two token or
                # pixel axes with each other): no relayout of the language's. Refused here,
                # as op_permute's own check reads the node's args and readers as a
                # permute's, which this einsum's are not
                raise refuse(node, f"an einsum {'->'.join((','.join(terms), out))!r} whose "
                             "letters, laid out as the batched matmul it is, swap two "
                             f"{'token (or batch)' if kind == 'tok' else 'pixel'} axes of "
                             f"a value laid out {layout_text(tags)}: it pairs (or sums over) "
                             "axes other than the matmul of queries and keys (or weights "
                             "and values) the language reads",
                             help="letter each operand's batch, tokens, heads and head dim as "
                             "they are laid out, or write it as a matmul")
            return self.op_permute(node, v, dims)

        made = self.op_matmul(node, laid(operands[0], layout[0]), laid(operands[1], layout[1]))
        return laid(made, layout[2])


def _same(a, b) -> bool:
    """Whether two computed ids are the same tensor of values."""
    import torch

    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
        and torch.equal(a, b)


def _prompt_rows(made, ids, value, w: PRef) -> list[int] | None:
    """The P constant ids before a copy of the token ids along the sequence, the same in every
    sequence (CPM-Ant's prompt), or None: ``made`` are the lookup's ids computed from the probe
    ids ``ids``, ``value`` from the trace's zeros; the P ids come out the same from both (they
    do not depend on the token ids)."""
    import torch

    if not isinstance(made, torch.Tensor) or made.dim() != 2 or ids.dim() != 2 or w.t or \
            w.rows or w.offset or made.shape[0] != ids.shape[0] or \
            not isinstance(value, torch.Tensor) or value.shape != made.shape:
        return None
    p = made.shape[1] - ids.shape[1]
    head = made[:, :p]
    if p < 1 or not torch.equal(made[:, p:], ids) or not torch.equal(head, value[:, :p]) or \
            not bool((head == head[0]).all()) or bool((value[:, p:] != 0).any()):
        return None
    rows = [int(i) for i in head[0]]
    return rows if all(0 <= r < w.shape[0] for r in rows) else None


def _by_zero_ids(made, ids) -> bool:
    """Whether ids computed from the probe ids ``ids`` (``made``) are the same in every sequence
    though the probe's sequences differ: they then depend on the token ids only by which of
    them are special, and ids computed from the trace's zeros differ (the caller's case)."""
    import torch

    return isinstance(made, torch.Tensor) and made.dim() == 2 and ids.dim() == 2 and \
        made.shape[0] == ids.shape[0] > 1 and bool((made == made[0]).all()) and \
        not bool((ids == ids[0]).all())


def _table(node, w: PRef) -> str:
    """The name of the table an embedding node looks up, as its user knows it: the weight of
    the nn.Embedding that ran it (the export may name a tied tensor by another of its names)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        if getattr(kind, "__name__", str(kind)).endswith("Embedding"):
            return f"{strip_prefix(path)}.weight" if strip_prefix(path) else "weight"
    return strip_prefix(w.target)


def _refuse_trained_row(node, w: PRef, row: int) -> None:
    """Refuses the lookup ``node`` of padding row ``row`` of ``w`` as a vector that never trains
    unless every reader of the table is an embedding lookup masking that row's gradient (the
    same padding_idx): a lookup without it, a tied readout, any other op trains the row."""
    table, name = node.args[0], _table(node, w)
    said = f"a lookup of row {row} of {name}, its padding_idx, as a vector that never trains"
    if table.op != "placeholder":
        raise refuse(node, f"{said}, where the table looked up is computed from a param: the "
                     "trace cannot tell that nothing else trains that row",
                     help="look the padding id up in the nn.Embedding's own weight")
    for u in table.users:
        if op_name(u) == "embedding" and u.args[0] is table and table not in u.args[1:] \
                and len(u.args) > 2 and u.args[2] % w.shape[0] == row:
            continue  # its gradient masked in that row too
        what = {"embedding": "an embedding lookup without that padding_idx",
                "linear": "a linear layer (a tied readout)"}.get(op_name(u), op_name(u))
        also = strip_prefix(w.target)
        raise refuse(node, f"{said} (this lookup masks its gradient): {what} in "
                     f"{module_of(u) or 'the model'} reads the same tensor"
                     + (f" (as {also})" if also != name else "") + ", and trains that row",
                     help="give every lookup of the table the same padding_idx and read it "
                     "nowhere else (an untied readout), or look up ids that are not the "
                     "padding id")


def _one_head_read_whole(node, x):
    """A linear layer's input that is one head holding all of a vector's features, its heads
    axis of size 1 (MLA's compressed kv viewed (b, 1, t, r) for HF's caches, then scaled before
    kv_b reads it: Dots's LoRA scale): each token's features, the axis of one head one more
    axis of size 1 that moves no data; the input as it is otherwise."""
    shape = tuple(node.args[0].meta["val"].shape)
    if not (isinstance(x, Vec) and x.tags.count("H") == 1 and x.tags[-1] == "dh"
            and x.dh == x.dim and x.group == 1 and len(shape) == len(x.tags)
            and shape[x.tags.index("H")] == 1 and shape[-1] == x.dim):
        return x
    return Vec(x.name, ("tok",) * (len(x.tags) - 1) + ("F",), x.dim)
