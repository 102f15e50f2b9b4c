"""Convolutional networks traced: image inputs, conv2d (channels the width, stride 1 or 2), batch
norm, max/avg pooling, a global pool and a linear head. Oracles: the hand-written examples
(examples/resnet_bn.tp, examples/resnet.tp) derive the same exponents as the traced networks;
the emitted helpers compute what torch's layers compute; apply leaves the model bit-identical at
the base width, and the coordinate check passes µP and fails the model as it comes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import apply_is_bit_identical_at_base, run_cli

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.emit.templates import HELPERS  # noqa: E402
from tensorprog.fromtorch import MuP  # noqa: E402
from tensorprog.fromtorch.check import coord_check  # noqa: E402

EXAMPLES = Path(__file__).parents[2] / "examples"


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convs with batch norm, a 1x1 strided shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A torchvision-style ResNet of two stages (channels width and 2·width), 10 classes."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# traced param -> examples/resnet_bn.tp's
RESNET_BN = {
    "conv1_weight": "K0", "bn1_weight": "g0", "bn1_bias": "b0",
    "layer1_conv1_weight": "K1", "layer1_bn1_weight": "g1", "layer1_bn1_bias": "b1",
    "layer1_conv2_weight": "K2", "layer1_bn2_weight": "g2", "layer1_bn2_bias": "b2",
    "layer2_conv1_weight": "K3", "layer2_bn1_weight": "g3", "layer2_bn1_bias": "b3",
    "layer2_conv2_weight": "K4", "layer2_bn2_weight": "g4", "layer2_bn2_bias": "b4",
    "layer2_downsample_0_weight": "Kd", "layer2_downsample_1_weight": "gd",
    "layer2_downsample_1_bias": "bd", "fc_weight": "W", "fc_bias": "bW",
}


def images(model=None, batch=2, size=16):
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def resnet():
    return tp.from_torch(ResNet, (8, 16), images)


def test_a_resnet_traces_to_convs_batchnorms_pools_and_a_strided_stage(resnet):
    src = resnet.source
    assert "input img : image[f3, f16, f16]" in src
    assert "param layer2_conv1_weight : [n_x2, n, f3, f3]" in src
    assert "param layer2_downsample_0_weight : [n_x2, n, f1, f1]" in src
    assert "batch_norm = bn1_weight * batchnorm(conv2d) + bn1_bias" in src
    assert "max_pool2d = maxpool(v_relu)" in src or "maxpool(" in src
    assert "conv2d_3 = subsample(conv2d_3_full)" in src  # stride 2: every other pixel
    assert "global_pool(" in src and "fc_weight @ " in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_resnet_derives_what_the_hand_written_example_derives(resnet, optimizer):
    traced = tp.derive(resnet.program, optimizer).abc
    written = tp.derive(tp.parse_file(EXAMPLES / "resnet_bn.tp"), optimizer).abc
    assert set(traced) == set(RESNET_BN)
    for name, abc in traced.items():
        assert abc == written[RESNET_BN[name]], name
    assert str(traced["layer2_conv2_weight"].b) == "1/2"  # a hidden kernel: fan-in n·3·3


def test_apply_leaves_the_resnet_bit_identical_at_the_base_width(resnet):
    apply_is_bit_identical_at_base(resnet, ResNet, images)


@pytest.mark.slow  # a coordinate check over widths (README, Tests)
def test_the_coordinate_check_passes_mup_and_fails_the_resnet_as_it_comes(resnet):
    # widths 16-64, one seed, 3 Adam steps at lr 3e-3 on 4 random 16x16 images (fixed seeds):
    # under µP every slope from step 2 on lies in [-0.08, +0.05]; the model as it comes
    # (PyTorch's init, one LR) fails 12 vectors, layer1.conv1's change at +0.94
    mup = MuP(resnet, "adam")
    good = coord_check(mup, (16, 32, 64), seeds=(0,), batch=4, tolerance=0.25)
    bad = coord_check(mup, (16, 32, 64), seeds=(0,), batch=4, tolerance=0.25, apply=False)
    assert good.passed, good
    assert not bad.passed and "layer1.conv1" in str(bad)


class SmallResNet(nn.Module):
    """examples/resnet.tp in torch: a stem with a bias, two residual blocks around a 2x2
    average pool, the mean over the pixels into a linear readout."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False)
                                   for _ in range(4))
        self.head = nn.Linear(width, 10, bias=False)

    def forward(self, img):
        k1, k2, k3, k4 = self.convs
        h0 = F.relu(self.stem(img))
        h1 = h0 + k2(F.relu(k1(h0)))
        p1 = F.avg_pool2d(h1, 2)
        h2 = p1 + k4(F.relu(k3(p1)))
        return self.head(h2.mean((2, 3)))


