"""from_torch on the forms of today's decoder LMs: a fused projection chunked or sliced, partial
rotary, a constant the forward computes from the width, positions with an offset, ``x @ W.T``
by hand and a gain written ``1 + w``. Each model is traced at widths 32 and 64, derived, applied
(bit-identical at the base width) and, where it has one, compared with the same model written
without the form (the oracle)."""

import math
from fractions import Fraction

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError, derive  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (32, 64)
HEADS = 4


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def _trace(build):
    return from_torch(build, WIDTHS, _tokens)


def _bit_identical_at_base(traced, build):
    return apply_is_bit_identical_at_base(traced, build, _tokens)


class Attention(nn.Module):
    """q, k, v from one fused layer (``form``: chunk, slice, split, unbind) or three
    (``separate``); ``rotary``: the fraction of each head's coordinates a rotary turns."""

    def __init__(self, n, form="separate", rotary=0.0):
        super().__init__()
        self.form, self.dh = form, n // HEADS
        self.r = int(self.dh * rotary)
        if form == "separate":
            self.q, self.k, self.v = (nn.Linear(n, n) for _ in range(3))
        else:
            self.qkv = nn.Linear(n, 3 * n)
        self.o = nn.Linear(n, n)
        if self.r:
            inv = 1.0 / 10000 ** (torch.arange(0, self.r, 2).float() / self.r)
            angle = torch.outer(torch.arange(8).float(), inv)
            self.register_buffer("angle", torch.cat((angle, angle), -1), persistent=False)

    def _rope(self, x):  # HF's partial rotary (Phi, GPT-NeoX, StableLM)
        x_rot, x_pass = x[..., : self.r], x[..., self.r :]
        cos, sin = self.angle.cos(), self.angle.sin()
        half = x_rot[..., : self.r // 2], x_rot[..., self.r // 2 :]
        rotated = torch.cat((-half[1], half[0]), dim=-1)
        return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)

    def forward(self, x):
        b, t, c = x.shape
        if self.form == "separate":
            q, k, v = self.q(x), self.k(x), self.v(x)
        elif self.form == "chunk":
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        elif self.form == "unbind":
            q, k, v = self.qkv(x).view(b, t, 3, c).unbind(2)
        elif self.form == "slice":
            qkv = self.qkv(x)
            q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
        else:
            q, k, v = self.qkv(x).split([c, c, c], dim=-1)
        q, k, v = (z.view(b, t, HEADS, self.dh).transpose(1, 2) for z in (q, k, v))
        if self.r:
            q, k = self._rope(q), self._rope(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, n, fused):
        super().__init__()
        self.fused = fused
        if fused:
            self.gate_up = nn.Linear(n, 4 * n, bias=False)  # Phi-3's fused gate and up
        else:
            self.gate, self.up = nn.Linear(n, 2 * n, bias=False), nn.Linear(n, 2 * n, bias=False)
        self.down = nn.Linear(2 * n, n, bias=False)

    def forward(self, x):
        if self.fused:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        return self.down(F.silu(gate) * up)


class Decoder(nn.Module):
    def __init__(self, n, form="separate", rotary=0.0):
        super().__init__()
        self.e = nn.Embedding(13, n)
        self.attn = Attention(n, form, rotary)
        self.mlp = MLP(n, form != "separate")
        self.ln1, self.ln2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.out(x)


@pytest.fixture(scope="module")
def separate():
    return _trace(Decoder)


def _as_separate(abc):
    """A fused model's exponents under the separate model's keys: row block i of attn.qkv is
    q, k or v, block i of mlp.gate_up is gate or up."""
    names = {"attn.qkv": ("attn.q", "attn.k", "attn.v"), "mlp.gate_up": ("mlp.gate", "mlp.up")}
    out = {}
    for (target, rows), e in abc.items():
        layer, _, attr = target.rpartition(".")
        if rows is not None:
            layer = names[layer][int(rows[0] * len(names[layer]))]
        out[(f"{layer}.{attr}", None)] = e
    return out


