"""hardswish and hardsigmoid traced: ``nn.Hardswish`` / ``F.hardswish`` (aten.hardswish) and
``nn.Hardsigmoid`` / ``F.hardsigmoid`` are the language's ``hardswish`` and ``hardsigmoid``,
identified by their values on [-4, 4] (their kinks at ±3 lie inside it). Oracles: a
MobileNetV3-style block (examples/mobilenetv3.tp written in torch) derives the example's
exponents, its traced program computes the model in float64, its emitted module calls torch's
functions and trains; under SP hardswish passes a growth on as relu does, hardsigmoid caps it
as sigmoid does; a hardswish of a stretched input, which no function of the language is, is
refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import emit_program, traced_computes_the_model, train_once

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class MobileV3(nn.Module):
    """examples/mobilenetv3.tp in torch: a stride-2 stem and a depthwise conv with hardswish, a
    squeeze-and-excitation gate of 1x1 convolutions through hardsigmoid (timm's SqueezeExcite),
    a 1x1 convolution added back to the stem's output."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.reduce = nn.Conv2d(width, width // 4, 1)
        self.expand = nn.Conv2d(width // 4, width, 1)
        self.pw = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, 10)
        self.act, self.gate = nn.Hardswish(), nn.Hardsigmoid()

    def forward(self, img):
        h0 = self.act(self.stem(img))
        h1 = F.hardswish(self.dw(h0))
        g = self.gate(self.expand(F.relu(self.reduce(h1.mean((2, 3), keepdim=True)))))
        h2 = h0 + self.pw(h1 * g)
        return self.head(h2.mean((2, 3)))


# traced param -> examples/mobilenetv3.tp's
NAMES = {"stem_weight": "K0", "stem_bias": "b0", "dw_weight": "D", "dw_bias": "bD",
         "reduce_weight": "A", "reduce_bias": "a", "expand_weight": "B", "expand_bias": "bB",
         "pw_weight": "P", "pw_bias": "bP", "head_weight": "W", "head_bias": "bW"}


def images(model=None):
    return (4 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(MobileV3, (8, 16), images)


def test_the_traced_block_derives_what_examples_mobilenetv3_tp_derives(traced):
    src = traced.source
    assert src.count("= hardswish(") == 2 and src.count("= hardsigmoid(") == 1
    written = tp.parse_file(EXAMPLES / "mobilenetv3.tp")
    for optimizer in ("adam", "sgd"):
        got = tp.derive(traced.program, optimizer).abc
        want = tp.derive(written, optimizer).abc
        assert set(got) == set(NAMES)
        assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}


def test_the_traced_block_computes_the_model_and_its_module_trains(traced):
    # inputs 4·N(0, 1): the stem's outputs reach past ±3, where both functions bend
    traced_computes_the_model(traced, MobileV3, images)
    emitted = emit_program(traced.program)
    assert "torch.nn.functional.hardswish(" in emitted.source
    assert "torch.nn.functional.hardsigmoid(" in emitted.source
    model, _ = train_once(load_module(emitted, "mobilenetv3_net"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


MLP = """width n = 8
dim D = 4
dim K = 3
input x : [D]
param A : [n, D]
param B : [n, n]
param C : [K, n]
h = FN(A @ x)
output y = C @ FN(B @ h)
"""


def _sizes(fn: str) -> dict:
    return tp.classify(tp.parse(MLP.replace("FN", fn)), "sgd", preset="sp").as_dict()["vectors"]


def test_under_sp_hardswish_passes_a_growth_on_and_hardsigmoid_caps_it():
    # SP with SGD: B @ h's change grows as n; hardswish ~ x far out passes it on as relu does
    # (relu6 would cap it), hardsigmoid is clamped to [0, 1] as sigmoid is bounded
    assert _sizes("hardswish") == _sizes("relu") != _sizes("relu6")
    assert _sizes("hardsigmoid") == _sizes("sigmoid")
    assert _sizes("hardswish")["y_2"]["update"] == "1"
    assert _sizes("hardsigmoid")["y_2"]["update"] == "0"


class Stretched(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = nn.Linear(4, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.b(F.hardswish(2 * self.a(x)))


def test_a_hardswish_of_a_stretched_input_is_refused():
    # hardswish(2 h) is no multiple of hardswish(h) (its kinks move to ±3/2): no function of
    # the language computes it
    def inputs(model=None):
        return (torch.randn(2, 4, generator=torch.Generator().manual_seed(0)),)

    with pytest.raises(tp.TensorProgError, match="coordinatewise function that is none of"):
        tp.from_torch(Stretched, (8, 16), inputs)
