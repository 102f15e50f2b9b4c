"""FocalNet's focal modulation, traced (fromtorch/ops_gate.py, ops_layout.py): a linear's output
permuted channels-first and split into the query, the context and L + 1 gates per pixel; the
context through depthwise convolutions, each level times its gate (one number per pixel over
the C channels: ``ctx * spread(g, C)``), a global context (the mean over the pixels) times the
last gate, a 1x1 convolution, the query times the modulator. The traced program computes the
model's output (the shared oracle); a gate read in another layout is refused."""

import functools
from fractions import Fraction

import pytest
from conftest import traced_computes_the_model

import tensorprog as tp

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import TraceError, UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402
from tensorprog.fromtorch.check import probe  # noqa: E402
from tensorprog.fromtorch.gradscale import block_of  # noqa: E402
from tensorprog.fromtorch.rows import row_range  # noqa: E402

WIDTHS = (16, 32)
LEVELS = 2


def _image(model):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


class Focal(nn.Module):
    """A strided stem, one focal modulation (HF's FocalNetModulation, written out) in a
    residual block over the pixels' tokens, HF's pooled readout; ``form`` "hf" as HF writes
    it, or a layout to refuse."""

    def __init__(self, n, form="hf"):
        super().__init__()
        self.form = form
        self.embed = nn.Conv2d(3, n, 3, stride=2, padding=1)  # an image (not patches)
        self.norm = nn.LayerNorm(n)
        self.proj_in = nn.Linear(n, 2 * n + LEVELS + 1)
        self.focal = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(n, n, 2 * k + 3, padding=k + 1, groups=n, bias=False), nn.GELU()
            )
            for k in range(LEVELS)
        )
        self.proj_ctx = nn.Conv2d(n, n, 1)
        self.act = nn.GELU()
        self.proj_out = nn.Linear(n, n)
        self.head = nn.Linear(n, 10)
        self.pool = nn.AdaptiveAvgPool1d(1)

    def modulation(self, h):
        c = h.shape[-1]
        x = self.proj_in(h).permute(0, 3, 1, 2).contiguous()
        q, ctx, gates = torch.split(x, (c, c, LEVELS + 1), 1)
        ctx_all = 0
        for level in range(LEVELS):
            ctx = self.focal[level](ctx)
            if self.form == "transposed":  # each gate read at the transposed pixel: refused
                ctx_all = ctx_all + ctx * gates[:, level : level + 1].transpose(2, 3)
            elif self.form == "row":  # the first row's gates for every row: refused
                ctx_all = ctx_all + ctx * gates[:, level : level + 1, :1]
            else:
                ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, LEVELS:]
        ctx_all = ctx_all / (LEVELS + 1)
        x_out = (q * self.proj_ctx(ctx_all)).permute(0, 2, 3, 1).contiguous()
        return self.proj_out(x_out)

    def forward(self, img):  # HF's FocalNetLayer: tokens viewed (B, H, W, C) around it
        t = self.embed(img).flatten(2).transpose(1, 2)  # (B, T, C)
        b, tokens, c = t.shape
        side = int(tokens**0.5)
        t = t + self.modulation(self.norm(t).view(b, side, side, c)).view(b, tokens, c)
        return self.head(torch.flatten(self.pool(t.transpose(1, 2)), 1))  # HF's pooler


@functools.cache
def _traced(form):
    return from_torch(lambda n: Focal(n, form), WIDTHS, _image)


def test_focal_modulation_traces_and_computes_the_model():
    tr = _traced("hf")
    assert "spread(" in tr.source
    traced_computes_the_model(tr, lambda n: Focal(n, "hf"), _image)


