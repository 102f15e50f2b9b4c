"""Depth for traced models: a stack of identical layers becomes one block repeated over L, derives
as the same model written with `repeat L`, and MuP applies its depth exponents at the model's
own depth (bit-identical at the base width and depth)."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import tensorprog as tp  # noqa: E402
from tensorprog import UsageError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


class Branch(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc1 = nn.Linear(n, n, bias=False)
        self.fc2 = nn.Linear(n, n, bias=False)

    def forward(self, h):
        return self.fc2(torch.relu(self.fc1(h)))


class Res(Branch):
    def forward(self, h):
        return h + super().forward(h)


class ResMLP(nn.Module):
    """Token embedding, a stack of residual two-layer blocks, an untied readout."""

    def __init__(self, n, layers=2, vocab=16, block=Res, outer_add=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, n)
        self.layers = nn.ModuleList(block(n) for _ in range(layers))
        self.out = nn.Linear(n, vocab, bias=False)
        self.outer_add = outer_add

    def forward(self, idx):
        h = self.emb(idx)
        for layer in self.layers:
            h = h + layer(h) if self.outer_add else layer(h)  # the residual here or in the block
        return self.out(h)


# the oracle: the same network written in the language, by hand
HAND = """
width n = 32
depth L = 2
dim V = 16
dim T = 4
input tok : tokens[T, V]
param E : [n, V]
param U : [V, n]
block res(h) {
    param W1 : [n, n]
    param W2 : [n, n]
    return h + W2 @ relu(W1 @ h)
}
hL = repeat L res(E @ tok)
output y = U @ hL
"""
AS_HAND = {"emb_weight": "E", "out_weight": "U", "layers.fc1_weight": "res.W1",
           "layers.fc2_weight": "res.W2"}


def _tokens(model):
    return (torch.zeros(2, 4, dtype=torch.long),)


@pytest.fixture(scope="module")
def resmlp():
    return from_torch(ResMLP, (32, 64), _tokens)


def _exponents(d, names):
    depth = d.depth.abc if d.depth else {}
    return {
        names.get(p, p): (d.abc[p], depth.get(p), d.eps.get(p), d.eps_depth.get(p))
        for p in d.abc
        if p in names or p in names.values()
    }


@pytest.mark.parametrize("outer_add", [False, True])
def test_a_traced_stack_derives_as_the_same_model_written_with_repeat(outer_add):
    # oracle: every param's width and depth exponents (and Adam's eps in both) equal those of
    # the hand-written program, whether the residual add is the block's or its caller's
    block = Branch if outer_add else Res
    traced = from_torch(lambda n: ResMLP(n, block=block, outer_add=outer_add), (32, 64), _tokens)
    assert "depth L = 2" in traced.source
    assert "hL" not in traced.source and " = repeat L layers(emb" in traced.source
    assert set(traced.params) == set(AS_HAND)
    hand = tp.parse(HAND)
    for optimizer in ("adam", "sgd"):
        ours, theirs = tp.derive(traced.program, optimizer), tp.derive(hand, optimizer)
        assert _exponents(ours, AS_HAND) == _exponents(theirs, {v: v for v in AS_HAND.values()})
        assert (ours.depth is None) == (optimizer == "sgd")  # SGD: refused, with the reason
    adam = tp.derive(traced.program, "adam").depth.abc
    assert adam["layers.fc2_weight"] == tp.ABC(1, 0, 0)  # CompleteP: the branch's last weight
    assert adam["layers.fc1_weight"] == tp.ABC(0, 0, 0)


def test_the_block_param_maps_to_every_layers_tensor(resmlp):
    traced = resmlp
    stack = traced.stack
    assert (stack.prefix, stack.block, stack.depth) == ("layers", "layers", 2)
    assert traced.params["layers.fc2_weight"].target == "layers.{i}.fc2.weight"
    assert [u.target for u in stack.layers["layers.fc2_weight"]] == [
        "layers.0.fc2.weight", "layers.1.fc2.weight"]
    assert stack.at("layers.fc2_weight", 5).target == "layers.5.fc2.weight"


class Mixed(ResMLP):
    def __init__(self, n):
        super().__init__(n, layers=3)
        self.layers[2].fc1 = nn.Linear(n, 2 * n, bias=False)  # layer 2 differs in shape
        self.layers[2].fc2 = nn.Linear(2 * n, n, bias=False)


def test_a_stack_that_is_not_one_block_stays_unrolled_with_a_note():
    traced = from_torch(Mixed, (32, 64), _tokens)
    assert traced.stack is None and "repeat" not in traced.source
    assert "# the layers of layers are kept unrolled: layer 2 computes otherwise" in traced.source
    tp.derive(traced.program, "adam")  # still a program that derives
    plain = from_torch(ResMLP, (32, 64), _tokens, blocks=False)
    assert plain.stack is None and "layers_1_fc2_weight" in plain.source
    with pytest.raises(UsageError, match="base_depth is given, but the traced program has no "):
        MuP(plain, "adam", base_depth=2)


class TypeRows(nn.Module):
    """Token-type tables, one per item of a ModuleList, each looked up at one constant id:
    table i at id ``row(i)`` (BERT's token types, all one type, twice)."""

    def __init__(self, n, row=lambda i: i):
        super().__init__()
        self.row, self.e = row, nn.Embedding(13, n)
        self.types = nn.ModuleList(nn.Embedding(4, n) for _ in range(2))
        self.ln, self.head = nn.LayerNorm(n), nn.Linear(n, 13, bias=False)

    def forward(self, idx):
        h = self.e(idx)
        for i, table in enumerate(self.types):
            h = h + table(torch.full_like(idx, self.row(i)))
        return self.head(self.ln(h))


def test_layers_that_read_other_rows_of_their_tables_stay_unrolled():
    # before: rolled into one block reading weight_row0 in every repetition, while the second
    # table is read at row 1
    from conftest import traced_computes_the_model

    traced = from_torch(TypeRows, (32, 64), _tokens)
    assert "kept unrolled: layer 1 computes otherwise" in traced.source, traced.source
    traced_computes_the_model(traced, TypeRows, _tokens)
    same = from_torch(lambda n: TypeRows(n, row=lambda i: 1), (32, 64), _tokens)
    assert same.stack is not None and "weight_row1 : [n]" in same.source, same.source
    traced_computes_the_model(same, lambda n: TypeRows(n, row=lambda i: 1), _tokens)


class SideBySide(nn.Module):
    """Layers of one ModuleList applied side by side to one input (q, k and v), not one after
    another: no stack to roll."""

    def __init__(self, n):
        super().__init__()
        self.e, self.head = nn.Embedding(13, n), nn.Linear(n, 13, bias=False)
        self.qkv = nn.ModuleList(nn.Linear(n, n) for _ in range(3))

    def forward(self, idx):
        h = self.e(idx)
        b, t, n = h.shape
        q, k, v = (f(h).view(b, t, -1, 16).transpose(1, 2) for f in self.qkv)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(h + o.transpose(1, 2).reshape(b, t, n))


@pytest.mark.slow
def test_layers_applied_side_by_side_stay_unrolled():
    # before: rolled into `repeat L qkv(q)`, a block ignoring its argument whose inner vector
    # (k) was read outside it: the program computed something else
    from conftest import traced_computes_the_model

    traced = from_torch(SideBySide, (32, 64), _tokens)
    assert traced.stack is None and "repeat" not in traced.source, traced.source
    assert "the layers of qkv are kept unrolled" in traced.source, traced.source
    traced_computes_the_model(traced, SideBySide, _tokens)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _llama(n, layers=2):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=64, max_position_embeddings=8, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def test_hf_llama_traces_into_a_block_and_mup_applies_its_depth():
    traced = from_torch(_llama, (32, 64), _tokens)
    assert "depth L = 2" in traced.source and " = repeat L layers(embedding)" in traced.source
    mup = MuP(traced, "adam")
    depth = mup.derivation.depth.abc
    branch_ends = {"layers.self_attn_o_proj_weight", "layers.mlp_down_proj_weight"}
    assert {p for p, x in depth.items() if x != tp.ABC(0, 0, 0) and p in traced.params} == (
        branch_ends)
    # at the base width and depth: bit-identical, params and output
    torch.manual_seed(0)
    model = _llama(32)
    before, x = _state(model), torch.randint(64, (2, 8))
    out = model(x).logits
    report = mup.apply(model)
    assert report.depth == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x).logits, out)
    # the user's base depth: a model at it is the base, bit-identical again
    torch.manual_seed(0)
    deep = _llama(32, layers=4)
    before = _state(deep)
    assert mup.apply(deep, base_depth=4).depth == (4, 4)
    assert all(torch.equal(before[k], v) for k, v in deep.state_dict().items())
    assert {g["lr"] for g in mup.param_groups(deep, 1e-3, base_depth=4)} == {1e-3}
    # depth 4 against the traced 2, at the base width: the branches' last weights start at half
    # the std (1/L) and take half the LR (Adam: cL + aL = 1); the others keep their std and LR
    mup.apply(deep)
    for i in range(4):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            w = deep.get_parameter(f"model.layers.{i}.{name}.weight")
            base = traced.base[f"model.layers.{min(i, 1)}.{name}.weight"][1]
            assert float(w.detach().std()) == pytest.approx(base / 2, rel=0.05)
        q = f"model.layers.{i}.self_attn.q_proj.weight"  # its base std, as at depth 2
        base = traced.base[f"model.layers.{min(i, 1)}.self_attn.q_proj.weight"][1]
        assert float(deep.get_parameter(q).detach().std()) == pytest.approx(base, rel=0.05)
    lr = mup.lr_multipliers(deep)
    assert lr["model.layers.3.mlp.down_proj.weight"] == 0.5
    assert lr["model.layers.3.mlp.up_proj.weight"] == 1.0
    assert mup.uncovered(deep) == []


