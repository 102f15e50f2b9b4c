"""``apply``'s hand-set 1-D params (the same numbers at every seed, hand_set.py) of a
growing dim whose law changes with the width (A = 1..H over H heads): each layer of a traced
stack gets the base width's law, those past the traced depth too (their base is the traced
layers'), and a law the traced layers do not share past the depth is refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.errors import UsageError  # noqa: E402


class Block(nn.Module):
    def __init__(self, n, rates):
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.rate = nn.Parameter(rates(n))

    def forward(self, h):
        return torch.tanh(self.lin(h)) * self.rate


class Net(nn.Module):
    def __init__(self, n, layers, rates):
        super().__init__()
        self.emb = nn.Embedding(13, n)
        self.layers = nn.ModuleList(Block(n, lambda m, i=i: rates(m, i)) for i in range(layers))
        self.out = nn.Linear(n, 13)

    def forward(self, ids):
        h = self.emb(ids)
        for layer in self.layers:
            h = layer(h)
        return self.out(h)


def ids(model=None):
    return (torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)),)


def ranks(n, i=0):
    return torch.arange(1, n + 1.0)  # 1..n: its largest entry grows with the width


def test_layers_past_the_traced_depth_get_the_base_width_law_too():
    traced = tp.from_torch(lambda n: Net(n, 2, ranks), (16, 32), ids)
    assert traced.stack is not None
    model = Net(64, 4, ranks)
    report = str(tp.MuP(traced, "adam").apply(model))
    law = torch.arange(1, 17.0).repeat_interleave(4)  # the base's 16 entries, 4 each
    for i, layer in enumerate(model.layers):
        assert torch.equal(layer.rate.detach(), law), (i, layer.rate)
        assert f"init layers.{i}.rate: the base width's 16 entries" in report, report


def test_a_law_the_traced_layers_do_not_share_is_refused_past_the_depth():
    def rates(n, i):
        return torch.arange(1, n + 1.0) + i  # one std: a stack, its entries per layer

    traced = tp.from_torch(lambda n: Net(n, 2, rates), (16, 32), ids)
    model = Net(64, 2, rates)
    tp.MuP(traced, "adam").apply(model)  # the traced depth: each layer its own base
    assert traced.stack is not None
    assert torch.equal(model.layers[1].rate.detach(), torch.arange(2, 18.0).repeat_interleave(4))
    with pytest.raises(UsageError, match=r"layers\.2\.rate.*set by hand") as err:
        tp.MuP(traced, "adam").apply(Net(64, 3, rates))
    # at the class whose __init__ sets the param
    assert err.value.span.line == Block.__init__.__code__.co_firstlineno, err.value


def one_layer(rates):
    return lambda n: Net(n, 1, lambda m, i: rates(m))


@pytest.mark.parametrize("rates, says", [
    # a fixed generator's draw: the same at every seed, in no order, one law at every width
    (lambda n: torch.randn(n, generator=torch.Generator().manual_seed(0)), "in no order"),
    # ALiBi's slopes 2^(-8i/H) as a param: a function of the place i/H, sampled finer
    (lambda n: 2.0 ** (-8 * torch.arange(1, n + 1.0) / n), "sampled finer"),
])
def test_entries_of_one_law_at_every_width_keep_the_model_own(rates, says):
    traced = tp.from_torch(one_layer(rates), (16, 32), ids)
    model = one_layer(rates)(256)
    own = model.layers[0].rate.detach().clone()
    report = str(tp.MuP(traced, "adam").apply(model))
    assert torch.equal(model.layers[0].rate.detach(), own)
    assert "init layers.0.rate: the model's own entries (the same at every seed" in report
    assert says in report, report


def test_a_run_repeated_over_groups_gets_the_base_law_per_group():
    from tensorprog.fromtorch.hand_set import base_law

    run = lambda m: torch.arange(1, m + 1.0)  # noqa: E731  (1..H/G in each of G = 2 groups)
    base = run(4).repeat(2).tolist()
    law = run(4).repeat_interleave(2).repeat(2)  # each group's 4 rates, each over 2 heads
    assert torch.equal(base_law(base, run(8).repeat(2)), law)
    assert base_law(base, run(4).repeat(4)) is None  # more groups of one run: the base's law
    with pytest.raises(UsageError, match=r"init w: set by hand.*a run of 4 repeated over 2"):
        base_law(base, torch.cat([run(8), run(8).flip(0)]), "w")
