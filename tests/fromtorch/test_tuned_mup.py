"""``MuP(traced, config=...)`` takes the values ``tensorprog tune -o FILE`` wrote for the traced
program: each tuned param starts at its tuned std at the base width (times µP's factor
elsewhere), and ``param_groups`` takes the tuned lr. A file tuned for another convention or
optimizer is refused; a tuned multiplier is applied in the forward, as the emitted module
applies it. The file is written here by hand, as tune writes it for the traced program's emitted
module: no study runs."""

from __future__ import annotations

import pytest

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import Emitted, emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.tune import scaling_record

torch = pytest.importorskip("torch")
nn = torch.nn


class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(8, n), nn.Linear(n, n), nn.Linear(n, 4)

    def forward(self, x):
        return self.out(torch.relu(self.hid(torch.relu(self.inp(x)))))


def test_mup_takes_the_tuned_std_and_lr_and_refuses_another_scaling():
    traced = tp.from_torch(Net, (32, 64), lambda m: (torch.randn(2, 8),))
    program, adam = traced.program, OPTIMIZERS["adam"]
    abc, _, label, eps = choose(program, adam, "mup", "table3")
    module = load_module(Emitted(emit(program, abc, optimizer=adam, label=label, command="t",
                                      eps=eps).source), "mup")
    config = {"format": "tensorprog-tune/1", "program": program.name, "param": "mup",
              "convention": "table3", "optimizer": "adam", "base_width": 32, "lr": 3e-3,
              "init_std": {"hid_weight": 0.05, "out_weight": 0.04}, "mult": {},
              **scaling_record(module)}
    mup = tp.MuP(traced, "adam", config=config)
    torch.manual_seed(0)
    base, wide = Net(32), Net(128)
    own = float(base.inp.weight.detach().std())
    mup.apply(base)
    mup.apply(wide)
    # at the base width a tuned param starts at its tuned std, an untuned one keeps its own;
    # at 4x the tuned std times 4^-1/2 (hidden) and 4^-1 (output); measured stds of 1024 to
    # 16,384 draws, rescaled to the target exactly
    assert float(base.hid.weight.detach().std()) == pytest.approx(0.05)
    assert float(base.inp.weight.detach().std()) == pytest.approx(own)
    assert float(wide.hid.weight.detach().std()) == pytest.approx(0.025)
    assert float(wide.out.weight.detach().std()) == pytest.approx(0.01)
    # the tuned lr, times each tensor's ratio**-c: hidden and output weights at 3e-3 / 4
    lrs = {p.shape: g["lr"] for g in mup.param_groups(wide) for p in g["params"]}
    assert lrs[(128, 128)] == pytest.approx(7.5e-4) and lrs[(128, 8)] == pytest.approx(3e-3)
    with pytest.raises(tp.UsageError, match=r"out_weight has a 0.0 there, 1.0 here"):
        tp.MuP(traced, "adam", convention="mup", config=config)  # another convention
    with pytest.raises(tp.UsageError, match=r"has c 0.0 there, -1.0 here"):
        tp.MuP(traced, "sgd", config=config)  # another optimizer
    with pytest.raises(tp.UsageError, match=r"this MuP is for traced \(mup, table3 .*another "
                                            r"program"):
        tp.MuP(traced, "adam", config={**config, "program": "mlp"})
    with pytest.raises(tp.UsageError, match=r"hid_weight=2.0: no scale of the traced program"):
        tp.MuP(traced, "adam", config={**config, "mult": {"hid_weight": 2.0}})
    with pytest.raises(tp.UsageError, match="param_groups needs lr"):
        tp.MuP(traced, "adam").param_groups(wide)


def _config(traced, mult: dict) -> dict:
    program, adam = traced.program, OPTIMIZERS["adam"]
    abc, _, label, eps = choose(program, adam, "mup", "table3")
    module = load_module(Emitted(emit(program, abc, optimizer=adam, label=label, command="t",
                                      eps=eps).source), "mup")
    record = scaling_record(module)
    mult = {k: v * float(record["scales"][k]["base"]) for k, v in mult.items()}
    return {"format": "tensorprog-tune/1", "program": program.name, "param": "mup",
            "convention": "table3", "optimizer": "adam", "base_width": 64, "lr": 1e-3,
            "init_std": {}, "mult": mult, **record}


