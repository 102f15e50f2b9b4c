"""A view that adds an axis of 1, read only by a mean over that axis (Zaya's keys from heads
laid out as its queries, ``r.view(b, t, -1, groups, dh).mean(-2)`` with one head a group): the
mean of one entry, the value itself with its entries in place (fromtorch/ops_layout.py).
Oracles: the traced program computes the model (the shared oracle); a mean over an axis of more
entries (groups of 2 heads), one that keeps the axis, and one beside a batch of one sequence
(which may average the batch) are refused."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


class Averaged(nn.Module):
    """One causal attention of 4 heads whose keys are the mean of each group of ``groups``
    heads of a projection, ``r.view(b, t, -1, groups, dh).mean(-2)`` (``keepdim``: the axis
    kept; ``batch``: ``r.view(b, 1, t, -1, dh).mean(0)``, the mean over the sequences)."""

    def __init__(self, n, groups=1, keepdim=False, batch=False):
        super().__init__()
        self.groups, self.keepdim, self.dh, self.batch = groups, keepdim, n // 4, batch
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.q, self.k, self.v, self.o = (nn.Linear(n, n, bias=False) for _ in range(4))

    def forward(self, idx):
        x = self.e(idx)
        b, t, n = x.shape
        q = self.q(x).view(b, t, -1, self.dh)
        r = self.k(x).view(b, t, -1, self.dh)
        if self.batch:  # the sequences averaged: r itself for a batch of one alone
            k = r.view(b, 1, t, -1, self.dh).mean(0)
        else:
            k = r.view(b, t, -1, self.groups, self.dh).mean(-2, keepdim=self.keepdim)
        k = k.reshape(b, t, -1, self.dh).repeat_interleave(self.groups, dim=2)
        v = self.v(x).view(b, t, -1, self.dh)
        y = F.scaled_dot_product_attention(*(z.transpose(1, 2) for z in (q, k, v)),
                                           is_causal=True)
        return self.out(x + self.o(y.transpose(1, 2).reshape(b, t, n)))


def test_the_mean_over_an_added_axis_of_one_is_the_value_itself():
    traced = from_torch(Averaged, WIDTHS, _tokens)
    assert "mean" not in traced.source and "dot(linear, linear_1, n_by4)" in traced.source
    traced_computes_the_model(traced, Averaged, _tokens)


@pytest.mark.parametrize("kw", [{"groups": 2}, {"keepdim": True}])
def test_a_mean_over_more_entries_or_keeping_the_axis_is_refused(kw):
    with pytest.raises(TensorProgError, match=r"cannot trace a view from \[2, 8, 4, 8\]"):
        from_torch(lambda n: Averaged(n, **kw), WIDTHS, _tokens)


def test_a_mean_beside_a_batch_of_one_is_refused():
    # traced with one sequence, view(b, 1, ...).mean(0) leaves r as it is; with two it
    # averages them, which the program (r itself) would not: refused at the mean
    one = lambda model: (torch.arange(8).remainder(13).view(1, 8),)  # noqa: E731
    with pytest.raises(TensorProgError, match=r"a mean over an axis of 1 that a view from "
                       r"\[1, 8, 4, 8\] to \[1, 1, 8, 4, 8\] added beside a batch or token"):
        from_torch(lambda n: Averaged(n, batch=True), WIDTHS, one)
