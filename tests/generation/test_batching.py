"""Continuous batching (batching.BatchEngine): several sequences stepped together give each one exactly the ids
it gets alone, the prefix cache reuses keys and values without changing a token, and cancelling frees a slot."""

import pytest
import torch
from checkpoints import hf_llama, save_hf

from llmgen import kernels
from llmgen.batching import BatchEngine, Finished, Request, Token
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_weights
from llmgen.quantization.model import quantize_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_hf(hf_llama(), tmp_path_factory.mktemp("batching"))


def int4_model(checkpoint):
    model, _ = load_weights(checkpoint)
    quantize_model(model, "int4")
    return model


def prompts(count: int, seed: int = 3) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 1000, (int(n),), generator=generator).tolist()
            for n in torch.randint(3, 40, (count,), generator=generator)]


class Collect:
    def __init__(self):
        self.ids, self.logprobs, self.finished = [], [], None

    def __call__(self, update):
        if isinstance(update, Token):
            self.ids.append(update.id)
            self.logprobs.append(update.logprob)
        else:
            assert isinstance(update, Finished) and self.finished is None
            self.finished = update


def run(engine: BatchEngine, requests: list[Request]) -> None:
    for request in requests:
        assert engine.submit(request) is not None
    for _ in range(10_000):
        if not engine.waiting and not engine.active:
            return
        engine.step()
    raise AssertionError("the engine did not finish")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("path", ["kernels", "pytorch"])
@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampled"])
def test_sequences_stepped_together_get_the_ids_they_get_alone(checkpoint, monkeypatch, path, temperature):
    """Six prompts of different lengths through three slots (so some wait, join between steps and reuse a
    finished one's slot): each sequence's ids are generate_ids' for it alone, token for token, greedy and
    seeded sampling; on llmgen's kernels the rows of all sequences go through one call a step."""
    monkeypatch.setenv("LLMGEN_KERNELS", "auto" if path == "kernels" else "0")
    if path == "kernels" and not kernels.supported_levels():
        pytest.skip("llmgen's kernels do not build here")
    model = int4_model(checkpoint)
    texts = prompts(6)
    lengths = [5, 17, 9, 30, 1, 12]
    expected = [list(generate_ids(model, ids, SamplingSettings(max_new_tokens=n, temperature=temperature),
                                  generator=seeded(i))) for i, (ids, n) in enumerate(zip(texts, lengths))]
    engine = BatchEngine(model, max_sequences=3, ctx_size=96, batch_size=16)
    assert engine.batched == (path == "kernels")
    outputs = [Collect() for _ in texts]
    run(engine, [Request(ids, SamplingSettings(max_new_tokens=n, temperature=temperature), out, generator=seeded(i))
                 for i, (ids, n, out) in enumerate(zip(texts, lengths, outputs))])
    assert [o.ids for o in outputs] == expected
    assert all(o.finished.reason == "length" for o in outputs)
    assert [o.finished.completion_tokens for o in outputs] == lengths
    assert engine.steps < sum(lengths) + sum(len(t) for t in texts)  # steps were shared


def test_a_shared_prefix_is_reused_and_changes_no_token(checkpoint):
    """A prompt that starts with a finished sequence's tokens reuses that slot's keys and values (from a
    busy slot, by copying them), and its greedy ids are those of an engine that computed everything."""
    model = int4_model(checkpoint)
    prefix = prompts(1, seed=8)[0] * 2  # ~6..78 tokens
    first, second, third = prefix + [1, 2, 3], prefix + [4, 5], prefix + [6]
    settings = SamplingSettings(max_new_tokens=8, temperature=0)
    fresh = []
    for ids in (first, second, third):
        out = Collect()
        run(BatchEngine(model, max_sequences=2, ctx_size=128), [Request(ids, settings, out)])
        assert out.finished.cached_tokens == 0
        fresh.append(out.ids)
    engine = BatchEngine(model, max_sequences=2, ctx_size=128)
    outs = [Collect() for _ in range(3)]
    run(engine, [Request(first, settings, outs[0])])
    long_running = Collect()  # keeps one slot busy with the prefix while `third` arrives
    engine.submit(Request(second, SamplingSettings(max_new_tokens=40, temperature=0), long_running))
    engine.step()
    engine.submit(Request(third, settings, outs[2]))
    run(engine, [])
    assert long_running.finished.cached_tokens == len(prefix)  # from the first's slot
    assert outs[2].finished.cached_tokens == len(prefix)  # from a slot: the finished one, or copied
    assert outs[0].ids == fresh[0] and long_running.ids[:8] == fresh[1] and outs[2].ids == fresh[2]


