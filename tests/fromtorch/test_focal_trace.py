"""FocalNet's focal modulation, traced (fromtorch/ops_gate.py, ops_layout.py): a linear's output
permuted channels-first and split into the query, the context and L + 1 gates per pixel; the
context through depthwise convolutions, each level times its gate (one number per pixel over
the C channels: ``ctx * spread(g, C)``), a global context (the mean over the pixels) times the
last gate, a 1x1 convolution, the query times the modulator. The traced program computes the
model's output (the shared oracle); a gate read in another layout is refused."""

import functools

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.errors import TraceError, UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

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
            nn.Sequential(nn.Conv2d(n, n, 2 * k + 3, padding=k + 1, groups=n, bias=False),
                          nn.GELU()) for k in range(LEVELS))
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
                ctx_all = ctx_all + ctx * gates[:, level:level + 1].transpose(2, 3)
            elif self.form == "row":  # the first row's gates for every row: refused
                ctx_all = ctx_all + ctx * gates[:, level:level + 1, :1]
            else:
                ctx_all = ctx_all + ctx * gates[:, level:level + 1]
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
    # the gates' rows of proj_in (n -> L + 1 per pixel) are readouts, whose Adam eps differs
    # from the query's and context's rows: Lion (no eps, the same LR) reads the layout
    traced_computes_the_model(tr, lambda n: Focal(n, "hf"), _image, optimizer="lion")


def test_the_gates_rows_are_readouts_whose_adam_eps_one_tensor_cannot_hold():
    # the engine derives the gate rows as readouts (their gradient sums the C channels of
    # each pixel: Θ(1)), the query and context rows as hidden: Adam's eps differs by n
    with pytest.raises(UsageError, match=r"proj_in.weight is split into row blocks, and µP "
                       r"gives them different Adam eps values"):
        MuP(_traced("hf"), "adam")


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