@pytest.mark.parametrize("form", ["chunk", "slice", "split", "unbind"])
def test_a_fused_projection_chunked_gives_the_mup_of_separate_ones(form, separate):
    build = lambda n: Decoder(n, form)  # noqa: E731
    fused = _trace(build)
    assert "attn_qkv_weight_part2" in fused.source and "mlp_gate_up_weight_part1" in fused.source
    assert _as_separate(abc_by_target(fused, rows=True)) == abc_by_target(separate, rows=True)
    if form == "chunk":
        mup = _bit_identical_at_base(fused, build)
        assert mup.patches  # the query rows' 1/sqrt(dh) more cannot fold into a shared LR


@pytest.mark.parametrize("rotary", [0.5, 1.0])  # 1.0: Phi-3's empty pass-through x[..., dh:]
def test_partial_rotary_is_the_network_without_it(separate, rotary):
    build = lambda n: Decoder(n, rotary=rotary)  # noqa: E731
    traced = _trace(build)
    assert "rotary embedding" in traced.source
    assert abc_by_target(traced, rows=True) == abc_by_target(separate, rows=True)
    _bit_identical_at_base(traced, build)


def test_a_slice_that_no_rotary_reassembles_is_refused():
    class Half(Decoder):
        def forward(self, idx):
            x = self.e(idx)
            b, t, c = x.shape
            q = self.attn.q(x).view(b, t, HEADS, c // HEADS)
            return self.out(q[..., :2].reshape(b, t, -1).sum(-1, keepdim=True) * x)

    with pytest.raises(TensorProgError, match="a part of each head.s coordinates used as a vector"):
        _trace(Half)


class Scaled(nn.Module):
    """Gemma's embedding times sqrt(d_model) (``how``: a float or a torch.tensor), and a
    readout times 1/sqrt(d) computed by the forward (``readout``)."""

    def __init__(self, n, how="float", readout=False):
        super().__init__()
        self.n, self.how, self.readout = n, how, readout
        self.e, self.h, self.out = nn.Embedding(13, n), nn.Linear(n, n), nn.Linear(n, 13)

    def forward(self, idx):
        x = self.e(idx)
        if self.how == "float":
            x = x * self.n**0.5
        elif self.how == "tensor":
            x = x * torch.tensor(self.n**0.5)
        y = self.out(F.relu(self.h(x)))
        return y / math.sqrt(self.n) if self.readout else y


@pytest.mark.parametrize("how", ["float", "tensor"])
def test_a_width_constant_gets_the_exponent_it_has_in_the_model(how):
    build = lambda n: Scaled(n, how, readout=True)  # noqa: E731
    traced = _trace(build)
    fixed = {i["q"]: i["model_a"] for i in traced.scales.values() if i.get("fixed")}
    # sqrt(n) on the embedding is n^(1/2) (model_a -1/2), 1/sqrt(n) on the logits n^(-1/2)
    assert sorted(fixed.values()) == [-0.5, 0.5]
    plain = MuP(_trace(lambda n: Scaled(n, "none")), "adam")
    mup = _bit_identical_at_base(traced, build)
    # the program is the model without the width factors, so the derivation is the plain
    # model's; apply folds each factor into the param that makes the vector it multiplies
    assert mup.init_exp["e_weight"] == plain.init_exp["e_weight"] + Fraction(1, 2)
    assert mup.lr_exp["e_weight"] == plain.lr_exp["e_weight"] + Fraction(1, 2)
    assert mup.init_exp["out_weight"] == plain.init_exp["out_weight"] - Fraction(1, 2)
    # numerically: at 4x the base the scaled embedding keeps its base size, as µP's does
    torch.manual_seed(0)
    model = build(4 * WIDTHS[0])
    mup.apply(model)
    rms = float((model.e.weight.detach() * model.n**0.5).square().mean().sqrt())
    base = traced.base["e.weight"][1] * WIDTHS[0] ** 0.5
    assert rms == pytest.approx(base, rel=0.05)  # 13 x 128 entries: a few % of noise


class Buffer(Scaled):
    """HF Gemma: the embedding times a one-entry buffer sqrt(n) (unknown on the meta device:
    read from a CPU build), then an RMSNorm of the product; ``vector``: a buffer of n entries
    of that value."""

    def __init__(self, n, vector=False):
        super().__init__(n)
        self.register_buffer("scale", torch.full((n if vector else 1,), n**0.5),
                             persistent=False)

    def forward(self, idx):
        x = self.e(idx) * self.scale
        return self.out(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class PreScaled(nn.Module):
    """Attention with 1/sqrt(dh) written on the query (``pre``: q * dh ** -0.5, sdpa's scale
    1) or left to sdpa; ``dh``: the head dim, n / 4 (a width constant) or fixed."""

    def __init__(self, n, pre=True, dh=None):
        super().__init__()
        self.pre, self.dh = pre, dh or n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v = (nn.Linear(n, n) for _ in range(3))

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q = self.q(x) * self.dh**-0.5 if self.pre else self.q(x)
        q, k, v = (z.view(b, t, -1, self.dh).transpose(1, 2) for z in (q, self.k(x), self.v(x)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           scale=1.0 if self.pre else None)
        return self.out(x + y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("dh", [None, 8])
def test_a_query_scaled_by_hand_gets_the_mup_of_sdpas_scale(dh):
    # a query times dh ** -0.5 (a width constant when dh grows): the number folds with
    # attention's scale into the query's layer, giving the init and LR of sdpa's own scale
    build = lambda n: PreScaled(n, dh=dh)  # noqa: E731
    mup = _bit_identical_at_base(_trace(build), build)
    plain = MuP(_trace(lambda n: PreScaled(n, pre=False, dh=dh)), "adam")
    for p in ("q_weight", "q_bias"):
        assert (mup.init_exp[p], mup.lr_exp[p]) == (plain.init_exp[p], plain.lr_exp[p])


def test_a_width_constant_in_a_buffer_is_read_from_a_cpu_build():
    traced = _trace(Buffer)
    (info,) = (i for i in traced.scales.values() if i.get("fixed"))
    assert info["model_a"] == Fraction(-1, 2) and "rmsnorm(mul)" in traced.source
    _bit_identical_at_base(traced, Buffer)
    # a buffer of n entries of that one value is the same number times the vector (a fixed
    # gain of one value, ops_fixedgain.py): the same width constant
    vector = _trace(lambda n: Buffer(n, vector=True))
    (info,) = (i for i in vector.scales.values() if i.get("fixed"))
    assert info["model_a"] == Fraction(-1, 2)


class Forms(nn.Module):
    """Positions with an offset (OPT), ``x @ W.T`` by hand and Gemma's gain ``1 + w``, or
    (``plain``) the same network written with nn.Linear, positions 0..T-1 and a gain of 1."""

    def __init__(self, n, plain=False):
        super().__init__()
        self.plain = plain
        self.e, self.p = nn.Embedding(13, n), nn.Embedding(8 if plain else 10, n)
        self.lin = nn.Linear(n, n, bias=False)
        self.g = nn.Parameter(torch.ones(n) if plain else torch.zeros(n))
        self.out = nn.Linear(n, 13)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        x = self.e(idx) + self.p(pos if self.plain else pos + 2)
        x = self.lin(x) if self.plain else torch.matmul(x, self.lin.weight.T)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.out(x * (self.g if self.plain else 1.0 + self.g))


def test_positions_with_an_offset_a_hand_written_linear_and_a_one_plus_w_gain():
    traced = _trace(Forms)
    assert "p_weight @ pos" in traced.source and "param g : [n] = 1" in traced.source
    plain = _trace(lambda n: Forms(n, plain=True))
    assert abc_by_target(traced, rows=True) == abc_by_target(plain, rows=True)
    _bit_identical_at_base(traced, Forms)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the last axis, as Qwen3's (gain w) or Gemma3's (gain 1 + w, w = 0)."""

    def __init__(self, d, gemma=False):
        super().__init__()
        self.gemma = gemma
        self.w = nn.Parameter(torch.zeros(d) if gemma else torch.ones(d))

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x * (1.0 + self.w) if self.gemma else self.w * x


class QKNorm(nn.Module):
    """Attention with QK-norm over heads of a fixed dim 8 (n/8 heads), a whole-dim RMSNorm."""

    def __init__(self, n, dh=8):
        super().__init__()
        self.dh = dh or n // 4
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.norm = HeadRMSNorm(n)
        self.q, self.k, self.v = (nn.Linear(n, n, bias=False) for _ in range(3))
        self.q_norm, self.k_norm = HeadRMSNorm(self.dh, gemma=True), HeadRMSNorm(self.dh)

    def forward(self, idx):
        x = self.norm(self.e(idx))
        b, t, c = x.shape
        q = self.q_norm(self.q(x).view(b, t, -1, self.dh)).transpose(1, 2)
        k = self.k_norm(self.k(x).view(b, t, -1, self.dh)).transpose(1, 2)
        v = self.v(x).view(b, t, -1, self.dh).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + y.transpose(1, 2).reshape(b, t, c))


def test_qk_norm_is_a_norm_per_head_with_a_gain_the_heads_share():
    traced = _trace(QKNorm)
    assert "mul_2 = rmsnorm(linear, f8)\nmul_3 = mul_2 * q_norm_w" in traced.source
    assert "param q_norm_w : [f8] = 1" in traced.source  # Gemma's 1 + w, w = 0
    d = derive(traced.program, "sgd")
    # n/8 heads share each gain: its gradient sums over them, so SGD's LR is Θ(1), where the
    # whole-dim gain's is n
    assert d.abc["q_norm_w"].c == 0 and d.abc["k_norm_w"].c == 0 and d.abc["norm_w"].c == -1
    _bit_identical_at_base(traced, QKNorm)
    # 4 heads of n/4: µP's 1/d against the model's 1/sqrt(d) folds into the query's gain,
    # here Gemma's 1 + w: the gain starts at (n/base)^-1/2, so w at that minus 1
    mup = MuP(_trace(lambda n: QKNorm(n, dh=None)), "adam")
    model = QKNorm(128, dh=None)
    mup.apply(model)
    assert torch.equal(model.q_norm.w.detach(), torch.full((32,), -0.5))
    assert torch.equal(model.k_norm.w.detach(), torch.ones(32))
    assert mup.lr_multipliers(model)["q_norm.w"] == 0.5


class MaskBuffer(nn.Module):
    """OpenAI GPT's attention: a 0/1 float buffer of ones on and below the diagonal multiplied
    into the logits, then ``-1e4 * (1 - b)`` added (``sdpa``: sdpa's causal flag instead;
    ``floor``: XGLM's, the mask added as 0 or the lowest float, then the logits floored there
    with ``torch.max``; ``where``: ImageGPT's, a boolean buffer and ``torch.where`` of it, the
    logits and a tensor of the lowest float, ``where`` itself that tensor's value)."""

    def __init__(self, n, sdpa=False, floor=False, where=None, spare=False):
        super().__init__()
        self.floor, self.where, self.spare = floor, where, spare
        self.e, self.qkv, self.o = nn.Embedding(13, n), nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.out, self.sdpa = nn.Linear(n, 13), sdpa
        self.register_buffer("bias", torch.ones(16, 16).tril().view(1, 1, 16, 16),
                             persistent=False)

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (z.view(b, t, HEADS, -1).transpose(1, 2) for z in self.qkv(x).split(c, -1))
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.where is not None:
            w = q @ k.transpose(-1, -2) / math.sqrt(v.size(-1))
            keep = self.bias[:, :, :t, :t].bool()
            if self.spare:  # a tensor made and never read: export lifts it on the meta device
                torch.tensor(0.5, device=w.device)
            low = torch.tensor(self.where, dtype=w.dtype, device=w.device)
            y = torch.where(keep, w, low).softmax(-1) @ v
        else:
            w = q @ k.transpose(-1, -2) / math.sqrt(v.size(-1))
            m = self.bias[:, :, :t, :t]
            low = torch.finfo(w.dtype).min
            if self.floor:
                w = torch.max(w + (1 - m) * low, torch.full((), low, device=w.device))
            y = (w if self.floor else w * m + -1e4 * (1 - m)).softmax(-1) @ v
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, c)))


def test_a_causal_mask_multiplied_in_from_a_buffer_traces_as_sdpas():
    traced = _trace(MaskBuffer)
    assert "mix(causal_softmax(" in traced.source
    sdpa = _trace(lambda n: MaskBuffer(n, sdpa=True))
    assert abc_by_target(traced, rows=True) == abc_by_target(sdpa, rows=True)
    # the attention scale: µP's 1/d against the model's own 1/sqrt(d), as sdpa's
    ours, theirs = traced.scales["attn_div"], sdpa.scales["attn_scaled_dot_product_attention"]
    assert ours["model_a"] == theirs["model_a"] == Fraction(1, 2)
    assert derive(traced.program, "adam").abc["attn_div"].a == 1
    _bit_identical_at_base(traced, MaskBuffer)


def test_logits_floored_at_the_lowest_float_are_the_logits():
    traced = _trace(lambda n: MaskBuffer(n, floor=True))
    assert "mix(causal_softmax(" in traced.source
    sdpa = _trace(lambda n: MaskBuffer(n, sdpa=True))
    assert abc_by_target(traced, rows=True) == abc_by_target(sdpa, rows=True)


def test_a_causal_mask_applied_by_where_traces_as_sdpas():
    # ImageGPT's torch.where(causal_mask, w, torch.tensor(finfo.min)): the number, a tensor the
    # forward makes on the model's (meta) device, is read from the model built on the CPU
    lowest = torch.finfo(torch.float32).min
    traced = _trace(lambda n: MaskBuffer(n, where=lowest))
    assert "mix(causal_softmax(" in traced.source
    sdpa = _trace(lambda n: MaskBuffer(n, sdpa=True))
    assert abc_by_target(traced, rows=True) == abc_by_target(sdpa, rows=True)
    _bit_identical_at_base(traced, lambda n: MaskBuffer(n, where=lowest))
    # a masked entry set to 0 is no mask: exp(0) weighs it as any key
    with pytest.raises(TensorProgError, match=r"cannot trace the op where \(other than attention"):
        _trace(lambda n: MaskBuffer(n, where=0.0))


def test_the_number_where_reads_is_found_past_a_tensor_nothing_reads():
    # a tensor made before it and never read is lifted on the meta device and not on the CPU:
    # the number is the where's own (it had been looked up by a name that moved: a crash,
    # "Tensor.item() cannot be called on meta tensors", where -10 is refused at its line)
    def build(n, where=-1e9):
        return MaskBuffer(n, where=where, spare=True)

    traced_computes_the_model(_trace(build), build, _tokens)
    with pytest.raises(TensorProgError, match=r"test_trace_forms.py:\d+:\d+: error: cannot "
                       r"trace the op where \(other than attention") as err:
        _trace(lambda n: build(n, where=-10.0))
    assert "torch.where(keep, w, low)" in err.value.diagnostics[0].span.source_line()


class TwoWheres(nn.Module):
    """Two causal attentions, each masked by ``torch.where`` with a number of its own, the
    second's made first: the meta export lifts them in the order they are read, the CPU export
    in the order they are made."""

    def __init__(self, n, second=-1e9):
        super().__init__()
        self.second = second
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.qkv = nn.ModuleList(nn.Linear(n, 3 * n) for _ in range(2))
        self.o = nn.ModuleList(nn.Linear(n, n) for _ in range(2))

    def att(self, i, x, keep, low):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, HEADS, -1).transpose(1, 2) for z in self.qkv[i](x).split(c, -1))
        w = torch.where(keep, q @ k.transpose(-1, -2) / math.sqrt(v.size(-1)), low)
        return self.o[i]((w.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))

    def forward(self, idx):
        x, t = self.e(idx), idx.shape[1]
        keep = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()
        second = torch.as_tensor(self.second, device=idx.device)
        first = torch.as_tensor(-1e9, device=idx.device)
        x = x + self.att(0, x, keep, first)
        return self.out(x + self.att(1, x, keep, second))


