"""Tensor parallelism on CPU with gloo: ranks started by torchrun's launcher (`llmgen generate --tp 2`,
`python -m torch.distributed.run`) give what one process gives, each holding about half the weights.

References are one process on the same checkpoints (tests/support/tp_worker.py in this process): the same logits
within 1e-4 (float32) and the same 32 greedy ids.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoints import hf_family, hf_gpt2, hf_llama, save_hf, save_meta
from conftest import LLMGEN, assert_one_line_error, run_llmgen

from llmgen.errors import LLMGenError
from llmgen.parallel.shard import Shard, deferred_columns, local_config
from llmgen.weights.gguf_write import write_gguf
from llmgen.weights.sources import open_source

WORKER = Path(__file__).parents[1] / "support" / "tp_worker.py"
PROMPT = "The year 2024 in 北京 had 366 days, and"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, llama3_tokenizer_file):
    """A LLaMA-3-shaped Meta checkpoint (GQA: 4 query heads, 2 kv heads; LLaMA-3's real tokenizer), a
    GPT-2-shaped Hugging Face one (GPT-2's vocabulary: its real tokenizer), a Hugging Face Qwen2 and a Q4_0
    GGUF of the LLaMA."""
    root = tmp_path_factory.mktemp("tp")
    reference = hf_llama(vocab_size=128256, hidden_size=64, intermediate_size=192, num_attention_heads=4,
                         num_key_value_heads=2)
    llama = save_meta(reference, root / "llama3")
    shutil.copy(llama3_tokenizer_file, llama / "tokenizer.model")
    # The same weights as Meta saves a large model: model-parallel parts in consolidated.00/01.pth, which
    # each rank cuts from without joining them.
    llama_parts = save_meta(reference, root / "llama3-2-files", shards=2)
    shutil.copy(llama3_tokenizer_file, llama_parts / "tokenizer.model")
    gpt2 = save_hf(hf_gpt2(vocab_size=50257, n_positions=128), root / "gpt2")
    # Hugging Face layout with q/k rows to reorder and q/k/v biases to split (LLaMA-3's tokenizer, by size)
    qwen2 = save_hf(hf_family("qwen2", vocab_size=128256), root / "qwen2")
    q4_0 = root / "llama3-q4_0.gguf"  # quantized shards: each rank's rows and columns cut from the blocks
    write_gguf(open_source(llama), q4_0, "q4_0")
    return {"llama": llama, "llama-2-files": llama_parts, "gpt2": gpt2, "qwen2": qwen2, "q4_0": q4_0}


@pytest.fixture(scope="module")
def one_process(checkpoints, tmp_path_factory):
    import tp_worker

    out = tmp_path_factory.mktemp("one")
    tp_worker.main(out, "cpu", [str(p) for p in checkpoints.values()])
    return json.loads((out / "rank0.json").read_text())


def torchrun(*args, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def test_two_ranks_match_one_process_with_half_the_weights_each(checkpoints, one_process, tmp_path):
    done = torchrun(WORKER, tmp_path, "cpu", *checkpoints.values())
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, path in checkpoints.items():
        single = one_process[str(path)]
        for rank in ranks:
            sharded = rank[str(path)]
            assert sharded["prompt_ids"] == single["prompt_ids"]
            difference = (torch.tensor(sharded["logits"]) - torch.tensor(single["logits"])).abs().max().item()
            if name == "q4_0":
                # The int4 kernels round activations to int8: the all-reduce's different order of summation
                # (1e-7) can move an activation across a rounding step, so logits differ by up to ~0.05.
                # The same logits within 0.1 at every step, and the same ids but at a near tie.
                assert difference < 0.1, difference
                same = next((i for i, (a, b) in enumerate(zip(sharded["greedy"], single["greedy"])) if a != b), 32)
                if same < 32:
                    assert single["steps"][same][0] - single["steps"][same][1] < 0.1, same
                top = torch.tensor(single["steps"][:same + 1]) - torch.tensor(sharded["steps"][:same + 1])
                assert top[:, 0].abs().max() < 0.1
                continue
            assert difference < 1e-4, (name, difference)
            assert sharded["greedy"] == single["greedy"], name
            # Embedding, head and blocks are split; only norms (and GPT-2's positions) are whole on each.
            assert sharded["parameter_bytes"] < 0.6 * single["parameter_bytes"], name
    from llmgen import kernels

    if kernels.library() is not None:  # the Q4_0 shard on llmgen's one-call decoder, all-reduces called back
        assert "a tensor-parallel shard of 2" in ranks[0][str(checkpoints["q4_0"])]["decoder"]


@pytest.mark.parametrize("name, all_reduce", [("llama", "shared-memory"), ("gpt2", "gloo")])
def test_generate_tp_2_prints_what_one_process_prints_once(checkpoints, name, all_reduce):
    """Ranks on one machine add up through shared memory (parallel/shared_memory.py), or through gloo
    where LLMGEN_TP_ALL_REDUCE=gloo says so (as across machines): both give one process's output."""
    args = ["generate", PROMPT, "--model", checkpoints[name], "--raw", "--temperature", "0", "-n", "32", "--json"]
    single = run_llmgen(*args)
    sharded = run_llmgen(*args, "--tp", "2", timeout=180, env={"LLMGEN_TP_ALL_REDUCE": all_reduce})
    assert single.returncode == 0 and sharded.returncode == 0, sharded.err
    assert sharded.err == "" and len(sharded.out.splitlines()) == 1
    one, two = json.loads(single.out), json.loads(sharded.out)
    assert (two["ids"], two["text"]) == (one["ids"], one["text"]) and len(one["ids"]) == 32


def test_the_same_command_runs_under_torchrun(checkpoints):
    args = ["generate", PROMPT, "--model", checkpoints["gpt2"], "--raw", "--temperature", "0", "-n", "32"]
    single = run_llmgen(*args)
    done = torchrun("--module", "llmgen", *args)
    assert single.returncode == 0 and done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == single.out and single.out.strip()


def test_chat_tp_3_replies_as_one_process_does():
    """The embedded SmolLM2 (9 heads, 3 kv heads) as 3 ranks: rank 0 reads each line and shares it, every
    rank keeps the conversation's cache; the replies of one process (both in float32)."""
    turns = "Hi\nWhat is 2+2?\n"
    single = run_llmgen("chat", "-t", "0", "-n", "12", "--quantize", "none", input=turns)
    sharded = run_llmgen("chat", "-t", "0", "-n", "12", "--quantize", "none", "--tp", "3", input=turns, timeout=180)
    assert single.returncode == 0 and sharded.returncode == 0, sharded.err
    assert sharded.out == single.out and len(single.out.splitlines()) == 2 and sharded.err == ""


def _rank_pids(parent: int) -> dict[int, int]:
    """The tensor-parallel ranks under a launcher process, by RANK."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                variables = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                if "RANK" in variables:
                    ranks[int(variables["RANK"])] = int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return ranks


@pytest.mark.parametrize("name", ["llama", "q4_0"])  # all-reduces from PyTorch's decode step, and from C++'s
def test_a_killed_rank_ends_every_rank_with_one_error_line(checkpoints, name):
    process = subprocess.Popen([LLMGEN, "generate", "Once upon a time", "--model", checkpoints[name], "--raw",
                                "--temperature", "0", "-n", "100000", "--tp", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        os.set_blocking(process.stdout.fileno(), False)
        deadline, printed = time.monotonic() + 120, b""
        while len(printed) < 20 and time.monotonic() < deadline and process.poll() is None:
            printed += process.stdout.read() or b""  # decoding has started once text comes out
            time.sleep(0.05)
        ranks = _rank_pids(process.pid)
        assert sorted(ranks) == [0, 1], (printed, ranks)
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = process.communicate(timeout=30)
        assert time.monotonic() - killed < 30
    finally:
        process.kill()
    process.out, process.err = "", err.decode()
    assert_one_line_error(process, "rank 1 of 2 was killed by SIGKILL")
    for pid in ranks.values():  # no rank left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_bad_splits_and_options_are_refused_before_any_rank_starts(checkpoints):
    from llmgen.config import LlamaConfig

    config = LlamaConfig(vocab_size=1000, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=192)
    with pytest.raises(LLMGenError, match="--tp 3 cannot split this model evenly: it has 4 attention heads"):
        local_config(config, Shard(0, 3))
    # Fewer kv heads than ranks: each keeps the one its query heads share.
    assert local_config(config, Shard(3, 4)).n_kv_heads == 1 and Shard(3, 4).kv_heads(2) == (1, 2)
    assert_one_line_error(run_llmgen("generate", "hi", "--model", checkpoints["gpt2"], "--tp", "2", "--compile"),
                          "--compile does not run with --tp")
    assert_one_line_error(run_llmgen("generate", "hi", "--model", checkpoints["gpt2"], "--tp", "0"), "--tp must be")


def test_gguf_blocks_split_by_columns_are_the_columns_of_the_whole():
    """A rank's columns of a quantized matrix are cut from each row's blocks as stored (wo, the MLP's down)."""
    from gguf import GGMLQuantizationType, quantize

    from llmgen.weights.stored import deferred_matrix

    weight = torch.randn(8, 128).numpy()
    blocks = torch.from_numpy(quantize(weight, GGMLQuantizationType.Q4_0)).view(torch.uint8).view(8, -1)
    whole = deferred_matrix("Q4_0", (8, 128), lambda a, b: blocks[a:b])
    part = deferred_columns("w", whole, 64, 128).read()
    full = whole.read()
    assert torch.equal(part.dequantize(), full.dequantize()[:, 64:])
    with pytest.raises(LLMGenError, match="cut through"):
        deferred_columns("w", whole, 48, 96)


@pytest.mark.parametrize("name", ["q4_0", "llama"])  # batched on the kernels; one sequence at a time on PyTorch's
def test_serve_tp_2_answers_as_one_process_does(checkpoints, name):
    """`llmgen serve --tp 2`: rank 0 serves HTTP and shares each pass of its engine, the other rank runs it on
    its shard. Two concurrent greedy completions are `llmgen generate`'s text; Ctrl-C ends every rank."""
    import http.client
    import re
    import threading

    process = subprocess.Popen([LLMGEN, "serve", str(checkpoints[name]), "--port", "0", "--tp", "2", "-np", "2",
                                "-c", "256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               text=True)
    try:
        port = None
        deadline = time.time() + 180
        while port is None and time.time() < deadline:
            line = process.stderr.readline()
            assert line, "serve --tp 2 ended before it served"
            if match := re.search(r"serving http://127\.0\.0\.1:(\d+)", line):
                port = int(match.group(1))
        assert port is not None
        prompts = [PROMPT, "Once upon a time"]
        replies: dict[str, str] = {}

        def ask(prompt: str) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": 12,
                                                                      "temperature": 0}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            replies[prompt] = json.loads(response.read())["choices"][0]["text"]

        askers = [threading.Thread(target=ask, args=(prompt,)) for prompt in prompts]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(timeout=150)
        for prompt in prompts:
            single = run_llmgen("generate", prompt, "--model", checkpoints[name], "--raw", "-t", "0", "-n", "12")
            assert replies[prompt] == single.out.rstrip("\n") and replies[prompt]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) in (0, 130)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not _rank_pids(process.pid)
