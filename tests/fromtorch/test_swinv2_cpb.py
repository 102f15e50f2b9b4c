"""Swin V2's continuous position bias: a per-pair attention bias computed from params over a
window's constant offsets, the language's ``input c : offsets[B, E]`` and ``at(g, win)``.

Oracles: the emitted example computes Swin V2's bias (16·sigmoid of an MLP of transformers'
log-spaced coordinates, read at relative_position_index), pair for pair; test_swinv2.py's
blocks with the MLP in place of the table trace to a program that computes the model (float64)
and derive what examples/swinv2_cpb.tp derives; a window as large as the grid (Swin V2's last
stages) traces its temperature as one window; the MLP read by anything but the lookup is refused
at its line (coordinates other than Swin V2's: test_swinv2.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import abc_by_target, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog import TensorProgError  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


def hf_coords(window: int):
    """transformers' Swinv2SelfAttention.relative_coords_table (no pretrained window), flat."""
    h = torch.arange(-(window - 1), window, dtype=torch.int64).float()
    table = torch.stack(torch.meshgrid([h, h], indexing="ij")).permute(1, 2, 0).contiguous()
    table = table.unsqueeze(0) / (window - 1) * 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.reshape(-1, 2)


def test_the_example_reads_swin_v2s_bias_at_each_pairs_offset():
    # at(16 * sigmoid(V @ relu(U @ c + u)), w0) is, for two tokens of one window of the 8 x 8
    # grid, Swin V2's 16·sigmoid(cpb_mlp(relative_coords_table))[relative_position_index]
    from conftest import emit_program

    from tensorprog.emit.load import load_module

    module = load_module(emit_program(tp.parse_file(EXAMPLES / "swinv2_cpb.tp")), "cpb_example")
    model = module.Model(64, dtype=torch.float64)
    with torch.no_grad():
        v = model.vectors(*model.example_inputs(2, generator=torch.Generator().manual_seed(0)))
    coords = hf_coords(4).double()
    # the offsets input: transformers' table, bit for bit
    assert torch.equal(module._window_coords(4, torch.empty(0, dtype=torch.float64)), coords)
    hidden = F.relu(coords @ model.U1.t() + model.u1)
    table = 16 * torch.sigmoid(hidden @ model.V1.t())  # [49, heads]
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    y, x = y.flatten(), x.flatten()
    ids = (y % 4)[:, None] - (y % 4)[None, :] + 3
    ids = ids * 7 + (x % 4)[:, None] - (x % 4)[None, :] + 3
    same = ((y // 4)[:, None] == (y // 4)[None, :]) & ((x // 4)[:, None] == (x // 4)[None, :])
    want = table[ids].permute(2, 0, 1)
    got = v["s1_5"]
    assert got.shape == want.shape == (4, 64, 64)
    assert torch.equal(got[:, same], want[:, same])


@pytest.fixture(scope="module")
def cpb():
    from test_swinv2 import SwinV2Like, images

    return tp.from_torch(lambda n: SwinV2Like(n, "cpb"), (32, 64), images)


def _build(n):
    from test_swinv2 import SwinV2Like

    return SwinV2Like(n, "cpb")


@pytest.mark.slow
def test_the_bias_mlp_traces_to_what_the_model_computes(cpb, monkeypatch):
    from test_swinv2 import images

    from tensorprog.emit.templates import HELPERS

    src = cpb.source
    assert "offsets[f49, f2]" in src and src.count("= at(") == 2
    assert "16.0 * " in src  # 16 · sigmoid(bias) of the table's rows, before at
    rms = [line.replace(" + 1e-6", "") for line in HELPERS["_heads_rmsnorm"]]
    monkeypatch.setitem(HELPERS, "_heads_rmsnorm", rms)  # F.normalize's, eps aside
    traced_computes_the_model(cpb, _build, images)
    apply_is_bit_identical_at_base(cpb, _build, images)


NAMES = {"blocks.0.cpb.0.weight": "U1", "blocks.0.cpb.0.bias": "u1", "blocks.0.cpb.2.weight": "V1",
         "blocks.1.cpb.0.weight": "U2", "blocks.1.cpb.0.bias": "u2", "blocks.1.cpb.2.weight": "V2",
         "blocks.0.logit_scale": "t1", "blocks.1.q.weight": "Wq2", "head.weight": "Wc"}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_mlp_derives_what_examples_swinv2_cpb_tp_derives(cpb, optimizer):
    # U, u: finite x finite, Θ(1) steps under both; V: an input weight into n/16 heads (SGD's
    # LR n). The model's MLP is 2 -> 32 -> heads, the example's 2 -> 512: both finite
    traced = abc_by_target(cpb, optimizer)
    d = tp.derive(tp.parse_file(EXAMPLES / "swinv2_cpb.tp"), optimizer)
    assert {k: traced[k] for k in NAMES} == {k: (d.abc[v].a, d.abc[v].b, d.abc[v].c)
                                             for k, v in NAMES.items()}


def _one_window(n):
    from test_swinv2 import SwinV2Like

    model = SwinV2Like(n, "cpb")
    model.blocks = model.blocks[:1]  # unshifted, over a 4 x 4 grid: one window of 4 x 4
    return model


def _small(model=None):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.slow
def test_a_window_as_large_as_the_grid_keeps_its_temperature_and_bias(monkeypatch):
    # Swin V2's last stages: the tokens in their own order, q̂ @ k̂ᵀ times the temperature
    # before the bias is read, one window of the whole grid
    from tensorprog.emit.templates import HELPERS

    traced = tp.from_torch(_one_window, (32, 64), _small)
    assert "windows[T, f49, f4, f4, 0]" in traced.source and "spread(exp(" in traced.source
    rms = [line.replace(" + 1e-6", "") for line in HELPERS["_heads_rmsnorm"]]
    monkeypatch.setitem(HELPERS, "_heads_rmsnorm", rms)
    traced_computes_the_model(traced, _one_window, _small)


@pytest.mark.slow
def test_the_mlps_table_read_by_anything_but_the_lookup_is_refused_at_its_line():
    from test_swinv2 import SwinV2Like, images

    with pytest.raises(TensorProgError, match=r"test_swinv2\.py:\d+:\d+: error: cannot trace "
                       r"values computed from the coordinates of a window's offsets \(Swin V2's "
                       r"continuous position bias\) read by mean"):
        tp.from_torch(lambda n: SwinV2Like(n, "cpb_mean", short=True), (32, 64), images)


class OtherWise(nn.Module):
    """One window attention block whose bias MLP is written otherwise than Swin V2's: flat
    coordinates [(2w-1)², 2], a GELU, tanh before the lookup, offset ids [w², w²] (viewed to
    the same shape), a division by a number after it, the bias given to sdpa as its mask (no
    temperature, no cosine)."""

    def __init__(self, n):
        super().__init__()
        from test_swin import WINDOW, relative_index

        self.heads, self.w = n // 16, WINDOW
        self.embed = nn.Conv2d(3, n, 4, stride=4)
        self.q, self.k, self.v = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.cpb = nn.Sequential(nn.Linear(2, 16), nn.GELU(), nn.Linear(16, self.heads))
        self.register_buffer("coords", hf_coords(WINDOW), persistent=False)
        self.register_buffer("index", relative_index(WINDOW), persistent=False)  # [w², w²]
        self.head = nn.Linear(n, 10)

    def forward(self, img):
        from test_swin import window_partition, window_reverse

        x = self.embed(img)
        (b, c, h, wd), w = x.shape, self.w
        x = x.flatten(2).transpose(1, 2)
        win = window_partition(x.view(b, h, wd, c), w).view(-1, w * w, c)
        q, k, v = (f(win).view(win.shape[0], w * w, self.heads, -1).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        table = torch.tanh(self.cpb(self.coords))
        bias = table[self.index].view(w * w, w * w, -1).permute(2, 0, 1) / 0.125
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        a = a.transpose(1, 2).reshape(win.shape[0], w * w, c).view(-1, w, w, c)
        return self.head((x + window_reverse(a, w, h, wd).reshape(b, h * wd, c)).mean(1))


@pytest.mark.slow
def test_a_bias_mlp_written_otherwise_traces_to_what_it_computes():
    from test_swinv2 import images

    traced = tp.from_torch(OtherWise, (32, 64), images)
    assert "gelu(" in traced.source and "tanh(" in traced.source and "= at(" in traced.source
    traced_computes_the_model(traced, OtherWise, images)


class _IndexGiven(OtherWise):
    """OtherWise whose offset ids the forward is given: at the example, Swin's."""

    def forward(self, img, index):
        self.index = index
        return super().forward(img)


@pytest.mark.slow
def test_an_index_given_to_the_forward_is_refused_though_the_example_is_swins():
    # the emitted module builds the windows' offsets itself: ids fed would be dropped
    from test_swin import WINDOW, relative_index
    from test_swinv2 import images

    with pytest.raises(TensorProgError, match=r"test_swinv2_cpb\.py:\d+:\d+: error: cannot "
                       r"trace a lookup of ids given to the forward or computed from its input "
                       r"index, whose example values are Swin's offsets of 4 x 4") as err:
        tp.from_torch(_IndexGiven, (32, 64), lambda m=None: (*images(), relative_index(WINDOW)))
    assert "table[self.index]" in str(err.value)
