"""from_torch on a model of K codebooks (MusicGen's decoder): token ids (B·K, T) viewed as
(B, K, T), each codebook ``ids[:, k]`` read by an embedding of its own, the lookups summed, and
K readouts stacked on axis 1 (then viewed (B·K, T, V)). Each codebook is a token input of the
program of its own, each table an input weight, each head a readout; the oracle: the emitted
program, given the model's params and the codebooks cut from the ids, computes the model's
output. Ids that are not a fixed slice (one codebook computed from another's, a delay built in
the forward) are refused at their lookup."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402

WIDTHS = (32, 64)
K, V, T = 3, 11, 8


class Codebooks(nn.Module):
    """K tables summed, an MLP, K heads stacked. ``form``: "flat" (MusicGen's: the stack viewed
    (B·K, T, V)), "stacked" ((B, K, T, V) as it is), "derived" (codebook 1's ids computed from
    codebook 0's: refused), "delay" (codebook k shifted right by k inside the forward: refused),
    "whole" (the ids read as a whole too: refused), "mean" (the stack averaged: refused),
    "unbind" (the codebooks taken apart by unbind), "major" (rows k·B + b, another
    layout: refused)."""

    def __init__(self, n, form="flat"):
        super().__init__()
        self.form = form
        self.emb = nn.ModuleList(nn.Embedding(V, n) for _ in range(K))
        self.up, self.down = nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.heads = nn.ModuleList(nn.Linear(n, V, bias=False) for _ in range(K))

    def forward(self, ids):
        codes = ids.reshape(-1, K, ids.shape[-1])
        books = [codes[:, c] for c in range(K)]
        if self.form == "unbind":  # the same rows, taken apart otherwise
            books = list(codes.unbind(1))
        if self.form == "major":  # rows k·B + b (codebook-major): no codebook of MusicGen's
            books = list(ids.reshape(K, -1, ids.shape[-1]).unbind(0))
        if self.form == "derived":
            books[1] = (books[0] + 1) % V
        if self.form == "delay":
            books[1] = torch.cat([torch.zeros_like(books[1][:, :1]), books[1][:, :-1]], 1)
        x = sum(self.emb[c](books[c]) for c in range(K))
        if self.form == "whole":
            x = x + self.emb[0](ids)[::K]
        x = x + self.down(torch.relu(self.up(x)))
        out = torch.stack([h(x) for h in self.heads], dim=1)
        if self.form == "mean":
            return out.mean(1)
        return out if self.form == "stacked" else out.reshape(-1, *out.shape[2:])


def _ids(model):
    return (torch.arange(2 * K * T).mul(5).remainder(V).view(2 * K, T),)


@pytest.mark.parametrize("form", ["flat", "stacked", "unbind"])
def test_codebooks_are_token_inputs_and_heads_readouts(form):
    traced = from_torch(lambda n: Codebooks(n, form), WIDTHS, _ids)
    for k in range(K):
        assert f"input codebook{k} : tokens[T, V_codebook{k}]" in traced.source
        assert f"emb_{k}_weight @ codebook{k}" in traced.source
    assert "input tok" not in traced.source and traced.stacked == (K, form != "stacked")
    assert len(traced.program.outputs) == K
    abc = abc_by_target(traced)
    for k in range(K):  # a table: an input weight, as the token embedding; a head: a readout
        assert abc[f"emb.{k}.weight"] == (0, 0, 0)
        assert abc[f"heads.{k}.weight"] == (0, 1, 1)
    assert traced_computes_the_model(traced, lambda n: Codebooks(n, form), _ids) <= 1e-10


def test_the_check_feeds_codebooks_as_rows_of_the_ids():
    # coord_check draws K rows of ids per example (the model cuts its codebooks from them) and
    # targets per row, and probes every codebook's lookup and every head (before: the program's
    # V, which a model of codebooks alone has not, was missing)
    traced = from_torch(lambda n: Codebooks(n), WIDTHS, _ids)
    result = coord_check(MuP(traced, "adam"), (32, 64), seeds=(0,), steps=2)
    seen = {r.name for r in result.results if r.step == 2}
    assert {"embedding", "embedding_1", "embedding_2"} <= seen
    assert set(traced.program.outputs) <= seen


@pytest.mark.parametrize("form, match", [
    ("derived", "other than a copy of them, .*the ids shifted right"),
    ("delay", "an embedding lookup of ids that are neither the token input"),
    ("whole", "as codebooks"),
    ("mean", "readouts stacked"),
    ("major", "other than a copy of them, .*the ids shifted right"),
])
def test_ids_that_are_no_fixed_codebook_are_refused(form, match):
    with pytest.raises(TensorProgError, match=match):
        from_torch(lambda n: Codebooks(n, form), WIDTHS, _ids)


def test_one_example_is_refused():
    # ids of K rows: codebook k (rows b·K + k) or row k of any batch, which one example cannot
    # tell apart
    with pytest.raises(TensorProgError, match="traced on one example"):
        from_torch(lambda n: Codebooks(n), WIDTHS, lambda m: (_ids(m)[0][:K],))