def test_a_plain_cnn_derives_what_examples_resnet_tp_derives():
    traced = tp.from_torch(SmallResNet, (8, 16), lambda m: images(size=8))
    got = tp.derive(traced.program, "adam").abc
    want = tp.derive(tp.parse_file(EXAMPLES / "resnet.tp"), "adam").abc
    names = {"stem_weight": "K0", "stem_bias": "b0", "convs_0_weight": "K1",
             "convs_1_weight": "K2", "convs_2_weight": "K3", "convs_3_weight": "K4",
             "head_weight": "W"}
    assert {k: got[k] for k in names} == {k: want[v] for k, v in names.items()}


def _helper(name):
    space = {"torch": torch}
    exec("\n".join(HELPERS[name]), space)  # noqa: S102 - the emitter's own template
    return space[name]


def test_the_emitted_subsample_of_a_convolution_is_the_strided_convolution():
    # the exactness the tracer relies on: output pixel i of a stride-2 convolution padded by
    # (k-1)/2 is pixel 2i of the stride-1 one (even and odd image sizes, 3x3 and 1x1)
    conv, sub = _helper("_conv"), _helper("_subsample")
    g = torch.Generator().manual_seed(0)
    for size, k in ((8, 3), (7, 3), (8, 1)):
        x = torch.randn(2, 4, size, size, generator=g, dtype=torch.float64)
        w = torch.randn(5, 4, k, k, generator=g, dtype=torch.float64)
        strided = F.conv2d(x, w, stride=2, padding=k // 2)
        emitted = sub(conv(x.movedim(1, -1), w)).movedim(-1, 1)
        torch.testing.assert_close(emitted, strided, rtol=1e-12, atol=1e-12)


def test_the_emitted_batchnorm_and_max_pools_are_torchs_in_training_mode():
    bn, pool, pool3, sub = (_helper(f"_{f}") for f in ("batchnorm", "maxpool", "maxpool3",
                                                       "subsample"))
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    module = nn.BatchNorm2d(3, affine=False).double().train()
    last = x.movedim(1, -1)
    torch.testing.assert_close(bn(last).movedim(-1, 1), module(x))
    torch.testing.assert_close(pool(last).movedim(-1, 1), F.max_pool2d(x, 2))
    for size in (6, 7):  # torchvision's stem pool is every other pixel of the 3x3 max
        y = x[..., :size, :size] if size == 6 else F.pad(x, (0, 1, 0, 1))
        got = sub(pool3(y.movedim(1, -1))).movedim(-1, 1)
        torch.testing.assert_close(got, F.max_pool2d(y, 3, 2, 1), rtol=0, atol=0)


def test_a_second_float_input_is_refused():
    class Two(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.a, self.b = nn.Linear(16, width), nn.Linear(16, width)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    with pytest.raises(tp.TensorProgError, match=r"input \w+ is a torch.float32 tensor of shape "
                       r"\[2, 16\]: float inputs are traced one per model"):
        tp.from_torch(Two, (8, 16), lambda m: (torch.zeros(2, 16), torch.zeros(2, 16)))


class MLP(nn.Module):
    """examples/mlp.tp in torch (d_in 3072, biases on the hidden layers only)."""

    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3072, width), nn.Linear(width, width)
        self.fc3 = nn.Linear(width, 10, bias=False)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_mlp_on_float_vectors_derives_what_examples_mlp_tp_derives(optimizer):
    traced = tp.from_torch(MLP, (8, 16), lambda m: (torch.zeros(2, 3072),))
    assert "input x : [f3072]" in traced.source
    got = tp.derive(traced.program, optimizer).abc
    want = tp.derive(tp.parse_file(EXAMPLES / "mlp.tp"), optimizer).abc
    names = {"fc1_weight": "W1", "fc1_bias": "b1", "fc2_weight": "W2", "fc2_bias": "b2",
             "fc3_weight": "W3"}
    assert {k: got[k] for k in names} == {k: want[v] for k, v in names.items()}


def test_the_mlp_on_float_vectors_is_applied_and_passes_its_coordinate_check():
    # widths 64-512, one seed, 3 Adam steps at lr 3e-3 on 16 random vectors: under µP every
    # slope from step 2 on lies in [-0.05, +0.06]; as it comes the readout's change is at +0.74
    inp = lambda m: (torch.randn(2, 3072, generator=torch.Generator().manual_seed(0)),)  # noqa: E731
    mup = apply_is_bit_identical_at_base(tp.from_torch(MLP, (64, 128), inp), MLP, inp)
    good = coord_check(mup, (64, 128, 256, 512), seeds=(0,), tolerance=0.25)
    bad = coord_check(mup, (64, 128, 256, 512), seeds=(0,), tolerance=0.25, apply=False)
    assert good.passed, good
    assert not bad.passed and "fc3 (linear_2)" in str(bad)


def test_float_vectors_per_token_are_a_patches_input():
    traced = tp.from_torch(lambda n: nn.Sequential(nn.Linear(12, n), nn.GELU(), nn.Linear(n, 5)),
                           (8, 16), lambda m: (torch.zeros(2, 6, 12),))
    assert "dim T = 6" in traced.source and "input x : patches[T, f12]" in traced.source
    abc = tp.derive(traced.program, "adam").abc
    assert (str(abc["v_0_weight"].b), str(abc["v_2_weight"].b)) == ("0", "1")


def test_a_stage_of_identical_blocks_rolls_into_a_block_with_the_same_width_exponents(resnet):
    class Deep(ResNet):
        def __init__(self, width):
            super().__init__(width)
            self.layer1 = nn.Sequential(*(BasicBlock(width, width, 1) for _ in range(3)))

    traced = tp.from_torch(Deep, (8, 16), images)
    assert "depth L = 3" in traced.source and "= repeat L layer1(max_pool2d)" in traced.source
    got = tp.derive(traced.program, "adam")
    shallow = tp.derive(resnet.program, "adam").abc
    assert got.abc["layer1.conv1_weight_1"] == shallow["layer1_conv1_weight"]
    assert got.abc["fc_weight"] == shallow["fc_weight"]
    # relu(x + f(x)) is no residual stream x + f(x): the engine derives no depth exponents
    assert "exponents in L not derived" in str(got)


# --- vision transformers: an image cut into patches, one token each ------------------------------


class PatchNet(nn.Module):
    """A ViT's front: a patch embedding (a Conv2d with stride equal to its kernel, or unfold
    then a linear layer), learned positions [1, T, n], one pre-LN MLP block applied per patch
    and a per-patch readout; examples/vit_patches.tp written in torch."""

    def __init__(self, width, unfold=False):
        super().__init__()
        self.unfold = unfold
        self.proj = nn.Linear(48, width) if unfold else nn.Conv2d(3, width, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.randn(1, 16, width) * 0.02)
        self.ln1 = nn.LayerNorm(width, bias=False)
        self.fc1 = nn.Linear(width, 4 * width, bias=False)
        self.fc2 = nn.Linear(4 * width, width, bias=False)
        self.ln2 = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, 10, bias=False)

    def forward(self, img):
        if self.unfold:
            h0 = self.proj(F.unfold(img, 4, stride=4).transpose(1, 2))
        else:
            h0 = self.proj(img).flatten(2).transpose(1, 2)
        h0 = h0 + self.pos_embed
        h1 = h0 + self.fc2(F.gelu(self.fc1(self.ln1(h0))))
        return self.head(self.ln2(h1))


