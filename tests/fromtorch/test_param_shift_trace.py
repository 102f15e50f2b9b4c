"""A number added to or taken from a param before it gains a vector: ``w - c`` of a vector
param of constant init is a param of its own whose init is w's minus c (ops_arith._shifted),
``c - alpha * w`` (torch's rsub, RWKV's ``1 - time_mix``) a function of the param
(ops_paramfn.op_rsub). Oracle: the traced program computes the model (a sign lost on the
number, w + c for w - c, computes another gain)."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402


class Shifted(nn.Module):
    def __init__(self, n, form):
        super().__init__()
        self.form = form
        self.emb, self.ro = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.w = nn.Parameter(torch.full((n,), 1.5))  # a constant init, as Gemma's gain's

    def forward(self, ids):
        e = self.emb(ids)
        if self.form == "sub":
            gain = self.w - 1
        elif self.form == "sub_alpha":
            gain = torch.sub(self.w, 2.0, alpha=0.5)
        else:  # rsub: 2 - 3 w
            gain = torch.rsub(self.w, 2.0, alpha=3)
        return self.ro(gain * e)


def ids(model=None):
    return (torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("form", ["sub", "sub_alpha", "rsub"])
def test_a_number_taken_from_a_param_keeps_its_sign(form):
    def build(n):
        return Shifted(n, form)

    traced = tp.from_torch(build, (32, 64), ids)
    traced_computes_the_model(traced, build, ids)
