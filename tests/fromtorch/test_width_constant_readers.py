"""A width constant on a vector that is not attention's query (DeBERTa's key divided by
``torch.sqrt(torch.tensor(k.size(-1)))``, Gemma's embedding times sqrt(d)): the program holds
its base value, apply folds its width factor into the layer that makes the vector, and the check
reads the product as the program's vector (the fold and the constant cancel there), not as the
layer's output, which carries the fold alone."""

import pytest
from conftest import apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import from_torch  # noqa: E402
from tensorprog.fromtorch.check import probe  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class KeyScaled(nn.Module):
    """4 heads of n/4 (DeBERTa-v2's self-attention): the logits q @ (k.T / sqrt(dh)), the
    scale a tensor the forward makes from the head dim, so a constant of the width; ``embed``:
    the tokens' embedding times sqrt(n) as well (Gemma's)."""

    def __init__(self, n, embed=False):
        super().__init__()
        self.n, self.embed = n, embed
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v = (nn.Linear(n, n) for _ in range(3))

    def forward(self, idx):
        x = self.e(idx) * self.n**0.5 if self.embed else self.e(idx)
        b, t, c = x.shape
        q, k, v = (z.view(b, t, 4, -1).transpose(1, 2).reshape(b * 4, t, -1)
                   for z in (self.q(x), self.k(x), self.v(x)))
        scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * 1)
        w = torch.bmm(q, k.transpose(-1, -2) / scale).softmax(-1)
        y = torch.bmm(w, v).view(b, 4, t, -1).transpose(1, 2).reshape(b, t, c)
        return self.out(x + y)


def test_a_width_constant_off_the_query_is_read_as_the_programs_vector():
    build = lambda n: KeyScaled(n, embed=True)  # noqa: E731
    traced = from_torch(build, WIDTHS, _tokens)
    fixed = {i["out"]: (i["q"], i["model_a"]) for i in traced.scales.values() if i.get("fixed")}
    # the key's 1/sqrt(n/4) measured between the widths: n^-1/2, not a number of the base
    assert fixed == {"div": ("linear_1", 0.5), "mul": ("embedding", -0.5)}
    traced_computes_the_model(traced, build, _tokens)
    mup = apply_is_bit_identical_at_base(traced, build, _tokens)
    sizes = {}
    for n in (WIDTHS[0], 4 * WIDTHS[0]):
        torch.manual_seed(0)
        model = build(n)
        mup.apply(model)
        unfold = mup.unfolded(model)
        values = probe(mup, model, _tokens(model))()
        sizes[n] = {v: float(values[v].square().mean().sqrt()) for v in fixed}
    # at 4x the base: the key's layer makes 2x its µP output (the fold), the product does not
    assert unfold["linear_1"] == 0.5 and unfold["div"] == 1.0
    assert unfold["embedding"] == 2.0 and unfold["mul"] == 1.0
    # so the check reads each product at its base size at init, as µP's program vector is
    for v in fixed:
        assert sizes[4 * WIDTHS[0]][v] == pytest.approx(sizes[WIDTHS[0]][v], rel=0.15), v
