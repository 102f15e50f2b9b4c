"""Emitted grouped-query attention: the module repeats each key/value head for the query heads
it serves, and computes what a hand-written GQA (Hugging Face's repeat_kv) computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, emit_program, train_once  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

F = torch.nn.functional


def _by_hand(m, tok):
    """examples/llama_gqa.tp written out in torch, with HF's repeat_kv (expand + reshape)."""
    b, t = tok.shape
    dh = 16
    hq, hkv = m.width // dh, m.Wk1.shape[0] // dh

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def repeat_kv(x):  # (b, hkv, t, dh) -> (b, hq, t, dh)
        return x[:, :, None].expand(b, hkv, hq // hkv, t, dh).reshape(b, hq, t, dh)

    h0 = m.E.t()[tok] + m.P.t()[torch.arange(t)]
    a = m.ga1 * rms(h0)
    q = (a @ m.Wq1.t()).view(b, t, hq, dh).transpose(1, 2)
    k = repeat_kv((a @ m.Wk1.t()).view(b, t, hkv, dh).transpose(1, 2))
    v = repeat_kv((a @ m.Wv1.t()).view(b, t, hkv, dh).transpose(1, 2))
    s = m.mult_attn * q @ k.transpose(-1, -2)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, hq * dh)
    h1 = h0 + o @ m.Wo1.t()
    mm = m.gm1 * rms(h1)
    r1 = h1 + (torch.nn.functional.silu(mm @ m.Wg1.t()) * (mm @ m.Wu1.t())) @ m.Wd1.t()
    return (m.gf * rms(r1)) @ m.U.t()


@pytest.mark.parametrize("width", [64, 128])
def test_emitted_gqa_equals_a_hand_written_one(width):
    program = tp.parse_file(ROOT / "examples" / "llama_gqa.tp")
    module = load_module(emit_program(program), "llama_gqa")
    torch.manual_seed(0)
    m = module.Model(width, dtype=torch.float64)
    with torch.no_grad():
        for p in m.parameters():  # gains away from 1, so that a wrong head pairing shows
            p.normal_(0.0, 0.3)
    tok = torch.randint(0, 64, (3, 4))
    expected = _by_hand(m, tok)
    fused, explicit = m(tok), m.vectors(tok)["logits"]  # sdpa, and dot / softmax / mix
    # float64: the three differ by rounding only (measured: below 1e-15)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(explicit, expected, rtol=0, atol=1e-12)


def test_a_width_the_key_heads_do_not_divide_is_refused():
    # kv = n / 2 in heads of 16: whole key heads need a multiple of 32
    module = load_module(emit_program(tp.parse_file(ROOT / "examples" / "llama_gqa.tp")), "g")
    with pytest.raises(ValueError, match=r"kv/dh"):
        module.Model(48)


# every supported form: (head dim, kv dim) of a one-block decoder whose queries have dim n
FORMS = {
    "gqa, 2 kv heads of a growing dim": ("n / 8", "n / 4"),
    "mqa, 1 kv head of a growing dim": ("n / 4", "n / 4"),
    "gqa, kv heads of a fixed dim growing in number": ("8", "n / 2"),
}


def _decoder(dh: str, kv: str) -> str:
    return (f"width n = 32\ndim V = 16\ndim T = 3\ndim dh = {dh}\ndim kv = {kv}\n"
            "input tok : tokens[T, V]\nparam E : [n, V]\nparam U : [V, n]\nscale attn = 0.25\n"
            "param Wq : [n, n]\nparam Wk : [kv, n]\nparam Wv : [kv, n]\nparam Wo : [n, n]\n"
            "h0 = E @ tok\na = rmsnorm(h0)\ns = attn * dot(Wq @ a, Wk @ a, dh)\n"
            "h1 = h0 + Wo @ mix(causal_softmax(s), Wv @ a)\noutput logits = U @ rmsnorm(h1)\n")


@pytest.mark.parametrize("form", FORMS)
def test_every_form_trains_and_its_attention_is_repeat_interleave(form):
    dh, kv = FORMS[form]
    module = load_module(emit_program(tp.parse(_decoder(dh, kv))), "form")
    m, (tok,) = train_once(module, width=64)  # one Adam step at width 64
    head = m.width // 8 if dh == "n / 8" else m.width // 4 if dh == "n / 4" else 8
    b, t = tok.shape

    def heads(x):  # (b, t, heads * head) -> (b, heads, t, head)
        return x.view(b, t, -1, head).transpose(1, 2)

    a = m.vectors(tok)["a"]
    q, k, v = heads(a @ m.Wq.t()), heads(a @ m.Wk.t()), heads(a @ m.Wv.t())
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=m.mult_attn)
    expected = o.transpose(1, 2).reshape(b, t, -1)
    got = m.vectors(tok)  # the explicit path: _heads_dot, _causal_softmax, _mix
    torch.testing.assert_close(got["h1_3"], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(m(tok), got["logits"], rtol=0, atol=1e-12)  # the fused path
