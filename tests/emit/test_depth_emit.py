"""The emitted module applies the depth exponents, and check/transfer measure them over the depth:
each factor is (depth / base_depth) to the minus its exponent, 1 at the base depth; under the
derived (CompleteP) exponents the residual stream and the block features change Θ(1) as L grows,
without depth scaling the stream's change grows with L."""

from __future__ import annotations

import json
import math

import pytest
from conftest import RESMLP, ROOT, import_file

import tensorprog as tp
from tensorprog.cli.main import main
from tensorprog.emit.module import emit
from tensorprog.engine.exponents import ABC
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose

torch = pytest.importorskip("torch")


def _module(tmp_path, param="mup", depth_abc=None, name="resmlp"):
    program = tp.parse(RESMLP)
    abc, derived, label, eps = choose(program, OPTIMIZERS["adam"], param)
    path = tmp_path / f"{name}.py"
    path.write_text(
        emit(
            program,
            abc,
            optimizer=OPTIMIZERS["adam"],
            label=label,
            command="t",
            depth_abc=derived if depth_abc is None else depth_abc,
            eps=eps,
        ).source
    )
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
    assert names == ["c=0, cL=0: W_in", "c=1, cL=0: W_out", "c=1, cL=0: res.W1, res.W2"]


def test_init_std_and_lr_follow_their_depth_exponents(tmp_path):
    # exponents of no particular parametrization, to see each factor on its own
    given = {"res.W2": ABC(0, 1, 2), "res.W1": ABC(0, "1/2", 0)}
    m = _module(tmp_path, depth_abc=given, name="resmlp_given")
    base, deep = m.Model(64, 4, dtype=torch.float64), m.Model(64, 16, dtype=torch.float64)
    for model in (base, deep):
        model.reset_parameters(generator=torch.Generator().manual_seed(0))

    def std(model, attr):
        return torch.cat([getattr(b, attr).flatten() for b in model.res]).std().item()

    assert std(deep, "W2") / std(base, "W2") == pytest.approx(4.0**-1, rel=0.05)
    assert std(deep, "W1") / std(base, "W1") == pytest.approx(4.0**-0.5, rel=0.05)
    assert _lr(m, deep, "res.W2") / _lr(m, base, "res.W2") == pytest.approx(4.0**-2)
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
    result = tp.check(
        program,
        "adam",
        param=param,
        depths=(2, 4, 8, 16),
        width=32,
        steps=2,
        seeds=1,
        lr=1e-3,
        batch_size=8,
        device="cpu",
    )
    assert result.settings["axis"] == "depth" and result.widths == [2, 4, 8, 16]
    return {name: result.slope(name, 2) for name in ("hL", "res.*.h", "res.*.u")}


def test_completep_keeps_the_stream_and_features_moving_at_every_depth():
    # measured (seed 0, base depth 1): derived hL -0.08, res.*.h +0.11, res.*.u 0.00; no depth
    # scaling hL +2.6: the stream's change grows with L (exponentially: each block adds to it)
    derived, none = _slopes("mup"), _slopes("mup-width")
    for name, slope in derived.items():
        assert abs(slope) < 0.25, (name, slope)
    assert none["hL"] > 1.0 and none["res.*.u"] > 1.0


