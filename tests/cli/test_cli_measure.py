"""`llmgen bench`, `llmgen perplexity` and generate's speculative options, through the real CLI; perplexity's
method against transformers' logits on the same weights."""

import json
import math

import pytest
import torch
from checkpoints import hf_llama, save_hf
from conftest import assert_one_line_error, run_here

from llmgen.decode import choose_decoder
from llmgen.loading import load_weights
from llmgen.perplexity import chunks, score

pytestmark = pytest.mark.slow


def test_perplexity_is_llama_perplexitys_method_on_transformers_logits(tmp_path):
    """Chunks of n_ctx, BOS first, the second half scored: the same number from transformers' logits."""
    hf_model = hf_llama()
    model, _ = load_weights(save_hf(hf_model, tmp_path))
    ids = torch.randint(0, 1000, (70,), generator=torch.Generator().manual_seed(9)).tolist()
    n_ctx, bos = 16, 1
    nll = []
    with torch.inference_mode():
        for chunk in chunks(ids, n_ctx, bos):
            assert len(chunk) == n_ctx and chunk[0] == bos
            log_probs = torch.log_softmax(hf_model(torch.tensor([chunk])).logits[0].double(), -1)
            nll += [-float(log_probs[j, chunk[j + 1]]) for j in range(n_ctx // 2, n_ctx - 1)]
    assert len(nll) == 4 * 7  # 4 whole chunks of 16 (the last 6 tokens dropped), 7 scored tokens each
    expected = math.exp(sum(nll) / len(nll))
    final = list(score(choose_decoder(model), ids, n_ctx, bos, batch_size=5))[-1]
    assert final.count == len(nll)
    assert final.ppl == pytest.approx(expected, rel=1e-4)
    with_itself = list(score(choose_decoder(model), ids, n_ctx, bos, reference=choose_decoder(model)))[-1]
    assert with_itself.mean_kld == pytest.approx(0, abs=1e-6) and with_itself.top1_agreement == 1.0


def test_perplexity_command_prints_chunks_and_the_estimate(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    done = run_here("perplexity", "default", text, "-c", "64", "--chunks", "2", "--json")
    assert done.returncode == 0, done.err
    result = json.loads(done.out)
    assert result["chunks"] == 2 and result["scored_tokens"] == 2 * 31
    assert 1.0 <= result["ppl"] < 3.0  # a sentence said 40 times is easy to predict after the first
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    assert_one_line_error(run_here("perplexity", "default", short, "-c", "64"), "at least 2 * 64 = 128")
    short.write_bytes(b"\xff\xfe")
    assert_one_line_error(run_here("perplexity", "default", short), "not UTF-8")


def test_bench_prints_llama_bench_rows():
    done = run_here("bench", "-p", "32", "-n", "8", "-r", "2", "-t", "2", "--json")
    assert done.returncode == 0, done.err
    rows = [json.loads(line) for line in done.out.splitlines()]
    assert [r["test"] for r in rows] == ["pp32", "tg8"]
    assert all(len(r["samples"]) == 2 and r["mean"] > 0 and r["threads"] == 2 for r in rows)
    assert rows[0]["format"] == "q4_1" and rows[0]["params"] > 100e6
    table = run_here("bench", "-p", "16", "-n", "0", "-r", "1")
    assert table.returncode == 0, table.err
    header, rule, row = table.out.splitlines()
    assert header.startswith("| model | size | params |") and row.split(" | ")[7] == "pp16"
    assert_one_line_error(run_here("bench", "-p", "0", "-n", "0"), "no tests")
    assert_one_line_error(run_here("bench", "--peer", "vllm"), "unknown --peer")


def test_speculative_options_keep_greedy_output_and_refuse_what_cannot_work(tmp_path):
    text = "Copy this list: alpha, beta, gamma, delta, alpha, beta, gamma, delta, alpha, beta"
    plain = run_here("generate", text, "-t", "0", "-n", "24")
    spec = run_here("generate", text, "-t", "0", "-n", "24", "--speculate", "ngram", "--stats")
    assert plain.returncode == spec.returncode == 0, spec.err
    assert spec.out == plain.out
    assert "speculative: " in spec.err and "tokens per pass" in spec.err
    assert_one_line_error(run_here("generate", "x", "--speculate", "medusa"), "unknown --speculate")
    from gguf_files import write_tiny_gguf

    other = tmp_path / "other.gguf"
    import gguf

    write_tiny_gguf(other, gguf.GGMLQuantizationType.Q8_0, tokenizer=True)
    assert_one_line_error(run_here("generate", "x", "--draft-model", other), "same vocabulary")
