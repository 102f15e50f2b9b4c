"""The coordinate check of a traced model on a CUDA device: the model is built and initialised
on the CPU and fed the same tokens, so its slopes are the CPU's up to float rounding."""

import math

import pytest

torch = pytest.importorskip("torch")

from tensorprog.fromtorch import MuP, coord_check, from_torch  # noqa: E402


def _llama(n):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=n, intermediate_size=2 * n, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=64, max_position_embeddings=8, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def _tokens(model):
    return (torch.zeros(2, 8, dtype=torch.long),)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_traced_llama_checks_on_cuda_as_on_the_cpu():
    mup = MuP(from_torch(_llama, (64, 128), _tokens), "adam")
    widths = (256, 512, 1024)
    gpu = coord_check(mup, widths, tolerance=0.25, device="cuda")
    cpu = coord_check(mup, widths, tolerance=0.25)
    assert gpu.passed, list(gpu.failures)
    for a, b in zip(gpu.results, cpu.results, strict=True):
        if math.isfinite(a.slope):
            assert a.slope == pytest.approx(b.slope, abs=0.05)
