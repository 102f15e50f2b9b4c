"""µTransfer sweeps: the data loaders, fitting a program to its data, the optimum fit, drift and
wider-is-better on synthetic losses, divergence, the per-trial cache and the CLI (tiny sweeps)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorprog as tp
from tensorprog.cli.main import run
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.numerics.data import load
from tensorprog.numerics.transfer import Sweep, _vertex, fit_to_data, run_trial, sweep

torch = pytest.importorskip("torch")
MLP = ROOT / "examples" / "mlp.tp"
TIED = ROOT / "examples" / "transformer.tp"


def test_digits_loader():
    d = load("digits")
    assert tuple(d.x.shape) == (1797, 64) and d.vocab == 10 and not d.is_text
    assert abs(float(d.x.mean())) < 1e-4
    x, y = d.batch(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 64) and y.dtype == torch.long and int(y.max()) < 10


def test_text_loader_is_real_text_from_an_installed_package():
    d = load("text")
    assert d.is_text and d.vocab == 97 and len(d.tokens) > 400_000
    assert int(d.tokens.max()) < d.vocab
    x, y = d.batch(4, torch.Generator().manual_seed(0), seq=8)
    assert x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])  # next-token targets


def test_tensor_files_load(tmp_path):
    torch.save({"x": torch.randn(20, 5), "y": torch.arange(20) % 3}, tmp_path / "set.pt")
    torch.save({"tokens": torch.arange(100) % 7}, tmp_path / "stream.pt")
    labelled, stream = load(str(tmp_path / "set.pt")), load(str(tmp_path / "stream.pt"))
    assert labelled.vocab == 3 and tuple(labelled.x.shape) == (20, 5)
    assert stream.is_text and stream.vocab == 7
    with pytest.raises(tp.UsageError, match="unknown data set"):
        load("cifar")
    torch.save({"x": torch.randn(5, 2), "y": torch.tensor([0.5] * 5)}, tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    torch.save({"x": torch.randn(5, 2), "y": torch.arange(4)}, tmp_path / "short.pt")
    for name, why in (("bad", "non-negative integer labels"), ("junk", "cannot read it"),
                      ("short", "x must be \\(N, d_in\\)")):
        with pytest.raises(tp.UsageError, match=why):
            load(str(tmp_path / f"{name}.pt"))


def test_the_data_sets_the_programs_finite_dims_and_says_so():
    program, notes = fit_to_data(tp.parse_file(MLP), load("digits"))
    assert program.dim_table["d_in"].size == 64 and program.dim_table["d_out"].size == 10
    assert notes == ["input features: d_in = 64 (the program says 3072)"]
    program, notes = fit_to_data(tp.parse_file(TIED), load("text"))
    assert program.dim_table["V"].size == 97
    assert notes == ["vocabulary: V = 97 (the program says 64)"]
    with pytest.raises(tp.UsageError, match="needs one token input"):
        fit_to_data(tp.parse_file(MLP), load("text"))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(center=st.floats(-3, 3), curvature=st.floats(0.1, 10), offset=st.floats(0, 5))
def test_the_optimum_is_the_vertex_of_the_parabola(center, curvature, offset):
    xs = [-1.0, 0.0, 1.0]
    ys = [curvature * (x - center) ** 2 + offset for x in xs]
    assert _vertex(xs, ys) == pytest.approx(min(max(center, -1.0), 1.0), abs=1e-9)


def _synthetic(optima: dict[int, float], diverge: tuple = ()) -> Sweep:
    values = [2.0 ** k for k in range(-8, 1)]
    losses = {"mup": {}}
    for w, c in optima.items():
        losses["mup"][w] = {v: (math.inf if (w, v) in diverge else
                                (math.log2(v) - c) ** 2 + 1.0 / w) for v in values}
    return Sweep("lr", sorted(optima), values, 1, losses)


def test_optima_drift_and_wider_is_better_on_known_curves():
    s = _synthetic({64: -4.3, 128: -4.3, 256: -4.3})
    for w in (64, 128, 256):
        assert s.optimum("mup", w) == (pytest.approx(-4.3), False)
    assert s.drift("mup") == pytest.approx(0.0) and s.wider_is_better("mup")
    moving = _synthetic({64: -2.0, 128: -3.0, 256: -5.5})
    assert moving.drift("mup") == pytest.approx(3.5)
    assert not moving.wider_is_better("mup")  # far from its own optimum, the wide one loses
    edge = _synthetic({64: 2.0, 128: 2.0})
    assert edge.optimum("mup", 64) == (0.0, True)  # the grid's last value, flagged
    broken = _synthetic({64: -4.0, 128: -4.0}, diverge=((128, 1.0),))
    assert not broken.wider_is_better("mup")  # the wider model diverged where the narrow did not
    assert broken.as_dict()["parametrizations"]["mup"]["losses"]["128"]["1.0"] is None


def test_a_divergent_trial_is_recorded_not_raised():
    program, _ = fit_to_data(tp.parse_file(MLP), load("digits"))
    from tensorprog.emit.module import emit, parametrization

    abc, label = parametrization(program, OPTIMIZERS["sgd"], "sp")
    source = emit(program, abc, optimizer="sgd", label=label, command="t").source
    result = run_trial({"source": source, "source_key": "t", "param": "sp", "width": 64,
                        "value": 1e6, "seed": 0, "hp": "lr", "data": "digits", "steps": 20,
                        "batch_size": 16, "seq": None, "optimizer": "sgd", "base_lr": 0.1,
                        "device": "cpu", "threads": 1})
    assert result["diverged"] and result["loss"] is None


def test_sweep_caches_every_trial_and_resumes(tmp_path):
    kw = dict(widths=(32, 64), values=[1e-3, 1e-2, 1e-1], steps=10, seeds=1, jobs=1,
              cache=tmp_path)
    first = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", **kw)
    assert first.settings["cached"] == 0 and len(list((tmp_path / "transfer").glob("*.json"))) == 12
    second = sweep(tp.parse_file(MLP), OPTIMIZERS["adam"], "digits", **kw)
    assert second.settings["cached"] == 12 and second.losses == first.losses
    assert set(first.losses) == {"mup", "sp"}


def test_cli_transfer_json_in_parallel_processes(tmp_path, capsys):
    args = ["transfer", str(TIED), "--data", "text", "--widths", "32,64", "--values",
            "1e-3,3e-3,1e-2", "--steps", "8", "--jobs", "2", "--cache", str(tmp_path),
            "--json", "--plot", str(tmp_path / "t.png")]
    assert run(args) == 0
    data = json.loads(capsys.readouterr().out)
    for param in ("mup", "sp"):
        entry = data["parametrizations"][param]
        assert set(entry["optimal_log2_hp"]) == {"32", "64"}
        assert isinstance(entry["wider_is_better"], bool)
        assert entry["drift_log2"] is None or entry["drift_log2"] >= 0
    assert data["notes"] == ["vocabulary: V = 97 (the program says 64)"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--data", "nope"], "unknown data set"),
    (["--data", "digits", "--values", "1e-3,x"], "comma-separated numbers"),
    (["--data", "digits", "--values", "1e-3,1e-2"], "at least 3 positive"),
    (["--data", "digits", "--param", "mup,xp"], "unknown parametrization xp"),
    (["--data", "digits", "--hp", "momentum"], "invalid choice"),
])
def test_cli_transfer_usage_errors(args, message, capsys):
    from tensorprog.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["transfer", str(MLP), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
