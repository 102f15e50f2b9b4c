"""from_torch: a PyTorch model traced to a Tensor Program, its µP derived and applied in place."""

import re
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tensorprog import TensorProgError, UsageError, derive  # noqa: E402
from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402
from tensorprog.fromtorch.check import _logits as check_logits  # noqa: E402


class Block(nn.Module):
    def __init__(self, n, heads=4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.attn, self.proj = nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.fc, self.out = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.attn(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's layout: fused qkv, sdpa, learned positions, tied unembedding."""

    def __init__(self, n, vocab=64, seq=8, layers=2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n), nn.Embedding(seq, n)
        self.blocks = nn.ModuleList(Block(n) for _ in range(layers))
        self.lnf = nn.LayerNorm(n)
        self.head = nn.Linear(n, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.lnf(x))


def _tokens(model):
    return (torch.zeros(2, 8, dtype=torch.long),)


@pytest.fixture(scope="module")
def nano():
    return from_torch(NanoGPT, widths=(64, 128), example_inputs=_tokens)


def test_nanogpt_source_derives_mup(nano):
    assert "dot(getitem, getitem_1, n_by4)" in nano.source
    assert "tie_linear_8 * (head_weight.T @ layer_norm_4)" in nano.source
    d = derive(nano.program, "adam")
    hidden = d.abc["blocks.fc_weight"]  # the stack of Blocks is one block repeated over L
    assert (hidden.a, hidden.b, hidden.c) == (0, Fraction(1, 2), 1)  # TP5 Table 3, Adam
    assert d.abc["attn_scaled_dot_product_attention"].a == 1  # 1/d, not the model's 1/sqrt(d)
    assert nano.scales["attn_scaled_dot_product_attention"]["model_a"] == Fraction(1, 2)
    assert d.abc["tie_linear_8"].a == 1


def test_apply_and_param_groups(nano):
    mup = MuP(nano, "adam")
    torch.manual_seed(0)
    model = NanoGPT(256)
    report = mup.apply(model)
    assert report.width == 256
    assert set(report.patched) == {"blocks.0.attn", "blocks.1.attn", "head"}
    std = float(model.blocks[0].fc.weight.detach().std())
    assert std == pytest.approx(nano.base["blocks.0.fc.weight"][1] * 4**-0.5, rel=1e-3)
    groups = mup.param_groups(model, lr=1e-3, weight_decay=0.1, decay="independent",
                              decay_params="all")
    lrs = {p: g["lr"] for g in groups for p in g["params"]}
    # independent decay: every group's lr * weight_decay is 0.1, whatever its lr
    assert [g["lr"] * g["weight_decay"] for g in groups] == pytest.approx([0.1] * len(groups))
    with pytest.raises(UsageError, match="say what weight_decay means"):
        mup.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert lrs[model.blocks[0].fc.weight] == pytest.approx(1e-3 / 4)  # hidden: 1/n
    assert lrs[model.wte.weight] == pytest.approx(1e-3)  # embedding: width-independent
    logits = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, 64)


@pytest.mark.slow  # about 20 s; the default run checks HF Llama's (test_zoo_small.py)
def test_coordinate_check_of_the_users_model(nano):
    # widths 128..512, 2 seeds, 3 Adam steps; the emitted module of the same program drifts by
    # up to 0.25 at these widths too, hence the tolerance. SP misses by 0.8 to 1.5.
    mup = MuP(nano, "adam")
    good = coord_check(mup, (128, 256, 512), tolerance=0.25)
    assert good.passed, list(good.failures)
    bad = coord_check(mup, (128, 256, 512), apply=False, tolerance=0.25)
    assert "blocks.1.scaled_dot_product_attention_logits" in bad.failures
    assert "linear_8" in bad.failures  # the output logits


class Cumsum(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e = nn.Embedding(16, n)
        self.o = nn.Linear(n, 16)

    def forward(self, idx):
        return self.o(self.e(idx).cumsum(1))


def test_unsupported_op_is_refused_at_the_users_line():
    with pytest.raises(
        TensorProgError,
        match=r"test_trace.py:\d+:\d+: error: cannot trace the "
        r"op cumsum",
    ):
        from_torch(Cumsum, (32, 64), _tokens)


class Plain(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e, self.l, self.o = nn.Embedding(16, n), nn.Linear(n, n), nn.Linear(n, 16)

    def forward(self, idx):
        return self.o(torch.relu(self.l(self.e(idx))))


def test_a_traced_program_the_language_refuses_is_refused_at_the_users_line(monkeypatch):
    # a statement no recogniser foresaw the language refusing (here: made to read a name that
    # is not there) is refused by from_torch at the model's line, never by the program's reader
    from tensorprog.fromtorch import trace

    source = trace._source
    monkeypatch.setattr(trace, "_source", lambda *a, **k: source(*a, **k).replace(
        "linear = l_weight @ embedding", "linear = l_weight @ nowhere"))
    with pytest.raises(TensorProgError, match=r"test_trace.py:\d+:\d+: error: cannot trace "
                       r"'linear = l_weight @ nowhere \+ l_bias': the traced program does not "
                       r"read back \(undefined name 'nowhere'\); .* \(in l\)"):
        from_torch(Plain, (8, 16), _tokens)


def _gpt2(n, layers=2):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_embd=n,
        n_layer=layers,
        n_head=4,
        vocab_size=64,
        n_positions=8,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers")
    return from_torch(_gpt2, (64, 128), _tokens)


def test_hf_gpt2_traces_and_applies(gpt2):
    # Conv1D stores [in, out]: the program still reads [fan_out, fan_in]
    assert "param mlp_c_fc_weight : [n_x4, n]" in gpt2.source  # in the block of transformer.h
    assert "gelu_tanh(addmm_2)" in gpt2.source  # HF's hand-written tanh GELU, identified
    mup = MuP(gpt2, "adam")
    model = _gpt2(256)
    report = mup.apply(model)
    assert set(report.patched) == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.1.attn.c_attn",
        "lm_head",
    }
    # HF's c_proj init 0.02/sqrt(2 n_layer), kept at the base and scaled as any hidden weight
    std = float(model.transformer.h[0].attn.c_proj.weight.detach().std())
    assert std == pytest.approx(gpt2.base["transformer.h.0.attn.c_proj.weight"][1] / 2, rel=0.02)


@pytest.mark.slow  # GPT-2's trace and apply stay in; the zoo's per-family test checks HF Llama
def test_hf_gpt2_coordinate_check(gpt2):
    # µP applied: every vector passes at widths 256..1024 (2 seeds, 3 AdamW steps at lr 0.01,
    # +-0.25 as for nanoGPT). At 128..512 the second block's attention logits still read -0.32
    # (the engine's own module of this program: -0.40); the slope shrinks as widths grow.
    mup = MuP(gpt2, "adam")
    # at lr 0.01, as measured (at the default 3e-3 this vocab-64 GPT-2 reads its second
    # block's logits at -0.25, just outside; with vocab 256 it passes at 3e-3: docs/torch.md;
    # at 0.01 the check passes but warns: c_proj's change grows 2.6x over linear at 1024)
    good = coord_check(mup, (256, 512, 1024), lr=1e-2, tolerance=0.25)
    assert good.passed, list(good.failures)
    # as it comes (SP): the attention and output logits blow up (slopes +2 and more)
    bad = coord_check(mup, (128, 256), seeds=(0,), apply=False, tolerance=0.25)
    assert {"h.0.scaled_dot_product_attention_logits", "linear"} <= set(bad.failures)


def _llama(n, layers=2, kv_heads=4):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=n,
        intermediate_size=2 * n,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=64,
        max_position_embeddings=8,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.slow  # the zoo's per-family test (test_zoo_small.py) checks HF Llama by default
def test_hf_llama_rotary_swiglu_and_its_coordinate_check():
    pytest.importorskip("transformers")
    traced = from_torch(_llama, (64, 128), _tokens)
    # rotary: an exact rotation of coordinate pairs, said in the source; q and k are the rotated
    assert "# layers.linear: rotary embedding" in traced.source
    assert "dot(linear, linear_1, n_by4)" in traced.source
    assert "mul_11 = v_silu * linear_5" in traced.source  # SwiGLU: silu(gate) * up
    assert "mul_3 = rmsnorm(h)" in traced.source  # Llama's RMSNorm, written by hand
    mup = MuP(traced, "adam")
    good = coord_check(mup, (256, 512, 1024), tolerance=0.25)  # 128..512: logits -0.27, -0.46
    assert good.passed, list(good.failures)
    bad = coord_check(mup, (128, 256), seeds=(0,), apply=False, tolerance=0.25)
    assert {"layers.0.scaled_dot_product_attention_logits", "linear_14"} <= set(bad.failures)


# --- the mup package, for the same model --------------------------------------------------------


class Untied(nn.Module):
    """nanoGPT's layout with separate q, k, v and an untied readout (``readout``: nn.Linear, or
    mup's MuReadout for the mup version of the same model)."""

    def __init__(self, n, readout=nn.Linear, vocab=64, seq=8, heads=4):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n), nn.Embedding(seq, n)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(n), nn.LayerNorm(n), nn.LayerNorm(n)
        self.q, self.k, self.v, self.proj = (nn.Linear(n, n) for _ in range(4))
        self.fc, self.out = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.head = readout(n, vocab)
        self.heads = heads

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        b, t, c = x.shape
        h = self.ln1(x)
        q, k, v = (
            z(h).view(b, t, self.heads, -1).transpose(1, 2) for z in (self.q, self.k, self.v)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.lnf(x))


def test_derived_ratios_equal_the_mup_packages():
    mup = pytest.importorskip("mup")
    traced = MuP(from_torch(Untied, (64, 128), _tokens), "adamw")
    model = Untied(512)
    traced.apply(model)  # hooks none: q is its own layer, the readout untied
    ours_lr = traced.lr_multipliers(model)
    # mup's MuAdamW keeps lr·wd per step at every width: independent decay of λ = lr·wd
    groups = traced.param_groups(model, lr=1.0, weight_decay=1.0, decay="independent",
                                 decay_params="all")  # MuAdamW decays every param
    ours_wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    base = traced.traced.base

    theirs = Untied(512, readout=mup.MuReadout)
    mup.set_base_shapes(theirs, Untied(64, mup.MuReadout), delta=Untied(128, mup.MuReadout))
    opt = mup.MuAdamW(theirs.parameters(), lr=1.0, weight_decay=1.0)
    mup_lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    mup_wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    r = 512 / 64
    for name, p in theirs.named_parameters():
        scales = []  # mup's init: the std its initialisers give this param, relative to base
        mup.init.constant_std_init_(p, lambda t, scale=1.0, s=scales: s.append(scale))
        init, lr = scales[0], mup_lr[id(p)]
        if name.startswith("head."):  # MuReadout's forward multiplier 1/width_mult, folded
            if name == "head.weight":  # (Adam: init and LR both times it)
                init, lr = init / r, lr / r
        if name == "q.weight" or name == "q.bias":  # attention 1/d, by hand as mup asks
            init, lr = init * r**-0.5, lr * r**-0.5
        if base[name][0] == "normal":
            ours = float(model.get_parameter(name).detach().std())
            assert ours / base[name][1] == pytest.approx(init, rel=0.05), name
        assert ours_lr[name] == pytest.approx(lr), name
        # AdamW's decay factor (1 - lr * wd) a step: width-independent in both
        ours = ours_lr[name] * ours_wd[id(model.get_parameter(name))]
        assert ours == pytest.approx(mup_lr[id(p)] * mup_wd[id(p)]) == pytest.approx(1.0), name


def test_mups_tied_embedding_rescale_against_ours(nano):
    # docs/torch.md: mup's set_base_shapes rescales a MuSharedReadout's weight by
    # sqrt(width_mult), and with it the embedding it shares; µP keeps the lookup's init
    mup = pytest.importorskip("mup")

    class Tied(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.e = nn.Embedding(64, n)
            self.o = mup.MuSharedReadout(self.e.weight, bias=False)

    torch.manual_seed(0)
    theirs = Tied(512)
    before = float(theirs.e.weight.detach().std())
    mup.set_base_shapes(theirs, Tied(64), delta=Tied(128))
    assert float(theirs.e.weight.detach().std()) / before == pytest.approx(8**0.5, rel=1e-3)

    model = NanoGPT(512)
    MuP(nano, "adam").apply(model)
    std = float(model.wte.weight.detach().std())
    assert std == pytest.approx(nano.base["wte.weight"][1], rel=1e-3)


# --- the command: tensorprog trace FILE.py:FUNCTION ------------------------------------------

_MODEL_FILE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e, self.h, self.o = nn.Embedding(16, n), nn.Linear(n, 2 * n), nn.Linear(2 * n, 16)

    def forward(self, idx):
        return self.o(torch.relu(self.h(self.e(idx))))


class Bad(Net):
    def forward(self, idx):
        return self.o(torch.relu(self.h(self.e(idx))).cumsum(1))


def build(n):
    return Net(n)


def bad(n):
    return Bad(n)


def broken(n):
    return Net(n // 0)
"""


def _cli(capsys, tmp_path, *argv):
    from tensorprog.cli.main import main

    (tmp_path / "net.py").write_text(_MODEL_FILE)
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_trace_command_writes_a_program(capsys, tmp_path):
    from tensorprog import parse_file

    out = tmp_path / "net.tp"
    code, stdout, err = _cli(
        capsys, tmp_path, "trace", f"{tmp_path}/net.py:build", "--widths", "32,64", "-o", str(out)
    )
    assert (code, err) == (0, "")
    assert "param h_weight : [n_x2, n]" in out.read_text()
    again = _cli(capsys, tmp_path, "trace", f"{tmp_path}/net.py:build", "-o", str(out))
    assert again[0] == 0  # a program it traced is replaced; any other .tp is refused
    abc = derive(parse_file(str(out)), "adam").abc
    assert (abc["h_weight"].b, abc["h_weight"].c) == (Fraction(1, 2), 1)  # hidden, Adam


@pytest.mark.parametrize(
    "target, message",
    [
        ("missing.py:build", r"missing.py: no such file"),
        ("net.py", r"expected FILE.py:FUNCTION"),
        ("net.py:nope", r"has no function 'nope' .*\n.*there: Bad, Net, bad, broken, build$"),
        ("net.py:broken", r"net.py:29:5: error: broken\(32\) failed: ZeroDivisionError"),
        ("net.py:bad", r"net.py:17:9: error: cannot trace the op cumsum \(in the model\)"),
    ],
)
def test_trace_command_errors(capsys, tmp_path, target, message):
    code, _, err = _cli(capsys, tmp_path, "trace", f"{tmp_path}/{target}", "--widths", "32,64")
    assert code == 2
    assert re.search(message, err, re.M), err
    assert "Traceback" not in err


class Masked(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.e, self.o = nn.Embedding(16, n), nn.Linear(n, 16)

    def forward(self, mask, idx=None, scale=1):
        if idx is None:  # called with the token ids alone
            mask, idx = None, mask
        out = self.o(self.e(idx)) * scale
        return out if mask is None else out.masked_fill(mask, 0.0)


def test_none_or_a_number_among_the_inputs_is_traced_as_a_constant():
    # before: AttributeError ('NoneType' object has no attribute 'dtype') in the walk
    ids = torch.zeros(2, 8, dtype=torch.long)
    traced = from_torch(Masked, (16, 32), lambda m: (None, ids, 2))
    assert traced.source.endswith("mul = 2.0 * linear\noutput mul\n")  # the 2 baked in
    assert "dim T = 8" in traced.source and traced.source.count("input ") == 1
    # a lone tensor is the one input, not split by tuple() into rows (a second input)
    lone = from_torch(lambda n: Masked(n), (16, 32), lambda m: ids)
    assert "dim T = 8" in lone.source and lone.source.count("input ") == 1


def test_a_users_file_under_a_directory_named_torch_is_the_users_line(capsys, tmp_path):
    # before: any path with "/torch/" in it was taken for torch's own and skipped: no position
    project = tmp_path / "torch"
    project.mkdir()
    code, _, err = _cli(capsys, project, "trace", f"{project}/net.py:bad", "--widths", "32,64")
    assert code == 2 and re.search(r"torch/net.py:17:9: error: cannot trace the op cumsum", err)


def test_example_hf_gpt2_mup_runs(capsys):
    pytest.importorskip("transformers")
    from conftest import ROOT, import_file

    example = import_file(ROOT / "examples" / "hf_gpt2_mup.py")
    out = example.main(
        ["--widths", "32,64", "--lrs", "0.001,0.01", "--steps", "3", "--layers", "1"]
    )
    rows = [line.split() for line in out.splitlines() if line.split()[0] in ("32", "64")]
    assert len(rows) == 4  # mup and sp, two widths each
    assert all(2.0 < float(v) < 6.0 for row in rows for v in row[1:3])  # ln(96) = 4.56 at start
    assert rows[0] == rows[2]  # at the base width µP is the model as it comes


# --- several heads, gradient stops, Adam's eps, the base init, what a refusal says ------------


class TwoHeads(nn.Module):
    """Two readouts of one hidden vector, and a layer the forward never uses."""

    def __init__(self, n):
        super().__init__()
        self.e, self.h = nn.Embedding(16, n), nn.Linear(n, n)
        self.l2, self.l3 = nn.Linear(n, 16), nn.Linear(n, 10)
        self.unused = nn.Linear(n, n)

    def forward(self, idx):
        u = torch.relu(self.h(self.e(idx)))
        return self.l2(u), self.l3(u)


@pytest.fixture(scope="module")
def two():
    return from_torch(TwoHeads, (32, 64), _tokens)


def test_every_output_is_traced(two):
    assert re.findall(r"^output (\w+)$", two.source, re.M) == ["linear_1", "linear_2"]
    mup = MuP(two, "adam")
    torch.manual_seed(0)
    model = TwoHeads(128)
    report = str(mup.apply(model))
    # the second head is a readout as the first: init (n/base)^-1 from the base (Table 3)
    std = float(model.l3.weight.detach().std())
    assert std == pytest.approx(two.base["l3.weight"][1] / 4, rel=1e-6)
    assert "init l3.weight" in report
    assert "not in the program: unused.weight keeps its init and the LR given" in report
    assert "not in the program: unused.bias" in report
    with pytest.warns(UserWarning, match=r"keep lr 0\.01 unchanged.*unused\.weight, unused\.bias"):
        groups = mup.param_groups(model, lr=1e-2)
    lrs = {p: g["lr"] for g in groups for p in g["params"]}
    assert lrs[model.l3.weight] == lrs[model.l2.weight] == pytest.approx(1e-2 / 4)
    assert lrs[model.unused.weight] == 1e-2


def test_an_output_of_one_tensor_not_named_logits_is_that_tensor():
    # PP-LCNet's classifier returns its logits as a BaseModelOutput's last_hidden_state; an
    # output with a second tensor and no logits stays refused (which of them is the output?)
    outputs = pytest.importorskip("transformers.modeling_outputs")
    from conftest import traced_computes_the_model

    class Named(TwoHeads):
        def forward(self, idx):
            u = torch.relu(self.h(self.e(idx)))
            return outputs.BaseModelOutput(last_hidden_state=self.l2(u))

    class Two(TwoHeads):
        def forward(self, idx):
            u = torch.relu(self.h(self.e(idx)))
            return outputs.BaseModelOutput(last_hidden_state=self.l2(u), hidden_states=(u,))

    class Plain(Named):  # the same params and tensor, unwrapped for the oracle
        def forward(self, idx):
            return super().forward(idx).last_hidden_state

    traced = from_torch(Named, (32, 64), _tokens)
    assert re.findall(r"^output (\w+)$", traced.source, re.M) == ["linear_1"]
    traced_computes_the_model(traced, Plain, _tokens)
    # the check trains on that field as the logits (the output, not its wrapper)
    out = Named(32)(*_tokens(None))
    assert check_logits(out) is out.last_hidden_state
    with pytest.raises(TensorProgError, match="returned a BaseModelOutput: there is no output"):
        from_torch(Two, (32, 64), _tokens)


class Pooled(TwoHeads):
    """A layer the forward calls but whose result reaches no output (BERT's pooler under a
    masked-LM head)."""

    def forward(self, idx):
        u = torch.relu(self.h(self.e(idx)))
        torch.tanh(self.unused(u[:, 0])).sum()  # (a result nothing reads is skipped: the sum)
        return self.l2(u)


def test_a_layer_whose_result_reaches_no_output_is_left_as_it_is():
    pooled = from_torch(Pooled, (32, 64), _tokens)
    assert "unused_weight" in pooled.params  # traced: the forward computes with it
    with pytest.warns(UserWarning, match="does not reach any output") as caught:
        mup = MuP(pooled, "adam")
    assert "'unused_weight' does not reach" in str(caught[0].message)
    assert mup.unused == ["unused_weight", "unused_bias"]
    torch.manual_seed(0)
    model = Pooled(128)
    before = model.unused.weight.detach().clone()
    report = str(mup.apply(model))
    assert torch.equal(model.unused.weight, before)
    assert "unused by the traced forward: unused.weight reaches no output (no gradient), " \
        "left as it is" in report
    assert "init l2.weight" in report and "l3" in report  # l3: never called, as before
    assert mup.unreached(model) == ["unused.weight", "unused.bias"]
    with pytest.warns(UserWarning, match=r"unchanged at every width: l3\.weight, l3\.bias$"):
        groups = mup.param_groups(model, lr=1e-2)  # no gradient: the unused layer needs none
    opt = torch.optim.Adam(groups)
    model(*_tokens(model)).square().mean().backward()
    opt.step()
    assert model.unused.weight.grad is None and torch.equal(model.unused.weight, before)
    # its vectors are not judged by the coordinate check (the engine holds a value no output
    # reads to nothing); every other vector is, and passes
    with pytest.warns(UserWarning) as caught:  # the engine's, as above, and l3's
        result = coord_check(mup, (32, 64, 128), steps=2, seeds=(0,))
    assert any(str(w.message).endswith("l3.weight, l3.bias") for w in caught)
    assert result.passed
    pooled_vectors = [r for r in result.results if result.where(r.name).startswith("unused")]
    assert pooled_vectors and not any(r.judged for r in pooled_vectors)
    assert "reaches no output of the forward" in pooled_vectors[0].verdict


def test_adam_eps_per_group_scales_as_the_gradient_entries(two):
    # µP for Adam (Table 3): ∂f/∂h is Θ(1/n) and the inputs Θ(1), so the gradient entries of the
    # embedding, the hidden weight and its bias are Θ(1/n); a readout's are Θ(1)
    mup = MuP(two, "adam")
    model = TwoHeads(128)
    mup.apply(model)
    with pytest.warns(UserWarning):
        groups = mup.param_groups(model, lr=1e-2, eps=1e-6)
    eps = {p: g["eps"] for g in groups for p in g["params"]}
    for p in (model.e.weight, model.h.weight, model.h.bias):
        assert eps[p] == pytest.approx(1e-6 / 4)
    for p in (model.l2.weight, model.l2.bias, model.l3.weight, model.l3.bias):
        assert eps[p] == pytest.approx(1e-6)
    assert eps[model.unused.weight] == 1e-6
    assert len({(g["lr"], g["eps"]) for g in groups}) == len(groups)
    with pytest.warns(UserWarning):  # at the base width: eps itself, every group
        base = mup.param_groups(TwoHeads(32), lr=1e-2)
    assert {g["eps"] for g in base} == {1e-8}
    with pytest.warns(UserWarning):  # SGD has no eps
        assert all("eps" not in g for g in MuP(two, "sgd").param_groups(model, lr=1e-2))


def test_base_std_is_the_init_law_or_pooled(two):
    # nn.Linear: kaiming-uniform, bound 1/sqrt(fan_in), std bound/sqrt(3), for the 10-entry
    # bias too (one draw of it read 0.105 here, the law 0.102); nn.Embedding: N(0, 1)
    assert two.base["l3.bias"] == ("normal", 1 / (3 * 32) ** 0.5)
    assert two.base["h.weight"] == ("normal", 1 / (3 * 32) ** 0.5)
    assert two.base["e.weight"] == ("normal", 1.0)

    class Reinit(TwoHeads):  # re-initialised as HF does: no law of torch's, pooled over builds
        def __init__(self, n):
            super().__init__(n)
            for lin in (self.h, self.l3):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.normal_(lin.bias, std=0.02)

    base = from_torch(Reinit, (32, 64), _tokens).base
    assert base["h.weight"][1] == pytest.approx(0.02, rel=0.03)
    assert base["l3.bias"][1] == pytest.approx(0.02, rel=0.15)  # 32 draws of 10 entries


class Detached(TwoHeads):
    def forward(self, idx):
        return self.l2(torch.relu(self.h(self.e(idx))).detach())


class NoGrad(TwoHeads):
    def forward(self, idx):
        with torch.no_grad():
            u = self.e(idx)
        return self.l2(u)


class TokenMean(TwoHeads):
    def forward(self, idx):
        return self.l2(self.e(idx).mean(1))


def test_gradient_stops_are_refused_at_the_users_line_and_a_token_mean_traces():
    with pytest.raises(
        TensorProgError,
        match=r"test_trace.py:\d+:\d+: error: cannot trace detach: no gradient flows through it",
    ):
        from_torch(Detached, (32, 64), _tokens)
    # at the first line inside the region (export gives the region's op none of its own)
    with pytest.raises(TensorProgError, match=r"test_trace.py:\d+:\d+: error: cannot trace "
                       r"torch.no_grad: no gradient flows(.|\n)*u = self.e\(idx\)"):
        from_torch(NoGrad, (32, 64), _tokens)
    # the mean over the tokens is the language's mean(h) (tests/fromtorch/test_pool.py)
    assert re.search(r"= mean\(\w+\)$", from_torch(TokenMean, (32, 64), _tokens).source, re.M)


class NoGradIds(TwoHeads):
    def forward(self, idx):
        with torch.no_grad():  # Phi-4-multimodal's: a mask of the ids, no param in it
            (idx == 3).unsqueeze(-1)
        return self.l2(torch.relu(self.h(self.e(idx))))


def test_torch_no_grad_over_the_ids_alone_leaves_gradients_on():
    # the walk computed the region's value and, failing on its subgraph, left grad off for the
    # process: the coordinate check's backward then failed ("does not require grad")
    traced = from_torch(NoGradIds, (32, 64), _tokens)
    assert torch.is_grad_enabled()
    assert "linear_1" in traced.source


def test_a_position_table_longer_than_the_sequence_reads_positions_0_to_t():
    # nanoGPT's block size: a table of 16 positions, traced on 8 tokens; the program's
    # one-hot positions are over T = 8, so its text parses and derives
    class Longer(NanoGPT):
        def __init__(self, n):
            super().__init__(n)
            self.wpe = nn.Embedding(16, n)

    traced = from_torch(Longer, (64, 128), _tokens)
    assert "param wpe_weight : [n, T]" in traced.source
    model = Longer(256)
    MuP(traced, "adam").apply(model)
    assert float(model.wpe.weight.detach().std()) == pytest.approx(1.0, rel=0.05)


def test_param_groups_decay_matrices_only_by_default(nano):
    """Weight decay reaches the 2-D params (matrices, embeddings), not gains or biases, unless
    decay_params says otherwise: "all", a set of names, or a predicate."""
    mup = MuP(nano, "adam")
    model = NanoGPT(256)
    mup.apply(model)

    def decays(**kw):
        groups = mup.param_groups(model, lr=1e-3, weight_decay=0.1, decay="decoupled", **kw)
        wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        return {n for n, p in model.named_parameters() if wd[id(p)]}

    names = {n for n, _ in model.named_parameters()}
    matrices = {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert matrices and matrices != names  # the model has gains or biases too
    assert decays() == matrices
    assert decays(decay_params="all") == names
    assert decays(decay_params={"wte.weight"}) == {"wte.weight"}
    assert decays(decay_params=lambda n, p: n.endswith("fc.weight")) == {
        n for n in names if n.endswith("fc.weight")}
