"""KV-cache decoding, cropping past the window, stop conditions and the text stream."""

import pytest
import torch
from checkpoints import hf_gpt2, hf_llama, save_hf

from llmgen import kernels
from llmgen.generation import SamplingSettings, TextStream, generate_ids
from llmgen.loading import load_weights
from llmgen.tokenization.tiktoken_files import get_tokenizer


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model, _ = load_weights(save_hf(hf_llama(), tmp_path_factory.mktemp("llama")))
    return model


@pytest.fixture(scope="module")
def small_window_gpt2(tmp_path_factory):
    model, _ = load_weights(save_hf(hf_gpt2(n_positions=16), tmp_path_factory.mktemp("gpt2")))
    return model


def full_logits(model, ids: list[int]) -> torch.Tensor:
    model.setup_cache(1, len(ids))
    with torch.inference_mode():
        return model(torch.tensor([ids]), 0)[0]


def test_kv_cache_decode_equals_full_recomputation(llama):
    ids = torch.randint(0, 1000, (20,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = full_logits(llama, ids)
    llama.setup_cache(1, len(ids))
    with torch.inference_mode():
        prefill = llama(torch.tensor([ids[:8]]), 0)[0]
        steps = [llama(torch.tensor([[t]]), pos, last_only=True)[0, -1] for pos, t in enumerate(ids[8:], start=8)]
    torch.testing.assert_close(prefill, expected[:8], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(steps), expected[8:], atol=1e-5, rtol=0)


LEVELS = [*kernels.supported_levels(), "0"]  # every kernel level this CPU runs, and none


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("quantize", ["none", "int8", "int4", "int4 on PyTorch's kernel"])
@pytest.mark.parametrize("make", [hf_llama, hf_gpt2])
def test_every_decoder_equals_forward(tmp_path, monkeypatch, make, quantize, level):
    """Each decoder choose_decoder can return (llmgen's kernels at each level, PyTorch's ops) computes what
    forward computes, and is the one the rules say: a LLaMA runs on the kernels when every block is int4 on
    them, a float32 GPT-2's attention always does."""
    from llmgen.decode import choose_decoder
    from llmgen.quantization.model import quantize_model

    monkeypatch.setenv("LLMGEN_KERNELS", level)
    model, _ = load_weights(save_hf(make(), tmp_path))
    if quantize != "none":
        quantize_model(model, quantize.split()[0], own_kernels=quantize == "int4")
    decoder = choose_decoder(model)
    on_kernels = level != "0" and (quantize == "int4" or make is hf_gpt2)
    assert decoder.name == (f"llmgen kernels ({level})" if on_kernels else "pytorch"), decoder
    if level == "0":
        assert decoder.reason == "turned off by LLMGEN_KERNELS=0"
    ids = torch.randint(0, 1000, (14,), generator=torch.Generator().manual_seed(6)).tolist()
    model.setup_cache(1, len(ids))
    with torch.inference_mode():
        model(torch.tensor([ids[:6]]), 0)
        expected = [model(torch.tensor([[t]]), pos, last_only=True)[0, -1] for pos, t in enumerate(ids[6:], start=6)]
        model.setup_cache(1, len(ids))
        model(torch.tensor([ids[:6]]), 0)
        got = [decoder(t, pos) for pos, t in enumerate(ids[6:], start=6)]
    assert got[0].shape == (1000,) and got[0].dtype == torch.float32
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), atol=1e-5, rtol=0)


def test_decode_step_across_a_window_step_equals_forward(llama):
    """Decode steps attend to a window of the cache grown DecodeWindow.STEP positions at a time, with
    the positions not yet written masked: crossing a step changes nothing."""
    from llmgen.decode import Decoder
    from llmgen.models.kv_cache import DecodeWindow

    decoder = Decoder(llama, "pytorch", "the test's")
    start = DecodeWindow.STEP - 4
    ids = torch.randint(0, 1000, (start + 8,), generator=torch.Generator().manual_seed(8)).tolist()
    llama.setup_cache(1, len(ids))
    with torch.inference_mode():
        llama(torch.tensor([ids[:start]]), 0)
        expected = [llama(torch.tensor([[t]]), pos, last_only=True)[0, -1] for pos, t in enumerate(ids[start:], start)]
        llama(torch.tensor([ids[:start]]), 0)
        got, sizes = [], set()
        for pos, t in enumerate(ids[start:], start):
            got.append(decoder(t, pos))
            sizes.add(decoder.plan.window.size)
    assert sizes == {DecodeWindow.STEP, len(ids)}  # the cache's length caps the second window
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), atol=1e-5, rtol=0)


