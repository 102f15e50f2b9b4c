"""MobileBERT with its bottleneck fixed while the width grows (intra_bottleneck_size, which its
attention and stacked FFNs run at): derive finds the gradient reaching every param before the
last block unbounded (∞, compounding over the block's repetitions), and MuP refuses it at the
param's line, with the trace's note on the fixed size, where it crashed on Adam's ε."""

import pytest

torch = pytest.importorskip("torch")

from tensorprog import EngineError  # noqa: E402
from tensorprog.fromtorch import MuP, from_torch  # noqa: E402


def _build(n):
    import transformers  # imported by the slow test alone: collecting the file stays cheap

    config = transformers.MobileBertConfig(
        vocab_size=32, hidden_size=n, embedding_size=n, intra_bottleneck_size=32,
        intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
        num_feedforward_networks=2, max_position_embeddings=16, type_vocab_size=1)
    return transformers.MobileBertForMaskedLM(config)


def _tokens(model):
    return (torch.arange(16).remainder(32).view(2, 8),)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_a_gradient_unbounded_through_a_fixed_bottleneck_is_refused_not_a_crash():
    pytest.importorskip("transformers")
    traced = from_torch(_build, (64, 128), _tokens)
    with pytest.raises(EngineError, match=r"error: the gradient that reaches (.|\n)*grows with "
                       r"the width faster than any power(.|\n)*the trace noted: dim f32 stays 32"):
        MuP(traced, "adam")  # before: ValueError: Invalid literal for Fraction: '-oo'
