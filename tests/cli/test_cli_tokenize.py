"""The real `llmgen` console script in a subprocess: pipes, exit codes, one-line errors."""

import json
import subprocess

import pytest
from conftest import LLMGEN, assert_one_line_error, run_llmgen, run_on_terminal

from llmgen.cli import tokenize_fast
from llmgen.cli.invocation import Invocation
from llmgen.cli.main import run_typer


def test_ids_json_count_on_pipes():
    assert run_llmgen("tokenize", "hello world!", "--ids").out == "15339 1917 0\n"
    assert run_llmgen("tokenize", "hello world!", "--count").out == "3\n"
    payload = json.loads(run_llmgen("tokenize", "hello world!", "--json", "-e", "gpt2").out)
    assert payload == {"encoding": "gpt2", "ids": [31373, 995, 0], "tokens": ["hello", " world", "!"], "count": 3}


def test_plain_lines_on_a_pipe_escape_control_characters():
    result = run_llmgen("tokenize", "a\nb", "-e", "gpt2")
    assert result.returncode == 0
    assert result.out.splitlines() == ["64\ta", "198\t\\n", "65\tb"]


def test_llama3_encoding_and_decode():
    assert run_llmgen("tokenize", "-e", "llama3", "--ids", "武").out == "103787\n"
    decoded = run_llmgen("tokenize", "--decode", "15339", "1917", "0", "-e", "llama3")
    assert decoded.returncode == 0 and decoded.out == "hello world!\n"


def test_tokenizer_path_and_model_directory(tmp_path, llama3_tokenizer_file):
    (tmp_path / "tokenizer.model").write_bytes(llama3_tokenizer_file.read_bytes())
    by_file = run_llmgen("tokenize", "--tokenizer", tmp_path / "tokenizer.model", "--ids", "hello world!")
    by_dir = run_llmgen("tokenize", "--model", tmp_path, "--ids", "hello world!")
    assert by_file.out == by_dir.out == "15339 1917 0\n"


def test_stdin_with_dash_and_when_omitted():
    assert run_llmgen("tokenize", "-", "--ids", input="hello world!").out == "15339 1917 0\n"
    assert run_llmgen("tokenize", "--count", input="hello world!").out == "3\n"
    # An argument wins over piped stdin for tokenize.
    assert run_llmgen("tokenize", "hi", "--ids", input="hello world!").out == "6151\n"


def test_special_tokens_are_text_unless_allowed():
    assert "100257" not in run_llmgen("tokenize", "<|endoftext|>", "--ids").out.split()
    assert run_llmgen("tokenize", "<|endoftext|>", "--ids", "--allow-special").out == "100257\n"


def test_user_mistakes_give_one_line_and_nonzero_exit(tmp_path):
    assert_one_line_error(run_llmgen("tokenize", "-e", "nope", "x"), "unknown encoding 'nope'")
    assert_one_line_error(run_llmgen("tokenize", "--tokenizer", tmp_path / "missing.model", "x"), "not found")
    assert_one_line_error(run_llmgen("tokenize", "--decode", "12", "x1"), "integer token ids")
    assert_one_line_error(run_llmgen("tokenize", "--decode", "999999999"), "not in the cl100k_base vocabulary")
    assert_one_line_error(run_llmgen("tokenize", "--ids"), "no text to tokenize")
    assert_one_line_error(run_llmgen("tokenize", "-", input=""), "no text to tokenize")
    assert_one_line_error(run_llmgen("tokenize", "-", input=b"\xff\xfe"), "not valid UTF-8")
    usage = run_llmgen("tokenize", "--bogus")
    assert usage.returncode == 2
    for args in (["-e", "nosuch", "hi"], ["--ids", "--json", "hi"], ["--ids"]):  # usage mistakes: exit 2
        assert run_llmgen("tokenize", *args).returncode == 2, args
    assert_one_line_error(usage, "No such option: --bogus")
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\x01garbage\n")
    assert_one_line_error(run_llmgen("tokenize", "--tokenizer", bad, "x"), "not a tiktoken BPE file")


def test_tampered_ranks_give_one_line(tmp_path, llama3_tokenizer_file):
    from llmgen import assets

    if assets._installed_copy(assets.ASSETS["llama3"]) is not None:
        return  # an installed pristine copy is always preferred
    data = bytearray(llama3_tokenizer_file.read_bytes())
    data[-5] ^= 0x01
    (tmp_path / "llama3-tokenizer.model").write_bytes(bytes(data))
    result = run_llmgen("tokenize", "-e", "llama3", "x", env={"LLMGEN_HOME": str(tmp_path)})
    assert_one_line_error(result, "does not match the pinned sha256")


