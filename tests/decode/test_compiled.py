"""`generate --compile`: the compiled decode step computes what the eager one does, for both families."""

import pytest
import torch
from checkpoints import hf_gpt2, hf_llama, save_hf

from llmgen.decode import Decoder
from llmgen.decode.compiled import CACHE_STEP, CompiledDecoder
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_weights
from llmgen.quantization.model import quantize_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("make, quantize", [(hf_llama, "int4"), (hf_gpt2, "none")])
def test_compiled_decode_equals_eager(tmp_path, make, quantize):
    model, _ = load_weights(save_hf(make(), tmp_path))
    if quantize != "none":
        quantize_model(model, quantize, own_kernels=False)  # torch.compile traces PyTorch's kernels, not ours
    decoder = CompiledDecoder(model)
    assert decoder.cache_length(1) == min(CACHE_STEP, model.config.context_length)
    prompt = torch.randint(0, 1000, (5,), generator=torch.Generator().manual_seed(7)).tolist()
    greedy = SamplingSettings(max_new_tokens=12, temperature=0)
    eager_ids = list(generate_ids(model, prompt, greedy))
    compiled_ids = list(generate_ids(model, prompt, greedy, decoder=decoder))
    assert compiled_ids == eager_ids

    ids = prompt + eager_ids
    model.setup_cache(1, decoder.cache_length(len(ids)))
    with torch.inference_mode():
        model(torch.tensor([ids[:5]]), 0)
        eager_decoder = Decoder(model, "pytorch", "the test's")
        eager = [eager_decoder(t, pos) for pos, t in enumerate(ids[5:], start=5)]
        model(torch.tensor([ids[:5]]), 0)
        compiled = [decoder(t, pos) for pos, t in enumerate(ids[5:], start=5)]
    # Inductor keeps some bfloat16 intermediates of the int4 layers in float32: close, not equal.
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager), atol=2e-2 if quantize == "int4" else 1e-4,
                               rtol=0)


def test_compile_without_a_cxx_compiler_is_one_clear_error(tmp_path, monkeypatch):
    from llmgen.errors import LLMGenError

    model, _ = load_weights(save_hf(hf_llama(), tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ or clang++ here
    with pytest.raises(LLMGenError, match="--compile needs a C\\+\\+ compiler"):
        CompiledDecoder(model)


def test_compile_refuses_llmgens_own_kernels(tmp_path):
    from llmgen import kernels
    from llmgen.errors import LLMGenError

    if kernels.library() is None:
        pytest.skip(f"llmgen's kernels do not run here: {kernels.unavailable_reason()}")
    model, _ = load_weights(save_hf(hf_llama(), tmp_path))
    quantize_model(model, "int4")
    with pytest.raises(LLMGenError, match="own_kernels=False"):
        CompiledDecoder(model)