def test_chunked_prefill_after_cache_equals_full(llama):
    # A second multi-token chunk at start_pos > 0 uses the explicit causal mask.
    ids = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(4)).tolist()
    expected = full_logits(llama, ids)
    llama.setup_cache(1, 16)
    with torch.inference_mode():
        llama(torch.tensor([ids[:10]]), 0)
        chunk = llama(torch.tensor([ids[10:]]), 10)[0]
    torch.testing.assert_close(chunk, expected[10:], atol=1e-5, rtol=0)


def test_cropping_past_the_window_equals_crop_every_step(small_window_gpt2):
    model = small_window_gpt2
    prompt = torch.randint(0, 1000, (12,), generator=torch.Generator().manual_seed(5)).tolist()
    warnings = []
    ours = list(generate_ids(model, prompt, SamplingSettings(max_new_tokens=20, temperature=0),
                             on_crop=warnings.append))
    # The reference semantics (nanoGPT's sample): each step sees only the last `window` tokens.
    sequence = list(prompt)
    for _ in range(20):
        sequence.append(int(full_logits(model, sequence[-16:])[-1].argmax()))
    assert ours == sequence[len(prompt):]
    assert len(warnings) == 1 and "window of 16" in warnings[0]


def test_prompt_longer_than_window_is_cropped_with_one_warning(small_window_gpt2):
    prompt = list(range(40))
    warnings = []
    ours = list(generate_ids(small_window_gpt2, prompt, SamplingSettings(max_new_tokens=3, temperature=0),
                             on_crop=warnings.append))
    reference = list(generate_ids(small_window_gpt2, prompt[-16:], SamplingSettings(max_new_tokens=3, temperature=0)))
    assert ours == reference and len(warnings) == 1


def test_stop_ids_end_generation_and_are_reported(llama):
    prompt = [1, 2, 3]
    free = list(generate_ids(llama, prompt, SamplingSettings(max_new_tokens=10, temperature=0)))
    stop_at = free[4]
    first = free.index(stop_at)
    stopped = list(generate_ids(llama, prompt, SamplingSettings(max_new_tokens=10, temperature=0),
                                stop_ids=[stop_at]))
    assert stopped == free[: first + 1]


def test_seeded_sampling_is_reproducible(llama):
    settings = SamplingSettings(max_new_tokens=15, temperature=1.0, top_k=50)
    def run(seed):
        return list(generate_ids(llama, [5, 6], settings, generator=torch.Generator().manual_seed(seed)))
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_padded_vocabulary_is_never_sampled(llama):
    # The model has 1000 rows; pretend the tokenizer knows only 10 tokens.
    settings = SamplingSettings(max_new_tokens=30, temperature=5.0)
    ids = list(generate_ids(llama, [1], settings, n_valid=10, generator=torch.Generator().manual_seed(0)))
    assert all(i < 10 for i in ids)


def test_max_new_tokens_zero_yields_nothing(llama):
    assert list(generate_ids(llama, [1], SamplingSettings(max_new_tokens=0))) == []


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0),
                                 dict(max_new_tokens=-1), dict(temperature=float("nan"))])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)


def text_stream(text_ids, stop_strings=(), tokenizer=None):
    tokenizer = tokenizer or get_tokenizer("gpt2")
    stream = TextStream(iter(text_ids), tokenizer, stop_strings)
    chunks = list(stream)
    return stream, chunks


def test_text_stream_stop_string_is_cut_and_held_back():
    gpt2 = get_tokenizer("gpt2")
    ids = gpt2.encode("Hello world. END of story")
    stream, chunks = text_stream(ids, ["END"])
    assert stream.text == "Hello world. " and "".join(chunks) == stream.text
    assert stream.finish_reason == "stop"
    assert not any("E" in c for c in chunks)


def test_text_stream_releases_a_false_start_of_a_stop_string():
    gpt2 = get_tokenizer("gpt2")
    stream, chunks = text_stream(gpt2.encode("a EN b"), ["END"])
    assert stream.text == "a EN b" and stream.finish_reason == "length"


def test_text_stream_stop_token_is_counted_but_not_printed():
    gpt2 = get_tokenizer("gpt2")
    ids = gpt2.encode("done") + [50256] + gpt2.encode("never")
    stream, chunks = text_stream(ids)
    assert stream.text == "done" and stream.ids == gpt2.encode("done") + [50256]
    assert stream.finish_reason == "stop"


def test_text_stream_chinese_split_across_tokens():
    gpt2 = get_tokenizer("gpt2")
    ids = gpt2.encode("武汉")
    stream, chunks = text_stream(ids)
    assert "".join(chunks) == "武汉" and all("\ufffd" not in c for c in chunks)
