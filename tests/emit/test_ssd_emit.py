"""Mamba-2's state-space mixing (``ssd(cb, dt, A, P)`` then ``mix(p, x, P)``; examples/ssd.tp):
the emitted module computes exactly the recurrence state_t = exp(dt_t A) state_{t-1} + dt_t x_t
B_tᵀ, y_t = state_t C_t, run token by token in float64, with groups of B and C serving runs of
heads; and the IR's text form parses back to the same program."""

import pytest
from conftest import ROOT, emit_program

torch = pytest.importorskip("torch")

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

GROUPED = """\
width n = 16
dim V = 11
dim T = 5
dim P = 2
dim H = n / 2
dim G2 = 3 * n / 8
dim N = 3
input tok : tokens[T, V]
param E : [n, V]
param WC : [G2, n]
param WB : [G2, n]
param Wdt : [H, n]
param Alog : [H] = 0
param U : [V, n]
h = E @ tok
dt = softplus(Wdt @ h)
p = ssd(dot(WC @ h, WB @ h, N), dt, -1 * exp(Alog), P)
output y = U @ mix(p, h, P)
"""


def recurrence(x, b, c, dt, a, head, groups):
    """y_t per head by the state recurrence, token by token: x (batch, T, H·P), b and c
    (batch, T, G·N), dt (batch, T, H), a (H,)."""
    batch, t_len, heads = dt.shape
    x = x.unflatten(-1, (heads, head))
    b = b.unflatten(-1, (groups, -1)).repeat_interleave(heads // groups, dim=-2)
    c = c.unflatten(-1, (groups, -1)).repeat_interleave(heads // groups, dim=-2)
    state = torch.zeros(batch, heads, head, b.shape[-1], dtype=x.dtype)
    out = []
    for t in range(t_len):
        decay = torch.exp(dt[:, t] * a)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, :, None, :]
        out.append((state * c[:, t, :, None, :]).sum(-1))
    return torch.stack(out, 1).flatten(-2)


def test_the_ssd_helper_is_the_recurrence_with_grouped_b_and_c():
    torch.manual_seed(0)
    scope: dict = {"torch": torch}
    exec("\n".join(tp.emit.templates.HELPERS["_ssd"] + [""] + tp.emit.templates.HELPERS["_mix"]),
         scope)
    batch, t_len, groups, n_state, heads, head = 2, 6, 2, 3, 4, 5
    x = torch.randn(batch, t_len, heads * head, dtype=torch.float64)
    b, c = (torch.randn(batch, t_len, groups * n_state, dtype=torch.float64) for _ in "bc")
    dt = torch.nn.functional.softplus(torch.randn(batch, t_len, heads, dtype=torch.float64))
    a = -torch.rand(heads, dtype=torch.float64) * 2
    cb = torch.einsum("btgn,bsgn->bgts", c.unflatten(-1, (groups, -1)),
                      b.unflatten(-1, (groups, -1)))
    y = scope["_mix"](scope["_ssd"](cb, dt, a), x)
    torch.testing.assert_close(y, recurrence(x, b, c, dt, a, head, groups), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("source", ["grouped", "example"])
def test_the_emitted_module_mixes_as_the_recurrence(source):
    text = GROUPED if source == "grouped" else (ROOT / "examples" / "ssd.tp").read_text()
    module = load_module(emit_program(tp.parse(text)), f"ssd_{source}")
    model = module.Model(16 if source == "grouped" else 32, dtype=torch.float64)
    (tok,) = model.example_inputs(2, generator=torch.Generator().manual_seed(1))
    v = model.vectors(tok)
    if source == "grouped":  # 2 groups of B and C (G2 = 2·N), each serving 4 of the 8 heads
        # (the groups grow with the heads: a fixed number of them is refused by derive)
        x, c, b, dt, a, y, head, groups = (v["h"], v["p_1"], v["p_2"], v["dt"], v["p_5"],
                                           v["y_1"], 2, 2)
    else:
        x, c, b, dt, a, y, head, groups = (v["mamba.0.x"], v["mamba.0.p_1"], v["mamba.0.p_2"],
                                           v["mamba.0.dt"], v["mamba.0.p_5"], v["mamba.0.y_1"],
                                           16, 4)  # a group per head
    torch.testing.assert_close(y, recurrence(x, b, c, dt, a, head, groups), rtol=1e-12,
                               atol=1e-12)


def test_ssd_round_trips_through_the_text_form():
    text = tp.to_text(tp.parse(GROUPED))
    assert "ssd(" in text
    assert tp.parse(text) == tp.parse(GROUPED)


def test_a_long_sequence_keeps_float32_digits():
    # G_t - G_s summed over its own segment (Mamba-2's segsum), not as a difference of
    # cumulative sums: those reach |G| ~ 700 over 512 tokens, where float32 keeps 4e-5 of
    # exp(G_t - G_s) (the error before), while the weights themselves are O(1)
    torch.manual_seed(0)
    scope: dict = {"torch": torch}
    exec("\n".join(tp.emit.templates.HELPERS["_ssd"]), scope)
    dt = torch.nn.functional.softplus(torch.randn(1, 512, 2, dtype=torch.float64))
    a = -torch.rand(2, dtype=torch.float64) * 2
    cb = torch.randn(1, 1, 512, 512, dtype=torch.float64)
    exact = scope["_ssd"](cb, dt, a)
    single = scope["_ssd"](cb.float(), dt.float(), a.float()).double()
    assert (single - exact).abs().max() < 1e-6
