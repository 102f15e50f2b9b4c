"""Optimizer geometry: Muon's spectral rule against the spectral condition (Yang, Simon & Bernstein,
arXiv 2310.17813) and against torch's own orthogonalisation; Lion and SGD with momentum against
Adam's and SGD's exponents; the emitted Muon+AdamW optimizer and the weight-decay modes."""

from __future__ import annotations

import math

import pytest
from sympy import Rational

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.cli.main import main  # noqa: E402
from tensorprog.emit.load import load_module  # noqa: E402
from tensorprog.emit.module import emit  # noqa: E402
from tensorprog.emit.optim import muon_params  # noqa: E402
from tensorprog.engine.derive import derive  # noqa: E402
from tensorprog.engine.exponents import canon  # noqa: E402
from tensorprog.engine.optimizers import OPTIMIZERS, muon  # noqa: E402
from tensorprog.engine.parametrization import choose  # noqa: E402
from tensorprog.engine.terms import fan_dims  # noqa: E402

EXAMPLES = sorted((ROOT / "examples").glob("*.tp"))
DEEP_MLP = (
    "width n = 64\ndim d = 5\ndim o = 3\ndim f = 2 * n\ninput x : [d]\n"
    "param W1 : [n, d]\nparam W2 : [f, n]\nparam W3 : [n, f]\nparam W4 : [o, n]\n"
    "h = relu(W2 @ relu(W1 @ x))\noutput y = W4 @ relu(W3 @ h)\n"
)


def _inf(program, dim) -> int:
    return int(dim is not None and program.dim_table[dim].infinite)


@pytest.mark.parametrize(
    "source", [(ROOT / "examples" / "mlp.tp").read_text(), DEEP_MLP], ids=["mlp", "deep_mlp"]
)
@pytest.mark.parametrize("convention", ["table3", "mup", "tp4"])
def test_muon_exponents_meet_the_spectral_condition(source, convention):
    """SPEC: feature learning needs ‖W‖* and ‖ΔW‖* = Θ(√(fan_out/fan_in)). The orthogonalised step
    has unit spectral norm, so ‖ΔW‖* = n^-a·η·n^-c: -a-c must be ½([fan_out inf] - [fan_in
    inf]) for every matrix Muon takes, in every convention; and ‖W₀‖* ≈ √n_max·(entry size)
    gives init entries n^-(a+b) = n^(-½[fan_in inf]) · min(1, √(fan_out/fan_in))."""
    program = tp.parse(source)
    d = derive(program, muon(io=True), convention)
    matrices = muon_params(program, d.optimizer, list(d.abc))
    assert matrices == [p.name for p in program.params if len(p.shape) == 2]
    for p in matrices:
        x = d.abc[p]
        fin, fout = (_inf(program, f) for f in fan_dims(program, p))
        assert -x.a - x.c == Rational(fout - fin, 2), p
        spec_init = Rational(-fin, 2) + min(0, Rational(fout - fin, 2))
        assert -(x.a + x.b) == spec_init, p


def test_muon_lr_factor_is_sqrt_fan_out_over_fan_in_per_matrix():
    """With every multiplier 1 (table3), the LR of each Muon matrix scales as √(fan_out/fan_in)
    (Megatron's finding, SPEC's condition); torch's default √max(1, fan_out/fan_in) does not."""
    program = tp.parse(DEEP_MLP)
    d = derive(program, muon(io=True), "table3")
    for p in muon_params(program, d.optimizer, list(d.abc)):
        fin, fout = (_inf(program, f) for f in fan_dims(program, p))
        assert -d.abc[p].c == Rational(fout - fin, 2)


def test_muon_hidden_only_keeps_adam_for_the_rest():
    """Muon by default takes hidden matrices; input and output weights, biases and lookups keep
    AdamW's exponents, exactly as under adam."""
    program = tp.parse(DEEP_MLP)
    m, a = derive(program, OPTIMIZERS["muon"]).abc, derive(program, OPTIMIZERS["adam"]).abc
    assert muon_params(program, OPTIMIZERS["muon"], list(m)) == ["W2", "W3"]
    for p in ("W1", "W4"):
        assert m[p] == a[p]
    for p in ("W2", "W3"):  # Adam: η/n; Muon: η (√(fan_out/fan_in) is a constant)
        assert (a[p].c, m[p].c) == (1, 0)


def test_lookups_and_tied_embeddings_stay_with_adamw():
    program = tp.parse_file(ROOT / "examples" / "gpt.tp")
    chosen = muon_params(program, muon(io=True), [p.name for p in program.params])
    assert "E" not in chosen and "P" not in chosen
    assert {"layer.Wq", "layer.Wi", "layer.Wp"} <= set(chosen)


