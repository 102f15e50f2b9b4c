"""Emitted modules at scale: fused attention and LayerNorm equal the written-out ones, few
optimizer groups, init constants (a new base width, values set from Python), and the torch
machinery large runs use: meta init, FSDP2, torch.compile, bf16 autocast, checkpointing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, import_file

import tensorprog as tp
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS

torch = pytest.importorskip("torch")

# gpt.tp at 8 tokens: long enough that the causal mask matters
GPT = (ROOT / "examples" / "gpt.tp").read_text().replace("dim T = 4 ", "dim T = 8 ")


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    program = tp.parse(GPT, "gpt.tp")
    path = tmp_path_factory.mktemp("emit") / "gpt_scale.py"
    path.write_text(emit(program, tp.derive(program, "adam").abc, optimizer=OPTIMIZERS["adam"],
                         label="µP", command="test").source)
    return import_file(path, "gpt_scale")


def _batch(model, n=4):
    return model.example_inputs(n, generator=torch.Generator().manual_seed(1))


def test_fused_attention_and_layernorm_equal_the_written_out_ones(gpt):
    torch.manual_seed(0)
    model = gpt.Model(32, 2, dtype=torch.float64)
    with torch.no_grad():  # gains 1 and biases 0 would hide a dropped or swapped one
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_()
    (tok,) = _batch(model)
    fused = model(tok)
    written = model.vectors(tok)["logits"]
    assert torch.allclose(fused, written, rtol=1e-10, atol=1e-10)
    golden = (ROOT / "tests" / "golden" / "gpt_mup.py").read_text()
    assert "_attention(" in golden and "layer_norm(h, h.shape[-1:], self.ga, self.ba)" in golden
    # the check still sees the logits and the probabilities, causal: no weight on the future
    p = model.vectors(tok)["layer.1.r_1"]
    assert p.shape == (4, 4, 8, 8) and torch.equal(p.triu(1), torch.zeros_like(p))


# gain and bias either side, a gain alone, and a LayerNorm read twice (left written out)
NORMS = """
width n = 32
dim d_in = 8
dim d_out = 4
input x : [d_in]
param W1 : [n, d_in]
param g1 : [n] = 1
param b1 : [n] = 0
param g2 : [n] = 1
param g3 : [n] = 1
param b3 : [n] = 0
param W2 : [d_out, n]
h = W1 @ x
a = b1 + layernorm(h) * g1
c = g2 * layernorm(relu(a))
u = layernorm(c)
e = g3 * u + b3
s = e + u
output y = W2 @ s
"""


def test_layernorm_gain_and_bias_fuse_only_where_nothing_else_reads_them(tmp_path):
    program = tp.parse(NORMS, "norms.tp")
    abc = dict(tp.derive(program, "adam").abc)
    abc["g1"] = type(abc["g1"])("1/2", abc["g1"].b, abc["g1"].c)  # a multiplier on a gain
    source = emit(program, abc, optimizer=OPTIMIZERS["adam"], label="µP", command="test").source
    forward = source[source.index("def forward"):source.index("def vectors")]
    assert "layer_norm(h, h.shape[-1:], self.g1 * self.mult_g1, self.b1)" in forward
    assert "layer_norm(c_1, c_1.shape[-1:], self.g2)\n" in forward
    assert "layer_norm(c, c.shape[-1:])\n" in forward and "e_1 = (self.g3) * (u)" in forward
    path = tmp_path / "norms.py"
    path.write_text(source)
    module = import_file(path, "norms")
    torch.manual_seed(0)
    model = module.Model(128, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_()
    (x,) = model.example_inputs(5, generator=torch.Generator().manual_seed(1))
    assert model.mult_g1 == 0.5
    assert torch.allclose(model(x), model.vectors(x)["y"], rtol=1e-10, atol=1e-10)


def test_gpt_positions_follow_the_input_length_up_to_the_table(gpt):
    """forward and vectors take any sequence up to the position table's T = 8 tokens: causal,
    so a prefix's logits are the full sequence's first ones."""
    torch.manual_seed(0)
    model = gpt.Model(32, 2, dtype=torch.float64)
    (tok,) = _batch(model)
    assert tok.shape[-1] == 8
    full = model(tok)
    for length in (1, 5):
        prefix = model(tok[:, :length])
        assert prefix.shape[-2] == length
        assert torch.allclose(prefix, full[:, :length], rtol=1e-10, atol=1e-10)
        assert torch.allclose(model.vectors(tok[:, :length])["logits"], prefix, rtol=1e-10,
                              atol=1e-10)


def test_gpt_seq_len_sizes_the_position_table_at_construction():
    """Model(width, seq_len=16) of the example's T = 4 program: a table of 16 rows, drawn at the
    derived std, that runs a 16-token input; the default is the program's T."""
    gpt = import_file(ROOT / "tests" / "golden" / "gpt_mup.py", "gpt_seq_len_golden")
    assert gpt.SEQ_LEN == 4 and gpt.Model(32).P.shape == (32, 4)
    torch.manual_seed(0)
    model = gpt.Model(512, seq_len=16)
    assert model.seq_len == 16 and model.P.shape == (512, 16)
    (tok,) = _batch(model)
    assert tok.shape == (4, 16) and model(tok).shape == (4, 16, 64)
    # a lookup's base std is 1 and P's b is 0 under µP: std 1 at every width and length (the
    # 8,192 entries' sample std is within 3 % of it)
    spec = gpt.SCALING["P"]
    std = model._base_std["P"] * (512 / gpt.BASE_WIDTH) ** -spec["b"]
    assert spec["b"] == 0 and std == 1.0
    assert float(model.P.detach().std()) == pytest.approx(std, rel=0.03)