def test_broken_pipe_exits_quietly(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("hello world, " * 200_000)
    with open(big, "rb") as stdin:
        producer = subprocess.Popen([LLMGEN, "tokenize", "-"], stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        first = producer.stdout.readline()
        producer.stdout.close()  # what `| head -1` does
        stderr = producer.stderr.read()
        producer.wait(timeout=60)
    assert first == b"15339\thello\n"
    assert b"Traceback" not in stderr and stderr.strip() == b""


def test_help_and_tokenize_do_not_import_torch():
    import os
    import sys

    probe = (
        "import sys, runpy; sys.argv = ['llmgen'] + sys.argv[1:]\n"
        "from llmgen.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    for args in (["--help"], ["tokenize", "hi"], ["tokenize", "-e", "llama3", "--json", "hi"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              env=os.environ, stdin=subprocess.DEVNULL)
        assert done.stderr.strip().splitlines()[-1] == "NO-TORCH", (args, done.stderr)


@pytest.mark.parametrize("args", [
    ["hello world!"], ["--ids", "hello", "world!"], ["--count", "a", "b"], ["--json", "-e", "gpt2", "héllo\tworld"],
    ["--encoding=r50k_base", "x\ny\x7f"], ["--allow-special", "--ids", "<|endoftext|>!"], ["--", "--ids"],
    ["-e", "GPT2", "--json", "武汉 🎉"], ["x" * 500],
])
def test_fast_path_prints_what_the_typer_command_prints(args, capsys):
    assert tokenize_fast.run(args) == 0
    fast = capsys.readouterr()
    assert run_typer(Invocation(["tokenize", *args])) == 0
    full = capsys.readouterr()
    assert fast.out == full.out and fast.out and fast.err == full.err == ""


@pytest.mark.parametrize("args", [
    ["--help"], ["--decode", "1"], ["-m", "x", "hi"], ["--tokenizer", "x", "hi"], ["--bogus"], ["-egpt2", "hi"],
    ["-e", "nope", "hi"], ["--ids", "--count", "hi"], ["-e"],
])
def test_fast_path_leaves_everything_else_to_typer(args):
    assert tokenize_fast.run(args) is None


def test_first_run_builds_the_ranks_cache_and_later_runs_use_it(tmp_path):
    env = {"LLMGEN_HOME": str(tmp_path)}
    first = run_llmgen("tokenize", "--ids", "hello world!", env=env)
    assert (tmp_path / "ranks" / "cl100k_base.bin").is_file()
    again = run_llmgen("tokenize", "--ids", "hello world!", env=env)
    assert first.out == again.out == "15339 1917 0\n" and first.err == again.err == ""


def test_tokenize_into_a_pipe_imports_neither_typer_nor_rich():
    import sys

    probe = (
        "import sys; sys.argv = ['llmgen'] + sys.argv[1:]\n"
        "from llmgen.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted({'typer', 'rich', 'click', 'torch'} & {m.split('.')[0] for m in sys.modules}), file=sys.stderr)\n"
    )
    for args in (["tokenize", "hi"], ["tokenize", "--json", "-e", "gpt2", "hi"], ["tokenize", "-", "--ids"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, input="hey")
        assert done.returncode == 0 and done.stdout
        assert done.stderr.strip().splitlines()[-1] == "[]", (args, done.stderr)


def test_all_four_commands_are_registered():
    out = run_llmgen("--help").out
    for command in ("generate", "tokenize", "download", "inspect-weights"):
        assert command in out


def test_python_dash_m_works():
    import sys

    done = subprocess.run([sys.executable, "-m", "llmgen", "tokenize", "--count", "hello world!"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout == "3\n"


def test_a_gguf_models_own_tokenizer(tmp_path):
    """--model takes what generate takes: the embedded default (by name), a .gguf file; its vocabulary,
    with SmolLM2's numeral split ("  " before "4" stays one token, as in the model's tokenizer.json)."""
    from llmgen import assets

    by_name = run_llmgen("tokenize", "--model", "default", "--ids", "Total:  42")
    by_file = run_llmgen("tokenize", "--model", assets.locate("smollm2-135m-instruct-q4_1"), "--ids", "Total:  42")
    assert by_name.returncode == 0, by_name.err
    assert by_name.out == by_file.out == "17647 42 256 36 34\n"
    described = run_llmgen("tokenize", "-m", "default", "--json", "hi")
    assert '"encoding": "gguf:smollm"' in described.out
    assert_one_line_error(run_llmgen("tokenize", "-m", tmp_path / "none.gguf", "hi"), "unknown model")


@pytest.mark.slow  # runs llmgen on a terminal
def test_terminal_tables_keep_their_caption_and_title_whole(tmp_path):
    shown = run_on_terminal("tokenize", "hello world", columns=30)  # a caption wider than the table
    assert "2 tokens · cl100k_base" in shown.splitlines()
    long_name = tmp_path / ("a-rather-long-directory-name-" * 3) / "m.safetensors"
    long_name.parent.mkdir()
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2, 2)}, long_name)
    shown = run_on_terminal("inspect-weights", long_name, columns=40)
    assert str(long_name) in shown.replace("\n", "")  # soft-wrapped by the terminal, never broken mid-word
    assert any(line.startswith(str(long_name)[:30]) for line in shown.splitlines())