VIT_PATCHES = {"proj_weight": "E", "proj_bias": "bE", "pos_embed": "Pos", "ln1_weight": "g1",
               "fc1_weight": "A1", "fc2_weight": "B1", "ln2_weight": "g2", "head_weight": "W"}


@pytest.fixture(scope="module")
def patchnet():
    return tp.from_torch(PatchNet, (8, 16), images)


def test_a_patch_embedding_traces_to_a_patches_input_of_finite_fan_in(patchnet):
    src = patchnet.source
    assert "input patch : patches[T, f48]" in src and "dim T = 16" in src
    assert "param proj_weight : [n, f48]" in src  # the kernel [n, 3, 4, 4] flattened
    assert "conv2d = proj_weight @ patch + proj_bias" in src
    assert "param pos_embed : [n, T]" in src and "pos_embed @ pos" in src
    got = tp.derive(patchnet.program, "adam").abc
    want = tp.derive(tp.parse_file(EXAMPLES / "vit_patches.tp"), "adam").abc
    assert {k: got[k] for k in VIT_PATCHES} == {k: want[v] for k, v in VIT_PATCHES.items()}
    assert str(got["proj_weight"].b) == "0" and str(got["head_weight"].b) == "1"


def test_unfold_then_linear_is_the_same_patch_embedding(patchnet):
    unfolded = tp.from_torch(lambda n: PatchNet(n, unfold=True), (8, 16), images)
    assert "input patch : patches[T, f48]" in unfolded.source
    assert tp.derive(unfolded.program, "adam").abc == tp.derive(patchnet.program, "adam").abc