def test_gpt_base_depth_is_the_smallest_and_base_depth_sets_another():
    """The example's base depth is the smallest tuned at (2), so a deeper model scales its
    branches down, never up; Model(..., base_depth=D) names the depth tuned at instead."""
    # the golden is `derive examples/gpt.tp`'s module, depth exponents included
    gpt = import_file(ROOT / "tests" / "golden" / "gpt_mup.py", "gpt_depth_golden")
    assert gpt.BASE_DEPTH == 2
    base = gpt.Model(64).layer[0].mult_Wo
    assert gpt.Model(64).depth == 2
    # (4 / 2) ** -1: CompleteP's aL = 1 on the branch's last weight
    assert gpt.Model(64, 4).layer[0].mult_Wo == pytest.approx(base / 2)
    tuned_at_4 = gpt.Model(64, 4, base_depth=4)
    assert tuned_at_4.base_depth == 4 and tuned_at_4.layer[0].mult_Wo == pytest.approx(base)


def test_a_deep_gpt_has_two_groups_each_param_once_with_its_lr(gpt):
    model = gpt.Model(64, 24)
    groups = gpt.param_groups(model, 0.01)
    assert len(groups) == 2
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    for g in groups:
        for name in g["entries"]:
            assert g["lr"] == pytest.approx(0.01 * 0.5 ** -gpt.SCALING[name]["c"])
    assert any(g["name"].startswith("c=1, cL=0: layer.Wq, layer.Wk, layer.Wv (+3 more)")
               for g in groups)


def test_a_new_base_width_gets_its_own_stds(gpt):
    torch.manual_seed(0)
    model = gpt.Model(256, 1)
    assert model.E.std().item() == pytest.approx(128**-0.5, rel=0.05)  # tied: summed over n
    assert model.layer[0].Wq.std().item() == pytest.approx(256**-0.5, rel=0.05)
    rebased = gpt.Model(256, 1, base_width=64)  # SP at its own base: 1/sqrt(64) * (1/4)**0.5
    assert rebased._base_std["layer.Wp"] == pytest.approx((4 * 64) ** -0.5)
    assert rebased._base_std["E"] == pytest.approx(64**-0.5)
    assert rebased._base_std["P"] == 1.0  # a lookup of one-hot positions, at any base
    assert rebased.layer[0].Wq.std().item() == pytest.approx(64**-0.5 * 0.5, rel=0.05)


# GPT-2's vocabulary: 1/sqrt(vocab) started the tied embedding at 0.0045 and the logits near 0
WIDE_VOCAB = GPT.replace("dim V = 64 ", "dim V = 50304 ")