@pytest.mark.slow  # ~2 s; a tuned file's multipliers are applied by the tests above
def test_a_tuned_multiplier_scales_the_logits_it_was_tuned_on():
    # the attention's tuned x2 on its logits is x2 on the query (logits are linear in it: a
    # patch on the query's own layer), a tied readout's x0.5 halves the output; the model
    # otherwise as MuP without the file leaves it, at the base width and at 4x
    from tests.fromtorch.test_trace import NanoGPT, Untied, _tokens

    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    untied = tp.from_torch(Untied, (64, 128), _tokens)
    attn = "attn_scaled_dot_product_attention"
    tuned = tp.MuP(untied, "adam", config=_config(untied, {attn: 2.0}))
    for width in (64, 256):
        torch.manual_seed(0)
        model = Untied(width)
        tp.MuP(untied, "adam").apply(model)
        with torch.no_grad():
            model.q.weight.mul_(2.0)
            model.q.bias.mul_(2.0)
            want = model(ids)
            model.q.weight.div_(2.0)
            model.q.bias.div_(2.0)
        report = tuned.apply(model)
        assert any("tuned multiplier x2 on the query q.weight" in line for line in report.lines)
        with torch.no_grad():
            assert torch.allclose(model(ids), want, atol=1e-5)

    nano = tp.from_torch(NanoGPT, (64, 128), _tokens)
    tie = next(s for s in nano.scales if s.startswith("tie"))
    plain, halved = (tp.MuP(nano, "adam", config=_config(nano, {tie: c})) for c in (1.0, 0.5))
    torch.manual_seed(0)
    model = NanoGPT(256)
    plain.apply(model)
    with torch.no_grad():
        want = model(ids) * 0.5
    plain.remove_patches(model)  # one MuP's patches on a model at a time
    halved.apply(model)
    with torch.no_grad():
        assert torch.allclose(model(ids), want, atol=1e-6)
    with pytest.raises(tp.UsageError, match="a multiplier must be a finite number > 0"):
        tp.MuP(nano, "adam", config=_config(nano, {tie: -1.0}))


def test_attentions_that_share_a_query_layer_take_its_tuned_multiplier_once():
    # ALBERT's shape: one layer's q called for both attentions, each its own scale; tuned
    # alike, one patch multiplies every call's query by 2 (two patches gave 4); unlike, the
    # layer cannot carry both, and MuP says so
    from tests.fromtorch.test_fold_readers import Shared, _tokens

    traced = tp.from_torch(Shared, (64, 128), _tokens)
    first, second = sorted(s for s in traced.scales if s.startswith("attn"))
    mup = tp.MuP(traced, "adam", config=_config(traced, {first: 2.0, second: 2.0}))
    torch.manual_seed(0)
    model = Shared(64)
    mup.apply(model)
    seen = []
    hook = model.q.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    with torch.no_grad():
        model(*_tokens(model))
    hook.remove()
    for x, out in seen:
        torch.testing.assert_close(out, 2 * torch.nn.functional.linear(x, model.q.weight))
    with pytest.raises(tp.UsageError, match="tuned multipliers x3 and x2, but one layer"):
        tp.MuP(traced, "adam", config=_config(traced, {first: 2.0, second: 3.0}))


def test_one_query_read_by_two_attentions_takes_their_tuned_multiplier_once():
    # one normalised query, the query of both logits: tuned alike, one patch doubles it (two
    # gave 4), and the check reads the program's query as the model's over 2 (over 4 before)
    from tests.fromtorch.test_fold_readers import TwoReads, _norm_scale, _tokens

    traced = tp.from_torch(TwoReads, (64, 128), _tokens)
    first, second = sorted(s for s in traced.scales if s.startswith("attn"))
    mup = tp.MuP(traced, "adam", config=_config(traced, {first: 2.0, second: 2.0}))
    torch.manual_seed(0)
    model = TwoReads(64)
    mup.apply(model)
    assert _norm_scale(model) == [pytest.approx(2.0)]
    assert mup.unfolded(model) == {traced.scales[first]["q"]: pytest.approx(0.5)}