def test_the_patch_net_is_applied_bit_identically_and_passes_its_coordinate_check(patchnet):
    # widths 32-128, one seed, 3 Adam steps at lr 3e-3 on 2 random 16x16 images: under µP
    # every slope from step 2 on lies in [-0.06, +0.01]; as it comes fc1's change is at +0.45
    mup = apply_is_bit_identical_at_base(patchnet, PatchNet, images)
    good = coord_check(mup, (32, 64, 128), seeds=(0,), batch=2, tolerance=0.25)
    bad = coord_check(mup, (32, 64, 128), seeds=(0,), batch=2, tolerance=0.25, apply=False)
    assert good.passed, good
    assert not bad.passed and "fc1 (linear)" in str(bad)


def test_torchvisions_stem_traces_exactly():
    # conv 7x7 stride 2 padding 3, batch norm, relu, max pool 3x3 stride 2 padding 1
    class Stem(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    src = tp.from_torch(Stem, (8, 16), images).source
    assert "conv2d = subsample(conv2d_full)" in src
    assert "param conv1_weight : [n, f3, f7, f7]" in src
    assert "max_pool2d_full = maxpool3(v_relu)" in src
    assert "max_pool2d = subsample(max_pool2d_full)" in src


CLI_MODEL = """import torch
from torch import nn


def build(n):
    return nn.Sequential(nn.Conv2d(3, n, 3, padding=1), nn.BatchNorm2d(n), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n, 10))
"""


@pytest.mark.parametrize(("image", "message"), [
    ("3,8,8", None),
    ("3,8", r"--image 3,8: expected three positive integers C,H,W"),
    ("3,0,8", r"--image 3,0,8: expected three positive integers"),
])
def test_tensorprog_trace_takes_an_image_shape(capsys, tmp_path, image, message):
    (tmp_path / "m.py").write_text(CLI_MODEL)
    code, out, err = run_cli(capsys, "trace", f"{tmp_path}/m.py:build", "--widths", "8,16",
                             "--image", image)
    if message is not None:
        assert (code, out) == (2, "") and re.search(message, err), err
        return
    assert code == 0, err
    assert "input img : image[f3, f8, f8]" in out and "= global_pool(" in out
    assert tp.derive(tp.parse(out), "adam").abc["v_5_weight"] == tp.ABC(0, 1, 1)