def test_check_depths_judges_the_depth_exponents(tmp_path, capsys):
    path = tmp_path / "res.tp"
    path.write_text(RESMLP)
    code = main_code(
        [
            "check",
            str(path),
            "--depths",
            "2,4,8",
            "--width",
            "16",
            "--steps",
            "2",
            "--seeds",
            "1",
            "--lr",
            "1e-3",
            "--json",
            "--device",
            "cpu",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and data["axis"] == "depth" and data["widths"] == [2, 4, 8]
    expected = {t["name"]: t["expected"] for t in data["tensors"] if t["step"] == 2}
    assert expected["res.*.out_2"] == "-1" and expected["hL"] == "0"


def main_code(argv) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code


def test_transfer_sweeps_across_depths():
    from tensorprog.numerics.transfer import render, sweep

    program = tp.parse_file(ROOT / "examples" / "resmlp_deep.tp")
    s = sweep(
        program,
        OPTIMIZERS["adam"],
        "digits",
        params=("mup",),
        depths=(2, 4),
        width=16,
        values=(1e-3, 4e-3, 1.6e-2),
        steps=3,
        seeds=1,
        batch_size=8,
        jobs=1,
        cache=None,
    )
    assert s.widths == [2, 4] and s.settings["axis"] == "depth"
    assert all(math.isfinite(x) for row in s.losses["mup"].values() for x in row.values())
    assert "drift across depths" in render(s) and "L=4" in render(s)


# --- Adam's ε ----------------------------------------------------------------------------------


def test_eps_follows_the_gradient_entries_in_width_and_depth():
    # by hand: df/dW = (df/dy) xᵀ; under µP with Adam every hidden vector's gradient is 1/n and
    # the readout's is 1, so W_in, W1, W2 have entries 1/n and W_out Θ(1); in L (CompleteP) the
    # branch's multiplier 1/L reaches W2's gradient and, through W2ᵀ, W1's: both 1/L
    d = tp.derive(tp.parse(RESMLP), "adam")
    assert {p: str(e) for p, e in d.eps.items()} == {
        "W_in": "1",
        "W_out": "0",
        "res.W1": "1",
        "res.W2": "1",
    }
    assert {p: str(e) for p, e in d.eps_depth.items()} == {
        "W_in": "0",
        "W_out": "0",
        "res.W1": "1",
        "res.W2": "1",
    }
    assert tp.derive(tp.parse(RESMLP), "sgd").eps == {}  # SGD has no ε


def test_eps_of_a_param_shared_by_the_repetitions_is_not_derived_in_depth(tmp_path, capsys):
    shared = RESMLP.replace("param W_out : [d_out, n]", "param W_out : [d_out, n]\nparam g : [n]")
    shared = shared.replace("u = W1 @ h ", "u = W1 @ (g * h)")
    d = tp.derive(tp.parse(shared), "adam")
    assert "g" in d.eps and "g" not in d.eps_depth
    assert "sums over the depth" in d.eps_depth_refused["g"]
    path = tmp_path / "shared.tp"
    path.write_text(shared)
    assert main_code(["derive", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["parameters"]
    assert data["res.W1"]["eps"] == "1" and data["res.W1"]["depth"]["eps"] == "1"
    assert "eps" not in data["g"]["depth"]


def test_each_group_gets_its_eps_and_the_gradients_scale_so(tmp_path):
    m = _module(tmp_path)
    assert m.SCALING["res.W1"]["eps"] == 1.0 and m.SCALING["W_out"]["epsL"] == 0.0

    def grads(width, depth):
        # base depth 1: each branch starts 1/L small, so the finite-depth terms (in the L^-1/2
        # sums over the repetitions) start small too; with the base at 4 they took W_in's
        # gradient slope from depth 4 to 16 to -0.43 (its exponent 0 holds as L -> oo)
        model = m.Model(width, depth, base_depth=1, dtype=torch.float64)
        model.reset_parameters(generator=torch.Generator().manual_seed(0))
        x = model.example_inputs(16, generator=torch.Generator().manual_seed(1))
        y = model(*x)
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).mean().backward()
        rms = {
            n: torch.cat([t.grad.flatten() for t in model._tensors(n, s)]).pow(2).mean().sqrt()
            for n, s in m.SCALING.items()
        }
        eps = {n: g["eps"] for g in m.param_groups(model, 1.0) for n in g["entries"]}
        return rms, eps

    (g0, e0), (gw, ew), (gd, ed) = grads(128, 4), grads(512, 4), grads(128, 16)
    for name, spec in m.SCALING.items():  # gradient RMS and ε move together, x4 in each
        assert ew[name] / e0[name] == 4.0 ** -spec["eps"]
        assert ed[name] / e0[name] == 4.0 ** -spec["epsL"]
        assert math.log(gw[name] / g0[name], 4) == pytest.approx(-spec["eps"], abs=0.2), name
        assert math.log(gd[name] / g0[name], 4) == pytest.approx(-spec["epsL"], abs=0.3), name
    opt = m.make_optimizer(m.Model(128, 16), 1e-3, eps=1e-6)
    assert {g["eps"] for g in opt.param_groups} == {1e-6 / 4, 1e-6}
