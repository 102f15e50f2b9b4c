"""from_torch on generated small models: each either traces, derives and applies (the model
unchanged at the base width, every param in a group, one finite step), or is refused with a
positioned error at the user's code. Derandomised, a few examples (a trace costs about a second).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
VOCAB, SEQ = 16, 4


def _model_class(layers: int, act: str, bias: bool, norm: bool, residual: bool, tied: bool,
                 expand: int):
    class Generated(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, n)
            self.layers = nn.ModuleList(nn.Sequential(
                *([nn.LayerNorm(n)] if norm else []), nn.Linear(n, expand * n, bias=bias),
                ACTIVATIONS[act](), nn.Linear(expand * n, n, bias=bias)) for _ in range(layers))
            self.head = nn.Linear(n, VOCAB, bias=False)
            if tied:
                self.head.weight = self.embed.weight

        def forward(self, idx):
            h = self.embed(idx)
            for layer in self.layers:
                h = h + layer(h) if residual else layer(h)
            return self.head(h)

    return Generated


def _tokens(model):
    return (torch.zeros(2, SEQ, dtype=torch.long),)


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.integers(1, 2), act=st.sampled_from(sorted(ACTIVATIONS)), bias=st.booleans(),
       norm=st.booleans(), residual=st.booleans(), tied=st.booleans(), expand=st.integers(1, 2))
def test_generated_models_trace_derive_and_apply_or_are_refused_at_the_users_line(
        layers, act, bias, norm, residual, tied, expand):
    build = _model_class(layers, act, bias, norm, residual, tied, expand)
    try:
        traced = from_torch(build, (16, 32), _tokens)
    except tp.TensorProgError as err:
        text = err.render()
        assert __file__.rsplit("/", 1)[-1] in text and "tensorprog/" not in text, text
        return
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = build(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mup.apply(model)  # the base width: the model stays bit-identical
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    wide = build(64)
    mup.apply(wide)
    groups = mup.param_groups(wide, lr=1e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in wide.parameters()}
    opt = torch.optim.Adam(groups)
    wide(*_tokens(wide)).pow(2).mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in wide.parameters())
    mup.remove_patches(wide)
