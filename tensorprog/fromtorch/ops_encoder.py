"""Encoders: one token's vector read out of the sequence (``h[:, 0]``: BERT's pooler, a ViT's
classification head), traced as the language's ``first(h)``; segment ids given as an input, a
token input of the program of their own; and a param used as a token of the sequence (a
learned class token), refused with how to write it."""

from __future__ import annotations

from .values import Given, PRef, Vec
from .where import refuse

_FIRST_HELP = ("read the first token, h[:, 0] of a (batch, tokens, features) value, after "
               "the per-token layers; the language has no other token's vector")


class EncoderOps:
    """``h[:, 0]`` as ``first(h)``; segment ids as a token input; a param prepended to the
    sequence, refused."""

    def first_token(self, node, v, dim, index) -> Vec:
        """``h[:, 0]`` (``select`` of the sequence axis at 0) of a per-token vector: the first
        token's coordinates, ``first(h)``. They are one token's, Θ(1) like any token's, and the
        gradient reaches that token alone: the engine's rule passes sizes through, so a layer
        after it is what its own dims make it (the classifier reading n coordinates into a few
        classes, an output weight). The sequence axis is the one before the features, as in the
        (batch, tokens) ids the model is traced on."""
        tags = self._tags(v)
        ndim = len(tags)
        if not (isinstance(dim, int) and ndim == 3 and tags == ("tok", "tok", "F")
                and dim % ndim == 1 and self.tokens_seq is not None):
            raise refuse(node, "indexing a traced value along an axis other than a fused "
                         "layer's blocks or the sequence of a (batch, tokens, features) vector",
                         help=_FIRST_HELP)
        if index != 0:
            raise refuse(node, f"reading token {index} of the sequence (the language reads the "
                         "first token only, first(h))", help=_FIRST_HELP)
        x = self.vec(v, node)
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = first({x.name})")
        self.out.vectors[name] = (node.name, "out")
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
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {table} @ {src}")
        self.out.vectors[name] = (node.name, "out")
        self.out.producers[name] = (table, None)
        return Vec(name, ("tok",) * len(shape) + ("F",), w.shape[1])

    def param_as_token(self, node, v: PRef):
        """A param broadcast over the batch (``cls.expand(B, 1, n)``), to be put among the
        tokens (a ViT's or a classifier's learned class token): the language's sequences are
        the token input's, so no value can add a token to them."""
        return refuse(
            node,
            f"a param ({v.target.removeprefix('m.')}) expanded over the batch, used as a token "
            "of the sequence (a learned class token prepended with torch.cat): the language's "
            "tokens come from the token input only",
            help="make the class token a token id: give the token embedding one more row and "
            "prepend its id to the input ids (the same network, and the row gets an "
            "embedding's µP, init and LR Θ(1), as the class token's would be)",
        )
