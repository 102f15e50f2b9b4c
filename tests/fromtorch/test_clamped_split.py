"""A fused linear layer's output clamped, then split (DBRX's qkv clamped to ±clip_qkv): each
block of the layer clamped on its own (fromtorch/ops_pointwise.py's ClampedRows)."""

from __future__ import annotations

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")

from tensorprog.errors import TraceError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

VOCAB, SEQ = 32, 8
IDS = torch.randint(VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


class LM(torch.nn.Module):
    """Causal attention of heads of 16 whose fused q, k, v are clamped before the split;
    ``form``: "other" also reads the clamped whole, "bounds" clamps to [0.1, 0.5] (no form),
    "tokens" splits along the tokens, "dh" has 2 heads of a dim that grows, "twice" takes its
    values from a second split of other sizes."""

    def __init__(self, n, c=0.3, form="split"):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, n)
        self.qkv = torch.nn.Linear(n, 3 * n, bias=False)
        self.out = torch.nn.Linear(n, n, bias=False)
        self.head = torch.nn.Linear(n, VOCAB, bias=False)
        self.c, self.form = c, form

    def forward(self, idx):
        h = self.embed(idx)
        b, t, n = h.shape
        lo, hi = (0.1, 0.5) if self.form == "bounds" else (-self.c, self.c)
        qkv = self.qkv(h).clamp(min=lo, max=hi)
        if self.form == "tokens":
            first, rest = qkv.split([4, t - 4], dim=1)
            return self.head(torch.cat([first, rest], dim=1)[..., :n])
        q, k, v = qkv.split([n, n, n], dim=2)
        if self.form == "twice":  # the values from a second split: its second block, rows 2n..
            _, v = qkv.split([2 * n, n], dim=2)
        heads = 2 if self.form == "dh" else n // 16  # "dh": a head dim that grows
        q, k, v = (x.view(b, t, heads, n // heads).transpose(1, 2) for x in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = h + self.out(a.transpose(1, 2).reshape(b, t, n))
        if self.form == "other":
            out = out + qkv[..., :n]
        return self.head(out)


def _ids(model):
    return (IDS,)


def test_a_clamped_fused_layer_split_is_each_block_clamped():
    # oracle: the emitted program computes the model in float64, at a clamp that bites (the
    # layer's outputs are Θ(1), clamped to ±0.3)
    traced = from_torch(LM, (32, 64), _ids, blocks=False)
    for i in range(3):
        assert f"clamp_part{i} = 0.3 * hardtanh(linear_part{i} / 0.3)" \
            in traced.source
    traced_computes_the_model(traced, LM, _ids)


# the second split's first block (rows 0..2n) is read by nothing: derive says so and leaves it out
@pytest.mark.filterwarnings("ignore:.*does not reach any output")
def test_a_clamp_split_twice_is_each_splits_own_blocks():
    # the second split's second block is rows 2n..3n (the values), not the first split's
    # second block (the keys): each block named by its rows, not its place in a split
    build = lambda n: LM(n, form="twice")  # noqa: E731
    traced = from_torch(build, (32, 64), _ids, blocks=False)
    traced_computes_the_model(traced, build, _ids)


@pytest.mark.parametrize("form, match", [
    ("other", "a split of anything but a linear layer's output features"),
    ("bounds", r"a clamp to \[0.1, 0.5\]"),
    ("tokens", "a split of anything but a linear layer's output features"),
])
def test_a_clamp_read_otherwise_or_of_no_form_is_refused(form, match):
    with pytest.raises(TraceError, match=match):
        from_torch(lambda n: LM(n, form=form), (32, 64), _ids, blocks=False)


def test_a_clamped_query_of_a_growing_head_dim_is_refused_by_apply():
    # µP's extra n^-1/2 on the logits has no layer to fold into past the clamp
    from tensorprog.errors import UsageError
    from tensorprog.fromtorch import MuP

    traced = from_torch(lambda n: LM(n, form="dh"), (32, 64), _ids, blocks=False)
    with pytest.raises(UsageError, match="a function of it such as a clamp"):
        MuP(traced, "adam")