@pytest.mark.slow  # a second HF model's or process's cost: the default run's CPU budget
def test_each_number_a_where_reads_is_its_own():
    # before: paired by their numbers, the first where read the second's -1.0 and was refused
    # at the first's line, the second read the first's -1e9
    traced_computes_the_model(_trace(TwoWheres), TwoWheres, _tokens)
    with pytest.raises(TensorProgError, match=r"cannot trace the op where \(other than") as err:
        _trace(lambda n: TwoWheres(n, second=-1.0))
    assert "self.att(1, x, keep, second)" in err.value.diagnostics[0].span.source_line()


class HandAttention(nn.Module):
    """Attention by hand over 4 tokens in 4 heads; ``transposed=False``: the values left
    [B, T, H, dh], so torch's ``probs @ v`` pairs head i's weights with token i's values."""

    def __init__(self, n, transposed=True):
        super().__init__()
        self.transposed, self.dh = transposed, n // HEADS
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q, k = (f(x).view(b, t, HEADS, self.dh).transpose(1, 2) for f in (self.q, self.k))
        v = self.v(x).view(b, t, HEADS, self.dh)
        v = v.transpose(1, 2) if self.transposed else v
        a = torch.softmax(q @ k.transpose(-1, -2) / self.dh**0.5, -1) @ v
        return self.out(x + self.o(a.transpose(1, 2).reshape(b, t, n)))


