"""One embedding table read by an encoder's lookup, a decoder's lookup and a tied head, each
lookup times sqrt(n) in a module of its own (transformers' ScaledWordEmbedding: PLBart, M2M-100,
NLLB-MoE). µP's multiplier on each lookup cannot go into the shared table's init and LR, which
the head's use owns; ``apply`` puts it on the output of the lookup's module instead, a patch
that scales that lookup alone. Checked: bit-identical at the base width; at twice the base each
scaled lookup is the program's, the table's rows times the constant at its base value."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from conftest import apply_is_bit_identical_at_base  # noqa: E402

from tensorprog.errors import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch, probe  # noqa: E402

WIDTHS = (32, 64)
VOCAB, S, T, HEADS = 64, 8, 6, 4


class ScaledLookup(nn.Embedding):
    """A lookup times sqrt(n) in its own forward, as transformers' ScaledWordEmbedding."""

    def __init__(self, n):
        super().__init__(VOCAB, n)
        self.scale = n**0.5

    def forward(self, ids):
        return super().forward(ids) * self.scale


class EncDec(nn.Module):
    """An encoder (a lookup, a layer) and a decoder (a lookup, cross-attention to the encoder)
    reading one table, tied to the head. ``decoder``: "own", a lookup module of its own;
    "cast", that, its output cast to the table's dtype here (as HF Gemma's: export adds a check
    of the product's metadata, a second reader of it); "again", the encoder's module called
    again; "alias", the encoder's module set as the decoder's too (one module under two names,
    each called once)."""

    def __init__(self, n, decoder="own"):
        super().__init__()
        self.n, self.decoder = n, decoder
        self.enc_emb = ScaledLookup(n)
        self.dec_emb = self.enc_emb if decoder == "alias" else ScaledLookup(n)
        self.enc = nn.Linear(n, n)
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.head = nn.Linear(n, VOCAB, bias=False)
        self.dec_emb.weight = self.enc_emb.weight
        self.head.weight = self.enc_emb.weight

    def forward(self, src, tgt):
        e = F.relu(self.enc(self.enc_emb(src)))
        d = self.enc_emb(tgt) if self.decoder == "again" else self.dec_emb(tgt)
        if self.decoder == "cast":
            d = d.to(self.head.weight.dtype)
        b, t, n = d.shape

        def heads(z):
            return z.view(b, -1, HEADS, n // HEADS).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q(d)), heads(self.k(e)), heads(self.v(e)))
        return self.head(d + a.transpose(1, 2).reshape(b, t, n))


def _inputs(model):
    g = torch.Generator().manual_seed(0)
    return torch.randint(VOCAB, (2, S), generator=g), torch.randint(VOCAB, (2, T), generator=g)


@pytest.mark.parametrize("decoder", ["own", "cast"])
def test_each_scaled_lookup_of_a_shared_table_gets_its_multiplier_on_its_own_module(decoder):
    # before: refused (a width constant on a lookup of a table read elsewhere, not at its
    # first use); the first lookup's patch went on the table's first module whatever it was
    def build(n):
        return EncDec(n, decoder)

    traced = from_torch(build, WIDTHS, _inputs)
    mup = apply_is_bit_identical_at_base(traced, build, _inputs)
    fixed = {i["q"]: s for s, i in traced.scales.items() if i.get("fixed")}
    assert {p.module for p in mup.patches if p.why.startswith(tuple(fixed.values()))} == {
        "enc_emb", "dec_emb"}
    # the program holds each constant at its base value (µP's lookup multiplier is derived
    # with the table's other uses); the model's sqrt(n) grows as (n/base)^1/2 against it
    assert [traced.scales[s]["value"] for s in fixed.values()] == pytest.approx(
        [WIDTHS[0] ** 0.5] * 2)
    assert [traced.scales[s]["model_a"] for s in fixed.values()] == [-0.5, -0.5]
    torch.manual_seed(0)
    model = build(2 * WIDTHS[0])
    mup.apply(model)
    src, tgt = _inputs(model)
    table = model.head.weight.detach()
    with torch.no_grad():
        for module, ids in ((model.enc_emb, src), (model.dec_emb, tgt)):
            # the scaled lookup is the program's: the table's rows times the base constant
            # (the model's own sqrt(2 base), times the patch's (n/base)^-1/2), that one only
            torch.testing.assert_close(module(ids), table[ids] * WIDTHS[0] ** 0.5,
                                       rtol=1e-6, atol=0)
    # the coordinate check's probe measures each lookup as the program's (the table's rows):
    # the patch undone per lookup, not the two lookups' factors summed on their table
    found = probe(mup, model, (src, tgt))()
    for vec, ids in (("embedding", src), ("embedding_1", tgt)):
        torch.testing.assert_close(found[vec], table[ids], rtol=1e-6, atol=0)
    mup.remove_patches(model)
    with torch.no_grad():  # unpatched, the model's own sqrt(2 base)
        torch.testing.assert_close(model.dec_emb(tgt), table[tgt] * (2 * WIDTHS[0]) ** 0.5)


@pytest.mark.parametrize("decoder", ["again", "alias"])
def test_a_width_constant_on_a_lookup_module_called_twice_is_refused(decoder):
    # one module makes both lookups (called twice, or once under each of two names): a patch on
    # it would scale both (and the first lookup's patch went there unchecked before)
    traced = from_torch(lambda n: EncDec(n, decoder), WIDTHS, _inputs)
    with pytest.raises(UsageError, match=r"(?s)the width constant on embedding: .*no module "
                       r"returns that vector alone.*its module is called twice.*"
                       r"return super\(\).forward\(ids\) \* self.scale.*"
                       r"help: look the table up in a module of its own"):
        MuP(traced, "adam")
