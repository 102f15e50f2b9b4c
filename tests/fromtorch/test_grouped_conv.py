"""Grouped convolutions (ResNeXt's cardinality, RegNet's groups): ``nn.Conv2d(c, c, k,
groups=g)`` with g fixed as the width grows traces as the language's ``conv(K, h, s, top,
bottom, left, right, d, g)``, its kernel [out, in / g, kh, kw]. Oracles: the hand-written
examples/resnext.tp derives the same exponents as its torch counterpart; the emitted grouped
convolution computes torch's; apply leaves the model bit-identical at the base width; groups
that grow with the width (a fixed group width) are refused, in the trace and in the language."""

from __future__ import annotations

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base, emit_program

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402


class ResNeXt(nn.Module):
    """examples/resnext.tp in torch (``width``: the groups' channels, None for 4 groups, or
    ``groups`` fixed)."""

    def __init__(self, n, width=None, groups=4):
        super().__init__()
        groups = groups if width is None else n // width
        self.stem = nn.Conv2d(3, n, 3, padding=1, bias=False)
        self.a = nn.Conv2d(n, n, 1, bias=False)
        self.g = nn.Conv2d(n, n, 3, padding=1, groups=groups, bias=False)
        self.b = nn.Conv2d(n, n, 1, bias=False)
        self.head = nn.Linear(n, 10, bias=False)

    def forward(self, img):
        h0 = F.relu(self.stem(img))
        h1 = h0 + self.b(F.relu(self.g(F.relu(self.a(h0)))))
        return self.head(h1.mean((2, 3)))


NAMES = {"stem_weight": "K0", "a_weight": "A", "g_weight": "G", "b_weight": "B",
         "head_weight": "W"}


def images(model=None):
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def resnext():
    return tp.from_torch(ResNeXt, (16, 32), images)


def test_a_grouped_conv_traces_to_conv_with_its_groups(resnext):
    assert "param g_weight : [n, n_by4, f3, f3]" in resnext.source
    assert "conv2d_2 = conv(g_weight, relu_1, 1, 1, 1, 1, 1, 1, 4)" in resnext.source


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_block_derives_what_examples_resnext_tp_derives(resnext, optimizer):
    got = tp.derive(resnext.program, optimizer).abc
    want = tp.derive(tp.parse_file(ROOT / "examples" / "resnext.tp"), optimizer).abc
    assert {k: got[k] for k in NAMES} == {k: want[v] for k, v in NAMES.items()}


def test_apply_leaves_the_grouped_block_bit_identical_at_the_base_width(resnext):
    apply_is_bit_identical_at_base(resnext, ResNeXt, images)


def test_the_emitted_grouped_conv_is_torchs():
    model = load_module(emit_program(tp.parse_file(ROOT / "examples" / "resnext.tp")),
                        "resnext").Model(32, dtype=torch.float64)
    (img,) = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    v = model.vectors(img)
    u = v["u"].movedim(-1, -3)  # the emitted module holds images channels-last
    want = F.relu(F.conv2d(u, model.G, padding=1, groups=4))
    torch.testing.assert_close(v["v"].movedim(-1, -3), want, rtol=0, atol=1e-12)


def test_groups_that_grow_with_the_width_are_refused():
    with pytest.raises(tp.TensorProgError, match=r"a convolution in 2 groups at width 16 and 4 "
                                                 r"at 32 \(g\): its groups grow with the width") \
            as err:
        tp.from_torch(lambda n: ResNeXt(n, width=8), (16, 32), images)
    # at the convolution's line (it had been the build's)
    assert "self.g(" in err.value.diagnostics[0].span.source_line()
    # 16 groups: depthwise at width 16 (it had said "in 1 groups at width 16 and 16 at 32")
    with pytest.raises(tp.TensorProgError, match=r"a convolution depthwise \(a group per "
                       r"channel\) at width 16 and in 16 groups at 32 \(g\): a fixed number of "
                       r"groups, depthwise at one width only") as err:
        tp.from_torch(lambda n: ResNeXt(n, groups=16), (16, 32), images)
    assert "self.g(" in err.value.diagnostics[0].span.source_line()
    source = (ROOT / "examples" / "resnext.tp").read_text()
    with pytest.raises(tp.SemanticError, match=r"conv in 4 groups of \[f8\] channels: a grouped "
                                               "convolution's groups must stay fixed"):
        tp.parse(source.replace("dim g = n / 4", "dim g = 8\ndim f8 = 8").replace(
            "[n, g, k, k]", "[n, f8, k, k]"), "bad.tp")
    with pytest.raises(tp.SemanticError, match=r"shape mismatch in conv: 2 groups of \[g\]"):
        tp.parse(source.replace("1, 1, 4)", "1, 1, 2)"), "bad.tp")