def test_the_users_coordinate_check_judges_every_layer_by_the_block(resmlp):
    # each layer's vectors are measured as the block's repetitions (layers.i.v) and judged by
    # the block's exponents: none is left unjudged under an unrolled name
    from tensorprog.fromtorch import coord_check

    mup = MuP(resmlp, "adam")
    result = coord_check(mup, (32, 64), seeds=(0,), steps=2)
    names = {r.name for r in result.results}
    assert {"layers.0.add", "layers.1.add", "layers.1.h"} <= names
    assert all(r.expected is not None for r in result.results)


class BiasedRes(Res):
    def __init__(self, n):
        super().__init__(n)
        self.fc2 = nn.Linear(n, n)  # the branch ends in a bias, as GPT-2's and BERT's do


@pytest.mark.parametrize(("block", "optimizer", "why"), [
    (Res, "sgd", "depth exponents under sgd are not derived yet"),
    (BiasedRes, "sgd", "depth exponents under sgd are not derived yet"),
])
def test_without_depth_exponents_apply_says_so_and_gives_the_widths_mup(block, optimizer, why):
    # no silent depth scaling: derive says why it has none, and so does apply's report; the
    # width's muP is then the same at every depth
    traced = from_torch(lambda n: ResMLP(n, block=block), (32, 64), _tokens)
    assert traced.stack is not None
    mup = MuP(traced, optimizer)
    assert mup.derivation.depth is None and why in mup.derivation.depth_refused
    deep = ResMLP(64, layers=4, block=block)
    report = str(mup.apply(deep))
    assert f"no exponents in the depth: {why}" in report
    hidden = mup.lr_multipliers(deep)
    assert {hidden[f"layers.{i}.fc1.weight"] for i in range(4)} == {
        hidden["layers.0.fc1.weight"]}