def _four_tokens(model=None):
    return (torch.arange(8).remainder(13).view(2, 4),)


def test_values_not_laid_out_as_the_queries_are_refused_at_the_mix():
    traced = from_torch(HandAttention, WIDTHS, _four_tokens)
    traced_computes_the_model(traced, HandAttention, _four_tokens)
    # as many tokens as heads: torch broadcasts, and the mix of the queries' heads (what the
    # trace wrote before) computes something else
    with pytest.raises(TensorProgError, match=r"test_trace_forms.py:\d+:\d+: error: cannot "
                       r"trace attention weights laid out \(tokens, heads, tokens, tokens\) "
                       r"times values laid out \(tokens, tokens, heads, head dim\)") as err:
        from_torch(lambda n: HandAttention(n, transposed=False), WIDTHS, _four_tokens)
    assert "@ v" in err.value.diagnostics[0].span.source_line()


class LegacyWeight(nn.Module):
    """A weight made by a legacy constructor, ``torch.FloatTensor(n, n)`` (XLNet's attention
    params), which ignores the default device: built for the trace on the meta device, it is
    on the CPU (``legacy=False``: the same model, its weight made by ``torch.empty``)."""

    def __init__(self, n, legacy=True):
        super().__init__()
        self.e = nn.Embedding(16, n)
        self.w = nn.Parameter(torch.FloatTensor(n, n) if legacy else torch.empty(n, n))
        nn.init.normal_(self.w, std=n**-0.5)
        self.out = nn.Linear(n, 16)

    def forward(self, idx):
        return self.out(torch.relu(self.e(idx) @ self.w))


