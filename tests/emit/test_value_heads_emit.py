"""Emitted attention whose values have a head dim of their own under grouped-query attention,
``mix(p, v, dv, D)`` (MiMo-V2-Flash's): each value head serves a whole group of consecutive query
heads, and the fused path (sdpa) and the explicit one (_heads_dot, _causal_softmax, _mix) both
compute what torch's repeat_interleave of the key and value heads computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import emit_program, train_once  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

F = torch.nn.functional

# (head dim, keys' dim, values' head dim, values' dim, output's dim) of a one-block decoder whose
# queries have dim n, run at width 64
FORMS = {
    "4 query heads, 2 key heads, 2 value heads of half the head dim": (
        "n / 4", "n / 2", "n / 8", "n / 4", "n / 2"),
    "value heads fewer than the key heads (one value head for all)": (
        "n / 4", "n / 2", "n / 8", "n / 8", "n / 2"),
    "keys not grouped, values grouped": ("n / 4", "n", "n / 8", "n / 4", "n / 2"),
    "heads of a fixed dim growing in number, values twice the head dim": (
        "8", "n / 2", "16", "n / 2", "2 * n"),
    "keys grouped, values in the queries' heads of their own dim": (
        "n / 4", "n / 2", "n / 8", "n / 2", "n / 2"),
}


def _decoder(dh: str, kv: str, dv: str, vkv: str, vo: str) -> str:
    return (f"width n = 32\ndim V = 16\ndim T = 3\ndim dh = {dh}\ndim kv = {kv}\n"
            f"dim dv = {dv}\ndim vkv = {vkv}\ndim vo = {vo}\n"
            "input tok : tokens[T, V]\nparam E : [n, V]\nparam U : [V, n]\nscale attn = 0.25\n"
            "param Wq : [n, n]\nparam Wk : [kv, n]\nparam Wv : [vkv, n]\nparam Wo : [n, vo]\n"
            "h0 = E @ tok\na = rmsnorm(h0)\ns = attn * dot(Wq @ a, Wk @ a, dh)\n"
            "o = mix(causal_softmax(s), Wv @ a, dv, vo)\n"
            "h1 = h0 + Wo @ o\noutput logits = U @ rmsnorm(h1)\n")


def _size(expr: str, width: int) -> int:
    return eval(expr.replace("n", str(width)).replace("/", "//"))  # noqa: S307


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_attention_with_value_heads_repeated(form):
    dh, kv, dv, vkv, vo = FORMS[form]
    module = load_module(emit_program(tp.parse(_decoder(dh, kv, dv, vkv, vo))), "value_heads")
    m, (tok,) = train_once(module, width=64)  # one Adam step at width 64
    head, vhead = _size(dh, 64), _size(dv, 64)
    b, t = tok.shape

    def heads(x, d):  # (b, t, heads * d) -> (b, heads, t, d)
        return x.view(b, t, -1, d).transpose(1, 2)

    got = m.vectors(tok)  # the explicit path
    a = got["a"]
    q, k, v = heads(a @ m.Wq.t(), head), heads(a @ m.Wk.t(), head), heads(a @ m.Wv.t(), vhead)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=m.mult_attn)
    expected = o.transpose(1, 2).reshape(b, t, -1)
    assert expected.shape[-1] == _size(vo, 64)
    torch.testing.assert_close(got["o"], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(m(tok), got["logits"], rtol=0, atol=1e-12)  # the fused path


@pytest.mark.parametrize("dims, match", [
    (("n / 4", "n / 2", "n / 8", "n / 4", "n"), r"the output's dim vo is not as many heads of dv "
                                                r"as the weights have \(n / dh: 4 heads\)"),
    (("n / 4", "n / 2", "n / 8", "3 * n / 16", "n / 2"),
     r"the values' dim vkv = 6 is not a whole number of heads of dv = 4"),
    (("n / 4", "n / 2", "n / 8", "3 * n / 8", "n / 2"),
     r"the values' 3 heads at the base width do not each serve a whole group of the weights' 4"),
    # 2 value heads of 4 for 4 query heads at the base width, but the value heads grow
    (("n / 4", "n / 2", "4", "n / 4", "16"),
     r"the values' heads \(vkv / dv: 2 at the base width\) and the weights' \(4\) do not grow "
     r"alike with the width"),
])
def test_values_that_are_no_whole_groups_are_refused(dims, match):
    with pytest.raises(tp.SemanticError, match=match):
        tp.parse(_decoder(*dims))