@pytest.mark.parametrize("tied", [True, False])
def test_a_lookup_counts_one_nonzero_coordinate_not_the_vocabulary(tmp_path, tied):
    source = WIDE_VOCAB if tied else re.sub(r"scale tie = .*\n", "param U : [V, n]\n",
                                             WIDE_VOCAB).replace("tie * (E.T @ f)", "U @ f")
    program = tp.parse(source, "gpt.tp")
    path = tmp_path / f"gpt_vocab_{tied}.py"
    path.write_text(emit(program, tp.derive(program, "adam").abc, optimizer=OPTIMIZERS["adam"],
                         label="µP", command="test").source)
    module = import_file(path)
    torch.manual_seed(0)
    model = module.Model(128, 1)
    # untied: one nonzero coordinate reaches each lookup's sum, base std 1 (a bias's); tied:
    # the readout's sum over the width is the largest, base std 1/sqrt(128)
    assert model._base_std["E"] == (128**-0.5 if tied else 1.0)
    assert model._base_std["P"] == 1.0
    (tok,) = _batch(model)
    with torch.no_grad():
        rms = model(tok).pow(2).mean().sqrt().item()
    assert 0.5 < rms < 2  # unit-size logits at the base width (0.05 with 1/sqrt(vocab))


def test_a_base_width_whose_dims_are_fractional_is_refused_at_construction(gpt):
    with pytest.raises(ValueError, match=r"base_width 130: dim dh = n / 4 must be a whole "
                                         r"number; use a multiple of 4: 128 or 132"):
        gpt.Model(128, 1, base_width=130)
    with pytest.raises(ValueError, match=r"^width 130: dim dh"):
        gpt.Model(130, 1)


def test_base_constants_are_set_from_python(gpt):
    torch.manual_seed(0)
    model = gpt.Model(256, 2, init_std={"E": 0.02, "layer": 0.03, "layer.Wp": 0.01},
                      mult={"attn": 0.5})
    assert model.E.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layer[1].Wq.std().item() == pytest.approx(0.03 / 2**0.5, rel=0.05)
    assert model.layer[1].Wp.std().item() == pytest.approx(0.01 / 2**0.5, rel=0.05)
    assert model.mult_attn == 0.25 and model.mult_tie == 0.5
    with pytest.raises(ValueError, match="init_std: no entry 'gf'"):
        gpt.Model(32, 1, init_std={"gf": 1.0})  # a constant init has no std
    with pytest.raises(ValueError, match=r"mult\['attn'\] must be a finite number"):
        gpt.Model(32, 1, mult={"attn": float("nan")})
    with pytest.raises(ValueError, match="no entry 'att'; choose from attn, tie"):
        gpt.Model(32, 1, mult={"att": 1.0})


def test_a_params_forward_multiplier_is_set_from_python(tmp_path):
    # the mup convention's readout multiplier 1/n: TP5's output multiplier, tuned at the base
    program = tp.parse_file(ROOT / "examples" / "transformer_heads.tp")
    abc = tp.derive(program, "adam", "mup").abc
    path = tmp_path / "heads_mupconv.py"
    path.write_text(emit(program, abc, optimizer=OPTIMIZERS["adam"], label="µP",
                         command="test").source)
    module = import_file(path)
    assert module.Model(256).mult_U == 0.5
    model = module.Model(256, mult={"U": 3.0, "attn": 0.5})
    assert (model.mult_U, model.mult_attn) == (1.5, 0.5)
    with pytest.raises(ValueError, match="no entry 'W'; choose from U, attn"):
        module.Model(256, mult={"W": 1.0})


def test_meta_build_then_to_empty_and_reset_gives_the_mup_init(gpt):
    torch.manual_seed(0)
    model = gpt.Model(512, 2, device="meta")
    assert model.layer[0].Wq.is_meta
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert model.layer[1].Wq.std().item() == pytest.approx(128**-0.5 * 0.5, rel=0.05)
    assert model.layer[1].Wp.std().item() == pytest.approx((4 * 128) ** -0.5 * 0.5, rel=0.05)
    assert model.E.std().item() == pytest.approx(128**-0.5, rel=0.05)
    assert torch.equal(model.layer[0].ga, torch.ones(512))