def _grads(model):
    model.zero_grad()
    model(*_image(model)).square().mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_the_gates_rows_take_their_own_adam_eps_as_a_scale_of_their_gradient():
    # the engine derives the gate rows as readouts (their gradient sums the C channels of
    # each pixel: Θ(1)), the query and context rows as hidden (Θ(1/n)): Adam's eps differs by
    # n. proj_in's group takes the query's and context's (its largest block), and apply scales
    # the gates' gradient by e_query / e_gate, so that eps / c is each gate's own eps
    mup = MuP(_traced("hf"), "adam")
    torch.manual_seed(0)
    model = Focal(2 * WIDTHS[0])
    report = mup.apply(model)
    scaled = _grads(model)
    mup.remove_patches(model)
    plain = _grads(model)
    mup.apply(model)
    eps = {id(p): g["eps"] for g in mup.param_groups(model, 1e-3, eps=1e-8) for p in g["params"]}
    seen = set()
    for name, use, _ in mup._uses(model):
        if use.target not in ("proj_in.weight", "proj_in.bias"):
            continue
        mine, its = block_of(scaled[use.target], use), block_of(plain[use.target], use)
        c = (mine / its)[its != 0].unique()
        assert c.numel() == 1, (name, c)
        seen.add(float(c))
        # the block's eps: the group's / c = eps·(n/base)^-e, e as derived for the block
        own = eps[id(model.get_parameter(use.target))] / float(c)
        assert own == pytest.approx(1e-8 * 2.0 ** -float(mup.eps_exp[name]), rel=1e-12)
    assert seen == {1.0, 0.5}
    assert mup.grad_scales(model).keys() == {"proj_in.weight", "proj_in.bias"}
    assert sum("gradient of proj_in" in line for line in report.lines) == 2 * (LEVELS + 1)
    for k in plain.keys() - {"proj_in.weight", "proj_in.bias"}:
        assert torch.equal(scaled[k], plain[k]), k


def test_apply_at_the_base_width_steps_bit_for_bit_as_the_model():
    mup = MuP(_traced("hf"), "adam")
    torch.manual_seed(0)
    model, own = Focal(WIDTHS[0]), Focal(WIDTHS[0])
    own.load_state_dict(model.state_dict())
    report = mup.apply(model)
    assert not any("gradient of" in line for line in report.lines)
    assert mup.grad_scales(model) == {}
    opts = (
        torch.optim.Adam(mup.param_groups(model, 1e-2, eps=1e-8)),
        torch.optim.Adam(own.parameters(), lr=1e-2, eps=1e-8),
    )
    for _ in range(3):
        for m, opt in zip((model, own), opts, strict=True):
            opt.zero_grad()
            m(*_image(m)).square().mean().backward()
            opt.step()
    for (k, p), q in zip(model.named_parameters(), own.parameters(), strict=True):
        assert torch.equal(p, q), k


# ``Focal`` at its base width written by hand in the language: the query, the context and the
# L + 1 gates are params of their own, each gate a [1, n] readout of the pixel
HAND = """
width n = 16
dim C = 3
dim S = 8
dim k = 3
dim T = 16
dim H = 4
dim k5 = 5
dim one = 1
dim K = 10
input img : image[C, S, S]
param E : [n, C, k, k]
param e : [n]
param g : [n] = 1
param b : [n] = 0
param Wq : [n, n]
param bq : [n]
param Wc : [n, n]
param bc : [n]
param Wg0 : [one, n]
param bg0 : [one]
param Wg1 : [one, n]
param bg1 : [one]
param Wg2 : [one, n]
param bg2 : [one]
param D0 : [n, k, k]
param D1 : [n, k5, k5]
param P : [n, n, one, one]
param p : [n]
param Wo : [n, n]
param bo : [n]
param R : [K, n]
param r : [K]
t = tokens(subsample(E @ img + e), T)
x = image(g * layernorm(t) + b, H, H)
c1 = gelu(dwconv(D0, Wc @ x + bc))
c2 = gelu(dwconv(D1, c1))
gated = c1 * spread(Wg0 @ x + bg0, n) + c2 * spread(Wg1 @ x + bg1, n)
ctx = gated + gelu(global_pool(c2)) * spread(Wg2 @ x + bg2, n)
y = (Wq @ x + bq) * (P @ (0.333333333333 * ctx) + p)
output logits = R @ mean(t + tokens(Wo @ y + bo, T)) + r
"""
TRACED_AS = {  # the traced program's param -> the hand-written one
    "embed_weight": "E",
    "embed_bias": "e",
    "norm_weight": "g",
    "norm_bias": "b",
    "proj_in_weight_part0": "Wq",
    "proj_in_bias_part0": "bq",
    "proj_in_weight_part1": "Wc",
    "proj_in_bias_part1": "bc",
    "proj_in_weight_part32": "Wg0",
    "proj_in_bias_part32": "bg0",
    "proj_in_weight_part33": "Wg1",
    "proj_in_bias_part33": "bg1",
    "proj_in_weight_part34": "Wg2",
    "proj_in_bias_part34": "bg2",
    "focal_0_0_weight": "D0",
    "focal_1_0_weight": "D1",
    "proj_ctx_weight": "P",
    "proj_ctx_bias": "p",
    "proj_out_weight": "Wo",
    "proj_out_bias": "bo",
    "head_weight": "R",
    "head_bias": "r",
}


