"""The emitted gated delta rule computes the recurrence it unrolls: per head, the state
S_t = exp(g_t) S_{t-1} (I - b_t k_t k_tᵀ) + b_t v_t k_tᵀ updated token by token and read as
o_t = S_t q_t, in float64, both for the helper on random inputs and inside the example's model."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import GATED_DELTA_GROUPED, ROOT, emit_program, import_file

import tensorprog as tp
from tensorprog.emit.load import load_module


def _recurrence(q, k, v, b, g):
    """o (batch, tokens, heads, dv) from q, k (batch, tokens, heads, dk), v (..., dv), b, g
    (batch, tokens, heads), by the state update token by token."""
    batch, tokens, heads, dk = k.shape
    s = torch.zeros(batch, heads, v.shape[-1], dk, dtype=torch.float64)
    eye = torch.eye(dk, dtype=torch.float64)
    out = []
    for t in range(tokens):
        kt, bt = k[:, t], b[:, t, :, None, None]
        proj = eye - bt * kt[..., :, None] * kt[..., None, :]
        s = g[:, t].exp()[..., None, None] * s @ proj + bt * v[:, t, :, :, None] * kt[..., None, :]
        out.append((s @ q[:, t, :, :, None])[..., 0])
    return torch.stack(out, 1)


@functools.cache
def _module():
    """The example's emitted module, as its golden file holds it (tests/emit/test_module.py
    checks that the emitter writes exactly that)."""
    return import_file(ROOT / "tests" / "golden" / "gated_delta_mup.py", "gated_delta_golden")


def test_delta_helper_equals_the_recurrence_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    batch, tokens, heads, dk, dv = 2, 7, 3, 5, 4

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = rand(batch, tokens, heads, dk), rand(batch, tokens, heads, dk), rand(
        batch, tokens, heads, dv)
    k = k / k.norm(dim=-1, keepdim=True)  # the model's keys (any keys: the identity is exact)
    b = torch.rand(batch, tokens, heads, generator=gen, dtype=torch.float64)
    g = -torch.rand(batch, tokens, heads, generator=gen, dtype=torch.float64)
    sq = torch.einsum("bthd,bshd->bhts", q, k)
    sk = torch.einsum("bthd,bshd->bhts", k, k)
    p = _module()._delta(sq, sk, b, g)
    got = torch.einsum("bhts,bshd->bthd", p, v)
    torch.testing.assert_close(got, _recurrence(q, k, v, b, g), rtol=1e-12, atol=1e-12)
    assert (p.triu(1) == 0).all()  # causal: no token reads a later one


def test_delta_helper_without_g_is_deltanets_recurrence():
    """delta(sq, sk, b) (no decay per head, plain dots): DeltaNet's state, never decayed."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64) for _ in "qkv")
    k = k / k.norm(dim=-1, keepdim=True)
    b = torch.rand(2, 6, 3, generator=gen, dtype=torch.float64)
    sq, sk = (torch.einsum("bthd,bshd->bhts", x, k) for x in (q, k))
    got = torch.einsum("bhts,bshd->bthd", _module()._delta(sq, sk, b), v)
    want = _recurrence(q, k, v, b, torch.zeros_like(b))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_example_model_mixes_its_values_by_the_recurrence():
    torch.manual_seed(0)
    model = _module().Model(width=32, dtype=torch.float64)
    (tok,) = model.example_inputs(batch_size=2)
    values = model.vectors(tok)
    dk = 16

    def heads(x):
        return x.unflatten(-1, (-1, dk))

    for i in range(2):
        got = {n: values[f"layer.{i}.{n}"] for n in ("q", "k", "b", "g", "o_1", "o_2")}
        q = heads(got["q"]) * model.mult_tau / model.mult_kap ** 0.5
        k = heads(got["k"]) * model.mult_kap ** 0.5  # unit keys (rmsnorm's eps aside)
        torch.testing.assert_close(k.norm(dim=-1), torch.ones(k.shape[:-1], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-5)
        want = _recurrence(q, k, heads(got["o_1"]), got["b"], got["g"]).flatten(-2)
        torch.testing.assert_close(got["o_2"], want, rtol=1e-10, atol=1e-12)


def test_delta_helper_takes_b_and_g_the_same_for_every_token():
    """b and g as params of the heads (a decay that does not depend on the input), and the
    weights in float32: the recurrence with them broadcast over the tokens."""
    gen = torch.Generator().manual_seed(1)
    batch, tokens, heads, dk = 2, 5, 3, 4
    q, k, v = (torch.randn(batch, tokens, heads, dk, generator=gen, dtype=torch.float64)
               for _ in range(3))
    b = torch.rand(heads, generator=gen, dtype=torch.float64)
    g = -torch.rand(heads, generator=gen, dtype=torch.float64)
    sq = torch.einsum("bthd,bshd->bhts", q, k)
    sk = torch.einsum("bthd,bshd->bhts", k, k)
    p = _module()._delta(sq.float(), sk.float(), b.float(), g.float())
    assert p.dtype == torch.float32
    want = _recurrence(q, k, v, b.expand(batch, tokens, heads), g.expand(batch, tokens, heads))
    got = torch.einsum("bhts,bshd->bthd", p.double(), v)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_grouped_value_heads_share_their_key_head_as_repeat_interleave_lays_them_out():
    """n/32 query/key heads of 16, n/8 value heads of 8: value head j reads key head j // 4
    (transformers' repeat_interleave before its chunked kernel), b and g per value head."""
    module = load_module(emit_program(tp.parse(GATED_DELTA_GROUPED)), "gated_delta_grouped")
    torch.manual_seed(0)
    model = module.Model(width=64, dtype=torch.float64)
    (tok,) = model.example_inputs(batch_size=2)
    got = model.vectors(tok)
    r = 4

    def heads(x, d):
        return x.unflatten(-1, (-1, d))

    q = heads(got["q"], 16).repeat_interleave(r, dim=-2) * model.mult_tau / model.mult_kap ** 0.5
    k = heads(got["k"], 16).repeat_interleave(r, dim=-2) * model.mult_kap ** 0.5
    g = got["p_8"].expand(*got["p_6"].shape)  # -exp(A): one decay per value head, every token
    want = _recurrence(q, k, heads(got["y_1"], 8), got["p_6"], g).flatten(-2)
    torch.testing.assert_close(got["y_2"], want, rtol=1e-10, atol=1e-12)


def test_b_and_g_one_per_sequence_are_the_same_for_each_of_its_tokens():
    """b and g with no token axis but one value per example (read from mean(h), as the IR
    allows: ir/sequences.py gives them no sequence, as params): every token of an example
    reads its example's b and g, however the batch and the tokens compare (here 3 and 3,
    which a broadcast over the wrong axis would not notice)."""
    import dataclasses

    from tensorprog.ir.program import Mean

    source = ("width n = 8\ndim V = 5\ndim T = 3\ndim dk = 4\ndim H = n / 4\n"
              "input tok : tokens[T, V]\nparam E : [n, V]\nparam U : [V, n]\n"
              "param Wq : [n, n]\nparam Wm : [n, n]\nparam Wb : [H, n]\nscale tau\n"
              "h = E @ tok\nq = rmsnorm(Wq @ h, dk)\nm = Wm @ h\nb = sigmoid(Wb @ m)\n"
              "p = delta(tau * dot(q, q, dk), dot(q, q, dk), b, -1 * b)\n"
              "output y = U @ (h + mix(p, h))\n")
    program = tp.parse(source)
    body = tuple(Mean("m", "h", 0, None) if i.out == "m" else i for i in program.body)
    program = tp.verify(dataclasses.replace(program, body=body))
    module = load_module(emit_program(program), "gated_delta_per_sequence")
    torch.manual_seed(0)
    model = module.Model(width=8, dtype=torch.float64)
    got = model.vectors(*model.example_inputs(batch_size=3))
    k = got["q"].unflatten(-1, (-1, 4))  # sk = dot(q, q, dk): the keys are q
    b = got["b"].unsqueeze(1).expand(3, 3, 2)  # (batch, heads): each example's, every token
    want = _recurrence(model.mult_tau * k, k, got["h"].unflatten(-1, (-1, 4)), b, -b)
    want = want.flatten(-2)
    torch.testing.assert_close(got["y_1"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [1, 9, 70])  # 70: past transformers' chunks of 64
def test_delta_helper_equals_transformers_chunked_kernel(tokens):
    """transformers' torch_chunk_gated_delta_rule (Qwen3.5's, without its own L2 norm; it
    scales q by dk^-1/2 itself) on unit queries and keys, grouped value heads (r = 2), b up
    to 2 and g from 0 to very negative: the helper's P applied to the values, with sq =
    dk^-1/2 q·k as the example writes it, gives the kernel's output (float32, its dtype).
    A tracer that replaces the kernel by delta relies on this equality."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    gen = torch.Generator().manual_seed(2)
    batch, heads, r, dk, dv = 3, 2, 2, 8, 5
    q, k = (torch.nn.functional.normalize(torch.randn(batch, tokens, heads, dk, generator=gen,
                                                      dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(batch, tokens, heads * r, dv, generator=gen, dtype=torch.float64)
    b = 2 * torch.rand(batch, tokens, heads * r, generator=gen, dtype=torch.float64)
    g = -torch.rand(batch, tokens, heads * r, generator=gen, dtype=torch.float64) * torch.tensor(
        [0.0, 0.5, 40.0, 3.0], dtype=torch.float64)
    want, _ = torch_chunk_gated_delta_rule(q.float(), k.float(), v.float(), g=g.float(),
                                           beta=b.float(), use_qk_l2norm_in_kernel=False)
    sq = torch.einsum("bthd,bshd->bhts", q * dk ** -0.5, k)
    sk = torch.einsum("bthd,bshd->bhts", k, k)
    got = torch.einsum("bhts,bshd->bthd", _module()._delta(sq, sk, b, g), v)
    torch.testing.assert_close(got, want.double(), rtol=1e-4, atol=1e-4)
    exact = _recurrence(*(x.repeat_interleave(r, dim=2) for x in (q * dk ** -0.5, k)), v, b, g)
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)


def test_delta_helper_keeps_float32_precision_over_a_long_strongly_decaying_sequence():
    """The decay between tokens s and t is the sum of g over s < u <= t, not the difference of
    two running sums over the whole sequence (each of size T·|g|, whose float32 rounding
    would swamp the short sums next to the diagonal): 256 tokens, g down to -4, in float32
    against the float64 recurrence."""
    gen = torch.Generator().manual_seed(3)
    batch, tokens, heads, dk = 1, 256, 2, 4
    q, k = (torch.nn.functional.normalize(torch.randn(batch, tokens, heads, dk, generator=gen,
                                                      dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(batch, tokens, heads, 3, generator=gen, dtype=torch.float64)
    b = torch.rand(batch, tokens, heads, generator=gen, dtype=torch.float64)
    g = -4 * torch.rand(batch, tokens, heads, generator=gen, dtype=torch.float64)
    sq = torch.einsum("bthd,bshd->bhts", q, k).float()
    sk = torch.einsum("bthd,bshd->bhts", k, k).float()
    p = _module()._delta(sq, sk, b.float(), g.float()).double()
    want = _recurrence(q, k, v, b, g)
    got = torch.einsum("bhts,bshd->bthd", p, v)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 2e-6, err
