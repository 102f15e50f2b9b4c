"""The emitted module applies the depth exponents, and check/transfer measure them over the depth:
each factor is (depth / base_depth) to the minus its exponent, 1 at the base depth; under the
derived (CompleteP) exponents the residual stream and the block features change Θ(1) as L grows,
without depth scaling the stream's change grows with L."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, import_file
from test_depth import RESMLP

import tensorprog as tp
from tensorprog.analysis import ABC
from tensorprog.cli import main
from tensorprog.codegen import emit, full_parametrization
from tensorprog.optimizers import OPTIMIZERS

torch = pytest.importorskip("torch")


def _module(tmp_path, param="mup", depth_abc=None, name="resmlp"):
    program = tp.parse(RESMLP)
    abc, derived, label = full_parametrization(program, OPTIMIZERS["adam"], param)
    path = tmp_path / f"{name}.py"
    path.write_text(emit(program, abc, optimizer="adam", label=label, command="t",
                         depth_abc=derived if depth_abc is None else depth_abc).source)
    return import_file(path, name)


def _lr(m, model, entry: str) -> float:
    return next(g["lr"] for g in m.param_groups(model, 1.0) if entry in g["entries"])


def test_the_derived_exponents_scale_the_branch_with_the_depth(tmp_path):
    m = _module(tmp_path)
    assert (m.SCALING["res.W2"]["aL"], m.SCALING["res.W1"]["aL"]) == (1.0, 0.0)
    deep = m.Model(16, 8, dtype=torch.float64)  # base depth 4: the branch's multiplier 4/8
    assert [b.mult_W2 for b in deep.res] == [0.5] * 8 and not hasattr(deep.res[0], "mult_W1")
    assert m.Model(16, 4).res[0].mult_W2 == 1.0  # every factor is 1 at the base depth
    assert _lr(m, deep, "res.W2") == _lr(m, m.Model(16, 4), "res.W2")  # cL = 0 under Adam
    names = [g["name"] for g in m.param_groups(deep, 1.0)]
    assert names == ["c=0, cL=0: W_in", "c=1, cL=0: W_out, res.W1, res.W2"]


def test_init_std_and_lr_follow_their_depth_exponents(tmp_path):
    # exponents of no particular parametrization, to see each factor on its own
    given = {"res.W2": ABC(0, 1, 2), "res.W1": ABC(0, "1/2", 0)}
    m = _module(tmp_path, depth_abc=given, name="resmlp_given")
    base, deep = m.Model(64, 4, dtype=torch.float64), m.Model(64, 16, dtype=torch.float64)
    for model in (base, deep):
        model.reset_parameters(generator=torch.Generator().manual_seed(0))

    def std(model, attr):
        return torch.cat([getattr(b, attr).flatten() for b in model.res]).std().item()

    assert std(deep, "W2") / std(base, "W2") == pytest.approx(4.0 ** -1, rel=0.05)
    assert std(deep, "W1") / std(base, "W1") == pytest.approx(4.0 ** -0.5, rel=0.05)
    assert _lr(m, deep, "res.W2") / _lr(m, base, "res.W2") == pytest.approx(4.0 ** -2)
    assert _lr(m, deep, "res.W1") == _lr(m, base, "res.W1")
    assert _lr(m, deep, "W_in") == _lr(m, base, "W_in")  # absent: no depth scaling


def test_at_the_base_depth_the_module_is_width_only_mup(tmp_path):
    derived, width_only = _module(tmp_path), _module(tmp_path, "mup-width", name="width_only")
    assert all(spec["aL"] == 0.0 for spec in width_only.SCALING.values())
    a, b = derived.Model(32, dtype=torch.float64), width_only.Model(32, dtype=torch.float64)
    for model in (a, b):
        model.reset_parameters(generator=torch.Generator().manual_seed(3))
    x = a.example_inputs(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a(*x), b(*x))


def _slopes(param: str) -> dict[str, float]:
    """Change slopes against L (after step 2) at width 32, depths 2..16, one seed."""
    program = tp.parse(RESMLP)
    result = tp.check(program, "adam", param=param, depths=(2, 4, 8, 16), width=32, steps=2,
                      seeds=1, lr=1e-3, batch_size=8, device="cpu")
    assert result.settings["axis"] == "depth" and result.widths == [2, 4, 8, 16]
    return {name: result.slope(name, 2) for name in ("hL", "res.*.h", "res.*.u")}


def test_completep_keeps_the_stream_and_features_moving_at_every_depth():
    # measured (seed 0): derived hL -0.15, res.*.h +0.05, res.*.u -0.04; no depth scaling
    # hL +3.6: the stream's change grows with L (exponentially here: each block adds to it)
    derived, none = _slopes("mup"), _slopes("mup-width")
    for name, slope in derived.items():
        assert abs(slope) < 0.25, (name, slope)
    assert none["hL"] > 1.0 and none["res.*.u"] > 1.0


def test_check_depths_judges_the_depth_exponents(tmp_path, capsys):
    path = tmp_path / "res.tp"
    path.write_text(RESMLP)
    code = main_code(["check", str(path), "--depths", "2,4,8", "--width", "16", "--steps", "2",
                      "--seeds", "1", "--lr", "1e-3", "--json", "--device", "cpu"])
    data = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and data["axis"] == "depth" and data["widths"] == [2, 4, 8]
    expected = {t["name"]: t["expected"] for t in data["tensors"] if t["step"] == 2}
    assert expected["res.*.out_2"] == "-1" and expected["hL"] == "0"


def main_code(argv) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


@pytest.mark.parametrize(("argv", "message"), [
    (["check", "examples/mlp.tp", "--depths", "2,4"], "repeats no block over a depth"),
    (["check", "examples/resmlp_deep.tp", "--width", "64"], "--width sets the width"),
    (["check", "examples/resmlp_deep.tp", "--depths", "4"], "at least two different positive"),
    (["transfer", "examples/mlp.tp", "--data", "digits", "--depths", "2,4"],
     "repeats no block over a depth"),
])
def test_depth_axis_errors(argv, message, capsys):
    argv = [str(ROOT / a) if a.endswith(".tp") else a for a in argv]
    assert main_code(argv) == 2
    assert message in capsys.readouterr().err


def test_transfer_sweeps_across_depths():
    from tensorprog.transfer import render, sweep

    program = tp.parse_file(ROOT / "examples" / "resmlp_deep.tp")
    s = sweep(program, OPTIMIZERS["adam"], "digits", params=("mup",), depths=(2, 4), width=16,
              values=(1e-3, 4e-3, 1.6e-2), steps=3, seeds=1, batch_size=8, jobs=1, cache=None)
    assert s.widths == [2, 4] and s.settings["axis"] == "depth"
    assert all(math.isfinite(x) for row in s.losses["mup"].values() for x in row.values())
    assert "drift across depths" in render(s) and "L=4" in render(s)