def test_the_modulation_written_by_hand_derives_as_the_traced_program():
    # an independent reading of HF's modulation: the language's spread, dwconv and global_pool
    # rules on a program written by hand give each param the traced program's (a, b, c) and
    # Adam eps (the gates' rows a readout's, the query's and context's hidden)
    hand = tp.derive(tp.parse(HAND), "adam")
    traced = MuP(_traced("hf"), "adam").derivation
    assert set(TRACED_AS) == set(traced.abc)
    for name, mine in TRACED_AS.items():
        assert (traced.abc[name], traced.eps[name]) == (hand.abc[mine], hand.eps[mine]), name
    assert hand.abc["Wg0"] == hand.abc["R"] and hand.abc["Wq"] == hand.abc["Wo"]


def test_the_probe_reads_the_gates_rows_at_a_width_not_traced():
    # the gates' rows are named by their place (2n), which moves with the width: the probe's
    # graph names them as the traced program does
    mup = MuP(_traced("hf"), "adam")
    model = Focal(4 * WIDTHS[0])
    mup.apply(model)
    got = probe(mup, model, _image(model))()
    assert {"slice_1", "getitem_1"} <= got.keys()


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_a_fused_layer_whose_blocks_need_different_lrs_is_refused(optimizer):
    # no eps to scale: under SGD (and Muon's orthogonalised step) the gates' LR differs
    with pytest.raises(
        UsageError,
        match=r"proj_in.weight is split into row blocks, and µP "
        r"gives them different LRs",
    ):
        MuP(_traced("hf"), optimizer)


def test_param_groups_refuse_an_l2_decay_or_a_model_apply_did_not_scale():
    mup = MuP(_traced("hf"), "adam")
    model = Focal(2 * WIDTHS[0])
    with pytest.raises(
        UsageError,
        match=r"proj_in.weight: its blocks need different Adam "
        r"eps(.|\n)*call mup.apply\(model\)",
    ):
        mup.param_groups(model, 1e-3)
    mup.apply(model)
    with pytest.raises(
        UsageError,
        match=r"coupled \(L2\) weight decay adds λw to the "
        r"gradient(.|\n)*decay='decoupled'",
    ):
        mup.param_groups(model, 1e-3, weight_decay=0.1, decay="coupled")
    mup.param_groups(model, 1e-3, weight_decay=0.1, decay="decoupled")
    # a wrapper that swaps the param object (FSDP's) leaves the hook on the old one
    model.proj_in.weight = nn.Parameter(model.proj_in.weight.detach().clone())
    with pytest.raises(
        UsageError,
        match=r"proj_in.weight: .*the model holds another param "
        r"object there now",
    ):
        mup.param_groups(model, 1e-3)


@pytest.mark.parametrize("form", ["transposed", "row"])
def test_a_gate_read_at_other_pixels_is_refused(form):
    with pytest.raises(TraceError, match="transpose|gate of one channel per pixel|slice"):
        _traced(form)