class FirstDiffers(ResMLP):
    def __init__(self, n, layers=3):
        super().__init__(n, layers=layers)
        self.layers[0].fc1 = nn.Linear(n, 2 * n, bias=False)  # layer 0 differs in shape
        self.layers[0].fc2 = nn.Linear(2 * n, n, bias=False)


def test_the_maximal_run_of_alike_layers_ending_the_stack_is_the_block():
    # layer 0 differs: it stays unrolled, with a note, and layers 1.. are the block; the
    # model's depth is then its stack's length less 1, and apply finds every layer
    traced = from_torch(FirstDiffers, (32, 64), _tokens)
    assert "# layer(s) 0 of layers compute otherwise than the rest" in traced.source
    assert "depth L = 2" in traced.source and "layers_0_fc1_weight @ emb" in traced.source
    assert traced.stack.first == 1
    assert [u.target for u in traced.stack.layers["layers.fc2_weight"]] == [
        "layers.1.fc2.weight", "layers.2.fc2.weight"]
    mup = MuP(traced, "adam")
    torch.manual_seed(0)
    model = FirstDiffers(32)
    before = _state(model)
    assert mup.apply(model).depth == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    deep = FirstDiffers(32, layers=5)
    assert mup.apply(deep).depth == (4, 2)
    lr = mup.lr_multipliers(deep)
    assert [lr[f"layers.{i}.fc2.weight"] for i in range(5)] == [1.0, 0.5, 0.5, 0.5, 0.5]


def _changes(mup, depth, seed, apply, block=Res):
    """RMS of the residual stream's change (the last layer's output) after 3 Adam steps."""
    torch.manual_seed(seed)
    model = ResMLP(32, layers=depth, block=block)
    groups = [{"params": list(model.parameters()), "lr": 1e-3}]
    if apply:
        mup.apply(model)
        groups = mup.param_groups(model, 1e-3)
    opt = torch.optim.Adam(groups, lr=1e-3)
    g = torch.Generator().manual_seed(100 + seed)
    x, y = torch.randint(16, (16, 4), generator=g), torch.randint(16, (16, 4), generator=g)
    stream = nn.Sequential(model.emb, *model.layers)
    with torch.no_grad():
        before = stream(x)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((stream(x) - before).pow(2).mean().sqrt())