def test_a_weight_a_legacy_constructor_left_on_the_cpu_traces_as_on_the_meta_device():
    with torch.device("meta"):
        assert LegacyWeight(8).w.device.type == "cpu"  # what export refused as a device mix
    legacy = _trace(LegacyWeight)
    assert legacy.source == _trace(lambda n: LegacyWeight(n, legacy=False)).source
    assert _bit_identical_at_base(legacy, LegacyWeight)


class Padded(nn.Module):
    """``F.pad`` of the embeddings by ``pad`` (Swin's maybe_pad: by 0 where its windows tile
    the grid); ``pad=None``: no pad, the oracle."""

    def __init__(self, n, pad=(0, 0, 0, 0)):
        super().__init__()
        self.e, self.out, self.pad = nn.Embedding(16, n), nn.Linear(n, 16), pad

    def forward(self, idx):
        x = self.e(idx)
        return self.out(x if self.pad is None else F.pad(x, self.pad))


def test_a_pad_by_nothing_is_the_value_and_any_other_pad_is_refused():
    assert _trace(Padded).source == _trace(lambda n: Padded(n, pad=None)).source
    with pytest.raises(TensorProgError, match=r"cannot trace a pad of a sequence's 8 tokens "
                       r"by 1 before and 0 after \(to 9\): the language's sequences keep"):
        _trace(lambda n: Padded(n, pad=(0, 0, 1, 0)))