@pytest.mark.parametrize("path", ["kernels", "pytorch"])
def test_the_prefix_tree_outlives_the_slots_and_changes_no_token(checkpoint, monkeypatch, path):
    """One slot, three prompts: the first's prefix is overwritten in the slot by an unrelated second, yet
    the third, sharing the first's 40-token prefix, starts from the tree's copy of its whole 16-token
    blocks (32 tokens) with the greedy ids of an engine that computed everything; and a tree bound of a
    few blocks is kept (the least recently used dropped)."""
    monkeypatch.setenv("LLMGEN_KERNELS", "auto" if path == "kernels" else "0")
    if path == "kernels" and not kernels.supported_levels():
        pytest.skip("llmgen's kernels do not build here")
    model = int4_model(checkpoint)
    generator = torch.Generator().manual_seed(5)
    prefix, other = (torch.randint(0, 1000, (40,), generator=generator).tolist() for _ in range(2))
    first, second, third = prefix + [1, 2, 3], other, prefix + [4, 5]
    settings = SamplingSettings(max_new_tokens=6, temperature=0)
    fresh = Collect()
    run(BatchEngine(model, max_sequences=1, ctx_size=96, prefix_cache_bytes=0),
        [Request(third, settings, fresh, top_logprobs=0)])
    assert fresh.finished.cached_tokens == 0
    engine = BatchEngine(model, max_sequences=1, ctx_size=96)
    outs = [Collect() for _ in range(3)]
    for ids, out in zip((first, second, third), outs):
        run(engine, [Request(ids, settings, out, top_logprobs=0)])
    assert outs[1].finished.cached_tokens == 0
    assert outs[2].finished.cached_tokens == 32  # two whole blocks of the shared 40 tokens, from the tree
    assert outs[2].ids == fresh.ids
    # each row is computed as it would be alone (the copied keys and values are the computed ones): the
    # chosen ids' log-probabilities are the same floats
    assert outs[2].logprobs == fresh.logprobs
    assert len(engine.stored) == len(engine.tree) == 3 + 2  # first: 48 ids computed, second 45; third: 47, 32 of them first's

    block_bytes = engine.prefix_block_bytes
    small = BatchEngine(model, max_sequences=1, ctx_size=96, prefix_cache_bytes=4 * block_bytes)
    for ids in (first, second, third):
        run(small, [Request(ids, settings, Collect())])
    assert len(small.stored) == len(small.tree) == 4
    assert len(small.tree.match(third)) == 2  # the most recent prompt's blocks were kept


def test_a_cancelled_sequence_frees_its_slot_at_the_next_step(checkpoint):
    model = int4_model(checkpoint)
    engine = BatchEngine(model, max_sequences=1, ctx_size=128, max_waiting=1)
    running, waiting, refused = Collect(), Collect(), Collect()
    handle = engine.submit(Request(prompts(1)[0], SamplingSettings(max_new_tokens=100, temperature=0), running))
    engine.step()
    assert engine.submit(Request([1, 2], SamplingSettings(max_new_tokens=3), waiting)) is not None
    assert engine.submit(Request([1, 2], SamplingSettings(max_new_tokens=3), refused)) is None  # queue full
    handle.cancel()
    engine.step()  # the cancelled one leaves; the waiting one takes its slot
    assert running.finished.reason == "cancelled" and len(running.ids) < 100
    run(engine, [])
    assert waiting.finished.reason == "length" and len(waiting.ids) == 3


def test_stop_ids_and_the_context_end_a_sequence(checkpoint):
    model = int4_model(checkpoint)
    prompt, settings = prompts(1)[0], SamplingSettings(max_new_tokens=20, temperature=0)
    plain = list(generate_ids(model, prompt, settings))
    out = Collect()
    run(BatchEngine(model, max_sequences=1, ctx_size=96), [Request(prompt, settings, out, stop_ids=frozenset({plain[4]}))])
    assert out.ids == plain[:plain.index(plain[4]) + 1] and out.finished.reason == "stop"
    short = Collect()
    run(BatchEngine(model, max_sequences=1, ctx_size=len(prompt) + 3), [Request(prompt, settings, short)])
    assert short.ids == plain[:3] and short.finished.reason == "length"
    with pytest.raises(ValueError, match="a prompt needs"):
        BatchEngine(model, max_sequences=1, ctx_size=len(prompt)).submit(Request(prompt, settings, Collect()))


@pytest.mark.parametrize("path", ["kernels", "pytorch"])
def test_a_prompt_longer_than_a_batch_alone_is_run_in_chunks(checkpoint, monkeypatch, path):
    """A 40-token prompt with batch_size 8 and nothing else running: steps that hold only prompt chunks (no
    logits wanted) still fill the cache, and the ids are generate_ids'."""
    monkeypatch.setenv("LLMGEN_KERNELS", "auto" if path == "kernels" else "0")
    if path == "kernels" and not kernels.supported_levels():
        pytest.skip("llmgen's kernels do not build here")
    model = int4_model(checkpoint)
    prompt = prompts(1, seed=11)[0] * 4
    prompt = prompt[:40] if len(prompt) >= 40 else (prompt * 40)[:40]
    expected = list(generate_ids(model, prompt, SamplingSettings(max_new_tokens=8, temperature=0)))
    engine = BatchEngine(model, max_sequences=2, ctx_size=96, batch_size=8)
    out = Collect()
    run(engine, [Request(prompt, SamplingSettings(max_new_tokens=8, temperature=0), out)])
    assert out.ids == expected
    assert engine.steps == 40 // 8 + 8 - 1  # five chunks (the last one's logits give the first id), then 7 steps
