"""Property tests: random well-formed programs never crash the engine, and renaming values or
reordering independent instructions changes no result."""

from __future__ import annotations

import dataclasses
import random
import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorprog as tp
from tensorprog.ir.program import LinComb, MatMul, Nonlin
from tensorprog.ir.text import render_instruction

DIMS = {"n": True, "m": True, "d_in": False, "k": False}  # m = 2n; d_in, k finite
DECLS = "width n = 32\ndim m = 2 * n\ndim d_in = 6\ndim k = 3\ninput x : [d_in]\n"


@st.composite
def programs(draw) -> str:
    """A random straight-line program: matmuls between any dims, biases, gains, nonlinearities,
    products, residual sums and dot readouts, always ending in finite-dim or scalar outputs."""
    params: list[str] = []
    lines: list[str] = []
    values = [("x", "d_in")]

    def new_param(shape):
        name = f"P{len(params)}"
        params.append(f"param {name} : [{', '.join(shape)}]")
        return name

    for i in range(draw(st.integers(2, 9))):
        name = f"v{i}"
        src, dim = draw(st.sampled_from(values))
        op = draw(st.sampled_from(["matmul", "matmul", "bias", "nonlin", "mul", "add", "gain"]))
        same = [v for v, d in values if d == dim]
        if op == "matmul" or dim == "d_in" and op != "nonlin":
            out = draw(st.sampled_from(["n", "m", "n", "k"]))
            lines.append(f"{name} = {new_param([out, dim])} @ {src}")
            dim = out
        elif op == "bias":
            lines.append(f"{name} = {src} + {new_param([dim])}")
        elif op == "gain":
            lines.append(f"{name} = {new_param([dim])} * {src}")
        elif op == "nonlin":
            fn = draw(st.sampled_from(["relu", "gelu", "tanh", "sigmoid", "silu", "identity"]))
            lines.append(f"{name} = {fn}({src})")
        elif op == "mul":
            lines.append(f"{name} = {src} * {draw(st.sampled_from(same))}")
        else:
            lines.append(f"{name} = {src} + 0.5 * {draw(st.sampled_from(same))}")
        values.append((name, dim))
    last, dim = values[-1]
    if draw(st.booleans()) and DIMS.get(dim):
        lines.append(f"output y = dot({new_param([dim])}, {last})")
    else:
        lines.append(f"output y = {new_param(['k', dim])} @ {last}")
    return DECLS + "\n".join(params) + "\n" + "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=programs(), optimizer=st.sampled_from(["sgd", "adam"]))
def test_random_programs_never_crash(src, optimizer):
    program = tp.parse(src)
    warnings.simplefilter("ignore", tp.TensorProgWarning)  # dead branches are warned about
    try:
        d = tp.derive(program, optimizer)
    except tp.EngineError as err:
        # an honest refusal names what fails (e.g. a product of two vanishing readouts freezes)
        assert any(s in str(err) for s in ("blows up", "vanishes", "condition fixes",
                                           "nothing to scale", "freeze"))
    else:
        assert d.check.regime == "feature_learning" and d.check.all_maximal
        assert all(x.a == 0 for x in d.abc.values())  # table3 convention
    for preset in ("sp", "ntp"):
        try:
            result = tp.classify(program, optimizer, preset=preset)
        except tp.EngineError as err:  # an output that no infinite-width vector reaches
            assert "nothing to scale" in str(err)
        else:
            assert result.regime in ("feature_learning", "kernel", "unstable", "trivial")


def _permuted(program, rng: random.Random):
    """A random topological order of the body (independent instructions swap places)."""
    body, placed, order = list(program.body), {i.name for i in program.inputs}, []
    placed |= {p.name for p in program.params}
    while body:
        ready = [ins for ins in body if all(o in placed for o in ins.operands)]
        pick = rng.choice(ready)
        body.remove(pick)
        order.append(pick)
        placed.add(pick.out)
    return dataclasses.replace(program, body=tuple(order))


def _renamed(program, mapping):
    def r(name):
        return mapping.get(name, name)

    body = []
    for ins in program.body:
        if isinstance(ins, MatMul):
            body.append(MatMul(r(ins.out), ins.weight, r(ins.arg)))
        elif isinstance(ins, LinComb):
            body.append(LinComb(r(ins.out), tuple((c, r(v)) for c, v in ins.terms)))
        elif isinstance(ins, Nonlin):
            body.append(Nonlin(r(ins.out), ins.fn, tuple(r(a) for a in ins.args)))
        else:
            body.append(dataclasses.replace(ins, out=r(ins.out), left=r(ins.left),
                                            right=r(ins.right)))
    return dataclasses.replace(program, body=tuple(body), outputs=tuple(r(o) for o in
                                                                        program.outputs))


def _summary(program, optimizer, rename=None):
    rename = rename or {}
    try:
        d = tp.derive(program, optimizer)
    except tp.EngineError as err:
        return ("error", type(err).__name__)
    an = d.check.analysis
    return ({p: (x.a, x.b, x.c) for p, x in d.abc.items()},
            {rename.get(v, v): (an.init_[v], an.change_[v], an.grad(v)) for v in an.init_})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=programs(), seed=st.integers(0, 2**16), optimizer=st.sampled_from(["sgd", "adam"]))
def test_reordering_and_renaming_change_nothing(src, seed, optimizer):
    rng = random.Random(seed)
    program = tp.parse(src)
    warnings.simplefilter("ignore", tp.TensorProgWarning)
    shuffled = tp.verify(_permuted(program, rng))
    mapping = {ins.out: f"r{k}_{ins.out}" for k, ins in enumerate(program.body)}
    renamed = tp.verify(_renamed(shuffled, mapping))
    # through the text form too, so the parser sees the new order and names
    reparsed = tp.parse(tp.to_text(renamed))
    back = {v: k for k, v in mapping.items()}
    assert _summary(reparsed, optimizer, back) == _summary(program, optimizer)
    assert [render_instruction(i) for i in reparsed.body] == [render_instruction(i)
                                                             for i in renamed.body]
