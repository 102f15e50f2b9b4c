"""Merged attention (T5Gemma 2's decoder): the queries meet the decoder's own keys and the
encoder's in one softmax, ``sdpa(q, cat([k, kc], 2), cat([v, vc], 2), mask)`` with a mask causal
on the own part and keeping every encoder key. Traced as the language's ``causal_softmax(a, b)``
on the own keys and ``causal_softmax(b, a)`` on the encoder's, each mixing its own values.
Oracles: the emitted program computes the model's output at the base width; the model, written
as examples/merged_attention.tp is, derives that program's exponents; the emitted softmax is
torch's over the concatenated keys; near misses (values concatenated otherwise than the keys,
merged keys read by anything but sdpa, a mask hiding encoder keys) are refused at their line."""

from __future__ import annotations

import pytest
from conftest import ROOT, abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TraceError  # noqa: E402

S, T, V = 8, 6, 64


def _rms(x, g):
    return F.rms_norm(x, x.shape[-1:], g, eps=1e-6)  # the emitted rmsnorm's eps


class Merged(nn.Module):
    """examples/merged_attention.tp in torch: an encoder block, two decoder blocks with merged
    attention (one k_proj and one v_proj for both sequences, as T5Gemma 2's), heads of 16."""

    def __init__(self, n, form="merged"):
        super().__init__()
        self.form = form  # the near misses: each refused
        self.E = nn.Embedding(V, n)
        self.U = nn.Linear(n, V, bias=False)
        self.gains = nn.ParameterList([nn.Parameter(torch.ones(n)) for _ in range(8)])
        self.enc = nn.ModuleList(nn.Linear(n, n, bias=False) for _ in range(4))
        self.enc_mlp = nn.ModuleList(
            [nn.Linear(n, 2 * n, bias=False), nn.Linear(2 * n, n, bias=False)]
        )
        self.dec = nn.ModuleList(nn.Linear(n, n, bias=False) for _ in range(8))
        self.dec_mlp = nn.ModuleList(
            nn.Linear(n if i % 2 == 0 else 2 * n, 2 * n if i % 2 == 0 else n, bias=False)
            for i in range(4)
        )

    def heads(self, x):
        return x.view(x.shape[0], x.shape[1], -1, 16).transpose(1, 2)

    def merged(self, i, b, enc):
        q, k, v, o = self.dec[4 * i : 4 * i + 4]
        q, ks, vs = self.heads(q(b)), self.heads(k(b)), self.heads(v(b))
        kc, vc = self.heads(k(enc)), self.heads(v(enc))
        keys = torch.cat([ks, kc], dim=2)
        values = torch.cat([vc, vs] if self.form == "swapped" else [vs, vc], dim=2)
        own = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        cross = torch.ones(T, S, dtype=torch.bool, device=q.device)
        if self.form == "padded":
            cross[:, -1] = False
        mask = torch.cat([own, cross], dim=-1)
        if self.form == "eager":
            w = (q @ keys.transpose(2, 3)) * q.shape[-1] ** -0.5
            a = torch.softmax(w.masked_fill(~mask, float("-inf")), -1) @ values
        else:
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return o(a.transpose(1, 2).reshape(b.shape))

    def forward(self, src, tgt):
        g = self.gains
        x0 = self.E(src)
        a0 = _rms(x0, g[0])
        q, k, v, o = self.enc
        a = F.scaled_dot_product_attention(self.heads(q(a0)), self.heads(k(a0)), self.heads(v(a0)))
        x1 = x0 + o(a.transpose(1, 2).reshape(x0.shape))
        y1 = x1 + self.enc_mlp[1](F.relu(self.enc_mlp[0](_rms(x1, g[1]))))
        enc = _rms(y1, g[2])
        h = self.E(tgt)
        for i in range(2):
            h = h + self.merged(i, _rms(h, g[3 + 2 * i]), enc)
            up, down = self.dec_mlp[2 * i : 2 * i + 2]
            h = h + down(F.relu(up(_rms(h, g[4 + 2 * i]))))
        return self.U(_rms(h, g[7]))


# examples/merged_attention.tp's param of each torch one
NAMES = {
    "E.weight": "E",
    "U.weight": "U",
    **{f"gains.{i}": g for i, g in enumerate(["ea", "em", "ef", "da1", "dm1", "da2", "dm2", "df"])},
    **{f"enc.{i}.weight": f"eW{'qkvo'[i]}" for i in range(4)},
    "enc_mlp.0.weight": "eWi",
    "enc_mlp.1.weight": "eWp",
    **{f"dec.{i}.weight": f"W{'qkvo'[i % 4]}{i // 4 + 1}" for i in range(8)},
    **{f"dec_mlp.{i}.weight": f"W{'ip'[i % 2]}{i // 2 + 1}" for i in range(4)},
}


def inputs(model=None):
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, V, (2, S), generator=gen), torch.randint(0, V, (2, T), generator=gen))


@pytest.fixture(scope="module")
def merged():
    return tp.from_torch(Merged, (64, 128), inputs)


@pytest.mark.slow  # a trace at two widths: about 6 s
def test_merged_attention_is_one_softmax_over_both_sequences_keys(merged):
    soft = [s for s in merged.source.splitlines() if "causal_softmax(" in s]
    assert len(soft) == 4  # two per block: the weights on each part's keys
    assert merged.program is not None
    traced_computes_the_model(merged, Merged, inputs)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_model_derives_what_examples_merged_attention_tp_derives(merged, optimizer):
    got = {NAMES[t]: abc for t, abc in abc_by_target(merged, optimizer).items() if t in NAMES}
    d = tp.derive(tp.parse_file(ROOT / "examples" / "merged_attention.tp"), optimizer)
    want = {p: (d.abc[p].a, d.abc[p].b, d.abc[p].c) for p in NAMES.values()}
    assert got == want


@pytest.mark.parametrize(
    "form, match",
    [
        # each traces the model to its decoder (torch.export: seconds), so all are slow; the
        # language's own refusals of the form are the catalogue's default rows
        pytest.param(
            "swapped",
            r"attention over keys of \[6, 8\] tokens and values of \[8, 6\]",
            marks=pytest.mark.slow,
        ),
        pytest.param("eager", r"read by \['transpose'\]", marks=pytest.mark.slow),
        pytest.param(
            "padded", "neither the causal mask nor one that keeps every key", marks=pytest.mark.slow
        ),
    ],
)
def test_near_misses_of_merged_attention_are_refused_at_their_line(form, match):
    with pytest.raises(TraceError, match=match) as err:
        tp.from_torch(lambda n: Merged(n, form), (64, 128), inputs)
    assert "test_merged_attention.py" in str(err.value)
