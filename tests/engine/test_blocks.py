"""Blocks, `repeat` and the depth: the language, the IR's one generic repetition, and the width
exponents at a fixed depth, which must be those of the same network unrolled by hand."""

from __future__ import annotations

import json
import re

import pytest
from conftest import RESMLP, ROOT

import tensorprog as tp
from tensorprog.cli.main import main
from tensorprog.ir.program import Block, Depth, LinComb, Stream

# the same network with its two blocks copied out by hand
UNROLLED = """\
width n = 128
dim d_in = 64
dim d_out = 10
input x : [d_in]
param W_in : [n, d_in]
param W_out : [d_out, n]
param W1_a : [n, n]
param W2_a : [n, n]
param W1_b : [n, n]
param W2_b : [n, n]
h0 = W_in @ x
h1 = h0 + W2_a @ relu(W1_a @ h0)
h2 = h1 + W2_b @ relu(W1_b @ h1)
output y = W_out @ h2
"""


def test_the_core_parses_as_written():
    p = tp.parse(RESMLP)
    assert p.depth == Depth("L", 4)
    assert [q.name for q in p.params] == ["W_in", "W_out", "res.W1", "res.W2"]
    (block,) = p.blocks
    assert block == Block("res", "res.h", "res.out", "hL", ("res.W1", "res.W2"),
                          ("res.u", "res.out_1", "res.out_2", "res.out"))
    (stream,) = p.streams
    assert stream == Stream("res.h", "h0", "res.out", "res", "L")
    assert p.producer["hL"] == LinComb("hL", ((1, "res.out"),))
    assert len(p.body) == 8  # one repetition, never L


SHARED = """\
width n = 16
dim d = 3
input x : [d]
param Wi : [n, d]
param Wo : [d, n]
param Wt : [n, n]
block mlp(h) {
    param g : [n] = 1
    return h + Wt @ (g * relu(h))
}
block head(z) {
    param W : [n, n]
    return W @ z
}
h0 = Wi @ x
h3 = repeat 3 mlp(h0)
output y = Wo @ relu(head(h3))
"""


@pytest.mark.parametrize("source", [RESMLP, SHARED, RESMLP.replace("hL = repeat L res(h0)",
                                                                   "hL = res(W_in @ x)")])
def test_the_text_form_parses_back_equal(source):
    p = tp.parse(source)
    assert tp.parse(tp.to_text(p)) == p


def test_outer_params_are_shared_and_inner_ones_fresh():
    p = tp.parse(SHARED)
    assert [q.name for q in p.params] == ["Wi", "Wo", "Wt", "mlp.g", "head.W"]
    assert {s.block: s.count for s in p.streams} == {"mlp": 3, "head": None}
    # a block applied inside an expression still names its result, as a fresh value
    assert p.block_table["head"].result == "y_1"
    assert not p.block_table["head"].values[-1:] == ("y_1",)


HEAD = "width n = 8\ndepth L = 4\ndim d = 3\ninput x : [d]\nparam Wi : [n, d]\nparam Wo : [d, n]\n"
RES = "block res(h) {\n    param W : [n, n]\n    return h + W @ relu(h)\n}\n"  # lines 7-10
TAIL = "h0 = Wi @ x\nhL = repeat L res(h0)\noutput y = Wo @ hL\n"


def _blk(*lines, name="res"):
    return f"block {name}(h) {{\n" + "".join(f"    {x}\n" for x in lines) + "}\n"


def test_an_unused_block_is_a_warning():
    with pytest.warns(tp.TensorProgWarning, match="block 'b2' is never applied"):
        tp.parse(HEAD + RES + _blk("return h", name="b2") + TAIL)


def test_a_compounding_block_is_refused_not_looped_on():
    source = HEAD + _blk("return h + dot(h, h) * h") + TAIL
    with pytest.raises(tp.EngineError, match="repetitions compound it without bound"):
        tp.derive(tp.parse(source), "adam")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_exponents_equal_the_unrolled_networks(optimizer):
    blocks = tp.derive(tp.parse(RESMLP), optimizer)
    unrolled = tp.derive(tp.parse(UNROLLED), optimizer)
    copies = {"W_in": ["W_in"], "W_out": ["W_out"], "res.W1": ["W1_a", "W1_b"],
              "res.W2": ["W2_a", "W2_b"]}
    for name, twins in copies.items():
        for twin in twins:
            assert blocks.abc[name] == unrolled.abc[twin], (name, twin)
    a, b = blocks.check.analysis, unrolled.check.analysis
    for mine, theirs in (("res.h", "h1"), ("hL", "h2"), ("y", "y")):
        assert (a.init_[mine], a.change_[mine], a.grad(mine)) == \
            (b.init_[theirs], b.change_[theirs], b.grad(theirs))
    assert blocks.check.regime == "feature_learning"


def test_gpt_example_equals_the_two_block_transformer():
    gpt = tp.derive(tp.parse_file(ROOT / "examples" / "gpt.tp"), "adam")
    two = tp.derive(tp.parse_file(ROOT / "examples" / "transformer.tp"), "adam")
    for name, x in gpt.abc.items():
        local = name.removeprefix("layer.")
        twins = [local] if local == name else [f"{local}1", f"{local}2"]
        for twin in twins:
            assert x == two.abc[twin], (name, twin)


