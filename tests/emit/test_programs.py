"""Emitted modules from unusual programs: dead branches, outputs that are inputs or params,
constants, no params; exact fractions and numbers past float range; widths at construction; the
optimizers a module makes. Every valid program gives a module that trains; the rest end in a
positioned refusal."""

from __future__ import annotations

import dataclasses
import warnings
from fractions import Fraction

import pytest
from conftest import ROOT, emit_program, import_file, train_once  # noqa: E402

import tensorprog as tp  # noqa: E402
from tensorprog.cli.main import main  # noqa: E402
from tensorprog.emit.load import load_module
from tensorprog.emit.module import Emitted, emit  # noqa: E402
from tensorprog.engine.exponents import ABC  # noqa: E402
from tensorprog.engine.optimizers import OPTIMIZERS  # noqa: E402
from tensorprog.engine.parametrization import choose
from tensorprog.errors import CodegenError  # noqa: E402
from tensorprog.ir.program import LinComb  # noqa: E402
from tensorprog.numerics.coordcheck import coord_check  # noqa: E402

torch = pytest.importorskip("torch")


MLP = ("width n = 16\ndim d = 3\ndim o = 2\ninput x : [d]\nparam W : [n, d]\nparam R : [o, n]\n"
       "output f = R @ relu(W @ x)\n")


EDGE = {
    "dead_branch": "input x : [d]\nparam W : [n, d]\nparam U : [n, n]\nparam R : [o, n]\n"
                   "h = relu(W @ x)\ndead = U @ h\nalso = relu(h)\noutput f = R @ h\n",
    "output_is_input": "input x : [d]\ninput z : [n]\nparam W : [n, d]\nparam R : [o, n]\n"
                       "output f = R @ relu(W @ x + z)\noutput z\n",
    "output_is_param": "input x : [d]\nparam W : [n, d]\nparam b : [n]\nparam R : [o, n]\n"
                       "output f = R @ relu(W @ x + b)\noutput b\n",
    "output_used_again": "input x : [d]\nparam W : [n, d]\nparam V : [n, n]\nparam R : [o, n]\n"
                         "output h = relu(W @ x)\noutput f = R @ (V @ h)\n",
    "same_vector_twice": "input x : [d]\nparam W : [n, d]\nparam R : [o, n]\n"
                         "output f = R @ relu(W @ x)\noutput g = f\n",
    "transposed_only": "input x : [d]\nparam W : [d, n]\nparam R : [o, n]\n"
                       "output f = R @ relu(W.T @ x)\n",
    "constants": "input x : [d]\nparam W : [n, d]\nparam R : [o, n]\nh = 0.1 * (W @ x)\n"
                 "g = -h\nk = h / 3 - 2.5 * g\noutput f = -(R @ relu(k))\n",
}