def test_bf16_autocast_and_checkpointing_per_repetition_run(gpt):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    model = gpt.Model(32, 2)
    (tok,) = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tok)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for block in model.layer:  # each repetition recomputed in backward
        block.forward = (lambda f: lambda *a: checkpoint(f, *a, use_reentrant=False))(
            block.forward)
    model(tok).sum().backward()
    model.zero_grad()
    plain = gpt.Model(32, 2)
    plain.load_state_dict(model.state_dict())
    (a,) = torch.autograd.grad(plain(tok).sum(), [plain.layer[0].Wq])
    for block in model.layer:
        del block.forward
    model(tok).sum().backward()
    assert len(grads) == len(list(model.parameters()))
    assert torch.allclose(model.layer[0].Wq.grad, a, rtol=1e-5, atol=1e-6)


def test_compile_fullgraph_captures_without_a_graph_break(gpt):
    torch.manual_seed(0)
    model = gpt.Model(32, 2)
    (tok,) = _batch(model)
    # Dynamo's capture decides graph breaks; the "eager" backend skips code generation
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(tok), model(tok), rtol=1e-6, atol=1e-6)


# Teardown is where this test was flaky: one child in many aborted on a loaded machine after
# training ("terminate called without an active exception", SIGABRT). After
# destroy_process_group gloo's worker and transport threads are still running (4 threads per
# rank before it, 4 after, 4 after deleting the model and collecting: measured), so they are
# torn down during interpreter shutdown; a worker thread that drops the
# last reference to a tensor Python still tracks must take the GIL then, and CPython ends such a
# thread with a forced unwind that C++ turns into std::terminate (the race torch's own c10d
# discussion describes for gloo at exit). So each rank, once every collective is done (the
# barrier: neither closes its connections while the other still reads) and the group destroyed,
# leaves with os._exit: a failure while training still raises and fails mp.spawn, a hung
# collective times out after COLLECTIVE_TIMEOUT s, and no teardown race is left to lose.
_FSDP = textwrap.dedent('''
    import datetime, json, os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch.distributed.fsdp import fully_shard
    sys.path.insert(0, sys.argv[1])
    import gpt_scale as gpt

    def train(rank, world, out):
        torch.manual_seed(0)
        model = gpt.Model(32, 2, dtype=torch.float64)
        (tok,) = model.example_inputs(8, generator=torch.Generator().manual_seed(1))
        if world > 1:
            dist.init_process_group("gloo", init_method="file://" + out + ".rdzv",
                                    rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=int(sys.argv[3])))
            for block in model.layer:
                fully_shard(block)
            fully_shard(model)
            tok = tok.chunk(world)[rank]  # data parallel: each rank half the batch
        opt = gpt.make_optimizer(model, 1e-2)
        losses = []
        for _ in range(5):
            loss = model(tok).logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if world > 1:
                loss = loss.detach().clone()
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            losses.append(loss.item())
        if rank == 0:
            with open(out, "w") as f:
                json.dump(losses, f)
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    if __name__ == "__main__":
        train(0, 1, sys.argv[2] + ".one")
        if os.path.exists(sys.argv[2] + ".two.rdzv"):  # a stale one sends ranks to dead ports
            os.remove(sys.argv[2] + ".two.rdzv")
        mp.spawn(train, args=(2, sys.argv[2] + ".two"), nprocs=2)
''')
# a loaded 2-core machine has taken 40 s of wall time for the whole script; a hang fails
# inside a child (gloo's timeout) well before the test's own limit
COLLECTIVE_TIMEOUT = 300


@pytest.mark.slow  # two processes, each importing torch and training: the default run's CPU budget
def test_fsdp2_on_every_repetition_trains_as_one_process(gpt, tmp_path):
    script = tmp_path / "fsdp.py"
    script.write_text(_FSDP)
    run = subprocess.run([sys.executable, str(script), str(Path(gpt.__file__).parent),
                          str(tmp_path / "losses"), str(COLLECTIVE_TIMEOUT)],
                         capture_output=True, text=True, timeout=2 * COLLECTIVE_TIMEOUT)
    assert run.returncode == 0, run.stderr[-2000:]
    one = json.loads((tmp_path / "losses.one").read_text())
    two = json.loads((tmp_path / "losses.two").read_text())
    assert one[0] != one[-1] and two == pytest.approx(one, rel=1e-5)