class EinsumAttention(nn.Module):
    """Attention written with einsums (CvT's q @ k.T as "bhlk,bhtk->bhlt", ProphetNet's
    "bsij,bsjk->bsik" of k already transposed), or ``bad``'s scores summed over the heads."""

    def __init__(self, n, scores="bhlk,bhtk->bhlt", mix="bhlt,bhtv->bhlv"):
        super().__init__()
        self.e, self.qkv, self.o = nn.Embedding(13, n), nn.Linear(n, 3 * n), nn.Linear(n, 13)
        self.scores, self.mix = scores, mix

    def forward(self, idx):
        x = self.e(idx)
        b, t, c = x.shape
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, dim=-1))
        key = k.transpose(-2, -1) if self.scores.split("->")[0][-2:] == "jk" else k
        w = torch.einsum(self.scores, q, key) * (c // HEADS) ** -0.5
        y = torch.einsum(self.mix, w.softmax(-1), v)
        return self.o(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("scores", ["bhlk,bhtk->bhlt", "bsij,bsjk->bsik", "bhlk,bhkt->bhtl"])
def test_an_einsum_that_is_a_batched_matmul_is_that_matmul(scores):
    # the oracle: the emitted program computes the model's logits. An einsum whose output
    # swaps the query and key axes is no matmul of the two: refused
    def build(n):
        return EinsumAttention(n, scores)

    if scores.endswith("bhtl"):
        with pytest.raises(TensorProgError, match="an einsum 'bhlk,bhkt->bhtl' that is not"):
            _trace(build)
        return
    traced = _trace(build)
    traced_computes_the_model(traced, build, _tokens)
    if scores.startswith("bsij"):  # the same program as the other spelling's
        assert traced.source == _trace(lambda n: EinsumAttention(n)).source


class ScaledAddmm(nn.Module):
    """torch.addmm(b, x, W.T, beta=2): beta * b + x @ W.T, not a linear layer's b + x @ W.T."""

    def __init__(self, n, beta=2.0):
        super().__init__()
        self.e, self.beta = nn.Embedding(16, n), beta
        self.w, self.b = nn.Parameter(torch.randn(n, n) / n**0.5), nn.Parameter(torch.ones(n))
        self.out = nn.Linear(n, 16)

    def forward(self, idx):
        h = self.e(idx)
        y = torch.addmm(self.b, h.reshape(-1, h.shape[-1]), self.w.t(), beta=self.beta)
        return self.out(y.view(h.shape))


def test_an_addmm_with_a_beta_or_alpha_is_refused_at_its_line():
    # before: TypeError, op_addmm() got an unexpected keyword argument 'beta'
    with pytest.raises(TensorProgError, match=r"test_trace_forms.py:\d+:\d+: error: cannot "
                       r"trace an addmm with beta=2.0, alpha=1"):
        from_torch(ScaledAddmm, WIDTHS, _tokens)
    traced = from_torch(lambda n: ScaledAddmm(n, beta=1), WIDTHS, _tokens)  # plain: a linear
    assert traced_computes_the_model(traced, lambda n: ScaledAddmm(n, beta=1), _tokens) < 1e-10