@pytest.mark.parametrize("case", sorted(EDGE))
def test_valid_programs_give_working_modules(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        program = tp.parse("width n = 16\ndim d = 3\ndim o = 2\n" + EDGE[case], f"{case}.tp")
        for param in ("mup", "sp"):
            module = load_module(emit_program(program, param), case)
            model, inputs = train_once(module)
    vectors = model.vectors(*inputs)
    if case == "dead_branch":  # U is left out, and the value it computes with it
        assert set(vectors) == {"h", "h_1", "also", "f"} and not hasattr(model, "U")
    if case == "constants":
        h = vectors["h"]
        assert torch.allclose(vectors["k"], h / 3 + 2.5 * h)
    out = model(*inputs)
    if case == "output_is_input":
        assert out[1] is inputs[1]
    if case == "same_vector_twice":
        assert torch.equal(out[0], out[1])


def test_dead_branch_through_the_cli(tmp_path):
    path = tmp_path / "dead.tp"
    path.write_text("width n = 16\ndim d = 3\ndim o = 2\n" + EDGE["dead_branch"])
    with pytest.raises(SystemExit) as exit_:
        main(["derive", str(path), "-o", str(tmp_path / "dead_mup.py")])
    assert exit_.value.code == 0
    train_once(import_file(tmp_path / "dead_mup.py", "dead_mup"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        result = coord_check(tp.parse_file(path), OPTIMIZERS["sgd"], widths=(16, 32), steps=2,
                             seeds=1, device="cpu")
    assert {r.name for r in result.results} >= {"f", "h", "also"}


def test_a_parameter_free_module_still_builds_its_inputs():
    program = tp.parse("width n = 16\ninput x : [n]\nscale s = 0.5\noutput f = s * x\n")
    module = load_module(emit_program(program, "sp", optimizer="sgd"), "scaled")
    model = module.Model(32)
    (x,) = model.example_inputs(2)
    assert torch.equal(model(x), 0.5 * x)


def _with_coefficient(c: Fraction):
    program = tp.parse(MLP.replace("relu(W @ x)", "relu(2 * (W @ x))"), "c.tp")
    body = tuple(dataclasses.replace(i, terms=((c, i.terms[0][1]),)) if isinstance(i, LinComb)
                 else i for i in program.body)
    return program, dataclasses.replace(program, body=body)


@pytest.mark.parametrize("c, message", [(Fraction(10**400), "too large"),
                                        (Fraction(1, 10**400), "too small")])
def test_constants_no_float_holds_are_refused_with_a_position(c, message):
    base, program = _with_coefficient(c)
    abc, _, label, _ = choose(base, OPTIMIZERS["adam"])
    with pytest.raises(CodegenError, match=message) as err:
        emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label, command="t")
    assert err.value.span is not None and err.value.span.line == 7


def test_exact_fractions_render_exactly():
    base, program = _with_coefficient(Fraction(1, 3))
    abc = {p: ABC(Fraction(1, 3), x.b, x.c) for p, x in
           choose(base, OPTIMIZERS["adam"]).abc.items()}
    source = emit(program, abc, optimizer=OPTIMIZERS["adam"], label="l", command="t").source
    assert '"a": 1 / 3' in source and "1 / 3 * (" in source
    model = load_module(Emitted(source), "thirds").Model(32)
    assert model.mult_W == pytest.approx(2 ** (-1 / 3))


def test_a_scale_past_float_range_is_refused():
    program = tp.parse("width n = 16\ninput x : [n]\nscale s = 0.5\noutput f = s * x\n", "s.tp")
    abc, _, label, _ = choose(program, OPTIMIZERS["sgd"], "sp")
    huge = dataclasses.replace(program, params=(dataclasses.replace(program.params[0],
                                                                    base=Fraction(10**400)),))
    with pytest.raises(CodegenError, match="the scale s") as err:
        emit(huge, abc, optimizer=OPTIMIZERS["sgd"], label=label, command="t")
    assert err.value.span.line == 3


@pytest.fixture(scope="module")
def transformer():
    program = tp.parse_file(ROOT / "examples" / "transformer.tp")
    return load_module(emit_program(program), "transformer_mup")


def test_integer_like_widths_and_unknown_kwargs(transformer):
    np = pytest.importorskip("numpy")
    assert type(transformer.Model(np.int64(8)).width) is int
    with pytest.raises(TypeError, match="depth"):
        transformer.Model(64, depth=3)


def test_transformer_heads_names_its_head_count():
    program = tp.parse_file(ROOT / "examples" / "transformer_heads.tp")
    module = load_module(emit_program(program), "heads")
    with pytest.raises(ValueError, match="head count"):
        module.Model(100)


def test_frozen_params_get_no_learning_rate_at_any_width():
    program = tp.parse(MLP, "m.tp")
    abc, _, label, _ = choose(program, OPTIMIZERS["sgd"], "sp")
    abc["W"] = ABC(abc["W"].a, abc["W"].b, "oo")
    module = load_module(emit(program, abc, optimizer=OPTIMIZERS["sgd"], label=label, command="t"),
                         "frozen")
    for width in (8, 16, 32):
        groups = module.param_groups(module.Model(width), 0.1)
        lr = {n: g["lr"] for g in groups for n in g["entries"]}
        assert lr["W"] == 0.0 and lr["R"] == pytest.approx(0.1)


def test_make_optimizer_names_the_optimizers_it_knows(tmp_path):
    path = tmp_path / "opt_mup.py"
    path.write_text(emit_program(tp.parse(MLP)).source)
    module = import_file(path, "opt_mup")
    model = module.Model(32)
    with pytest.raises(ValueError, match="derived for adam, not .rmsprop. .use adam or adamw"):
        module.make_optimizer(model, 0.01, optimizer="rmsprop")
    assert isinstance(module.make_optimizer(model, 0.01, optimizer="adamw"), torch.optim.AdamW)
