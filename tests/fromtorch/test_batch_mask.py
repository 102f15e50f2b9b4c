"""from_torch on X-MOD's per-language adapters: ``new[mask] = adapter(h[mask])`` into zeros, with
``mask = lang_ids == k`` over the batch. With the model's own ids of one language (no lang_ids
given) the mask keeps every example, and the layer is its adapter on every token: oracle, the
emitted program computes the model (float64); the masks of the other languages keep none, and
their adapters reach no output. A mask that keeps part of the batch (several languages), one over
the tokens too, one that keeps every example at the trace's batch size only, one computed from the
token ids, one (or the ids it is computed from) written in place after, a reshape of the
selected examples by their unknown number, a sum over no examples, and an assignment over
anything but zeros or through a slice or view of them, are refused at their lines."""

import pytest
from conftest import traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (32, 64)
VOCAB = 13


def _tokens(model):
    return (torch.arange(16).remainder(VOCAB).view(2, 8),)


class Adapted(nn.Module):
    """X-MOD's layer in small (modeling_xmod.py's XmodOutput.lang_adapter): a layer norm, then
    each language's bottleneck adapter (n -> n/2 -> n) on its examples, plus the normed input.
    ``form`` varies the mask or the assignment."""

    def __init__(self, n, languages=1, form="default", default=0):
        super().__init__()
        self.form, self.default = form, default
        self.e, self.ln = nn.Embedding(VOCAB, n), nn.LayerNorm(n)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(n, n // 2), nn.GELU(), nn.Linear(n // 2, n))
            for _ in range(languages))
        self.head = nn.Linear(n, VOCAB, bias=False)

    def forward(self, idx, lang_ids=None):
        if lang_ids is None:  # the default language's id for every example, as X-MOD's
            lang_ids = self.default * torch.ones(idx.shape[0])
        if self.form == "ids_edited":  # every example's id but the first two's
            lang_ids = lang_ids.clone()
            lang_ids[2:] = 99
        h = self.ln(self.e(idx))
        b, t, n = h.shape
        new = h.clone() if self.form == "over_h" else torch.zeros_like(h)
        if self.form in ("into_slice", "into_view"):  # written through a view of new's zeros
            new = torch.zeros((b, t, 2 * n) if self.form == "into_slice" else (b, t * n),
                              device=h.device, dtype=h.dtype)
        for k, adapter in enumerate(self.adapters):
            mask = idx[:, 0] == 3 if self.form == "from_ids" else lang_ids == k
            if self.form == "first_two":  # every example of a batch of 2, not of 3
                mask = torch.arange(idx.shape[0]) < 2
            if self.form == "edited":  # the first two examples only, at any batch size
                mask[2:] = False
            x = h[mask]
            y = adapter(x.reshape(-1, x.shape[-1])).view(x.shape) if self.form == "flat" \
                else adapter(x)
            if self.form == "into_slice":
                new[mask, :, :n] = y
            elif self.form == "into_view":
                new.view(b, t, n)[mask] = y
            else:
                new[mask] = y + y.sum() if self.form == "sum" else y
        return self.head(new.view(b, t, -1)[..., :n] + h)


@pytest.fixture(scope="module")
def traced():
    return from_torch(Adapted, WIDTHS, _tokens)


def test_one_language_for_the_whole_batch_is_its_adapter_on_every_token(traced):
    # before: refused at h[mask], "an index of a traced value other than a param table's rows"
    assert {u.target for u in traced.params.values()} >= {
        "adapters.0.0.weight", "adapters.0.2.weight"}, traced.source
    traced_computes_the_model(traced, Adapted, _tokens)


def test_ids_of_one_language_given_as_an_input_are_a_constant_of_the_trace(traced):
    # the same program as the model's own ids give, which the model computes the same with
    def given(model):
        return (_tokens(model)[0], torch.zeros(2, dtype=torch.long))

    assert from_torch(Adapted, WIDTHS, given).source == traced.source
    model = Adapted(WIDTHS[0])
    assert torch.equal(model(*given(model)), model(*_tokens(model)))


def _refused(build, match, inputs=_tokens):
    with pytest.raises(TensorProgError, match=r"test_batch_mask.py:\d+:\d+: error: (.|\n)*"
                       + match):
        from_torch(build, WIDTHS, inputs)


