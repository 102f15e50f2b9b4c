"""An emitted module takes the file ``tensorprog tune -o FILE`` writes: ``Model.from_config`` sets
its init stds and multipliers, ``make_optimizer(model, config=...)`` its learning rate, and
``load_config`` refuses a file tuned for another module (the refusals are in
tests/test_error_catalogue.py). The files are written here by hand, as tune writes them (the
values, and the scaling of the module they were tuned with): no study runs."""

from __future__ import annotations

import functools
import json

import pytest
from conftest import ROOT

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import Emitted, emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose
from tensorprog.numerics.tune import scaling_record

torch = pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"
TIED = ROOT / "examples" / "transformer.tp"


@functools.cache
def module(path=MLP, param="mup", convention="table3", optimizer="adam", d_in=None):
    """The emitted module of a program (``d_in``: the MLP's input dim set, as tune's data does)."""
    text = path.read_text()
    if d_in is not None:
        text = text.replace("dim d_in = 3072", f"dim d_in = {d_in}")
    program = tp.parse(text)
    opt = OPTIMIZERS[optimizer]
    abc, depth_abc, label, eps = choose(program, opt, param, convention)
    source = emit(program, abc, optimizer=opt, label=label, command="t", depth_abc=depth_abc,
                  eps=eps).source
    return load_module(Emitted(source), param)


def tuned(mod, **values) -> dict:
    """A tune file's JSON for module ``mod`` (its scaling recorded as tune records it)."""
    return {"format": "tensorprog-tune/1", "program": "p", "param": "mup",
            "convention": "table3", "optimizer": "adam", "base_width": mod.BASE_WIDTH,
            "lr": 1e-3, "init_std": {}, "mult": {}, **scaling_record(mod), **values}


def test_the_tuned_std_lr_and_multipliers_reach_the_model_and_optimizer(tmp_path):
    mlp = module()
    path = tmp_path / "best.json"
    path.write_text(json.dumps(tuned(mlp, lr=2e-3, init_std={"W2": 0.1, "W3": 0.02})))
    torch.manual_seed(0)
    model = mlp.Model.from_config(path, 512)  # 2x the base width 256
    # the tuned std is the std at the base: W2 (b = 1/2) starts at 0.1 / sqrt(2) at 2x, W3
    # (b = 1) at 0.02 / 2; measured on 512^2 and 10 x 512 draws (2% and 4%: over 4 standard
    # errors)
    assert model._base_std["W2"] == 0.1 and model._base_std["W3"] == 0.02
    assert float(model.W2.detach().std()) == pytest.approx(0.1 / 2 ** 0.5, rel=0.02)
    assert float(model.W3.detach().std()) == pytest.approx(0.01, rel=0.04)
    assert model._base_std["W1"] == 3072 ** -0.5  # an untuned param keeps its default
    # the same as Model(width, init_std=...) by hand, draw for draw
    torch.manual_seed(0)
    by_hand = mlp.Model(512, init_std={"W2": 0.1, "W3": 0.02})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 by_hand.state_dict().values(), strict=True))
    # the tuned lr, times each group's ratio**-c: W2 and W3 (c = 1) at 2e-3 / 2
    lrs = {g["name"].split(":")[0]: g["lr"] for g in mlp.make_optimizer(model,
                                                                         config=path).param_groups}
    assert lrs == {"c=0": 2e-3, "c=1": 1e-3}
    # tensorprog.load_config's check of a module is the module's own
    config = tp.load_config(path)
    assert config.model_kwargs(mlp)["init_std"] == {"W2": 0.1, "W3": 0.02}


def test_a_tuned_scale_sets_the_models_multiplier_from_the_json_as_a_dict():
    dec = module(TIED)
    base = dec.SCALES["attn"]["base"]
    model = dec.Model.from_config(tuned(dec, mult={"attn": 2 * base}), 128)
    # the attribute the forward multiplies by: the tuned base value at the base width
    assert [v for k, v in vars(model).items() if k.startswith("mult_attn")] == [2 * base]
    with pytest.raises(ValueError, match="give lr or config"):
        dec.make_optimizer(model, 1e-3, config=tuned(dec))
    with pytest.raises(TypeError, match="needs lr, or config=FILE"):
        dec.make_optimizer(model)
    with pytest.raises(ValueError, match="from_config takes init_std"):
        dec.Model.from_config(tuned(dec), 128, init_std={})