@pytest.mark.parametrize("same, as_", [("lion", "adam"), ("momentum", "sgd")])
def test_lion_and_momentum_take_adam_and_sgd_exponents(same, as_):
    for path in EXAMPLES[:4]:
        program = tp.parse_file(path)
        assert derive(program, OPTIMIZERS[same]).abc == derive(program, OPTIMIZERS[as_]).abc


def test_muon_symmetry_is_adams():
    """Muon's step does not depend on the gradient's scale: the symmetry shifts c by -θ, so
    a + c is the same in every convention."""
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    assert "c-θ" in OPTIMIZERS["muon"].symmetry()
    by = {conv: derive(program, muon(io=True), conv).abc for conv in ("table3", "mup", "tp4")}
    for p in by["table3"]:
        assert len({x[p].a + x[p].c for x in by.values()}) == 1


@pytest.mark.parametrize("dims, slope_gain", [(("n", "n"), 0.0), (("n", 8), -0.5), ((8, "n"), 0.5)])
def test_torch_orthogonalisation_scales_as_the_spectral_rule(dims, slope_gain):
    """Independent of the engine: torch's Newton-Schulz step on a low-rank gradient has a spectral
    norm independent of the width (so, at rank k, entries √k/√(fan_in·fan_out)) and moves an
    input aligned with the gradient by √(fan_in/fan_out) (an LLN sum, not a CLT one): the slopes
    the spectral rule and the matmul rule give. Its bf16 rounding, amplified by the iteration,
    adds some small singular values, so entry RMS is not compared directly. Seeded, rank 1;
    tolerance 0.05 in log-log slope between widths 128 and 512 (the slopes measured there are
    within 0.003 of those from 128 to 1024; torch iterates in bfloat16, which a CPU without bf16
    units runs about 100x slower than float32, so 1024 alone took 40 s of the suite)."""
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

    gen = torch.Generator().manual_seed(0)
    logs = []
    for n in (128, 512):
        rows, cols = (n if d == "n" else d for d in dims)
        u, v = torch.randn(rows, 1, generator=gen), torch.randn(cols, 1, generator=gen)
        o = _zeropower_via_newtonschulz(u @ v.T, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, 1e-7)
        o, x = o.float(), v[:, 0]
        gain = (o @ x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
        norm = torch.linalg.matrix_norm(o, 2)
        logs.append((math.log(n), math.log(norm), math.log(gain)))
    (n0, s0, g0), (n1, s1, g1) = logs
    assert (s1 - s0) / (n1 - n0) == pytest.approx(0.0, abs=0.05)
    assert (g1 - g0) / (n1 - n0) == pytest.approx(slope_gain, abs=0.05)


# --- the emitted optimizer ------------------------------------------------------------------------


def _module(source, optimizer, name, param="mup"):
    program = tp.parse(source)
    abc, _, label, _ = choose(program, optimizer, param)
    return load_module(emit(program, abc, optimizer=optimizer, label=label, command="t"), name)


def _torch_muon_lr(group, tensor):
    rows, cols = tensor.shape
    return group["lr"] * math.sqrt(max(1.0, rows / cols))


def test_emitted_muon_steps_with_sqrt_fan_out_over_fan_in_once():
    """torch.optim.Muon multiplies each lr by √max(1, fan_out/fan_in) itself: the groups undo
    it, so the step lr of every Muon matrix scales with width as √(fan_out/fan_in), once."""
    m = _module(DEEP_MLP, muon(io=True), "optim_muon_io")
    steps = {}
    for width in (64, 256):
        model = m.Model(width)
        opt = m.make_optimizer(model, 0.01)
        assert isinstance(opt, m.MuonWithAdamW)
        steps[width] = {
            name: (_torch_muon_lr(g, getattr(model, name)) if g["muon"] else g["lr"])
            for g in opt.param_groups
            for name in g["entries"]
        }
        assert {n for g in opt.param_groups if g["muon"] for n in g["entries"]} == {
            "W1",
            "W2",
            "W3",
            "W4",
        }
    fans = {"W1": (0, 1), "W2": (1, 1), "W3": (1, 1), "W4": (1, 0)}
    for name, (fin, fout) in fans.items():
        assert steps[256][name] / steps[64][name] == pytest.approx(4 ** ((fout - fin) / 2))
    # at the base width, each matrix steps as plain torch Muon would
    base = m.Model(64)
    for g in m.param_groups(base, 0.01):
        if g["muon"]:
            assert g["lr"] == pytest.approx(0.01)


def test_emitted_muon_trains():
    m = _module(DEEP_MLP, OPTIMIZERS["muon"], "optim_muon_train")
    torch.manual_seed(0)
    model = m.Model(128)
    opt = m.make_optimizer(model, 0.02, weight_decay=0.1, decay="decoupled", adamw_lr=1e-3)
    x = model.example_inputs(16, generator=torch.Generator().manual_seed(1))
    target = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(5):
        loss = ((model(*x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    state = opt.state_dict()
    opt.load_state_dict(state)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["entries"]}
    # W2 [2n, n]: torch's own factor √2 is the base width's, so the group keeps lr itself
    assert lrs["W1"] == pytest.approx(1e-3) and lrs["W2"] == pytest.approx(0.02)


@pytest.mark.parametrize("decay", ["coupled", "decoupled", "independent"])
def test_weight_decay_modes(decay):
    """Per step, decoupled shrinks w by lr_p·wd (less wherever lr_p shrinks), independent by wd
    at every width; coupled hands wd to the gradient."""
    m = _module(DEEP_MLP, OPTIMIZERS["adam"], f"optim_wd_{decay}")
    for width in (64, 256):
        groups = m.param_groups(m.Model(width), 0.01, 0.1, decay)
        for g in groups:
            expected = 0.1 / g["lr"] if decay == "independent" else 0.1
            assert g["weight_decay"] == pytest.approx(expected)
    opt = m.make_optimizer(m.Model(64), 0.01, weight_decay=0.1, decay=decay)
    assert type(opt) is (torch.optim.Adam if decay == "coupled" else torch.optim.AdamW)


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_weight_decay_reaches_matrices_only_by_default(optimizer):
    """An emitted module decays the 2-D params (matrices, embedding tables) and leaves gains
    and biases alone unless decay_params says otherwise: "all", SCALING names, or a predicate."""
    source = (ROOT / "examples" / "gpt.tp").read_text()
    m = _module(source, OPTIMIZERS[optimizer], f"optim_wd_params_{optimizer}")
    model = m.Model(64)

    def decays(**kw):
        groups = m.param_groups(model, 0.01, 0.1, "decoupled", **kw)
        wd = {id(t): g["weight_decay"] for g in groups for t in g["params"]}
        return {name for name, spec in m.SCALING.items()
                if any(wd[id(t)] for t in model._tensors(name, spec))}

    dims = {name: model._tensors(name, spec)[0].dim() for name, spec in m.SCALING.items()}
    assert {n for n, d in dims.items() if d < 2}  # gains or biases to leave alone
    assert decays() == {n for n, d in dims.items() if d >= 2}
    assert decays(decay_params="all") == set(m.SCALING)
    one = next(iter(m.SCALING))
    assert decays(decay_params={one}) == {one}
    assert decays(decay_params=lambda name, t: t.dim() == 1) == {
        n for n, d in dims.items() if d == 1}
    opt = m.make_optimizer(model, 0.01, weight_decay=0.1, decay="decoupled", decay_params="all")
    assert all(g["weight_decay"] for g in opt.param_groups)


def test_weight_decay_needs_its_meaning():
    m = _module(DEEP_MLP, OPTIMIZERS["muon"], "optim_wd_refused")
    model = m.Model(64)
    with pytest.raises(ValueError, match="say what weight_decay means"):
        m.param_groups(model, 0.01, 0.1)
    with pytest.raises(ValueError, match="decay must be one of"):
        m.param_groups(model, 0.01, 0.1, "l2")
    with pytest.raises(ValueError, match="muon decays decoupled only"):
        m.make_optimizer(model, 0.01, weight_decay=0.1, decay="coupled")
    # independent decay through torch's Muon: lr_g·wd_g = wd, whatever torch's lr factor
    for g in m.param_groups(model, 0.01, 0.1, "independent"):
        assert g["lr"] * g["weight_decay"] == pytest.approx(0.1)


def test_emitted_lion_and_momentum_step():
    lion = _module(DEEP_MLP, OPTIMIZERS["lion"], "optim_lion")
    model = lion.Model(64)
    opt = lion.make_optimizer(model, 1e-3)
    assert isinstance(opt, lion.Lion)
    before = model.W2.detach().clone()
    model(*model.example_inputs(4)).sum().backward()
    opt.step()
    step = (model.W2.detach() - before).abs()
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 1e-3))
    sgd = _module(DEEP_MLP, OPTIMIZERS["momentum"], "optim_momentum")
    opt = sgd.make_optimizer(sgd.Model(64), 0.1)
    assert opt.param_groups[0]["momentum"] == 0.9


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_cli_muon_io_needs_muon(capsys):
    code, _, err = _run(capsys, "derive", str(ROOT / "examples" / "mlp.tp"), "--muon-io")
    assert code != 0 and "--muon-io chooses Muon's matrices, but the optimizer is adam" in err


@pytest.mark.slow  # ~2 s; every example's Muon exponents are also checked in the golden files
def test_cli_classify_muon_for_every_example(capsys):
    """derive --optimizer muon is pinned for every example by the golden tables."""
    for path in EXAMPLES:
        _, out, _ = _run(capsys, "classify", str(path), "--optimizer", "muon", "--preset", "mup")
        assert "regime: feature_learning" in out, path
    _, out, _ = _run(
        capsys,
        "classify",
        str(ROOT / "examples" / "mlp.tp"),
        "--optimizer",
        "muon",
        "--preset",
        "sp",
    )
    assert "regime: unstable" in out


@pytest.mark.slow  # bfloat16 orthogonalisation on a CPU without bf16 units: the suite's longest
def test_check_muon_passes_mup_and_fails_unscaled_muon_on_the_mlp():
    """The coordinate check: derived µP under Muon keeps every slope flat; Muon with no width
    scaling (sp: every c = 0) lets the AdamW readout move the output as n (slope +0.74 over
    64..512 after 3 steps). One seed, fixed; tolerance ±0.15 as the command's. Widths up to 512:
    torch's Muon orthogonalises in bfloat16, about 100x slower than float32 on a CPU without
    bf16 units, and width 1024 made this test 140 s of the suite (there: +0.8, the same verdicts).
    """
    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    options = {"widths": (64, 128, 256, 512), "seeds": 1, "steps": 3}
    assert tp.check(program, "muon", **options).passed
    unscaled = tp.check(program, "muon", param="sp", **options)
    assert not unscaled.passed and list(unscaled.failures) == ["y"]


def test_derive_states_how_weight_decay_scales_per_param():
    """Adam µP (table3): the hidden W2 has lr η/n, so decoupled decay shrinks it by η·λ/n per
    step; independent keeps λ; coupled λw meets W2's gradient (entries 1/n, w entries 1/√n)
    with weight √n inside the normaliser. A depth program states the power of L too."""
    from tensorprog.engine.derivation import derive_json, derive_table

    d = derive(tp.parse_file(ROOT / "examples" / "mlp.tp"), OPTIMIZERS["adam"])
    wd = derive_json(d)["parameters"]["W2"]["weight_decay"]
    assert (wd["decoupled"]["width"], wd["independent"]["width"]) == ("-1", "0")
    assert wd["coupled"]["width"] == "1/2" and "normaliser" in wd["coupled"]["meaning"]
    sgd = derive(tp.parse_file(ROOT / "examples" / "mlp.tp"), OPTIMIZERS["sgd"])
    assert derive_json(sgd)["parameters"]["W2"]["weight_decay"]["coupled"]["width"] == "0"
    assert "wd (independent)" in derive_table(d, "independent")
    deep = derive(tp.parse_file(ROOT / "examples" / "gpt.tp"), OPTIMIZERS["adam"])
    wo = derive_json(deep)["parameters"]["layer.Wo"]
    assert wo["weight_decay"]["decoupled"]["depth"] == str(-canon(wo["depth"]["c"]))


@pytest.mark.parametrize("name", ["lion", "muon"])
def test_derive_refuses_coupled_decay_for_decoupled_only_optimizers(name, capsys):
    """Lion's and Muon's steps decay w decoupled: a "wd (coupled)" column would describe a
    decay the emitted make_optimizer refuses."""
    argv = ["derive", str(ROOT / "examples" / "mlp.tp"), "--optimizer", name]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--weight-decay", "coupled"])
    assert exit_.value.code == 2
    assert f"{name} decays decoupled only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--weight-decay", "decoupled"])
    assert exit_.value.code == 0 and "wd (decoupled)" in capsys.readouterr().out