def test_a_batch_of_two_languages_is_refused_as_a_model_per_example():
    def two(model):
        return (_tokens(model)[0], torch.tensor([0, 1]))

    _refused(lambda n: Adapted(n, languages=2), r"keeps 1 of the 2 of its examples(.|\n)*"
             r"a different model per example", two)


@pytest.mark.parametrize("default", [0, 1])
def test_the_adapters_of_languages_the_batch_does_not_hold_reach_no_output(default):
    # before: refused at h[mask] of the other language, a mask that keeps no example
    def build(n):
        return Adapted(n, languages=3, default=default)

    traced = from_torch(build, WIDTHS, _tokens)
    targets = {u.target for u in traced.params.values()}
    assert f"adapters.{default}.0.weight" in targets, traced.source
    assert not {t for t in targets if t.startswith("adapters.") and
                not t.startswith(f"adapters.{default}.")}, traced.source
    traced_computes_the_model(traced, build, _tokens)


def test_a_sum_over_examples_selected_by_none_is_refused():
    _refused(lambda n: Adapted(n, languages=2, form="sum", default=1), r"a sum of examples "
             r"selected by a mask that keeps none")


def test_the_selected_examples_viewed_by_their_unknown_number_are_refused():
    _refused(lambda n: Adapted(n, form="flat"), r"a reshape of examples selected by a mask over "
             r"the batch(.|\n)*whose number export leaves unknown")


def test_a_mask_over_the_tokens_too_is_refused():
    def per_token(model):  # X-MOD's lang_ids given as (batch, tokens)
        return (_tokens(model)[0], torch.zeros(2, 8, dtype=torch.long))

    _refused(Adapted, r"a selection of examples by a boolean mask of shape \[2, 8\] over a "
             r"value of shape \[2, 8, 32\]", per_token)


def test_a_mask_keeping_every_example_of_this_batch_size_only_is_refused():
    _refused(lambda n: Adapted(n, form="first_two"), r"a mask over the batch computed "
             r"otherwise than from one value for every example")


@pytest.mark.parametrize("form", ["edited", "ids_edited"])
def test_a_mask_or_its_ids_written_in_place_is_refused(form):
    # before: m = lang_ids == k; m[2:] = False kept both examples of the trace's batch and was
    # traced as keeping every one; at a batch of 3 the model drops the third's adapter
    _refused(lambda n: Adapted(n, form=form), r"a mask over the batch computed otherwise than "
             r"from one value(.|\n)*written in place after")


@pytest.mark.parametrize("form", ["into_slice", "into_view"])
def test_an_assignment_through_a_view_of_the_zeros_is_refused(form):
    # before: new[m, :, :n] = y (and new.view(b, t, n)[m] = y) was traced as y on the slice
    # while new, read after, stayed the zeros: the adapter dropped from the program
    _refused(lambda n: Adapted(n, form=form), r"an in-place index_put_ on a (slice|view) of a "
             r"value read elsewhere")


def test_a_mask_computed_from_the_token_ids_is_refused():
    _refused(lambda n: Adapted(n, form="from_ids"), r"mask computed from the token ids")


def test_an_assignment_over_the_vector_itself_is_refused():
    _refused(lambda n: Adapted(n, form="over_h"), r"to anything but zeros")


@pytest.mark.slow
def test_hf_xmod_of_its_default_language_computes_the_model():
    transformers = pytest.importorskip("transformers")

    def build(n):
        # pad id -1: RoBERTa's positions (the ids' cumsum past the pad id) are 0..T-1, the rows
        # of a table of T the oracle copies whole (at pad id 1 they are rows 2..T+1); the
        # program's layer norms take torch's eps
        config = transformers.XmodConfig(pad_token_id=-1, layer_norm_eps=1e-5,
            vocab_size=VOCAB, hidden_size=n, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=4 * n, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            max_position_embeddings=8, languages=["en_XX", "de_DE", "fr_XX"],
            default_language="de_DE")
        return transformers.XmodForMaskedLM(config)

    traced = from_torch(build, WIDTHS, _tokens)
    assert "adapter_modules_de_DE_dense1_weight : [n_by2, n]" in traced.source, traced.source
    assert "en_XX" not in traced.source and "fr_XX" not in traced.source, traced.source
    traced_computes_the_model(traced, build, _tokens)