class OneChannel(nn.Module):
    """A gate of one channel for all n channels, from the pooled image (one number per image)
    or per pixel: ``h * sigmoid(conv_to_1(...))``."""

    def __init__(self, n, pooled):
        super().__init__()
        self.conv, self.one, self.pooled = nn.Conv2d(3, n, 3, padding=1), nn.Conv2d(n, 1, 1), pooled
        self.fc = nn.Linear(n, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        g = torch.sigmoid(self.one(h.mean((2, 3), keepdim=True) if self.pooled else h))
        return self.fc((h * g).mean((2, 3)))


@pytest.mark.parametrize("pooled", [pytest.param(True, marks=pytest.mark.slow), False])
def test_a_gate_of_one_channel_traces_as_spread_and_computes_the_model(pooled):
    tr = from_torch(lambda n: OneChannel(n, pooled), WIDTHS, _image)
    assert "spread(" in tr.source
    traced_computes_the_model(tr, lambda n: OneChannel(n, pooled), _image)


def _hand(target: str, lo: int, n: int) -> tuple:
    """µP for Adam of each param of ``Focal`` at width n, derived by hand (TP5 Table 3, all
    multipliers 1): (init std exponent, LR exponent), std ∝ n^-e and LR ∝ n^-e. proj_in's rows
    from 2n on are the gates, C → L + 1 per pixel: a finite fan-out of a width fan-in (their
    W₀ meets x's change built from W₀ᵀ by backprop), an output weight's 1/fan_in std and LR,
    where the query's and context's rows beside them are hidden (1/√fan_in, 1/fan_in)."""
    if target in ("proj_in.weight",):
        return (1, 1) if lo >= 2 * n else (Fraction(1, 2), 1)
    if target in ("proj_ctx.weight", "proj_out.weight"):
        return Fraction(1, 2), 1
    if target == "head.weight":
        return 1, 1
    return 0, 0  # the stem (3 · 3 · 3 inputs), the depthwise kernels, the gains and biases


def _block(model, use):
    t = model.get_parameter(use.target)
    lo, _ = row_range(use.rows, use.row_consts, t.shape[0]) if use.rows else (0, 0)
    return block_of(t.detach(), use), lo


def test_each_row_block_of_the_fused_layer_takes_its_hand_derived_init_and_lr():
    # the gates' rows are a readout's block inside a hidden layer's tensor: derive gives each
    # block its own exponents, apply sets each block's std (from the model's at the base width)
    # and the tensor's one LR, which the blocks share under Adam
    mup = MuP(_traced("hf"), "adam")
    n = 4 * WIDTHS[0]
    torch.manual_seed(0)
    model = Focal(n)
    mup.apply(model)
    lr = {id(p): g["lr"] for g in mup.param_groups(model, 1.0, eps=1e-8) for p in g["params"]}
    seen = set()
    for name, use, _ in mup._uses(model):
        block, lo = _block(model, use)
        init, rate = _hand(use.target, lo, n)
        assert (mup.init_exp[name], mup.lr_exp[name]) == (init, rate), (use.target, lo)
        assert lr[id(model.get_parameter(use.target))] == pytest.approx(4.0**-rate)
        kind, sigma = mup._base(name, use, None)
        if kind == "normal" and block.numel() >= n:  # rescaled (a few entries are drawn anew)
            assert float(block.double().std()) == pytest.approx(sigma * 4.0**-init, rel=1e-5)
        seen.add((use.target, init))
    assert {("proj_in.weight", 1), ("proj_in.weight", Fraction(1, 2))} <= seen


class SmallGates(Focal):
    """``Focal`` with its gates' rows drawn 10x smaller than the query's and context's beside
    them in proj_in's one tensor."""

    def __init__(self, n, form="hf"):
        super().__init__(n, form)
        with torch.no_grad():
            self.proj_in.weight[2 * n :] *= 0.1


def test_a_block_drawn_apart_from_its_tensor_is_scaled_from_its_own_std():
    # µP scales each block from its own std at the base width: 0.1·law·4^-1 for the gates' rows
    # at 4x the base, law·4^-1/2 for the rest (law: nn.Linear's 1/√(3·fan_in) at the base
    # width). From the tensor's std the gates' rows came out 10x too large
    mup = MuP(from_torch(SmallGates, WIDTHS, _image), "adam")
    n = 4 * WIDTHS[0]
    torch.manual_seed(0)
    model = SmallGates(n)
    mup.apply(model)
    law = (3 * WIDTHS[0]) ** -0.5
    w = model.proj_in.weight.detach().double()
    assert float(w[2 * n :].std()) == pytest.approx(0.1 * law / 4, rel=0.15)
    assert float(w[: 2 * n].std()) == pytest.approx(law / 2, rel=0.05)
    torch.manual_seed(0)
    base = SmallGates(WIDTHS[0])
    before = {k: v.clone() for k, v in base.state_dict().items()}
    mup.apply(base)  # the base width keeps the model's own draw
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