def test_muon_module_scales_adamw_eps_and_leaves_muon_eps_alone():
    """Under Muon the params it does not orthogonalise take AdamW, whose ε must shrink with their
    gradient entries as Adam's does (W1's shrink as 1/n, mlp.tp); Muon's own groups carry no
    eps, so torch's Muon keeps its orthogonalisation eps."""
    from tensorprog.engine.parametrization import choose

    program = tp.parse_file(ROOT / "examples" / "mlp.tp")
    d = derive(program, OPTIMIZERS["muon"])
    assert d.eps["W1"] == 1 and d.eps["W3"] == 0 and "W2" not in d.eps
    par = choose(program, OPTIMIZERS["muon"])
    m = load_module(emit(program, par.abc, optimizer=OPTIMIZERS["muon"], label=par.label,
                         command="t", eps=par.eps), "optim_muon_eps")
    base = m.Model(256)
    groups = m.param_groups(m.Model(1024), 0.01, eps=1e-8)
    eps = {n: g.get("eps") for g in groups for n in g["entries"]}
    assert eps["W1"] == pytest.approx(1e-8 / 4) and eps["W3"] == pytest.approx(1e-8)
    assert eps["W2"] is None
    opt = m.make_optimizer(base, 0.01)
    muon_opt = next(o for o in opt.optimizers if isinstance(o, torch.optim.Muon))
    assert muon_opt.param_groups[0]["eps"] == muon_opt.defaults["eps"]
