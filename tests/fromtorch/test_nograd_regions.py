"""from_torch on torch.no_grad regions over program values other than a selection's top-k
(test_nograd_indexer.py, test_moe_gated_input.py): one that scales params in place by 1 (RWKV's
rescaling for inference, with fewer blocks than its rescale_every) is the identity, and the
model traces as without it (oracles: the traced program computes the model; the same µP as the
model written without the region); one that scales them by anything else is refused at its
line, as is a mask of a router's gates by a threshold computed under no_grad (PhiMoE's
sparsemixer: no gradient is lost through a mask, but the gates it keeps depend on their values,
which no route states) and a region that returns ids alone by ops that are no selection the
tracer follows; a region that carries a value on with no gradient stays refused at its line."""

import pytest
from conftest import abc_by_target, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 11


def _tokens(model):
    return (torch.arange(12).remainder(VOCAB).view(2, 6),)


class Rescaled(nn.Module):
    """An MLP whose forward scales its second weight in place under torch.no_grad by
    ``factor`` (``how``: "div_" or "mul_"), as RWKV's ``_rescale_layers`` does; None: no
    region."""

    def __init__(self, n, factor=None, how="div_"):
        super().__init__()
        self.factor, self.how = factor, how
        self.e, self.h, self.o = nn.Embedding(VOCAB, n), nn.Linear(n, n), nn.Linear(n, n)
        self.out = nn.Linear(n, VOCAB)

    def forward(self, idx):
        if self.factor is not None:
            with torch.no_grad():
                getattr(self.o.weight, self.how)(self.factor)
        x = self.e(idx)
        return self.out(x + self.o(torch.relu(self.h(x))))


@pytest.mark.parametrize("factor, how", [(1, "div_"), (1.0, "mul_")])
def test_params_scaled_in_place_by_one_trace_as_without_the_region(factor, how):
    build = lambda n: Rescaled(n, factor, how)  # noqa: E731
    traced = from_torch(build, WIDTHS, _tokens)
    assert abc_by_target(traced) == abc_by_target(from_torch(Rescaled, WIDTHS, _tokens))
    assert "o.weight" in {u.target for u in traced.params.values()}
    traced_computes_the_model(traced, build, _tokens)


@pytest.mark.parametrize("factor, how", [(2, "div_"), (0.5, "mul_"), (True, "mul_")])
def test_params_scaled_in_place_by_another_factor_are_refused_at_the_line(factor, how):
    with pytest.raises(TensorProgError, match=r"test_nograd_regions.py:\d+:\d+: error: cannot "
                       rf"trace a torch.no_grad region that writes its inputs in place "
                       rf"\({how} of"):
        from_torch(lambda n: Rescaled(n, factor, how), WIDTHS, _tokens)


class ThresholdRouter(nn.Module):
    """A top-1 mixture of 4 experts whose expert's weight is a softmax over the gates within
    2 eps of their max, relatively, a mask computed under torch.no_grad: the first half of
    transformers' PhiMoE ``sparsemixer`` (eval), as it writes it; ``phimoe``: its whole, top-2,
    from transformers."""

    def __init__(self, n, phimoe=False):
        super().__init__()
        self.phimoe = phimoe
        self.e, self.r = nn.Embedding(VOCAB, n), nn.Linear(n, 4, bias=False)
        self.experts = nn.ModuleList(nn.Linear(n, n) for _ in range(4))
        self.out = nn.Linear(n, VOCAB)

    def forward(self, idx):
        x = self.e(idx)
        scores = self.r(x)
        if self.phimoe:
            from transformers.models.phimoe.modeling_phimoe import sparsemixer

            w, ids = sparsemixer(scores, jitter_eps=0.01, training=False)
        else:
            with torch.no_grad():
                threshold, ids = scores.max(dim=-1, keepdim=True)
                factor = scores.abs().clamp(min=threshold)
                mask = ((threshold - scores) / factor) > 2 * 0.01
            w = scores.masked_fill(mask, float("-inf")).softmax(-1).gather(-1, ids)
        y = torch.stack([f(x) for f in self.experts], -2)  # [b, t, E, n]
        picked = y.gather(-2, ids[..., None].expand(*ids.shape, y.shape[-1]))
        return self.out(x + (w[..., None] * picked).sum(-2))


_THRESHOLD = (r"test_nograd_regions.py:\d+:\d+: error: cannot trace a mask computed under "
              r"torch.no_grad by a comparison \(gt\) of values the model computes.*"
              r"route\(g, k, \.\.\.\) keeps the k largest gates")


def test_a_mask_of_the_gates_by_a_threshold_under_no_grad_is_refused():
    with pytest.raises(TensorProgError, match=_THRESHOLD):
        from_torch(ThresholdRouter, WIDTHS, _tokens)


@pytest.mark.slow
def test_phimoes_sparsemixer_is_refused_at_its_call():
    pytest.importorskip("transformers.models.phimoe")
    with pytest.raises(TensorProgError, match=_THRESHOLD):
        from_torch(lambda n: ThresholdRouter(n, phimoe=True), WIDTHS, _tokens)


class ArgmaxIds(ThresholdRouter):
    """The ids of each token's best gate, taken under torch.no_grad by an argmax (no top-k),
    its gate then read by a gather: no selection the tracer follows."""

    def forward(self, idx):
        x = self.e(idx)
        s = self.r(x)
        with torch.no_grad():
            ids = s.argmax(-1, keepdim=True)
        y = torch.stack([f(x) for f in self.experts], -2)
        picked = y.gather(-2, ids[..., None].expand(*ids.shape, y.shape[-1]))[..., 0, :]
        return self.out(x + s.softmax(-1).gather(-1, ids) * picked)


def test_ids_under_no_grad_by_ops_no_selection_follows_are_refused_at_the_line():
    with pytest.raises(TensorProgError, match=r"test_nograd_regions.py:\d+:\d+: error: cannot "
                       r"trace a torch.no_grad region that returns ids or masks alone \(no "
                       r"gradient is lost through them\) computed by ops \(argmax\)"):
        from_torch(ArgmaxIds, WIDTHS, _tokens)


class CarriedOn(Rescaled):
    """The hidden state computed under torch.no_grad and read on (HRM's early cycles)."""

    def forward(self, idx):
        x = self.e(idx)
        with torch.no_grad():
            x = x + self.o(torch.relu(self.h(x)))
        return self.out(x)


def test_a_value_carried_on_from_no_grad_is_refused_at_the_line():
    with pytest.raises(TensorProgError, match=r"test_nograd_regions.py:\d+:\d+: error: cannot "
                       r"trace torch.no_grad: no gradient flows through it"):
        from_torch(CarriedOn, WIDTHS, _tokens)
