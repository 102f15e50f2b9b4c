"""Encoders: one token's vector read out of the sequence (``h[:, 0]``: BERT's pooler, a ViT's
classification head), traced as the language's ``first(h)``; segment ids given as an input, a
token input of the program of their own; and learned tokens put before the sequence (a ViT's
class token, ``torch.cat([cls.expand(B, -1, -1), h], dim=1)``), the language's ``prepend``; a
learned array of its own (Perceiver's latents, ``latents.expand(B, -1, -1)`` of a param [R, n]),
a position table read over a sequence of R tokens of its own."""

from __future__ import annotations

from .values import Given, OneToken, ParamUse, PRef, Tok, TokenParam, TokensFrom, Vec
from .where import module_of, op_name, refuse, strip_prefix

_TOKEN_HELP = ("prepend learned tokens as torch.cat([cls.expand(B, -1, -1), h], dim=1), with cls "
               "a param [1, 1, n] and h the (batch, tokens, features) embeddings")

_FIRST_HELP = ("read the first token, h[:, 0] of a (batch, tokens, features) value, or the "
               "last, h[:, -1], after the per-token layers; the language has no other token's "
               "vector")


class EncoderOps:
    """``h[:, 0]`` as ``first(h)``, ``h[:, -1]`` as ``last(h)``; segment ids as a token input;
    learned tokens prepended to the sequence as ``prepend``."""

    def first_token(self, node, v, dim, index) -> Vec:
        """``h[:, 0]`` (``select`` of the sequence axis at 0) of a per-token vector: the first
        token's coordinates, ``first(h)``. They are one token's, Θ(1) like any token's, and the
        gradient reaches that token alone: the engine's rule passes sizes through, so a layer
        after it is what its own dims make it (the classifier reading n coordinates into a few
        classes, an output weight). The sequence axis is the one before the features, as in the
        (batch, tokens) ids the model is traced on."""
        tags = self._tags(v, node)
        ndim = len(tags)
        # a sequence of the program: the tokens', or one of its own (Perceiver's decoder reads
        # the one token of its learned query array's sequence out, h[:, 0])
        lengths = {*self.sequences(), self.tokens_seq,
                   *(length for _, length, _ in self.out.seq_inputs.values())} - {None}
        if not (isinstance(dim, int) and ndim == 3 and tags == ("tok", "tok", "F")
                and dim % ndim == 1 and self._shape(node.args[0])[1] in lengths):
            raise refuse(node, "indexing a traced value along an axis other than a fused "
                         "layer's blocks or the sequence of a (batch, tokens, features) vector",
                         help=_FIRST_HELP)
        length = self._shape(node.args[0])[1]
        if index not in (0, -1, length - 1):
            raise refuse(node, f"reading token {index} of the sequence (the language reads the "
                         "first token, first(h), or the last, last(h))", help=_FIRST_HELP)
        x = self.vec(v, node)
        which = "first" if index == 0 else "last"  # (a sequence of one token: its first)
        name = self.emit_vector(node.name, f"{which}({x.name})")
        return Vec(name, ("tok", "F"), x.dim)

    def ids_lookup(self, node, w: PRef, idx: Given) -> Vec:
        """A lookup of ids given as an input other than the token ids, varying along the
        sequence or the batch (BERT's token-type ids of two segments): a token input of the
        program of its own, ``input token_type_ids : tokens[T, S]`` with S the table's rows, so
        the table is an embedding like the token one (init and LR Θ(1) under Adam)."""
        shape = tuple(idx.value.shape)
        # ids of a sequence of their own length (an encoder-decoder's decoder_input_ids) are a
        # token input over their own sequence; sequences.py tells it from the token ids' (it is
        # theirs where their vectors are added to the tokens', as segment ids' are)
        if (self.tok_value is None or len(shape) != 2 or shape[0] != self.tok_value.shape[0]
                or w.t or w.rows):
            raise refuse(node, f"a lookup of the input {idx.input} of shape {list(shape)}, "
                         "not one id per token of a batch of sequences as the token ids'",
                         help="give one id per token, (batch, tokens), with the token ids' batch")
        if idx.input not in self.id_inputs:
            self.id_inputs[idx.input] = self.fresh(idx.input)
        src = self.id_inputs[idx.input]
        table, _ = self.param(w, node, lookup=True)
        self.out.ids[src] = w.shape[0]
        self.out.seq_inputs[src] = ("tokens", shape[1], w.shape[0])
        name = self.emit_vector(node.name, f"{table} @ {src}", (table, None))
        return Vec(name, ("tok",) * len(shape) + ("F",), w.shape[1])

    def param_as_token(self, node, v: PRef) -> TokenParam | Vec:
        """A param [1, 1, n] broadcast over the batch (``cls.expand(B, -1, -1)``; CLIP's [n]
        as ``expand(B, 1, -1)``): one learned token per sequence, which ``torch.cat`` puts
        before the tokens (prepend_tokens); a param [1, R, n], or [R, n] read by torch.cat alone,
        is R such tokens. A param [R, n] broadcast over the batch alone and read otherwise is a
        learned array of its own (latent_array; R = 1: Perceiver's classification decoder's one
        query). Any other param expanded is refused."""
        out = tuple(node.meta["val"].shape)
        if len(v.shape) == 2 and len(out) == 3 and out[1:] == v.shape \
                and not (v.t or v.rows or v.offset or v.cols or v.period) and v.expert is None:
            # put into a sequence by torch.cat alone: R learned tokens, as a param [1, R, n]
            # (one concatenated along the features is an array beside the tokens' vectors)
            if node.users and all(op_name(u) == "cat" and _cat_dim(u) % 3 == 1
                                  for u in node.users):
                return TokenParam(v)
            return self.latent_array(node, v)
        count = v.shape[1] if len(v.shape) == 3 else 1  # DINOv2's registers: [1, R, n]
        if not 1 <= len(v.shape) <= 3 or any(s != 1 for s in v.shape[:-1 - (count > 1)]) \
                or v.t or v.rows or v.offset or len(out) != 3 \
                or out[1:] != (count, v.shape[-1]):
            if len(v.shape) >= 2 and len(out) > len(v.shape) and out[-1] == v.shape[-1]:
                # broadcast over the batch and over axes of 1: a table of a grid's axis,
                # followed on its entries (ops_axial.py, ops_grid.py)
                return self.laid_op(node, "expand", [self.laid(node, v), *node.args[1:]], {})
            raise refuse(node, f"a param ({v.target.removeprefix('m.')}) of shape "
                         f"{list(v.shape)} expanded to {list(out)} (a learned token is a param "
                         "[1, 1, n] expanded over the batch alone, R of them a param [1, R, n] "
                         "or [R, n]; an array of R learned tokens of its own a param [R, n])",
                         help=_TOKEN_HELP)
        return TokenParam(v)

    def latent_array(self, node, v: PRef) -> Vec:
        """``latents.expand(B, -1, -1)`` of a param [R, n]: the same R learned vectors for
        every example of the batch (Perceiver's latent array, its decoder's query array), a
        sequence of R tokens of its own whose vectors are the param's rows. That is a position
        table read at all its positions, ``P @ pos`` with ``input pos : positions[R]`` (R a
        sequence dim no token input runs over: the emitted module builds positions 0..R-1),
        so the rows derive as a position embedding's: a lookup of finite fan-in, an input
        weight. Which sequence R is (its own, or the tokens' where the model adds the array to
        them) is read off the statements as for any positions (sequences.py)."""
        src = self.sequence_input("_arr", "positions", v.shape[0], 0)
        table, _ = self.param(v, node, lookup=True, fan_in=src)
        name = self.emit_vector(node.name, f"{table} @ {src}", (table, None))
        return Vec(name, ("tok", "tok", "F"), v.shape[1])

    def prepend_tokens(self, node, tensors, dim) -> Vec:
        """``torch.cat([cls.expand(B, -1, -1), ..., h], dim=1)``: learned tokens before the
        tokens of the per-token vector h (a ViT's class token, DeiT's class and distillation
        tokens), ``prepend(cls, h, T1)``, one a token. The longer sequence is a dim of its own,
        ``T1`` (``T2`` for two tokens), which a position table added after it runs over.
        ``torch.cat([h[:, :k], reg.expand(B, -1, -1), h[:, k:]], dim=1)`` puts them after h's
        first k tokens instead (DINOv2's registers after its class token), each
        ``prepend(r, h, T2, k)``, and a param [1, R, n] is R tokens, each row a vector param.
        A token split off a sequence (:class:`OneToken`, ops_classtoken.py) is put back as
        ``prepend(first(x), h, T1)``."""
        at = 0
        if len(tensors) > 2 and isinstance(tensors[0], TokensFrom) and isinstance(
                tensors[-1], TokensFrom) and tensors[0].vec.name == tensors[-1].vec.name and \
                tensors[0].start == 0 and tensors[0].end == tensors[-1].start and \
                tensors[-1].end is None:
            at = tensors[0].end
            tensors = [*tensors[1:-1], tensors[-1].vec]
        *tokens, x = tensors
        seq_axis = isinstance(dim, int) and dim % 3 == 1
        if not tokens or not seq_axis or not all(isinstance(t, (TokenParam, OneToken))
                                                 for t in tokens) \
                or isinstance(x, (TokenParam, OneToken)):
            raise refuse(node, "a concatenation of learned tokens other than before the tokens "
                         "of a (batch, tokens, features) vector, or between its first k tokens "
                         "and the rest (h[:, :k], then h[:, k:])", help=_TOKEN_HELP)
        x = self.vec(x, node)
        length = tuple(node.args[0][-1].meta["val"].shape)[1] + at
        if x.tags != ("tok", "tok", "F"):
            raise refuse(node, "learned tokens put before a value that is not a vector per token "
                         "(batch, tokens, features)", help=_TOKEN_HELP)
        # a sequence other than the input's or one made from it by learned tokens: the tokens
        # of a later stage's image (PVT's last stage, tokens(h, S) of a downsampled grid),
        # whose longer sequence is named by its length, S17 (the language checks that h runs
        # over one sequence; the emitted module counts its positions from the dim's size)
        own = self.tokens_seq is not None and length in self.sequences()
        # a token split off a sequence and put back (CvT's, ops_classtoken.py): its vector
        rows = [p for t in tokens for p in (
            [t.vec.name] if isinstance(t, OneToken) else self._token_rows(t, node))]
        return self.prepend_rows(node, x, rows, length, at, own)

    def prepend_rows(self, node, x: Vec, rows: list[str], length: int, at: int = 0,
                     own: bool = True) -> Vec:
        """``rows`` (vector params) put before the tokens of ``x``, a sequence of ``length``
        tokens (after its first ``at`` ones), one ``prepend`` each: the last statement stands
        for ``node``'s value. ``own``: whether the longer sequences are the tokens' T1, T2, ...
        (else named by their lengths)."""
        # prepended last first (each goes to the front); inserted in order (each after the last)
        for k, param in enumerate(rows if at else reversed(rows)):
            length += 1
            seq = self.sequences().get(length) or self.prepended.get(length)
            if seq is None:  # the longer sequence: declared once, T + the tokens before it
                seq = f"T{length - self.tokens_seq}" if own else f"S{length}"
                self.names.add(seq)
                self.out.decls.append(f"dim {seq} = {length}")
                self.prepended[length] = seq
            last = k == len(rows) - 1
            name = self.fresh(node.name if last else f"{node.name}_{seq}")
            where = f", {at + k}" if at else ""
            self.out.stmts.append(f"{name} = prepend({param}, {x.name}, {seq}{where})")
            if last:
                self.out.vectors[name] = (node.name, "out")
            x = Vec(name, x.tags, x.dim)
        return x

    def prompted_lookup(self, node, w: PRef, rows: list[int], padding=None) -> Vec:
        """A lookup of the token ids behind constant ids of the same table (CPM-Ant's prompt,
        ``table(cat([arange(a, a + P).repeat(B, 1), ids], 1))``): the prompt's rows are the
        same P vectors before every sequence, so the lookup is the tokens' (an input weight of
        finite fan-in) with P learned tokens put before them, ``prepend`` of one row param each
        (ParamUse.index: apply inits that row, and the table takes one LR). The rows derive as
        a bias does, Θ(1) init and Adam LR, SGD LR Θ(n), which is the token rows' law too: one
        table, one law. The sequence the model runs over is P tokens longer, T1 ... TP. A prompt
        id that is the lookup's ``padding`` id reads a row that never trains (row_param)."""
        x = self.op_embedding(node, w, Tok(("tok", "tok")))
        self.out.vectors.pop(x.name, None)  # the tokens' rows alone: no node of the model's
        params = [self.row_param(node, w, row, row == padding) for row in rows]
        return self.prepend_rows(node, x, params, self.tokens_seq)

    def _token_rows(self, token: TokenParam, node) -> list[str]:
        """The program's vector params of a learned token param: itself for one token, one per
        row for R tokens [1, R, n], each mapped back to its row (ParamUse.index, as a lookup of
        one constant id is: apply inits that row, the tensor takes their shared LR)."""
        ref = token.ref
        axis = 0 if len(ref.shape) == 2 else 1  # a param [R, n], or [1, R, n]
        if len(ref.shape) < 2 or ref.shape[axis] == 1:
            return [self.vector_param(PRef(ref.target, ref.shape[-1:]), node)]
        out = []
        for i in range(ref.shape[axis]):
            index = (0, i)[1 - axis:]
            found = [p for p, u in self.out.params.items() if (u.target, u.index) == (
                ref.target, index)]
            if found:
                out.append(found[0])
                continue
            param = self.fresh(f"{strip_prefix(ref.target).replace('.', '_')}_row{i}")
            self.out.params[param] = ParamUse(ref.target, None, False, module_of(node),
                                              node.name, index=index)
            init = self.base.get(ref.target, ("normal", 1.0))
            tail = f" = {init[1]:g}" if init[0] == "const" else ""
            self.out.decls.append(f"param {param} : [{self.dim(ref.shape[-1])}]{tail}")
            out.append(param)
        return out

    def sequences(self) -> dict[int, str]:
        """The sequences a value may run over, by length: the input's T, and each made longer
        by learned tokens (prepend_tokens)."""
        return {self.tokens_seq: "T", **self.prepended} if self.tokens_seq else {}


def _cat_dim(node) -> int:
    """The axis a ``torch.cat`` node joins along (0 by default, -1 for a dim not a number)."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim if isinstance(dim, int) else -1