def test_apply_keeps_the_streams_change_in_place_across_depths(resmlp):
    # the user's own model at depths 2 and 16 (width 32, Adam lr 1e-3, 3 steps, seeds 0 and 1):
    # with the derived depth exponents applied, the slope of log RMS(change) against log L is
    # -0.09; as the model comes, +1.20 (measured at depths 2..32, width 128, 3 seeds: -0.06 and
    # +1.01). Tolerance +-0.25 around 0, as the engine's own depth check allows.
    import math

    mup = MuP(resmlp, "adam")
    for apply, (lo, hi) in ((True, (-0.25, 0.25)), (False, (0.75, math.inf))):
        ratio = [_changes(mup, 16, s, apply) / _changes(mup, 2, s, apply) for s in (0, 1)]
        slope = math.log(sum(ratio) / 2) / math.log(8)
        assert lo < slope < hi, (apply, slope)


HAND_BIASED = HAND.replace("    param W2 : [n, n]\n", "    param W2 : [n, n]\n    param b2 : [n]\n"
                           ).replace("return h + W2 @ relu(W1 @ h)",
                                     "return h + (W2 @ relu(W1 @ h) + b2)")


@pytest.fixture(scope="module")
def biased():
    return from_torch(lambda n: ResMLP(n, block=BiasedRes), (32, 64), _tokens)


def test_a_traced_branch_ending_in_a_bias_derives_as_the_written_one(biased):
    # oracle: nn.Linear's bias ending the branch derives as `return h + (W2 @ .. + b2)` written
    # by hand, width and depth (and Adam's eps in both); CompleteP scales the bias as the
    # branch's last weight: its L updates add coherently, each Θ(1/L)
    names = dict(AS_HAND, **{"layers.fc2_bias": "res.b2"})
    assert set(biased.params) == set(names)
    hand = tp.parse(HAND_BIASED)
    for optimizer in ("adam", "sgd"):
        ours, theirs = tp.derive(biased.program, optimizer), tp.derive(hand, optimizer)
        assert _exponents(ours, names) == _exponents(theirs, {v: v for v in names.values()})
    depth = tp.derive(biased.program, "adam").depth.abc
    assert depth["layers.fc2_bias"] == depth["layers.fc2_weight"] == tp.ABC(1, 0, 0)
    assert depth["layers.fc1_weight"] == tp.ABC(0, 0, 0)


def test_apply_scales_the_branchs_bias_and_keeps_the_stream_in_place_across_depths(biased):
    # bit-identical at the base width and depth; at depth 4 the bias, like fc2's weight, starts
    # at half its std and takes half the LR. Numerically (width 32, Adam lr 1e-3, 3 steps, seeds
    # 0 and 1, depths 2 and 16) the slope of log RMS(change of the stream) against log L is
    # -0.03 applied, +1.28 as the model comes (2..32: -0.05 and +1.32); tolerance as above
    import math

    mup = MuP(biased, "adam")
    torch.manual_seed(0)
    model = ResMLP(32, block=BiasedRes)
    before, x = _state(model), torch.randint(16, (2, 4))
    out = model(x)
    assert mup.apply(model).depth == (2, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), out)
    lr = mup.lr_multipliers(ResMLP(32, layers=4, block=BiasedRes))
    assert lr["layers.3.fc2.bias"] == lr["layers.3.fc2.weight"] == 0.5
    assert lr["layers.3.fc1.weight"] == 1.0
    for apply, (lo, hi) in ((True, (-0.25, 0.25)), (False, (0.75, math.inf))):
        ratio = [_changes(mup, 16, s, apply, BiasedRes) / _changes(mup, 2, s, apply, BiasedRes)
                 for s in (0, 1)]
        slope = math.log(sum(ratio) / 2) / math.log(8)
        assert lo < slope < hi, (apply, slope)


class FromInput(nn.Module):
    """Three layers each reading the stack's input, h = h + layer(x0): layer 0's residual adds
    x0 to itself, the others add their branch to the stream, so the block is layers 1 and 2
    (the first stays unrolled before it)."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(16, n), nn.Linear(n, 16, bias=False)
        self.layers = nn.ModuleList(Branch(n) for _ in range(3))

    def forward(self, idx):
        h = x0 = self.e(idx)
        for layer in self.layers:
            h = h + layer(x0)
        return self.out(h)


def test_a_block_after_unrolled_layers_is_filled_from_its_own_layers():
    # the block's repetition i is the container's item first + i: the oracle filled it from
    # item i (layer 0's params in repetition 0) and found the program wrong where it is right
    from conftest import traced_computes_the_model

    traced = from_torch(FromInput, (32, 64), _tokens)
    assert traced.stack is not None and traced.stack.first == 1, traced.source
    traced_computes_the_model(traced, FromInput, _tokens)
