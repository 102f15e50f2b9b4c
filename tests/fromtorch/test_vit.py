"""from_torch on a vision transformer with a learned class token: HF's
ViTForImageClassification built small (image 32, patches of 8, 2 layers, 4 heads, traced at
widths 64 and 128). ``torch.cat([cls.expand(B, -1, -1), patches], dim=1)`` traces as the
language's ``prepend(cls, h, T1)`` and the position table over the 17 tokens as a lookup of
positions over T1. The oracle: examples/vit.tp written by hand derives, param by param, the
exponents the traced model gets, under Adam and SGD; apply leaves the model bit-identical at the
base width."""

import re

import pytest
from conftest import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

WIDTHS = (64, 128)


def _vit(n):
    cfg = transformers.ViTConfig(hidden_size=n, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=4 * n, image_size=32, patch_size=8,
                                 num_channels=3, num_labels=10)
    return transformers.ViTForImageClassification(cfg).eval()  # without dropout


def _images(model):
    return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


# HF ViT's params by their role in examples/vit.tp
_VIT_NAMES = {
    "vit.embeddings.patch_embeddings.projection.weight": "E",
    "vit.embeddings.patch_embeddings.projection.bias": "bE",
    "vit.embeddings.cls_token": "cls", "vit.embeddings.position_embeddings": "Pos",
    "layernorm_before.weight": "layer.g1", "layernorm_before.bias": "layer.b1",
    "q_proj.weight": "layer.Wq", "q_proj.bias": "layer.bq",
    "k_proj.weight": "layer.Wk", "k_proj.bias": "layer.bk",
    "v_proj.weight": "layer.Wv", "v_proj.bias": "layer.bv",
    "o_proj.weight": "layer.Wo", "o_proj.bias": "layer.bo",
    "layernorm_after.weight": "layer.g2", "layernorm_after.bias": "layer.b2",
    "fc1.weight": "layer.Wi", "fc1.bias": "layer.bi",
    "fc2.weight": "layer.Wp", "fc2.bias": "layer.bp",
    "vit.layernorm.weight": "gf", "vit.layernorm.bias": "bf",
    "classifier.weight": "Wc", "classifier.bias": "bc",
}


def _role(target: str) -> str:
    short = re.sub(r"^vit\.layers\.\{i\}\.(attention\.|mlp\.)?", "", target)
    return _VIT_NAMES[short if short in _VIT_NAMES else target]


@pytest.fixture(scope="module")
def vit():
    return from_torch(_vit, WIDTHS, _images)


def test_the_class_token_traces_as_prepend_with_positions_over_the_longer_sequence(vit):
    src = vit.source
    assert "dim T = 16" in src and "dim T1 = 17" in src
    assert "input patch : patches[T, f192]" in src and "input pos : positions[T1]" in src
    assert re.search(r"^v_cat = prepend\(vit_embeddings_cls_token, conv2d, T1\)$", src, re.M)
    assert "param vit_embeddings_position_embeddings : [n, T1]" in src
    assert "first(" in src and "repeat L layers(" in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_hf_vit_derives_the_exponents_of_examples_vit(vit, optimizer):
    mine = tp.derive(tp.parse_file(ROOT / "examples" / "vit.tp"), optimizer).abc
    d = tp.derive(vit.program, optimizer).abc
    got = {u.target: d[p] for p, u in vit.params.items()}
    assert len(got) == 4 + 16 + 4  # every param, a block's once for its repetitions
    for target, abc in got.items():
        want = mine[_role(target)]
        assert (abc.a, abc.b, abc.c) == (want.a, want.b, want.c), (optimizer, target)
    (scale,) = (p for p in d if p.startswith("attn_"))
    assert d[scale].a == mine["attn"].a
    # the class token is a vector fed the constant 1 at one position: a bias's exponents
    assert mine["cls"] == mine["bE"] and str(mine["cls"].b) == "0"


def test_apply_leaves_hf_vit_bit_identical_at_the_base_width(vit):
    mup = MuP(vit, "adam")
    torch.manual_seed(1)
    model = _vit(WIDTHS[0])
    torch.manual_seed(1)
    plain = _vit(WIDTHS[0])
    mup.apply(model)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    (img,) = _images(model)
    assert torch.equal(model(img).logits, plain(img).logits)
    # at twice the width the class token keeps its init std, HF's 0.02 (b = 0: a bias's), and
    # the classifier's halves (b = 1: an output weight's); 128 and 1,280 draws, seed fixed
    torch.manual_seed(2)
    wide = _vit(2 * WIDTHS[0])
    mup.apply(wide)
    cls, head = (float(t.detach().std()) for t in (wide.vit.embeddings.cls_token,
                                                    wide.classifier.weight))
    assert cls == pytest.approx(0.02, rel=0.1) and head == pytest.approx(0.01, rel=0.05)


class TwoTokens(torch.nn.Module):
    """DeiT's front: a class and a distillation token before the patches (the second a param
    [n] expanded as CLIP's class embedding is), CLIP's positions over the T + 2 tokens (an
    embedding of a buffer of position ids), a readout of the first token."""

    def __init__(self, n):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, n, 4, stride=4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, n) * 0.02)
        self.dist = torch.nn.Parameter(torch.randn(n) * 0.02)
        self.pos = torch.nn.Embedding(18, n)
        self.register_buffer("position_ids", torch.arange(18)[None], persistent=False)
        self.fc = torch.nn.Linear(n, n)
        self.head = torch.nn.Linear(n, 10)

    def forward(self, img):
        h = self.proj(img).flatten(2).transpose(1, 2)
        b = h.shape[0]
        h = torch.cat([self.cls.expand(b, -1, -1), self.dist.expand(b, 1, -1), h], dim=1)
        h = torch.relu(self.fc(h + self.pos(self.position_ids)))
        return self.head(h[:, 0])


def _small_images(model):
    return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)


def test_two_learned_tokens_are_two_prepends_and_derive_as_biases():
    traced = from_torch(TwoTokens, (16, 32), _small_images)
    src = traced.source
    assert "dim T1 = 17" in src and "dim T2 = 18" in src and "input pos : positions[T2]" in src
    assert re.search(r"= prepend\(dist, conv2d, T1\)$", src, re.M)
    assert re.search(r"^v_cat = prepend\(cls, cat_T1, T2\)$", src, re.M)
    for optimizer in ("adam", "sgd"):
        abc = tp.derive(traced.program, optimizer).abc
        assert abc["cls"] == abc["dist"] == abc["proj_bias"], optimizer
        assert str(abc["head_weight"].b) == "1"
    MuP(traced, "adam").apply(TwoTokens(64))  # the width read from a param [n] and [1, 1, n]
