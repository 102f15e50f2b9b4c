"""Register tokens (DINOv2 with registers): a param [1, R, n] of R learned tokens put after the
class token, ``torch.cat([h[:, :1], reg.expand(B, -1, -1), h[:, 1:]], dim=1)``, traced as one
``prepend(r, h, T2, k)`` per register, each row of the param a vector param of its own; the
head reads the class token and the mean of the patches after the registers. Oracle: the same
model written in the language, examples/vit_registers.tp, derives the same exponents; the emitted
program computes the model's output at the base width (each register at its place); apply leaves
the model bit-identical there."""

from __future__ import annotations

import pytest
from conftest import ROOT, apply_is_bit_identical_at_base, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)

    def forward(self, h):
        b, t, n = h.shape
        u = self.ln1(h)
        q, k, v = (f(u).view(b, t, 4, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = h + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, n))
        return a + self.fc2(F.gelu(self.fc1(self.ln2(a))))


class Registers(nn.Module):
    """examples/vit_registers.tp in torch: 16 patches of 192 values, a class token, positions,
    2 registers after the class token, 2 blocks, the head on cat([cls, mean of patches])."""

    def __init__(self, n, registers=2, skip=0):
        super().__init__()
        self.skip = skip  # tokens dropped after the class token: no insertion, refused
        self.embed = nn.Linear(192, n)
        self.cls = nn.Parameter(torch.randn(1, 1, n))
        self.pos = nn.Parameter(torch.randn(1, 17, n))
        self.reg = nn.Parameter(torch.randn(1, registers, n))
        self.layers = nn.ModuleList(Block(n) for _ in range(2))
        self.norm = nn.LayerNorm(n)
        self.head = nn.Linear(2 * n, 10)

    def forward(self, x):
        b = x.shape[0]
        h = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos
        h = torch.cat([h[:, :1], self.reg.expand(b, -1, -1), h[:, 1 + self.skip:]], dim=1)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        r = 1 + self.reg.shape[1]
        return self.head(torch.cat([h[:, 0], h[:, r:].mean(1)], dim=-1))


def patches(model=None):
    return (torch.randn(2, 16, 192, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def traced():
    return tp.from_torch(Registers, (64, 128), patches)


def test_each_register_is_a_row_param_inserted_after_the_class_token(traced):
    src = traced.source
    assert "param reg_row0 : [n]" in src and "param reg_row1 : [n]" in src
    assert "prepend(reg_row0, add, T2, 1)" in src
    assert "prepend(reg_row1, cat_1_T2, T3, 2)" in src


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_traced_registers_derive_what_examples_vit_registers_tp_derives(traced, optimizer):
    got = tp.derive(traced.program, optimizer).abc
    want = tp.derive(tp.parse_file(ROOT / "examples" / "vit_registers.tp"), optimizer).abc
    names = {"embed_weight": "E", "embed_bias": "bE", "cls": "cls", "reg_row0": "r1",
             "reg_row1": "r2", "norm_weight": "gf", "norm_bias": "bf", "head_weight_cols0": "W1",
             "head_weight_cols1": "W2", "head_bias": "bc"}
    assert {k: got[k] for k in names} == {k: want[v] for k, v in names.items()}


def test_the_traced_program_computes_the_model_with_registers_at_the_base_width(traced):
    traced_computes_the_model(traced, Registers, patches)


def test_apply_leaves_the_model_with_registers_bit_identical_at_the_base_width(traced):
    apply_is_bit_identical_at_base(traced, Registers, patches)


def test_learned_tokens_put_in_place_of_a_token_are_refused():
    with pytest.raises(tp.TensorProgError, match="cannot trace a concatenation of learned tokens "
                                                 "other than before the tokens"):
        tp.from_torch(lambda n: Registers(n, skip=1), (64, 128), patches)