@pytest.mark.parametrize("preset", ["sp", "ntp", "mup", "mfp"])
def test_presets_classify_as_on_the_unrolled_network(preset):
    mine = tp.classify(tp.parse(RESMLP), "sgd", preset=preset)
    theirs = tp.classify(tp.parse(UNROLLED), "sgd", preset=preset)
    assert (mine.regime, mine.r) == (theirs.regime, theirs.r)
    assert mine.params["res.W1"].r == theirs.params["W1_a"].r


def test_the_depth_does_not_unroll():
    shallow = tp.parse(RESMLP.replace("depth L = 4", "depth L = 2"))
    deep = tp.parse(RESMLP.replace("depth L = 4", "depth L = 48"))
    assert shallow.body == deep.body
    assert tp.derive(shallow).abc == tp.derive(deep).abc


def test_derive_states_its_depth_convention(tmp_path, capsys):
    path = tmp_path / "resmlp.tp"
    path.write_text(RESMLP)
    for flags in ([], ["--json"]):
        with pytest.raises(SystemExit) as exit_:
            main(["derive", str(path), *flags])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        if flags:
            data = json.loads(out)
            assert data["depth"]["exponents"] == {"convention": "completep", "free": {}}
            assert data["depth"]["base"] == 4
            assert data["blocks"] == {"res": {"repeat": "L", "params": ["res.W1", "res.W2"]}}
            assert set(data["parameters"]) == {"W_in", "W_out", "res.W1", "res.W2"}
        else:
            assert re.search(r"depth L \(base 4\): exponents in L derived in the depth "
                             r"convention completep", out)
    fixed = tp.derive(tp.parse(SHARED), "adam")
    from tensorprog.engine.derivation import derive_json, derive_table

    assert derive_json(fixed)["depth"] is None and "not derived" not in derive_table(fixed)


# --- the emitted module ---------------------------------------------------------------------------


def _module(tmp_path, source: str, name: str):
    torch = pytest.importorskip("torch")
    from conftest import import_file

    from tensorprog.emit.module import emit
    from tensorprog.engine.optimizers import OPTIMIZERS

    program = tp.parse(source)
    abc = tp.derive(program, "adam").abc
    path = tmp_path / f"{name}.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label="µP",
                         command="test").source)
    return torch, import_file(path, name)


@pytest.mark.parametrize("depth", [2, 5])
def test_the_emitted_resmlp_trains_a_step_at_any_depth(tmp_path, depth):
    import copy

    torch, m = _module(tmp_path, RESMLP, f"resmlp_{depth}")
    model = m.Model(32, depth, dtype=torch.float64)
    assert len(model.res) == depth and model.res[depth - 1].W1.shape == (32, 32)
    assert (model.depth, model.base_depth, m.BASE_DEPTH) == (depth, 4, 4)
    x = model.example_inputs(4, generator=torch.Generator().manual_seed(0))
    opt = m.make_optimizer(model, 1e-2)
    before = model.res[depth - 1].W1.detach().clone()
    model(*x).sum().backward()
    opt.step()
    assert not torch.equal(before, model.res[depth - 1].W1)
    group = next(g for g in m.param_groups(model, 1.0) if "res.W1" in g["entries"])
    assert all(any(p is w for p in group["params"]) for w in (b.W1 for b in model.res))
    vectors = model.vectors(*x)
    assert {f"res.{i}.u" for i in range(depth)} <= set(vectors) and "res.u" not in vectors
    assert torch.equal(vectors["res.1.h"], vectors["res.0.out"])  # each output feeds the next
    clone = copy.deepcopy(model)
    fresh = m.Model(32, depth, dtype=torch.float64)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(clone(*x), model(*x)) and torch.equal(fresh(*x), model(*x))
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        m.Model(32, 0)


def test_the_emitted_blocks_compute_the_unrolled_network(tmp_path):
    torch, blocks = _module(tmp_path, RESMLP, "resmlp_blocks")
    _, unrolled = _module(tmp_path, UNROLLED, "resmlp_unrolled")
    a = blocks.Model(32, 2, dtype=torch.float64)
    b = unrolled.Model(32, dtype=torch.float64)
    state = {"W_in": a.W_in, "W_out": a.W_out, "W1_a": a.res[0].W1, "W2_a": a.res[0].W2,
             "W1_b": a.res[1].W1, "W2_b": a.res[1].W2}
    b.load_state_dict({k: v.detach() for k, v in state.items()})
    x = a.example_inputs(4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a(*x), b(*x))
    assert torch.allclose(a.vectors(*x)["res.1.h"], b.vectors(*x)["h1"])


def test_fixed_repeats_and_single_calls(tmp_path):
    torch, m = _module(tmp_path, SHARED, "shared")
    model = m.Model(16)  # no depth declared: no depth argument
    assert len(model.mlp) == 3 and isinstance(model.head, torch.nn.Module)
    assert not isinstance(model.head, torch.nn.ModuleList)
    names = {n for n, _ in model.named_parameters()}
    assert {"Wt", "mlp.0.g", "mlp.2.g", "head.W"} <= names  # the shared Wt is the model's
    x = model.example_inputs(2, generator=torch.Generator().manual_seed(0))
    vectors = model.vectors(*x)
    assert {"mlp.2.out", "head.z", "head.out"} <= set(vectors)


def test_check_records_every_repetition():
    pytest.importorskip("torch")
    source = RESMLP.replace("width n = 128", "width n = 8").replace("L = 4", "L = 2")
    result = tp.check(tp.parse(source), "adam", widths=(8, 16), steps=2, seeds=1, batch_size=4)
    judged = {r.name for r in result.results if r.expected is not None}
    assert {"res.0.u", "res.1.u", "res.1.out", "hL"} <= judged
