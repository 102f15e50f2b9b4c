"""Tracing attention whose values have a head dim of their own under grouped-query attention
(MiMo-V2-Flash's: queries and keys in heads of 192, values in heads of 128, 4 or 8 key/value
heads for 64 query heads) into ``mix(p, v, dv, D)``. Oracles: the emitted program computes the
model's output at the base width, under sdpa's enable_gqa and under HF's eager repeat_kv
(expand, reshape, matmul), with the head count fixed or the head dim fixed; the derived
exponents are those of examples/value_heads.tp, written by hand; values in heads that serve no
whole group of query heads are refused by torch's own shape check or at the trace's line."""

from __future__ import annotations

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402


class ValueHeads(nn.Module):
    """One block of examples/value_heads.tp in torch: 4 query heads (n/4 each, or 16 with
    ``fixed``: n/16 of them), half as many key heads of that dim, half as many value heads of
    half that dim; Wo reads the queries' heads of the values' head dim."""

    def __init__(self, n, form="sdpa", fixed=False):
        super().__init__()
        self.form, self.heads = form, n // 16 if fixed else 4
        self.dh = n // self.heads
        self.emb, self.pos = nn.Embedding(64, n), nn.Embedding(4, n)
        h, kv, dv = self.heads, self.heads // 2, self.dh // 2
        self.q = nn.Linear(n, h * self.dh, bias=False)
        self.k = nn.Linear(n, kv * self.dh, bias=False)
        self.v = nn.Linear(n, kv * dv, bias=False)
        self.o = nn.Linear(h * dv, n, bias=False)
        self.up, self.gate, self.down = (nn.Linear(n, 3 * n, bias=False),
                                         nn.Linear(n, 3 * n, bias=False),
                                         nn.Linear(3 * n, n, bias=False))
        self.g1, self.g2, self.gf = (nn.Parameter(torch.ones(n)) for _ in range(3))
        self.unemb = nn.Linear(n, 64, bias=False)

    def attend(self, a):
        (b, t, _), dh = a.shape, self.dh
        q = self.q(a).view(b, t, -1, dh).transpose(1, 2)
        k = self.k(a).view(b, t, -1, dh).transpose(1, 2)
        v = self.v(a).view(b, t, -1, dh // 2).transpose(1, 2)
        if self.form == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # HF's eager attention: repeat_kv, then the two matmuls
            g = q.shape[1] // k.shape[1]
            k, v = (x[:, :, None].expand(b, x.shape[1], g, t, x.shape[-1]).reshape(
                b, x.shape[1] * g, t, x.shape[-1]) for x in (k, v))
            s = q @ k.transpose(2, 3) * dh**-0.5
            future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)
            s = s.masked_fill(future, float("-inf"))
            o = s.softmax(-1) @ v
        return self.o(o.transpose(1, 2).reshape(b, t, -1))

    def forward(self, ids):
        t = ids.shape[1]
        h0 = self.emb(ids) + self.pos(torch.arange(t))
        h1 = h0 + self.attend(F.rms_norm(h0, h0.shape[-1:], self.g1, 1e-6))
        m = F.rms_norm(h1, h1.shape[-1:], self.g2, 1e-6)
        r = h1 + self.down(F.silu(self.gate(m)) * self.up(m))
        return self.unemb(F.rms_norm(r, r.shape[-1:], self.gf, 1e-6))


def ids(model=None):
    return (torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0)),)


# examples/value_heads.tp's param of each torch one
NAMES = {"emb.weight": "E", "pos.weight": "P", "unemb.weight": "U", "q.weight": "Wq1",
         "k.weight": "Wk1", "v.weight": "Wv1", "o.weight": "Wo1", "g1": "ga1", "g2": "gm1",
         "gf": "gf", "gate.weight": "Wg1", "up.weight": "Wu1", "down.weight": "Wd1"}


def _named(abc: dict) -> dict:
    return {NAMES[t]: x for t, x in abc.items()}


def _by_hand() -> dict:
    d = tp.derive(tp.parse_file(ROOT / "examples" / "value_heads.tp"), "adam")
    return {p: (x.a, x.b, x.c) for p, x in d.abc.items() if p in NAMES.values()}


def test_values_of_their_own_grouped_heads_trace_to_mix_with_an_output_dim():
    traced = tp.from_torch(lambda n: ValueHeads(n), (64, 128), ids)
    assert "mix(causal_softmax(scaled_dot_product_attention_logits), linear_2, n_by8, n_by2)" \
        in traced.source
    traced_computes_the_model(traced, lambda n: ValueHeads(n), ids)
    # the exponents of examples/value_heads.tp, where each param is named by hand
    assert _named(abc_by_target(traced)) == _by_hand()


@pytest.mark.slow
@pytest.mark.parametrize("form, fixed", [("eager", False), ("sdpa", True), ("eager", True)])
def test_eager_repeat_kv_and_a_fixed_head_dim_compute_the_model(form, fixed):
    def build(n):
        return ValueHeads(n, form, fixed)

    traced = tp.from_torch(build, (64, 128), ids)
    assert ", n_by2)" in traced.source and "mix(" in traced.source
    traced_computes_the_model(traced, build, ids)
    assert _named(abc_by_target(traced)) == _by_hand()  # the logits' scale is no param


class PartlyRepeated(nn.Module):
    """4 query heads of n/4; one key and one value head (of n/8), the values repeated twice by
    a repeat_kv before sdpa's enable_gqa repeats them twice more (``layout="dv_major"``: the
    values' features laid out (head dim, heads), viewed so and moved to the heads' place)."""

    def __init__(self, n, layout="heads"):
        super().__init__()
        self.layout, self.dh = layout, n // 4
        self.emb = nn.Embedding(64, n)
        self.q, self.k = nn.Linear(n, n, bias=False), nn.Linear(n, n // 4, bias=False)
        self.v = nn.Linear(n, n // 8 if layout == "heads" else n // 4, bias=False)
        self.o = nn.Linear(n // 2, n, bias=False)
        self.u = nn.Linear(n, 64, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        (b, t, _), dh = h.shape, self.dh
        q = self.q(h).view(b, t, 4, dh).transpose(1, 2)
        k = self.k(h).view(b, t, 1, dh).transpose(1, 2)
        if self.layout == "heads":
            v = self.v(h).view(b, t, 1, dh // 2).transpose(1, 2).repeat_interleave(2, dim=1)
        else:  # 2 heads of dh / 2, written head dim first
            v = self.v(h).view(b, t, dh // 2, 2).permute(0, 3, 1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b, t, -1)
        return self.u(h + self.o(o))


def test_values_repeated_in_part_before_sdpa_repeats_the_rest_compute_the_model():
    traced = tp.from_torch(PartlyRepeated, (64, 128), ids)
    assert "linear_2, n_by8, n_by2)" in traced.source
    traced_computes_the_model(traced, PartlyRepeated, ids)


def test_values_laid_out_head_dim_first_are_refused_by_their_layout():
    with pytest.raises(TraceError, match=r"values laid out \(tokens, head dim, tokens, "
                                            r"heads\)"):
        tp.from_torch(lambda n: PartlyRepeated(n, "dv_major"), (64, 128), ids)
